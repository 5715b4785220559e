// Shared declarations of the KV codec and decode-attention kernels (lib/block/spec/codecs-v1.md).
// The same generic kernels (kv_kernels.inc) are compiled three times, once per instruction set
// (kv_scalar.cc, kv_avx2.cc, kv_avx512.cc), and reached through a function table picked from
// active_isa(). NOTE: every helper here is `static` so an ISA translation unit never lends its
// AVX-512 copy of an inline function to the baseline build (the linker keeps only one copy of an
// `inline` function, whichever flags it was compiled with).
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvmesh {

enum CodecId : int { kCodecF32 = 0, kCodecF16 = 1, kCodecKivi8 = 2, kCodecKivi4 = 3, kCodecKivi2 = 4 };

struct KvDims {
  int kvh;  // kv heads
  int B;    // block tokens
  int D;    // head dim
  int G;    // KIVI group size (tokens for keys, channels for values)
};

// Byte offsets inside one layer section. f32/f16 use k_codes (K) and v_codes (V) only.
struct KvLayout {
  int bits;
  size_t k_codes, k_scales, k_zeros, v_codes, v_scales, v_zeros, total;
  size_t k_row;  // bytes of one K code row (one channel over B tokens)
  size_t v_row;  // bytes of one V code row (one token over D channels)
};

static inline int kv_codec_bits(int codec) {
  return codec == kCodecKivi8 ? 8 : codec == kCodecKivi4 ? 4 : codec == kCodecKivi2 ? 2 : 0;
}

static inline bool kv_dims_valid(const KvDims& d) {
  const bool g_ok = d.G == 16 || d.G == 32 || d.G == 64 || d.G == 128;
  return d.kvh >= 1 && d.kvh <= 1024 && d.B >= 16 && d.B <= 256 && d.B % 16 == 0 && d.D >= 16 &&
         d.D <= 512 && d.D % 16 == 0 && g_ok && d.B % d.G == 0 && d.D % d.G == 0;
}

static inline KvLayout kv_layout(int codec, const KvDims& d) {
  KvLayout l{};
  const size_t elements = size_t(d.kvh) * d.B * d.D;
  if (codec == kCodecF32 || codec == kCodecF16) {
    const size_t elt = codec == kCodecF32 ? 4 : 2;
    l.bits = int(elt * 8);
    l.k_codes = 0;
    l.k_scales = l.k_zeros = l.v_codes = elements * elt;
    l.v_scales = l.v_zeros = l.total = 2 * elements * elt;
    l.k_row = l.v_row = size_t(d.D) * elt;
    return l;
  }
  l.bits = kv_codec_bits(codec);
  const size_t code_bytes = elements * l.bits / 8;
  const size_t k_scale_bytes = size_t(d.kvh) * (d.B / d.G) * d.D * 2;
  const size_t v_scale_bytes = size_t(d.kvh) * (d.D / d.G) * d.B * 2;
  l.k_codes = 0;
  l.k_scales = code_bytes;
  l.k_zeros = l.k_scales + k_scale_bytes;
  l.v_codes = l.k_zeros + k_scale_bytes;
  l.v_scales = l.v_codes + code_bytes;
  l.v_zeros = l.v_scales + v_scale_bytes;
  l.total = l.v_zeros + v_scale_bytes;
  l.k_row = size_t(d.B) * l.bits / 8;
  l.v_row = size_t(d.D) * l.bits / 8;
  return l;
}

// Query heads processed together per kv head (their K/V codes are read once).
constexpr int kAttnHeadsPerPass = 4;

// One decode step of attention over blocks of one layer; outputs are o [H][D], m [H], l [H].
struct KvAttnArgs {
  KvDims dims;
  int H;
  const float* q;
  float scale;
  int nblocks;
  const int* codecs;
  const uint8_t* const* sections;
  const int* tokens;
  float* o;
  float* m;
  float* l;
};

static inline size_t kv_attention_scratch_floats(const KvDims& d) {
  const size_t hc = kAttnHeadsPerPass, ng = d.B / d.G, ngd = d.D / d.G;
  return hc * (d.B + 2 * size_t(d.D) + ng * d.D + ng + ngd * d.B + ngd) + 64;
}

// Causal attention of a prefill chunk of T tokens over past blocks of one layer (optional) and the
// chunk itself: token t sees every past token and chunk tokens 0..t. q and out are [T][QH][D], k and
// v [T][KVH][D], all f32; dims describes the past blocks (read only when nblocks > 0, dims.kvh == KVH
// and dims.D == D). D is a multiple of 16.
struct KvPrefillArgs {
  int QH;
  int KVH;
  int D;
  int T;
  float scale;
  const float* q;
  const float* k;
  const float* v;
  float* out;
  KvDims dims;
  int nblocks;
  const int* codecs;
  const uint8_t* const* sections;
  const int* tokens;
};

// Chunk keys folded into the online softmax per step (a multiple of 16).
constexpr int kPrefillKeyTile = 64;

static inline size_t kv_prefill_scratch_floats(const KvPrefillArgs& a) {
  const size_t rows = size_t(a.T) * (a.QH / a.KVH), hc = kAttnHeadsPerPass;
  const size_t past = a.nblocks > 0 ? kv_attention_scratch_floats(a.dims) : 0;
  // past attention scratch + chunk P/O/Q tiles + per-kv-head gathered queries and past (o, m, l)
  return past + hc * (kPrefillKeyTile + 2 * size_t(a.D)) + rows * (2 * size_t(a.D) + 2) + 64;
}

struct KvKernels {
  // Index of the first element with !(|x| <= limit) (NaN included), or -1. n is a multiple of 16.
  int64_t (*scan)(const float* x, size_t n, float limit);
  // `out` holds layout.total bytes, zeroed by the caller.
  void (*encode)(int codec, const KvDims& dims, const float* k, const float* v, uint8_t* out);
  void (*decode)(int codec, const KvDims& dims, const uint8_t* section, float* k, float* v);
  // `scratch` holds kv_attention_scratch_floats(dims) floats.
  void (*attention)(const KvAttnArgs& args, float* scratch);
  // `scratch` holds kv_prefill_scratch_floats(args) floats.
  void (*prefill)(const KvPrefillArgs& args, float* scratch);
  // y[m][n] = x[m]·w[n] (or += with accumulate) for n in [n0, n1); x [M][K], w [N][K], y [M][N], 1 <= M <= 8.
  void (*gemm_small)(const float* x, const float* w, float* y, int M, int K, int N, int n0, int n1, bool accumulate);
};

// Largest M that matmul sends to gemm_small instead of BLAS.
constexpr int kGemmSmallMaxM = 8;

const KvKernels& kv_kernels_scalar();
const KvKernels& kv_kernels_avx2();
const KvKernels& kv_kernels_avx512();
// The table for active_isa() (defined in codec.cc).
const KvKernels& active_kv_kernels();

}  // namespace kvmesh
