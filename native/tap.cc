// Tap devices: /dev/net/tun and its TUN* ioctls (linux/if_tun.h). Each
// function is one syscall on an OwnedFd; flag choices live in lib/tap.ts.
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "addon.h"

namespace vhost {

static std::string StringArg(const Napi::Value& value, const char* name) {
  if (!value.IsString())
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", std::string(name) + " must be a string");
  return value.As<Napi::String>().Utf8Value();
}

static int IntArg(const Napi::Value& value, const char* name, int64_t min, int64_t max) {
  if (!value.IsNumber())
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", std::string(name) + " must be a number");
  double d = value.As<Napi::Number>().DoubleValue();
  if (d != static_cast<double>(static_cast<int64_t>(d)) || d < static_cast<double>(min) ||
      d > static_cast<double>(max))
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG",
                    std::string(name) + " must be an integer in " + std::to_string(min) + ".." +
                        std::to_string(max));
  return static_cast<int>(d);
}

// tapOpen(path, name, flags): open + TUNSETIFF. An empty name or a template
// ("tap%d") lets the kernel choose; the chosen name is returned.
static Napi::Value TapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info[0], "path");
  std::string name = StringArg(info[1], "name");
  int flags = IntArg(info[2], "flags", 0, 0xffff);  // ifr_flags is a short
  if (name.size() >= IFNAMSIZ || name.find('\0') != std::string::npos)
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "name must be shorter than IFNAMSIZ (16) bytes");

  // O_NONBLOCK: tap fds are polled (and vhost does not care).
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw ErrnoError(env, errno, "open", path);

  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  ifr.ifr_flags = static_cast<short>(flags);
  if (::ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    ::close(fd);
    throw ErrnoError(env, err, "ioctl(TUNSETIFF)", path);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", WrapFd(env, fd, path));
  result.Set("name", std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
  return result;
}

static Napi::Value TapGetFeatures(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "ioctl(TUNGETFEATURES)");
  unsigned int features = 0;
  if (::ioctl(fd, TUNGETFEATURES, &features) < 0)
    throw ErrnoError(info.Env(), errno, "ioctl(TUNGETFEATURES)", PathOf(info[0]));
  return Napi::Number::New(info.Env(), features);
}

static Napi::Value TapGetIff(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "ioctl(TUNGETIFF)");
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  if (::ioctl(fd, TUNGETIFF, &ifr) < 0) throw ErrnoError(env, errno, "ioctl(TUNGETIFF)", PathOf(info[0]));
  Napi::Object result = Napi::Object::New(env);
  result.Set("name", std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
  result.Set("flags", Napi::Number::New(env, static_cast<unsigned short>(ifr.ifr_flags)));
  return result;
}

// Ioctls whose argument is a pointer to an int the kernel reads or writes.
static void SetIntIoctl(const Napi::CallbackInfo& info, unsigned long request, const char* syscall,
                        int value) {
  int fd = FdOf(info[0], syscall);
  if (::ioctl(fd, request, &value) < 0) throw ErrnoError(info.Env(), errno, syscall, PathOf(info[0]));
}

static Napi::Value GetIntIoctl(const Napi::CallbackInfo& info, unsigned long request, const char* syscall) {
  int fd = FdOf(info[0], syscall);
  int value = 0;
  if (::ioctl(fd, request, &value) < 0) throw ErrnoError(info.Env(), errno, syscall, PathOf(info[0]));
  return Napi::Number::New(info.Env(), value);
}

static void TapSetVnetHdrSize(const Napi::CallbackInfo& info) {
  SetIntIoctl(info, TUNSETVNETHDRSZ, "ioctl(TUNSETVNETHDRSZ)", IntArg(info[1], "size", INT_MIN, INT_MAX));
}

static Napi::Value TapGetVnetHdrSize(const Napi::CallbackInfo& info) {
  return GetIntIoctl(info, TUNGETVNETHDRSZ, "ioctl(TUNGETVNETHDRSZ)");
}

static void TapSetSndbuf(const Napi::CallbackInfo& info) {
  SetIntIoctl(info, TUNSETSNDBUF, "ioctl(TUNSETSNDBUF)", IntArg(info[1], "size", INT_MIN, INT_MAX));
}

static Napi::Value TapGetSndbuf(const Napi::CallbackInfo& info) {
  return GetIntIoctl(info, TUNGETSNDBUF, "ioctl(TUNGETSNDBUF)");
}

// TUNSETOFFLOAD and TUNSETPERSIST take their value as the ioctl argument itself.
static void TapSetOffload(const Napi::CallbackInfo& info) {
  const char* syscall = "ioctl(TUNSETOFFLOAD)";
  int fd = FdOf(info[0], syscall);
  unsigned long flags = U32Arg(info[1], "flags");
  if (::ioctl(fd, TUNSETOFFLOAD, flags) < 0) throw ErrnoError(info.Env(), errno, syscall, PathOf(info[0]));
}

static void TapSetPersist(const Napi::CallbackInfo& info) {
  const char* syscall = "ioctl(TUNSETPERSIST)";
  int fd = FdOf(info[0], syscall);
  if (!info[1].IsBoolean())
    throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "persist must be a boolean");
  unsigned long on = info[1].As<Napi::Boolean>().Value() ? 1 : 0;
  if (::ioctl(fd, TUNSETPERSIST, on) < 0) throw ErrnoError(info.Env(), errno, syscall, PathOf(info[0]));
}

static void TapSetQueue(const Napi::CallbackInfo& info) {
  const char* syscall = "ioctl(TUNSETQUEUE)";
  int fd = FdOf(info[0], syscall);
  if (!info[1].IsBoolean())
    throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "attach must be a boolean");
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = info[1].As<Napi::Boolean>().Value() ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
  if (::ioctl(fd, TUNSETQUEUE, &ifr) < 0) throw ErrnoError(info.Env(), errno, syscall, PathOf(info[0]));
}

void InitTap(Napi::Env env, Napi::Object exports) {
  exports.Set("tapOpen", Napi::Function::New(env, TapOpen, "tapOpen"));
  exports.Set("tapGetFeatures", Napi::Function::New(env, TapGetFeatures, "tapGetFeatures"));
  exports.Set("tapGetIff", Napi::Function::New(env, TapGetIff, "tapGetIff"));
  exports.Set("tapSetVnetHdrSize", Napi::Function::New(env, TapSetVnetHdrSize, "tapSetVnetHdrSize"));
  exports.Set("tapGetVnetHdrSize", Napi::Function::New(env, TapGetVnetHdrSize, "tapGetVnetHdrSize"));
  exports.Set("tapSetOffload", Napi::Function::New(env, TapSetOffload, "tapSetOffload"));
  exports.Set("tapSetSndbuf", Napi::Function::New(env, TapSetSndbuf, "tapSetSndbuf"));
  exports.Set("tapGetSndbuf", Napi::Function::New(env, TapGetSndbuf, "tapGetSndbuf"));
  exports.Set("tapSetPersist", Napi::Function::New(env, TapSetPersist, "tapSetPersist"));
  exports.Set("tapSetQueue", Napi::Function::New(env, TapSetQueue, "tapSetQueue"));
}

}  // namespace vhost
