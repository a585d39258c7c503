// What the typed builders share: checking queues and rings against guest
// memory, merging the memory table, running the bring-up steps with a trace,
// rolling back and naming the step that failed, and the running-device base
// class (stop with saved ring bases, close, dirty logging).
//
// Everything here that takes user input runs before the first syscall; the
// kernel is asked only once the whole configuration is known to be valid.
import * as fs from 'node:fs';
import { checkBool, checkInt, checkNonEmptyArray, checkObject, checkOneOf, describe as describeValue, toU64 } from '../core/check';
import { DirtyLog, startDirtyLog, stopDirtyLog, type DirtyLogQueue } from './dirty-log';
import { closedError, invalidArg, VhostError } from '../core/errors';
import { EventFd } from '../core/eventfd';
import { describeFeatures, features, type FeatureKind } from '../core/features';
import { FdOwner } from '../core/fd';
import type { MemoryLike, MemTableRegion, VhostDevice, VringEndian } from './kernel/vhost-device';
import { MAX_QUEUE_SIZE, splitRingLayout } from '../virtio/vring';

const U32_MAX = 0xffff_ffff;
const U64_LIMIT = 1n << 64n;
/** Split rings: a ring base (next available index) is a 16-bit counter. */
const SPLIT_BASE_MAX = 0xffff;
/** Default of the vhost module's max_mem_regions parameter. */
export const DEFAULT_MAX_MEM_REGIONS = 64;
const MAX_MEM_REGIONS_PATH = '/sys/module/vhost/parameters/max_mem_regions';

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

/** The steps of a bring-up, named after their ioctls (and 'open' for opening the device node). */
export type BuildStep =
  | 'open'
  | 'SET_OWNER'
  | 'GET_FEATURES'
  | 'SET_FEATURES'
  | 'SET_MEM_TABLE'
  | 'SET_VRING_NUM'
  | 'SET_VRING_BASE'
  | 'SET_VRING_ENDIAN'
  | 'SET_VRING_ADDR'
  | 'SET_VRING_KICK'
  | 'SET_VRING_CALL'
  | 'SET_VRING_ERR'
  | 'SET_VRING_BUSYLOOP_TIMEOUT'
  | 'TUNGETIFF'
  | 'TUNSETVNETHDRSZ'
  | 'TUNSETOFFLOAD'
  | 'NET_SET_BACKEND'
  | 'SET_GUEST_CID'
  | 'SET_RUNNING'
  | 'GET_VRING_BASE'
  | 'SET_LOG_BASE';

/**
 * A failed step of a builder or running device: the kernel's error (code,
 * errno, syscall, path kept) plus the step, the queue it concerned, and the
 * steps issued up to and including the failed one.
 */
export interface StepError extends VhostError {
  step: BuildStep;
  queue?: number;
  trace: string[];
}

/** Runs steps in order, recording each in `trace` ('SET_VRING_NUM[0]'), and tags a failure with its step. */
export class StepRunner {
  readonly trace: string[] = [];

  run<T>(step: BuildStep, queue: number | undefined, fn: () => T): T {
    this.trace.push(queue === undefined ? step : `${step}[${queue}]`);
    try {
      return fn();
    } catch (err) {
      throw tagStep(err, step, queue, this.trace);
    }
  }

  /** Tags `err` with `step` without recording a call (a failure decided here, not by the kernel). */
  fail(step: BuildStep, queue: number | undefined, err: unknown): never {
    throw tagStep(err, step, queue, this.trace);
  }

  /** Bound form of run() for helpers that take a step callback. */
  readonly step = <T>(step: BuildStep, queue: number | undefined, fn: () => T): T => this.run(step, queue, fn);
}

function tagStep(err: unknown, step: BuildStep, queue: number | undefined, trace: string[]): unknown {
  if (typeof err !== 'object' || err === null) return err;
  const e = err as Partial<StepError> & Error;
  e.step = step;
  if (queue !== undefined) e.queue = queue;
  e.trace = [...trace];
  if (typeof e.message === 'string') e.message += ` [step ${step}${queue === undefined ? '' : ` queue ${queue}`}]`;
  return err;
}

/** A failure that is not the kernel's but belongs to a step (e.g. features the device lacks). */
export function stepFailure(message: string, code: 'ERR_VHOST_UNSUPPORTED' | 'ERR_VHOST_INVALID_ARG'): VhostError {
  return new VhostError(`${code}: ${message}`, { code });
}

// ---- memory ------------------------------------------------------------------

/** A memory-table region after checking: guest-physical range and host address, as bigints. */
export interface CheckedRegion {
  gpa: bigint;
  size: bigint;
  hva: bigint;
}

/** The vhost module's max_mem_regions (default 64 when the parameter cannot be read, e.g. module not loaded). */
export function readMaxMemRegions(path: string = MAX_MEM_REGIONS_PATH): number {
  try {
    const n = Number(fs.readFileSync(path, 'utf8').trim());
    return Number.isSafeInteger(n) && n > 0 ? n : DEFAULT_MAX_MEM_REGIONS;
  } catch {
    return DEFAULT_MAX_MEM_REGIONS;
  }
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

/** Checks that `mem` looks like a GuestMemory / MemoryLike (its regions are read again at start()). */
export function checkMemoryArg(mem: unknown): MemoryLike {
  if (typeof mem !== 'object' || mem === null || !('regions' in mem)) {
    throw invalidArg('memory', 'must be a GuestMemory or an object { regions: [{ gpa, size, hva }] }');
  }
  return mem as MemoryLike;
}

/**
 * Merges regions that are contiguous in both guest-physical and host address
 * (the kernel's table then has fewer entries, and a ring may straddle the
 * seam). Input need not be sorted; output is sorted by gpa.
 */
export function mergeMemoryRegions(regions: readonly CheckedRegion[]): CheckedRegion[] {
  if (!Array.isArray(regions)) throw invalidArg('regions', `must be an array, got ${describeValue(regions)}`);
  const copies = regions.map((r: unknown, i): CheckedRegion => {
    const arg = `regions[${i}]`;
    const { gpa, size, hva } = checkObject<Record<string, unknown>>(r, arg, 'an object { gpa, size, hva }');
    return { gpa: toU64(gpa, `${arg}.gpa`, describeValue), size: toU64(size, `${arg}.size`, describeValue), hva: toU64(hva, `${arg}.hva`, describeValue) };
  });
  const sorted = copies.sort((a, b) => (a.gpa < b.gpa ? -1 : a.gpa > b.gpa ? 1 : 0));
  const out: CheckedRegion[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && last.gpa + last.size === r.gpa && last.hva + last.size === r.hva) last.size += r.size;
    else out.push({ ...r });
  }
  return out;
}

/**
 * Reads and checks a memory's regions (sizes, overlaps, address overflow),
 * merges contiguous ones, and checks the count against max_mem_regions.
 */
export function checkMemory(mem: MemoryLike, maxRegions: number = readMaxMemRegions()): CheckedRegion[] {
  const list = checkNonEmptyArray(mem.regions, 'memory.regions'); // a closed GuestMemory throws ERR_VHOST_CLOSED here
  const regions = list.map((r, i): CheckedRegion => {
    const arg = `memory.regions[${i}]`;
    const { gpa, size, hva } = checkObject(r, arg, 'an object { gpa, size, hva }');
    const u64 = (v: unknown, field: string): bigint => toU64(v, `${arg}.${field}`, describeValue);
    const region = { gpa: u64(gpa, 'gpa'), size: u64(size, 'size'), hva: u64(hva, 'hva') };
    if (region.size === 0n) throw invalidArg(`${arg}.size`, 'must be greater than 0', 'ERR_VHOST_OUT_OF_RANGE');
    if (region.gpa + region.size > U64_LIMIT) throw invalidArg(arg, 'ends beyond 2^64 in guest-physical space', 'ERR_VHOST_OUT_OF_RANGE');
    if (region.hva + region.size > U64_LIMIT) throw invalidArg(arg, 'ends beyond 2^64 in host address space', 'ERR_VHOST_OUT_OF_RANGE');
    return region;
  });
  const order = regions.map((r, i) => ({ r, i })).sort((a, b) => (a.r.gpa < b.r.gpa ? -1 : a.r.gpa > b.r.gpa ? 1 : 0));
  for (let k = 1; k < order.length; k++) {
    const prev = order[k - 1];
    const next = order[k];
    if (prev.r.gpa + prev.r.size > next.r.gpa) {
      throw invalidArg(`memory.regions[${next.i}]`, `overlaps memory.regions[${prev.i}] in guest-physical space`);
    }
  }
  const merged = mergeMemoryRegions(regions);
  if (merged.length > maxRegions) {
    throw invalidArg(
      'memory.regions',
      `has ${merged.length} regions after merging contiguous ones, more than the kernel's max_mem_regions (${maxRegions})`,
      'ERR_VHOST_OUT_OF_RANGE',
    );
  }
  return merged;
}

/** The memory table for VHOST_SET_MEM_TABLE. */
export function memTable(regions: readonly CheckedRegion[]): MemTableRegion[] {
  return regions.map((r) => ({ guestPhysAddr: r.gpa, size: r.size, userspaceAddr: r.hva }));
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

/** Writes the queue setup ioctls for one queue, in QEMU's order. */
export function setUpQueue(dev: VhostDevice, q: QueuePlan, step: StepRunner['step']): void {
  const i = q.index;
  step('SET_VRING_NUM', i, () => dev.setVringNum(i, q.size));
  step('SET_VRING_BASE', i, () => dev.setVringBase(i, q.base));
  if (q.endian !== undefined) step('SET_VRING_ENDIAN', i, () => dev.setVringEndian(i, q.endian!));
  step('SET_VRING_ADDR', i, () => dev.setVringAddr(i, { desc: q.hva.desc, avail: q.hva.avail, used: q.hva.used }));
  step('SET_VRING_KICK', i, () => dev.setVringKick(i, q.kick));
  step('SET_VRING_CALL', i, () => dev.setVringCall(i, q.call));
  if (q.err !== undefined) step('SET_VRING_ERR', i, () => dev.setVringErr(i, q.err!));
  if (q.busyloopTimeout !== undefined) step('SET_VRING_BUSYLOOP_TIMEOUT', i, () => dev.setVringBusyloopTimeout(i, q.busyloopTimeout!));
}

// ---- the builder base --------------------------------------------------------

/** What a device's feature negotiation decided; devices add their own fields (e.g. net's header size). */
export interface FeatureNegotiation {
  /** The word for VHOST_SET_FEATURES. */
  vhostFeatures: bigint;
  /** Acked bits vhost must implement but the device does not offer (0n when negotiation succeeds). */
  unsupported: bigint;
}

/** What planCommon checked: the merged memory regions and the placed queues. */
export interface CommonPlan {
  regions: CheckedRegion[];
  queues: QueuePlan[];
  eventIdxBits: bigint;
}

/** How the builder gets its device: open a path, or use one the caller holds. */
export interface DeviceSource<D> {
  dev?: D;
  path?: string;
  /** The caller already did SET_OWNER on `dev`: skip it. */
  owned: boolean;
}

/** Options of builder.device(). */
export interface DeviceOptions {
  /** This process already did SET_OWNER on the device (e.g. reusing a stopped device): skip SET_OWNER. */
  owned?: boolean;
}

/**
 * Configuration shared by VhostNetBuilder and VhostVsockBuilder. Each method
 * checks its arguments at once and returns the builder; start() checks the
 * whole (rings against memory, features against ring layout) before any syscall.
 */
export abstract class VhostDeviceBuilder<D extends VhostDevice> {
  protected _memory?: MemoryLike;
  protected _acked?: bigint;
  protected _vhostFeatures?: bigint;
  protected _maxMemRegions?: number;
  protected readonly _queues = new Map<number, ReturnType<typeof checkQueueSpec>['spec']>();
  protected _source: DeviceSource<D> = { owned: false };

  /** Queue indexes the device has. */
  protected abstract readonly queueIndexes: readonly number[];
  /** Device class name, for messages. */
  protected abstract readonly deviceName: string;
  /** Which feature names describe the device's bits in messages. */
  protected abstract readonly featureKind: FeatureKind;

  /** Guest memory (a GuestMemory, or { regions: [{ gpa, size, hva }] }); required. Its regions become the memory table. */
  memory(mem: MemoryLike): this {
    this._memory = checkMemoryArg(mem);
    return this;
  }

  /**
   * The feature bits the guest driver acknowledged (required unless
   * vhostFeatures() is used). Only bits the device offers and vhost
   * implements reach VHOST_SET_FEATURES.
   */
  features(acked: bigint): this {
    if (this._vhostFeatures !== undefined) throw invalidArg('features', 'cannot be combined with vhostFeatures()');
    this._acked = checkFeatureBits(acked, 'features');
    return this;
  }

  /**
   * Escape hatch: the exact word for VHOST_SET_FEATURES, skipping negotiation
   * and filtering (the kernel refuses bits it does not offer with EOPNOTSUPP).
   */
  vhostFeatures(bits: bigint): this {
    if (this._acked !== undefined) throw invalidArg('vhostFeatures', 'cannot be combined with features()');
    this._vhostFeatures = checkFeatureBits(bits, 'vhostFeatures');
    return this;
  }

  /**
   * Queue `index` as the guest set it up (guest-physical ring addresses,
   * eventfds, optional base / busy-poll / endian). Each index at most once.
   */
  queue(index: number, spec: QueueSpec): this {
    const checked = checkQueueSpec(index, spec, this.queueIndexes);
    if (this._queues.has(checked.index)) throw invalidArg('queue index', `${checked.index} is configured twice`);
    this._queues.set(checked.index, checked.spec);
    return this;
  }

  /**
   * The device node to open (default /dev/vhost-net or /dev/vhost-vsock), or
   * an open device to use. A device passed in is not closed if start()
   * fails; once started, the running device owns it.
   */
  device(device: D | string, options: DeviceOptions = {}): this {
    checkObject(options, 'options');
    const owned = checkBool(options.owned ?? false, 'options.owned', null);
    if (typeof device === 'string') {
      if (device.length === 0) throw invalidArg('device', 'must be a non-empty path or an open device');
      if (owned) throw invalidArg('options.owned', 'needs an open device, not a path');
      this._source = { path: device, owned: false };
    } else if (typeof device === 'object' && device !== null && typeof (device as VhostDevice).setOwner === 'function') {
      if ((device as VhostDevice).closed) throw closedError(this.deviceName, (device as VhostDevice).path);
      this._source = { dev: device, owned };
    } else {
      throw invalidArg('device', `must be a ${this.deviceName} or a device path, got ${describeValue(device)}`);
    }
    return this;
  }

  /** Overrides max_mem_regions (read from /sys/module/vhost/parameters by default). */
  maxMemRegions(n: number): this {
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1) throw invalidArg('maxMemRegions', `must be a positive integer, got ${describeValue(n)}`);
    this._maxMemRegions = n;
    return this;
  }

  /** Validates everything shared (memory, queues, features); throws before any syscall. */
  protected planCommon(requiredQueues: readonly number[]): CommonPlan {
    if (this._memory === undefined) throw invalidArg('memory', 'is required: call .memory(guestMemory)');
    if (this._acked === undefined && this._vhostFeatures === undefined) {
      throw invalidArg('features', 'is required: call .features(bitsTheGuestAcked) (or .vhostFeatures(exactBits))');
    }
    if (this._queues.size === 0) throw invalidArg('queue', `at least one queue is required (${this.queueIndexes.join(', ')})`);
    for (const i of requiredQueues) if (!this._queues.has(i)) throw invalidArg(`queue(${i})`, `is required: ${this.deviceName} starts every ring`);
    const regions = checkMemory(this._memory, this._maxMemRegions ?? readMaxMemRegions());
    const bits = this._vhostFeatures ?? this._acked!;
    const eventIdx = (bits & features.ring.RING_EVENT_IDX) !== 0n;
    return { regions, queues: planQueues(this._queues, regions, eventIdx), eventIdxBits: bits & features.ring.RING_EVENT_IDX };
  }

  /**
   * Opens (or takes) the device and programs it in QEMU's order: SET_OWNER,
   * GET_FEATURES, `negotiate` on the offer (acked bits the device lacks fail
   * SET_FEATURES with ERR_VHOST_UNSUPPORTED), SET_FEATURES, SET_MEM_TABLE, each
   * queue's setup; then `rest` for the device's own steps. On any failure
   * closes what it opened and rethrows with the step.
   */
  protected bringUp<N extends FeatureNegotiation, R>(
    open: (path?: string) => D,
    runner: StepRunner,
    plan: CommonPlan,
    negotiate: (offered: bigint) => N,
    rest: (dev: D, negotiated: N) => R,
  ): R {
    const src = this._source;
    let opened: D | undefined;
    try {
      const dev = src.dev ?? (opened = runner.run('open', undefined, () => open(src.path)));
      if (!src.owned) runner.run('SET_OWNER', undefined, () => dev.setOwner());
      const offered = runner.run('GET_FEATURES', undefined, () => dev.getFeatures());
      const neg = negotiate(offered);
      if (neg.unsupported !== 0n) {
        const names = describeFeatures(neg.unsupported, this.featureKind).join(', ');
        runner.fail('SET_FEATURES', undefined, stepFailure(`features the guest acked but the device does not offer: ${names} (offered 0x${offered.toString(16)})`, 'ERR_VHOST_UNSUPPORTED'));
      }
      runner.run('SET_FEATURES', undefined, () => dev.setFeatures(neg.vhostFeatures));
      runner.run('SET_MEM_TABLE', undefined, () => dev.setMemTable(memTable(plan.regions)));
      for (const q of plan.queues) setUpQueue(dev, q, runner.step);
      return rest(dev, neg);
    } catch (err) {
      opened?.close();
      throw err;
    }
  }
}

// ---- the running device base -------------------------------------------------

/** What a running device was started with. */
export interface RunningInit<D> {
  device: D;
  features: bigint;
  regions: CheckedRegion[];
  queues: QueuePlan[];
  trace: string[];
}

/**
 * A device the builder started. Owns the device fd (shared with `device`,
 * which stays available for low-level calls). stop() quiesces it and returns
 * the ring bases; close() stops (if running) and closes; `using` works.
 */
export abstract class RunningVhostDevice<D extends VhostDevice> extends FdOwner {
  /** The low-level device, for ioctls the builder does not cover. Closed with this object. */
  readonly device: D;
  /** The word given to VHOST_SET_FEATURES at start (without VHOST_F_LOG_ALL). */
  readonly features: bigint;
  /** The steps start() issued, in order ('SET_VRING_NUM[0]', ...). For diagnostics and tests. */
  readonly trace: readonly string[];
  readonly #queues: QueuePlan[];
  readonly #regions: CheckedRegion[];
  #stopped: DeviceState | null = null;
  #log: DirtyLog | null = null;
  #logging = false;

  protected constructor(init: RunningInit<D>) {
    super(init.device.nativeHandle);
    this.device = init.device;
    this.features = init.features;
    this.trace = Object.freeze([...init.trace]);
    this.#queues = init.queues;
    this.#regions = init.regions;
  }

  /** Indexes of the queues this device runs. */
  get queueIndexes(): number[] {
    return this.#queues.map((q) => q.index);
  }

  /** True until stop() (or close()). */
  get running(): boolean {
    return !this.closed && this.#stopped === null;
  }

  /** Whether dirty logging is on. */
  get dirtyLogging(): boolean {
    return this.#logging;
  }

  /** Stops the device's processing (net: detach the backend; vsock: SET_RUNNING 0). */
  protected abstract quiesce(step: StepRunner['step']): void;

  /** Throws ERR_VHOST_CLOSED after close(). */
  protected checkOpen(): void {
    void this.handle;
  }

  /** Throws when stopped: `what` cannot be done then. */
  protected checkRunning(what: string): void {
    this.checkOpen();
    if (this.#stopped !== null) throw invalidArg(what, `cannot be used on a stopped ${this.constructor.name}: build a new device with the saved bases`);
  }

  /**
   * Stops the rings and returns each queue's next available index
   * (GET_VRING_BASE after quiescing). Building again with these bases resumes
   * exactly where the rings stopped. Calling stop() again returns the same state.
   * A failure carries `.step`.
   */
  stop(): DeviceState {
    this.checkOpen();
    if (this.#stopped) return { queues: this.#stopped.queues.map((q) => ({ ...q })) };
    const runner = new StepRunner();
    this.quiesce(runner.step);
    const queues = this.#queues.map((q) => ({ index: q.index, base: runner.run('GET_VRING_BASE', q.index, () => this.device.getVringBase(q.index)) }));
    this.#stopped = { queues };
    return { queues: queues.map((q) => ({ ...q })) };
  }

  /**
   * Starts dirty logging: allocates a log with one bit per 4 KiB page up to
   * the highest guest-physical address, then SET_LOG_BASE, SET_FEATURES with
   * VHOST_F_LOG_ALL, and SET_VRING_ADDR with VRING_ADDR_F_LOG for each queue
   * (the used ring's guest-physical address as the log address). No-op when on.
   */
  enableDirtyLog(): void {
    this.checkOpen();
    if (this.#logging) return;
    this.#log ??= DirtyLog.create(this.#regions);
    const runner = new StepRunner();
    startDirtyLog(this.device, this.#log, this.features, this.#logQueues(), runner.step);
    this.#logging = true;
  }

  /**
   * Page numbers (guest-physical address / 4096, as numbers, ascending) that
   * vhost wrote since the last call, clearing them. Each 64-bit word of the
   * log is read and cleared atomically, so no bit the kernel sets meanwhile is
   * lost. Works after stop() too (for a final sync); [] when logging never started.
   */
  readDirtyLog(): number[] {
    this.checkOpen();
    return this.#log ? this.#log.readAndClear() : [];
  }

  /** Stops dirty logging: SET_FEATURES without LOG_ALL, SET_VRING_ADDR without the log flag, SET_LOG_BASE 0; frees the log. */
  disableDirtyLog(): void {
    this.checkOpen();
    if (!this.#logging) return;
    const runner = new StepRunner();
    stopDirtyLog(this.device, this.features, this.#logQueues(), runner.step);
    this.#logging = false;
    this.#log?.close();
    this.#log = null;
  }

  #logQueues(): DirtyLogQueue[] {
    return this.#queues.map((q) => ({ index: q.index, desc: q.hva.desc, avail: q.hva.avail, used: q.hva.used, usedGpa: q.gpa.used }));
  }

  /**
   * Stops the device if it is running and turns dirty logging off (errors
   * then are ignored: closing the fd tears everything down regardless), then
   * closes the device and frees the log. Idempotent.
   */
  override close(): void {
    if (this.closed) return;
    try {
      if (this.#stopped === null) this.stop();
    } catch {
      // the fd is closing anyway
    }
    try {
      // so that nothing (e.g. a dup of the fd held elsewhere) writes to the log once unmapped
      this.disableDirtyLog();
    } catch {
      // as above
    } finally {
      this.device.close();
      super.close();
      this.#log?.close();
      this.#log = null;
      this.#logging = false;
    }
  }
}
