// What VirtioNetGuest and VirtioVsockGuest share: one memfd region holding
// an RX ring (queue 0), a TX ring (queue 1) and a buffer pool for each, the
// four kick/call eventfds, and the vhost device running over them. GuestRings
// brings them up and down together, watches the call eventfds, posts RX
// buffers and reclaims TX ones, and swaps the device on pause()/resume().
// UserspaceGuest, the base class of both guests (as node-pty's abstract
// Terminal), holds the lifecycle written once over GuestRings: start,
// ref/unref, pause/resume, close/dispose, the closed checks and failures.
// The protocol on top (Ethernet frames, vsock packets) stays in each guest.
import { EventEmitter } from 'node:events';
import type { DeviceState } from '../vhost/plan';
import { closedError, invalidArg, VhostError } from '../core/errors';
import { EventFd } from '../core/eventfd';
import { GuestMemory } from '../core/memory';
import { SEG_END, SEG_WRITABLE } from '../core/native';
import { BufferPool, placeVirtqueue, Virtqueue } from '../virtio/virtqueue';

/** Queue indexes: both vhost-net and vhost-vsock put RX at 0 and TX at 1. */
export const RX_QUEUE = 0;
export const TX_QUEUE = 1;
const PAGE = 4096n;

export const alignUp = (v: bigint, a: bigint): bigint => (v + a - 1n) & ~(a - 1n);

/** What GuestRings needs of a running vhost device. */
export interface GuestDevice {
  readonly running: boolean;
  stop(): DeviceState;
  close(): void;
}

/** One ring as a device builder's queue() takes it. */
export interface GuestQueueSetup {
  size: number;
  desc: bigint;
  avail: bigint;
  used: bigint;
  kick: EventFd;
  call: EventFd;
  base: number;
}

/**
 * Builds the device over `rings` (rings.memory, rings.queue()); `state`
 * holds the saved ring bases and `previous` is the closed device it replaces
 * (both only on resume).
 */
export type StartGuestDevice<D extends GuestDevice> = (rings: GuestRings<D>, state?: DeviceState, previous?: D) => D;

/** Sizes of the rings and pools; `name` names the memfd. */
export interface GuestLayout {
  name: string;
  queueSize: number;
  rxBufferSize: number;
  txBufferSize: number;
  eventIdx: boolean;
}

interface RingPlace {
  desc: bigint;
  avail: bigint;
  used: bigint;
}

/** What failGuest() needs of a guest: its EventEmitter side and close(). */
export interface FailingGuest {
  readonly closed: boolean;
  listenerCount(event: 'error'): number;
  emit(event: 'error', err: Error): boolean;
  close(): void;
}

/** An asynchronous failure: 'error' (when someone listens), then close. Ignored once closed. */
export function failGuest(guest: FailingGuest, err: Error): void {
  if (guest.closed) return;
  if (guest.listenerCount('error') > 0) guest.emit('error', err);
  guest.close();
}

/** Ring and syscall failures close the guest; anything else (a throwing user listener) propagates. */
export function failOrRethrow(guest: FailingGuest, e: unknown): void {
  if (!(e instanceof VhostError)) throw e;
  failGuest(guest, e);
}

/** A DeviceState as pause() returns it: { queues: [{ index, base }] }, bases 0..65535. */
function checkDeviceState(state: unknown): DeviceState {
  const queues = (state as DeviceState | null)?.queues;
  if (state === null || typeof state !== 'object' || !Array.isArray(queues)) throw invalidArg('state', 'must be the { queues: [{ index, base }] } that pause() returned');
  for (const [i, q] of queues.entries()) {
    if (q === null || typeof q !== 'object' || !Number.isInteger(q.index) || !Number.isInteger(q.base)) throw invalidArg(`state.queues[${i}]`, 'must be { index, base } with integers');
    if (q.base < 0 || q.base > 0xffff) throw invalidArg(`state.queues[${i}].base`, `must be in 0..65535 (split ring index), got ${q.base}`, 'ERR_VHOST_OUT_OF_RANGE');
  }
  return state as DeviceState;
}

/**
 * Guest memory, eventfds, both rings with their buffer pools, and the device
 * over them, owned by one userspace guest. RX buffers are posted one
 * writable descriptor each; TX buffers one readable descriptor each.
 */
export class GuestRings<D extends GuestDevice> {
  readonly memory: GuestMemory;
  readonly rxq: Virtqueue;
  readonly txq: Virtqueue;
  readonly rxPool: BufferPool;
  readonly txPool: BufferPool;
  readonly #places: readonly [RingPlace, RingPlace];
  /** rxKick, rxCall, txKick, txCall. */
  readonly #fds: readonly EventFd[];
  readonly #start: StartGuestDevice<D>;
  readonly #size: number;
  #device!: D;
  // Pool slot of each descriptor head in flight (-1: none), and scratch for posting / collecting.
  readonly #rxSlotOf: Int32Array;
  readonly #txSlotOf: Int32Array;
  readonly #rxSegs: Uint32Array;
  /** refillRx()'s scratch: the pool slot of each buffer being posted. */
  readonly #rxSlots: Int32Array;
  readonly #heads: Uint32Array;
  readonly #txUsed: Uint32Array;
  #closed = false;

  private constructor(init: { memory: GuestMemory; places: [RingPlace, RingPlace]; fds: EventFd[]; rxq: Virtqueue; txq: Virtqueue; rxPool: BufferPool; txPool: BufferPool; start: StartGuestDevice<D> }) {
    this.memory = init.memory;
    this.#places = init.places;
    this.#fds = init.fds;
    this.rxq = init.rxq;
    this.txq = init.txq;
    this.rxPool = init.rxPool;
    this.txPool = init.txPool;
    this.#start = init.start;
    const n = init.rxPool.count;
    this.#size = n;
    this.#rxSlotOf = new Int32Array(n).fill(-1);
    this.#txSlotOf = new Int32Array(n).fill(-1);
    this.#rxSegs = new Uint32Array(3 * n);
    this.#rxSlots = new Int32Array(n);
    this.#heads = new Uint32Array(n);
    this.#txUsed = new Uint32Array(2 * n);
  }

  /**
   * Creates the memory (rings, then the page-aligned RX and TX pools), the
   * eventfds, both rings and the device (startDevice(rings)), then the guest
   * (makeGuest(rings)). On failure everything created so far is released and
   * the original error thrown.
   */
  static create<D extends GuestDevice, G>(layout: GuestLayout, startDevice: StartGuestDevice<D>, makeGuest: (rings: GuestRings<D>) => G): G {
    const n = layout.queueSize;
    const rxRing = placeVirtqueue(n, 0n);
    const txRing = placeVirtqueue(n, alignUp(rxRing.end, 16n));
    const rxPoolGpa = alignUp(txRing.end, PAGE);
    const txPoolGpa = alignUp(rxPoolGpa + BigInt(layout.rxBufferSize) * BigInt(n), PAGE);
    const size = alignUp(txPoolGpa + BigInt(layout.txBufferSize) * BigInt(n), PAGE);
    const made: { close(): void }[] = [];
    try {
      const memory = GuestMemory.create({ regions: [{ gpa: 0n, size }], name: layout.name });
      made.push(memory);
      const fds = [EventFd.create(), EventFd.create(), EventFd.create(), EventFd.create()];
      made.push(...fds);
      const places: [RingPlace, RingPlace] = [place(rxRing), place(txRing)];
      const rxq = Virtqueue.create({ memory, size: n, ...places[RX_QUEUE], kick: fds[0], eventIdx: layout.eventIdx });
      made.push(rxq);
      const txq = Virtqueue.create({ memory, size: n, ...places[TX_QUEUE], kick: fds[2], eventIdx: layout.eventIdx });
      made.push(txq);
      const rings = new GuestRings<D>({
        memory, places, fds, rxq, txq, start: startDevice,
        rxPool: new BufferPool(memory, 0n, rxPoolGpa, layout.rxBufferSize, n),
        txPool: new BufferPool(memory, 0n, txPoolGpa, layout.txBufferSize, n),
      });
      rings.#device = startDevice(rings);
      made.push(rings.#device);
      return makeGuest(rings);
    } catch (err) {
      for (const res of made.reverse()) {
        try {
          res.close();
        } catch {
          // the original error is the one to report
        }
      }
      throw err;
    }
  }

  /** The ring `index` (RX_QUEUE or TX_QUEUE) for a device builder, resuming at its base in `state` (0 without). */
  queue(index: typeof RX_QUEUE | typeof TX_QUEUE, state?: DeviceState): GuestQueueSetup {
    const kick = this.#fds[2 * index];
    const call = this.#fds[2 * index + 1];
    const base = state?.queues.find((q) => q.index === index)?.base ?? 0;
    return { size: this.#size, ...this.#places[index], kick, call, base };
  }

  /** The device running over the rings (a new one after resume()). */
  get device(): D {
    return this.#device;
  }

  /** True between pause() and resume(). */
  get paused(): boolean {
    return !this.#closed && !this.#device.running;
  }

  /**
   * Watches both call eventfds: each wake-up is read (cleared), then
   * onCall('rx' | 'tx') runs. A watch error, or anything the read or onCall
   * throws, goes to onError. Nothing runs once closed.
   */
  watchCalls(onCall: (which: 'rx' | 'tx') => void, onError: (err: unknown) => void): void {
    const watch = (which: 'rx' | 'tx', call: EventFd) =>
      call.watch((err) => {
        if (this.#closed) return;
        try {
          if (err) throw err;
          call.read();
          onCall(which);
        } catch (e) {
          onError(e);
        }
      });
    watch('rx', this.#fds[1]);
    watch('tx', this.#fds[3]);
  }

  /** The call watchers keep the process alive (the default). */
  ref(): void {
    if (this.#closed) return;
    this.#fds[1].ref();
    this.#fds[3].ref();
  }

  /** The call watchers no longer keep the process alive on their own. */
  unref(): void {
    if (this.#closed) return;
    this.#fds[1].unref();
    this.#fds[3].unref();
  }

  /** Posts every free RX buffer (one writable descriptor each); returns how many went into the ring. */
  refillRx(): number {
    const pool = this.rxPool;
    const count = pool.available;
    if (count === 0) return 0;
    const slots = this.#rxSlots;
    for (let i = 0; i < count; i++) {
      const slot = pool.alloc();
      slots[i] = slot;
      this.#rxSegs[3 * i] = pool.offset(slot);
      this.#rxSegs[3 * i + 1] = pool.slotSize;
      this.#rxSegs[3 * i + 2] = SEG_WRITABLE | SEG_END;
    }
    const posted = this.rxq.postEncoded(this.#rxSegs, count, this.#heads, true);
    for (let i = 0; i < posted; i++) this.#rxSlotOf[this.#heads[i]] = slots[i];
    for (let i = posted; i < count; i++) pool.release(slots[i]);
    return posted;
  }

  /** The RX pool slot behind a used head; release it to rxPool once read. */
  takeRx(head: number): number {
    const slot = this.#rxSlotOf[head];
    this.#rxSlotOf[head] = -1;
    return slot;
  }

  /**
   * Publishes `count` TX buffers (segs: SEG_* triples, one per packet) in one
   * go, at most one kick; slots[i] is the txPool slot of packet i. Returns how
   * many the ring took; the caller releases the slots of the rest.
   */
  postTx(segs: Uint32Array, count: number, slots: ArrayLike<number>): number {
    const posted = this.txq.postEncoded(segs, count, this.#heads, true);
    for (let i = 0; i < posted; i++) this.#txSlotOf[this.#heads[i]] = slots[i];
    return posted;
  }

  /** Returns the TX buffers the device has used to txPool; returns how many. */
  reclaimTx(): number {
    const n = this.txq.collectInto(this.#txUsed, this.#size);
    for (let i = 0; i < n; i++) {
      const head = this.#txUsed[2 * i];
      this.txPool.release(this.#txSlotOf[head]);
      this.#txSlotOf[head] = -1;
    }
    return n;
  }

  /**
   * First half of resume(): checks the device is stopped and `state` (default:
   * the stopped device's), then closes the old device. Returns the bases to
   * resume at. Throws (changing nothing) when the device still runs.
   */
  releaseDevice(state: DeviceState | undefined): DeviceState {
    if (this.#device.running) throw invalidArg('resume', 'the guest is not paused (call pause() first)');
    const saved = state === undefined ? this.#device.stop() : checkDeviceState(state);
    this.#device.close();
    return saved;
  }

  /** Second half of resume(): a new device over the same rings at the `saved` bases, then a kick on each ring for what was posted meanwhile. */
  restartDevice(saved: DeviceState): void {
    this.#device = this.#start(this, saved, this.#device);
    this.#fds[0].write(1n);
    this.#fds[2].write(1n);
  }

  /**
   * Stops watching, then closes the device, both rings, the eventfds and the
   * memory (every view detached), trying each step. Returns the first error
   * (undefined when none) so the guest can finish its own teardown before
   * throwing it. Idempotent.
   */
  close(): unknown {
    if (this.#closed) return undefined;
    this.#closed = true;
    let first: unknown;
    const attempt = (fn: () => void) => {
      try {
        fn();
      } catch (err) {
        first ??= err;
      }
    };
    for (const fd of this.#fds) attempt(() => fd.unwatch());
    attempt(() => this.#device.close());
    attempt(() => this.rxq.close());
    attempt(() => this.txq.close());
    for (const fd of this.#fds) attempt(() => fd.close());
    attempt(() => this.memory.close());
    return first;
  }
}

function place(r: RingPlace): RingPlace {
  return { desc: r.desc, avail: r.avail, used: r.used };
}

/**
 * The base of the userspace guests: one process plays a virtio driver over
 * GuestRings and the vhost device running on them. It owns the lifecycle:
 * start (RX ring filled, call eventfds watched), ref()/unref(), pause() /
 * resume() onto a new device over the same rings, close() /
 * [Symbol.dispose], the closed checks, and asynchronous failures ('error',
 * then close). A variant implements onCall() and may override the hooks
 * (refillRx, onDeviceReleased, beforeClose, afterClose).
 */
export abstract class UserspaceGuest<D extends GuestDevice> extends EventEmitter implements Disposable {
  readonly #rings: GuestRings<D>;
  /** How closed errors name the guest ('VirtioNetGuest'). */
  readonly #name: string;
  #closed = false;

  protected constructor(name: string, rings: GuestRings<D>) {
    super();
    this.#name = name;
    this.#rings = rings;
  }

  /** The memory, rings and device this guest drives. */
  protected get rings(): GuestRings<D> {
    return this.#rings;
  }

  /** True once closed (by close(), or after a failure). */
  get closed(): boolean {
    return this.#closed;
  }

  /** True between pause() and resume(). */
  get paused(): boolean {
    return this.#rings.paused;
  }

  /**
   * Starts the guest once built: TX calls off (TX buffers are reclaimed when
   * sending; calls only while waiting for space), every RX buffer posted, both
   * call eventfds watched (ring and syscall failures close the guest).
   */
  protected start(): void {
    this.#rings.txq.disableCallbacks();
    this.refillRx();
    this.#rings.watchCalls((which) => this.onCall(which), (e) => this.fail(e));
  }

  /** A call eventfd woke up (already read). */
  protected abstract onCall(which: 'rx' | 'tx'): void;

  /** Posts every free RX buffer; returns how many went into the ring. */
  protected refillRx(): number {
    return this.#rings.refillRx();
  }

  /** Throws ERR_VHOST_CLOSED naming `method` once the guest is closed. */
  protected checkOpen(method: string): void {
    if (this.#closed) throw closedError(`${this.#name} (${method})`);
  }

  /** Ring and syscall failures close the guest ('error' first when someone listens); anything else (a throwing user listener) propagates. */
  protected fail(e: unknown): void {
    failOrRethrow(this, e);
  }

  /** The call watchers keep the process alive (the default). */
  ref(): void {
    this.#rings.ref();
  }

  /** The guest no longer keeps the process alive on its own. */
  unref(): void {
    this.#rings.unref();
  }

  /**
   * Stops the device and returns each ring's saved base (GET_VRING_BASE).
   * The guest stays usable meanwhile: what it sends waits in the TX ring.
   * Calling it again returns the same state. Throws ERR_VHOST_CLOSED after close().
   */
  pause(): DeviceState {
    this.checkOpen('pause');
    const state = this.#rings.device.stop();
    this.onPause();
    return state;
  }

  /** pause(): the device is stopped (called on every pause() call). */
  protected onPause(): void {}

  /**
   * Brings a paused guest back on a new device over the same memory, rings
   * and eventfds, each ring resuming at its base from `state` (default: the
   * one pause() returned), then kicks both rings so what was posted
   * meanwhile moves. If the new device cannot be built the guest closes and
   * the error is thrown.
   */
  resume(state?: DeviceState): void {
    this.checkOpen('resume');
    const saved = this.#rings.releaseDevice(state);
    this.onDeviceReleased();
    try {
      this.#rings.restartDevice(saved);
    } catch (err) {
      this.close();
      throw err;
    }
  }

  /** resume(): the old device is closed and the new one not built yet. */
  protected onDeviceReleased(): void {}

  /**
   * Closes the device, the eventfds and the guest memory (every view
   * detached), then emits 'close'. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.beforeClose();
    this.#closed = true;
    const error = this.#rings.close();
    this.afterClose();
    this.emit('close');
    if (error !== undefined) throw error;
  }

  /** close(): still open, the device still running. */
  protected beforeClose(): void {}

  /** close(): the rings are closed, 'close' not emitted yet. */
  protected afterClose(): void {}

  /** close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
