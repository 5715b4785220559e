// Keeps the AVX2 static library non-empty and lets tests confirm the flavour was compiled.
extern "C" int kvmesh_probe_avx2() { return 2; }
