// The running-device base: what a builder started. Owns the backend; stop()
// quiesces it (the device's own step) and returns the ring bases; dirty
// logging on and off; close() stops and closes; `using` works.
import { closedError, invalidArg } from '../core/errors';
import { FdOwner } from '../core/fd';
import { uncheckedBackend, type VhostBackend } from './backend';
import { DirtyLog, startDirtyLog, stopDirtyLog, type DirtyLogQueue } from './dirty-log';
import type { CheckedRegion, DeviceState, QueuePlan } from './plan';
import { StepRunner } from './steps';

/** What a running device was started with. */
export interface RunningInit<D> {
  device: D;
  features: bigint;
  regions: CheckedRegion[];
  queues: QueuePlan[];
  trace: string[];
}

/**
 * A device the builder started. Owns the device (`device`, which stays
 * available for low-level calls and is closed with this object). stop()
 * quiesces it and returns the ring bases; close() stops (if running) and
 * closes; `using` works.
 */
export abstract class RunningVhostDevice<D extends VhostBackend> implements Disposable {
  /** The low-level device, for calls the builder does not cover. Closed with this object. */
  readonly device: D;
  /** What the running device drives: the device's unchecked form (every argument came from the checked plan). */
  protected readonly backend: D;
  /** The word given to VHOST_SET_FEATURES at start (without VHOST_F_LOG_ALL). */
  readonly features: bigint;
  /** The steps start() issued, in order ('SET_VRING_NUM[0]', ...). For diagnostics and tests. */
  readonly trace: readonly string[];
  readonly #queues: QueuePlan[];
  readonly #regions: CheckedRegion[];
  #stopped: DeviceState | null = null;
  #log: DirtyLog | null = null;
  #logging = false;
  #closed = false;

  protected constructor(init: RunningInit<D>) {
    this.device = init.device;
    this.backend = uncheckedBackend(init.device);
    // Over an fd (the kernel transport): a collected running device warns and closes like its device does.
    if (init.device instanceof FdOwner) init.device.sharedWith(this, new.target);
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

  /** True after close() (or once the device itself was closed). */
  get closed(): boolean {
    return this.#closed || this.device.closed;
  }

  /** The device node or socket path. */
  get path(): string {
    return this.device.path;
  }

  /** The device's fd (-1 for a transport without one); throws ERR_VHOST_CLOSED after close(). */
  get fd(): number {
    this.checkOpen();
    const fd = (this.device as { readonly fd?: unknown }).fd;
    return typeof fd === 'number' ? fd : -1;
  }

  /** Throws ERR_VHOST_CLOSED after close(). */
  protected checkOpen(): void {
    if (this.closed) throw closedError(this.constructor.name, this.device.path);
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
    const queues = this.#queues.map((q) => ({ index: q.index, base: runner.run('GET_VRING_BASE', q.index, () => this.backend.getVringBase(q.index)) }));
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
    startDirtyLog(this.backend, this.#log, this.features, this.#logQueues(), runner.step);
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
    stopDirtyLog(this.backend, this.features, this.#logQueues(), runner.step);
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
  close(): void {
    if (this.closed) {
      this.#closed = true;
      return;
    }
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
      this.#closed = true;
      this.device.close();
      this.#log?.close();
      this.#log = null;
      this.#logging = false;
    }
  }

  /** close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
