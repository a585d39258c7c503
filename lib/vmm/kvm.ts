// KVM wiring for a VMM that owns its vhost devices: the guest's notify write
// becomes a kick through an ioeventfd, vhost's call becomes a guest interrupt
// through an irqfd, and GuestMemory regions become memory slots, so the
// datapath never passes through JavaScript. Types and shapes are checked here;
// ranges KVM enforces itself (ioeventfd length, slot numbers, alignment) are
// left to it so its errno reaches the caller.
import { checkInt, checkNonEmptyString, checkObject, checkOneOf, toU64, typeOf } from '../core/check';
import { invalidArg, withDeviceHint, type DeviceNode } from '../core/errors';
import { FdOwner, type FdLike } from '../core/fd';
import { native, type OwnedFd } from '../core/native';
import type { MemoryLike } from '../core/memory';

const U32_MAX = 0xffff_ffff;

const IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
const IOEVENTFD_FLAG_PIO = 1 << 1;
const IOEVENTFD_FLAG_DEASSIGN = 1 << 2;
const IRQFD_FLAG_DEASSIGN = 1 << 0;
const IRQFD_FLAG_RESAMPLE = 1 << 1;
/** KVM_MEM_READONLY: guest writes to the slot exit to the VMM as MMIO. */
export const KVM_MEM_READONLY = 1 << 1;
/** KVM_MEM_LOG_DIRTY_PAGES */
export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;

const u32 = (v: unknown, arg: string): number => checkInt(v, arg, 0, U32_MAX, typeOf);
const u64 = (v: unknown, arg: string): bigint => toU64(v, arg, null, () => 'must fit in 64 bits unsigned');

function fdOf(v: FdLike | undefined, arg: string, required: boolean): OwnedFd | number | null {
  if (v === null || v === undefined) {
    if (required) throw invalidArg(arg, 'is required (an EventFd or an fd number)');
    return null;
  }
  if (v instanceof FdOwner) return v.nativeHandle;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0x7fff_ffff) return v;
  throw invalidArg(arg, 'must be an EventFd (or other FdOwner) or an fd number');
}

/** An ioeventfd: guest writes of `len` bytes at `addr` (matching `datamatch`, if given) signal `eventfd` in the kernel. */
export interface IoeventfdSpec {
  /** Guest-physical MMIO address, or a port number with `space: 'pio'`. */
  addr: bigint | number;
  /** Access width 1, 2, 4 or 8; 0 matches any width (MMIO only, and not with datamatch). KVM checks it (EINVAL). */
  len: number;
  /** The kick eventfd (e.g. the one given to vhost's setVringKick). */
  eventfd: FdLike;
  /** Only writes of this value signal (e.g. the queue index for a shared notify register). */
  datamatch?: bigint | number;
  /** 'mmio' (default) or 'pio'. */
  space?: 'mmio' | 'pio';
}

/** An irqfd: a signal on `eventfd` injects `gsi` into the guest. */
export interface IrqfdSpec {
  /** The call eventfd (e.g. the one given to vhost's setVringCall). */
  eventfd: FdLike;
  gsi: number;
  /** For level-triggered interrupts: signalled when the guest EOIs, so the source can re-raise. */
  resample?: FdLike;
}

/** One memory slot: `size` bytes at guest-physical `gpa`, backed by this process's memory at `hva`. */
export interface MemorySlotSpec {
  slot: number;
  gpa: bigint | number;
  size: bigint | number;
  hva: bigint | number;
  /** KVM_MEM_* flags (default 0). */
  flags?: number;
}

/**
 * A KVM VM fd. Create one with Kvm.open().createVm(), or adopt one by number
 * with KvmVm.fromFd(). Owns it: close() or `using`. KVM answers VM ioctls only
 * from the process that called KVM_CREATE_VM (others get EIO), so the VMM
 * that runs the vCPUs must be this process (e.g. a native VMM embedding Node).
 */
export class KvmVm extends FdOwner {
  private constructor(handle: OwnedFd) {
    super(handle);
  }

  /** @internal */
  static wrap(handle: OwnedFd): KvmVm {
    return new KvmVm(handle);
  }

  /**
   * Adopts a VM fd by number (marks it FD_CLOEXEC); EBADF if it is not open.
   * Only a VM created by this same process is usable: an fd inherited from
   * another process opens, but every VM ioctl on it fails EIO.
   */
  static fromFd(fd: number): KvmVm {
    if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0 || fd > 0x7fff_ffff) throw invalidArg('fd', 'must be an fd number');
    return new KvmVm(native.fdAdopt(fd, 'kvm-vm'));
  }

  /** KVM_CREATE_IRQCHIP: the in-kernel interrupt controllers irqfds inject into (EEXIST the second time). */
  createIrqchip(): void {
    native.kvmCreateIrqchip(this.handle);
  }

  private ioeventfd(spec: IoeventfdSpec, deassign: boolean): void {
    checkObject(spec, 'spec');
    const addr = u64(spec.addr, 'addr');
    const len = u32(spec.len, 'len');
    const space = spec.space ?? 'mmio';
    checkOneOf(space, 'space', ['mmio', 'pio'], null);
    if (space === 'pio' && addr > 0xffffn) throw invalidArg('addr', 'must be a port number 0..0xffff with space pio', 'ERR_VHOST_OUT_OF_RANGE');
    const fd = fdOf(spec.eventfd, 'eventfd', true);
    let flags = (space === 'pio' ? IOEVENTFD_FLAG_PIO : 0) | (deassign ? IOEVENTFD_FLAG_DEASSIGN : 0);
    let datamatch = 0n;
    if (spec.datamatch !== undefined) {
      datamatch = u64(spec.datamatch, 'datamatch');
      flags |= IOEVENTFD_FLAG_DATAMATCH;
    }
    native.kvmIoeventfd(this.handle, addr, len, fd, flags, datamatch);
  }

  /** KVM_IOEVENTFD: registers the kick eventfd. EEXIST if the same address, width, space and datamatch is taken. */
  assignIoeventfd(spec: IoeventfdSpec): void {
    this.ioeventfd(spec, false);
  }

  /** KVM_IOEVENTFD with DEASSIGN: the same spec as assigned; ENOENT if none matches. */
  deassignIoeventfd(spec: IoeventfdSpec): void {
    this.ioeventfd(spec, true);
  }

  /** KVM_IRQFD: routes the call eventfd to `gsi`. Needs an irqchip (EINVAL without); EBUSY if this eventfd is already an irqfd. */
  assignIrqfd(spec: IrqfdSpec): void {
    checkObject(spec, 'spec');
    const gsi = u32(spec.gsi, 'gsi');
    const fd = fdOf(spec.eventfd, 'eventfd', true);
    const resample = fdOf(spec.resample, 'resample', false);
    native.kvmIrqfd(this.handle, fd, gsi, resample === null ? 0 : IRQFD_FLAG_RESAMPLE, resample);
  }

  /** KVM_IRQFD with DEASSIGN: detaches the eventfd from `gsi` (KVM answers 0 when none matched). */
  deassignIrqfd(spec: Pick<IrqfdSpec, 'eventfd' | 'gsi'>): void {
    checkObject(spec, 'spec');
    const gsi = u32(spec.gsi, 'gsi');
    const fd = fdOf(spec.eventfd, 'eventfd', true);
    native.kvmIrqfd(this.handle, fd, gsi, IRQFD_FLAG_DEASSIGN, null);
  }

  /** KVM_SET_USER_MEMORY_REGION: creates, moves or (size 0) deletes a slot. EEXIST when it overlaps another slot. */
  setUserMemoryRegion(spec: MemorySlotSpec): void {
    checkObject(spec, 'spec');
    const slot = u32(spec.slot, 'slot');
    const flags = u32(spec.flags ?? 0, 'flags');
    native.kvmSetUserMemoryRegion(this.handle, slot, flags, u64(spec.gpa, 'gpa'), u64(spec.size, 'size'), u64(spec.hva, 'hva'));
  }

  /**
   * Maps every region of `mem` (a GuestMemory) as a slot, from `firstSlot` up,
   * so KVM and vhost see the same pages. Returns the slot numbers used.
   */
  mapMemory(mem: MemoryLike, firstSlot = 0): number[] {
    if (typeof mem !== 'object' || mem === null || !Array.isArray(mem.regions)) throw invalidArg('mem', 'must have regions (a GuestMemory)');
    u32(firstSlot, 'firstSlot');
    return mem.regions.map((r, i) => {
      const slot = firstSlot + i;
      this.setUserMemoryRegion({ slot, gpa: r.gpa, size: r.size, hva: r.hva });
      return slot;
    });
  }

  /** Deletes a slot (KVM_SET_USER_MEMORY_REGION with size 0). */
  deleteMemorySlot(slot: number): void {
    this.setUserMemoryRegion({ slot, gpa: 0n, size: 0n, hva: 0n });
  }
}

/** /dev/kvm: created by kvm_intel or kvm_amd (with virtualization on in the firmware); distributions give it to the kvm group. */
const KVM_NODE: DeviceNode = { module: 'kvm_intel or kvm_amd', node: '/dev/kvm', group: 'kvm' };

/** /dev/kvm. Owns the fd: close() or `using`. */
export class Kvm extends FdOwner {
  static readonly defaultPath = '/dev/kvm';

  private constructor(handle: OwnedFd) {
    super(handle);
  }

  /** Opens /dev/kvm O_RDWR | O_CLOEXEC. */
  static open(path: string = Kvm.defaultPath): Kvm {
    checkNonEmptyString(path, 'path');
    try {
      return new Kvm(native.openPath(path));
    } catch (err) {
      throw withDeviceHint(err, KVM_NODE);
    }
  }

  /** KVM_GET_API_VERSION (12). */
  get apiVersion(): number {
    return native.kvmGetApiVersion(this.handle);
  }

  /** KVM_CREATE_VM: a new, empty VM (no memory, no vCPUs, no irqchip). */
  createVm(): KvmVm {
    return KvmVm.wrap(native.kvmCreateVm(this.handle));
  }
}
