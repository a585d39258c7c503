// Public API of linux-vhost: what README documents and the API reference
// (npm run docs) shows. Explicit lists where a module also exports internals
// (plan*/check*/validate* helpers, feature negotiation, header codecs), which
// the library uses inside and its unit tests import from their own modules;
// test/unit/package/public-api.test.ts pins the result.
import './core/dispose';
export { VhostError } from './core/errors';
export { FdOwner } from './core/fd';
export * from './core/features';
export {
  type VhostBackend, type LogArea, type VringAddr, type VringEndian, type FdLike, type MemoryLike, type MemoryRegion, kUnchecked, VRING_ADDR_F_LOG,
} from './vhost/backend';
export { type MemTableRegion, type IotlbMsgType, type IotlbPerm, type IotlbMsg, type IotlbMsgRead, VhostDevice } from './vhost/kernel/vhost-device';
export {
  VHOST_NET_RX, VHOST_NET_TX, VhostNet, type VnetHdrSize, type NetBackend, type NetBackendOptions, type VhostNetBackend, type NetBuildStep,
  VhostNetBuilder, RunningVhostNet,
} from './vhost/net';
export * from './core/eventfd';
export { memfdSeals, type GuestMemoryRegionSpec, type GuestMemoryOptions, type GuestMemoryRegion, GuestMemory } from './core/memory';
export { type UnixSocketType, MAX_FDS_PER_MESSAGE, type PassableFd, ReceivedFd, type UnixMessage, type UnixWatcher, UnixSocket, type UnixServerOptions, UnixServer } from './core/unix-socket';
export {
  splitRingLayout, layoutSplitRing, MAX_QUEUE_SIZE, LEGACY_VRING_ALIGN, type SplitRingOptions, type SplitRingLayoutOptions, type SplitRingSizes, type SplitRingLayout,
} from './virtio/vring';
export { tunFlags, tunOffload, linkFlags, type TapOptions, parseMac, formatMac, TapQueue, Tap } from './netdev/tap';
export {
  probe, probeToJson, formatProbe, type DeviceProbe, type VhostDeviceProbe, type TunDeviceProbe, type ModuleState, type ProbeProblem, type ProbeReport,
} from './vhost/probe';
export { type DeviceOptions, VhostDeviceBuilder } from './vhost/builder';
export type { QueueSpec, EventFdRef, DeviceState } from './vhost/plan';
export type { BuildStep, StepError } from './vhost/steps';
export { RunningVhostDevice } from './vhost/running';
export {
  VSOCK_CID_MIN, VSOCK_CID_MAX, VSOCK_AUTO_CID_ATTEMPTS, type AutoCidOptions, type VhostVsockBackend, type VsockBuildStep,
  VhostVsockBuilder, RunningVhostVsock, VhostVsock, VHOST_VSOCK_RX, VHOST_VSOCK_TX,
} from './vhost/vsock';
export { DIRTY_LOG_PAGE_SIZE, dirtyLogSize, DirtyLog } from './vhost/dirty-log';
export * as netlink from './netdev/netlink';
export { setActiveQueuePairs, type MacvtapMode, type LinkInfo, type LinkRef, type CreateLinkOptions, Rtnl, Link } from './netdev/links';
export * from './netdev/netns';
export { bridge, type BridgeOptions, type AttachOptions, Bridge } from './netdev/bridge';
export * from './netdev/macvtap';
export { type CreatorMark, type CreatorState, setCreatorLabel, formatMark, parseMark } from './netdev/creator';
export * from './netdev/orphans';
export { virtioNetConfig, virtioNetStatus, virtioNetConfigLayout, MAX_QUEUE_PAIRS, type VirtioNetConfigOptions, type VirtioNetConfig } from './virtio/net-config';
export { INDIRECT_MAX, type VirtqueueSegment, type UsedBuffer, type VirtqueueOptions, placeVirtqueue, virtqueueFootprint, Virtqueue, BufferPool } from './virtio/virtqueue';
export { VIRTIO_NET_HDR_SIZE, type VirtioNetGuestOptions, type VirtioNetGuestBackend, type VirtioNetGuestStats, VirtioNetGuest } from './guest/net';
export * from './guest/responder';
export * as vsock from './vsock/socket';
export { VSOCK_HDR_SIZE, VSOCK_TYPE, VSOCK_OP, VSOCK_SHUTDOWN, VSOCK_SEQ } from './virtio/vsock-packet';
export {
  type VirtioVsockGuestOptions, type VirtioVsockConnectOptions, type VirtioVsockListenOptions, type VirtioVsockGuestStats,
  VirtioVsockGuest, VirtioVsockConnection, type VsockGuestAddress,
} from './guest/vsock';
export {
  prepareNetForVmm, prepareVsockForVmm, qemuArgs, spawnVmm, type NetHandoffOptions, NetHandoff, type VsockHandoffOptions, VsockHandoff,
  type NetFds, type VsockFds, type VmmHandoffInput, type FdPassing, type VmmHandoff, type SpawnVmmOptions, type StdioEntry,
} from './vmm/handoff';
export * from './vmm/kvm';
export { Qmp, QmpError, QMP_DEFAULT_TIMEOUT_MS, QMP_DEFAULT_MAX_LINE_BYTES, type QmpOptions, type QmpExecuteOptions, type QmpEvent, type QmpEvents, type QmpGreeting } from './vmm/qmp';
export {
  hotplugNet, unplugNet, hotplugVsock, unplugVsock, UNPLUG_DEFAULT_TIMEOUT_MS,
  type HotplugNetOptions, type HotplugVsockOptions, type PluggedNet, type PluggedVsock, type UnplugOptions,
} from './vmm/hotplug';
export { VHOST_USER_DEFAULT_TIMEOUT_MS, VHOST_USER_SUPPORTED_PROTOCOL_FEATURES, type VhostUserOptions, type DisconnectReason, VhostUser } from './vhost/user/vhost-user';
export { VhostUserRequest, VhostUserProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, MAX_MEM_REGIONS as VHOST_USER_MAX_MEM_REGIONS } from './vhost/user/messages';
export { type VhostUserBuildStep, type VhostUserBuilderOptions, VhostUserBuilder, RunningVhostUser } from './vhost/user/builder';
export { VIRTIO_BLK_SECTOR_SIZE, VirtioBlkType, VirtioBlkStatus, VirtioBlkFeature, type VirtioBlkConfig } from './virtio/blk';
export { type VirtioBlkGuestOptions, VirtioBlkGuest } from './guest/blk';
export {
  type VsockDeviceBackendOptions, type VsockRoute, type VsockDeviceConnectOptions, type VsockDeviceListenOptions, VsockDeviceListener, VsockDeviceBackend,
  VsockGuestChannel, type VsockChannelStats, type VsockChannelCarrier, VSOCK_MAX_PAYLOAD,
} from './device/vsock/backend';
export { type HybridVsockServerOptions, type HybridVsockServerStats, HybridVsockServer } from './device/vsock/hybrid-server';
export { type DeviceMemoryRegion, type DeviceMemoryRegionInfo, DeviceMemory } from './virtio/device-memory';
export { type DeviceQueueOptions, type DeviceChain, type RingBrokenError, DEVICE_QUEUE_MAX_READABLE, DeviceQueue } from './virtio/device-queue';
export type { VhostUserDevice } from './vhost/user/backend-device';
export { type RingFds, RING_BUDGET_MULTIPLIER, VhostUserRing } from './vhost/user/backend-ring';
export { VHOST_USER_BACKEND_PROTOCOL_FEATURES, type VhostUserBackendOptions, type VhostUserBackendStats, VhostUserBackend } from './vhost/user/backend';
export { VHOST_USER_NET_RX, VHOST_USER_NET_TX, VHOST_USER_NET_FEATURES, type VhostUserNetOptions, type VhostUserNetStats, VhostUserNet } from './device/net';
export { type NetSwitchPort, NET_SWITCH_MAX_MACS, type NetSwitchStats, NetSwitch } from './device/switch';
export { VHOST_USER_VSOCK_RX, VHOST_USER_VSOCK_TX, type VhostUserVsockOptions, VhostUserVsock } from './device/vsock/vhost-user-vsock';
