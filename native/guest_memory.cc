// Guest memory: memfd (so the same pages can be handed to KVM or QEMU),
// seals, and MAP_SHARED mappings exposed to JS as one external ArrayBuffer.
//
// Lifetime of a mapping. The Mapping object and the ArrayBuffer's finalizer
// share one refcounted MapState; whichever of them is released last unmaps.
// So dropping the Mapping while JS still holds views keeps the memory mapped
// (no use-after-unmap), and an explicit unmap() detaches the buffer (every
// view then has byteLength 0) before it munmaps at once.
//
// The buffer is created lazily on first access of `buffer`: a mapping larger
// than the runtime's largest ArrayBuffer (4 GiB on Node 20) can still be made,
// translated and handed to the kernel; only `buffer` then throws
// ERR_VHOST_OUT_OF_RANGE.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>

#include "addon.h"

namespace vhost {

namespace {

struct MapState {
  void* addr;
  size_t size;
  bool unmapped = false;

  MapState(void* a, size_t s) : addr(a), size(s) {}
  ~MapState() { Unmap(); }
  MapState(const MapState&) = delete;
  MapState& operator=(const MapState&) = delete;

  void Unmap() {
    if (unmapped) return;
    ::munmap(addr, size);  // fails only on bad arguments, which we never pass
    unmapped = true;
  }
};

using StatePtr = std::shared_ptr<MapState>;

// Tags the External that is the construction token of Mapping, so JS (which
// cannot create tagged externals) can never construct one with arbitrary
// arguments. Same idea as OwnedFd's wrappingFd, without per-env mutable state.
constexpr napi_type_tag kMappingToken = {0x6c696e7578766873ULL, 0x6d617070696e6721ULL};

class Mapping : public Napi::ObjectWrap<Mapping> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Mapping",
                       {InstanceAccessor<&Mapping::GetAddress>("address"),
                        InstanceAccessor<&Mapping::GetSize>("size"),
                        InstanceAccessor<&Mapping::GetUnmapped>("unmapped"),
                        InstanceAccessor<&Mapping::GetBuffer>("buffer"),
                        InstanceMethod<&Mapping::UnmapMethod>("unmap")});
  }

  explicit Mapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Mapping>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsExternal() || !info[0].As<Napi::External<StatePtr>>().CheckTypeTag(&kMappingToken))
      throw CodeError(env, "ERR_VHOST_ILLEGAL_CONSTRUCTOR", "Mapping is created by mmapShared only");
    state_ = *info[0].As<Napi::External<StatePtr>>().Data();
  }

  // GC of the Mapping drops its share only; the ArrayBuffer's finalizer may
  // still hold the other one while views are alive.
  ~Mapping() override = default;

  static Napi::Object New(Napi::Env env, StatePtr state) {
    Napi::External<StatePtr> token = Napi::External<StatePtr>::New(env, &state);
    token.TypeTag(&kMappingToken);
    return Data(env).mappingCtor.New({token});
  }

 private:
  Napi::Value GetAddress(const Napi::CallbackInfo& info) {
    return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(state_->addr)));
  }
  Napi::Value GetSize(const Napi::CallbackInfo& info) {
    return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(state_->size));
  }
  Napi::Value GetUnmapped(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), released_ || state_->unmapped);
  }

  Napi::Value GetBuffer(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!buffer_.IsEmpty()) return buffer_.Value();
    Napi::ArrayBuffer buffer;
    if (state_->unmapped || released_) {
      // Never viewed before unmap(): stand in with an empty, detached buffer.
      buffer = Napi::ArrayBuffer::New(env, 0);
      buffer.Detach();
    } else {
      // Probe without a finalizer first: when an external buffer is refused
      // (too large), Node runs its finalizer and node-addon-api frees the
      // finalizer data again, a double free. A probe that fails owns nothing.
      try {
        Napi::ArrayBuffer probe = Napi::ArrayBuffer::New(env, state_->addr, state_->size);
        probe.Detach();  // never reaches JS
      } catch (const Napi::Error&) {
        throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE",
                        "mapping of " + std::to_string(state_->size) +
                            " bytes is larger than the largest ArrayBuffer this runtime allows; "
                            "map smaller regions to view them from JS");
      }
      buffer = Napi::ArrayBuffer::New(
          env, state_->addr, state_->size,
          [](Napi::Env, void*, StatePtr* share) { delete share; }, new StatePtr(state_));
    }
    buffer_ = Napi::Persistent(buffer);
    return buffer;
  }

  // Detach first so no view can reach the pages, then munmap. If detaching
  // fails the memory stays mapped (an error beats a dangling view).
  //
  // A buffer detached by someone else (ArrayBuffer.prototype.transfer moves
  // the pages to a new ArrayBuffer) may still be viewed through its successor:
  // then leave the munmap to the buffer's finalizer, which holds a share.
  void UnmapMethod(const Napi::CallbackInfo&) {
    if (state_->unmapped || released_) return;
    if (!buffer_.IsEmpty()) {
      Napi::ArrayBuffer buffer = buffer_.Value();
      if (buffer.IsDetached()) {
        released_ = true;  // our share goes with this object; the pages with the last view
        return;
      }
      buffer.Detach();
    }
    state_->Unmap();
  }

  StatePtr state_;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
  bool released_ = false;  // our share given up after a foreign detach
};

std::string MemfdPath(const std::string& name) { return "memfd:" + name; }

// memfdCreate(name, flags): memfd_create(name, MFD_CLOEXEC | flags).
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = StringArg(info[0], "memfd name");
  uint32_t flags = U32Arg(info[1], "flags");
  int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC | flags);
  if (fd < 0) throw ErrnoError(env, errno, "memfd_create", MemfdPath(name));
  return WrapFd(env, fd, MemfdPath(name));
}

void Ftruncate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "ftruncate");
  uint64_t size = U64Arg(info[1], "size");
  if (size > static_cast<uint64_t>(INT64_MAX))
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "size must be below 2^63");
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) throw ErrnoError(env, errno, "ftruncate", PathOf(info[0]));
}

void AddSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "fcntl(F_ADD_SEALS)");
  uint32_t seals = U32Arg(info[1], "seals");
  if (::fcntl(fd, F_ADD_SEALS, seals) != 0) throw ErrnoError(env, errno, "fcntl(F_ADD_SEALS)", PathOf(info[0]));
}

Napi::Value GetSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "fcntl(F_GET_SEALS)");
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) throw ErrnoError(env, errno, "fcntl(F_GET_SEALS)", PathOf(info[0]));
  return Napi::Number::New(env, seals);
}

// mmapShared(fd | null, size, offset, extraFlags): always MAP_SHARED (the
// kernel and other processes must see the same pages), anonymous without fd.
Napi::Value MmapShared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool anonymous = info[0].IsNull() || info[0].IsUndefined();
  int fd = anonymous ? -1 : FdOf(info[0], "mmap");
  uint64_t size = U64Arg(info[1], "size");
  uint64_t offset = U64Arg(info[2], "offset");
  uint32_t extra = U32Arg(info[3], "extraFlags");
  // Another mapping type or a fixed address would break the contract (or
  // clobber existing mappings): refuse rather than pass through.
  if (extra & (MAP_TYPE | MAP_FIXED))
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "extraFlags must not contain MAP_PRIVATE, MAP_SHARED or MAP_FIXED");
  if (offset > static_cast<uint64_t>(INT64_MAX))
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "offset must be below 2^63");
  // Pages past the end of a file fault with SIGBUS when touched: refuse a
  // mapping that reaches beyond the file (memfds are regular files).
  if (!anonymous) {
    struct stat st;
    if (::fstat(fd, &st) != 0) throw ErrnoError(env, errno, "fstat", PathOf(info[0]));
    if (S_ISREG(st.st_mode) && (offset > static_cast<uint64_t>(st.st_size) ||
                                size > static_cast<uint64_t>(st.st_size) - offset))
      throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE",
                      "mmap of " + std::to_string(size) + " bytes at offset " + std::to_string(offset) +
                          " reaches past the end of '" + PathOf(info[0]) + "' (" + std::to_string(st.st_size) + " bytes)");
  }
  int flags = MAP_SHARED | (anonymous ? MAP_ANONYMOUS : 0) | static_cast<int>(extra);
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, flags, fd, static_cast<off_t>(offset));
  if (addr == MAP_FAILED) throw ErrnoError(env, errno, "mmap", anonymous ? std::string() : PathOf(info[0]));
  // From here the state owns the mapping: an exception below unmaps it.
  return Mapping::New(env, std::make_shared<MapState>(addr, static_cast<size_t>(size)));
}

}  // namespace

void InitGuestMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("addSeals", Napi::Function::New(env, AddSeals, "addSeals"));
  exports.Set("getSeals", Napi::Function::New(env, GetSeals, "getSeals"));
  exports.Set("mmapShared", Napi::Function::New(env, MmapShared, "mmapShared"));
  Napi::Function ctor = Mapping::Define(env);
  Data(env).mappingCtor = Napi::Persistent(ctor);
}

}  // namespace vhost
