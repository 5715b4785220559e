// Run-time instruction-set dispatch shared by every kernel. Kernels are compiled three times
// (scalar, AVX2, AVX-512 translation units); `active_isa()` picks which one runs. The choice is
// the best the CPU supports unless KVMESH_ISA or setIsa() lowers it (tests use that to check
// every path against the reference).
#pragma once

namespace kvmesh {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

Isa detected_isa();
Isa active_isa();
// Returns false (and changes nothing) when the CPU does not support `isa`.
bool set_active_isa(Isa isa);
const char* isa_name(Isa isa);

}  // namespace kvmesh
