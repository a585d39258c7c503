// The driver side of a split virtqueue (guest role), for a process that plays
// the guest itself: buffers in its own GuestMemory, rings read by vhost.
// The ring work (descriptor free list, avail publish with a release store,
// used collection with acquire, EVENT_IDX suppression, kicks) is native
// (native/virtqueue.cc); this file validates, places, and gives it a typed face.
import { closedError, invalidArg } from '../core/errors';
import { checkBool, checkInt, plain } from '../core/check';
import type { EventFd } from '../core/eventfd';
import type { GuestMemory } from '../core/memory';
import { native, SEG_END, SEG_WRITABLE, type NativeVirtqueue } from '../core/native';
import { splitRingLayout, validateQueueSize } from './vring';

/** Chains in encoded segments: one SEG_END each. */
function countChains(segs: Uint32Array): number {
  let n = 0;
  for (let i = 2; i < segs.length; i += 3) if (segs[i] & SEG_END) n++;
  return n;
}

/** Descriptors per indirect table (native kIndirectMax). */
export const INDIRECT_MAX = 16;

/** One buffer of a chain: guest-physical address, length, and who writes it. */
export interface VirtqueueSegment {
  gpa: bigint | number;
  len: number;
  /** Device-writable (the device fills it, e.g. RX); default false (device-readable). */
  writable?: boolean;
}

/** A used buffer returned by the device: the chain's head and the bytes it wrote. */
export interface UsedBuffer {
  head: number;
  len: number;
}

/** Options of Virtqueue.create(): the ring places (guest-physical, inside `memory`) and how to notify. */
export interface VirtqueueOptions {
  memory: GuestMemory;
  /** Queue size: a power of two, 1..32768. */
  size: number;
  /** Guest-physical addresses of the ring parts (e.g. from layoutSplitRing / virtqueueFootprint). */
  desc: bigint;
  avail: bigint;
  used: bigint;
  /** Eventfd to kick (the one given to VHOST_SET_VRING_KICK); null never kicks. */
  kick: EventFd | null;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. Default true. */
  eventIdx?: boolean;
  /** VIRTIO_RING_F_INDIRECT_DESC negotiated: chains of 2..16 use one ring slot. Default false. */
  indirect?: boolean;
}

/**
 * Ring addresses for a queue at `base` (16-aligned), as native code expects
 * them: the descriptor table, then (with indirect) one table of INDIRECT_MAX
 * descriptors per ring slot, the avail ring (with used_event), the used ring
 * (4-aligned, with avail_event). `end` is the first byte after it.
 */
export function placeVirtqueue(size: number, base: bigint, options: { indirect?: boolean } = {}): { desc: bigint; avail: bigint; used: bigint; end: bigint } {
  const ring = splitRingLayout(size, { eventIdx: true });
  if (typeof base !== 'bigint' || base < 0n || base % ring.descAlign !== 0n) throw invalidArg('base', `must be a 16-aligned non-negative bigint, got ${plain(base)}`);
  const avail = base + ring.descSize * (options.indirect ? 1n + BigInt(INDIRECT_MAX) : 1n);
  const used = (avail + ring.availSize + ring.usedAlign - 1n) & ~(ring.usedAlign - 1n);
  return { desc: base, avail, used, end: used + ring.usedSize };
}

/** Bytes placeVirtqueue needs from its base. */
export function virtqueueFootprint(size: number, options: { indirect?: boolean } = {}): bigint {
  return placeVirtqueue(size, 0n, options).end;
}

/**
 * Encodes chains as the (offset, len, flags) triples NativeVirtqueue.post
 * takes. Pure; offsets are relative to `regionGpa`. Throws ERR_VHOST_* for
 * empty chains, empty or out-of-region segments, and readable-after-writable.
 */
export function encodeChains(given: readonly (readonly VirtqueueSegment[])[], regionGpa: bigint, regionSize: bigint): Uint32Array {
  // Copies first: each chain and segment of the caller's arrays is read once.
  const chains = Array.from(given, (chain, ci) => {
    if (!Array.isArray(chain) || chain.length === 0) throw invalidArg(`chains[${ci}]`, 'must be a non-empty array of segments');
    return Array.from(chain as readonly VirtqueueSegment[]);
  });
  let n = 0;
  for (const c of chains) n += c.length;
  const out = new Uint32Array(3 * n);
  let k = 0;
  chains.forEach((chain, ci) => {
    if (!Array.isArray(chain) || chain.length === 0) throw invalidArg(`chains[${ci}]`, 'must be a non-empty array of segments');
    let sawWritable = false;
    chain.forEach((seg, si) => {
      const arg = `chains[${ci}][${si}]`;
      if (seg === null || typeof seg !== 'object') throw invalidArg(arg, `must be a segment { gpa, len, writable? }, got ${plain(seg)}`);
      const { gpa: rawGpa, len } = seg; // each field read once
      const gpa = typeof rawGpa === 'bigint' ? rawGpa : Number.isSafeInteger(rawGpa) ? BigInt(rawGpa) : -1n;
      if (gpa < 0n) throw invalidArg(`${arg}.gpa`, 'must be a non-negative bigint or safe integer');
      if (typeof len !== 'number' || !Number.isInteger(len) || len < 1 || len > 0xffff_ffff) throw invalidArg(`${arg}.len`, `must be in 1..2^32-1, got ${plain(len)}`, 'ERR_VHOST_OUT_OF_RANGE');
      if (gpa < regionGpa || gpa + BigInt(len) > regionGpa + regionSize) {
        throw invalidArg(arg, `[0x${gpa.toString(16)}, +${len}) is outside the queue's memory region`, 'ERR_VHOST_OUT_OF_RANGE');
      }
      const writable = seg.writable ?? false;
      // virtio 2.7.4.2: device-readable descriptors come before device-writable ones.
      if (sawWritable && !writable) throw invalidArg(arg, 'is device-readable after a device-writable segment (readable ones must come first)');
      sawWritable ||= writable;
      out[k++] = Number(gpa - regionGpa);
      out[k++] = len;
      out[k++] = (writable ? SEG_WRITABLE : 0) | (si === chain.length - 1 ? SEG_END : 0);
    });
  });
  return out;
}

/**
 * A split virtqueue driven from this process (the guest's role). Posting
 * publishes with one release store and kicks only when the device asks;
 * collecting reads used->idx with acquire semantics. Use enableCallbacks()
 * before waiting on the call eventfd. close() (or closing the memory) makes
 * every call throw ERR_VHOST_CLOSED.
 */
export class Virtqueue implements Disposable {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  /** Guest-physical address of byte 0 of the queue's memory region. */
  readonly regionGpa: bigint;
  readonly regionSize: bigint;
  readonly #vq: NativeVirtqueue;
  #closed = false;
  #heads: Uint32Array;
  #used: Uint32Array;
  /**
   * Buffers lend()/lendBatch() made and revoke() has not taken back: the
   * memory's unmap hook detaches them. That hook is what keeps a lent buffer
   * from outliving the pages: the memory unmaps only from close() or its GC
   * safety net, and both run the hooks first (the mapping objects stay
   * reachable from the memory's GC record until then).
   */
  readonly #lent = new Set<ArrayBuffer>();
  // Scratch arrays handed to native lendBatch/revokeAll: this object's own, only ever holding plain
  // data elements (null when unused), so native stores and loads never reach an inherited accessor.
  readonly #lendOut: (ArrayBuffer | null)[] = [];
  readonly #revokeOut: (ArrayBuffer | null)[] = [];
  /** Unregisters that hook (once closed with nothing lent, the memory need not remember this queue). */
  readonly #forgetUnmap: () => void;

  private constructor(
    vq: NativeVirtqueue,
    memory: GuestMemory,
    o: { size: number; eventIdx: boolean; indirect: boolean; regionGpa: bigint; regionSize: bigint },
  ) {
    this.#vq = vq;
    // One hook per queue (not per buffer): whoever closes the memory, every
    // buffer still lent is detached before the pages go. It holds the native
    // queue and the set, never this object.
    const lent = this.#lent;
    this.#forgetUnmap = memory.onUnmap(() => {
      const all = Array.from(lent);
      lent.clear();
      vq.revokeAll(all, all.length);
    });
    this.size = o.size;
    this.eventIdx = o.eventIdx;
    this.indirect = o.indirect;
    this.regionGpa = o.regionGpa;
    this.regionSize = o.regionSize;
    this.#heads = new Uint32Array(o.size);
    this.#used = new Uint32Array(2 * o.size);
  }

  /** Validates, then clears the rings and sets up the free list. Ring and buffers must lie in one region of `memory`. */
  static create(options: VirtqueueOptions): Virtqueue {
    if (options === null || typeof options !== 'object') throw invalidArg('options', 'must be an object');
    const size = validateQueueSize(options.size, 'options.size');
    const eventIdx = options.eventIdx ?? true;
    const indirect = options.indirect ?? false;
    if (typeof eventIdx !== 'boolean') throw invalidArg('options.eventIdx', 'must be a boolean');
    if (typeof indirect !== 'boolean') throw invalidArg('options.indirect', 'must be a boolean');
    for (const k of ['desc', 'avail', 'used'] as const) {
      if (typeof options[k] !== 'bigint') throw invalidArg(`options.${k}`, 'must be a bigint guest-physical address');
    }
    if (options.desc % 16n !== 0n) throw invalidArg('options.desc', 'must be 16-aligned');
    if (options.avail % 2n !== 0n) throw invalidArg('options.avail', 'must be 2-aligned');
    if (options.used % 4n !== 0n) throw invalidArg('options.used', 'must be 4-aligned');
    const mem = options.memory;
    if (mem === null || typeof mem !== 'object' || typeof mem.view !== 'function') throw invalidArg('options.memory', 'must be a GuestMemory');
    if (mem.closed) throw closedError('GuestMemory (options.memory)');
    const region = mem.regions.find((r) => options.desc >= r.gpa && options.desc < r.gpa + r.size);
    if (!region) throw invalidArg('options.desc', 'is not inside any region of options.memory', 'ERR_VHOST_OUT_OF_RANGE');
    const inRegion = (gpa: bigint, len: bigint, arg: string) => {
      if (gpa < region.gpa || gpa + len > region.gpa + region.size) throw invalidArg(arg, "must lie in the descriptor table's region", 'ERR_VHOST_OUT_OF_RANGE');
    };
    const n = BigInt(size);
    inRegion(options.desc, 16n * n * (indirect ? 1n + BigInt(INDIRECT_MAX) : 1n), 'options.desc');
    inRegion(options.avail, 6n + 2n * n, 'options.avail');
    inRegion(options.used, 6n + 8n * n, 'options.used');
    const kick = options.kick;
    if (kick !== null && (typeof kick !== 'object' || typeof kick.write !== 'function')) throw invalidArg('options.kick', 'must be an EventFd or null');
    const buffer = mem.view(region.gpa, region.size).buffer as ArrayBuffer;
    const off = (gpa: bigint) => Number(gpa - region.gpa);
    const vq = native.virtqueueCreate(
      buffer,
      region.gpa,
      { size, desc: off(options.desc), avail: off(options.avail), used: off(options.used), eventIdx, indirect },
      kick ? kick.nativeHandle : null,
    );
    return new Virtqueue(vq, mem, { size, eventIdx, indirect, regionGpa: region.gpa, regionSize: region.size });
  }

  /** True once close() has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Free descriptors. */
  get numFree(): number {
    return this.#live('numFree').numFree;
  }

  /** Chains posted and not yet collected. */
  get inFlight(): number {
    const vq = this.#live('inFlight');
    return (vq.availIdx - vq.lastUsedIdx) & 0xffff;
  }

  /** The driver's avail->idx and next used index to read (both wrap at 2^16). */
  get availIdx(): number {
    return this.#live('availIdx').availIdx;
  }

  /** The next used ring index this driver will read (wraps at 2^16). */
  get lastUsedIdx(): number {
    return this.#live('lastUsedIdx').lastUsedIdx;
  }

  /** Kicks written to the eventfd, and kicks the device's hints made unnecessary. */
  get kickStats(): { kicks: number; suppressed: number } {
    const vq = this.#live('kickStats');
    return { kicks: vq.kicks, suppressed: vq.kicksSuppressed };
  }

  /**
   * Posts chains (each: device-readable segments, then device-writable ones)
   * in order until one does not fit. Returns the heads of the chains posted
   * (fewer than given when the ring is full). Kicks if `notify` (default true)
   * and the device asks for it.
   */
  post(chains: readonly (readonly VirtqueueSegment[])[], notify = true): number[] {
    const vq = this.#live('post');
    if (!Array.isArray(chains)) throw invalidArg('chains', 'must be an array of chains');
    const kick = checkBool(notify, 'notify');
    const segs = encodeChains(chains, this.regionGpa, this.regionSize);
    const count = countChains(segs);
    if (count > this.#heads.length) this.#heads = new Uint32Array(count);
    const n = vq.post(segs, segs.length / 3, this.#heads, kick);
    return Array.from(this.#heads.subarray(0, n));
  }

  /**
   * The hot path: `nsegs` triples (offset in the region, len, SEG_WRITABLE |
   * SEG_END) already encoded; heads[i] receives chain i's head. Returns chains posted.
   */
  postEncoded(segs: Uint32Array, nsegs: number, heads: Uint32Array, notify = true): number {
    return this.#live('postEncoded').post(segs, nsegs, heads, notify);
  }

  /** Used buffers, oldest first, at most `max`; their descriptors are free again. */
  collect(max = this.size): UsedBuffer[] {
    const vq = this.#live('collect');
    const n = vq.collect(this.#used, Math.min(checkInt(max, 'max', 0, Number.MAX_SAFE_INTEGER, plain), this.size));
    const out: UsedBuffer[] = [];
    for (let i = 0; i < n; i++) out.push({ head: this.#used[2 * i], len: this.#used[2 * i + 1] });
    return out;
  }

  /** The hot path: (head, len) pairs into `out`; returns how many. */
  collectInto(out: Uint32Array, max: number): number {
    return this.#live('collectInto').collect(out, max);
  }

  /** Kicks if the device asks for it; true when it kicked. */
  notify(): boolean {
    return this.#live('notify').notify();
  }

  /**
   * Asks for a call at the next used buffer (delayed: once ~3/4 of those in
   * flight are used). Returns true when used buffers already wait: collect
   * them instead of sleeping.
   */
  enableCallbacks(delayed = false): boolean {
    return this.#live('enableCallbacks').enableCallbacks(delayed);
  }

  /** Asks the device not to signal (a hint). */
  disableCallbacks(): void {
    this.#live('disableCallbacks').disableCallbacks();
  }

  /**
   * Lends [offset, offset + len) of the queue's memory region (offsets as in
   * postEncoded) as an ArrayBuffer of its own, without copying, so one buffer
   * slot can be handed out and taken back alone: revoke() detaches it. A
   * buffer still lent when the memory is closed (by anyone) is detached
   * before the unmap, so it reads as empty, never as unmapped memory. The
   * queue lists each lent buffer until it is revoked (or the memory closed):
   * revoke every buffer you are done with, or they accumulate.
   */
  lend(offset: number, len: number): ArrayBuffer {
    const buffer = this.#live('lend').lend(offset, len);
    this.#lent.add(buffer);
    return buffer;
  }

  /**
   * lend() for many slots in one addon call: `ranges` holds `n` pairs
   * (offset, len), and buffer i of the result covers pair i. Every pair is
   * checked before anything is lent (ERR_VHOST_OUT_OF_RANGE for an empty or
   * out-of-region one, nothing lent then). Give them back with revokeAll()
   * (or revoke()).
   */
  lendBatch(ranges: Uint32Array, n: number): ArrayBuffer[] {
    const vq = this.#live('lendBatch');
    if (!(ranges instanceof Uint32Array)) throw invalidArg('ranges', 'must be a Uint32Array of (offset, len) pairs');
    checkInt(n, 'n', 0, ranges.length >> 1, plain);
    const out = this.#lendOut;
    while (out.length < n) out.push(null);
    vq.lendBatch(ranges, n, out);
    const lent = this.#lent;
    const buffers: ArrayBuffer[] = [];
    for (let i = 0; i < n; i++) {
      const buffer = out[i]!;
      out[i] = null;
      lent.add(buffer);
      buffers.push(buffer);
    }
    return buffers;
  }

  /**
   * Copies `n` ranges of the queue's memory region (`ranges`: pairs (offset,
   * len), offsets as in postEncoded) one after the other into `dst` from its
   * byte 0, in one addon call; returns the bytes copied. Every pair is
   * checked first (ERR_VHOST_OUT_OF_RANGE when one is outside the region or
   * the total does not fit `dst`; nothing copied then).
   */
  copyOut(ranges: Uint32Array, n: number, dst: Uint8Array): number {
    const vq = this.#live('copyOut');
    if (!(ranges instanceof Uint32Array)) throw invalidArg('ranges', 'must be a Uint32Array of (offset, len) pairs');
    checkInt(n, 'n', 0, ranges.length >> 1, plain);
    if (!(dst instanceof Uint8Array)) throw invalidArg('dst', 'must be a Uint8Array');
    return vq.copyOut(ranges, n, dst);
  }

  /** Buffers lend() made that are not revoked yet (neither by revoke() nor by closing the memory). */
  get lentCount(): number {
    return this.#lent.size;
  }

  /**
   * Detaches a buffer lend() made (views of it become empty). Idempotent;
   * works after close(). An ArrayBuffer this queue did not lend (or lent
   * and already revoked) is left alone.
   */
  revoke(buffer: ArrayBuffer): void {
    if (!(buffer instanceof ArrayBuffer)) throw invalidArg('buffer', 'must be an ArrayBuffer lend() made');
    if (!this.#lent.delete(buffer)) return;
    this.#vq.revoke(buffer);
    if (this.#closed && this.#lent.size === 0) this.#forgetUnmap();
  }

  /**
   * revoke() for buffers[0..n) (default: all) in one addon call; every entry
   * must be an ArrayBuffer (checked before any is detached). Returns how many
   * were still lent by this queue (those are detached; the others are left
   * alone). Works after close().
   */
  revokeAll(buffers: readonly ArrayBuffer[], n: number = Array.isArray(buffers) ? buffers.length : 0): number {
    if (!Array.isArray(buffers)) throw invalidArg('buffers', 'must be an array of ArrayBuffers lend() made');
    checkInt(n, 'n', 0, buffers.length, plain);
    // Each entry read once, all checked before any is taken back; then the ones still lent kept, in place.
    const doomed = this.#revokeOut;
    while (doomed.length < n) doomed.push(null);
    for (let i = 0; i < n; i++) {
      const buffer = buffers[i];
      if (!(buffer instanceof ArrayBuffer)) {
        doomed.fill(null, 0, i);
        throw invalidArg(`buffers[${i}]`, 'must be an ArrayBuffer lend() made');
      }
      doomed[i] = buffer;
    }
    const lent = this.#lent;
    let k = 0;
    for (let i = 0; i < n; i++) {
      const buffer = doomed[i]!;
      doomed[i] = null;
      if (lent.delete(buffer)) doomed[k++] = buffer;
    }
    if (k === 0) return 0;
    try {
      this.#vq.revokeAll(doomed, k);
    } finally {
      doomed.fill(null, 0, k);
    }
    if (this.#closed && lent.size === 0) this.#forgetUnmap();
    return k;
  }

  /**
   * Forgets the memory and kick references; idempotent. Does not close the
   * memory or the eventfd; buffers still lent stay valid until revoked or
   * until the memory is closed.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#vq.close();
    if (this.#lent.size === 0) this.#forgetUnmap();
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #live(what: string): NativeVirtqueue {
    if (this.#closed) throw closedError(`Virtqueue (${what})`);
    return this.#vq;
  }
}

/**
 * Fixed-size buffer slots carved from guest memory [gpa, gpa + count * slotSize):
 * a free stack plus zero-copy views (detached when the memory is closed).
 */
export class BufferPool {
  readonly gpa: bigint;
  readonly slotSize: number;
  readonly count: number;
  /** Offset of slot 0 from the region's start (what NativeVirtqueue segments use). */
  readonly baseOffset: number;
  readonly #views: Uint8Array[];
  readonly #free: number[];

  constructor(memory: GuestMemory, regionGpa: bigint, gpa: bigint, slotSize: number, count: number) {
    if (!Number.isInteger(slotSize) || slotSize < 1) throw invalidArg('slotSize', `must be a positive integer, got ${plain(slotSize)}`);
    if (!Number.isInteger(count) || count < 1) throw invalidArg('count', `must be a positive integer, got ${plain(count)}`);
    this.gpa = gpa;
    this.slotSize = slotSize;
    this.count = count;
    this.baseOffset = Number(gpa - regionGpa);
    const all = memory.view(gpa, BigInt(slotSize) * BigInt(count));
    this.#views = Array.from({ length: count }, (_, i) => all.subarray(i * slotSize, (i + 1) * slotSize));
    this.#free = Array.from({ length: count }, (_, i) => count - 1 - i);
  }

  /** Free slots. */
  get available(): number {
    return this.#free.length;
  }

  /** A free slot index, or -1. */
  alloc(): number {
    return this.#free.length > 0 ? this.#free.pop()! : -1;
  }

  /** Returns a slot that alloc() gave out to the free list. */
  release(slot: number): void {
    this.#free.push(slot);
  }

  /** Zero-copy view of the slot. */
  view(slot: number): Uint8Array {
    return this.#views[slot];
  }

  /** Offset of the slot from the region's start. */
  offset(slot: number): number {
    return this.baseOffset + slot * this.slotSize;
  }
}
