// N-API entry point of the native kernels. Each kernel family registers its own functions from its
// own file (hash.cc, codec.cc, attention.cc, ...); this file only wires them and exposes the ISA
// selection. Arguments are validated in TypeScript first; the C++ side re-checks sizes so a
// caller bypassing the facade gets a JS exception, never memory corruption.
#include <napi.h>

#include "isa.h"

namespace kvmesh {
// Registered by the kernel files. Declared weak so a partial tree still links while a family is
// being written; a missing family simply exports no functions (and the facade reports it).
__attribute__((weak)) void RegisterHash(Napi::Env env, Napi::Object exports);
__attribute__((weak)) void RegisterCodec(Napi::Env env, Napi::Object exports);
__attribute__((weak)) void RegisterAttention(Napi::Env env, Napi::Object exports);
__attribute__((weak)) void RegisterDense(Napi::Env env, Napi::Object exports);
__attribute__((weak)) void RegisterMemory(Napi::Env env, Napi::Object exports);
}  // namespace kvmesh

namespace {

Napi::Value Isa(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), kvmesh::isa_name(kvmesh::active_isa()));
}

Napi::Value DetectedIsa(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), kvmesh::isa_name(kvmesh::detected_isa()));
}

Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "setIsa(name): name must be 'scalar', 'avx2' or 'avx512'").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const std::string name = info[0].As<Napi::String>();
  kvmesh::Isa isa;
  if (name == "scalar") {
    isa = kvmesh::Isa::Scalar;
  } else if (name == "avx2") {
    isa = kvmesh::Isa::Avx2;
  } else if (name == "avx512") {
    isa = kvmesh::Isa::Avx512;
  } else {
    Napi::RangeError::New(env, "setIsa: unknown instruction set '" + name + "'").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Boolean::New(env, kvmesh::set_active_isa(isa));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("isa", Napi::Function::New(env, Isa, "isa"));
  exports.Set("detectedIsa", Napi::Function::New(env, DetectedIsa, "detectedIsa"));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa, "setIsa"));
  if (kvmesh::RegisterHash) kvmesh::RegisterHash(env, exports);
  if (kvmesh::RegisterCodec) kvmesh::RegisterCodec(env, exports);
  if (kvmesh::RegisterAttention) kvmesh::RegisterAttention(env, exports);
  if (kvmesh::RegisterDense) kvmesh::RegisterDense(env, exports);
  if (kvmesh::RegisterMemory) kvmesh::RegisterMemory(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(kvmesh_kernels, Init)
