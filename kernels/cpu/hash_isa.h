// XXH3-128 compiled with AVX2: xxHash picks its vector path at compile time from the flags of the
// translation unit, so hash.cc (built without them) would otherwise always run the SSE2 path.
// hash.cc calls this one unless the active ISA (isa.h) is scalar.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvmesh {

// The 128-bit digest in the two 64-bit halves XXH128_hash_t holds.
struct Hash128Halves {
  uint64_t low64;
  uint64_t high64;
};

Hash128Halves xxh3_128_avx2(const void* data, size_t len);

}  // namespace kvmesh
