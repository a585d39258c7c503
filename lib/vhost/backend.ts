// The device contract: the vhost message set, transport-neutral, as rust-vmm's
// `VhostBackend` trait has it. Builders and running devices drive only this
// interface. The kernel's character devices implement it with ioctls
// (kernel/vhost-device.ts); a vhost-user front-end implements it with messages
// over a unix socket (user/). A new transport is a new class implementing
// VhostBackend; a new device is a new file declaring its queues, features,
// extra steps and hints (see net.ts, vsock.ts).
//
// Methods are synchronous, as QEMU's and rust-vmm's front-ends are: a kernel
// ioctl returns at once, and a vhost-user transport waits for the back-end's
// reply within a bound (ETIMEDOUT past it) rather than leave a half-programmed
// device behind a promise.
import type { FdLike } from '../core/fd';
import type { MemoryRegion } from '../core/memory';

export type { FdLike } from '../core/fd';
export type { MemoryLike, MemoryRegion } from '../core/memory';

/** Ring addresses for SET_VRING_ADDR: host virtual addresses in this process (or IOVAs with an IOTLB). */
export interface VringAddr {
  desc: bigint | number;
  avail: bigint | number;
  used: bigint | number;
  /** Guest-physical address of the used ring for dirty logging (with VRING_ADDR_F_LOG). */
  log?: bigint | number;
  /** VRING_ADDR_F_LOG or 0. */
  flags?: number;
}

/** Byte order of a legacy (pre VERSION_1) ring. */
export type VringEndian = 'little' | 'big';

/** flags bit of setVringAddr: log writes to the used ring at `log` (1 << VHOST_VRING_F_LOG). */
export const VRING_ADDR_F_LOG = 1;

/** The dirty log's memory, for SET_LOG_BASE: its address here, and its file for transports that share it by fd. */
export interface LogArea {
  readonly hva: bigint;
  readonly size: bigint;
  /** A memfd holding the log (vhost-user LOG_SHMFD), or absent. */
  readonly fd?: number;
  readonly offset?: bigint;
}

/**
 * Key of a backend's argument-check-free form. Public methods check their
 * arguments for direct callers; a builder that has validated its whole plan
 * drives `backend[kUnchecked]` instead when the backend offers one, so nothing
 * is checked twice.
 */
export const kUnchecked: unique symbol = Symbol('linux-vhost.unchecked');

/**
 * The vhost message set a builder drives, one method per message (named after
 * it). Implementations check their own arguments for direct callers; the
 * builders validate a whole plan first and then call these (through
 * `[kUnchecked]` where offered).
 */
export interface VhostBackend {
  /** The device node or socket the backend speaks to, for messages. */
  readonly path: string;
  readonly closed: boolean;
  /**
   * How the back-end reaches guest memory: 'address' (the kernel reads this
   * process's memory: contiguous regions may be merged) or 'fd' (each region's
   * file is sent: only regions of one file at contiguous offsets may merge).
   */
  readonly memoryAccess: 'address' | 'fd';
  /** SET_OWNER: this process (this connection) owns the device from now on. */
  setOwner(): void;
  /** GET_FEATURES: the feature bits the device offers. */
  getFeatures(): bigint;
  /** SET_FEATURES: the bits the device is to use. */
  setFeatures(bits: bigint): void;
  /** SET_MEM_TABLE: how guest-physical addresses map to memory the device can reach. */
  setMemTable(regions: readonly MemoryRegion[]): void;
  /** Where the dirty log lives; a transport that shares memory by fd needs `log.fd`. */
  setLogBase(log: LogArea | bigint | number): void;
  /** SET_VRING_NUM: ring `index` has `num` entries. */
  setVringNum(index: number, num: number): void;
  /** SET_VRING_BASE: the ring's next available index to process. */
  setVringBase(index: number, base: number): void;
  /** The ring's next available index; stops the ring's processing. */
  getVringBase(index: number): number;
  /** SET_VRING_ADDR: where the ring's three parts are. */
  setVringAddr(index: number, addr: VringAddr): void;
  /** SET_VRING_KICK: the eventfd the driver signals when it adds buffers; null unbinds. */
  setVringKick(index: number, fd: FdLike): void;
  /** SET_VRING_CALL: the eventfd the device signals when it used buffers; null unbinds. */
  setVringCall(index: number, fd: FdLike): void;
  /** SET_VRING_ERR: the eventfd the device signals on ring errors; null unbinds. */
  setVringErr(index: number, fd: FdLike): void;
  /** SET_VRING_ENDIAN for a legacy guest's ring; optional (absent: the transport cannot). */
  setVringEndian?(index: number, endian: VringEndian): void;
  /** The kernel's busy-poll time before a ring's worker sleeps; optional. */
  setVringBusyloopTimeout?(index: number, usec: number): void;
  /** VHOST_USER_SET_VRING_ENABLE; the kernel has no such call (absent there). */
  setVringEnable?(index: number, enable: boolean): void;
  /** Lets go of the device (closes the fd or the connection). Idempotent. */
  close(): void;
  /** The same calls without argument checks, for a caller that validated them all; optional. */
  readonly [kUnchecked]?: VhostBackend;
}

/** What a builder drives once its plan is valid: the unchecked form when `backend` offers one. */
export function uncheckedBackend<B extends VhostBackend>(backend: B): B {
  return (backend[kUnchecked] as B | undefined) ?? backend;
}
