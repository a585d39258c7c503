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
export * from './tap';
export * from './probe';
export {
  type QueueSpec, type EventFdRef, type DeviceState, type BuildStep, type StepError, type DeviceOptions, type CheckedRegion,
  VhostDeviceBuilder, RunningVhostDevice, mergeMemoryRegions, readMaxMemRegions, DEFAULT_MAX_MEM_REGIONS, VHOST_RING_BITS,
} from './builder';
export * from './net-builder';
export * from './vsock-builder';
export * from './dirty-log';
export * as netlink from './netlink';
export * from './links';
export * from './netns';
export * from './bridge';
export * from './macvtap';
export * from './virtio-net-config';
export * from './virtqueue';
export * from './virtio-net-guest';
export * from './net-responder';
export * as vsock from './vsock';
export * from './vsock-packet';
export * from './virtio-vsock-guest';
export * from './vmm-handoff';
export * from './kvm';
