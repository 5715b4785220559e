// XXH3-128 built with the AVX2 flags of its target (see hash_isa.h).
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "hash_isa.h"

namespace kvmesh {

Hash128Halves xxh3_128_avx2(const void* data, size_t len) {
  const XXH128_hash_t h = XXH3_128bits(data, len);
  return {h.low64, h.high64};
}

}  // namespace kvmesh
