// Public API of linux-vhost.
import './dispose';
export { VhostError } from './errors';
export { FdOwner } from './fd';
export * from './features';
export * from './vhost';
export * from './vhost-net';
export * from './vhost-vsock';
export * from './eventfd';
export * from './memory';
export * from './vring';
// Explicit lists where a module also exports internals (plan*/check*/encoders its tests use).
export { tunFlags, tunOffload, linkFlags, type TapOptions, validateLinkName, parseMac, formatMac, TapQueue, Tap } from './tap';
export * from './probe';
export {
  type QueueSpec, type EventFdRef, type DeviceState, type BuildStep, type StepError, type DeviceOptions, type CheckedRegion,
  VhostDeviceBuilder, RunningVhostDevice, mergeMemoryRegions, readMaxMemRegions, DEFAULT_MAX_MEM_REGIONS, VHOST_RING_BITS,
} from './builder';
export * from './net-builder';
export {
  VSOCK_CID_MIN, VSOCK_CID_MAX, VSOCK_AUTO_CID_ATTEMPTS, VSOCK_VHOST_BITS, type VsockNegotiation, negotiateVsockFeatures, type AutoCidOptions,
  VhostVsockBuilder, RunningVhostVsock,
} from './vsock-builder';
export { DIRTY_LOG_PAGE_SIZE, dirtyLogSize, DirtyLog } from './dirty-log';
export * as netlink from './netlink';
export * from './links';
export * from './netns';
export * from './bridge';
export * from './macvtap';
export * from './virtio-net-config';
export { INDIRECT_MAX, type VirtqueueSegment, type UsedBuffer, type VirtqueueOptions, placeVirtqueue, virtqueueFootprint, Virtqueue, BufferPool } from './virtqueue';
export { VIRTIO_NET_HDR_SIZE, type VirtioNetGuestOptions, type VirtioNetGuestBackend, type VirtioNetGuestStats, VirtioNetGuest } from './virtio-net-guest';
export * from './net-responder';
export * as vsock from './vsock';
export {
  VSOCK_HDR_SIZE, VSOCK_TYPE, VSOCK_OP, VSOCK_SHUTDOWN, VSOCK_SEQ, type VsockHeader,
  checkVsockHeader, writeVsockHeader, encodeVsockHeader, decodeVsockHeader,
} from './vsock-packet';
export {
  type VirtioVsockGuestOptions, type VirtioVsockConnectOptions, type VirtioVsockListenOptions, type VirtioVsockGuestStats, vsockGuestFeatures,
  VirtioVsockGuest, VirtioVsockConnection, type VsockGuestAddress,
} from './virtio-vsock-guest';
export * from './vmm-handoff';
export * from './kvm';
