// Native XXH3-128 and the spec v1 block-hash chain, on the system libxxhash (header-only through
// XXH_INLINE_ALL). The TypeScript facade validates arguments first; sizes are re-checked here so
// a direct caller gets a JS exception, never an out-of-bounds read. Digests are canonical
// (high 64 bits big-endian, then low 64 bits big-endian), exactly what XXH128_canonicalFromHash writes.
#include <napi.h>
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "hash_isa.h"
#include "isa.h"

namespace kvmesh {
namespace {

constexpr size_t kHashBytes = 16;
constexpr uint32_t kBlockTokensMin = 16;
constexpr uint32_t kBlockTokensMax = 256;
constexpr uint32_t kBlockTokensMultiple = 16;

static_assert(sizeof(XXH128_canonical_t) == kHashBytes, "canonical XXH128 is 16 bytes");

bool IsTypedArrayOf(const Napi::Value& v, napi_typedarray_type type) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == type;
}

// The same digest on every path; only the vector width differs. Payload checksums cover 64 KiB to
// 1 MiB, where the AVX2 build takes 6.2 us per 256 KiB against 10.7 for the SSE2 one; xxHash's
// AVX-512 path measured no faster (6.5 us, on the EPYC this was written on), so AVX-512 CPUs run
// the AVX2 build too.
XXH128_hash_t Xxh3(const void* data, size_t len) {
  if (active_isa() == Isa::Scalar) return XXH3_128bits(data, len);
  const Hash128Halves h = xxh3_128_avx2(data, len);
  XXH128_hash_t out;
  out.low64 = h.low64;
  out.high64 = h.high64;
  return out;
}

void WriteCanonical(const void* data, size_t len, uint8_t* out) {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, Xxh3(data, len));
  std::memcpy(out, canonical.digest, kHashBytes);
}

Napi::Value Hash128(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !IsTypedArrayOf(info[0], napi_uint8_array)) {
    Napi::TypeError::New(env, "hash128(data): data must be a Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Uint8Array data = info[0].As<Napi::Uint8Array>();
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, kHashBytes);
  WriteCanonical(data.Data(), data.ByteLength(), out.Data());
  return out;
}

Napi::Value BlockHashes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 3) {
    Napi::TypeError::New(env, "blockHashes(seed, tokens, blockTokens) takes 3 arguments")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!IsTypedArrayOf(info[0], napi_uint8_array) || info[0].As<Napi::Uint8Array>().ByteLength() != kHashBytes) {
    Napi::TypeError::New(env, "blockHashes: seed must be a 16-byte Uint8Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!IsTypedArrayOf(info[1], napi_uint32_array)) {
    Napi::TypeError::New(env, "blockHashes: tokens must be a Uint32Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!info[2].IsNumber()) {
    Napi::TypeError::New(env, "blockHashes: blockTokens must be a number").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const double blockTokensValue = info[2].As<Napi::Number>().DoubleValue();
  const uint32_t blockTokens = static_cast<uint32_t>(blockTokensValue);
  // NOTE: the range check comes before the cast is trusted (a NaN or 1e300 casts to garbage).
  if (!(blockTokensValue >= kBlockTokensMin && blockTokensValue <= kBlockTokensMax) ||
      static_cast<double>(blockTokens) != blockTokensValue || blockTokens % kBlockTokensMultiple != 0) {
    Napi::RangeError::New(env, "blockHashes: blockTokens must be a multiple of 16 in [16, 256]")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }

  Napi::Uint8Array seed = info[0].As<Napi::Uint8Array>();
  Napi::Uint32Array tokens = info[1].As<Napi::Uint32Array>();
  const size_t blocks = tokens.ElementLength() / blockTokens;
  const size_t blockBytes = sizeof(uint32_t) * blockTokens;
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, blocks * kHashBytes);

  // One scratch buffer for the whole chain: [previous hash (or seed) ‖ block tokens as u32le].
  std::vector<uint8_t> scratch(kHashBytes + blockBytes);
  std::memcpy(scratch.data(), seed.Data(), kHashBytes);
  const uint32_t* src = tokens.Data();
  uint8_t* dst = out.Data();
  for (size_t b = 0; b < blocks; b++) {
    const uint32_t* block = src + b * blockTokens;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    std::memcpy(scratch.data() + kHashBytes, block, blockBytes);
#else
    for (uint32_t t = 0; t < blockTokens; t++) {
      uint8_t* p = scratch.data() + kHashBytes + 4 * t;
      p[0] = static_cast<uint8_t>(block[t]);
      p[1] = static_cast<uint8_t>(block[t] >> 8);
      p[2] = static_cast<uint8_t>(block[t] >> 16);
      p[3] = static_cast<uint8_t>(block[t] >> 24);
    }
#endif
    uint8_t* digest = dst + b * kHashBytes;
    WriteCanonical(scratch.data(), scratch.size(), digest);
    std::memcpy(scratch.data(), digest, kHashBytes);
  }
  return out;
}

}  // namespace

void RegisterHash(Napi::Env env, Napi::Object exports) {
  exports.Set("hash128", Napi::Function::New(env, Hash128, "hash128"));
  exports.Set("blockHashes", Napi::Function::New(env, BlockHashes, "blockHashes"));
}

}  // namespace kvmesh
