// N-API surface of the dense kernels the model engine runs between attention calls (src/native/dense.ts
// validates first; every size is re-checked here so a caller bypassing the facade gets a JS
// exception, never an out-of-bounds access). GEMM goes to OpenBLAS; the elementwise and row-wise ops
// are memory-bound and stay plain C++ (baseline flags, one build for every ISA); prefill attention is
// ISA-dispatched through the KV kernel table because it reads the encoded past blocks with the decode
// attention's codec readers. All calls are synchronous: the engine calls them from a worker thread.
#include <cblas.h>
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kv_kernels.h"

namespace kvmesh {
namespace {

// Mirrors src/dense-validate.ts.
constexpr int64_t kDimMax = int64_t(1) << 30;
constexpr int kPrefillTokensMax = 16384;
constexpr int kPositionMax = 1 << 24;

[[noreturn]] void Throw(Napi::Env env, const std::string& message) { throw Napi::RangeError::New(env, message); }

int64_t IntArg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min, int64_t max) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  const double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= double(min) && v <= double(max)) || v != std::floor(v)) {
    Throw(info.Env(), std::string(name) + " out of range: " + std::to_string(v));
  }
  return int64_t(v);
}

template <typename T>
Napi::TypedArrayOf<T> ArrayArg(Napi::Env env, Napi::Value value, const std::string& name) {
  napi_typedarray_type want = napi_uint8_array;
  if (std::is_same<T, float>::value) want = napi_float32_array;
  if (std::is_same<T, int32_t>::value) want = napi_int32_array;
  if (std::is_same<T, uint32_t>::value) want = napi_uint32_array;
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != want) {
    throw Napi::TypeError::New(env, name + " has the wrong array type");
  }
  return value.As<Napi::TypedArrayOf<T>>();
}

template <typename T>
Napi::TypedArrayOf<T> ArrayArg(Napi::Env env, Napi::Value value, const std::string& name, size_t length) {
  auto a = ArrayArg<T>(env, value, name);
  if (a.ElementLength() != length) {
    Throw(env, name + " has " + std::to_string(a.ElementLength()) + " elements, expected " + std::to_string(length));
  }
  return a;
}

void ExpectArgs(const Napi::CallbackInfo& info, size_t n, const char* op) {
  if (info.Length() != n) Throw(info.Env(), std::string(op) + " expects " + std::to_string(n) + " arguments");
}

// Threads of the small-M matmul path; follows setThreads like OpenBLAS (whose default it starts from).
int g_matmul_threads = openblas_get_num_threads();

// Below these sizes a second thread costs more than it saves: waking it and joining it outweighs
// the work (the tiny model prefilled 34k tokens/s on 1 thread and 14.6k on 2 here, where the
// small model gains ~1.5x from the second thread). Small-M products stream their weights, so
// they go by weight elements; GEMMs go by multiply-adds.
constexpr int64_t kParallelWeightsMin = int64_t(1) << 19;
constexpr int64_t kParallelGemmMacsMin = int64_t(1) << 23;

// matmul(x [M][K], w [N][K], y [M][N], M, K, N, bias [N] | null): y = x·wᵀ (+ bias).
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, 7, "matmul");
  const int64_t M = IntArg(info, 3, "M", 1, kDimMax), K = IntArg(info, 4, "K", 1, kDimMax),
                N = IntArg(info, 5, "N", 1, kDimMax);
  // NOTE: OpenBLAS takes int (LP64) sizes and leading dimensions.
  if (M * K > INT32_MAX || N * K > INT32_MAX || M * N > INT32_MAX) Throw(env, "matmul: matrix too large for BLAS");
  const float* x = ArrayArg<float>(env, info[0], "x", size_t(M * K)).Data();
  const float* w = ArrayArg<float>(env, info[1], "w", size_t(N * K)).Data();
  float* y = ArrayArg<float>(env, info[2], "y", size_t(M * N)).Data();
  float beta = 0.0f;
  if (!info[6].IsNull() && !info[6].IsUndefined()) {
    const float* bias = ArrayArg<float>(env, info[6], "bias", size_t(N)).Data();
    for (int64_t m = 0; m < M; ++m) std::memcpy(y + m * N, bias, size_t(N) * sizeof(float));
    beta = 1.0f;
  }
  if (M <= kGemmSmallMaxM) {
    // Decode batches: our weight-streaming kernel reads w once for all M rows (BLAS GEMM would
    // repack w on every call), split over the matmul threads by ranges of output columns.
    const KvKernels& kernels = active_kv_kernels();
    const int threads = N * K >= kParallelWeightsMin ? std::max(1, g_matmul_threads) : 1;
    const bool accumulate = beta != 0.0f;
    // Dynamic 64-column chunks (a multiple of 16, so threads never share a cache line of y): a thread
    // that loses its core to another process leaves its share to the others instead of stalling them.
    constexpr int64_t kChunk = 64;
    const int64_t chunks = (N + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n0 = c * kChunk, n1 = std::min<int64_t>(N, n0 + kChunk);
      kernels.gemm_small(x, w, y, int(M), int(K), int(N), int(n0), int(n1), accumulate);
    }
  } else {
    // NOTE: openblas_set_num_threads only moves a count once its thread pool exists, so lowering it
    // for one call and restoring it after is cheap.
    const bool serial = g_matmul_threads > 1 && M * N * K < kParallelGemmMacsMin;
    if (serial) openblas_set_num_threads(1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f, x, int(K), w, int(K), beta, y,
                int(N));
    if (serial) openblas_set_num_threads(g_matmul_threads);
  }
  return env.Undefined();
}

Napi::Value BlasSetThreads(const Napi::CallbackInfo& info) {
  ExpectArgs(info, 1, "blasSetThreads");
  const int threads = int(IntArg(info, 0, "threads", 1, 1024));
  openblas_set_num_threads(threads);
  g_matmul_threads = threads;
  return info.Env().Undefined();
}

Napi::Value BlasThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), openblas_get_num_threads());
}

// rmsNorm(x [M][H], weight [H], eps, out [M][H]); out may be x (each row is read before it is written).
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, 4, "rmsNorm");
  auto xa = ArrayArg<float>(env, info[0], "x");
  auto wa = ArrayArg<float>(env, info[1], "weight");
  const size_t H = wa.ElementLength(), n = xa.ElementLength();
  if (H == 0 || n == 0 || n % H != 0) Throw(env, "rmsNorm: x length is not a positive multiple of weight length");
  if (!info[2].IsNumber()) throw Napi::TypeError::New(env, "eps must be a number");
  const double eps = info[2].As<Napi::Number>().DoubleValue();
  if (!(eps >= 0) || !std::isfinite(eps)) Throw(env, "rmsNorm: eps must be finite and >= 0");
  float* out = ArrayArg<float>(env, info[3], "out", n).Data();
  const float* x = xa.Data();
  const float* w = wa.Data();
  for (size_t row = 0; row < n; row += H) {
    double sum_sq = 0;
    for (size_t i = 0; i < H; ++i) sum_sq += double(x[row + i]) * x[row + i];
    const float inv = float(1.0 / std::sqrt(sum_sq / double(H) + eps));
    for (size_t i = 0; i < H; ++i) out[row + i] = x[row + i] * inv * w[i];
  }
  return env.Undefined();
}

// rope(x [T][heads][D], positions [T], heads, D, invFreq [D/2]) in place, rotate_half pairs (i, i + D/2).
Napi::Value Rope(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, 5, "rope");
  auto pos = ArrayArg<int32_t>(env, info[1], "positions");
  const int64_t heads = IntArg(info, 2, "heads", 1, kDimMax), D = IntArg(info, 3, "headDim", 2, kDimMax);
  if (D % 2 != 0) Throw(env, "rope: headDim must be even");
  const size_t T = pos.ElementLength();
  float* x = ArrayArg<float>(env, info[0], "x", T * size_t(heads) * size_t(D)).Data();
  const float* inv = ArrayArg<float>(env, info[4], "invFreq", size_t(D / 2)).Data();
  const size_t half = size_t(D / 2);
  for (size_t t = 0; t < T; ++t) {
    if (pos[t] < 0 || pos[t] > kPositionMax) Throw(env, "rope: positions[" + std::to_string(t) + "] out of range");
  }
  std::vector<float> cos_sin(2 * half);
  for (size_t t = 0; t < T; ++t) {
    const int32_t p = pos[t];
    // NOTE: the angle reaches 1e5 rad and more; taken in double (p and invFreq exact) so the argument
    // reduction inside cos/sin loses nothing, then rounded to f32 once.
    for (size_t i = 0; i < half; ++i) {
      const double angle = double(p) * double(inv[i]);
      cos_sin[i] = float(std::cos(angle));
      cos_sin[half + i] = float(std::sin(angle));
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* row = x + (t * size_t(heads) + size_t(h)) * size_t(D);
      for (size_t i = 0; i < half; ++i) {
        const float x0 = row[i], x1 = row[half + i], c = cos_sin[i], s = cos_sin[half + i];
        row[i] = x0 * c - x1 * s;
        row[half + i] = x1 * c + x0 * s;
      }
    }
  }
  return env.Undefined();
}

// swiglu(gate, up, out): out = silu(gate) ⊙ up; out may be gate or up.
Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, 3, "swiglu");
  auto ga = ArrayArg<float>(env, info[0], "gate");
  const size_t n = ga.ElementLength();
  const float* gate = ga.Data();
  const float* up = ArrayArg<float>(env, info[1], "up", n).Data();
  float* out = ArrayArg<float>(env, info[2], "out", n).Data();
  for (size_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
  return env.Undefined();
}

// embed(table [V][H], tokens [T], out [T][H]) with H = out.length / T.
Napi::Value Embed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, 3, "embed");
  auto ta = ArrayArg<float>(env, info[0], "table");
  auto tokens = ArrayArg<uint32_t>(env, info[1], "tokens");
  auto oa = ArrayArg<float>(env, info[2], "out");
  const size_t T = tokens.ElementLength();
  if (T == 0 || oa.ElementLength() == 0 || oa.ElementLength() % T != 0) Throw(env, "embed: bad out length");
  const size_t H = oa.ElementLength() / T;
  if (ta.ElementLength() == 0 || ta.ElementLength() % H != 0) Throw(env, "embed: bad table length");
  const size_t V = ta.ElementLength() / H;
  for (size_t t = 0; t < T; ++t) {
    if (tokens[t] >= V) {
      Throw(env, "embed: token id " + std::to_string(tokens[t]) + " at index " + std::to_string(t) + " out of range");
    }
    std::memcpy(oa.Data() + t * H, ta.Data() + size_t(tokens[t]) * H, H * sizeof(float));
  }
  return env.Undefined();
}

// add(a, b, out): out = a + b; out may be a or b.
Napi::Value Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, 3, "add");
  auto aa = ArrayArg<float>(env, info[0], "a");
  const size_t n = aa.ElementLength();
  const float* a = aa.Data();
  const float* b = ArrayArg<float>(env, info[1], "b", n).Data();
  float* out = ArrayArg<float>(env, info[2], "out", n).Data();
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
  return env.Undefined();
}

// argmax(x, n): first index of the largest of x[0, n); the same comparison order as the reference.
Napi::Value Argmax(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, 2, "argmax");
  auto xa = ArrayArg<float>(env, info[0], "x");
  const size_t n = size_t(IntArg(info, 1, "n", 1, int64_t(xa.ElementLength())));
  const float* x = xa.Data();
  size_t best = 0;
  for (size_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return Napi::Number::New(env, double(best));
}

// logSoftmaxAt(x, n, index) = x[index] - max - log Σ exp(x - max), summed in double.
Napi::Value LogSoftmaxAt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, 3, "logSoftmaxAt");
  auto xa = ArrayArg<float>(env, info[0], "x");
  const size_t n = size_t(IntArg(info, 1, "n", 1, int64_t(xa.ElementLength())));
  const size_t index = size_t(IntArg(info, 2, "index", 0, int64_t(n) - 1));
  const float* x = xa.Data();
  float max = -INFINITY;
  for (size_t i = 0; i < n; ++i) max = x[i] > max ? x[i] : max;
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(double(x[i]) - double(max));
  return Napi::Number::New(env, double(x[index]) - double(max) - std::log(sum));
}

// prefillAttention(queryHeads, kvHeads, headDim, scale, queries, keys, values, out,
//                  blockTokens, groupSize, codecs, sections, tokens); no past: empty lists.
Napi::Value PrefillAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, 13, "prefillAttention");
  KvPrefillArgs a{};
  a.QH = int(IntArg(info, 0, "queryHeads", 1, 1024 * 64));
  a.KVH = int(IntArg(info, 1, "kvHeads", 1, 1024));
  a.D = int(IntArg(info, 2, "headDim", 16, 512));
  if (a.D % 16 != 0) Throw(env, "prefillAttention: headDim must be a multiple of 16");
  if (a.QH % a.KVH != 0) Throw(env, "prefillAttention: queryHeads must be a multiple of kvHeads");
  if (!info[3].IsNumber()) throw Napi::TypeError::New(env, "scale must be a number");
  a.scale = info[3].As<Napi::Number>().FloatValue();
  if (!std::isfinite(a.scale)) Throw(env, "prefillAttention: scale must be finite");
  auto qa = ArrayArg<float>(env, info[4], "queries");
  const size_t row_q = size_t(a.QH) * a.D;
  if (qa.ElementLength() == 0 || qa.ElementLength() % row_q != 0 ||
      qa.ElementLength() / row_q > size_t(kPrefillTokensMax)) {
    Throw(env, "prefillAttention: bad queries length");
  }
  a.T = int(qa.ElementLength() / row_q);
  const size_t kv_len = size_t(a.T) * a.KVH * a.D;
  a.q = qa.Data();
  a.k = ArrayArg<float>(env, info[5], "keys", kv_len).Data();
  a.v = ArrayArg<float>(env, info[6], "values", kv_len).Data();
  a.out = ArrayArg<float>(env, info[7], "out", qa.ElementLength()).Data();
  if (!info[11].IsArray()) throw Napi::TypeError::New(env, "sections must be an array");
  auto sections = info[11].As<Napi::Array>();
  const size_t nblocks = sections.Length();
  std::vector<int> codecs, tokens;
  std::vector<const uint8_t*> section_data;
  if (nblocks > 0) {
    a.dims = KvDims{a.KVH, int(IntArg(info, 8, "blockTokens", 16, 256)), a.D, int(IntArg(info, 9, "groupSize", 16, 128))};
    if (!kv_dims_valid(a.dims)) Throw(env, "prefillAttention: invalid past dims");
    auto ca = ArrayArg<int32_t>(env, info[10], "codecs", nblocks);
    auto tk = ArrayArg<int32_t>(env, info[12], "tokens", nblocks);
    for (size_t b = 0; b < nblocks; ++b) {
      const int codec = ca[b], t = tk[b];
      if (codec < kCodecF32 || codec > kCodecKivi2) Throw(env, "unknown codec id " + std::to_string(codec));
      if (t < 0 || t > a.dims.B) Throw(env, "tokens[" + std::to_string(b) + "] out of range");
      auto section = ArrayArg<uint8_t>(env, sections.Get(uint32_t(b)), "sections[" + std::to_string(b) + "]",
                                       kv_layout(codec, a.dims).total);
      codecs.push_back(codec);
      tokens.push_back(t);
      section_data.push_back(section.Data());
    }
  }
  a.nblocks = int(nblocks);
  a.codecs = codecs.data();
  a.sections = section_data.data();
  a.tokens = tokens.data();
  std::vector<float> scratch(kv_prefill_scratch_floats(a));
  active_kv_kernels().prefill(a, scratch.data());
  return env.Undefined();
}

}  // namespace

void RegisterDense(Napi::Env env, Napi::Object exports) {
  exports.Set("matmul", Napi::Function::New(env, Matmul, "matmul"));
  exports.Set("blasSetThreads", Napi::Function::New(env, BlasSetThreads, "blasSetThreads"));
  exports.Set("blasThreads", Napi::Function::New(env, BlasThreads, "blasThreads"));
  exports.Set("rmsNorm", Napi::Function::New(env, RmsNorm, "rmsNorm"));
  exports.Set("rope", Napi::Function::New(env, Rope, "rope"));
  exports.Set("swiglu", Napi::Function::New(env, Swiglu, "swiglu"));
  exports.Set("embed", Napi::Function::New(env, Embed, "embed"));
  exports.Set("add", Napi::Function::New(env, Add, "add"));
  exports.Set("argmax", Napi::Function::New(env, Argmax, "argmax"));
  exports.Set("logSoftmaxAt", Napi::Function::New(env, LogSoftmaxAt, "logSoftmaxAt"));
  exports.Set("prefillAttention", Napi::Function::New(env, PrefillAttention, "prefillAttention"));
}

}  // namespace kvmesh
