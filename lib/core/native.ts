// The one typed door to the addon. The native layer mirrors kernel calls and
// holds no policy; every public API in lib/ is built on these signatures.
// node-gyp-build loads build/Release (a local build) or prebuilds/.
import * as path from 'node:path';
import { debuglog } from 'node:util';
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

/** A memory-table region as VHOST_SET_MEM_TABLE takes it (MemoryRegion's names). */
export interface NativeMemRegion {
  readonly gpa: bigint;
  readonly size: bigint;
  readonly hva: bigint;
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

/** Byte offsets of a split ring inside its mapping (see NativeBinding.virtqueueCreate). */
export interface NativeVirtqueueLayout {
  size: number;
  desc: number; // with indirect: the table is followed by size * 16 indirect descriptors per slot
  avail: number;
  used: number;
  eventIdx: boolean;
  indirect: boolean;
}

/** Segment flags of NativeVirtqueue.post. */
export const SEG_WRITABLE = 1;
export const SEG_END = 2;

/** The native split-ring driver (virtqueue.cc). Every method throws ERR_VHOST_CLOSED once closed or unmapped. */
export interface NativeVirtqueue {
  readonly size: number;
  readonly numFree: number;
  readonly availIdx: number;
  readonly lastUsedIdx: number;
  readonly kicks: number;
  readonly kicksSuppressed: number;
  readonly closed: boolean;
  /**
   * Posts chains described by nsegs triples (offset, len, SEG_WRITABLE | SEG_END)
   * until one does not fit; heads[i] gets chain i's head. One release store of
   * avail->idx; then a kick if `notify` and the device asks. Returns chains posted.
   */
  post(segs: Uint32Array, nsegs: number, heads: Uint32Array, notify: boolean): number;
  /** Up to `max` used entries as (head, len) pairs in out; frees their descriptors. */
  collect(out: Uint32Array, max: number): number;
  /** Kicks if the device asks for it (EVENT_IDX or NO_NOTIFY); true if it kicked. */
  notify(): boolean;
  /** Requests a call at the next used entry (delayed: at ~3/4 of those in flight); true if entries already wait. */
  enableCallbacks(delayed: boolean): boolean;
  disableCallbacks(): void;
  /** Drops the references to the memory and the kick fd. Idempotent. */
  close(): void;
  /** An ArrayBuffer of its own over [offset, offset + len) of the mapping (an N-API external buffer, no copy, nothing keeping the mapping alive: the caller does); revoke() it before the memory is unmapped (lib/virtio Virtqueue does, from a GuestMemory unmap hook). */
  lend(offset: number, len: number): ArrayBuffer;
  /** Detaches a buffer lend() made. Idempotent. */
  revoke(buffer: ArrayBuffer): void;
  /** lend() for the n (offset, len) pairs of `ranges` in one call: out[i] gets pair i's buffer. All pairs are checked first; `out` must hold n plain data elements already (no holes: a hole's store could reach an inherited setter). Returns n. */
  lendBatch(ranges: Uint32Array, n: number, out: unknown[]): number;
  /** revoke() for buffers[0..n) in one call (each must be an ArrayBuffer, checked before any is detached). */
  revokeAll(buffers: readonly unknown[], n: number): void;
  /** Copies the n (offset, len) pairs of ranges one after the other into dst from byte 0 (all checked first); returns the bytes copied. */
  copyOut(ranges: Uint32Array, n: number, dst: Uint8Array): number;
}

/** One region for NativeBinding.deviceMemoryMap (see DeviceMemoryRegion in virtio/device-memory.ts). */
export interface NativeDeviceRegion {
  fd: FdArg;
  gpa: bigint;
  size: bigint;
  userAddr: bigint;
  mmapOffset: bigint;
}

/** The front-end's memory mapped in this process (device_memory.cc). */
export interface NativeDeviceMemory {
  readonly closed: boolean;
  /** A copy of [gpa, gpa + length); ERR_VHOST_GUEST_ADDRESS when not all mapped. */
  read(gpa: bigint, length: number): Buffer;
  write(gpa: bigint, data: Uint8Array): void;
  /** munmap of every region (and its guard pages); idempotent. */
  close(): void;
}

/** Options of NativeBinding.deviceQueueCreate, all present (TS fills defaults). */
export interface NativeDeviceQueueOptions {
  size: number;
  desc: bigint; // front-end virtual addresses
  avail: bigint;
  used: bigint;
  base: number;
  eventIdx: boolean;
  indirect: boolean;
  maxReadable: number;
  name: string;
}

/** The device side of a split ring (device_queue.cc). */
export interface NativeDeviceQueue {
  readonly nextAvail: number;
  readonly usedIdx: number;
  readonly inflight: number;
  readonly closed: boolean;
  /** Why the queue stopped, or null. */
  readonly broken: { field: string; value: bigint; message: string } | null;
  /**
   * Takes up to `max` chains: meta[0] = their count, then (head, readable bytes, writable bytes)
   * per chain. Returns every chain's readable bytes in one Buffer, in order; null when none was taken.
   */
  popBatch(max: number, meta: Float64Array): Buffer | null;
  /** Bytes written, or -1 when the chain's buffers left memory (the queue is broken now). */
  complete(head: number, data?: Uint8Array | readonly Uint8Array[]): number;
  flush(): boolean;
  enableNotify(on: boolean): boolean;
  setMemory(memory: NativeDeviceMemory): void;
  close(): void;
}

export interface NativeBinding {
  setErrorClass(ctor: new (message: string) => Error): void;

  // owned_fd.cc
  /** The OwnedFd class (constructed only by the addon; exposed for instanceof). */
  readonly OwnedFd: { readonly prototype: OwnedFd };
  openPath(path: string, extraFlags?: number): OwnedFd; // O_RDWR | O_CLOEXEC | extraFlags

  // vhost.cc: ioctls common to every vhost device
  vhostSetOwner(dev: OwnedFd): void;
  vhostResetOwner(dev: OwnedFd): void;
  vhostGetFeatures(dev: OwnedFd): bigint;
  vhostSetFeatures(dev: OwnedFd, bits: bigint): void;
  vhostGetBackendFeatures(dev: OwnedFd): bigint;
  vhostSetBackendFeatures(dev: OwnedFd, bits: bigint): void;
  vhostSetMemTable(dev: OwnedFd, regions: readonly NativeMemRegion[]): void;
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
  /** Checks that a received fd is an eventfd (/proc/self/fd link anon_inode:[eventfd]), sets O_NONBLOCK, and lets eventfdRead/Write use it. */
  eventfdAdopt(fd: OwnedFd): void;
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
  /**
   * A split-ring driver over `buffer` (one mapping's external ArrayBuffer, whose
   * byte 0 is guest-physical `regionGpa`). Ring parts are byte offsets in it.
   * `kick` is written from native code when the device wants a notification.
   */
  virtqueueCreate(buffer: ArrayBuffer, regionGpa: bigint, layout: NativeVirtqueueLayout, kick: OwnedFd | null): NativeVirtqueue;

  // device_memory.cc, device_queue.cc: the device side (a vhost-user back-end)
  /** mmap(MAP_SHARED) of every region between PROT_NONE guard pages; all or nothing. */
  deviceMemoryMap(regions: readonly NativeDeviceRegion[]): NativeDeviceMemory;
  /** A device-side split ring over `memory`; ring addresses are the front-end's (regions' userAddr space). */
  deviceQueueCreate(memory: NativeDeviceMemory, options: NativeDeviceQueueOptions): NativeDeviceQueue;

  // vsock_socket.cc: AF_VSOCK sockets — section owned by the vsock work
  /** socket(AF_VSOCK, type | SOCK_NONBLOCK | SOCK_CLOEXEC); type SOCK_STREAM (1) or SOCK_SEQPACKET (5); label names it in errors. */
  vsockSocket(type: number, label: string): OwnedFd;
  /** bind(); VMADDR_CID_ANY and VMADDR_PORT_ANY are 0xffffffff. Errors carry path 'vsock:cid:port'. */
  vsockBind(fd: OwnedFd, cid: number, port: number): void;
  vsockListen(fd: OwnedFd, backlog: number): void;
  /** accept4(SOCK_NONBLOCK | SOCK_CLOEXEC): the connection and its peer; null when none is pending (EAGAIN). */
  vsockAccept(fd: OwnedFd): { fd: OwnedFd; cid: number; port: number } | null;
  /** Nonblocking connect(): true when connected at once, false when in progress (EINPROGRESS). */
  vsockConnect(fd: OwnedFd, cid: number, port: number): boolean;
  /** getsockopt(SO_ERROR): a positive errno, or 0. Reading clears it. */
  vsockGetSocketError(fd: OwnedFd): number;
  /** setsockopt(SO_VM_SOCKETS_CONNECT_TIMEOUT); the kernel applies it to nonblocking connects too (default 2000 ms). */
  vsockSetConnectTimeout(fd: OwnedFd, ms: number): void;
  /** recv() into buf: bytes read, 0 at end of stream, null when nothing is pending (EAGAIN). */
  vsockRead(fd: OwnedFd, buf: Uint8Array): number | null;
  /** recv(MSG_TRUNC) of one SOCK_SEQPACKET message: its full length (> buf.length when truncated), 0 at end, null on EAGAIN. */
  vsockRecvMessage(fd: OwnedFd, buf: Uint8Array): number | null;
  /** send(MSG_NOSIGNAL): bytes written (a stream may take fewer), null when the send buffer is full (EAGAIN). */
  vsockWrite(fd: OwnedFd, buf: Uint8Array): number | null;
  /** shutdown(how): SHUT_RD (0), SHUT_WR (1), SHUT_RDWR (2). */
  vsockShutdown(fd: OwnedFd, how: number): void;
  vsockGetSockName(fd: OwnedFd): { cid: number; port: number };
  vsockGetPeerName(fd: OwnedFd): { cid: number; port: number };
  /** ioctl(IOCTL_VM_SOCKETS_GET_LOCAL_CID) on an open /dev/vsock. */
  vsockGetLocalCid(vsockDev: OwnedFd): number;

  // netlink.cc: rtnetlink — section owned by the netlink work
  /** A bound NETLINK_ROUTE socket (SOCK_CLOEXEC), created inside the netns of `netns` when given (setns on a helper thread). */
  netlinkOpen(netns: FdArg): OwnedFd;
  /**
   * Sends one encoded message (nlmsg_len must equal its length) and returns the reply messages
   * received before the ACK, NLMSG_DONE, or the only reply of a plain GET. A kernel error throws
   * ErrnoError (syscall 'netlink(RTM_NEWLINK)', .path = `path`, .detail = the extended ack text).
   */
  netlinkRequest(sock: OwnedFd, message: Uint8Array, path: string): Buffer[];
  /** Like `ip netns add`: a fresh network namespace kept by a bind mount on /run/netns/<name>. */
  netnsCreate(name: string): void;
  /** Like `ip netns delete`: umount2(MNT_DETACH) + unlink of /run/netns/<name>. */
  netnsDelete(name: string): void;
  /** open(path, O_RDONLY | O_CLOEXEC) of a namespace file. */
  netnsOpen(path: string): OwnedFd;

  // fd_adopt.cc: fds inherited from a parent (VMM handoff) — section owned by the handoff work
  /** Takes ownership of an open inherited fd: fcntl(F_GETFD) checks it (EBADF), then FD_CLOEXEC is set. */
  fdAdopt(fd: number, label: string): OwnedFd;

  // unix_socket.cc: AF_UNIX sockets passing fds (SCM_RIGHTS)
  /** socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC); type SOCK_STREAM (1) or SOCK_SEQPACKET (5); label names it in errors. */
  unixSocket(type: number, label: string): OwnedFd;
  /** socketpair(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC). */
  unixSocketPair(type: number, label: string): [OwnedFd, OwnedFd];
  /** connect(2) to a filesystem path (a unix connect completes at once or fails; EAGAIN: backlog full). */
  unixConnect(fd: OwnedFd, path: string): void;
  unixBind(fd: OwnedFd, path: string): void;
  unixListen(fd: OwnedFd, backlog: number): void;
  /** accept4(SOCK_NONBLOCK | SOCK_CLOEXEC); null when none is pending (EAGAIN). */
  unixAccept(fd: OwnedFd): OwnedFd | null;
  /**
   * sendmsg(MSG_NOSIGNAL) of buf with up to 253 fds as SCM_RIGHTS (they go with the first byte):
   * bytes written (a stream may take fewer), null when the send buffer is full (EAGAIN).
   */
  unixSendMsg(fd: OwnedFd, buf: Uint8Array, fds: FdArg[]): number | null;
  /**
   * recvmsg(MSG_CMSG_CLOEXEC) accepting up to maxFds fds, each received fd owned by a new OwnedFd.
   * bytes 0 at end of stream; null when nothing is pending. ERR_VHOST_TRUNCATED (the fds that came
   * closed) when more fds came than maxFds, or a seqpacket message was longer than buf.
   */
  unixRecvMsg(fd: OwnedFd, buf: Uint8Array, maxFds: number): { bytes: number; fds: OwnedFd[] } | null;
  /** A bounded poll(2) of one fd: revents (POLLIN 1, POLLOUT 4, POLLERR 8, POLLHUP 16), 0 on timeout. */
  unixPoll(fd: OwnedFd, events: number, timeoutMs: number): number;
  /** shutdown(how): SHUT_RD (0), SHUT_WR (1), SHUT_RDWR (2). */
  unixShutdown(fd: OwnedFd, how: number): void;
  /** getsockopt(SO_PEERCRED). */
  unixPeerCred(fd: OwnedFd): { pid: number; uid: number; gid: number };

  // kvm.cc: wiring vhost into a KVM VM — section owned by the handoff work
  kvmGetApiVersion(kvm: OwnedFd): number;
  /** KVM_CREATE_VM (type 0) on /dev/kvm; the VM fd is O_CLOEXEC, labelled 'kvm-vm'. */
  kvmCreateVm(kvm: OwnedFd): OwnedFd;
  kvmCreateIrqchip(vm: OwnedFd): void;
  /** KVM_IOEVENTFD; flags are KVM_IOEVENTFD_FLAG_* (DATAMATCH 1, PIO 2, DEASSIGN 4). */
  kvmIoeventfd(vm: OwnedFd, addr: bigint, len: number, fd: FdArg, flags: number, datamatch: bigint): void;
  /** KVM_IRQFD; flags are KVM_IRQFD_FLAG_* (DEASSIGN 1, RESAMPLE 2); resampleFd null/-1 for none. */
  kvmIrqfd(vm: OwnedFd, fd: FdArg, gsi: number, flags: number, resampleFd: FdArg): void;
  /** KVM_SET_USER_MEMORY_REGION; size 0n deletes the slot. */
  kvmSetUserMemoryRegion(vm: OwnedFd, slot: number, flags: number, gpa: bigint, size: bigint, hva: bigint): void;
}

function load(): NativeBinding {
  const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;
  const binding = nodeGypBuild(path.join(__dirname, '..', '..')) as NativeBinding;
  binding.setErrorClass(VhostError);
  // NODE_DEBUG=linux-vhost: every call through this door is traced. Decided once
  // at load, so when it is off the binding is used as is: no wrapper, no cost.
  return debug.enabled ? traced(binding) : binding;
}

const debug = debuglog('linux-vhost');

/** How a traced argument or result reads: fds by number and path, bigints in hex, bytes by length and first bytes. */
function show(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  if (typeof v === 'bigint') return `0x${v.toString(16)}`;
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v !== 'object') return String(v);
  if (v instanceof Uint8Array) {
    const head = Buffer.from(v.buffer, v.byteOffset, Math.min(v.byteLength, 32)).toString('hex');
    return `<${v.byteLength} bytes ${head}${v.byteLength > 32 ? '…' : ''}>`;
  }
  if (v instanceof ArrayBuffer) return `<ArrayBuffer ${v.byteLength}>`;
  if (isOwnedFd(v)) return v.closed ? `fd(closed '${v.path}')` : `fd ${v.fd} '${v.path}'`;
  if (Array.isArray(v)) return `[${v.map(show).join(', ')}]`;
  if (isMapping(v)) return `mapping ${show(v.address)}+${show(v.size)}`;
  return `{ ${Object.entries(v).map(([k, x]) => `${k}: ${show(x)}`).join(', ')} }`;
}
let ownedFdClass: { prototype: object } | undefined;
const isOwnedFd = (v: object): v is OwnedFd => ownedFdClass !== undefined && v instanceof (ownedFdClass as unknown as new () => object);
const isMapping = (v: object): v is Mapping => 'address' in v && 'unmap' in v;

/** One line per call: `name(args) -> result`, or `name(args) !! CODE message`. */
function traceCall<A extends unknown[], R>(name: string, fn: (...args: A) => R, self: unknown): (...args: A) => R {
  return (...args: A): R => {
    const call = `${name}(${args.map(show).join(', ')})`;
    try {
      const result = fn.apply(self, args);
      debug('%s -> %s', call, result === undefined ? 'ok' : show(result));
      return result;
    } catch (err) {
      debug('%s !! %s', call, (err as Error).message);
      throw err;
    }
  };
}

/**
 * Traces the close of fds and unmaps of mappings the addon hands out: the
 * class methods are read-only, so each object returned gets its own traced
 * method (an own property shadows the prototype's).
 */
function instrument(v: unknown): void {
  if (v === null || typeof v !== 'object') return;
  if (isOwnedFd(v)) {
    for (const m of ['close', 'watch', 'unwatch'] as const) {
      const fn = (v as unknown as Record<string, (...a: unknown[]) => unknown>)[m];
      Object.defineProperty(v, m, { value: (...args: unknown[]) => traceCall(`${show(v)}.${m}`, fn, v)(...args), enumerable: false });
    }
  } else if (isMapping(v)) {
    const unmap = v.unmap;
    Object.defineProperty(v, 'unmap', { value: () => traceCall(`${show(v)}.unmap`, unmap, v)(), enumerable: false });
  } else if ('fd' in v) {
    instrument((v).fd); // tapOpen, vsockAccept results
  }
}

/** The binding with every function traced through debuglog (NODE_DEBUG=linux-vhost). */
function traced(binding: NativeBinding): NativeBinding {
  ownedFdClass = binding.OwnedFd;
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(binding)) {
    if (typeof value !== 'function' || name === 'OwnedFd' || name === 'setErrorClass') {
      out[name] = value;
      continue;
    }
    const call = traceCall(name, value as (...a: unknown[]) => unknown, binding);
    out[name] = (...args: unknown[]): unknown => {
      const result = call(...args);
      instrument(result);
      return result;
    };
  }
  return out as unknown as NativeBinding;
}

export const native: NativeBinding = load();
