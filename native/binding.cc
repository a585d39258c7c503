// Addon entry point: creates the per-env data and lets each kernel object's
// file register its functions.
#include "addon.h"

namespace vhost {

AddonData& Data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());  // freed by node-addon-api at env teardown
  InitErrors(env, exports);
  InitOwnedFd(env, exports);
  InitVhost(env, exports);
  InitVhostNet(env, exports);
  InitVhostVsock(env, exports);
  InitEventFd(env, exports);
  InitGuestMemory(env, exports);
  InitTap(env, exports);
  InitNetdev(env, exports);
  InitVirtqueue(env, exports);
  InitVsockSocket(env, exports);
  InitNetlink(env, exports);
  InitFdAdopt(env, exports);
  InitKvm(env, exports);
  InitUnixSocket(env, exports);
  InitDeviceMemory(env, exports);
  InitDeviceQueue(env, exports);
  return exports;
}

}  // namespace vhost

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  return vhost::Init(env, exports);
}

NODE_API_MODULE(linux_vhost, InitAddon)
