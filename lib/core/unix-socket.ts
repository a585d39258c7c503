// Unix domain sockets that pass file descriptors (SCM_RIGHTS): what a control
// plane needs to hand an fd to another process (a vhost-user back-end gets
// guest memory and eventfds this way, a VMM's monitor gets taps and vhost fds).
// Sockets are nonblocking and close-on-exec; received fds arrive close-on-exec
// (MSG_CMSG_CLOEXEC), each owned by its own ReceivedFd. Waiting is done on the
// event loop (watch(), no thread per socket) or, for request/reply protocols
// that must answer synchronously, by a bounded poll (waitReadable()).
import * as fs from 'node:fs';
import { getSystemErrorName } from 'node:util';
import { checkFunction, checkInt, checkNonEmptyString, checkObject, checkOneOf, describe } from './check';
import { invalidArg, VhostError } from './errors';
import { FdOwner } from './fd';
import { native, POLL_READABLE, POLL_WRITABLE, type FdArg, type OwnedFd } from './native';

/** A unix socket's type: a byte stream, or messages with boundaries. */
export type UnixSocketType = 'stream' | 'seqpacket';

const SOCK_TYPES: Record<UnixSocketType, number> = { stream: 1, seqpacket: 5 };
/** The kernel's limit of fds per message (SCM_MAX_FD). */
export const MAX_FDS_PER_MESSAGE = 253;

/** poll(2) bits as unixPoll reports them. */
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;

/** An fd to pass: a library object that owns one (EventFd, ReceivedFd, ...) or a raw fd number. */
export type PassableFd = FdOwner | number;

/** An fd that came in a message. Close it when done (a finalizer closes it otherwise). */
export class ReceivedFd extends FdOwner {
  /** @internal */
  constructor(handle: OwnedFd) {
    super(handle);
  }
}

/** What receive() got: the byte count (0 at end of stream) and the fds that came with them. */
export interface UnixMessage {
  bytes: number;
  fds: ReceivedFd[];
}

/** Called on the loop when the socket is readable (or hung up); `err` when polling failed. */
export type UnixWatcher = (err?: VhostError) => void;

function checkType(type: unknown): number {
  return SOCK_TYPES[checkOneOf(type ?? 'stream', 'options.type', ['stream', 'seqpacket'] as const, describe)];
}

function toFdArg(value: unknown, i: number): FdArg {
  if (value instanceof FdOwner) return value.nativeHandle; // ERR_VHOST_CLOSED when closed
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 0x7fff_ffff) return value;
  throw invalidArg(`fds[${i}]`, `must be an FdOwner or an fd number >= 0, got ${describe(value)}`);
}

function pollError(status: number, path: string): VhostError {
  const code = getSystemErrorName(status);
  return new VhostError(`${code}: uv_poll '${path}'`, { code, errno: status, syscall: 'uv_poll', path });
}

/** Watching shared by sockets and servers: level-triggered, on this thread's loop. */
abstract class Watchable extends FdOwner {
  /**
   * Calls `cb` on the loop whenever the socket is readable (data, a pending
   * connection, or the peer hung up). Level-triggered: `cb` should read, or it
   * runs again next iteration. Calling again replaces `cb`.
   */
  watch(cb: UnixWatcher, options: { writable?: boolean } = {}): void {
    checkFunction(cb, 'cb');
    const events = POLL_READABLE | (options.writable ? POLL_WRITABLE : 0);
    this.handle.watch(events, (status) => cb(status < 0 ? pollError(status, this.path) : undefined));
  }

  /** Stops watching; a no-op when not watching or closed. */
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

/** A connected AF_UNIX stream or seqpacket socket. */
export class UnixSocket extends Watchable {
  readonly type: UnixSocketType;

  private constructor(handle: OwnedFd, type: UnixSocketType) {
    super(handle);
    this.type = type;
  }

  /**
   * Connects to the socket at `path`. A unix connect completes at once: ENOENT
   * (nothing there), ECONNREFUSED (no listener, or not a socket), EAGAIN
   * (the listener's backlog is full) are thrown with the path. Nothing is left
   * open on failure.
   */
  static connect(path: string, options: { type?: UnixSocketType } = {}): UnixSocket {
    checkNonEmptyString(path, 'path', describe);
    checkObject(options, 'options');
    const type = checkType(options.type);
    const handle = native.unixSocket(type, path);
    try {
      native.unixConnect(handle, path);
    } catch (err) {
      handle.close();
      throw err;
    }
    return new UnixSocket(handle, options.type ?? 'stream');
  }

  /** Two connected sockets (socketpair), e.g. to hand one end to a child process. */
  static pair(type: UnixSocketType = 'stream'): [UnixSocket, UnixSocket] {
    const t = checkType(type);
    const [a, b] = native.unixSocketPair(t, `socketpair:${type}`);
    return [new UnixSocket(a, type), new UnixSocket(b, type)];
  }

  /**
   * Takes ownership of a connected unix socket this process already holds by
   * number (inherited, or from a ReceivedFd's release); it must be nonblocking
   * for watch() users, which this does not change.
   */
  static fromFd(fd: number, options: { type?: UnixSocketType; label?: string } = {}): UnixSocket {
    checkInt(fd, 'fd', 0, 0x7fff_ffff);
    checkObject(options, 'options');
    checkType(options.type);
    const handle = native.fdAdopt(fd, options.label ?? `unix-fd:${fd}`);
    return new UnixSocket(handle, options.type ?? 'stream');
  }

  /** @internal For UnixServer.accept(). */
  static accepted(handle: OwnedFd, type: UnixSocketType): UnixSocket {
    return new UnixSocket(handle, type);
  }

  /**
   * Sends `data` with `fds` (at most 253) passed alongside; the receiver gets
   * its own duplicates and this process keeps its fds. Returns the bytes
   * written (a stream may take fewer; the fds went with the first byte), or
   * null when the send buffer is full (nothing sent). EPIPE once the peer closed.
   */
  send(data: Uint8Array, fds: readonly PassableFd[] = []): number | null {
    if (!(data instanceof Uint8Array)) throw invalidArg('data', 'must be a Uint8Array');
    if (!Array.isArray(fds)) throw invalidArg('fds', 'must be an array');
    if (fds.length > MAX_FDS_PER_MESSAGE) {
      throw invalidArg('fds', `must hold at most ${MAX_FDS_PER_MESSAGE} fds per message (SCM_MAX_FD), got ${fds.length}`, 'ERR_VHOST_OUT_OF_RANGE');
    }
    if (fds.length > 0 && data.length === 0) throw invalidArg('data', 'must hold at least one byte to carry fds');
    const args = fds.map(toFdArg);
    return native.unixSendMsg(this.handle, data, args);
  }

  /**
   * Sends all of `data` (`fds` with the first byte), waiting with a bounded
   * poll(2) that blocks this thread while the send buffer is full: for
   * synchronous request/reply protocols only. True once everything went,
   * false when `timeoutMs` ran out first (part may have gone: the stream is
   * then out of step). send()'s errors (EPIPE, ...) are thrown as they come.
   */
  sendAll(data: Uint8Array, fds: readonly PassableFd[], timeoutMs: number): boolean {
    checkInt(timeoutMs, 'timeoutMs', 0, 0x7fff_ffff);
    const deadline = Date.now() + timeoutMs;
    let sent = 0;
    while (sent < data.length) {
      const n = this.send(sent === 0 ? data : data.subarray(sent), sent === 0 ? fds : []);
      if (n === null) {
        const left = deadline - Date.now();
        if (left <= 0 || !this.waitWritable(left)) return false;
        continue;
      }
      sent += n;
    }
    return true;
  }

  /**
   * Receives into `buf`, accepting up to `maxFds` fds (default 0: any fd sent
   * is an error). Returns null when nothing is pending, bytes 0 at end of
   * stream. More fds than `maxFds`, or a seqpacket message longer than `buf`,
   * throws ERR_VHOST_TRUNCATED with every fd that came already closed (on a
   * stream the bytes read with them are lost too: the stream is out of step).
   */
  receive(buf: Uint8Array, maxFds = 0): UnixMessage | null {
    if (!(buf instanceof Uint8Array)) throw invalidArg('buf', 'must be a Uint8Array');
    checkInt(maxFds, 'maxFds', 0, MAX_FDS_PER_MESSAGE);
    const got = native.unixRecvMsg(this.handle, buf, maxFds);
    if (got === null) return null;
    return { bytes: got.bytes, fds: got.fds.map((h) => new ReceivedFd(h)) };
  }

  /**
   * Waits up to `timeoutMs` for the socket to be readable (or hung up), with a
   * bounded poll(2) that blocks this thread: for synchronous request/reply
   * protocols only. True when readable or hung up, false when the time ran out.
   */
  waitReadable(timeoutMs: number): boolean {
    checkInt(timeoutMs, 'timeoutMs', 0, 0x7fff_ffff);
    return native.unixPoll(this.handle, POLLIN, timeoutMs) !== 0;
  }

  /** Waits up to `timeoutMs` for room in the send buffer; false when the time ran out. */
  waitWritable(timeoutMs: number): boolean {
    checkInt(timeoutMs, 'timeoutMs', 0, 0x7fff_ffff);
    return native.unixPoll(this.handle, POLLOUT, timeoutMs) !== 0;
  }

  /** Ends one or both directions: 'read', 'write' or 'both'. */
  shutdown(how: 'read' | 'write' | 'both' = 'both'): void {
    const h = checkOneOf(how, 'how', ['read', 'write', 'both'] as const, describe);
    native.unixShutdown(this.handle, { read: 0, write: 1, both: 2 }[h]);
  }

  /** The peer's pid, uid and gid as the kernel recorded them at connect (SO_PEERCRED). */
  peerCredentials(): { pid: number; uid: number; gid: number } {
    return native.unixPeerCred(this.handle);
  }
}

/** Options of UnixServer.listen(). */
export interface UnixServerOptions {
  type?: UnixSocketType;
  /** listen(2) backlog; default 16. */
  backlog?: number;
  /** Mode of the socket file (chmod after bind); default 0o600: only this user may connect. */
  mode?: number;
}

/** A listening AF_UNIX socket at a filesystem path; close() removes the socket file it created. */
export class UnixServer extends Watchable {
  readonly type: UnixSocketType;
  readonly #ino: number;

  private constructor(handle: OwnedFd, type: UnixSocketType, ino: number) {
    super(handle);
    this.type = type;
    this.#ino = ino;
  }

  /**
   * Binds and listens at `path` (EADDRINUSE if anything exists there: this
   * never removes a file it did not create). The socket file gets `mode`
   * right after bind and before listen, so nobody can connect in between;
   * for a socket others must not even see, put it in a directory only you can enter.
   */
  static listen(path: string, options: UnixServerOptions = {}): UnixServer {
    checkNonEmptyString(path, 'path', describe);
    checkObject(options, 'options');
    const type = checkType(options.type);
    const backlog = checkInt(options.backlog ?? 16, 'options.backlog', 1, 0x7fff_ffff);
    const mode = checkInt(options.mode ?? 0o600, 'options.mode', 0, 0o777);
    const handle = native.unixSocket(type, path);
    let bound = false;
    try {
      native.unixBind(handle, path);
      bound = true;
      fs.chmodSync(path, mode);
      native.unixListen(handle, backlog);
      return new UnixServer(handle, options.type ?? 'stream', fs.statSync(path).ino);
    } catch (err) {
      handle.close();
      if (bound) fs.rmSync(path, { force: true });
      throw err;
    }
  }

  /** A pending connection, or null when none waits. */
  accept(): UnixSocket | null {
    const conn = native.unixAccept(this.handle);
    return conn === null ? null : UnixSocket.accepted(conn, this.type);
  }

  /** Closes the socket and removes its file (only if it is still the one this server created). Idempotent. */
  override close(): void {
    if (this.closed) return;
    const path = this.path;
    super.close();
    try {
      if (fs.lstatSync(path).ino === this.#ino) fs.rmSync(path, { force: true });
    } catch {
      // already gone
    }
  }
}

/**
 * Makes `path` free for a new listening unix socket, the way a device's front
 * door must: nothing there is fine; a socket file left by a process that died
 * (connect is refused) is removed; a live socket (connect succeeds), or a file
 * that is not a socket, is refused with EADDRINUSE and left untouched. Shared
 * by the vhost-user back-end and the hybrid vsock server.
 */
export function claimSocketPath(path: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch {
    return; // nothing there
  }
  const inUse = (why: string): VhostError =>
    new VhostError(`EADDRINUSE: address already in use, bind '${path}': ${why}`, { code: 'EADDRINUSE', errno: -98, syscall: 'bind', path, hint: why });
  if (!st.isSocket()) throw inUse('a file that is not a socket is there; remove it or choose another path');
  try {
    UnixSocket.connect(path).close();
  } catch (err) {
    if ((err as VhostError).code === 'ECONNREFUSED') {
      fs.rmSync(path, { force: true }); // nobody listens: a dead process's socket
      return;
    }
    throw err;
  }
  throw inUse('another process is listening there (a running back-end); stop it or choose another path');
}
