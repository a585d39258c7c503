// Planning a bring-up before any syscall: the queues as the guest set them up
// (QueueSpec), checked on their own and then placed in guest memory; the
// memory table checked (sizes, overlaps, overflow), merged where the transport
// allows and counted against its region limit; feature words checked.
import { checkInt, checkNonEmptyArray, checkObject, checkOneOf, describe as describeValue, toU64 } from '../core/check';
import { closedError, invalidArg } from '../core/errors';
import { EventFd } from '../core/eventfd';
import { features } from '../core/features';
import type { MemoryLike, MemoryRegion } from '../core/memory';
import { MAX_QUEUE_SIZE, splitRingLayout } from '../virtio/vring';
import type { VhostBackend, VringEndian } from './backend';

const U32_MAX = 0xffff_ffff;
const U64_LIMIT = 1n << 64n;
/** Split rings: a ring base (next available index) is a 16-bit counter. */
const SPLIT_BASE_MAX = 0xffff;

/** An eventfd for a queue: an EventFd, or the number of an eventfd this process holds (e.g. a KVM ioeventfd's). */
export type EventFdRef = EventFd | number;

/**
 * One virtqueue as the guest driver set it up. Ring addresses are
 * guest-physical: the builder checks each part lies inside one memory region
 * and translates it to this process's address for VHOST_SET_VRING_ADDR.
 */
export interface QueueSpec {
  /** Number of entries: a power of two, 1..32768. */
  size: number;
  /** Guest-physical address of the descriptor table (16-aligned). */
  desc: bigint | number;
  /** Guest-physical address of the available ring (2-aligned). */
  avail: bigint | number;
  /** Guest-physical address of the used ring (4-aligned). */
  used: bigint | number;
  /** Eventfd the driver signals when it adds buffers (an ioeventfd under KVM). */
  kick: EventFdRef;
  /** Eventfd vhost signals when it used buffers (an irqfd under KVM). */
  call: EventFdRef;
  /** Eventfd vhost signals on ring errors; optional. */
  err?: EventFdRef;
  /** Next available index to process, 0..65535: a base saved by stop() restores the ring. Default 0. */
  base?: number;
  /** VHOST_SET_VRING_BUSYLOOP_TIMEOUT in microseconds (busy-poll before sleeping); default: left alone (0). */
  busyloopTimeout?: number;
  /**
   * Byte order of a legacy (pre VERSION_1) guest's ring, set with
   * VHOST_SET_VRING_ENDIAN; only when given. Kernels without
   * CONFIG_VHOST_CROSS_ENDIAN_LEGACY (Debian's) fail with ENOTTY.
   */
  endian?: VringEndian;
}

/** Ring state saved by stop(): pass each `base` back in QueueSpec.base to restore. */
export interface DeviceState {
  queues: { index: number; base: number }[];
}

// ---- memory ------------------------------------------------------------------

/** A memory-table region after checking: MemoryRegion with every number a bigint (fd/offset kept only for 'fd' transports). */
export interface CheckedRegion extends MemoryRegion {
  size: bigint;
}

/** How the plan treats regions: see VhostBackend.memoryAccess. */
export interface MemoryLimits {
  /** Most regions the transport takes after merging (read only for tables of two or more), and what to call that limit in a message. */
  readonly maxRegions: number;
  limitName: string;
  access: VhostBackend['memoryAccess'];
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

/** Checks that `mem` looks like a GuestMemory / MemoryLike (its regions are read again at start()). */
export function checkMemoryArg(mem: unknown): MemoryLike {
  if (typeof mem !== 'object' || mem === null || !('regions' in mem)) {
    throw invalidArg('memory', 'must be a GuestMemory or an object { regions: [{ gpa, size, hva }] }');
  }
  return mem as MemoryLike;
}

/** Whether `b` continues `a` in guest-physical and host address, and in its file when it has one. */
function continues(a: CheckedRegion, b: CheckedRegion): boolean {
  if (a.gpa + a.size !== b.gpa || a.hva + a.size !== b.hva) return false;
  const fa = a.fd ?? -1;
  if (fa !== (b.fd ?? -1)) return false;
  return fa < 0 || (a.offset ?? 0n) + a.size === (b.offset ?? 0n);
}

/**
 * Merges regions that are contiguous in both guest-physical and host address
 * (and, when they carry a file, in the same file at contiguous offsets): the
 * table then has fewer entries, and a ring may straddle the seam. Input need
 * not be sorted; output is sorted by gpa.
 */
export function mergeMemoryRegions(regions: readonly CheckedRegion[]): CheckedRegion[] {
  if (!Array.isArray(regions)) throw invalidArg('regions', `must be an array, got ${describeValue(regions)}`);
  return mergeChecked(
    regions.map((r: unknown, i): CheckedRegion => {
      const arg = `regions[${i}]`;
      const { gpa, size, hva, fd, offset } = checkObject<Partial<MemoryRegion>>(r, arg, 'an object { gpa, size, hva }');
      const u64 = (v: unknown, field: string): bigint => toU64(v, `${arg}.${field}`, describeValue);
      const region: CheckedRegion = { gpa: u64(gpa, 'gpa'), size: u64(size, 'size'), hva: u64(hva, 'hva') };
      if (fd === undefined) return region;
      return { ...region, fd: checkInt(fd, `${arg}.fd`, -1, 0x7fff_ffff, describeValue), offset: offset === undefined ? 0n : u64(offset, 'offset') };
    }),
  );
}

/** mergeMemoryRegions() over regions checkMemory() already checked (copies them; sorts the copies). */
function mergeChecked(regions: readonly CheckedRegion[]): CheckedRegion[] {
  const sorted = [...regions].sort((a, b) => (a.gpa < b.gpa ? -1 : a.gpa > b.gpa ? 1 : 0));
  const out: CheckedRegion[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && continues(last, r)) last.size += r.size;
    else out.push({ ...r });
  }
  return out;
}

/**
 * Reads and checks a memory's regions (sizes, overlaps, address overflow; for
 * an 'fd' transport, that each has a file to share), merges contiguous ones,
 * and checks the count against the transport's limit.
 */
export function checkMemory(mem: MemoryLike, limits: MemoryLimits): CheckedRegion[] {
  const list = checkNonEmptyArray(mem.regions, 'memory.regions'); // a closed GuestMemory throws ERR_VHOST_CLOSED here
  const byFd = limits.access === 'fd';
  const regions = list.map((r, i): CheckedRegion => {
    const arg = `memory.regions[${i}]`;
    const { gpa, size, hva, fd, offset } = checkObject<Partial<MemoryRegion>>(r, arg, 'an object { gpa, size, hva }');
    const u64 = (v: unknown, field: string): bigint => toU64(v, `${arg}.${field}`, describeValue);
    const region: CheckedRegion = { gpa: u64(gpa, 'gpa'), size: u64(size, 'size'), hva: u64(hva, 'hva') };
    if (region.size === 0n) throw invalidArg(`${arg}.size`, 'must be greater than 0', 'ERR_VHOST_OUT_OF_RANGE');
    if (region.gpa + region.size > U64_LIMIT) throw invalidArg(arg, 'ends beyond 2^64 in guest-physical space', 'ERR_VHOST_OUT_OF_RANGE');
    if (region.hva + region.size > U64_LIMIT) throw invalidArg(arg, 'ends beyond 2^64 in host address space', 'ERR_VHOST_OUT_OF_RANGE');
    if (!byFd) return region;
    if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0) {
      throw invalidArg(`${arg}.fd`, 'is required: this transport shares guest memory by file, so each region needs one (create the GuestMemory with memfd backing)');
    }
    return { ...region, fd, offset: offset === undefined ? 0n : u64(offset, 'offset') };
  });
  const order = regions.map((r, i) => ({ r, i })).sort((a, b) => (a.r.gpa < b.r.gpa ? -1 : a.r.gpa > b.r.gpa ? 1 : 0));
  for (let k = 1; k < order.length; k++) {
    const prev = order[k - 1];
    const next = order[k];
    if (prev.r.gpa + prev.r.size > next.r.gpa) {
      throw invalidArg(`memory.regions[${next.i}]`, `overlaps memory.regions[${prev.i}] in guest-physical space`);
    }
  }
  const merged = mergeChecked(regions);
  // Every transport takes one region: only a longer table needs the limit (the kernel's is read from sysfs).
  if (merged.length > 1 && merged.length > limits.maxRegions) {
    throw invalidArg(
      'memory.regions',
      `has ${merged.length} regions after merging contiguous ones, more than ${limits.limitName} (${limits.maxRegions})`,
      'ERR_VHOST_OUT_OF_RANGE',
    );
  }
  return merged;
}

// ---- queues ------------------------------------------------------------------

/** A queue after checking: guest-physical and host addresses of its three parts. */
export interface QueuePlan {
  index: number;
  size: number;
  gpa: { desc: bigint; avail: bigint; used: bigint };
  hva: { desc: bigint; avail: bigint; used: bigint };
  usedSize: bigint;
  kick: EventFdRef;
  call: EventFdRef;
  err?: EventFdRef;
  base: number;
  busyloopTimeout?: number;
  endian?: VringEndian;
}

const QUEUE_KEYS = new Set(['size', 'desc', 'avail', 'used', 'kick', 'call', 'err', 'base', 'busyloopTimeout', 'endian']);

function checkEventFd(value: unknown, arg: string, required: boolean): EventFdRef | undefined {
  if (value === undefined || value === null) {
    if (required) throw invalidArg(arg, 'is required: an EventFd or an eventfd number');
    return undefined;
  }
  if (value instanceof EventFd) {
    if (value.closed) throw closedError(`${arg} (EventFd)`);
    return value;
  }
  if (typeof value === 'number' && Number.isInteger(value)) {
    if (value < 0 || value > 0x7fff_ffff) throw invalidArg(arg, `must be an fd number >= 0, got ${value}`, 'ERR_VHOST_OUT_OF_RANGE');
    return value;
  }
  throw invalidArg(arg, `must be an EventFd or an eventfd number, got ${describeValue(value)}`);
}

function checkQueueSize(value: unknown, arg: string): number {
  const size = checkInt(value, arg, 1, MAX_QUEUE_SIZE, describeValue);
  if ((size & (size - 1)) !== 0) throw invalidArg(arg, `must be a power of two, got ${size}`);
  return size;
}

/** Checks one queue's options on their own (no memory needed). `indexes` are the device's valid queue indexes. */
export function checkQueueSpec(index: unknown, spec: unknown, indexes: readonly number[]): { index: number; spec: Required<Pick<QueueSpec, 'size' | 'kick' | 'call' | 'base'>> & QueueSpec & { desc: bigint; avail: bigint; used: bigint } } {
  if (typeof index !== 'number' || !indexes.includes(index)) {
    throw invalidArg('queue index', `must be ${indexes.join(' or ')} (one device per queue pair), got ${describeValue(index)}`, 'ERR_VHOST_OUT_OF_RANGE');
  }
  const q = `queue(${index})`;
  const s = checkObject(spec, q, 'an object { size, desc, avail, used, kick, call }');
  for (const key of Object.keys(s)) if (!QUEUE_KEYS.has(key)) throw invalidArg(`${q}.${key}`, 'is not a queue option');
  const size = checkQueueSize(s.size, `${q}.size`);
  const desc = toU64(s.desc, `${q}.desc`, describeValue);
  const avail = toU64(s.avail, `${q}.avail`, describeValue);
  const used = toU64(s.used, `${q}.used`, describeValue);
  if (desc % 16n !== 0n) throw invalidArg(`${q}.desc`, `must be 16-aligned, got ${hex(desc)}`);
  if (avail % 2n !== 0n) throw invalidArg(`${q}.avail`, `must be 2-aligned, got ${hex(avail)}`);
  if (used % 4n !== 0n) throw invalidArg(`${q}.used`, `must be 4-aligned, got ${hex(used)}`);
  const kick = checkEventFd(s.kick, `${q}.kick`, true)!;
  const call = checkEventFd(s.call, `${q}.call`, true)!;
  const err = checkEventFd(s.err, `${q}.err`, false);
  let base = 0;
  if (s.base !== undefined) {
    if (typeof s.base !== 'number' || !Number.isInteger(s.base)) throw invalidArg(`${q}.base`, `must be an integer, got ${describeValue(s.base)}`);
    if (s.base < 0 || s.base > SPLIT_BASE_MAX) throw invalidArg(`${q}.base`, `must be in 0..${SPLIT_BASE_MAX} (split ring index), got ${s.base}`, 'ERR_VHOST_OUT_OF_RANGE');
    base = s.base;
  }
  let busyloopTimeout: number | undefined;
  if (s.busyloopTimeout !== undefined) {
    const t = s.busyloopTimeout;
    if (typeof t !== 'number' || !Number.isInteger(t)) throw invalidArg(`${q}.busyloopTimeout`, `must be an integer (microseconds), got ${describeValue(t)}`);
    if (t < 0 || t > U32_MAX) throw invalidArg(`${q}.busyloopTimeout`, `must be in 0..${U32_MAX}, got ${t}`, 'ERR_VHOST_OUT_OF_RANGE');
    busyloopTimeout = t;
  }
  const endian = s.endian === undefined ? undefined : checkOneOf<VringEndian>(s.endian, `${q}.endian`, ['little', 'big'], describeValue);
  return { index, spec: { size, desc, avail, used, kick, call, err, base, busyloopTimeout, endian } };
}

/** Host address of [gpa, gpa + len) if it lies wholly inside one region; otherwise a validation error naming `arg`. */
function placeInMemory(regions: readonly CheckedRegion[], gpa: bigint, len: bigint, arg: string, what: string): bigint {
  const region = regions.find((r) => gpa >= r.gpa && gpa < r.gpa + r.size);
  if (!region) throw invalidArg(arg, `${hex(gpa)} (${what}) is not inside any memory region`, 'ERR_VHOST_OUT_OF_RANGE');
  const end = region.gpa + region.size;
  if (gpa + len > end) {
    throw invalidArg(
      arg,
      `[${hex(gpa)}, ${hex(gpa + len)}) (${what}, ${len} bytes) crosses the end of its memory region at ${hex(end)}`,
      'ERR_VHOST_OUT_OF_RANGE',
    );
  }
  return region.hva + (gpa - region.gpa);
}

/**
 * Places each queue's rings in memory: each part wholly inside one (merged)
 * region, sized per split-ring layout (with the event-index words when
 * `eventIdx`). Returns the queues in index order.
 */
export function planQueues(
  specs: ReadonlyMap<number, ReturnType<typeof checkQueueSpec>['spec']>,
  regions: readonly CheckedRegion[],
  eventIdx: boolean,
): QueuePlan[] {
  return [...specs.entries()]
    .sort(([a], [b]) => a - b)
    .map(([index, s]) => {
      const q = `queue(${index})`;
      const sizes = splitRingLayout(s.size, { eventIdx });
      const hva = {
        desc: placeInMemory(regions, s.desc, sizes.descSize, `${q}.desc`, `descriptor table of ${s.size} entries`),
        avail: placeInMemory(regions, s.avail, sizes.availSize, `${q}.avail`, `available ring of ${s.size} entries`),
        used: placeInMemory(regions, s.used, sizes.usedSize, `${q}.used`, `used ring of ${s.size} entries`),
      };
      return {
        index,
        size: s.size,
        gpa: { desc: s.desc, avail: s.avail, used: s.used },
        hva,
        usedSize: sizes.usedSize,
        kick: s.kick,
        call: s.call,
        err: s.err,
        base: s.base,
        busyloopTimeout: s.busyloopTimeout,
        endian: s.endian,
      };
    });
}

/** Checks a feature word argument. */
export function checkFeatureBits(bits: unknown, arg: string): bigint {
  if (typeof bits !== 'bigint') throw invalidArg(arg, `must be a bigint, got ${describeValue(bits)}`);
  if (bits < 0n || bits >= U64_LIMIT) throw invalidArg(arg, `must fit in 64 bits, got ${describeValue(bits)}`, 'ERR_VHOST_OUT_OF_RANGE');
  return bits;
}

/**
 * Ring and transport bits vhost itself implements, so passed through when both
 * the device offers them and the guest acked them. An acked one the device does
 * not offer is an error (the guest would use a ring format vhost does not speak).
 * ACCESS_PLATFORM is left out, as QEMU does without a vIOMMU: the builder
 * programs translation with the memory table, not the IOTLB.
 */
export const VHOST_RING_BITS =
  features.ring.NOTIFY_ON_EMPTY |
  features.ring.RING_INDIRECT_DESC |
  features.ring.RING_EVENT_IDX |
  features.ring.VERSION_1 |
  features.ring.RING_PACKED |
  features.ring.IN_ORDER |
  features.ring.ORDER_PLATFORM |
  features.ring.RING_RESET;
