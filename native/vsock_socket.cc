// AF_VSOCK sockets (linux/vm_sockets.h): one function per syscall on a
// nonblocking socket. Node's libuv cannot wrap these fds (it guesses them as
// unknown), so lib/vsock/socket.ts builds streams on OwnedFd.watch; this file holds
// no policy: every "would block" comes back as null, never as a wait.
#include <linux/vm_sockets.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

#include "addon.h"

namespace vhost {

static std::string VsockPath(uint32_t cid, uint32_t port) {
  return "vsock:" + std::to_string(cid) + ":" + std::to_string(port);
}

static sockaddr_vm VsockAddr(uint32_t cid, uint32_t port) {
  sockaddr_vm addr{};
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = cid;
  addr.svm_port = port;
  return addr;
}

static Napi::Object AddrObject(Napi::Env env, const sockaddr_vm& addr) {
  Napi::Object obj = Napi::Object::New(env);
  obj.Set("cid", Napi::Number::New(env, addr.svm_cid));
  obj.Set("port", Napi::Number::New(env, addr.svm_port));
  return obj;
}

static Napi::Uint8Array BytesArg(const Napi::Value& value, const char* name) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", std::string(name) + " must be a Uint8Array");
  return value.As<Napi::Uint8Array>();
}

// vsockSocket(type, label): SOCK_STREAM (1) or SOCK_SEQPACKET (5), always
// nonblocking (it is polled) and close-on-exec. label names it in errors.
static Napi::Value VsockSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t type = U32Arg(info[0], "type");
  if (type != SOCK_STREAM && type != SOCK_SEQPACKET)
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "type must be SOCK_STREAM or SOCK_SEQPACKET");
  if (!info[1].IsString()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "label must be a string");
  std::string label = info[1].As<Napi::String>().Utf8Value();
  int fd = ::socket(AF_VSOCK, static_cast<int>(type) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw ErrnoError(env, errno, "socket", label);
  return WrapFd(env, fd, label);
}

// vsockBind(fd, cid, port): VMADDR_CID_ANY / VMADDR_PORT_ANY are 0xffffffff.
static void VsockBind(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "bind");
  uint32_t cid = U32Arg(info[1], "cid");
  uint32_t port = U32Arg(info[2], "port");
  sockaddr_vm addr = VsockAddr(cid, port);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
    throw ErrnoError(info.Env(), errno, "bind", VsockPath(cid, port));
}

static void VsockListen(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "listen");
  uint32_t backlog = U32Arg(info[1], "backlog");
  if (::listen(fd, static_cast<int>(backlog > INT_MAX ? INT_MAX : backlog)) < 0)
    throw ErrnoError(info.Env(), errno, "listen", PathOf(info[0]));
}

// vsockAccept(fd): { fd, cid, port } of the peer, or null when none is pending.
static Napi::Value VsockAccept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "accept");
  sockaddr_vm peer{};
  socklen_t len = sizeof peer;
  int conn;
  do {
    conn = ::accept4(fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (conn < 0 && errno == EINTR);
  if (conn < 0) {
    if (errno == EAGAIN) return env.Null();
    throw ErrnoError(env, errno, "accept", PathOf(info[0]));
  }
  Napi::Object result = AddrObject(env, peer);
  result.Set("fd", WrapFd(env, conn, VsockPath(peer.svm_cid, peer.svm_port)));
  return result;
}

// vsockConnect(fd, cid, port): true when connected at once, false when the
// handshake is under way (EINPROGRESS): poll writable, then vsockGetSocketError.
static Napi::Value VsockConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "connect");
  uint32_t cid = U32Arg(info[1], "cid");
  uint32_t port = U32Arg(info[2], "port");
  sockaddr_vm addr = VsockAddr(cid, port);
  // No EINTR retry: a nonblocking connect does not sleep.
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return Napi::Boolean::New(env, true);
  if (errno == EINPROGRESS) return Napi::Boolean::New(env, false);
  throw ErrnoError(env, errno, "connect", VsockPath(cid, port));
}

// vsockGetSocketError(fd): SO_ERROR (a positive errno, 0 for none); reading clears it.
static Napi::Value VsockGetSocketError(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "getsockopt(SO_ERROR)");
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    throw ErrnoError(info.Env(), errno, "getsockopt(SO_ERROR)", PathOf(info[0]));
  return Napi::Number::New(info.Env(), err);
}

// vsockSetConnectTimeout(fd, ms): SO_VM_SOCKETS_CONNECT_TIMEOUT. The kernel
// also applies it to nonblocking connects (default 2 s), failing them with ETIMEDOUT.
static void VsockSetConnectTimeout(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "setsockopt(SO_VM_SOCKETS_CONNECT_TIMEOUT)");
  uint32_t ms = U32Arg(info[1], "ms");
  timeval tv{};
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  if (::setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv) < 0)
    throw ErrnoError(info.Env(), errno, "setsockopt(SO_VM_SOCKETS_CONNECT_TIMEOUT)", PathOf(info[0]));
}

// vsockRead(fd, buf): bytes read, 0 at end of stream, null when nothing is
// pending (EAGAIN).
static Napi::Value VsockRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "read");
  Napi::Uint8Array buf = BytesArg(info[1], "buf");
  ssize_t n;
  do {
    n = ::recv(fd, buf.Data(), buf.ByteLength(), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    throw ErrnoError(env, errno, "read", PathOf(info[0]));
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// vsockRecvMessage(fd, buf): one SOCK_SEQPACKET message. MSG_TRUNC makes the
// kernel return the message's full length, so a result above buf.length means
// the tail was dropped. 0 at end of stream, null when none is pending.
static Napi::Value VsockRecvMessage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "recv");
  Napi::Uint8Array buf = BytesArg(info[1], "buf");
  ssize_t n;
  do {
    n = ::recv(fd, buf.Data(), buf.ByteLength(), MSG_TRUNC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    throw ErrnoError(env, errno, "recv", PathOf(info[0]));
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// vsockWrite(fd, buf): bytes written (possibly fewer than buf.length on a
// stream), or null when the send buffer is full (EAGAIN). MSG_NOSIGNAL: a
// closed peer is reported as EPIPE, never as SIGPIPE.
static Napi::Value VsockWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "write");
  Napi::Uint8Array buf = BytesArg(info[1], "buf");
  ssize_t n;
  do {
    n = ::send(fd, buf.Data(), buf.ByteLength(), MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    throw ErrnoError(env, errno, "write", PathOf(info[0]));
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// vsockShutdown(fd, how): SHUT_RD (0), SHUT_WR (1) or SHUT_RDWR (2).
static void VsockShutdown(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "shutdown");
  uint32_t how = U32Arg(info[1], "how");
  if (how > SHUT_RDWR) throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "how must be 0, 1 or 2");
  if (::shutdown(fd, static_cast<int>(how)) < 0)
    throw ErrnoError(info.Env(), errno, "shutdown", PathOf(info[0]));
}

static Napi::Value VsockGetSockName(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "getsockname");
  sockaddr_vm addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) < 0)
    throw ErrnoError(info.Env(), errno, "getsockname", PathOf(info[0]));
  return AddrObject(info.Env(), addr);
}

static Napi::Value VsockGetPeerName(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "getpeername");
  sockaddr_vm addr{};
  socklen_t len = sizeof addr;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) < 0)
    throw ErrnoError(info.Env(), errno, "getpeername", PathOf(info[0]));
  return AddrObject(info.Env(), addr);
}

// vsockGetLocalCid(fd): IOCTL_VM_SOCKETS_GET_LOCAL_CID on an open /dev/vsock.
static Napi::Value VsockGetLocalCid(const Napi::CallbackInfo& info) {
  unsigned int cid = 0;
  IoctlOn(info[0], IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid, "IOCTL_VM_SOCKETS_GET_LOCAL_CID");
  return Napi::Number::New(info.Env(), cid);
}

void InitVsockSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("vsockSocket", Napi::Function::New(env, VsockSocket, "vsockSocket"));
  exports.Set("vsockBind", Napi::Function::New(env, VsockBind, "vsockBind"));
  exports.Set("vsockListen", Napi::Function::New(env, VsockListen, "vsockListen"));
  exports.Set("vsockAccept", Napi::Function::New(env, VsockAccept, "vsockAccept"));
  exports.Set("vsockConnect", Napi::Function::New(env, VsockConnect, "vsockConnect"));
  exports.Set("vsockGetSocketError", Napi::Function::New(env, VsockGetSocketError, "vsockGetSocketError"));
  exports.Set("vsockSetConnectTimeout", Napi::Function::New(env, VsockSetConnectTimeout, "vsockSetConnectTimeout"));
  exports.Set("vsockRead", Napi::Function::New(env, VsockRead, "vsockRead"));
  exports.Set("vsockRecvMessage", Napi::Function::New(env, VsockRecvMessage, "vsockRecvMessage"));
  exports.Set("vsockWrite", Napi::Function::New(env, VsockWrite, "vsockWrite"));
  exports.Set("vsockShutdown", Napi::Function::New(env, VsockShutdown, "vsockShutdown"));
  exports.Set("vsockGetSockName", Napi::Function::New(env, VsockGetSockName, "vsockGetSockName"));
  exports.Set("vsockGetPeerName", Napi::Function::New(env, VsockGetPeerName, "vsockGetPeerName"));
  exports.Set("vsockGetLocalCid", Napi::Function::New(env, VsockGetLocalCid, "vsockGetLocalCid"));
}

}  // namespace vhost
