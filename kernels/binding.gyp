{
  "targets": [
    {
      "target_name": "kvmesh_isa_avx512",
      "type": "static_library",
      "sources": ["<!@(node scripts/list-sources.mjs avx512)"],
      "include_dirs": ["cpu"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O3", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", "-mbmi2"]
    },
    {
      "target_name": "kvmesh_isa_avx2",
      "type": "static_library",
      "sources": ["<!@(node scripts/list-sources.mjs avx2)"],
      "include_dirs": ["cpu"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O3", "-fPIC", "-mavx2", "-mfma", "-mf16c", "-mbmi2"]
    },
    {
      "target_name": "kvmesh_kernels",
      "sources": ["<!@(node scripts/list-sources.mjs base)"],
      "dependencies": ["kvmesh_isa_avx512", "kvmesh_isa_avx2"],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")", "cpu"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "XXH_INLINE_ALL"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O3", "-fPIC", "-fopenmp"],
      "ldflags": ["-fopenmp"],
      "libraries": ["-lopenblas"]
    }
  ]
}
