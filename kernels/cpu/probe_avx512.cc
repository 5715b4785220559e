// Keeps the AVX-512 static library non-empty and lets tests confirm the flavour was compiled.
extern "C" int kvmesh_probe_avx512() { return 512; }
