// Base of every library object that owns a kernel fd: explicit, idempotent
// close(), `using` support, and use-after-close errors. An object collected
// while still open is closed with a LINUX_VHOST_GC_CLOSE warning naming it
// (gc-warning.ts); the native OwnedFd's finalizer stays as the last safety net.
import './dispose';
import { closedError } from './errors';
import { unwatchForGc, watchForGc, type GcRecord, type StackAnchor } from './gc-warning';
import type { OwnedFd } from './native';

/** One GC record per fd, shared by the objects over it (a running device and its device, a Tap and its first queue). */
const gcRecords = new WeakMap<OwnedFd, GcRecord>();

function gcRecordFor(owner: object, handle: OwnedFd, constructorOpt: StackAnchor): GcRecord {
  const known = gcRecords.get(handle);
  if (known) return watchForGc(owner, known, constructorOpt);
  const record = watchForGc(owner, {
    describe: () => `fd ${handle.fd}, '${handle.path}'`,
    isOpen: () => !handle.closed,
    close: () => handle.close(),
  }, constructorOpt);
  gcRecords.set(handle, record);
  return record;
}

/** An fd argument: a library object owning an fd (EventFd, Tap), a raw fd number, or null for "none". */
export type FdLike = FdOwner | number | null;

/** Base of every object that owns one kernel fd: explicit, idempotent close(), `using`, and ERR_VHOST_CLOSED on use after close. */
export abstract class FdOwner implements Disposable {
  #handle: OwnedFd;
  #gc: GcRecord;

  protected constructor(handle: OwnedFd) {
    this.#handle = handle;
    this.#gc = gcRecordFor(this, handle, new.target);
  }

  /**
   * @internal Another object over this fd that owns it (a running device over
   * its device): the fd's garbage-collection record counts it too, so the fd
   * is closed (with a warning naming both) only once every owner is gone.
   */
  sharedWith(owner: object, anchor: StackAnchor): void {
    gcRecordFor(owner, this.#handle, anchor);
  }

  /** Adds what identifies this object beyond its fd and path (a vsock device's CID) to a garbage-collection warning. */
  protected noteForGc(note: string): void {
    this.#gc.note = note;
  }

  /** The fd number; throws ERR_VHOST_CLOSED after close(). */
  get fd(): number {
    return this.handle.fd;
  }

  /** The device path (or label) this object was opened with. */
  get path(): string {
    return this.#handle.path;
  }

  /** True once close() has run. */
  get closed(): boolean {
    return this.#handle.closed;
  }

  /** The live native handle; throws ERR_VHOST_CLOSED after close(). */
  protected get handle(): OwnedFd {
    if (this.#handle.closed) throw closedError(this.constructor.name, this.#handle.path);
    return this.#handle;
  }

  /** The native handle for other library modules (for example to pass as a kick fd). @internal */
  get nativeHandle(): OwnedFd {
    return this.handle;
  }

  /** Closes the fd. Idempotent. */
  close(): void {
    this.#handle.close();
    unwatchForGc(this.#gc);
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
