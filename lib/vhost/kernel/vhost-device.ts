// VhostDevice: the ioctls every vhost device shares, one method per ioctl
// (named after it, as rust-vmm's VhostBackend does), with argument checks in
// front. Only types and shapes are checked here; ranges the kernel enforces
// itself (ring size a power of two, queue index < nvqs, region count) are left
// to the kernel so its errno (EINVAL, ENOBUFS, E2BIG) reaches the caller.
import { checkInt, checkNonEmptyString, checkObject, checkOneOf, describe, toU64 } from '../../core/check';
import { invalidArg, VhostError, withDeviceHint, type DeviceNode } from '../../core/errors';
import { FdOwner, type FdLike } from '../../core/fd';
import type { MemoryLike, MemoryRegion } from '../../core/memory';
import { native, type FdArg, type NativeIotlbMsg, type NativeMemRegion, type OwnedFd } from '../../core/native';
import * as fs from 'node:fs';
import { kUnchecked, type LogArea, type VhostBackend, type VringAddr, type VringEndian } from '../backend';
import type { MemoryLimits } from '../plan';

const U32_MAX = 0xffff_ffff;

/** Default of the vhost module's max_mem_regions parameter. */
export const DEFAULT_MAX_MEM_REGIONS = 64;
const MAX_MEM_REGIONS_PATH = '/sys/module/vhost/parameters/max_mem_regions';

/** The vhost module's max_mem_regions (default 64 when the parameter cannot be read, e.g. module not loaded). */
export function readMaxMemRegions(path: string = MAX_MEM_REGIONS_PATH): number {
  try {
    const n = Number(fs.readFileSync(path, 'utf8').trim());
    return Number.isSafeInteger(n) && n > 0 ? n : DEFAULT_MAX_MEM_REGIONS;
  } catch {
    return DEFAULT_MAX_MEM_REGIONS;
  }
}

/**
 * How the kernel takes a memory table: by address, at most max_mem_regions
 * entries. The parameter is read (from sysfs, each time: root may change it)
 * only when the limit is asked for, which a one-region table never needs.
 */
export function kernelMemoryLimits(maxRegions?: number): MemoryLimits {
  return {
    get maxRegions() {
      return maxRegions ?? readMaxMemRegions();
    },
    limitName: "the kernel's max_mem_regions",
    access: 'address',
  };
}

/** A region of an explicit memory table: the one MemoryRegion shape (fd and offset are ignored by the kernel). */
export type MemTableRegion = MemoryRegion;


/** What an IOTLB message is: a miss the device reports, or an update/invalidate (or batch bracket) this process sends. */
export type IotlbMsgType = 'miss' | 'update' | 'invalidate' | 'access-fail' | 'batch-begin' | 'batch-end';
/** The access an IOTLB entry grants (or a miss asked for). */
export type IotlbPerm = 'none' | 'ro' | 'wo' | 'rw';

/** An IOTLB message to send (struct vhost_iotlb_msg in a VHOST_IOTLB_MSG_V2 envelope). */
export interface IotlbMsg {
  type: IotlbMsgType;
  /** I/O virtual address (what the rings and descriptors contain). */
  iova?: bigint | number;
  size?: bigint | number;
  /** Where the range is mapped in this process (update). */
  uaddr?: bigint | number;
  /** Default 'none'. */
  perm?: IotlbPerm;
  /** Address space id; the kernel ignores it unless VHOST_BACKEND_F_IOTLB_ASID was negotiated. Default 0. */
  asid?: number;
}

/** A message read from the device (a 'miss' names the iova and the access that missed). */
export interface IotlbMsgRead {
  type: IotlbMsgType;
  iova: bigint;
  size: bigint;
  uaddr: bigint;
  perm: IotlbPerm;
  asid: number;
}

const IOTLB_TYPES: readonly IotlbMsgType[] = ['miss', 'update', 'invalidate', 'access-fail', 'batch-begin', 'batch-end'];
const IOTLB_PERMS: readonly IotlbPerm[] = ['none', 'ro', 'wo', 'rw'];

// ---- argument checks (thrown before any syscall) ---------------------------

const checkU32 = (value: unknown, arg: string): number => checkInt(value, arg, 0, U32_MAX, describe);
const checkU64 = (value: unknown, arg: string): bigint => toU64(value, arg, describe);

function checkFd(value: unknown, arg: string): FdArg {
  if (value === null || value === undefined) return null;
  if (value instanceof FdOwner) return value.nativeHandle; // throws ERR_VHOST_CLOSED when closed
  if (typeof value === 'number' && Number.isInteger(value)) {
    if (value < -1 || value > 0x7fff_ffff) throw invalidArg(arg, `must be an fd >= 0, or -1 / null for none, got ${value}`, 'ERR_VHOST_OUT_OF_RANGE');
    return value;
  }
  throw invalidArg(arg, `must be an EventFd/Tap (an FdOwner), an fd number or null, got ${describe(value)}`);
}

function checkBits(value: unknown, arg: string): bigint {
  if (typeof value !== 'bigint') throw invalidArg(arg, `must be a bigint, got ${describe(value)}`);
  return toU64(value, arg, describe, (v) => `must fit in 64 bits, got ${describe(v)}`);
}

function toMemTable(mem: unknown): NativeMemRegion[] {
  const list = Array.isArray(mem) ? mem : typeof mem === 'object' && mem !== null && Array.isArray((mem as MemoryLike).regions) ? (mem as MemoryLike).regions : null;
  if (list === null) throw invalidArg('mem', 'must be a GuestMemory or an array of { gpa, size, hva }');
  const arg = Array.isArray(mem) ? 'mem' : 'mem.regions';
  return list.map((r: unknown, i) => {
    const region = checkObject<Partial<MemoryRegion>>(r, `${arg}[${i}]`, 'an object { gpa, size, hva }');
    return {
      gpa: checkU64(region.gpa, `${arg}[${i}].gpa`),
      size: checkU64(region.size, `${arg}[${i}].size`),
      hva: checkU64(region.hva, `${arg}[${i}].hva`),
    };
  });
}

/** The log's address: a LogArea's hva, or an address given as is. */
function logAddress(log: unknown): bigint {
  if (typeof log === 'object' && log !== null) return checkU64((log as Partial<LogArea>).hva, 'log.hva');
  return checkU64(log, 'addr');
}

/** An fd argument as the addon takes it, for callers whose arguments are already checked. */
function fdArg(fd: FdLike | undefined): FdArg {
  return fd instanceof FdOwner ? fd.nativeHandle : (fd ?? null);
}

function toIotlbMsg(msg: unknown): NativeIotlbMsg {
  const m = checkObject<IotlbMsg>(msg, 'msg', 'an object { type, iova, size, uaddr, perm }');
  const type = IOTLB_TYPES.indexOf(m.type);
  if (type < 0) throw invalidArg('msg.type', `must be one of ${IOTLB_TYPES.join(', ')}, got ${describe(m.type)}`);
  const perm = IOTLB_PERMS.indexOf(m.perm ?? 'none');
  if (perm < 0) throw invalidArg('msg.perm', `must be one of ${IOTLB_PERMS.join(', ')}, got ${describe(m.perm)}`);
  return {
    type: type + 1, // VHOST_IOTLB_MISS = 1 ... VHOST_IOTLB_BATCH_END = 6
    perm, // VHOST_ACCESS_RO = 1, WO = 2, RW = 3
    iova: checkU64(m.iova ?? 0n, 'msg.iova'),
    size: checkU64(m.size ?? 0n, 'msg.size'),
    uaddr: checkU64(m.uaddr ?? 0n, 'msg.uaddr'),
    asid: checkU32(m.asid ?? 0, 'msg.asid'),
  };
}

function fromIotlbMsg(msg: NativeIotlbMsg): IotlbMsgRead {
  const type = IOTLB_TYPES[msg.type - 1];
  const perm = IOTLB_PERMS[msg.perm];
  if (type === undefined || perm === undefined) {
    // A message type or access this library does not know (a newer kernel): say so rather than guess.
    throw new VhostError(`ERR_VHOST_UNSUPPORTED: IOTLB message of unknown type ${msg.type} / perm ${msg.perm}`, { code: 'ERR_VHOST_UNSUPPORTED' });
  }
  return { type, iova: msg.iova, size: msg.size, uaddr: msg.uaddr, perm, asid: msg.asid };
}

/**
 * A vhost device fd (/dev/vhost-net, /dev/vhost-vsock): the ioctls common to
 * every vhost device. Call setOwner() first; the owner process's memory is
 * what the kernel reads rings and buffers from.
 */
export abstract class VhostDevice extends FdOwner implements VhostBackend {
  /** The kernel reads this process's memory: regions are passed by address. */
  readonly memoryAccess = 'address' as const;
  #unchecked?: VhostBackend;

  protected constructor(handle: OwnedFd) {
    super(handle);
  }

  /**
   * The same calls without argument checks, for a builder that validated its
   * whole plan (VhostBackend's contract). Subclasses add their own calls.
   */
  get [kUnchecked](): VhostBackend {
    return (this.#unchecked ??= this.uncheckedCalls());
  }

  /** Builds the unchecked form once; a subclass spreads this and adds its device's calls. */
  protected uncheckedCalls(): VhostBackend {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const dev = this;
    return {
      get path() { return dev.path; },
      get closed() { return dev.closed; },
      memoryAccess: 'address',
      setOwner: () => native.vhostSetOwner(dev.handle),
      getFeatures: () => native.vhostGetFeatures(dev.handle),
      setFeatures: (bits) => native.vhostSetFeatures(dev.handle, bits),
      setMemTable: (regions) => native.vhostSetMemTable(dev.handle, regions),
      setLogBase: (log) => native.vhostSetLogBase(dev.handle, typeof log === 'object' ? log.hva : BigInt(log)),
      setVringNum: (i, n) => native.vhostSetVringNum(dev.handle, i, n),
      setVringBase: (i, b) => native.vhostSetVringBase(dev.handle, i, b),
      getVringBase: (i) => native.vhostGetVringBase(dev.handle, i),
      setVringAddr: (i, a) => native.vhostSetVringAddr(dev.handle, i, { desc: BigInt(a.desc), avail: BigInt(a.avail), used: BigInt(a.used), log: BigInt(a.log ?? 0n), flags: a.flags ?? 0 }),
      setVringKick: (i, fd) => native.vhostSetVringKick(dev.handle, i, fdArg(fd)),
      setVringCall: (i, fd) => native.vhostSetVringCall(dev.handle, i, fdArg(fd)),
      setVringErr: (i, fd) => native.vhostSetVringErr(dev.handle, i, fdArg(fd)),
      setVringEndian: (i, e) => native.vhostSetVringEndian(dev.handle, i, e === 'big' ? 1 : 0),
      setVringBusyloopTimeout: (i, t) => native.vhostSetVringBusyloopTimeout(dev.handle, i, t),
      close: () => dev.close(),
    };
  }

  /** Opens a device node O_RDWR | O_CLOEXEC; ENOENT / EACCES / EPERM carry the hint of `device` (its module, usual node). */
  protected static openPath(path: string, device: DeviceNode): OwnedFd {

    checkNonEmptyString(path, 'path', describe);
    try {
      return native.openPath(path);
    } catch (err) {
      throw withDeviceHint(err, device);
    }
  }

  // Argument checks shared with the device subclasses.
  protected static checkU32 = checkU32;
  protected static checkU64 = checkU64;
  protected static checkFd = checkFd;

  /** VHOST_SET_OWNER: makes this process the owner and starts the vhost worker. EBUSY if already owned. */
  setOwner(): void {
    native.vhostSetOwner(this.handle);
  }

  /** VHOST_RESET_OWNER: gives up ownership and resets the device (rings, memory table, features). */
  resetOwner(): void {
    native.vhostResetOwner(this.handle);
  }

  /** VHOST_GET_FEATURES: the feature bits the device offers (see `features`). */
  getFeatures(): bigint {
    return native.vhostGetFeatures(this.handle);
  }

  /** VHOST_SET_FEATURES: acknowledges features; EOPNOTSUPP for a bit not offered. */
  setFeatures(bits: bigint): void {
    const v = checkBits(bits, 'bits');
    native.vhostSetFeatures(this.handle, v);
  }

  /** VHOST_GET_BACKEND_FEATURES (see `features.backend`). */
  getBackendFeatures(): bigint {
    return native.vhostGetBackendFeatures(this.handle);
  }

  /** VHOST_SET_BACKEND_FEATURES; EOPNOTSUPP for a bit not offered. */
  setBackendFeatures(bits: bigint): void {
    const v = checkBits(bits, 'bits');
    native.vhostSetBackendFeatures(this.handle, v);
  }

  /**
   * VHOST_SET_MEM_TABLE: how guest-physical addresses in descriptors map to
   * this process's memory. Takes a GuestMemory or explicit regions. More
   * regions than /sys/module/vhost/parameters/max_mem_regions fail with E2BIG.
   */
  setMemTable(mem: MemoryLike | readonly MemoryRegion[]): void {
    const regions = toMemTable(mem);
    native.vhostSetMemTable(this.handle, regions);
  }

  /** VHOST_SET_LOG_BASE: host address of the dirty-page log bitmap (a LogArea's hva, or the address itself). */
  setLogBase(addr: LogArea | bigint | number): void {
    const v = logAddress(addr);
    native.vhostSetLogBase(this.handle, v);
  }

  /** VHOST_SET_LOG_FD: eventfd signalled on log writes; null unbinds. */
  setLogFd(fd: FdLike): void {
    const f = checkFd(fd, 'fd');
    native.vhostSetLogFd(this.handle, f);
  }

  /** VHOST_SET_VRING_NUM: ring size (the kernel wants a power of two in 1..32768; EBUSY while a backend is attached). */
  setVringNum(index: number, num: number): void {
    const i = checkU32(index, 'index');
    const n = checkU32(num, 'num');
    native.vhostSetVringNum(this.handle, i, n);
  }

  /** VHOST_SET_VRING_BASE: next available index to process (split rings: 0..65535). */
  setVringBase(index: number, base: number): void {
    const i = checkU32(index, 'index');
    const b = checkU32(base, 'base');
    native.vhostSetVringBase(this.handle, i, b);
  }

  /** VHOST_GET_VRING_BASE: the ring's next available index (also stops the ring's processing). */
  getVringBase(index: number): number {
    const i = checkU32(index, 'index');
    return native.vhostGetVringBase(this.handle, i);
  }

  /** VHOST_SET_VRING_ADDR: host virtual addresses of the descriptor table, avail ring and used ring. */
  setVringAddr(index: number, addr: VringAddr): void {
    const i = checkU32(index, 'index');
    checkObject(addr, 'addr', 'an object { desc, avail, used, log?, flags? }');
    const a = {
      desc: checkU64(addr.desc, 'addr.desc'),
      avail: checkU64(addr.avail, 'addr.avail'),
      used: checkU64(addr.used, 'addr.used'),
      log: checkU64(addr.log ?? 0n, 'addr.log'),
      flags: checkU32(addr.flags ?? 0, 'addr.flags'),
    };
    native.vhostSetVringAddr(this.handle, i, a);
  }

  /** VHOST_SET_VRING_KICK: eventfd the driver signals when it adds buffers; null unbinds. */
  setVringKick(index: number, fd: FdLike): void {
    const i = checkU32(index, 'index');
    const f = checkFd(fd, 'fd');
    native.vhostSetVringKick(this.handle, i, f);
  }

  /** VHOST_SET_VRING_CALL: eventfd the device signals when it used buffers; null unbinds. */
  setVringCall(index: number, fd: FdLike): void {
    const i = checkU32(index, 'index');
    const f = checkFd(fd, 'fd');
    native.vhostSetVringCall(this.handle, i, f);
  }

  /** VHOST_SET_VRING_ERR: eventfd signalled on ring errors; null unbinds. */
  setVringErr(index: number, fd: FdLike): void {
    const i = checkU32(index, 'index');
    const f = checkFd(fd, 'fd');
    native.vhostSetVringErr(this.handle, i, f);
  }

  /** VHOST_SET_VRING_BUSYLOOP_TIMEOUT: microseconds the worker polls before sleeping. */
  setVringBusyloopTimeout(index: number, usec: number): void {
    const i = checkU32(index, 'index');
    const t = checkU32(usec, 'usec');
    native.vhostSetVringBusyloopTimeout(this.handle, i, t);
  }

  /** VHOST_GET_VRING_BUSYLOOP_TIMEOUT, in microseconds. */
  getVringBusyloopTimeout(index: number): number {
    const i = checkU32(index, 'index');
    return native.vhostGetVringBusyloopTimeout(this.handle, i);
  }

  /**
   * VHOST_SET_VRING_ENDIAN: byte order of a legacy (pre VERSION_1) ring.
   * Kernels built without CONFIG_VHOST_CROSS_ENDIAN_LEGACY answer ENOTTY.
   */
  setVringEndian(index: number, endian: VringEndian): void {
    const i = checkU32(index, 'index');
    checkOneOf(endian, 'endian', ['little', 'big'], describe);
    native.vhostSetVringEndian(this.handle, i, endian === 'big' ? 1 : 0);
  }

  /** VHOST_GET_VRING_ENDIAN (ENOTTY without CONFIG_VHOST_CROSS_ENDIAN_LEGACY). */
  getVringEndian(index: number): VringEndian {
    const i = checkU32(index, 'index');
    return native.vhostGetVringEndian(this.handle, i) === 1 ? 'big' : 'little';
  }

  /**
   * Writes one IOTLB message (VHOST_IOTLB_MSG_V2) to the device, e.g. an
   * 'update' answering a miss. Needs VIRTIO_F_ACCESS_PLATFORM acknowledged
   * (else the kernel answers EFAULT).
   */
  sendIotlbMsg(msg: IotlbMsg): void {
    const m = toIotlbMsg(msg);
    native.vhostWriteIotlbMsg(this.handle, m);
  }

  /** Reads one pending IOTLB message (typically a 'miss'), or null when none is pending. Never blocks. */
  readIotlbMsg(): IotlbMsgRead | null {
    const m = native.vhostReadIotlbMsg(this.handle);
    return m === null ? null : fromIotlbMsg(m);
  }
}
