// AVX2 build of the KV codec and attention kernels: the generic kernels in kv_kernels.inc over an
// 8-lane `Ops`. Compiled with -mavx2 -mfma -mf16c -mbmi2 and only called when active_isa() is Avx2
// (or better, when a test selects it). Register budget: 16 ymm, so tiles are 4 heads x 2 vectors.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "kv_kernels.h"

namespace kvmesh {
namespace avx2_isa {
namespace {

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

struct Ops {
  static constexpr int W = 8;
  static constexpr int NVK = 2;
  static constexpr int NVV = 2;
  using F = __m256;
  using I = __m256i;

  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float x) { return _mm256_set1_ps(x); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F loadb(const uint8_t* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }
  static void store(float* p, F x) { _mm256_storeu_ps(p, x); }
  static F loadh(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static void storeh(uint8_t* p, F x) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  }
  static uint16_t half(float x) { return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT); }
  static float unhalf(uint16_t h) { return _cvtsh_ss(h); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static __m128 fold(F x) { return _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1)); }
  static float hsum(F x) {
    __m128 s = fold(x);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmin(F x) {
    __m128 s = _mm_min_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_min_ps(s, _mm_movehl_ps(s, s));
    s = _mm_min_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(F x) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static F exp(F x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.37626f));
    const F n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), kRne);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    F y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    // n is in [-126, 127]: build 2^n directly in the exponent field.
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  }
  static F recip_or_zero(F s) {
    const F nonzero = _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_NEQ_OQ);
    return _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), s), nonzero);
  }
  static I quant(F x, F zero, F inv, F qmax) {
    F q = _mm256_mul_ps(_mm256_sub_ps(x, zero), inv);
    q = _mm256_min_ps(_mm256_max_ps(q, _mm256_setzero_ps()), qmax);
    return _mm256_cvttps_epi32(_mm256_round_ps(q, kRne));
  }
  static I izero() { return _mm256_setzero_si256(); }
  static I ior(I a, I b) { return _mm256_or_si256(a, b); }
  static I ishl(I a, int n) { return _mm256_sll_epi32(a, _mm_cvtsi32_si128(n)); }
  static void istore(uint32_t* p, I x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), x); }

  template <int BITS>
  static F codes(const uint8_t* row, int e) {
    if constexpr (BITS == 8) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + e));
      return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
    } else if constexpr (BITS == 4) {
      uint32_t w;
      std::memcpy(&w, row + e / 2, 4);
      const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
      const __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(w)), shifts), _mm256_set1_epi32(15));
      return _mm256_cvtepi32_ps(c);
    } else {
      uint16_t w;
      std::memcpy(&w, row + e / 4, 2);
      const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
      const __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(w), shifts), _mm256_set1_epi32(3));
      return _mm256_cvtepi32_ps(c);
    }
  }
  template <int BITS>
  static void pack(uint8_t* row, int e, I c) {
    const __m128i p16 = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    const uint64_t bytes = uint64_t(_mm_cvtsi128_si64(_mm_packus_epi16(p16, p16)));
    if constexpr (BITS == 8) {
      std::memcpy(row + e, &bytes, 8);
    } else if constexpr (BITS == 4) {
      const uint32_t w = uint32_t(_pext_u64(bytes, 0x0f0f0f0f0f0f0f0fULL));
      std::memcpy(row + e / 2, &w, 4);
    } else {
      const uint16_t w = uint16_t(_pext_u64(bytes, 0x0303030303030303ULL));
      std::memcpy(row + e / 4, &w, 2);
    }
  }
  static unsigned bad_mask(F x, F limit) {
    const F abs = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
    return ~unsigned(_mm256_movemask_ps(_mm256_cmp_ps(abs, limit, _CMP_LE_OQ))) & 0xffu;
  }
  static void transpose(F* r) {
    const F t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const F t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const F t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const F t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const F u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
    const F u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
    const F u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
    const F u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
  }
};

#include "kv_kernels.inc"

}  // namespace
}  // namespace avx2_isa

const KvKernels& kv_kernels_avx2() { return avx2_isa::kTable; }

}  // namespace kvmesh
