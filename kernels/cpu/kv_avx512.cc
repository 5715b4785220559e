// AVX-512 build of the KV codec and attention kernels: the generic kernels in kv_kernels.inc over a
// 16-lane `Ops`. Compiled with -mavx512f/bw/vl/dq -mfma -mf16c -mbmi2 and only called when
// active_isa() is Avx512. f16 conversions use vcvtps2ph/vcvtph2ps (round-to-nearest-even).
// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "kv_kernels.h"

namespace kvmesh {
namespace avx512_isa {
namespace {

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

struct Ops {
  static constexpr int W = 16;
  static constexpr int NVK = 4;  // token vectors per key tile: 4 heads x 4 = 16 accumulators
  static constexpr int NVV = 4;  // channel vectors per value tile
  using F = __m512;
  using I = __m512i;

  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float x) { return _mm512_set1_ps(x); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F loadb(const uint8_t* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F x) { _mm512_storeu_ps(p, x); }
  static F loadh(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static void storeh(uint8_t* p, F x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(x, kRne));
  }
  static uint16_t half(float x) { return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT); }
  static float unhalf(uint16_t h) { return _cvtsh_ss(h); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static float hsum(F x) { return _mm512_reduce_add_ps(x); }
  static float hmin(F x) { return _mm512_reduce_min_ps(x); }
  static float hmax(F x) { return _mm512_reduce_max_ps(x); }
  // exp with ~1 ulp-scale relative error (Cephes expf polynomial), inputs clamped to the f32 range.
  static F exp(F x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.33654f)), _mm512_set1_ps(88.37626f));
    const F n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), kRne);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
    F y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
  }
  static F recip_or_zero(F s) {
    const __mmask16 nonzero = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_NEQ_OQ);
    return _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0f), s);
  }
  static I quant(F x, F zero, F inv, F qmax) {
    F q = _mm512_mul_ps(_mm512_sub_ps(x, zero), inv);
    q = _mm512_min_ps(_mm512_max_ps(q, _mm512_setzero_ps()), qmax);
    return _mm512_cvt_roundps_epi32(q, kRne);
  }
  static I izero() { return _mm512_setzero_si512(); }
  static I ior(I a, I b) { return _mm512_or_si512(a, b); }
  static I ishl(I a, int n) { return _mm512_sll_epi32(a, _mm_cvtsi32_si128(n)); }
  static void istore(uint32_t* p, I x) { _mm512_storeu_si512(p, x); }

  template <int BITS>
  static F codes(const uint8_t* row, int e) {
    if constexpr (BITS == 8) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + e));
      return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
    } else if constexpr (BITS == 4) {
      const __m128i x = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + e / 2));
      const __m128i m = _mm_set1_epi8(0x0f);
      const __m128i b = _mm_unpacklo_epi8(_mm_and_si128(x, m), _mm_and_si128(_mm_srli_epi16(x, 4), m));
      return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
    } else {
      uint32_t w;
      std::memcpy(&w, row + e / 4, 4);
      const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      const __m512i c = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(int(w)), shifts), _mm512_set1_epi32(3));
      return _mm512_cvtepi32_ps(c);
    }
  }
  template <int BITS>
  static void pack(uint8_t* row, int e, I c) {
    const __m128i b = _mm512_cvtepi32_epi8(c);
    if constexpr (BITS == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(row + e), b);
    } else {
      const uint64_t lo = uint64_t(_mm_cvtsi128_si64(b));
      const uint64_t hi = uint64_t(_mm_extract_epi64(b, 1));
      if constexpr (BITS == 4) {
        const uint64_t w = _pext_u64(lo, 0x0f0f0f0f0f0f0f0fULL) | (_pext_u64(hi, 0x0f0f0f0f0f0f0f0fULL) << 32);
        std::memcpy(row + e / 2, &w, 8);
      } else {
        const uint32_t w = uint32_t(_pext_u64(lo, 0x0303030303030303ULL) | (_pext_u64(hi, 0x0303030303030303ULL) << 16));
        std::memcpy(row + e / 4, &w, 4);
      }
    }
  }
  static unsigned bad_mask(F x, F limit) {
    return ~unsigned(_mm512_cmp_ps_mask(_mm512_abs_ps(x), limit, _CMP_LE_OQ)) & 0xffffu;
  }
  static void transpose(F* r) {
    F t[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
      r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
      r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    // r[4i + k], 128-bit lane L, holds element 4L + k of rows 4i..4i+3.
    for (int k = 0; k < 4; ++k) {
      const F ab_lo = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x44);
      const F ab_hi = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xee);
      const F cd_lo = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x44);
      const F cd_hi = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xee);
      t[k] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0x88);
      t[4 + k] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0xdd);
      t[8 + k] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0x88);
      t[12 + k] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0xdd);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
  }
};

#include "kv_kernels.inc"

}  // namespace
}  // namespace avx512_isa

const KvKernels& kv_kernels_avx512() { return avx512_isa::kTable; }

}  // namespace kvmesh
