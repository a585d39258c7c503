// Adopting an fd this process inherited (a VMM given vhost fds by number, as
// libvirt hands them to QEMU): the OwnedFd becomes its only owner.
#include <fcntl.h>

#include <cerrno>
#include <climits>
#include <string>

#include "addon.h"

namespace vhost {

// fdAdopt(fd, label): checks the fd is open, marks it FD_CLOEXEC (an inherited
// fd arrives without it) so it does not leak further, and wraps it.
static Napi::Value FdAdopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info[0], "fd", 0, INT_MAX);
  if (!info[1].IsString())
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "label must be a string");
  std::string label = info[1].As<Napi::String>().Utf8Value();
  // One owner per fd: adopting a number an OwnedFd holds would let either
  // close() pull the fd from under the other.
  if (FdOwned(env, fd))
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "fd " + std::to_string(fd) + " already has an owner in this library");
  int flags = ::fcntl(fd, F_GETFD);
  if (flags < 0) throw ErrnoError(env, errno, "fcntl(F_GETFD)", label);
  if (::fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
    throw ErrnoError(env, errno, "fcntl(F_SETFD)", label);
  return WrapFd(env, fd, label);
}

void InitFdAdopt(Napi::Env env, Napi::Object exports) {
  exports.Set("fdAdopt", Napi::Function::New(env, FdAdopt, "fdAdopt"));
}

}  // namespace vhost
