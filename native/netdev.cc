// Link settings through the classic SIOC* ioctls (linux/sockios.h). They need
// any socket to address the link by name; each call opens a short-lived
// AF_INET datagram socket and closes it on every path. Errors carry the link
// name as .path.
#include <linux/if.h>
#include <linux/if_arp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "addon.h"

namespace vhost {

namespace {

constexpr size_t kEthAddrLen = 6;

// The ioctl socket; closed when it goes out of scope, exceptions included.
class IoctlSocket {
 public:
  explicit IoctlSocket(Napi::Env env) : fd_(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) {
    if (fd_ < 0) throw ErrnoError(env, errno, "socket", "");
  }
  ~IoctlSocket() { ::close(fd_); }
  IoctlSocket(const IoctlSocket&) = delete;
  IoctlSocket& operator=(const IoctlSocket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

// An ifreq addressed to the link named by the first argument.
struct LinkRequest {
  std::string name;
  struct ifreq ifr;

  explicit LinkRequest(const Napi::Value& value) {
    if (!value.IsString())
      throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", "link name must be a string");
    name = value.As<Napi::String>().Utf8Value();
    if (name.empty() || name.size() >= IFNAMSIZ || name.find('\0') != std::string::npos)
      throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", "link name must be 1..15 bytes");
    std::memset(&ifr, 0, sizeof ifr);
    std::memcpy(ifr.ifr_name, name.data(), name.size());
  }
};

void Ioctl(Napi::Env env, const IoctlSocket& sock, unsigned long request, const char* syscall,
           LinkRequest& req) {
  if (::ioctl(sock.fd(), request, &req.ifr) < 0) throw ErrnoError(env, errno, syscall, req.name);
}

}  // namespace

static Napi::Value LinkIndex(const Napi::CallbackInfo& info) {
  LinkRequest req(info[0]);
  IoctlSocket sock(info.Env());
  Ioctl(info.Env(), sock, SIOCGIFINDEX, "ioctl(SIOCGIFINDEX)", req);
  return Napi::Number::New(info.Env(), req.ifr.ifr_ifindex);
}

static Napi::Value LinkGetMtu(const Napi::CallbackInfo& info) {
  LinkRequest req(info[0]);
  IoctlSocket sock(info.Env());
  Ioctl(info.Env(), sock, SIOCGIFMTU, "ioctl(SIOCGIFMTU)", req);
  return Napi::Number::New(info.Env(), req.ifr.ifr_mtu);
}

static void LinkSetMtu(const Napi::CallbackInfo& info) {
  LinkRequest req(info[0]);
  req.ifr.ifr_mtu = static_cast<int>(U32Arg(info[1], "mtu"));
  if (req.ifr.ifr_mtu < 0) throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "mtu must fit in an int");
  IoctlSocket sock(info.Env());
  Ioctl(info.Env(), sock, SIOCSIFMTU, "ioctl(SIOCSIFMTU)", req);
}

// SIOCGIFHWADDR does not report the address length; the links this library
// manages are Ethernet, so the first ETH_ALEN bytes are returned.
static Napi::Value LinkGetMac(const Napi::CallbackInfo& info) {
  LinkRequest req(info[0]);
  IoctlSocket sock(info.Env());
  Ioctl(info.Env(), sock, SIOCGIFHWADDR, "ioctl(SIOCGIFHWADDR)", req);
  Napi::Uint8Array mac = Napi::Uint8Array::New(info.Env(), kEthAddrLen);
  std::memcpy(mac.Data(), req.ifr.ifr_hwaddr.sa_data, kEthAddrLen);
  return mac;
}

static void LinkSetMac(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LinkRequest req(info[0]);
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      info[1].As<Napi::Uint8Array>().ElementLength() != kEthAddrLen)
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "mac must be a Uint8Array of 6 bytes");
  Napi::Uint8Array mac = info[1].As<Napi::Uint8Array>();
  // The kernel rejects a family other than the link's type (EINVAL).
  req.ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
  std::memcpy(req.ifr.ifr_hwaddr.sa_data, mac.Data(), kEthAddrLen);
  IoctlSocket sock(env);
  Ioctl(env, sock, SIOCSIFHWADDR, "ioctl(SIOCSIFHWADDR)", req);
}

static Napi::Value LinkGetFlags(const Napi::CallbackInfo& info) {
  LinkRequest req(info[0]);
  IoctlSocket sock(info.Env());
  Ioctl(info.Env(), sock, SIOCGIFFLAGS, "ioctl(SIOCGIFFLAGS)", req);
  return Napi::Number::New(info.Env(), static_cast<unsigned short>(req.ifr.ifr_flags));
}

// Read-modify-write of IFF_UP, leaving the other flags as they are.
static void LinkSetUp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LinkRequest req(info[0]);
  if (!info[1].IsBoolean()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "up must be a boolean");
  bool up = info[1].As<Napi::Boolean>().Value();
  IoctlSocket sock(env);
  Ioctl(env, sock, SIOCGIFFLAGS, "ioctl(SIOCGIFFLAGS)", req);
  if (up)
    req.ifr.ifr_flags = static_cast<short>(req.ifr.ifr_flags | IFF_UP);
  else
    req.ifr.ifr_flags = static_cast<short>(req.ifr.ifr_flags & ~IFF_UP);
  Ioctl(env, sock, SIOCSIFFLAGS, "ioctl(SIOCSIFFLAGS)", req);
}

void InitNetdev(Napi::Env env, Napi::Object exports) {
  exports.Set("linkIndex", Napi::Function::New(env, LinkIndex, "linkIndex"));
  exports.Set("linkGetMtu", Napi::Function::New(env, LinkGetMtu, "linkGetMtu"));
  exports.Set("linkSetMtu", Napi::Function::New(env, LinkSetMtu, "linkSetMtu"));
  exports.Set("linkGetMac", Napi::Function::New(env, LinkGetMac, "linkGetMac"));
  exports.Set("linkSetMac", Napi::Function::New(env, LinkSetMac, "linkSetMac"));
  exports.Set("linkGetFlags", Napi::Function::New(env, LinkGetFlags, "linkGetFlags"));
  exports.Set("linkSetUp", Napi::Function::New(env, LinkSetUp, "linkSetUp"));
}

}  // namespace vhost
