// vhost-net's own ioctl (drivers/vhost/net.c): attach a tap or raw packet
// socket to a virtqueue. The ioctls it shares with other vhost devices are in
// vhost.cc.
// The legacy vring_init() in linux/virtio_ring.h is C only; we do not need it.
#define VIRTIO_RING_NO_LEGACY
#include <linux/vhost.h>
#include <sys/ioctl.h>

#include <cerrno>

#include "addon.h"

namespace vhost {

namespace {

// vhostNetSetBackend(dev, index, fd): fd -1 / null detaches the ring. The
// kernel answers ENOTSOCK for an fd that is neither a tap nor a packet socket.
Napi::Value SetBackend(const Napi::CallbackInfo& info) {
  SetVringFile(info, VHOST_NET_SET_BACKEND, "VHOST_NET_SET_BACKEND");
  return info.Env().Undefined();
}

}  // namespace

void InitVhostNet(Napi::Env env, Napi::Object exports) {
  exports.Set("vhostNetSetBackend", Napi::Function::New(env, SetBackend, "vhostNetSetBackend"));
}

}  // namespace vhost
