// N-API surface of decode attention over encoded blocks (sync and AsyncWorker variants) and of the
// exact merge of partial results. The facade (src/native/attention.ts) validates first; sizes are
// re-checked here. The async variant holds references to the caller's section buffers (no copy of
// the KV data), copies the query, computes into its own buffers on a libuv worker thread and only
// touches JS values again in OnOK. NOTE: a caller must not transfer (detach) a section's buffer
// while its attentionAsync promise is pending; the references keep it from being collected only.
#include <napi.h>

#include <cmath>
#include <string>
#include <vector>

#include "kv_kernels.h"

namespace kvmesh {
namespace {

[[noreturn]] void Throw(Napi::Env env, const std::string& message) { throw Napi::RangeError::New(env, message); }

int IntArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  return info[i].As<Napi::Number>().Int32Value();
}

template <typename T>
Napi::TypedArrayOf<T> ArrayArg(Napi::Env env, Napi::Value value, const std::string& name, size_t length) {
  napi_typedarray_type want = napi_uint8_array;
  if (std::is_same<T, float>::value) want = napi_float32_array;
  if (std::is_same<T, int32_t>::value) want = napi_int32_array;
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != want) {
    throw Napi::TypeError::New(env, name + " has the wrong array type");
  }
  auto a = value.As<Napi::TypedArrayOf<T>>();
  if (a.ElementLength() != length) {
    Throw(env, name + " has " + std::to_string(a.ElementLength()) + " elements, expected " + std::to_string(length));
  }
  return a;
}

// Everything one attention call needs, with the JS objects it borrows from.
struct AttentionJob {
  KvDims dims{};
  int H = 0;
  float scale = 0;
  std::vector<float> query;
  std::vector<int> codecs;
  std::vector<int> tokens;
  std::vector<const uint8_t*> sections;
  std::vector<Napi::Value> section_values;  // kept alive by the caller (sync) or by references (async)

  void Run(float* o, float* m, float* l) const {
    std::vector<float> scratch(kv_attention_scratch_floats(dims));
    KvAttnArgs a{dims, H, query.data(), scale, int(codecs.size()), codecs.data(), sections.data(), tokens.data(),
                 o, m, l};
    active_kv_kernels().attention(a, scratch.data());
  }
};

// (kvHeads, blockTokens, headDim, groupSize, queryHeads, query, scale, codecs, sections, tokens)
AttentionJob ParseJob(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AttentionJob job;
  job.dims = KvDims{IntArg(info, 0, "kvHeads"), IntArg(info, 1, "blockTokens"), IntArg(info, 2, "headDim"),
                    IntArg(info, 3, "groupSize")};
  if (!kv_dims_valid(job.dims)) Throw(env, "invalid layer dims");
  job.H = IntArg(info, 4, "queryHeads");
  if (job.H < 1 || job.H % job.dims.kvh != 0) Throw(env, "queryHeads must be a positive multiple of kvHeads");
  auto q = ArrayArg<float>(env, info[5], "query", size_t(job.H) * job.dims.D);
  job.query.assign(q.Data(), q.Data() + q.ElementLength());
  if (!info[6].IsNumber()) throw Napi::TypeError::New(env, "scale must be a number");
  job.scale = info[6].As<Napi::Number>().FloatValue();
  if (!std::isfinite(job.scale)) Throw(env, "scale must be finite");
  if (!info[8].IsArray()) throw Napi::TypeError::New(env, "sections must be an array");
  auto sections = info[8].As<Napi::Array>();
  const size_t nblocks = sections.Length();
  if (nblocks == 0) Throw(env, "empty block list");
  auto codecs = ArrayArg<int32_t>(env, info[7], "codecs", nblocks);
  auto tokens = ArrayArg<int32_t>(env, info[9], "tokens", nblocks);
  for (size_t b = 0; b < nblocks; ++b) {
    const int codec = codecs[b];
    const int t = tokens[b];
    if (codec < kCodecF32 || codec > kCodecKivi2) Throw(env, "unknown codec id " + std::to_string(codec));
    if (t < 0 || t > job.dims.B) Throw(env, "tokens[" + std::to_string(b) + "] out of range");
    Napi::Value sv = sections.Get(uint32_t(b));
    auto section = ArrayArg<uint8_t>(env, sv, "sections[" + std::to_string(b) + "]", kv_layout(codec, job.dims).total);
    job.codecs.push_back(codec);
    job.tokens.push_back(t);
    job.sections.push_back(section.Data());
    job.section_values.push_back(sv);
  }
  return job;
}

// attention(kvHeads, blockTokens, headDim, groupSize, queryHeads, query, scale, codecs, sections, tokens, o, m, l)
Napi::Value Attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 13) Throw(env, "attention expects 13 arguments");
  AttentionJob job = ParseJob(info);
  auto o = ArrayArg<float>(env, info[10], "o", size_t(job.H) * job.dims.D);
  auto m = ArrayArg<float>(env, info[11], "m", size_t(job.H));
  auto l = ArrayArg<float>(env, info[12], "l", size_t(job.H));
  job.Run(o.Data(), m.Data(), l.Data());
  return env.Undefined();
}

class AttentionWorker : public Napi::AsyncWorker {
 public:
  AttentionWorker(Napi::Env env, AttentionJob job, Napi::Object o, Napi::Object m, Napi::Object l)
      : Napi::AsyncWorker(env, "kvmesh.attention"),
        deferred_(Napi::Promise::Deferred::New(env)),
        job_(std::move(job)),
        o_ref_(Napi::Persistent(o)),
        m_ref_(Napi::Persistent(m)),
        l_ref_(Napi::Persistent(l)) {
    for (Napi::Value v : job_.section_values) section_refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
    job_.section_values.clear();
    o_.resize(size_t(job_.H) * job_.dims.D);
    m_.resize(size_t(job_.H));
    l_.resize(size_t(job_.H));
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override { job_.Run(o_.data(), m_.data(), l_.data()); }

  void OnOK() override {
    Copy(o_ref_, o_);
    Copy(m_ref_, m_);
    Copy(l_ref_, l_);
    deferred_.Resolve(Env().Undefined());
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  static void Copy(const Napi::ObjectReference& ref, const std::vector<float>& from) {
    auto to = ref.Value().As<Napi::Float32Array>();
    std::copy(from.begin(), from.end(), to.Data());
  }

  Napi::Promise::Deferred deferred_;
  AttentionJob job_;
  Napi::ObjectReference o_ref_, m_ref_, l_ref_;
  std::vector<Napi::ObjectReference> section_refs_;
  std::vector<float> o_, m_, l_;
};

// attentionAsync(same arguments as attention) -> Promise<void>; o, m, l are filled when it resolves.
Napi::Value AttentionAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 13) Throw(env, "attentionAsync expects 13 arguments");
  AttentionJob job = ParseJob(info);
  auto o = ArrayArg<float>(env, info[10], "o", size_t(job.H) * job.dims.D);
  auto m = ArrayArg<float>(env, info[11], "m", size_t(job.H));
  auto l = ArrayArg<float>(env, info[12], "l", size_t(job.H));
  auto* worker = new AttentionWorker(env, std::move(job), o, m, l);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// mergePartials(queryHeads, headDim, os[], ms[], ls[], o, m, l): exact merge; parts with l = 0 ignored.
Napi::Value MergePartials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 8) Throw(env, "mergePartials expects 8 arguments");
  const int H = IntArg(info, 0, "queryHeads");
  const int D = IntArg(info, 1, "headDim");
  if (H < 1 || D < 1) Throw(env, "queryHeads and headDim must be positive");
  if (!info[2].IsArray() || !info[3].IsArray() || !info[4].IsArray()) {
    throw Napi::TypeError::New(env, "os, ms, ls must be arrays");
  }
  auto os = info[2].As<Napi::Array>(), ms = info[3].As<Napi::Array>(), ls = info[4].As<Napi::Array>();
  const uint32_t parts = os.Length();
  if (ms.Length() != parts || ls.Length() != parts) Throw(env, "os, ms, ls differ in length");
  std::vector<const float*> po, pm, pl;
  for (uint32_t i = 0; i < parts; ++i) {
    const std::string at = "[" + std::to_string(i) + "]";
    po.push_back(ArrayArg<float>(env, os.Get(i), "os" + at, size_t(H) * D).Data());
    pm.push_back(ArrayArg<float>(env, ms.Get(i), "ms" + at, size_t(H)).Data());
    pl.push_back(ArrayArg<float>(env, ls.Get(i), "ls" + at, size_t(H)).Data());
  }
  float* o = ArrayArg<float>(env, info[5], "o", size_t(H) * D).Data();
  float* m = ArrayArg<float>(env, info[6], "m", size_t(H)).Data();
  float* l = ArrayArg<float>(env, info[7], "l", size_t(H)).Data();
  std::vector<double> acc(static_cast<size_t>(D));
  for (int h = 0; h < H; ++h) {
    double m_max = -INFINITY;
    for (uint32_t i = 0; i < parts; ++i) {
      if (pl[i][h] > 0 && pm[i][h] > m_max) m_max = pm[i][h];
    }
    std::fill(acc.begin(), acc.end(), 0.0);
    double l_sum = 0;
    if (m_max != -INFINITY) {
      for (uint32_t i = 0; i < parts; ++i) {
        if (!(pl[i][h] > 0)) continue;
        const double w = double(pl[i][h]) * std::exp(double(pm[i][h]) - m_max);
        l_sum += w;
        const float* oi = po[i] + size_t(h) * D;
        for (int d = 0; d < D; ++d) acc[d] += w * oi[d];
      }
    }
    for (int d = 0; d < D; ++d) o[size_t(h) * D + d] = l_sum > 0 ? float(acc[d] / l_sum) : 0.0f;
    m[h] = float(m_max);
    l[h] = float(l_sum);
  }
  return env.Undefined();
}

}  // namespace

void RegisterAttention(Napi::Env env, Napi::Object exports) {
  exports.Set("attention", Napi::Function::New(env, Attention, "attention"));
  exports.Set("attentionAsync", Napi::Function::New(env, AttentionAsync, "attentionAsync"));
  exports.Set("mergePartials", Napi::Function::New(env, MergePartials, "mergePartials"));
}

}  // namespace kvmesh
