// N-API surface of the KV codecs: encodeLayer / decodeLayer over one layer section
// (lib/block/spec/codecs-v1.md). The TypeScript facade (src/native/codec.ts) validates first; this
// file re-checks every size against the dims so a caller bypassing the facade gets a JS exception,
// never an out-of-bounds access. Value checks (finite, f16 range) run here, vectorised, and report
// the offending flat index back to TS, which builds the typed error.
#include <napi.h>

#include <cstring>

#include "isa.h"
#include "kv_kernels.h"

namespace kvmesh {

const KvKernels& active_kv_kernels() {
  switch (active_isa()) {
    case Isa::Avx512: return kv_kernels_avx512();
    case Isa::Avx2: return kv_kernels_avx2();
    case Isa::Scalar: break;
  }
  return kv_kernels_scalar();
}

namespace {

[[noreturn]] void Throw(Napi::Env env, const std::string& message) {
  throw Napi::RangeError::New(env, message);
}

int IntArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  return info[i].As<Napi::Number>().Int32Value();
}

// (codec, kvHeads, blockTokens, headDim, groupSize) at info[first..first+4].
void ParseCodecDims(const Napi::CallbackInfo& info, size_t first, int* codec, KvDims* dims) {
  *codec = IntArg(info, first, "codec");
  dims->kvh = IntArg(info, first + 1, "kvHeads");
  dims->B = IntArg(info, first + 2, "blockTokens");
  dims->D = IntArg(info, first + 3, "headDim");
  dims->G = IntArg(info, first + 4, "groupSize");
  if (*codec < kCodecF32 || *codec > kCodecKivi2) Throw(info.Env(), "unknown codec id " + std::to_string(*codec));
  if (!kv_dims_valid(*dims)) Throw(info.Env(), "invalid layer dims");
}

template <typename T>
Napi::TypedArrayOf<T> ArrayArg(const Napi::CallbackInfo& info, size_t i, const char* name, size_t length) {
  const napi_typedarray_type want = std::is_same<T, float>::value ? napi_float32_array : napi_uint8_array;
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != want) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " has the wrong array type");
  }
  auto a = info[i].As<Napi::TypedArrayOf<T>>();
  if (a.ElementLength() != length) {
    Throw(info.Env(), std::string(name) + " has " + std::to_string(a.ElementLength()) + " elements, expected " +
                          std::to_string(length));
  }
  return a;
}

// encodeLayer(codec, kvHeads, blockTokens, headDim, groupSize, k, v, out) -> -1, or the flat index
// of the first unstorable input (k indices first, then v indices offset by k.length).
Napi::Value EncodeLayer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 8) Throw(env, "encodeLayer expects 8 arguments");
  int codec;
  KvDims dims;
  ParseCodecDims(info, 0, &codec, &dims);
  const size_t n = size_t(dims.kvh) * dims.B * dims.D;
  const KvLayout layout = kv_layout(codec, dims);
  auto k = ArrayArg<float>(info, 5, "k", n);
  auto v = ArrayArg<float>(info, 6, "v", n);
  auto out = ArrayArg<uint8_t>(info, 7, "out", layout.total);
  const KvKernels& kernels = active_kv_kernels();
  const float limit = codec == kCodecF32 ? 3.4028234663852886e38f : 65504.0f;
  int64_t bad = kernels.scan(k.Data(), n, limit);
  if (bad < 0) {
    bad = kernels.scan(v.Data(), n, limit);
    if (bad >= 0) bad += int64_t(n);
  }
  if (bad >= 0) return Napi::Number::New(env, double(bad));
  if (codec != kCodecF32 && codec != kCodecF16) std::memset(out.Data(), 0, layout.total);
  kernels.encode(codec, dims, k.Data(), v.Data(), out.Data());
  return Napi::Number::New(env, -1);
}

// decodeLayer(codec, kvHeads, blockTokens, headDim, groupSize, section, k, v)
Napi::Value DecodeLayer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 8) Throw(env, "decodeLayer expects 8 arguments");
  int codec;
  KvDims dims;
  ParseCodecDims(info, 0, &codec, &dims);
  const size_t n = size_t(dims.kvh) * dims.B * dims.D;
  auto section = ArrayArg<uint8_t>(info, 5, "section", kv_layout(codec, dims).total);
  auto k = ArrayArg<float>(info, 6, "k", n);
  auto v = ArrayArg<float>(info, 7, "v", n);
  active_kv_kernels().decode(codec, dims, section.Data(), k.Data(), v.Data());
  return env.Undefined();
}

}  // namespace

void RegisterCodec(Napi::Env env, Napi::Object exports) {
  exports.Set("encodeLayer", Napi::Function::New(env, EncodeLayer, "encodeLayer"));
  exports.Set("decodeLayer", Napi::Function::New(env, DecodeLayer, "decodeLayer"));
}

}  // namespace kvmesh
