// EventFd: the kernel counter used for vhost kicks (guest → vhost), calls
// (vhost → guest) and errors, and for KVM ioeventfd/irqfd. Created
// O_CLOEXEC | O_NONBLOCK; readability is watched with uv_poll on this
// thread's own loop (native OwnedFd.watch).
import { getSystemErrorName } from 'node:util';
import { checkBool, checkFunction, checkObject, plain, toBigInt } from './check';
import { invalidArg, VhostError } from './errors';
import { FdOwner } from './fd';
import { native, POLL_READABLE } from './native';

/** Largest value an eventfd counter can hold; write() refuses anything above. */
export const EVENTFD_MAX = 0xffff_ffff_ffff_fffen;

/** Options of EventFd.create(). */
export interface EventFdOptions {
  /**
   * EFD_SEMAPHORE: each read() returns 1n and decrements the counter by one,
   * instead of returning the whole counter and resetting it to zero.
   */
  semaphore?: boolean;
  /** Initial counter value, 0..0xffffffff (the kernel takes an unsigned int). Default 0. */
  initval?: number | bigint;
}

/** Called on the loop when the eventfd is readable; `err` is set if polling failed. */
export type EventFdWatcher = (err?: VhostError) => void;

/** An eventfd counter (eventfd(2)). One object owns the fd; close() is idempotent. */
export class EventFd extends FdOwner {
  /** Creates an eventfd with EFD_CLOEXEC | EFD_NONBLOCK (and EFD_SEMAPHORE if asked). */
  static create(options: EventFdOptions = {}): EventFd {
    checkObject(options, 'options');
    const semaphore = checkBool(options.semaphore ?? false, 'options.semaphore', null);
    const initval = toBigInt(options.initval ?? 0, 'options.initval');
    if (initval < 0n || initval > 0xffff_ffffn) {
      throw invalidArg('options.initval', `must be in 0..0xffffffff, got ${plain(initval)}`, 'ERR_VHOST_OUT_OF_RANGE');
    }
    return new EventFd(native.eventfdCreate(Number(initval), semaphore));
  }

  private constructor(handle: ReturnType<typeof native.eventfdCreate>) {
    super(handle);
  }

  /**
   * Reads the counter: its whole value (then zero), or 1n in semaphore mode.
   * Returns null when the counter is zero (the read would block).
   */
  read(): bigint | null {
    return native.eventfdRead(this.handle);
  }

  /**
   * Adds `value` (1..0xfffffffffffffffe) to the counter. Returns false, adding
   * nothing, when the sum would exceed 0xfffffffffffffffe.
   */
  write(value: bigint | number = 1n): boolean {
    const v = toBigInt(value, 'value');
    if (v < 1n || v > EVENTFD_MAX) {
      throw invalidArg('value', `must be in 1..0xfffffffffffffffe, got ${plain(v)}`, 'ERR_VHOST_OUT_OF_RANGE');
    }
    return native.eventfdWrite(this.handle, v);
  }

  /**
   * Calls `cb` on this thread's loop whenever the counter is non-zero. The
   * poll is level-triggered: `cb` should read() the counter, or it is called
   * again on the next loop iteration. Calling watch() again replaces `cb`.
   * The watcher keeps the process alive unless unref() is called.
   */
  watch(cb: EventFdWatcher): void {
    checkFunction(cb, 'cb');
    this.handle.watch(POLL_READABLE, (status) => {
      if (status < 0) {
        const code = getSystemErrorName(status);
        cb(new VhostError(`${code}: uv_poll '${this.path}'`, { code, errno: status, syscall: 'uv_poll', path: this.path }));
      } else {
        cb();
      }
    });
  }

  /** Stops watching. A no-op when not watching, and after close() (which stops the watcher). */
  unwatch(): void {
    if (!this.closed) this.handle.unwatch();
  }

  /** The watcher keeps the process alive (the default). */
  ref(): void {
    this.handle.ref();
  }

  /** The watcher no longer keeps the process alive on its own. */
  unref(): void {
    this.handle.unref();
  }
}
