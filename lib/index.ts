// Public API of linux-vhost.
import './core/dispose';
export { VhostError } from './core/errors';
export { FdOwner } from './core/fd';
export * from './core/features';
export * from './vhost/kernel/vhost-device';
export * from './vhost/net';
export * from './core/eventfd';
export * from './core/memory';
export * from './virtio/vring';
// Explicit lists where a module also exports internals (plan*/check*/encoders its tests use).
export { tunFlags, tunOffload, linkFlags, type TapOptions, validateLinkName, parseMac, formatMac, TapQueue, Tap } from './netdev/tap';
export * from './vhost/probe';
export {
  type QueueSpec, type EventFdRef, type DeviceState, type BuildStep, type StepError, type DeviceOptions, type CheckedRegion,
  VhostDeviceBuilder, RunningVhostDevice, mergeMemoryRegions, readMaxMemRegions, DEFAULT_MAX_MEM_REGIONS, VHOST_RING_BITS,
} from './vhost/builder';
export {
  VSOCK_CID_MIN, VSOCK_CID_MAX, VSOCK_AUTO_CID_ATTEMPTS, VSOCK_VHOST_BITS, type VsockNegotiation, negotiateVsockFeatures, type AutoCidOptions,
  VhostVsockBuilder, RunningVhostVsock, VhostVsock, VHOST_VSOCK_RX, VHOST_VSOCK_TX,
} from './vhost/vsock';
export { DIRTY_LOG_PAGE_SIZE, dirtyLogSize, DirtyLog } from './vhost/dirty-log';
export * as netlink from './netdev/netlink';
export * from './netdev/links';
export * from './netdev/netns';
export * from './netdev/bridge';
export * from './netdev/macvtap';
export { type CreatorMark, type CreatorState, setCreatorLabel, formatMark, parseMark } from './netdev/creator';
export * from './netdev/orphans';
export * from './virtio/net-config';
export { INDIRECT_MAX, type VirtqueueSegment, type UsedBuffer, type VirtqueueOptions, placeVirtqueue, virtqueueFootprint, Virtqueue, BufferPool } from './virtio/virtqueue';
export { VIRTIO_NET_HDR_SIZE, type VirtioNetGuestOptions, type VirtioNetGuestBackend, type VirtioNetGuestStats, VirtioNetGuest } from './guest/net';
export * from './guest/responder';
export * as vsock from './vsock/socket';
export {
  VSOCK_HDR_SIZE, VSOCK_TYPE, VSOCK_OP, VSOCK_SHUTDOWN, VSOCK_SEQ, type VsockHeader,
  checkVsockHeader, writeVsockHeader, encodeVsockHeader, decodeVsockHeader,
} from './virtio/vsock-packet';
export {
  type VirtioVsockGuestOptions, type VirtioVsockConnectOptions, type VirtioVsockListenOptions, type VirtioVsockGuestStats, vsockGuestFeatures,
  VirtioVsockGuest, VirtioVsockConnection, type VsockGuestAddress,
} from './guest/vsock';
export * from './vmm/handoff';
export * from './vmm/kvm';
