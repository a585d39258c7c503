// eventfd: the kernel's counter object used for vhost kicks and calls (and
// KVM ioeventfd/irqfd). Polling reuses OwnedFd.watch (owned_fd.cc); this file
// only creates, reads and writes.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "addon.h"

namespace vhost {

static const char kLabel[] = "eventfd";

// eventfdCreate(initval, semaphore): nonblocking because it is polled.
static Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t initval = U32Arg(info[0], "initval");
  if (!info[1].IsBoolean() && !info[1].IsUndefined())
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "semaphore must be a boolean");
  bool semaphore = info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  int flags = EFD_CLOEXEC | EFD_NONBLOCK | (semaphore ? EFD_SEMAPHORE : 0);
  int fd = ::eventfd(initval, flags);
  if (fd < 0) throw ErrnoError(env, errno, "eventfd", "");
  return WrapFd(env, fd, kLabel, FdKind::kEventFd);
}

// Only fds this file created (not an fd adopted under the same label): read(2)
// on another kind could block the loop or return a short count taken for a value.
static int EventFdOf(const Napi::Value& handle, const char* syscall) {
  int fd = FdOf(handle, syscall);
  if (KindOf(handle) != FdKind::kEventFd)
    throw CodeError(handle.Env(), "ERR_VHOST_INVALID_ARG", std::string(syscall) + ": not an eventfd '" + PathOf(handle) + "'");
  return fd;
}

// eventfdRead(fd): the counter (1 in semaphore mode), or null when it is zero.
static Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = EventFdOf(info[0], "read");
  uint64_t value = 0;
  ssize_t n;
  do {
    n = ::read(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    throw ErrnoError(env, errno, "read", PathOf(info[0]));
  }
  return Napi::BigInt::New(env, value);
}

// eventfdWrite(fd, value): false when the counter would pass 0xfffffffffffffffe
// (EAGAIN on a nonblocking eventfd). The kernel rejects 2^64-1 with EINVAL.
static Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = EventFdOf(info[0], "write");
  uint64_t value = U64Arg(info[1], "value");
  ssize_t n;
  do {
    n = ::write(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Boolean::New(env, false);
    throw ErrnoError(env, errno, "write", PathOf(info[0]));
  }
  return Napi::Boolean::New(env, true);
}

// eventfdAdopt(handle): an fd another process sent (a vhost-user front-end's
// kick, call or err) becomes usable with eventfdRead/Write once the kernel
// confirms it is an eventfd (its /proc/self/fd link is anon_inode:[eventfd]);
// made nonblocking, so a read racing the sender can never block the loop.
static Napi::Value EventfdAdopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "eventfdAdopt");
  char link[64];
  std::string proc = "/proc/self/fd/" + std::to_string(fd);
  ssize_t n = ::readlink(proc.c_str(), link, sizeof link - 1);
  if (n < 0) throw ErrnoError(env, errno, "readlink", proc);
  link[n] = 0;
  if (std::string(link) != "anon_inode:[eventfd]")
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", std::string("not an eventfd (") + link + ") '" + PathOf(info[0]) + "'");
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) throw ErrnoError(env, errno, "fcntl(F_SETFL)", PathOf(info[0]));
  SetKindOf(info[0], FdKind::kEventFd);
  return env.Undefined();
}

void InitEventFd(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfdCreate", Napi::Function::New(env, EventfdCreate, "eventfdCreate"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite, "eventfdWrite"));
  exports.Set("eventfdAdopt", Napi::Function::New(env, EventfdAdopt, "eventfdAdopt"));
}

}  // namespace vhost
