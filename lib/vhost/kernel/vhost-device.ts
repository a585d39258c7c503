// VhostDevice: the ioctls every vhost device shares, one method per ioctl
// (named after it, as rust-vmm's VhostBackend does), with argument checks in
// front. Only types and shapes are checked here; ranges the kernel enforces
// itself (ring size a power of two, queue index < nvqs, region count) are left
// to the kernel so its errno (EINVAL, ENOBUFS, E2BIG) reaches the caller.
import { checkInt, checkNonEmptyString, checkObject, checkOneOf, describe, toU64 } from '../../core/check';
import { invalidArg, VhostError, withDeviceHint, type DeviceNode } from '../../core/errors';
import { FdOwner } from '../../core/fd';
import { native, type FdArg, type NativeIotlbMsg, type OwnedFd } from '../../core/native';

const U32_MAX = 0xffff_ffff;

/** One region of a memory table: guest-physical range and where it is mapped in this process. */
export interface MemTableRegion {
  guestPhysAddr: bigint;
  size: bigint;
  userspaceAddr: bigint;
}

/** Anything with guest memory regions, such as GuestMemory (only gpa, size and hva are used). */
export interface MemoryLike {
  readonly regions: readonly { readonly gpa: bigint; readonly size: bigint; readonly hva: bigint }[];
}

/** Ring addresses for VHOST_SET_VRING_ADDR: host virtual addresses in this process (or IOVAs with an IOTLB). */
export interface VringAddr {
  desc: bigint | number;
  avail: bigint | number;
  used: bigint | number;
  /** Guest-physical address of the used ring for dirty logging (with VRING_ADDR_F_LOG). */
  log?: bigint | number;
  /** VRING_ADDR_F_LOG or 0. */
  flags?: number;
}

/** flags bit of setVringAddr: log writes to the used ring at `log` (1 << VHOST_VRING_F_LOG). */
export const VRING_ADDR_F_LOG = 1;

export type VringEndian = 'little' | 'big';

/** An fd argument: a library object owning an fd (EventFd, Tap), a raw fd number, or null for "none". */
export type FdLike = FdOwner | number | null;

export type IotlbMsgType = 'miss' | 'update' | 'invalidate' | 'access-fail' | 'batch-begin' | 'batch-end';
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

function toMemTable(mem: unknown): { guestPhysAddr: bigint; memorySize: bigint; userspaceAddr: bigint }[] {
  if (Array.isArray(mem)) {
    return mem.map((r: unknown, i) => {
      const region = checkObject<Partial<MemTableRegion>>(r, `mem[${i}]`, 'an object { guestPhysAddr, size, userspaceAddr }');
      return {
        guestPhysAddr: checkU64(region.guestPhysAddr, `mem[${i}].guestPhysAddr`),
        memorySize: checkU64(region.size, `mem[${i}].size`),
        userspaceAddr: checkU64(region.userspaceAddr, `mem[${i}].userspaceAddr`),
      };
    });
  }
  if (typeof mem === 'object' && mem !== null && Array.isArray((mem as MemoryLike).regions)) {
    return (mem as MemoryLike).regions.map((r, i) => ({
      guestPhysAddr: checkU64(r.gpa, `mem.regions[${i}].gpa`),
      memorySize: checkU64(r.size, `mem.regions[${i}].size`),
      userspaceAddr: checkU64(r.hva, `mem.regions[${i}].hva`),
    }));
  }
  throw invalidArg('mem', 'must be a GuestMemory or an array of { guestPhysAddr, size, userspaceAddr }');
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
export abstract class VhostDevice extends FdOwner {
  protected constructor(handle: OwnedFd) {
    super(handle);
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
  setMemTable(mem: MemoryLike | readonly MemTableRegion[]): void {
    const regions = toMemTable(mem);
    native.vhostSetMemTable(this.handle, regions);
  }

  /** VHOST_SET_LOG_BASE: host address of the dirty-page log bitmap. */
  setLogBase(addr: bigint | number): void {
    const v = checkU64(addr, 'addr');
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
