// vhost-vsock's own ioctls (drivers/vhost/vsock.c): the guest's CID and
// starting/stopping the rings. The shared vhost ioctls are in vhost.cc.
// The legacy vring_init() in linux/virtio_ring.h is C only; we do not need it.
#define VIRTIO_RING_NO_LEGACY
#include <linux/vhost.h>
#include <sys/ioctl.h>

#include <cerrno>

#include "addon.h"

namespace vhost {

namespace {

// vhostVsockSetGuestCid(dev, cid): the kernel takes a __u64 and rejects the
// reserved CIDs (0, 1, 2, U32_MAX) and anything above 32 bits with EINVAL.
Napi::Value SetGuestCid(const Napi::CallbackInfo& info) {
  if (info.Length() < 2) throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "expected 2 arguments");
  uint64_t cid = U64Arg(info[1], "cid");
  IoctlOn(info[0], VHOST_VSOCK_SET_GUEST_CID, &cid, "VHOST_VSOCK_SET_GUEST_CID");
  return info.Env().Undefined();
}

// vhostVsockSetRunning(dev, running): the ioctl takes an int.
Napi::Value SetRunning(const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || !info[1].IsBoolean())
    throw CodeError(info.Env(), "ERR_VHOST_INVALID_ARG", "running must be a boolean");
  int start = info[1].As<Napi::Boolean>().Value() ? 1 : 0;
  IoctlOn(info[0], VHOST_VSOCK_SET_RUNNING, &start, "VHOST_VSOCK_SET_RUNNING");
  return info.Env().Undefined();
}

}  // namespace

void InitVhostVsock(Napi::Env env, Napi::Object exports) {
  exports.Set("vhostVsockSetGuestCid", Napi::Function::New(env, SetGuestCid, "vhostVsockSetGuestCid"));
  exports.Set("vhostVsockSetRunning", Napi::Function::New(env, SetRunning, "vhostVsockSetRunning"));
}

}  // namespace vhost
