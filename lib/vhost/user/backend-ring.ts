// One started ring of a vhost-user back-end, as a device sees it: the
// device-side queue (DeviceQueue, native) plus the call eventfd to signal.
// Every pop/complete goes through here so that a queue the guest broke is
// noticed at once: the err eventfd is signalled and the back-end emits
// 'queue-broken', whatever the device does next.
import { VhostError } from '../../core/errors';
import { native, type OwnedFd } from '../../core/native';
import type { ReceivedFd } from '../../core/unix-socket';
import type { DeviceChain, DeviceQueue } from '../../virtio/device-queue';

/** The fds of one ring as the front-end last set them (null: none, NOFD). */
export interface RingFds {
  kick: ReceivedFd | null;
  call: ReceivedFd | null;
  err: ReceivedFd | null;
}

/** Chains a ring processes per kick before yielding the event loop (the rest on the next turn). */
export const RING_BUDGET_MULTIPLIER = 4;

/** Writes 1 to an eventfd the front-end gave; false when it cannot (full counter, not an eventfd). */
function signal(fd: ReceivedFd | null): boolean {
  if (fd === null || fd.closed) return false;
  try {
    return native.eventfdWrite(fd.nativeHandle as OwnedFd, 1n);
  } catch {
    return false; // a front-end that passed something else than an eventfd: nothing to wake
  }
}

/** A started ring handed to a VhostUserDevice: pop chains, complete them, flush (which signals the driver). */
export class VhostUserRing {
  /** The ring's index (for net: 0 RX, 1 TX). */
  readonly index: number;
  /** The device-side queue (lib/virtio/device-queue.ts). */
  readonly queue: DeviceQueue;
  /** Calls signalled (the driver was interrupted). */
  calls = 0;
  readonly #fds: RingFds;
  readonly #onBroken: (ring: VhostUserRing, err: VhostError) => void;
  #stopped = false;
  #reported = false;

  /** @internal Made by VhostUserBackend when a ring starts. */
  constructor(index: number, queue: DeviceQueue, fds: RingFds, onBroken: (ring: VhostUserRing, err: VhostError) => void) {
    this.index = index;
    this.queue = queue;
    this.#fds = fds;
    this.#onBroken = onBroken;
  }

  /** False once the ring stopped or broke: pop() returns null then. */
  get running(): boolean {
    return !this.#stopped && this.queue.broken === null;
  }

  /** Next available chain, or null (none, stopped, or the guest broke the queue: then reported). */
  pop(): DeviceChain | null {
    if (this.#stopped) return null;
    const chain = this.queue.pop();
    if (chain === null) this.#checkBroken();
    return chain;
  }

  /** Writes `data` into the chain's writable buffers and puts it on the used ring (visible after flush()). */
  complete(head: number, data?: Uint8Array | readonly Uint8Array[]): number {
    if (this.#stopped) throw new VhostError(`ERR_VHOST_RING_STOPPED: ring ${this.index} stopped; its chains are gone`, { code: 'ERR_VHOST_RING_STOPPED', queue: this.index });
    const n = this.queue.complete(head, data);
    this.#checkBroken();
    return n;
  }

  /** Publishes completions; signals the call eventfd when the driver wants it. Returns whether it signalled. */
  flush(): boolean {
    if (this.#stopped) return false;
    const wanted = this.queue.flush();
    this.#checkBroken();
    if (wanted && signal(this.#fds.call)) {
      this.calls++;
      return true;
    }
    return false;
  }

  /**
   * Pops every available chain into `handle`, with notifications off while
   * it runs and re-checked at the end (EVENT_IDX race), at most `budget`
   * chains; then flush(). Returns true when the budget ran out (call again
   * on a later turn of the loop).
   */
  drain(handle: (chain: DeviceChain) => void, budget = this.queueSizeHint * RING_BUDGET_MULTIPLIER): boolean {
    let done = 0;
    for (;;) {
      this.queue.enableNotify(false);
      for (let c = this.pop(); c !== null; c = this.pop()) {
        handle(c);
        if (++done >= budget) {
          this.flush();
          return this.running;
        }
      }
      if (!this.running || !this.queue.enableNotify(true)) break;
    }
    this.flush();
    return false;
  }

  /** @internal The ring size the back-end started it with (bounds drain()). */
  queueSizeHint = 256;

  /** @internal Breaks the ring from outside (a device callback threw): reported like a guest fault. */
  fail(err: VhostError): void {
    if (this.#reported || this.#stopped) return;
    this.#reported = true;
    this.#onBroken(this, err);
  }

  /** @internal The back-end stopped the ring. */
  stop(): void {
    this.#stopped = true;
  }

  /** @internal Signals the err eventfd (the back-end does this when the queue broke). */
  signalError(): boolean {
    return signal(this.#fds.err);
  }

  #checkBroken(): void {
    const err = this.queue.broken;
    if (err !== null) this.fail(err);
  }
}
