// The one typed door to the addon. The native layer mirrors kernel calls and
// holds no policy; every public API in lib/ is built on these signatures.
// node-gyp-build loads build/Release (a local build) or prebuilds/.
import * as path from 'node:path';
import { VhostError } from './errors';

/** The single owner of a kernel fd. All native calls take it, never a bare number. */
export interface OwnedFd {
  /** The fd number, or -1 once closed. */
  readonly fd: number;
  /** The path it was opened with, or a label such as 'eventfd' (used in errors). */
  readonly path: string;
  readonly closed: boolean;
  /** Idempotent: stops any poll watcher (uv_poll_stop, uv_close), then close(fd). */
  close(): void;
  /** uv_poll on the env's loop. events: POLL_READABLE | POLL_WRITABLE. Calling again replaces both. */
  watch(events: number, cb: (status: number, events: number) => void): void;
  unwatch(): void;
  ref(): void;
  unref(): void;
}

export const POLL_READABLE = 1;
export const POLL_WRITABLE = 2;

/** An fd argument: an OwnedFd, a raw fd number, or null / -1 for "none". */
export type FdArg = OwnedFd | number | null;

export interface NativeMemRegion {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
}

export interface NativeVringAddr {
  desc: bigint; // host virtual addresses, as the kernel takes them
  avail: bigint;
  used: bigint;
  log: bigint;
  flags: number;
}

/** struct vhost_iotlb_msg, sent or received as VHOST_IOTLB_MSG_V2. */
export interface NativeIotlbMsg {
  asid: number;
  type: number; // VHOST_IOTLB_MISS=1, UPDATE=2, INVALIDATE=3, ACCESS_FAIL=4, BATCH_BEGIN=5, BATCH_END=6
  iova: bigint;
  size: bigint;
  uaddr: bigint;
  perm: number; // VHOST_ACCESS_RO=1, WO=2, RW=3
}

/** A MAP_SHARED mapping; buffer views it and is detached by unmap(). */
export interface Mapping {
  readonly address: bigint;
  readonly size: bigint;
  readonly unmapped: boolean;
  /** One external ArrayBuffer over the whole mapping; detached (byteLength 0) after unmap(). */
  readonly buffer: ArrayBuffer;
  /** Idempotent: detaches buffer, then munmap. */
  unmap(): void;
}

export interface TapOpenResult {
  fd: OwnedFd;
  name: string; // the name the kernel gave (a template like 'tap%d' is resolved)
}

export interface NativeBinding {
  setErrorClass(ctor: new (message: string) => Error): void;

  // owned_fd.cc
  openPath(path: string, extraFlags?: number): OwnedFd; // O_RDWR | O_CLOEXEC | extraFlags

  // vhost.cc: ioctls common to every vhost device
  vhostSetOwner(dev: OwnedFd): void;
  vhostResetOwner(dev: OwnedFd): void;
  vhostGetFeatures(dev: OwnedFd): bigint;
  vhostSetFeatures(dev: OwnedFd, bits: bigint): void;
  vhostGetBackendFeatures(dev: OwnedFd): bigint;
  vhostSetBackendFeatures(dev: OwnedFd, bits: bigint): void;
  vhostSetMemTable(dev: OwnedFd, regions: NativeMemRegion[]): void;
  vhostSetLogBase(dev: OwnedFd, addr: bigint): void;
  vhostSetLogFd(dev: OwnedFd, fd: FdArg): void;
  vhostSetVringNum(dev: OwnedFd, index: number, num: number): void;
  vhostSetVringBase(dev: OwnedFd, index: number, base: number): void;
  vhostGetVringBase(dev: OwnedFd, index: number): number;
  vhostSetVringAddr(dev: OwnedFd, index: number, addr: NativeVringAddr): void;
  vhostSetVringKick(dev: OwnedFd, index: number, fd: FdArg): void;
  vhostSetVringCall(dev: OwnedFd, index: number, fd: FdArg): void;
  vhostSetVringErr(dev: OwnedFd, index: number, fd: FdArg): void;
  /** num: VHOST_VRING_LITTLE_ENDIAN (0) or VHOST_VRING_BIG_ENDIAN (1). */
  vhostSetVringEndian(dev: OwnedFd, index: number, num: number): void;
  vhostGetVringEndian(dev: OwnedFd, index: number): number;
  vhostSetVringBusyloopTimeout(dev: OwnedFd, index: number, usec: number): void;
  vhostGetVringBusyloopTimeout(dev: OwnedFd, index: number): number;
  /** write(2) of one struct vhost_msg_v2 on the device fd. */
  vhostWriteIotlbMsg(dev: OwnedFd, msg: NativeIotlbMsg): void;
  /** read(2) of one struct vhost_msg_v2; null when none is pending (EAGAIN). */
  vhostReadIotlbMsg(dev: OwnedFd): NativeIotlbMsg | null;

  // vhost_net.cc
  vhostNetSetBackend(dev: OwnedFd, index: number, fd: FdArg): void;

  // vhost_vsock.cc
  vhostVsockSetGuestCid(dev: OwnedFd, cid: bigint): void;
  vhostVsockSetRunning(dev: OwnedFd, running: boolean): void;

  // eventfd.cc
  /** eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK | (semaphore ? EFD_SEMAPHORE : 0)) */
  eventfdCreate(initval: number, semaphore: boolean): OwnedFd;
  /** The counter (or 1n in semaphore mode); null when it is zero (EAGAIN). */
  eventfdRead(fd: OwnedFd): bigint | null;
  /** Adds to the counter; false when it would overflow (EAGAIN). */
  eventfdWrite(fd: OwnedFd, value: bigint): boolean;

  // guest_memory.cc
  /** memfd_create(name, MFD_CLOEXEC | flags); flags: MFD_ALLOW_SEALING (2), MFD_HUGETLB (4) | size bits. */
  memfdCreate(name: string, flags: number): OwnedFd;
  ftruncate(fd: OwnedFd, size: bigint): void;
  /** fcntl(F_ADD_SEALS) */
  addSeals(fd: OwnedFd, seals: number): void;
  getSeals(fd: OwnedFd): number;
  /** mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_SHARED | (fd ? 0 : MAP_ANONYMOUS) | extraFlags, fd, offset) */
  mmapShared(fd: OwnedFd | null, size: bigint, offset: bigint, extraFlags: number): Mapping;

  // tap.cc: /dev/net/tun
  /** open(path) + TUNSETIFF(name, flags). flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE ... */
  tapOpen(path: string, name: string, flags: number): TapOpenResult;
  tapGetFeatures(fd: OwnedFd): number; // TUNGETFEATURES
  tapGetIff(fd: OwnedFd): { name: string; flags: number }; // TUNGETIFF
  tapSetVnetHdrSize(fd: OwnedFd, size: number): void;
  tapGetVnetHdrSize(fd: OwnedFd): number;
  tapSetOffload(fd: OwnedFd, flags: number): void;
  tapSetSndbuf(fd: OwnedFd, size: number): void;
  tapGetSndbuf(fd: OwnedFd): number;
  tapSetPersist(fd: OwnedFd, persist: boolean): void;
  /** TUNSETQUEUE: IFF_ATTACH_QUEUE / IFF_DETACH_QUEUE */
  tapSetQueue(fd: OwnedFd, attach: boolean): void;

  // netdev.cc: link settings through SIOC* ioctls on an AF_INET datagram socket
  linkIndex(name: string): number;
  linkGetMtu(name: string): number;
  linkSetMtu(name: string, mtu: number): void;
  linkGetMac(name: string): Uint8Array;
  linkSetMac(name: string, mac: Uint8Array): void;
  linkGetFlags(name: string): number; // IFF_UP = 1, IFF_RUNNING = 0x40 ...
  linkSetUp(name: string, up: boolean): void;

  // virtqueue.cc: split-ring driver (guest role) — section owned by the virtqueue work

  // vsock_socket.cc: AF_VSOCK sockets — section owned by the vsock work

  // netlink.cc: rtnetlink — section owned by the netlink work
}

function load(): NativeBinding {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;
  const binding = nodeGypBuild(path.join(__dirname, '..')) as NativeBinding;
  binding.setErrorClass(VhostError);
  return binding;
}

export const native: NativeBinding = load();
