// CPU feature detection and the process-wide active instruction set (see isa.h).
#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace kvmesh {
namespace {

Isa detect() {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi2");
  // F16C has no __builtin_cpu_supports name in older GCC; every AVX2 CPU we target has it.
  if (avx512) return Isa::Avx512;
  if (avx2) return Isa::Avx2;
  return Isa::Scalar;
}

Isa initial() {
  Isa best = detect();
  const char* env = std::getenv("KVMESH_ISA");
  if (env == nullptr) return best;
  Isa wanted = best;
  if (std::strcmp(env, "scalar") == 0) wanted = Isa::Scalar;
  if (std::strcmp(env, "avx2") == 0) wanted = Isa::Avx2;
  if (std::strcmp(env, "avx512") == 0) wanted = Isa::Avx512;
  return static_cast<int>(wanted) <= static_cast<int>(best) ? wanted : best;
}

std::atomic<int> g_active{static_cast<int>(initial())};

}  // namespace

Isa detected_isa() {
  static const Isa best = detect();
  return best;
}

Isa active_isa() { return static_cast<Isa>(g_active.load(std::memory_order_relaxed)); }

bool set_active_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(detected_isa())) return false;
  g_active.store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    case Isa::Scalar: return "scalar";
  }
  return "scalar";
}

}  // namespace kvmesh
