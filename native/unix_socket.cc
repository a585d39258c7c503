// AF_UNIX sockets with file descriptors passed alongside (SCM_RIGHTS): one
// function per syscall on a nonblocking, close-on-exec socket. Streams and
// servers are built in lib/core/unix-socket.ts on OwnedFd.watch (no thread per
// socket); the one blocking call, unixPoll, is bounded by its timeout (the
// vhost-user front-end waits for a reply that way, as QEMU does). No policy:
// "would block" comes back as null.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "addon.h"

namespace vhost {

// The kernel refuses more than SCM_MAX_FD (253) fds in one message (EINVAL).
constexpr size_t kMaxFds = 253;

static Napi::Uint8Array BytesArg(const Napi::Value& value, const char* name) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", std::string(name) + " must be a Uint8Array");
  return value.As<Napi::Uint8Array>();
}

static int TypeArg(const Napi::Value& value) {
  uint32_t type = U32Arg(value, "type");
  if (type != SOCK_STREAM && type != SOCK_SEQPACKET)
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", "type must be SOCK_STREAM (1) or SOCK_SEQPACKET (5)");
  return static_cast<int>(type);
}

// A filesystem path for sun_path; a longer one would be cut silently by the kernel.
static sockaddr_un UnixAddr(const Napi::Value& value, socklen_t* len) {
  std::string path = StringArg(value, "path");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    throw CodeError(value.Env(), "ERR_VHOST_OUT_OF_RANGE",
                    "path must be 1.." + std::to_string(sizeof addr.sun_path - 1) + " bytes, got " + std::to_string(path.size()));
  std::memcpy(addr.sun_path, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return addr;
}

// unixSocket(type, label): socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC).
static Napi::Value UnixSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int type = TypeArg(info[0]);
  std::string label = StringArg(info[1], "label");
  int fd = ::socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw ErrnoError(env, errno, "socket", label);
  return WrapFd(env, fd, label);
}

// unixSocketPair(type, label): two connected sockets, both nonblocking and close-on-exec.
static Napi::Value UnixSocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int type = TypeArg(info[0]);
  std::string label = StringArg(info[1], "label");
  int sv[2];
  if (::socketpair(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    throw ErrnoError(env, errno, "socketpair", label);
  Napi::Array pair = Napi::Array::New(env, 2);
  Napi::Object first;
  try {
    first = WrapFd(env, sv[0], label);
  } catch (...) {
    ::close(sv[1]);  // WrapFd closed sv[0]
    throw;
  }
  pair.Set(0u, first);
  pair.Set(1u, WrapFd(env, sv[1], label));  // on failure first is closed by its owner
  return pair;
}

// unixConnect(fd, path): connect(2). A unix connect completes at once or fails
// (EAGAIN when the listener's backlog is full), so no in-progress state.
static void UnixConnect(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "connect");
  socklen_t len = 0;
  sockaddr_un addr = UnixAddr(info[1], &len);
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), len);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) throw ErrnoError(info.Env(), errno, "connect", addr.sun_path);
}

static void UnixBind(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "bind");
  socklen_t len = 0;
  sockaddr_un addr = UnixAddr(info[1], &len);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) < 0)
    throw ErrnoError(info.Env(), errno, "bind", addr.sun_path);
}

static void UnixListen(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "listen");
  uint32_t backlog = U32Arg(info[1], "backlog");
  if (::listen(fd, static_cast<int>(backlog > INT_MAX ? INT_MAX : backlog)) < 0)
    throw ErrnoError(info.Env(), errno, "listen", PathOf(info[0]));
}

// unixAccept(fd): the connection (nonblocking, close-on-exec), or null when none is pending.
static Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "accept");
  int conn;
  do {
    conn = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (conn < 0 && errno == EINTR);
  if (conn < 0) {
    if (errno == EAGAIN) return env.Null();
    throw ErrnoError(env, errno, "accept", PathOf(info[0]));
  }
  return WrapFd(env, conn, PathOf(info[0]));
}

// unixSendMsg(fd, buf, fds): sendmsg(MSG_NOSIGNAL) of buf with fds (OwnedFds or
// numbers) as SCM_RIGHTS. Bytes written (a stream may take fewer; the fds go
// with the first byte), or null when the send buffer is full (EAGAIN). The
// sender keeps its fds: the kernel gives the receiver duplicates.
static Napi::Value UnixSendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "sendmsg");
  Napi::Uint8Array buf = BytesArg(info[1], "buf");
  if (!info[2].IsArray()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "fds must be an array");
  Napi::Array list = info[2].As<Napi::Array>();
  if (list.Length() > kMaxFds)
    throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE",
                    "fds: at most " + std::to_string(kMaxFds) + " per message (SCM_MAX_FD), got " + std::to_string(list.Length()));
  if (buf.ByteLength() == 0 && list.Length() > 0)
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "buf must hold at least one byte to carry fds");
  std::vector<int> fds;
  for (uint32_t i = 0; i < list.Length(); i++) {
    int f = FdArg(list.Get(i), "sendmsg");
    if (f < 0) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "fds[" + std::to_string(i) + "] must be an open fd");
    fds.push_back(f);
  }
  iovec iov{buf.Data(), buf.ByteLength()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do {
    n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    throw ErrnoError(env, errno, "sendmsg", PathOf(info[0]));
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// Closes every fd of every SCM_RIGHTS header in msg (none of them has an owner yet).
static void CloseReceived(msghdr* msg) {
  for (cmsghdr* c = CMSG_FIRSTHDR(msg); c != nullptr; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int f;
      std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      ::close(f);
    }
  }
}

// unixRecvMsg(fd, buf, maxFds): recvmsg(MSG_CMSG_CLOEXEC) into buf, accepting
// up to maxFds fds. { bytes, fds: OwnedFd[] }, bytes 0 at end of stream, or
// null when nothing is pending. A message whose fds did not fit (MSG_CTRUNC)
// or, on seqpacket, whose bytes did not fit (MSG_TRUNC) throws
// ERR_VHOST_TRUNCATED after closing every fd that came with it.
static Napi::Value UnixRecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "recvmsg");
  Napi::Uint8Array buf = BytesArg(info[1], "buf");
  int maxFds = IntArg(info[2], "maxFds", 0, static_cast<int>(kMaxFds));
  iovec iov{buf.Data(), buf.ByteLength()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  // At least room for one fd: with none, any fd sent is dropped by the kernel
  // with MSG_CTRUNC, which is reported below the same way.
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (maxFds > 0 ? maxFds : 1)), 0);
  msg.msg_control = control.data();
  msg.msg_controllen = maxFds > 0 ? control.size() : 0;
  ssize_t n;
  do {
    n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    throw ErrnoError(env, errno, "recvmsg", PathOf(info[0]));
  }
  std::string path = PathOf(info[0]);
  if (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) {
    CloseReceived(&msg);
    std::string what = (msg.msg_flags & MSG_CTRUNC)
                           ? "more fds than the " + std::to_string(maxFds) + " accepted came with a message"
                           : "a message longer than the " + std::to_string(buf.ByteLength()) + "-byte buffer came";
    Napi::Error err = CodeError(env, "ERR_VHOST_TRUNCATED", what + ", recvmsg '" + path +
                                                                 "' (the message was dropped and its fds closed)");
    err.Value().Set("syscall", "recvmsg");
    err.Value().Set("path", path);
    throw err;
  }
  std::vector<int> got;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int f;
      std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      got.push_back(f);
    }
  }
  // Each fd gets its owner before anything else can throw; a failure to wrap
  // one closes it (WrapFd) and the ones after it here.
  Napi::Array fds = Napi::Array::New(env, got.size());
  for (size_t i = 0; i < got.size(); i++) {
    try {
      fds.Set(static_cast<uint32_t>(i), WrapFd(env, got[i], "scm_rights:" + path));
    } catch (...) {
      for (size_t k = i + 1; k < got.size(); k++) ::close(got[k]);
      throw;
    }
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  result.Set("fds", fds);
  return result;
}

// unixPoll(fd, events, timeoutMs): a bounded poll(2) of one fd, for callers
// that must wait for an answer synchronously. POLLIN 1, POLLOUT 4; the result
// holds POLLERR 8 / POLLHUP 16 too; 0 when the time ran out. EINTR resumes
// with the time that is left.
static Napi::Value UnixPoll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "poll");
  int events = IntArg(info[1], "events", 0, POLLIN | POLLOUT);
  if ((events & ~(POLLIN | POLLOUT)) != 0)
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "events must be a mask of POLLIN (1) and POLLOUT (4)");
  int timeout = IntArg(info[2], "timeoutMs", 0, INT_MAX);
  timespec start{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    pollfd p{fd, static_cast<short>(events), 0};
    int rc = ::poll(&p, 1, timeout);
    if (rc >= 0) return Napi::Number::New(env, rc == 0 ? 0 : p.revents);
    if (errno != EINTR) throw ErrnoError(env, errno, "poll", PathOf(info[0]));
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    if (elapsed >= timeout) return Napi::Number::New(env, 0);
    timeout -= static_cast<int>(elapsed);
    start = now;
  }
}

// unixShutdown(fd, how): SHUT_RD (0), SHUT_WR (1) or SHUT_RDWR (2).
static void UnixShutdown(const Napi::CallbackInfo& info) {
  int fd = FdOf(info[0], "shutdown");
  int how = IntArg(info[1], "how", SHUT_RD, SHUT_RDWR);
  if (::shutdown(fd, how) < 0) throw ErrnoError(info.Env(), errno, "shutdown", PathOf(info[0]));
}

// unixPeerCred(fd): SO_PEERCRED of a connected socket: { pid, uid, gid }.
static Napi::Value UnixPeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "getsockopt(SO_PEERCRED)");
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
    throw ErrnoError(env, errno, "getsockopt(SO_PEERCRED)", PathOf(info[0]));
  Napi::Object obj = Napi::Object::New(env);
  obj.Set("pid", Napi::Number::New(env, cred.pid));
  obj.Set("uid", Napi::Number::New(env, cred.uid));
  obj.Set("gid", Napi::Number::New(env, cred.gid));
  return obj;
}

void InitUnixSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("unixSocket", Napi::Function::New(env, UnixSocket, "unixSocket"));
  exports.Set("unixSocketPair", Napi::Function::New(env, UnixSocketPair, "unixSocketPair"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("unixBind", Napi::Function::New(env, UnixBind, "unixBind"));
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixAccept", Napi::Function::New(env, UnixAccept, "unixAccept"));
  exports.Set("unixSendMsg", Napi::Function::New(env, UnixSendMsg, "unixSendMsg"));
  exports.Set("unixRecvMsg", Napi::Function::New(env, UnixRecvMsg, "unixRecvMsg"));
  exports.Set("unixPoll", Napi::Function::New(env, UnixPoll, "unixPoll"));
  exports.Set("unixShutdown", Napi::Function::New(env, UnixShutdown, "unixShutdown"));
  exports.Set("unixPeerCred", Napi::Function::New(env, UnixPeerCred, "unixPeerCred"));
}

}  // namespace vhost
