// TODO(owner of this file): implement. Placeholder so the addon builds.
#include "addon.h"

namespace vhost {

void InitVhost(Napi::Env, Napi::Object) {}

}  // namespace vhost
