// Shared declarations of the addon: per-env data, errors, fd arguments.
// Each kernel object lives in its own .cc file and registers its functions
// through one Init* function called from binding.cc.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>

namespace vhost {

// Per-env state (the addon keeps no process-wide mutable globals, so it can
// be loaded in worker threads).
struct AddonData {
  Napi::FunctionReference ownedFdCtor;
  Napi::FunctionReference mappingCtor;
  Napi::FunctionReference errorCtor;  // VhostError from lib/core/errors.ts, once registered
  bool wrappingFd = false;  // OwnedFd can only be constructed by WrapFd
  // fd numbers an OwnedFd of this env owns now, so fdAdopt cannot give one a
  // second owner. Shared with each OwnedFd: its finalizer may outlive this.
  std::shared_ptr<std::unordered_set<int>> liveFds = std::make_shared<std::unordered_set<int>>();
};
AddonData& Data(Napi::Env env);

// ---- errors (errors.cc) ----------------------------------------------------
// Error shaped like Node core's UVException:
//   "EBUSY: device or resource busy, ioctl(VHOST_SET_OWNER) '/dev/vhost-net'"
// with .code, .errno (negative, as in Node), .syscall and .path (if non-empty).
Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall,
                       const std::string& path);
// Thrown when an fd-owning object is used after close().
Napi::Error ClosedError(Napi::Env env, const std::string& syscall,
                        const std::string& path);
// Validation error with an ERR_VHOST_* code, thrown before any syscall.
Napi::Error CodeError(Napi::Env env, const char* code, const std::string& message);

// ---- owned fds (owned_fd.cc) -----------------------------------------------
class OwnedFd;
// What the addon itself created behind an OwnedFd, for calls that only make
// sense on one kind (the path is a label anyone can pass to fdAdopt).
enum class FdKind { kOther, kEventFd };
// Wraps a freshly opened fd (must already be O_CLOEXEC) in a JS OwnedFd that
// becomes its only owner. On failure the fd is closed before throwing.
Napi::Object WrapFd(Napi::Env env, int fd, const std::string& path, FdKind kind = FdKind::kOther);
// The kind given to WrapFd (kOther for anything that is not an OwnedFd).
FdKind KindOf(const Napi::Value& handle);
// Marks an OwnedFd as being of `kind` once the caller checked what the fd is (eventfdAdopt).
void SetKindOf(const Napi::Value& handle, FdKind kind);
// Whether an OwnedFd of this env owns fd now.
bool FdOwned(Napi::Env env, int fd);
// The live fd of an OwnedFd, throwing ERR_VHOST_CLOSED if it was closed.
int FdOf(const Napi::Value& handle, const std::string& syscall);
// The path an OwnedFd was opened with (for error messages).
std::string PathOf(const Napi::Value& handle);
// ioctl(2) on an OwnedFd, retried on EINTR. On failure throws an ErrnoError
// with syscall "ioctl(<name>)" and the handle's path. Returns the result.
int IoctlOn(const Napi::Value& handle, unsigned long request, void* arg, const char* name);
// (dev, index, fd) → an ioctl taking struct vhost_vring_file (vhost.cc): the
// vring kick/call/err fds and vhost-net's backend. fd -1 / null unbinds.
void SetVringFile(const Napi::CallbackInfo& info, unsigned long request, const char* name);
// An fd argument: an OwnedFd, a raw fd number >= 0, or null/undefined/-1 for
// "none" (-1). A closed OwnedFd throws ERR_VHOST_CLOSED.
int FdArg(const Napi::Value& value, const std::string& syscall);

// ---- argument helpers (errors.cc) -----------------------------------------
// A string without NUL bytes: syscalls would silently stop at the first one.
std::string StringArg(const Napi::Value& value, const char* name);
// Whether d is an integer in min..max (false for NaN and infinities).
bool IsIntIn(double d, int min, int max);
// A number that is an integer in min..max.
int IntArg(const Napi::Value& value, const char* name, int min, int max);
uint64_t U64Arg(const Napi::Value& value, const char* name);
uint32_t U32Arg(const Napi::Value& value, const char* name);
uint64_t U64Field(const Napi::Object& obj, const char* name);

// ---- module registration (one per kernel object) ----------------------------
void InitErrors(Napi::Env env, Napi::Object exports);
void InitOwnedFd(Napi::Env env, Napi::Object exports);
void InitVhost(Napi::Env env, Napi::Object exports);
void InitVhostNet(Napi::Env env, Napi::Object exports);
void InitVhostVsock(Napi::Env env, Napi::Object exports);
void InitEventFd(Napi::Env env, Napi::Object exports);
void InitGuestMemory(Napi::Env env, Napi::Object exports);
void InitTap(Napi::Env env, Napi::Object exports);
void InitNetdev(Napi::Env env, Napi::Object exports);
void InitVirtqueue(Napi::Env env, Napi::Object exports);
void InitVsockSocket(Napi::Env env, Napi::Object exports);
void InitNetlink(Napi::Env env, Napi::Object exports);
void InitFdAdopt(Napi::Env env, Napi::Object exports);
void InitKvm(Napi::Env env, Napi::Object exports);
void InitUnixSocket(Napi::Env env, Napi::Object exports);
void InitDeviceMemory(Napi::Env env, Napi::Object exports);
void InitDeviceQueue(Napi::Env env, Napi::Object exports);

}  // namespace vhost
