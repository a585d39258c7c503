// Base of every library object that owns a kernel fd: explicit, idempotent
// close(), `using` support, and use-after-close errors. The native OwnedFd
// closes the fd on garbage collection as a safety net only.
import './dispose';
import { closedError } from './errors';
import type { OwnedFd } from './native';

/** An fd argument: a library object owning an fd (EventFd, Tap), a raw fd number, or null for "none". */
export type FdLike = FdOwner | number | null;

/** Base of every object that owns one kernel fd: explicit, idempotent close(), `using`, and ERR_VHOST_CLOSED on use after close. */
export abstract class FdOwner implements Disposable {
  #handle: OwnedFd;

  protected constructor(handle: OwnedFd) {
    this.#handle = handle;
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
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
