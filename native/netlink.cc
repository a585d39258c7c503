// rtnetlink: a NETLINK_ROUTE socket (optionally created inside another network
// namespace), one request/reply exchange on it, and network namespaces the
// way `ip netns` keeps them (a bind mount under /run/netns). Messages are
// encoded and decoded in lib/netdev/netlink.ts; this file only moves bytes and turns
// the kernel's error answer into an ErrnoError.
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "addon.h"

namespace vhost {

namespace {

constexpr const char* kNetnsDir = "/run/netns";
// A reply that never comes must not hang the event loop forever.
constexpr int kReplyTimeoutSec = 5;

// A namespace name becomes a file name under /run/netns.
std::string NetnsName(const Napi::Value& value) {
  std::string name = StringArg(value, "name");
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos)
    throw CodeError(value.Env(), "ERR_VHOST_INVALID_ARG", "name must be a non-empty file name without '/'");
  return name;
}

// Result of work done on a helper thread: the failing call and its errno.
struct ThreadResult {
  int fd = -1;
  int err = 0;
  const char* syscall = "";
};

int OpenRouteSocket(ThreadResult& r) {
  int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) {
    r.err = errno;
    r.syscall = "socket(AF_NETLINK)";
    return -1;
  }
  return fd;
}

// setns() changes the calling thread's namespace for good, so it runs on a
// short-lived thread: a socket keeps the namespace it was created in.
void SocketInNetns(int nsfd, ThreadResult& r) {
  if (::setns(nsfd, CLONE_NEWNET) < 0) {
    r.err = errno;
    r.syscall = "setns(CLONE_NEWNET)";
    return;
  }
  r.fd = OpenRouteSocket(r);
}

const char* MessageName(uint16_t type) {
  switch (type) {
    case RTM_NEWLINK: return "RTM_NEWLINK";
    case RTM_DELLINK: return "RTM_DELLINK";
    case RTM_GETLINK: return "RTM_GETLINK";
    case RTM_SETLINK: return "RTM_SETLINK";
    case RTM_NEWADDR: return "RTM_NEWADDR";
    case RTM_DELADDR: return "RTM_DELADDR";
    case RTM_GETADDR: return "RTM_GETADDR";
    default: return nullptr;
  }
}

// The kernel's extended-ack text (NLMSGERR_ATTR_MSG), if it sent one.
std::string ExtAckMessage(const nlmsghdr* h) {
  if (!(h->nlmsg_flags & NLM_F_ACK_TLVS)) return "";
  // With NETLINK_CAP_ACK the error carries only the request's header.
  size_t off = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(nlmsgerr));
  const char* base = reinterpret_cast<const char*>(h);
  while (off + sizeof(nlattr) <= h->nlmsg_len) {
    const auto* a = reinterpret_cast<const nlattr*>(base + off);
    if (a->nla_len < sizeof(nlattr) || off + a->nla_len > h->nlmsg_len) break;
    if ((a->nla_type & NLA_TYPE_MASK) == NLMSGERR_ATTR_MSG) {
      const char* s = base + off + NLA_HDRLEN;
      return std::string(s, strnlen(s, a->nla_len - NLA_HDRLEN));
    }
    off += NLA_ALIGN(a->nla_len);
  }
  return "";
}

Napi::Error NetlinkError(Napi::Env env, int err, const std::string& syscall, const std::string& path,
                         const std::string& detail) {
  Napi::Error error = ErrnoError(env, err, syscall, path);
  if (!detail.empty()) {
    Napi::Object obj = error.Value();
    obj.Set("message", obj.Get("message").As<Napi::String>().Utf8Value() + " (kernel: " + detail + ")");
    obj.Set("detail", detail);
  }
  return error;
}

}  // namespace

// std::thread throws std::system_error when it cannot start a thread (EAGAIN);
// report that as an errno instead of letting it terminate the process.
template <typename F>
static int RunInThread(F&& fn) {
  try {
    std::thread worker(std::forward<F>(fn));
    worker.join();
    return 0;
  } catch (const std::system_error& e) {
    return e.code().value() != 0 ? e.code().value() : EAGAIN;
  }
}

// netlinkOpen(netns): a bound NETLINK_ROUTE socket, in the namespace of the
// given netns fd (null: this process's).
static Napi::Value NetlinkOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int nsfd = FdArg(info[0], "setns(CLONE_NEWNET)");
  ThreadResult r;
  if (nsfd < 0) {
    r.fd = OpenRouteSocket(r);
  } else {
    int err = RunInThread([nsfd, &r] { SocketInNetns(nsfd, r); });
    if (err != 0) throw ErrnoError(env, err, "pthread_create", PathOf(info[0]));
  }
  if (r.fd < 0) throw ErrnoError(env, r.err, r.syscall, nsfd < 0 ? "" : PathOf(info[0]));
  int one = 1;
  // Best effort: short error acks, and the kernel's explanation with them.
  ::setsockopt(r.fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  ::setsockopt(r.fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  timeval tv{kReplyTimeoutSec, 0};
  sockaddr_nl local{};
  local.nl_family = AF_NETLINK;
  const char* failed = nullptr;
  if (::setsockopt(r.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) failed = "setsockopt(SO_RCVTIMEO)";
  else if (::bind(r.fd, reinterpret_cast<sockaddr*>(&local), sizeof local) < 0) failed = "bind(AF_NETLINK)";
  if (failed != nullptr) {
    int err = errno;
    ::close(r.fd);
    throw ErrnoError(env, err, failed, "rtnetlink");
  }
  return WrapFd(env, r.fd, "rtnetlink");
}

// netlinkRequest(sock, message, path): sends one request and returns the
// reply messages (each a Buffer holding one nlmsghdr and its payload) that
// came before the ACK, NLMSG_DONE, or the single reply of a plain GET.
// Dumps (NLM_F_DUMP) should not ask for an ACK: they end with NLMSG_DONE.
// A negative error in the ACK or DONE throws with the link name as .path.
static Napi::Value NetlinkRequest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdOf(info[0], "sendmsg(AF_NETLINK)");
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "message must be a Uint8Array");
  Napi::Uint8Array msg = info[1].As<Napi::Uint8Array>();
  std::string path = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
  if (msg.ByteLength() < sizeof(nlmsghdr))
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "message is shorter than a netlink header");
  nlmsghdr req;
  std::memcpy(&req, msg.Data(), sizeof req);
  if (req.nlmsg_len != msg.ByteLength())
    throw CodeError(env, "ERR_VHOST_INVALID_ARG", "message nlmsg_len must equal its byte length");
  const char* name = MessageName(req.nlmsg_type);
  std::string op = name ? name : "type " + std::to_string(req.nlmsg_type);
  std::string syscall = "netlink(" + op + ")";

  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(fd, msg.Data(), msg.ByteLength(), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0)
    throw ErrnoError(env, errno, "sendto(" + op + ")", path);

  bool wantsAck = req.nlmsg_flags & NLM_F_ACK;
  Napi::Array replies = Napi::Array::New(env);
  uint32_t count = 0;
  std::vector<char> buf(32768);
  for (;;) {
    // Peek the size first so a large dump datagram is never truncated.
    ssize_t size = ::recv(fd, buf.data(), 0, MSG_PEEK | MSG_TRUNC);
    if (size < 0) {
      if (errno == EINTR) continue;
      throw ErrnoError(env, errno == EAGAIN ? ETIMEDOUT : errno, "recv(" + op + ")", path);
    }
    if (static_cast<size_t>(size) > buf.size()) buf.resize(size);
    ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw ErrnoError(env, errno == EAGAIN ? ETIMEDOUT : errno, "recv(" + op + ")", path);
    }
    int len = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_seq != req.nlmsg_seq) continue;  // a stale answer to an earlier request
      if (h->nlmsg_type == NLMSG_ERROR) {
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(int)))
          throw ErrnoError(env, EPROTO, syscall, path);
        int error = reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;
        if (error != 0) throw NetlinkError(env, -error, syscall, path, ExtAckMessage(h));
        return replies;
      }
      if (h->nlmsg_type == NLMSG_DONE) {
        // A dump that failed part way reports its error here.
        if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) {
          int error = *reinterpret_cast<int*>(NLMSG_DATA(h));
          if (error < 0) throw NetlinkError(env, -error, syscall, path, "");
        }
        return replies;  // dumps end here (the kernel sends no ACK after it)
      }
      replies.Set(count++, Napi::Buffer<char>::Copy(env, reinterpret_cast<char*>(h), h->nlmsg_len));
      if (!wantsAck && !(h->nlmsg_flags & NLM_F_MULTI)) return replies;
    }
  }
}

// netnsCreate(name): like `ip netns add`: a thread leaves for a fresh network
// namespace, which a bind mount of its ns file onto /run/netns/<name> keeps
// alive after the thread exits.
static void NetnsCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = NetnsName(info[0]);
  std::string path = std::string(kNetnsDir) + "/" + name;
  if (::mkdir(kNetnsDir, 0755) < 0 && errno != EEXIST) throw ErrnoError(env, errno, "mkdir", kNetnsDir);
  // /run/netns is made a shared mount point of its own, as `ip netns add`
  // makes it: otherwise the first `ip netns add` after us binds /run/netns
  // onto itself with our namespace mounts copied, and deleting ours then
  // fails EBUSY (the copy still sits on the file).
  if (::mount("", kNetnsDir, "none", MS_SHARED | MS_REC, nullptr) < 0) {
    if (errno != EINVAL) throw ErrnoError(env, errno, "mount(MS_SHARED)", kNetnsDir);
    if (::mount(kNetnsDir, kNetnsDir, "none", MS_BIND | MS_REC, nullptr) < 0)
      throw ErrnoError(env, errno, "mount(MS_BIND)", kNetnsDir);
    if (::mount("", kNetnsDir, "none", MS_SHARED | MS_REC, nullptr) < 0)
      throw ErrnoError(env, errno, "mount(MS_SHARED)", kNetnsDir);
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
  if (fd < 0) throw ErrnoError(env, errno, "open", path);
  ::close(fd);
  ThreadResult r;
  int spawnErr = RunInThread([&r, &path] {
    if (::unshare(CLONE_NEWNET) < 0) {
      r.err = errno;
      r.syscall = "unshare(CLONE_NEWNET)";
      return;
    }
    if (::mount("/proc/thread-self/ns/net", path.c_str(), "none", MS_BIND, nullptr) < 0) {
      r.err = errno;
      r.syscall = "mount(MS_BIND)";
    }
  });
  if (spawnErr != 0) {
    r.err = spawnErr;
    r.syscall = "pthread_create";
  }
  if (r.err != 0) {
    ::unlink(path.c_str());
    throw ErrnoError(env, r.err, r.syscall, path);
  }
}

// netnsDelete(name): like `ip netns delete`: the namespace goes away once no
// process, socket or fd holds it any more.
static void NetnsDelete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = std::string(kNetnsDir) + "/" + NetnsName(info[0]);
  if (::umount2(path.c_str(), MNT_DETACH) < 0 && errno != EINVAL)  // EINVAL: not mounted
    throw ErrnoError(env, errno, "umount2(MNT_DETACH)", path);
  if (::unlink(path.c_str()) < 0) throw ErrnoError(env, errno, "unlink", path);
}

// netnsOpen(path): an fd of a network namespace file (for setns and
// IFLA_NET_NS_FD).
static Napi::Value NetnsOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info[0], "path");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ErrnoError(env, errno, "open", path);
  return WrapFd(env, fd, path);
}

void InitNetlink(Napi::Env env, Napi::Object exports) {
  exports.Set("netlinkOpen", Napi::Function::New(env, NetlinkOpen, "netlinkOpen"));
  exports.Set("netlinkRequest", Napi::Function::New(env, NetlinkRequest, "netlinkRequest"));
  exports.Set("netnsCreate", Napi::Function::New(env, NetnsCreate, "netnsCreate"));
  exports.Set("netnsDelete", Napi::Function::New(env, NetnsDelete, "netnsDelete"));
  exports.Set("netnsOpen", Napi::Function::New(env, NetnsOpen, "netnsOpen"));
}

}  // namespace vhost
