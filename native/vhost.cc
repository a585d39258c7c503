// The ioctls every vhost device shares (drivers/vhost/vhost.c), plus IOTLB v2
// messages read and written on the device fd. Each function is one kernel
// call; ranges the kernel checks itself are left to the kernel, so its errno
// reaches the caller unchanged.
// The legacy vring_init() in linux/virtio_ring.h is C only; we do not need it.
#define VIRTIO_RING_NO_LEGACY
#include <linux/vhost.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <vector>

#include "addon.h"

namespace vhost {

namespace {

void CheckArgs(const Napi::CallbackInfo& info, size_t count) {
  if (info.Length() < count)
    throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG",
                    "expected " + std::to_string(count) + " arguments");
}

// struct vhost_vring_state {index, num} in; nothing out.
void SetVringState(const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  CheckArgs(info, 3);
  vhost_vring_state s{};
  s.index = U32Arg(info[1], "index");
  s.num = U32Arg(info[2], "num");
  IoctlOn(info[0], request, &s, name);
}

// struct vhost_vring_state {index} in; num out.
Napi::Value GetVringState(const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  CheckArgs(info, 2);
  vhost_vring_state s{};
  s.index = U32Arg(info[1], "index");
  IoctlOn(info[0], request, &s, name);
  return Napi::Number::New(info.Env(), s.num);
}

void SetU64(const Napi::CallbackInfo& info, unsigned long request, const char* name, const char* arg) {
  CheckArgs(info, 2);
  uint64_t v = U64Arg(info[1], arg);
  IoctlOn(info[0], request, &v, name);
}

Napi::Value GetU64(const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  CheckArgs(info, 1);
  uint64_t v = 0;
  IoctlOn(info[0], request, &v, name);
  return Napi::BigInt::New(info.Env(), v);
}

void SetOwner(const Napi::CallbackInfo& info) {
  CheckArgs(info, 1);
  IoctlOn(info[0], VHOST_SET_OWNER, nullptr, "VHOST_SET_OWNER");
}

// VHOST_RESET_OWNER takes no argument, but a device that does not implement
// it (vhost-vsock, measured on Linux 6.1) hands it to the generic vring
// code, which reads a ring index from the argument: with NULL that is EFAULT.
// A zeroed vhost_vring_state makes such a kernel answer ENOTTY instead.
void ResetOwner(const Napi::CallbackInfo& info) {
  CheckArgs(info, 1);
  vhost_vring_state unused{};
  IoctlOn(info[0], VHOST_RESET_OWNER, &unused, "VHOST_RESET_OWNER");
}

Napi::Value GetFeatures(const Napi::CallbackInfo& info) {
  return GetU64(info, VHOST_GET_FEATURES, "VHOST_GET_FEATURES");
}

void SetFeatures(const Napi::CallbackInfo& info) {
  SetU64(info, VHOST_SET_FEATURES, "VHOST_SET_FEATURES", "bits");
}

Napi::Value GetBackendFeatures(const Napi::CallbackInfo& info) {
  return GetU64(info, VHOST_GET_BACKEND_FEATURES, "VHOST_GET_BACKEND_FEATURES");
}

void SetBackendFeatures(const Napi::CallbackInfo& info) {
  SetU64(info, VHOST_SET_BACKEND_FEATURES, "VHOST_SET_BACKEND_FEATURES", "bits");
}

// struct vhost_memory ends in a flexible array of regions; build it in one
// 8-byte aligned buffer. The region count limit (max_mem_regions) is the
// kernel's to enforce (E2BIG); we only refuse counts no kernel accepts
// (the parameter is a ushort), so a huge array cannot exhaust memory.
void SetMemTable(const Napi::CallbackInfo& info) {
  CheckArgs(info, 2);
  Napi::Env env = info.Env();
  FdOf(info[0], "ioctl(VHOST_SET_MEM_TABLE)");  // closed or wrong handle: fail before any work
  if (!info[1].IsArray()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "regions must be an array");
  Napi::Array regions = info[1].As<Napi::Array>();
  uint32_t count = regions.Length();
  if (count > 65535) throw CodeError(env, "ERR_VHOST_OUT_OF_RANGE", "regions: at most 65535 (the kernel's max_mem_regions is a ushort)");
  size_t bytes = sizeof(vhost_memory) + size_t(count) * sizeof(vhost_memory_region);
  std::vector<uint64_t> storage((bytes + sizeof(uint64_t) - 1) / sizeof(uint64_t), 0);
  auto* mem = reinterpret_cast<vhost_memory*>(storage.data());
  mem->nregions = count;
  for (uint32_t i = 0; i < count; i++) {
    Napi::Value item = regions.Get(i);
    if (!item.IsObject()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "regions[" + std::to_string(i) + "] must be an object");
    Napi::Object region = item.As<Napi::Object>();
    mem->regions[i].guest_phys_addr = U64Field(region, "gpa");
    mem->regions[i].memory_size = U64Field(region, "size");
    mem->regions[i].userspace_addr = U64Field(region, "hva");
  }
  IoctlOn(info[0], VHOST_SET_MEM_TABLE, mem, "VHOST_SET_MEM_TABLE");
}

void SetLogBase(const Napi::CallbackInfo& info) {
  SetU64(info, VHOST_SET_LOG_BASE, "VHOST_SET_LOG_BASE", "addr");
}

void SetLogFd(const Napi::CallbackInfo& info) {
  CheckArgs(info, 2);
  int fd = FdArg(info[1], "ioctl(VHOST_SET_LOG_FD)");
  IoctlOn(info[0], VHOST_SET_LOG_FD, &fd, "VHOST_SET_LOG_FD");
}

void SetVringNum(const Napi::CallbackInfo& info) {
  SetVringState(info, VHOST_SET_VRING_NUM, "VHOST_SET_VRING_NUM");
}

void SetVringBase(const Napi::CallbackInfo& info) {
  SetVringState(info, VHOST_SET_VRING_BASE, "VHOST_SET_VRING_BASE");
}

Napi::Value GetVringBase(const Napi::CallbackInfo& info) {
  return GetVringState(info, VHOST_GET_VRING_BASE, "VHOST_GET_VRING_BASE");
}

void SetVringAddr(const Napi::CallbackInfo& info) {
  CheckArgs(info, 3);
  if (!info[2].IsObject()) throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "addr must be an object");
  Napi::Object addr = info[2].As<Napi::Object>();
  vhost_vring_addr a{};
  a.index = U32Arg(info[1], "index");
  a.flags = U32Arg(addr.Get("flags"), "flags");
  a.desc_user_addr = U64Field(addr, "desc");
  a.avail_user_addr = U64Field(addr, "avail");
  a.used_user_addr = U64Field(addr, "used");
  a.log_guest_addr = U64Field(addr, "log");
  IoctlOn(info[0], VHOST_SET_VRING_ADDR, &a, "VHOST_SET_VRING_ADDR");
}

void SetVringKick(const Napi::CallbackInfo& info) {
  SetVringFile(info, VHOST_SET_VRING_KICK, "VHOST_SET_VRING_KICK");
}

void SetVringCall(const Napi::CallbackInfo& info) {
  SetVringFile(info, VHOST_SET_VRING_CALL, "VHOST_SET_VRING_CALL");
}

void SetVringErr(const Napi::CallbackInfo& info) {
  SetVringFile(info, VHOST_SET_VRING_ERR, "VHOST_SET_VRING_ERR");
}

// Kernels built without CONFIG_VHOST_CROSS_ENDIAN_LEGACY answer ENOTTY.
void SetVringEndian(const Napi::CallbackInfo& info) {
  SetVringState(info, VHOST_SET_VRING_ENDIAN, "VHOST_SET_VRING_ENDIAN");
}

Napi::Value GetVringEndian(const Napi::CallbackInfo& info) {
  return GetVringState(info, VHOST_GET_VRING_ENDIAN, "VHOST_GET_VRING_ENDIAN");
}

void SetVringBusyloopTimeout(const Napi::CallbackInfo& info) {
  SetVringState(info, VHOST_SET_VRING_BUSYLOOP_TIMEOUT, "VHOST_SET_VRING_BUSYLOOP_TIMEOUT");
}

Napi::Value GetVringBusyloopTimeout(const Napi::CallbackInfo& info) {
  return GetVringState(info, VHOST_GET_VRING_BUSYLOOP_TIMEOUT, "VHOST_GET_VRING_BUSYLOOP_TIMEOUT");
}

// ---- IOTLB messages --------------------------------------------------------

uint8_t U8Field(const Napi::Object& obj, const char* name) {
  uint32_t v = U32Arg(obj.Get(name), name);
  if (v > UINT8_MAX)
    throw CodeError(obj.Env(), "ERR_VHOST_INVALID_ARG", std::string(name) + " must fit in 8 bits");
  return static_cast<uint8_t>(v);
}

void WriteIotlbMsg(const Napi::CallbackInfo& info) {
  CheckArgs(info, 2);
  Napi::Env env = info.Env();
  if (!info[1].IsObject()) throw CodeError(env, "ERR_VHOST_INVALID_ARG", "msg must be an object");
  Napi::Object obj = info[1].As<Napi::Object>();
  vhost_msg_v2 msg{};
  msg.type = VHOST_IOTLB_MSG_V2;
  msg.asid = U32Arg(obj.Get("asid"), "asid");
  msg.iotlb.type = U8Field(obj, "type");
  msg.iotlb.perm = U8Field(obj, "perm");
  msg.iotlb.iova = U64Field(obj, "iova");
  msg.iotlb.size = U64Field(obj, "size");
  msg.iotlb.uaddr = U64Field(obj, "uaddr");
  const char* syscall = "write(VHOST_IOTLB_MSG_V2)";
  int fd = FdOf(info[0], syscall);
  ssize_t n;
  do {
    n = ::write(fd, &msg, sizeof msg);
  } while (n < 0 && errno == EINTR);
  if (n < 0) throw ErrnoError(env, errno, syscall, PathOf(info[0]));
  // The kernel consumes a whole message or fails; anything else is a bug.
  if (static_cast<size_t>(n) != sizeof msg) throw ErrnoError(env, EIO, syscall, PathOf(info[0]));
}

// The device fd is blocking (it is not polled by default), so poll it with a
// zero timeout first: null means no message is pending. The kernel queues
// v1 messages (struct vhost_msg) until VHOST_BACKEND_F_IOTLB_MSG_V2 is
// negotiated; both put the iotlb payload at offset 8, v1 has no asid.
Napi::Value ReadIotlbMsg(const Napi::CallbackInfo& info) {
  CheckArgs(info, 1);
  Napi::Env env = info.Env();
  const char* syscall = "read(VHOST_IOTLB_MSG_V2)";
  int fd = FdOf(info[0], syscall);
  pollfd p{fd, POLLIN, 0};
  int rc;
  do {
    rc = ::poll(&p, 1, 0);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) throw ErrnoError(env, errno, "poll", PathOf(info[0]));
  if (rc == 0 || (p.revents & POLLIN) == 0) return env.Null();

  static_assert(offsetof(vhost_msg, iotlb) == offsetof(vhost_msg_v2, iotlb), "iotlb at the same offset");
  static_assert(sizeof(vhost_msg) == sizeof(vhost_msg_v2), "same message size");
  vhost_msg_v2 msg{};
  ssize_t n;
  do {
    n = ::read(fd, &msg, sizeof msg);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return env.Null();
  if (n < 0) throw ErrnoError(env, errno, syscall, PathOf(info[0]));
  if (static_cast<size_t>(n) < sizeof msg) throw ErrnoError(env, EIO, syscall, PathOf(info[0]));

  Napi::Object out = Napi::Object::New(env);
  out.Set("asid", Napi::Number::New(env, msg.type == VHOST_IOTLB_MSG_V2 ? msg.asid : 0));
  out.Set("type", Napi::Number::New(env, msg.iotlb.type));
  out.Set("iova", Napi::BigInt::New(env, static_cast<uint64_t>(msg.iotlb.iova)));
  out.Set("size", Napi::BigInt::New(env, static_cast<uint64_t>(msg.iotlb.size)));
  out.Set("uaddr", Napi::BigInt::New(env, static_cast<uint64_t>(msg.iotlb.uaddr)));
  out.Set("perm", Napi::Number::New(env, msg.iotlb.perm));
  return out;
}

}  // namespace

// struct vhost_vring_file {index, fd}; fd -1 unbinds. Shared with vhost_net.cc.
void SetVringFile(const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  CheckArgs(info, 3);
  vhost_vring_file f{};
  f.index = U32Arg(info[1], "index");
  f.fd = FdArg(info[2], std::string("ioctl(") + name + ")");
  IoctlOn(info[0], request, &f, name);
}

void InitVhost(Napi::Env env, Napi::Object exports) {
  struct Entry {
    const char* name;
    Napi::Function::Callback fn;
  };
  // Void functions are adapted to return undefined.
#define VOID_FN(f) [](const Napi::CallbackInfo& info) -> Napi::Value { f(info); return info.Env().Undefined(); }
  const Entry entries[] = {
      {"vhostSetOwner", VOID_FN(SetOwner)},
      {"vhostResetOwner", VOID_FN(ResetOwner)},
      {"vhostGetFeatures", GetFeatures},
      {"vhostSetFeatures", VOID_FN(SetFeatures)},
      {"vhostGetBackendFeatures", GetBackendFeatures},
      {"vhostSetBackendFeatures", VOID_FN(SetBackendFeatures)},
      {"vhostSetMemTable", VOID_FN(SetMemTable)},
      {"vhostSetLogBase", VOID_FN(SetLogBase)},
      {"vhostSetLogFd", VOID_FN(SetLogFd)},
      {"vhostSetVringNum", VOID_FN(SetVringNum)},
      {"vhostSetVringBase", VOID_FN(SetVringBase)},
      {"vhostGetVringBase", GetVringBase},
      {"vhostSetVringAddr", VOID_FN(SetVringAddr)},
      {"vhostSetVringKick", VOID_FN(SetVringKick)},
      {"vhostSetVringCall", VOID_FN(SetVringCall)},
      {"vhostSetVringErr", VOID_FN(SetVringErr)},
      {"vhostSetVringEndian", VOID_FN(SetVringEndian)},
      {"vhostGetVringEndian", GetVringEndian},
      {"vhostSetVringBusyloopTimeout", VOID_FN(SetVringBusyloopTimeout)},
      {"vhostGetVringBusyloopTimeout", GetVringBusyloopTimeout},
      {"vhostWriteIotlbMsg", VOID_FN(WriteIotlbMsg)},
      {"vhostReadIotlbMsg", ReadIotlbMsg},
  };
#undef VOID_FN
  for (const Entry& e : entries) exports.Set(e.name, Napi::Function::New(env, e.fn, e.name));
}

}  // namespace vhost
