// VirtioNetGuest: this process plays a virtio-net guest over vhost-net. It
// owns guest memory (rings + buffer pools), the kick/call eventfds and the
// vhost-net device; the caller owns the tap. Frames travel
//   send() → TX ring → vhost worker → tap → host stack
//   host stack → tap → vhost worker → RX ring → 'frame' / frames()
// with the 12-byte virtio_net_hdr (VERSION_1) in front of every buffer and,
// with mergeableRx, frames spread over several RX buffers (num_buffers).
//
// Backpressure, both ways, with bounded memory in JS:
// - TX: send()/sendBatch() never queue in JS; they return false / a short
//   count when the ring is full and 'drain' is emitted when space returns.
// - RX: frames() buffers at most `highWaterMark` frames per iterator; when
//   one is full the guest stops collecting used buffers, so it stops
//   refilling, vhost runs out of buffers and the tap's own bounded queue
//   holds (or drops) the rest. 'frame' listeners are called synchronously.
import { closedError, invalidArg, VhostError } from '../core/errors';
import { plain, readOptions } from '../core/check';
import { features } from '../core/features';
import type { GuestMemory } from '../core/memory';
import { SEG_END } from '../core/native';
import type { DeviceState } from '../vhost/plan';
import type { RunningVhostNet } from '../vhost/net';
import { NetResponder } from './responder';
import { Macvtap } from '../netdev/macvtap';
import { formatMac, parseMac, Tap, TapQueue } from '../netdev/tap';
import { alignUp, failGuest, GuestRings, UserspaceGuest } from './userspace-guest';
import { VhostNet, VHOST_NET_RX, VHOST_NET_TX } from '../vhost/net';
import { validateQueueSize } from '../virtio/vring';

/** sizeof(struct virtio_net_hdr_mrg_rxbuf): the header with VERSION_1. */
export const VIRTIO_NET_HDR_SIZE = 12;
const ETH_HLEN = 14;
const VLAN_HLEN = 4;
const EBADFD = 77; // the tun driver's answer once its link is gone

/** Options of VirtioNetGuest.create(). */
export interface VirtioNetGuestOptions {
  /**
   * The tap-like backend vhost-net moves frames to and from (not closed by the
   * guest): a Tap, one TapQueue of a multi-queue tap (one guest per queue
   * pair), or a Macvtap (e.g. a NIC dedicated by Macvtap.passthrough()).
   */
  tap: VirtioNetGuestBackend;
  /** Entries per ring (power of two, 1..32768). Default 256. */
  queueSize?: number;
  /** VIRTIO_NET_F_MRG_RXBUF: frames larger than one RX buffer span several. Default true. */
  mergeableRx?: boolean;
  /** Largest IP packet (the link MTU), 68..65535. Frames may be mtu + 14 (+ 4 VLAN) bytes. Default 1500. */
  mtu?: number;
  /** RX buffer size with mergeableRx (bytes, 64..65536, header included). Default 2048. */
  rxBufferSize?: number;
  /** VIRTIO_RING_F_EVENT_IDX notification suppression. Default true. */
  eventIdx?: boolean;
  /** Frames each frames() iterator buffers before the guest stops collecting. Default queueSize. */
  highWaterMark?: number;
  /** The guest's MAC (used by the responder). Default: a random locally administered one. */
  mac?: string | Uint8Array;
  /** Answer ARP / ICMP echo for this IPv4 address (and echo UDP on udpEchoPort, default 7). Answered frames are not emitted. */
  responder?: { ipv4: string; udpEchoPort?: number | null };
  /** How often to check that the tap still exists (ms). Default 500. */
  linkCheckIntervalMs?: number;
  /** Frames lent to 'loans' listeners and not yet given back, at most (1..queueSize). Default queueSize / 2. */
  maxLoans?: number;
}

/** What a VirtioNetGuest can sit on: each answers TUNGETIFF and takes the vnet header. */
export type VirtioNetGuestBackend = Tap | TapQueue | Macvtap;

/** Counters of a VirtioNetGuest. */
export interface VirtioNetGuestStats {
  txFrames: number;
  txBytes: number;
  /** TX buffers the device has returned. */
  txCompleted: number;
  /** Times send/sendBatch found the ring full. */
  txRingFull: number;
  rxFrames: number;
  rxBytes: number;
  /** RX buffers posted (refills included). */
  rxBuffersPosted: number;
  /** Frames the responder answered (not emitted). */
  rxAnswered: number;
  /** Frames dropped because nobody listened ('frame', 'frames', 'loans' or frames()). */
  rxUnclaimed: number;
  /** Frames lent to 'loans' listeners (in place, no copy), and of those not given back yet. */
  rxLent: number;
  rxLentOut: number;
  /** RX batches collected from the used ring (each is one 'frames' / 'loans' event). */
  rxBatches: number;
  /** Responder replies dropped because the TX ring was full. */
  txRepliesDropped: number;
  /** Kicks written and kicks the device's hints saved, per queue. */
  kicks: { rx: number; tx: number; suppressed: number };
  /** Call eventfd wake-ups, per queue. */
  calls: { rx: number; tx: number };
}

interface Consumer {
  queue: Buffer[];
  wake: (() => void) | null;
}

/** Where a frame to be lent waits in a 'loans' batch until the batch's loans are made. */
const EMPTY = new Uint8Array(0);

/** A copy of view[start, end) as a Buffer of its own. */
function copyOut(view: Uint8Array, start: number, end: number): Buffer {
  const out = Buffer.allocUnsafe(end - start);
  out.set(view.subarray(start, end));
  return out;
}

function randomMac(): Uint8Array {
  const mac = new Uint8Array(6);
  for (let i = 0; i < 6; i++) mac[i] = Math.floor(Math.random() * 256);
  mac[0] = (mac[0] & 0xfe) | 0x02; // unicast, locally administered
  return mac;
}

interface GuestPlan {
  tap: VirtioNetGuestBackend;
  queueSize: number;
  mergeableRx: boolean;
  mtu: number;
  maxFrame: number;
  rxBufferSize: number;
  txBufferSize: number;
  eventIdx: boolean;
  highWaterMark: number;
  mac: Uint8Array;
  responder: NetResponder | null;
  linkCheckIntervalMs: number;
  maxLoans: number;
}

const OPTION_KEYS = new Set(['tap', 'queueSize', 'mergeableRx', 'mtu', 'rxBufferSize', 'eventIdx', 'highWaterMark', 'mac', 'responder', 'linkCheckIntervalMs', 'maxLoans']);

function intOption(v: unknown, arg: string, min: number, max: number, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw invalidArg(arg, `must be an integer, got ${plain(v)}`);
  if (v < min || v > max) throw invalidArg(arg, `must be in ${min}..${max}, got ${v}`, 'ERR_VHOST_OUT_OF_RANGE');
  return v;
}

function boolOption(v: unknown, arg: string, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw invalidArg(arg, 'must be a boolean');
  return v;
}

/** Checks VirtioNetGuest options without any syscall. */
export function planVirtioNetGuest(options: VirtioNetGuestOptions): GuestPlan {
  if (options === null || typeof options !== 'object') throw invalidArg('options', 'must be an object');
  for (const k of Object.keys(options)) if (!OPTION_KEYS.has(k)) throw invalidArg(`options.${k}`, 'is not a VirtioNetGuest option');
  options = readOptions(options, OPTION_KEYS);
  if (!(options.tap instanceof Tap || options.tap instanceof TapQueue || options.tap instanceof Macvtap)) throw invalidArg('options.tap', 'must be a Tap, a TapQueue or a Macvtap');
  if (options.tap.closed) throw closedError('Tap (options.tap)', options.tap.path);
  const queueSize = validateQueueSize(options.queueSize ?? 256, 'options.queueSize');
  const mergeableRx = boolOption(options.mergeableRx, 'options.mergeableRx', true);
  const eventIdx = boolOption(options.eventIdx, 'options.eventIdx', true);
  const mtu = intOption(options.mtu, 'options.mtu', 68, 65535, 1500);
  const maxFrame = mtu + ETH_HLEN + VLAN_HLEN;
  const fullBuffer = Number(alignUp(BigInt(VIRTIO_NET_HDR_SIZE + maxFrame), 64n));
  if (options.rxBufferSize !== undefined && !mergeableRx) throw invalidArg('options.rxBufferSize', 'needs mergeableRx (without it each RX buffer holds a whole frame)');
  const rxBufferSize = mergeableRx ? intOption(options.rxBufferSize, 'options.rxBufferSize', 64, 65536, 2048) : fullBuffer;
  const highWaterMark = intOption(options.highWaterMark, 'options.highWaterMark', 1, 1 << 20, queueSize);
  const linkCheckIntervalMs = intOption(options.linkCheckIntervalMs, 'options.linkCheckIntervalMs', 10, 3_600_000, 500);
  const maxLoans = intOption(options.maxLoans, 'options.maxLoans', 1, queueSize, Math.max(1, queueSize >> 1));
  const mac = options.mac === undefined ? randomMac() : parseMac(options.mac, 'options.mac');
  let responder: NetResponder | null = null;
  if (options.responder !== undefined) {
    const r = options.responder;
    if (r === null || typeof r !== 'object') throw invalidArg('options.responder', 'must be an object { ipv4, udpEchoPort }');
    responder = new NetResponder({ mac, ipv4: r.ipv4, udpEchoPort: r.udpEchoPort });
  }
  return { tap: options.tap, queueSize, mergeableRx, mtu, maxFrame, rxBufferSize, txBufferSize: fullBuffer, eventIdx, highWaterMark, mac, responder, linkCheckIntervalMs, maxLoans };
}

/**
 * A virtio-net guest driven by this process over vhost-net and a tap: no VM.
 * Create with VirtioNetGuest.create(); close() (or `using`) stops the device
 * and releases everything the guest created. Events: 'frame' (Buffer, one
 * copy per frame), 'frames' (Buffer[]: the copies of one batch collected from
 * the used ring, after their 'frame' events; a batch's copies are views of one
 * Buffer filled by one addon call, so keeping one frame keeps that Buffer:
 * Buffer.from() a frame you hold for long), 'loans' (Uint8Array[]: frames
 * lent in place, see giveBack()), 'drain', 'error' (e.g. the tap was
 * deleted), 'close'. pause() / resume()
 * (UserspaceGuest) stop the device mid-traffic (backend detached, rings
 * quiesced; frames from the host wait in the tap's queue, send() keeps
 * filling the TX ring) and restart it on a new vhost-net device over the same
 * tap: nothing is lost or repeated when the bases are the saved ones; dirty
 * logging, if it was on, is off on the new device.
 */
export class VirtioNetGuest extends UserspaceGuest<RunningVhostNet> {
  /** The guest's MAC address ('02:..'). */
  readonly mac: string;
  readonly mtu: number;
  /** Largest frame send() takes: mtu + 14 + 4. */
  readonly maxFrameSize: number;
  readonly queueSize: number;
  readonly mergeableRx: boolean;
  readonly #plan: GuestPlan;
  // Own scratch arrays per queue (GuestRings has the others): a responder reply is sent (TX) while RX entries are being walked.
  readonly #rxUsed: Uint32Array;
  readonly #txSegs: Uint32Array;
  readonly #consumers = new Set<Consumer>();
  readonly #stats: Omit<VirtioNetGuestStats, 'kicks' | 'rxLentOut'>;
  // Per-batch scratch, made once: TX slots of a sendBatch chunk; responder replies queued during an RX batch (one publish at its end).
  readonly #txSlots: Int32Array;
  readonly #replySegs: Uint32Array;
  readonly #replySlots: Int32Array;
  #replyCount = 0;
  /** Where a reply is computed (to count it) when no TX slot is free. */
  readonly #replyScratch: Uint8Array;
  // TX reservations (reserve() → commit()): slot, frame length and lent buffer of each, in order.
  readonly #resSlots: Int32Array;
  readonly #resLens: Int32Array;
  readonly #resBufs: (ArrayBuffer | null)[];
  readonly #resSegs: Uint32Array;
  #resCount = 0;
  /** RX frames lent in place: the lent buffer → its RX pool slot. */
  readonly #loans = new Map<ArrayBuffer, number>();
  // Loans of the batch being collected, lent together at its end (one addon call): (offset, len) of each
  // frame, its RX slot and its place in #lent. Buffers being revoked together go through #revoking.
  readonly #lendRanges: Uint32Array;
  readonly #lendSlots: Int32Array;
  readonly #lendAt: Int32Array;
  #lendCount = 0;
  readonly #revoking: (ArrayBuffer | null)[] = [];
  // Copies of the batch being collected, made together at its end (one addon call into one Buffer): (offset, len)
  // of each frame in its RX slot and the slot to free then (-1 when the frame is also lent). #ordered holds the
  // batch's copies in order: a Buffer for a frame reassembled from several slots, null for the next staged range.
  readonly #copyRanges: Uint32Array;
  readonly #copySlots: Int32Array;
  #copyCount = 0;
  readonly #ordered: (Buffer | null)[] = [];
  /** Whether anyone takes copies of the batch being collected (see #wantsCopies). */
  #copying = false;
  /** The batch being collected: copies for 'frames', frames for 'loans' (null when nobody listens). */
  #copies: Buffer[] | null = null;
  #lent: Uint8Array[] | null = null;
  #partial: { chunks: Buffer[]; bytes: number; remaining: number } | null = null;
  #timer: NodeJS.Timeout | null = null;
  #needDrain = false;
  #draining = false;
  #rxScheduled = false;

  private constructor(plan: GuestPlan, rings: GuestRings<RunningVhostNet>) {
    super('VirtioNetGuest', rings);
    this.#plan = plan;
    this.mac = formatMac(plan.mac);
    this.mtu = plan.mtu;
    this.maxFrameSize = plan.maxFrame;
    this.queueSize = plan.queueSize;
    this.mergeableRx = plan.mergeableRx;
    this.#rxUsed = new Uint32Array(2 * plan.queueSize);
    this.#txSegs = new Uint32Array(3 * plan.queueSize);
    const n = plan.queueSize;
    this.#txSlots = new Int32Array(n);
    this.#replySegs = new Uint32Array(3 * n);
    this.#replySlots = new Int32Array(n);
    this.#replyScratch = new Uint8Array(Math.max(60, plan.maxFrame));
    this.#resSlots = new Int32Array(n);
    this.#resLens = new Int32Array(n);
    this.#resBufs = new Array<ArrayBuffer | null>(n).fill(null);
    this.#resSegs = new Uint32Array(3 * n);
    this.#lendRanges = new Uint32Array(2 * n);
    this.#lendSlots = new Int32Array(n);
    this.#lendAt = new Int32Array(n);
    this.#copyRanges = new Uint32Array(2 * n);
    this.#copySlots = new Int32Array(n);
    this.#zeroTxHeaders();
    this.#stats = { txFrames: 0, txBytes: 0, txCompleted: 0, txRingFull: 0, rxFrames: 0, rxBytes: 0, rxBuffersPosted: 0, rxAnswered: 0, rxUnclaimed: 0, rxLent: 0, rxBatches: 0, txRepliesDropped: 0, calls: { rx: 0, tx: 0 } };
  }

  /**
   * Every TX slot starts with a zero virtio_net_hdr (no checksum or GSO
   * offload), written once here instead of per frame: frames go in behind it
   * (send, reserve, the responder) and the device only reads TX buffers.
   */
  #zeroTxHeaders(): void {
    const pool = this.rings.txPool;
    for (let slot = 0; slot < pool.count; slot++) pool.view(slot).fill(0, 0, VIRTIO_NET_HDR_SIZE);
  }

  /**
   * Validates the options (before any syscall), then creates guest memory
   * (both rings and buffer pools in one memfd region), the eventfds and the
   * vhost-net device (VhostNet.builder(): VERSION_1 [+ MRG_RXBUF] [+ EVENT_IDX]),
   * fills the RX ring and starts watching the call eventfds. On failure
   * everything created so far is released.
   */
  static create(options: VirtioNetGuestOptions): VirtioNetGuest {
    const plan = planVirtioNetGuest(options);
    let acked = features.ring.VERSION_1;
    if (plan.mergeableRx) acked |= features.net.MRG_RXBUF;
    if (plan.eventIdx) acked |= features.ring.RING_EVENT_IDX;
    const layout = { name: 'virtio-net-guest', queueSize: plan.queueSize, rxBufferSize: plan.rxBufferSize, txBufferSize: plan.txBufferSize, eventIdx: plan.eventIdx };
    // Also how resume() builds the new device: same memory, rings, eventfds and tap, each ring at its saved base.
    const startDevice = (rings: GuestRings<RunningVhostNet>, state?: DeviceState) =>
      VhostNet.builder()
        .memory(rings.memory)
        .backend(plan.tap)
        .features(acked)
        .queue(VHOST_NET_RX, rings.queue(VHOST_NET_RX, state))
        .queue(VHOST_NET_TX, rings.queue(VHOST_NET_TX, state))
        .start();
    return GuestRings.create(layout, startDevice, (rings) => {
      const guest = new VirtioNetGuest(plan, rings);
      guest.start();
      return guest;
    });
  }

  protected override start(): void {
    super.start();
    this.#timer = setInterval(() => this.#checkLink(), this.#plan.linkCheckIntervalMs);
    this.#timer.unref();
  }

  /** A snapshot of the counters. */
  get stats(): VirtioNetGuestStats {
    const rx = this.closed ? { kicks: 0, suppressed: 0 } : this.rings.rxq.kickStats;
    const tx = this.closed ? { kicks: 0, suppressed: 0 } : this.rings.txq.kickStats;
    return { ...this.#stats, rxLentOut: this.#loans.size, calls: { ...this.#stats.calls }, kicks: { rx: rx.kicks, tx: tx.kicks, suppressed: rx.suppressed + tx.suppressed } };
  }

  /**
   * The vhost-net device, for what the guest does not wrap (e.g.
   * enableDirtyLog() / readDirtyLog()). stop() or detachBackend() on it stalls
   * the guest; pause() / resume() is the way to stop and restart it. A
   * different object after resume().
   */
  get device(): RunningVhostNet {
    this.checkOpen('device');
    return this.rings.device;
  }

  /** The guest memory holding the rings and buffer pools (closed with the guest). If you close it yourself, every lent or reserved frame's view is detached before the unmap (GuestMemory.onUnmap), so none points at unmapped memory; the guest then fails with ERR_VHOST_CLOSED on its next ring access. */
  get memory(): GuestMemory {
    this.checkOpen('memory');
    return this.rings.memory;
  }

  /** TX buffers posted and not yet returned by the device. */
  get txInFlight(): number {
    return this.closed ? 0 : this.rings.txq.inFlight;
  }

  /**
   * Sends one Ethernet frame (without FCS, 14..maxFrameSize bytes; the
   * virtio-net header is added). Returns false, sending nothing, when the TX
   * ring is full: wait for 'drain'. Throws ERR_VHOST_CLOSED after close().
   */
  send(frame: Uint8Array): boolean {
    return this.sendBatch([frame]) === 1;
  }

  /**
   * Sends frames in order with one ring publish and at most one kick.
   * Returns how many were taken (a prefix); fewer than given means the ring
   * is full and 'drain' follows. Every frame is validated before any is sent.
   */
  sendBatch(frames: readonly Uint8Array[]): number {
    this.checkOpen('send');
    if (!Array.isArray(frames)) throw invalidArg('frames', 'must be an array of Uint8Array frames');
    for (let i = 0; i < frames.length; i++) this.#checkFrame(frames[i], frames.length === 1 ? 'frame' : `frames[${i}]`);
    return this.#post(frames);
  }

  #checkFrame(frame: unknown, arg: string): void {
    if (!(frame instanceof Uint8Array)) throw invalidArg(arg, 'must be a Uint8Array (an Ethernet frame)');
    if (frame.length < ETH_HLEN) throw invalidArg(arg, `is ${frame.length} bytes, shorter than an Ethernet header (14)`);
    if (frame.length > this.maxFrameSize) {
      throw invalidArg(arg, `is ${frame.length} bytes, larger than the limit ${this.maxFrameSize} (mtu ${this.mtu} + 14 Ethernet header + 4 VLAN tag)`, 'ERR_VHOST_OUT_OF_RANGE');
    }
  }

  #post(frames: readonly Uint8Array[]): number {
    this.#reclaimTx();
    const pool = this.rings.txPool;
    let sent = 0;
    while (sent < frames.length) {
      const count = Math.min(frames.length - sent, pool.available, this.queueSize);
      if (count === 0) break;
      const segs = this.#txSegs;
      const slots = this.#txSlots;
      for (let i = 0; i < count; i++) {
        const frame = frames[sent + i];
        const slot = pool.alloc();
        slots[i] = slot;
        pool.view(slot).set(frame, VIRTIO_NET_HDR_SIZE); // behind the zero header (#zeroTxHeaders)
        segs[3 * i] = pool.offset(slot);
        segs[3 * i + 1] = VIRTIO_NET_HDR_SIZE + frame.length;
        segs[3 * i + 2] = SEG_END;
      }
      const posted = this.rings.postTx(segs, count, slots);
      for (let i = 0; i < posted; i++) this.#stats.txBytes += frames[sent + i].length;
      for (let i = posted; i < count; i++) pool.release(slots[i]);
      this.#stats.txFrames += posted;
      sent += posted;
      if (posted < count) break;
    }
    if (sent < frames.length) this.#ringFull();
    return sent;
  }

  /** The TX ring (or pool) is full: 'drain' once space returns. */
  #ringFull(): void {
    this.#stats.txRingFull++;
    this.#needDrain = true;
    // A call at the first used buffer, not a delayed one (at ~3/4 of those in flight): waiting for
    // 3/4 let the device run the ring nearly dry before Node refilled it, and sendBatch was 25-30%
    // slower for it (bench: 0.69/0.62 of the C loop delayed vs 0.99/0.92 at 64/1500 B, one run, 9 rounds).
    if (this.rings.txq.enableCallbacks(false)) setImmediate(() => this.#onTxSpace());
  }

  /**
   * Copy-free TX: reserves a TX slot for a frame of `len` bytes (14..maxFrameSize)
   * and returns a view of exactly `len` bytes inside the slot in guest memory:
   * write the frame there, then commit(). Returns null when no slot is free
   * (wait for 'drain'). The view is detached by commit(), pause() and close():
   * it never outlives its slot. Reserved frames hold their slots until committed.
   */
  reserve(len: number): Uint8Array | null {
    this.checkOpen('reserve');
    if (typeof len !== 'number' || !Number.isInteger(len)) throw invalidArg('len', `must be an integer, got ${plain(len)}`);
    if (len < ETH_HLEN || len > this.maxFrameSize) throw invalidArg('len', `must be in ${ETH_HLEN}..${this.maxFrameSize} (an Ethernet frame up to mtu + 18), got ${len}`, 'ERR_VHOST_OUT_OF_RANGE');
    const pool = this.rings.txPool;
    if (pool.available === 0) this.#reclaimTx();
    if (pool.available === 0) {
      this.#ringFull();
      return null;
    }
    const slot = pool.alloc();
    const buffer = this.rings.txq.lend(pool.offset(slot) + VIRTIO_NET_HDR_SIZE, len);
    const k = this.#resCount++;
    this.#resSlots[k] = slot;
    this.#resLens[k] = len;
    this.#resBufs[k] = buffer;
    return new Uint8Array(buffer);
  }

  /** Frames reserve()d and not committed yet. */
  get reserved(): number {
    return this.#resCount;
  }

  /**
   * Sends every reserve()d frame, in order, with one ring publish and at most
   * one kick; their views are detached first. Returns how many were sent.
   */
  commit(): number {
    this.checkOpen('commit');
    const k = this.#resCount;
    if (k === 0) return 0;
    this.#resCount = 0;
    const pool = this.rings.txPool;
    const segs = this.#resSegs;
    this.#revokeReserved(k);
    for (let i = 0; i < k; i++) {
      segs[3 * i] = pool.offset(this.#resSlots[i]);
      segs[3 * i + 1] = VIRTIO_NET_HDR_SIZE + this.#resLens[i];
      segs[3 * i + 2] = SEG_END;
    }
    // Each reserved slot is a TX buffer not in the ring, so the ring has a descriptor for each.
    const posted = this.rings.postTx(segs, k, this.#resSlots);
    for (let i = 0; i < posted; i++) this.#stats.txBytes += this.#resLens[i];
    for (let i = posted; i < k; i++) pool.release(this.#resSlots[i]);
    this.#stats.txFrames += posted;
    return posted;
  }

  /** Detaches the views of the first k reservations (one addon call). */
  #revokeReserved(k: number): void {
    this.rings.txq.revokeAll(this.#resBufs as ArrayBuffer[], k);
    this.#resBufs.fill(null, 0, k);
  }

  /** Detaches every reserved view and frees its slot (the frames are not sent). */
  #dropReservations(): void {
    const k = this.#resCount;
    this.#resCount = 0;
    if (k === 0) return;
    this.#revokeReserved(k);
    for (let i = 0; i < k; i++) this.rings.txPool.release(this.#resSlots[i]);
  }

  #reclaimTx(): void {
    this.#stats.txCompleted += this.rings.reclaimTx();
  }

  #onTxSpace(): void {
    if (this.closed) return;
    this.#reclaimTx();
    if (this.#needDrain && this.rings.txPool.available > 0) {
      this.#needDrain = false;
      this.rings.txq.disableCallbacks();
      this.emit('drain');
    }
  }

  /** A call eventfd woke up (already read); a throwing 'frame' listener propagates, ring failures close the guest. */
  protected onCall(which: 'rx' | 'tx'): void {
    this.#stats.calls[which]++;
    if (which === 'tx') this.#onTxSpace();
    else this.#drainRx();
  }

  /** Posts every free RX buffer, counted in stats.rxBuffersPosted. */
  protected override refillRx(): number {
    const n = super.refillRx();
    this.#stats.rxBuffersPosted += n;
    return n;
  }

  /** Room left before a frames() iterator reaches its high-water mark (Infinity without iterators). */
  #rxRoom(): number {
    let room = Infinity;
    for (const c of this.#consumers) room = Math.min(room, this.#plan.highWaterMark - c.queue.length);
    if (this.listenerCount('loans') > 0) room = Math.min(room, this.#plan.maxLoans - this.#loans.size);
    return room;
  }

  /** Collects used RX buffers, delivers frames, refills; stops when a consumer is full. */
  // As a virtio driver's NAPI poll: no calls while polling (each would be one more eventfd write for
  // the device and a wake-up that finds the ring drained), re-armed once the ring is empty.
  #drainRx(): void {
    if (this.#draining || this.closed) return;
    this.#draining = true;
    try {
      this.rings.rxq.disableCallbacks();
      for (;;) {
        const room = this.#rxRoom();
        if (room <= 0) return; // paused, calls off: resumed by the consumer that makes room (#scheduleRx)
        const n = this.rings.rxq.collectInto(this.#rxUsed, Math.min(this.queueSize, room));
        if (n > 0) this.#rxBatch(n);
        if (this.closed) return;
        this.refillRx();
        if (n > 0) continue;
        if (!this.rings.rxq.enableCallbacks(false)) return; // empty and re-armed
        this.rings.rxq.disableCallbacks(); // entries came meanwhile: poll on
      }
    } finally {
      this.#draining = false;
    }
  }

  /** One batch of `n` used RX buffers: frames delivered, responder replies published once, then 'frames' / 'loans'. */
  #rxBatch(n: number): void {
    this.#stats.rxBatches++;
    const lending = this.listenerCount('loans') > 0;
    this.#copies = this.listenerCount('frames') > 0 ? [] : null;
    this.#lent = lending ? [] : null;
    this.#copying = this.#wantsCopies();
    try {
      for (let i = 0; i < n; i++) this.#rxBuffer(this.#rxUsed[2 * i], this.#rxUsed[2 * i + 1], lending);
      if (this.#lendCount > 0) this.#lendBatch();
      this.#flushReplies();
      if (this.#ordered.length > 0) this.#deliverCopies();
      if (this.closed) return;
      const copies = this.#copies;
      this.#copies = null;
      if (copies !== null && copies.length > 0) this.emit('frames', copies);
      const lent = this.#lent; // kept in #lent until now: a throwing 'frame(s)' listener ends these loans below
      this.#lent = null;
      if (lent !== null && lent.length > 0 && !this.closed) this.emit('loans', lent);
    } catch (e) {
      // A throwing listener: the rest of the batch is dropped, but not its slots. Frames lent in this
      // batch and not yet delivered go back, so do the slots of frames that were to be lent or copied,
      // and they go into the ring now (no call would come with the ring empty); what the device has
      // used meanwhile is collected from an immediate.
      if (!this.closed) {
        for (let i = 0; i < this.#lendCount; i++) this.rings.rxPool.release(this.#lendSlots[i]);
        if (this.#lent !== null) this.#giveBackAll(this.#lent);
        if (this.#copyCount > 0) this.#releaseCopySlots();
        this.refillRx();
        this.#scheduleRx();
      }
      throw e;
    } finally {
      this.#lendCount = 0;
      this.#copies = null;
      this.#lent = null;
      this.#copyCount = 0; // their slots were freed by #deliverCopies or above (nothing to free once closed)
      this.#ordered.length = 0;
    }
  }

  /** Copies the batch's staged frames into one Buffer (one addon call), frees their slots, then delivers every copy in order. */
  #deliverCopies(): void {
    const k = this.#copyCount;
    const ranges = this.#copyRanges;
    let slab: Buffer | null = null;
    if (k > 0) {
      let total = 0;
      for (let i = 0; i < k; i++) total += ranges[2 * i + 1];
      slab = Buffer.allocUnsafe(total);
      this.rings.rxq.copyOut(ranges, k, slab);
      this.#releaseCopySlots();
    }
    const ordered = this.#ordered;
    let at = 0;
    let next = 0;
    for (let i = 0; i < ordered.length && !this.closed; i++) {
      let frame = ordered[i];
      if (frame === null) {
        const len = ranges[2 * next++ + 1];
        frame = slab!.subarray(at, at + len);
        at += len;
      }
      this.#deliverCopy(frame);
    }
  }

  /** Frees the RX slots of the staged copies (those not lent as well). */
  #releaseCopySlots(): void {
    const k = this.#copyCount;
    this.#copyCount = 0;
    for (let i = 0; i < k; i++) if (this.#copySlots[i] >= 0) this.rings.rxPool.release(this.#copySlots[i]);
  }

  /** Lends the frames of this batch noted by #rxBuffer, in one addon call, into their places in #lent. */
  #lendBatch(): void {
    const k = this.#lendCount;
    const buffers = this.rings.rxq.lendBatch(this.#lendRanges, k);
    this.#lendCount = 0;
    const lent = this.#lent!;
    for (let i = 0; i < k; i++) {
      this.#loans.set(buffers[i], this.#lendSlots[i]);
      lent[this.#lendAt[i]] = new Uint8Array(buffers[i]);
    }
    this.#stats.rxLent += k;
  }

  /** Whether anyone takes copies: 'frame', 'frames' or a frames() iterator (asked once per batch). */
  #wantsCopies(): boolean {
    return this.#copies !== null || this.#consumers.size > 0 || this.listenerCount('frame') > 0;
  }

  #rxBuffer(head: number, len: number, lending: boolean): void {
    const pool = this.rings.rxPool;
    const slot = this.rings.takeRx(head);
    const view = pool.view(slot);
    const end = Math.min(len, pool.slotSize);
    if (this.#partial) {
      const p = this.#partial;
      p.chunks.push(copyOut(view, 0, end));
      p.bytes += end;
      pool.release(slot);
      if (--p.remaining === 0) {
        this.#partial = null;
        this.#deliver(Buffer.concat(p.chunks, p.bytes), lending);
      }
      return;
    }
    if (end < VIRTIO_NET_HDR_SIZE) {
      pool.release(slot);
      return;
    }
    const numBuffers = this.mergeableRx ? view[10] | (view[11] << 8) : 1;
    if (numBuffers > 1) {
      this.#partial = { chunks: [copyOut(view, VIRTIO_NET_HDR_SIZE, end)], bytes: end - VIRTIO_NET_HDR_SIZE, remaining: numBuffers - 1 };
      pool.release(slot);
      return;
    }
    // The whole frame is view[12, end): answered, lent or copied from the slot itself.
    this.#stats.rxFrames++;
    this.#stats.rxBytes += end - VIRTIO_NET_HDR_SIZE;
    if (this.#plan.responder !== null && this.#answer(view, VIRTIO_NET_HDR_SIZE, end)) {
      pool.release(slot);
      return;
    }
    const copies = this.#copying;
    if (!copies && !lending) {
      this.#stats.rxUnclaimed++;
      pool.release(slot);
      return;
    }
    if (copies) {
      // Copied with the batch's others at its end (#deliverCopies); the slot is freed then.
      const k = this.#copyCount++;
      this.#copyRanges[2 * k] = pool.offset(slot) + VIRTIO_NET_HDR_SIZE;
      this.#copyRanges[2 * k + 1] = end - VIRTIO_NET_HDR_SIZE;
      this.#copySlots[k] = lending ? -1 : slot;
      this.#ordered.push(null);
    }
    if (lending) {
      // Lent with the batch's others once it is collected (#lendBatch); its place in the batch is kept now.
      const k = this.#lendCount++;
      this.#lendRanges[2 * k] = pool.offset(slot) + VIRTIO_NET_HDR_SIZE;
      this.#lendRanges[2 * k + 1] = end - VIRTIO_NET_HDR_SIZE;
      this.#lendSlots[k] = slot;
      this.#lendAt[k] = this.#lent!.length;
      this.#lent!.push(EMPTY);
    }
  }

  /** A frame reassembled from several buffers (already a copy). */
  #deliver(frame: Buffer, lending: boolean): void {
    this.#stats.rxFrames++;
    this.#stats.rxBytes += frame.length;
    if (this.#plan.responder !== null && this.#answer(frame, 0, frame.length)) return;
    const copies = this.#copying;
    if (!copies && !lending) {
      this.#stats.rxUnclaimed++;
      return;
    }
    if (lending) this.#lent!.push(frame); // not a loan: giveBack() ignores it
    if (copies) this.#ordered.push(frame);
  }

  #deliverCopy(frame: Buffer): void {
    for (const c of this.#consumers) {
      c.queue.push(frame);
      const wake = c.wake;
      c.wake = null;
      wake?.();
    }
    this.#copies?.push(frame);
    if (this.listenerCount('frame') > 0) this.emit('frame', frame);
  }

  /**
   * The responder's turn on frame[start, end): its reply goes straight into a
   * TX slot, published with the batch's other replies. True when answered
   * (also when the reply was dropped for want of a TX slot).
   */
  #answer(frame: Uint8Array, start: number, end: number): boolean {
    if (end - start > this.maxFrameSize) return false; // a reply is as long as the request: it must fit a TX slot
    const responder = this.#plan.responder!;
    const pool = this.rings.txPool;
    if (pool.available === 0) this.#reclaimTx();
    if (pool.available === 0) {
      if (responder.respondInto(frame, start, end, this.#replyScratch, 0) === 0) return false;
      this.#stats.rxAnswered++;
      this.#stats.txRepliesDropped++;
      return true;
    }
    const slot = pool.alloc();
    const out = pool.view(slot);
    const n = responder.respondInto(frame, start, end, out, VIRTIO_NET_HDR_SIZE);
    if (n === 0) {
      pool.release(slot);
      return false;
    }
    const k = this.#replyCount++;
    this.#replySegs[3 * k] = pool.offset(slot);
    this.#replySegs[3 * k + 1] = VIRTIO_NET_HDR_SIZE + n;
    this.#replySegs[3 * k + 2] = SEG_END;
    this.#replySlots[k] = slot;
    this.#stats.rxAnswered++;
    return true;
  }

  /** Publishes the replies of a batch: one ring publish, at most one kick. */
  #flushReplies(): void {
    const k = this.#replyCount;
    if (k === 0) return;
    this.#replyCount = 0;
    const posted = this.rings.postTx(this.#replySegs, k, this.#replySlots);
    for (let i = 0; i < posted; i++) this.#stats.txBytes += this.#replySegs[3 * i + 1] - VIRTIO_NET_HDR_SIZE;
    this.#stats.txFrames += posted;
    for (let i = posted; i < k; i++) {
      this.rings.txPool.release(this.#replySlots[i]);
      this.#stats.txRepliesDropped++;
    }
  }

  /**
   * Gives frames a 'loans' event lent back to the ring: each view is detached
   * and its slot refilled. Frames that are not loans (copies of frames that
   * spanned several buffers, or loans already given back) are ignored.
   * Returns how many loans ended. Until given back, a loan holds its RX
   * buffer: with maxLoans out the guest stops taking frames from the ring.
   */
  giveBack(frames: Uint8Array | readonly Uint8Array[]): number {
    this.checkOpen('giveBack');
    let n: number;
    if (frames instanceof Uint8Array) n = this.#endLoan(frames);
    else if (Array.isArray(frames)) n = this.#giveBackAll(frames);
    else throw invalidArg('frames', 'must be a Uint8Array or an array of them (frames from a \'loans\' event)');
    if (n > 0) {
      this.refillRx();
      this.#scheduleRx();
    }
    return n;
  }

  /** Ends the loans among `frames`: slots freed, views detached with one addon call. Returns how many. */
  #giveBackAll(frames: readonly Uint8Array[]): number {
    let n = 0;
    for (let i = 0; i < frames.length; i++) if (frames[i] instanceof Uint8Array) n = this.#stageLoanEnd(frames[i], n);
    if (n > 0) this.#revokeNow(n);
    return n;
  }

  /** giveBack() of one view: its loan ended and detached, 1; or 0 when it is not one. */
  #endLoan(view: Uint8Array): number {
    const n = this.#stageLoanEnd(view, 0);
    if (n > 0) this.#revokeNow(n);
    return n;
  }

  /** If `view` is a loan: ends it (slot freed, buffer put at #revoking[n] for #revokeNow) and returns n + 1; else n. */
  #stageLoanEnd(view: Uint8Array, n: number): number {
    const buffer = view.buffer as ArrayBuffer;
    const slot = this.#loans.get(buffer);
    if (slot === undefined) return n;
    this.#loans.delete(buffer);
    return this.#stageRevoke(buffer, slot, n);
  }

  /** Frees `slot` and puts `buffer` at #revoking[n]; returns n + 1. */
  #stageRevoke(buffer: ArrayBuffer, slot: number, n: number): number {
    this.rings.rxPool.release(slot);
    if (n === this.#revoking.length) this.#revoking.push(null);
    this.#revoking[n] = buffer;
    return n + 1;
  }

  /** Detaches the first n buffers of #revoking (one addon call) and forgets them. */
  #revokeNow(n: number): void {
    try {
      this.rings.rxq.revokeAll(this.#revoking as ArrayBuffer[], n);
    } finally {
      this.#revoking.fill(null, 0, n);
    }
  }

  /** Detaches every lent RX view and frees its slot. */
  #revokeLoans(): void {
    let n = 0;
    for (const [buffer, slot] of this.#loans) n = this.#stageRevoke(buffer, slot, n);
    this.#loans.clear();
    if (n > 0) this.#revokeNow(n);
  }

  #scheduleRx(): void {
    if (this.#rxScheduled || this.closed) return;
    this.#rxScheduled = true;
    setImmediate(() => {
      this.#rxScheduled = false;
      try {
        this.#drainRx();
      } catch (e) {
        this.fail(e);
      }
    });
  }

  /**
   * Received frames as an async iterator (each call makes its own, with a
   * queue of at most highWaterMark frames; while it is full the guest stops
   * taking frames from the ring). Ends when the guest closes.
   */
  frames(): AsyncIterableIterator<Buffer> {
    const consumer: Consumer = { queue: [], wake: null };
    if (!this.closed) this.#consumers.add(consumer);
    const remove = () => {
      this.#consumers.delete(consumer);
      this.#scheduleRx();
    };
    const it: AsyncIterableIterator<Buffer> = {
      next: async (): Promise<IteratorResult<Buffer>> => {
        for (;;) {
          if (consumer.queue.length > 0) {
            const value = consumer.queue.shift()!;
            if (consumer.queue.length === this.#plan.highWaterMark - 1) this.#scheduleRx(); // it was full: resume
            return { value, done: false };
          }
          if (this.closed || !this.#consumers.has(consumer)) return { value: undefined, done: true };
          await new Promise<void>((resolve) => {
            consumer.wake = resolve;
          });
        }
      },
      return: async (): Promise<IteratorResult<Buffer>> => {
        remove();
        consumer.queue.length = 0;
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return it;
      },
    };
    return it;
  }

  #checkLink(): void {
    if (this.closed) return;
    const tap = this.#plan.tap;
    try {
      void tap.iff; // TUNGETIFF: EBADFD once the link is gone
    } catch (err) {
      const e = err as VhostError;
      // libuv has no name for EBADFD (77): say what happened.
      if (e.errno === -EBADFD) {
        failGuest(this, new VhostError(`EBADFD: the tap '${tap instanceof TapQueue ? tap.path : tap.name}' was deleted under the running device, ioctl(TUNGETIFF)`, { code: 'EBADFD', errno: e.errno, syscall: e.syscall, path: e.path }));
      } else {
        failGuest(this, e);
      }
    }
  }

  /** pause(): lent RX frames and reserved TX slots are taken back (their views detached); the RX buffers go back into the ring. */
  protected override onPause(): void {
    const hadLoans = this.#loans.size > 0;
    this.#revokeLoans();
    this.#dropReservations();
    if (hadLoans) this.refillRx();
  }

  /** close(): stop watching the link; views into the slots are detached before the memory goes. */
  protected override beforeClose(): void {
    this.#revokeLoans();
    this.#dropReservations();
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** close() (which never closes the tap): frames() iterators end. */
  protected override afterClose(): void {
    this.#partial = null;
    for (const c of this.#consumers) {
      const wake = c.wake;
      c.wake = null;
      wake?.();
    }
    this.#consumers.clear();
  }
}
