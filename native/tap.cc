// Tap devices: /dev/net/tun and its TUN* ioctls (linux/if_tun.h). Each
// function is one syscall on an OwnedFd; flag choices live in lib/netdev/tap.ts.
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

// tapOpen(path, name, flags): open + TUNSETIFF. An empty name or a template
// ("tap%d") lets the kernel choose; the chosen name is returned.
static Napi::Value TapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info[0], "path");
  std::string name = StringArg(info[1], "name");
  int flags = IntArg(info[2], "flags", 0, 0xffff);  // ifr_flags is a short
  if (name.size() >= IFNAMSIZ)
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
  unsigned int features = 0;
  IoctlOn(info[0], TUNGETFEATURES, &features, "TUNGETFEATURES");
  return Napi::Number::New(info.Env(), features);
}

static Napi::Value TapGetIff(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  IoctlOn(info[0], TUNGETIFF, &ifr, "TUNGETIFF");
  Napi::Object result = Napi::Object::New(env);
  result.Set("name", std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
  result.Set("flags", Napi::Number::New(env, static_cast<unsigned short>(ifr.ifr_flags)));
  return result;
}

// Ioctls whose argument is a pointer to an int the kernel reads or writes.
static void SetIntIoctl(const Napi::CallbackInfo& info, unsigned long request, const char* name,
                        int value) {
  IoctlOn(info[0], request, &value, name);
}

static Napi::Value GetIntIoctl(const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  int value = 0;
  IoctlOn(info[0], request, &value, name);
  return Napi::Number::New(info.Env(), value);
}

static void TapSetVnetHdrSize(const Napi::CallbackInfo& info) {
  SetIntIoctl(info, TUNSETVNETHDRSZ, "TUNSETVNETHDRSZ", IntArg(info[1], "size", INT_MIN, INT_MAX));
}

static Napi::Value TapGetVnetHdrSize(const Napi::CallbackInfo& info) {
  return GetIntIoctl(info, TUNGETVNETHDRSZ, "TUNGETVNETHDRSZ");
}

static void TapSetSndbuf(const Napi::CallbackInfo& info) {
  SetIntIoctl(info, TUNSETSNDBUF, "TUNSETSNDBUF", IntArg(info[1], "size", INT_MIN, INT_MAX));
}

static Napi::Value TapGetSndbuf(const Napi::CallbackInfo& info) {
  return GetIntIoctl(info, TUNGETSNDBUF, "TUNGETSNDBUF");
}

// TUNSETOFFLOAD and TUNSETPERSIST take their value as the ioctl argument itself.
static void TapSetOffload(const Napi::CallbackInfo& info) {
  uintptr_t flags = U32Arg(info[1], "flags");
  IoctlOn(info[0], TUNSETOFFLOAD, reinterpret_cast<void*>(flags), "TUNSETOFFLOAD");
}

static void TapSetPersist(const Napi::CallbackInfo& info) {
  if (!info[1].IsBoolean())
    throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "persist must be a boolean");
  uintptr_t on = info[1].As<Napi::Boolean>().Value() ? 1 : 0;
  IoctlOn(info[0], TUNSETPERSIST, reinterpret_cast<void*>(on), "TUNSETPERSIST");
}

static void TapSetQueue(const Napi::CallbackInfo& info) {
  if (!info[1].IsBoolean())
    throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "attach must be a boolean");
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = info[1].As<Napi::Boolean>().Value() ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
  IoctlOn(info[0], TUNSETQUEUE, &ifr, "TUNSETQUEUE");
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
