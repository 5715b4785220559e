// Baseline (no SIMD extension) build of the KV codec and attention kernels: the generic kernels in
// kv_kernels.inc over a one-lane `Ops`. Runs on any x86-64 CPU, so f16 conversions are done in
// software here (bit-exact with F16C: round-to-nearest-even, subnormals kept).
#include <cmath>
#include <cstring>

#include "kv_kernels.h"

namespace kvmesh {
namespace scalar_isa {
namespace {

uint32_t f32_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

uint16_t f32_to_f16(float value) {
  const uint32_t x = f32_bits(value);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return uint16_t(sign | (abs > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to infinity
  const uint32_t exp = abs >> 23;
  if (exp < 113) {  // f16 subnormal or zero: units of 2^-24
    if (exp < 102) return uint16_t(sign);
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return uint16_t(sign | h);
  }
  uint32_t h = ((exp - 112) << 10) | ((abs & 0x7fffffu) >> 13);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return uint16_t(sign | h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    float x = std::ldexp(float(mant), -24);
    return sign ? -x : x;
  }
  if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float x;
  std::memcpy(&x, &bits, 4);
  return x;
}

struct Ops {
  static constexpr int W = 1;
  static constexpr int NVK = 4;  // token vectors per key tile
  static constexpr int NVV = 4;  // channel vectors per value tile
  using F = float;
  using I = uint32_t;

  static F zero() { return 0.0f; }
  static F set1(float x) { return x; }
  static F load(const float* p) { return *p; }
  static F loadb(const uint8_t* p) {
    float x;
    std::memcpy(&x, p, 4);
    return x;
  }
  static void store(float* p, F x) { *p = x; }
  static F loadh(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return f16_to_f32(h);
  }
  static void storeh(uint8_t* p, F x) {
    const uint16_t h = f32_to_f16(x);
    std::memcpy(p, &h, 2);
  }
  static uint16_t half(float x) { return f32_to_f16(x); }
  static float unhalf(uint16_t h) { return f16_to_f32(h); }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F div(F a, F b) { return a / b; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static F min(F a, F b) { return b < a ? b : a; }
  static F max(F a, F b) { return b > a ? b : a; }
  static float hsum(F x) { return x; }
  static float hmin(F x) { return x; }
  static float hmax(F x) { return x; }
  static F exp(F x) { return std::exp(x); }
  static F recip_or_zero(F s) { return s == 0.0f ? 0.0f : 1.0f / s; }
  static I quant(F x, F zero, F inv, F qmax) {
    float q = (x - zero) * inv;
    q = q < 0.0f ? 0.0f : q;
    q = q > qmax ? qmax : q;
    return I(std::nearbyint(q));
  }
  static I izero() { return 0; }
  static I ior(I a, I b) { return a | b; }
  static I ishl(I a, int n) { return a << n; }
  static void istore(uint32_t* p, I x) { *p = x; }
  template <int BITS>
  static F codes(const uint8_t* row, int e) {
    const size_t bit = size_t(e) * BITS;
    return float((row[bit >> 3] >> (bit & 7)) & ((1u << BITS) - 1));
  }
  // NOTE: ORs into the row, so the caller zeroes the section first.
  template <int BITS>
  static void pack(uint8_t* row, int e, I c) {
    const size_t bit = size_t(e) * BITS;
    row[bit >> 3] = uint8_t(row[bit >> 3] | (c << (bit & 7)));
  }
  static unsigned bad_mask(F x, F limit) { return std::fabs(x) <= limit ? 0u : 1u; }
  static void transpose(F*) {}
};

#include "kv_kernels.inc"

}  // namespace
}  // namespace scalar_isa

const KvKernels& kv_kernels_scalar() { return scalar_isa::kTable; }

}  // namespace kvmesh
