// Native memory primitives Node lacks: a MAP_SHARED mapping of a file or device (the far-memory pool:
// a shared-memory file, a DAX device, optionally bound to a NUMA node with the raw mbind syscall, no
// libnuma) and page-aligned allocations (O_DIRECT buffers). Both come back as external ArrayBuffers
// whose finalizer releases the memory; unmapMemory() releases a mapping at once and detaches its
// ArrayBuffer first, so JavaScript can never touch an unmapped page. Arguments are validated in
// TypeScript (kernels/src/memory.ts); sizes and flags are re-checked here.
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

namespace kvmesh {
namespace {

constexpr int kMpolBind = 2;             // MPOL_BIND from <linux/mempolicy.h>
constexpr unsigned kMpolMfMove = 1u << 1;  // MPOL_MF_MOVE: move pages already faulted in
constexpr int kNumaNodesMax = 1024;

// Live mappings by base address; the finalizer and unmapMemory() both release through here, so a
// mapping is unmapped exactly once whichever comes first.
std::mutex g_mappings_mutex;
std::unordered_map<void*, size_t> g_mappings;

std::string ErrnoText(const std::string& what, int err) { return what + ": " + std::strerror(err); }

void ReleaseMapping(void* base) {
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(g_mappings_mutex);
    auto it = g_mappings.find(base);
    if (it == g_mappings.end()) return;
    bytes = it->second;
    g_mappings.erase(it);
  }
  munmap(base, bytes);
}

void FinalizeMapping(Napi::Env, void* base) { ReleaseMapping(base); }

void FinalizeAligned(Napi::Env, void* data) { std::free(data); }

bool ReadPositiveSize(const Napi::Value& v, size_t* out) {
  if (!v.IsNumber()) return false;
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 1 && d <= 9007199254740991.0) || static_cast<double>(static_cast<uint64_t>(d)) != d) return false;
  *out = static_cast<size_t>(d);
  return true;
}

// mapSharedFile(path, bytes, create, numaNode, readOnly, prefault) -> ArrayBuffer
Napi::Value MapSharedFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 6 || !info[0].IsString() || !info[2].IsBoolean() || !info[3].IsNumber() ||
      !info[4].IsBoolean() || !info[5].IsBoolean()) {
    Napi::TypeError::New(env, "mapSharedFile(path, bytes, create, numaNode, readOnly, prefault): bad arguments")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const std::string path = info[0].As<Napi::String>();
  size_t bytes = 0;
  if (!ReadPositiveSize(info[1], &bytes)) {
    Napi::RangeError::New(env, "mapSharedFile: bytes must be a positive safe integer").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const bool create = info[2].As<Napi::Boolean>();
  const int numa_node = info[3].As<Napi::Number>().Int32Value();
  const bool read_only = info[4].As<Napi::Boolean>();
  const bool prefault = info[5].As<Napi::Boolean>();
  if (numa_node < -1 || numa_node >= kNumaNodesMax) {
    Napi::RangeError::New(env, "mapSharedFile: numaNode must be -1 (none) or in [0, 1024)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (create && read_only) {
    Napi::TypeError::New(env, "mapSharedFile: create and readOnly exclude each other").ThrowAsJavaScriptException();
    return env.Undefined();
  }

  const int flags = (read_only ? O_RDONLY : O_RDWR) | (create ? O_CREAT : 0) | O_CLOEXEC;
  const int fd = open(path.c_str(), flags, 0600);
  if (fd < 0) {
    Napi::Error::New(env, ErrnoText("mapSharedFile: open " + path, errno)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    Napi::Error::New(env, ErrnoText("mapSharedFile: fstat " + path, err)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // NOTE: a DAX device is a character device: it has no file size to set or check (mmap past its end
  // fails by itself). A regular file is sized on create, with its blocks reserved up front, so a full
  // tmpfs is an error here and never a SIGBUS on a later write.
  if (S_ISREG(st.st_mode)) {
    if (create) {
      if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
        const int err = errno;
        close(fd);
        Napi::Error::New(env, ErrnoText("mapSharedFile: ftruncate " + path, err)).ThrowAsJavaScriptException();
        return env.Undefined();
      }
      const int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
      if (err != 0 && err != EOPNOTSUPP && err != EINVAL) {
        close(fd);
        Napi::Error::New(env, ErrnoText("mapSharedFile: cannot reserve " + std::to_string(bytes) + " bytes for " + path, err))
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
    } else if (static_cast<uint64_t>(st.st_size) < bytes) {
      close(fd);
      Napi::RangeError::New(env, "mapSharedFile: " + path + " holds " + std::to_string(st.st_size) +
                                     " bytes, fewer than the " + std::to_string(bytes) + " asked for")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
  } else if (!S_ISCHR(st.st_mode)) {
    close(fd);
    Napi::TypeError::New(env, "mapSharedFile: " + path + " is neither a regular file nor a device")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }

  const int prot = read_only ? PROT_READ : (PROT_READ | PROT_WRITE);
  void* base = mmap(nullptr, bytes, prot, MAP_SHARED, fd, 0);
  const int map_err = errno;
  close(fd);  // the mapping keeps the file referenced
  if (base == MAP_FAILED) {
    Napi::Error::New(env, ErrnoText("mapSharedFile: mmap " + path, map_err)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (numa_node >= 0) {
    unsigned long mask[kNumaNodesMax / (8 * sizeof(unsigned long))] = {0};
    mask[numa_node / (8 * sizeof(unsigned long))] = 1ul << (numa_node % (8 * sizeof(unsigned long)));
    if (syscall(SYS_mbind, base, bytes, kMpolBind, mask, static_cast<unsigned long>(kNumaNodesMax + 1),
                kMpolMfMove) != 0) {
      const int err = errno;
      munmap(base, bytes);
      Napi::Error::New(env, ErrnoText("mapSharedFile: mbind to NUMA node " + std::to_string(numa_node), err))
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  if (prefault) madvise(base, bytes, MADV_WILLNEED);
  {
    std::lock_guard<std::mutex> lock(g_mappings_mutex);
    g_mappings[base] = bytes;
  }
  return Napi::ArrayBuffer::New(env, base, bytes, FinalizeMapping);
}

// unmapMemory(arrayBuffer) -> boolean: true when it released a live mapping.
Napi::Value UnmapMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsArrayBuffer()) {
    Napi::TypeError::New(env, "unmapMemory(buffer): buffer must be an ArrayBuffer").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  if (buffer.IsDetached()) return Napi::Boolean::New(env, false);
  void* base = buffer.Data();
  {
    std::lock_guard<std::mutex> lock(g_mappings_mutex);
    if (g_mappings.find(base) == g_mappings.end()) return Napi::Boolean::New(env, false);
  }
  // NOTE: detach before munmap: every view of the buffer reads as length 0 from here on.
  buffer.Detach();
  ReleaseMapping(base);
  return Napi::Boolean::New(env, true);
}

// allocAligned(bytes, align) -> ArrayBuffer, zero-filled, freed by its finalizer.
Napi::Value AllocAligned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t bytes = 0;
  size_t align = 0;
  if (info.Length() != 2 || !ReadPositiveSize(info[0], &bytes) || !ReadPositiveSize(info[1], &align) ||
      (align & (align - 1)) != 0 || align < sizeof(void*) || align > (1u << 30)) {
    Napi::RangeError::New(env, "allocAligned(bytes, align): positive bytes, align a power of two >= 8")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  void* data = nullptr;
  const int err = posix_memalign(&data, align, bytes);
  if (err != 0 || data == nullptr) {
    Napi::Error::New(env, ErrnoText("allocAligned: " + std::to_string(bytes) + " bytes", err))
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::memset(data, 0, bytes);
  return Napi::ArrayBuffer::New(env, data, bytes, FinalizeAligned);
}

Napi::Value PageBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(sysconf(_SC_PAGESIZE)));
}

}  // namespace

void RegisterMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("mapSharedFile", Napi::Function::New(env, MapSharedFile, "mapSharedFile"));
  exports.Set("unmapMemory", Napi::Function::New(env, UnmapMemory, "unmapMemory"));
  exports.Set("allocAligned", Napi::Function::New(env, AllocAligned, "allocAligned"));
  exports.Set("pageBytes", Napi::Function::New(env, PageBytes, "pageBytes"));
}

}  // namespace kvmesh
