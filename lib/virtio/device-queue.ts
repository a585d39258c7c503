// The device side of a split virtqueue (what a vhost-user back-end runs) over
// the front-end's memory (DeviceMemory). The ring work and every check of what
// the untrusted driver wrote are native (native/device_queue.cc); this file
// checks the options and gives the queue a typed face.
import { checkBool, checkInt, checkNonEmptyString, checkObject, describe, readOptions, toU64 } from '../core/check';
import { closedError, VhostError } from '../core/errors';
import { native, type NativeDeviceQueue } from '../core/native';
import { deviceMemoryHandle, type DeviceMemory } from './device-memory';
import { validateQueueSize } from './vring';

/** Where a queue's rings are and what was negotiated (VHOST_USER_SET_VRING_NUM / _ADDR / _BASE, features). */
export interface DeviceQueueOptions {
  /** A power of two, 1..32768. */
  size: number;
  /** Front-end virtual addresses of the rings (SET_VRING_ADDR), translated through the regions' userAddr. */
  desc: bigint;
  avail: bigint;
  used: bigint;
  /** The next avail index to consume (SET_VRING_BASE). Default 0. */
  base?: number;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. Default false. */
  eventIdx?: boolean;
  /** VIRTIO_RING_F_INDIRECT_DESC negotiated (else an indirect descriptor breaks the queue). Default false. */
  indirect?: boolean;
  /** Most device-readable bytes one chain may carry (they are copied out); more breaks the queue. Default 16 MiB. */
  maxReadable?: number;
  /** Names the queue in errors, e.g. 'rx queue 0'. Default 'device queue'. */
  name?: string;
}

/** A chain popped from the avail ring. */
export interface DeviceChain {
  /** The head descriptor id: pass it to complete(). */
  head: number;
  /** A copy of every device-readable byte of the chain, in order. */
  readable: Buffer;
  /** Total bytes of the chain's device-writable buffers. */
  writable: number;
}

/** Why a queue stopped: code ERR_VHOST_RING_BROKEN, the ring field at fault and the value the driver put there. */
export interface RingBrokenError extends VhostError {
  /** The ring field, e.g. 'avail.idx', 'desc[3].next', 'desc[0] indirect[2].flags'. */
  field: string;
  /** The value read from it. */
  value: bigint;
}

/** Default DeviceQueueOptions.maxReadable. */
export const DEVICE_QUEUE_MAX_READABLE = 16 << 20;

/**
 * The device side of a split virtqueue. pop() gives the next available chain
 * (readable bytes copied out), complete() writes into its writable buffers and
 * queues the used entry, flush() publishes them and says whether the driver
 * wants an interrupt. Whatever the driver writes, the queue never reads or
 * writes outside the mapped regions: a malformed ring sets `broken` and the
 * queue stops. After its memory is closed, pop() gives null and complete()
 * throws ERR_VHOST_CLOSED; after close() every method throws it, while
 * nextAvail, inflight and broken stay readable (GET_VRING_BASE).
 */
export class DeviceQueue implements Disposable {
  /** The queue size. */
  readonly size: number;
  /** The name used in errors. */
  readonly name: string;
  readonly #q: NativeDeviceQueue;
  readonly #meta: Float64Array;
  #broken: RingBrokenError | null = null;

  /**
   * Translates the rings in `memory`: ERR_VHOST_GUEST_ADDRESS (the ring and
   * address named) when one is not inside a mapped region, ERR_VHOST_INVALID_ARG
   * / ERR_VHOST_OUT_OF_RANGE for a bad size, base or alignment.
   */
  constructor(memory: DeviceMemory, options: DeviceQueueOptions) {
    const handle = deviceMemoryHandle(memory, 'memory');
    const o = readOptions(checkObject<DeviceQueueOptions>(options, 'options'), ['size', 'desc', 'avail', 'used', 'base', 'eventIdx', 'indirect', 'maxReadable', 'name']);
    const size = validateQueueSize(o.size, 'options.size');
    const name = o.name === undefined ? 'device queue' : checkNonEmptyString(o.name, 'options.name', describe);
    this.#q = native.deviceQueueCreate(handle, {
      size,
      desc: toU64(o.desc, 'options.desc', describe),
      avail: toU64(o.avail, 'options.avail', describe),
      used: toU64(o.used, 'options.used', describe),
      base: checkInt(o.base ?? 0, 'options.base', 0, 0xffff, describe),
      eventIdx: checkBool(o.eventIdx, 'options.eventIdx', describe),
      indirect: checkBool(o.indirect, 'options.indirect', describe),
      maxReadable: checkInt(o.maxReadable ?? DEVICE_QUEUE_MAX_READABLE, 'options.maxReadable', 0, 0xffff_ffff, describe),
      name,
    });
    this.size = size;
    this.name = name;
    this.#meta = new Float64Array(1 + 3 * size);
  }

  /** The next available chain, or null when there is none, the queue is broken or its memory is closed. */
  pop(): DeviceChain | null {
    return this.#take(this.#live('pop'), 1)[0] ?? null;
  }

  /**
   * Up to `max` available chains (fewer when the ring runs dry or the queue
   * breaks). Their `readable` buffers are slices of one allocation per batch.
   */
  popBatch(max: number): DeviceChain[] {
    const q = this.#live('popBatch');
    return this.#take(q, checkInt(max, 'max', 0, 0xffff_ffff, describe));
  }

  #take(q: NativeDeviceQueue, max: number): DeviceChain[] {
    const meta = this.#meta;
    const bytes = q.popBatch(max, meta);
    const out: DeviceChain[] = [];
    if (bytes === null) return out;
    const n = meta[0];
    for (let k = 0, off = 0; k < n; k++) {
      const len = meta[2 + 3 * k];
      out.push({ head: meta[1 + 3 * k], readable: bytes.subarray(off, off + len), writable: meta[3 + 3 * k] });
      off += len;
    }
    return out;
  }

  /**
   * Writes `data` (one buffer, or several concatenated) into the chain's
   * writable buffers in order and queues the used entry {id: head, len: bytes
   * written}; the driver sees it after flush(). Throws (completing nothing)
   * when head is not in flight (ERR_VHOST_INVALID_ARG), data exceeds the
   * writable space (ERR_VHOST_OUT_OF_RANGE), or the chain's buffers are no
   * longer in memory (the queue breaks: its ERR_VHOST_RING_BROKEN). Returns the bytes written.
   */
  complete(head: number, data?: Uint8Array | readonly Uint8Array[]): number {
    const q = this.#live('complete');
    const broken = this.broken;
    if (broken) throw broken;
    const written = q.complete(checkInt(head, 'head', 0, 0xffff, describe), data);
    if (written < 0) throw this.broken!;
    return written;
  }

  /** Publishes the used entries (release order). True when the driver asked for an interrupt: signal the call eventfd then. */
  flush(): boolean {
    return this.#live('flush').flush();
  }

  /**
   * Kick suppression on the device's side (VRING_USED_F_NO_NOTIFY, or
   * avail_event with EVENT_IDX). enableNotify(true) returns true when chains
   * became available meanwhile: pop again rather than wait for a kick.
   */
  enableNotify(on: boolean): boolean {
    const q = this.#live('enableNotify');
    return q.enableNotify(checkBool(on, 'on', describe));
  }

  /**
   * Moves the queue to a new memory table (SET_MEM_TABLE). The rings are
   * translated in it first (ERR_VHOST_GUEST_ADDRESS: the queue keeps the old
   * one). Chains in flight are written through the new table at complete().
   */
  setMemory(memory: DeviceMemory): void {
    const q = this.#live('setMemory');
    q.setMemory(deviceMemoryHandle(memory, 'memory'));
  }

  /** The next avail index the device will consume: the answer to GET_VRING_BASE. */
  get nextAvail(): number {
    return this.#q.nextAvail;
  }

  /** The used index the next completion gets (flush() publishes up to it). */
  get usedIdx(): number {
    return this.#q.usedIdx;
  }

  /** Chains popped and not yet completed. */
  get inflight(): number {
    return this.#q.inflight;
  }

  /** Why the queue stopped (code ERR_VHOST_RING_BROKEN, field and value named), or null. Set once. */
  get broken(): RingBrokenError | null {
    if (this.#broken) return this.#broken;
    const b = this.#q.broken;
    if (!b) return null;
    this.#broken = Object.assign(new VhostError(b.message, { code: 'ERR_VHOST_RING_BROKEN' }), { field: b.field, value: b.value });
    return this.#broken;
  }

  /** True once close() has run. */
  get closed(): boolean {
    return this.#q.closed;
  }

  /** Stops the queue and forgets its chains in flight; the memory stays mapped. Idempotent. */
  close(): void {
    this.#q.close();
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #live(what: string): NativeDeviceQueue {
    if (this.#q.closed) throw closedError(`DeviceQueue ${this.name} (${what})`);
    return this.#q;
  }
}
