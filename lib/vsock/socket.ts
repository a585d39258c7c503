/**
 * AF_VSOCK sockets for Node: a server and a Duplex stream like net's
 * (`vsock.createServer()`, `vsock.connect()`), on nonblocking sockets watched
 * on this thread's event loop: no thread per socket.
 * @module
 */
// The poll is native OwnedFd.watch (uv_poll); libuv cannot wrap AF_VSOCK fds, so
// the stream logic lives here. The poll is armed only for what the stream
// needs right now: readable while _read wants data, writable while a write is
// pending or the connect is in progress.
import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import { getSystemErrorMap } from 'node:util';
import '../core/dispose';
import { abortError, checkFunction, readOptions } from '../core/check';
import { closedError, invalidArg, VhostError } from '../core/errors';
import { withVsockHint } from './hints';
import { checkHybridConnectOptions, connectHybrid, optionsObject, type HybridVsockConnectOptions, type HybridVsockSocket } from './hybrid';
import { native, POLL_READABLE, POLL_WRITABLE, type OwnedFd } from '../core/native';
import {
  checkConnectOptions, checkListenOptions, checkServerOptions,
  type VsockAddress, type VsockConnectOptions, type VsockListenOptions, type VsockServerOptions, type VsockType,
} from './options';

export {
  VMADDR_CID_ANY, VMADDR_PORT_ANY, VMADDR_CID_HYPERVISOR, VMADDR_CID_LOCAL, VMADDR_CID_HOST,
  type VsockType, type VsockAddress, type VsockConnectOptions, type VsockServerOptions, type VsockListenOptions,
} from './options';
export { HybridVsockSocket, HYBRID_LINE_MAX, type HybridVsockConnectOptions } from './hybrid';

const SOCK_STREAM = 1;
const SOCK_SEQPACKET = 5;
const SHUT_WR = 1;
const EMSGSIZE = 90;
/** One stream read; the copy out of it is sized to what arrived. */
const STREAM_READ_SIZE = 64 * 1024;
/** A seqpacket message cannot exceed the peer's buffer (256 KiB by default). */
const MESSAGE_READ_SIZE = 256 * 1024;
/** Reads per poll wakeup, so one busy socket cannot starve the loop. */
const READS_PER_WAKEUP = 16;
const ACCEPTS_PER_WAKEUP = 64;

const kAdopt = Symbol('adopt');
const kConnect = Symbol('connect');

// ---- errors ------------------------------------------------------------------

const addressPath = (a: VsockAddress): string => `vsock:${a.cid}:${a.port}`;

/** An error shaped like the addon's (and Node core's) from a positive errno. */
function errnoError(errno: number, syscall: string, path: string): VhostError {
  const [code, description] = getSystemErrorMap().get(-errno) ?? [`Unknown system error ${errno}`, 'unknown error'];
  return new VhostError(`${code}: ${description}, ${syscall} '${path}'`, { code, errno: -errno, syscall, path });
}

// ---- the stream ------------------------------------------------------------

interface PendingWrite {
  chunk: Buffer;
  offset: number;
  cb: (err?: Error | null) => void;
}

/**
 * A connected AF_VSOCK socket as a Duplex stream, like net.Socket: 'connect',
 * backpressure (write() returns false while the kernel's send buffer is full
 * and the queue exceeds highWaterMark), end() half-closes (SHUT_WR once queued
 * writes are in the kernel), destroy(err), 'end', 'close', 'error' with the
 * kernel's errno as code. For 'seqpacket' each chunk read is one message and
 * each write() sends one message.
 *
 * Seqpacket caveat (measured on Linux 6.1): a nonblocking send of a message
 * larger than the room left in the peer's receive buffer puts part of it on
 * the wire and still fails with EAGAIN, so the retry lands in the same
 * message. Keep unacknowledged messages within the peer's buffer (256 KiB by
 * default), e.g. with request/response, when using 'seqpacket'.
 *
 * Created by connect() or handed to a server's 'connection' listener.
 */
export class VsockSocket extends Duplex {
  readonly type: VsockType;
  #handle: OwnedFd | null = null;
  #label = 'vsock';
  #connecting = false;
  #wantRead = false;
  #watched = 0;
  #pending: PendingWrite | null = null;
  #pendingFinal: ((err?: Error | null) => void) | null = null;
  #refed = true;
  #remote: VsockAddress | undefined;
  #local: VsockAddress | undefined;
  #scratch: Buffer | null = null;
  #signal: AbortSignal | undefined;
  #connectTimeout: number | undefined;
  #bytesRead = 0;
  #bytesWritten = 0;

  /** @internal Use connect() or a server's 'connection' event. */
  constructor(options: { type: VsockType; allowHalfOpen: boolean }) {
    const seqpacket = options.type === 'seqpacket';
    super({
      allowHalfOpen: options.allowHalfOpen,
      readableObjectMode: seqpacket, // one chunk per message, never merged by read()
    });
    this.type = options.type;
    // Queued stream chunks go out in one send(); messages must stay apart.
    if (seqpacket) Object.defineProperty(this, '_writev', { value: null });
  }

  /** @internal An accepted connection. */
  [kAdopt](handle: OwnedFd, remote: VsockAddress): void {
    this.#handle = handle;
    this.#label = handle.path;
    this.#remote = remote;
    this.#local = native.vsockGetSockName(handle);
  }

  /** @internal Starts a nonblocking connect; failures arrive as 'error'. */
  [kConnect](opts: ReturnType<typeof checkConnectOptions>): void {
    const peer = { cid: opts.cid, port: opts.port };
    this.#remote = peer;
    this.#label = addressPath(peer);
    this.#connecting = true;
    this.#connectTimeout = opts.timeout;
    if (opts.signal) {
      const signal = opts.signal;
      if (signal.aborted) {
        process.nextTick(() => this.destroy(abortError(signal)));
        return;
      }
      this.#signal = signal;
      signal.addEventListener('abort', this.#onAbort, { once: true });
    }
    try {
      const handle = native.vsockSocket(opts.type === 'seqpacket' ? SOCK_SEQPACKET : SOCK_STREAM, this.#label);
      this.#handle = handle;
      if (!this.#refed) handle.unref();
      if (opts.timeout !== undefined) native.vsockSetConnectTimeout(handle, opts.timeout);
      if (native.vsockConnect(handle, peer.cid, peer.port)) process.nextTick(() => this.#onConnectReady());
      else this.#updatePoll();
    } catch (err) {
      process.nextTick(() => this.destroy(withVsockHint(err, peer) as Error));
    }
  }

  /** The peer as { cid, port } (kept after close). */
  get remoteAddress(): VsockAddress | undefined {
    return this.#remote && { ...this.#remote };
  }

  /**
   * This end as { cid, port } as the kernel reports it (getsockname), once
   * connected; kept after close. A client that did not bind reports
   * VMADDR_CID_ANY as its CID.
   */
  get localAddress(): VsockAddress | undefined {
    return this.#local && { ...this.#local };
  }

  /** True until the connect completes or fails. */
  get connecting(): boolean {
    return this.#connecting;
  }

  /** Bytes received, as net.Socket counts them. */
  get bytesRead(): number {
    return this.#bytesRead;
  }

  /** Bytes written to the socket, as net.Socket counts them. */
  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  /** The fd number; throws ERR_VHOST_CLOSED once destroyed. */
  get fd(): number {
    if (!this.#handle || this.#handle.closed) throw closedError('VsockSocket', this.#label);
    return this.#handle.fd;
  }

  /** The socket keeps the process alive while it waits for I/O (the default). */
  ref(): this {
    this.#refed = true;
    if (this.#handle && !this.#handle.closed) this.#handle.ref();
    return this;
  }

  /** The socket no longer keeps the process alive on its own. */
  unref(): this {
    this.#refed = false;
    if (this.#handle && !this.#handle.closed) this.#handle.unref();
    return this;
  }

  /** Same as destroy(), for `using`. */
  [Symbol.dispose](): void {
    this.destroy();
  }

  #onAbort = (): void => {
    if (this.#signal) this.destroy(abortError(this.#signal));
  };

  #live(): OwnedFd {
    if (!this.#handle || this.#handle.closed) throw closedError('VsockSocket', this.#label);
    return this.#handle;
  }

  /** Arms the poll for exactly what is wanted now; watch(0) stops it without closing. */
  #updatePoll(): void {
    const handle = this.#handle;
    if (!handle || handle.closed || this.destroyed) return;
    let events = 0;
    if (this.#connecting) events = POLL_WRITABLE;
    else {
      if (this.#wantRead) events |= POLL_READABLE;
      if (this.#pending) events |= POLL_WRITABLE;
    }
    if (events === this.#watched) return;
    this.#watched = events;
    handle.watch(events, this.#onPoll);
  }

  #onPoll = (status: number, events: number): void => {
    if (this.destroyed) return;
    if (status < 0) {
      this.#onPollError(status);
      return;
    }
    if (this.#connecting) {
      if (events & POLL_WRITABLE) this.#onConnectReady();
      return;
    }
    if (events & POLL_WRITABLE && this.#pending) this.#flushWrite();
    if (events & POLL_READABLE && this.#wantRead && !this.destroyed) this.#readSome();
    this.#updatePoll();
  };

  /**
   * libuv reports EPOLLERR as UV_EBADF and stops the watcher: the socket's
   * pending error (SO_ERROR, e.g. ECONNRESET or ETIMEDOUT of a connect) says
   * what really happened.
   */
  #onPollError(status: number): void {
    this.#watched = 0;
    let errno: number;
    try {
      errno = native.vsockGetSocketError(this.#live());
    } catch (err) {
      this.destroy(err as Error);
      return;
    }
    if (errno === 0) errno = -status;
    const syscall = this.#connecting ? 'connect' : this.#wantRead ? 'read' : 'write';
    this.destroy(withVsockHint(errnoError(errno, syscall, this.#label), this.#remote, this.#connectTimeout) as Error);
  }

  #onConnectReady(): void {
    if (this.destroyed || !this.#connecting) return;
    const handle = this.#live();
    const peer = this.#remote!;
    try {
      const errno = native.vsockGetSocketError(handle);
      if (errno !== 0) {
        this.destroy(withVsockHint(errnoError(errno, 'connect', this.#label), peer, this.#connectTimeout) as Error);
        return;
      }
      this.#local = native.vsockGetSockName(handle);
      native.vsockGetPeerName(handle); // ENOTCONN: woken before the handshake ended
    } catch (err) {
      if ((err as VhostError).code === 'ENOTCONN') return; // keep waiting for writable
      this.destroy(err as Error);
      return;
    }
    this.#connecting = false;
    this.emit('connect');
    this.emit('ready');
    if (this.#pending) this.#flushWrite();
    if (this.#pendingFinal && !this.#pending) this.#shutdownWrite();
    this.#updatePoll();
  }

  #readSome(): void {
    const handle = this.#live();
    const seqpacket = this.type === 'seqpacket';
    this.#scratch ??= Buffer.allocUnsafe(seqpacket ? MESSAGE_READ_SIZE : STREAM_READ_SIZE);
    const scratch = this.#scratch;
    for (let i = 0; i < READS_PER_WAKEUP && this.#wantRead && !this.destroyed; i++) {
      let n: number | null;
      try {
        n = seqpacket ? native.vsockRecvMessage(handle, scratch) : native.vsockRead(handle, scratch);
      } catch (err) {
        this.destroy(err as Error);
        return;
      }
      if (n === null) return;
      if (n === 0) {
        this.#wantRead = false;
        this.push(null);
        return;
      }
      if (n > scratch.length) {
        this.destroy(errnoError(EMSGSIZE, 'recv', this.#label));
        return;
      }
      this.#bytesRead += n;
      // A copy sized to the data: buffered chunks hold no spare memory.
      const chunk = Buffer.allocUnsafe(n);
      scratch.copy(chunk, 0, 0, n);
      if (!this.push(chunk)) this.#wantRead = false;
      // A short stream read drained the socket (as libuv assumes): skip the
      // read that would only say EAGAIN; the level-triggered poll reports more.
      if (!seqpacket && n < scratch.length) return;
    }
  }

  /** Node stream hook. @internal */
  override _read(): void {
    this.#wantRead = true;
    this.#updatePoll();
  }

  /** Node stream hook. @internal */
  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (chunk.length === 0) {
      cb(); // a zero-length send is no message on vsock: nothing to do
      return;
    }
    if (this.#connecting) {
      this.#pending = { chunk, offset: 0, cb }; // sent once connected
      return;
    }
    // Send at once, as libuv does: the poll is armed for writable only when the kernel says wait.
    const handle = this.#live();
    let offset: number;
    try {
      offset = this.#send(handle, chunk, 0);
    } catch (err) {
      cb(err as Error);
      return;
    }
    if (offset === chunk.length) {
      cb();
      return;
    }
    this.#pending = { chunk, offset, cb };
    this.#updatePoll();
  }

  /** Node stream hook. @internal */
  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    this._write(chunks.length === 1 ? chunks[0].chunk : Buffer.concat(chunks.map((c) => c.chunk)), 'buffer' as BufferEncoding, cb);
  }

  /** Sends chunk from offset until all is in or the send buffer is full; returns the new offset. Kernel errors throw. */
  #send(handle: OwnedFd, chunk: Buffer, offset: number): number {
    while (offset < chunk.length) {
      const n = native.vsockWrite(handle, offset === 0 ? chunk : chunk.subarray(offset));
      if (n === null) break; // send buffer full: wait for writable
      offset += n;
      this.#bytesWritten += n;
    }
    return offset;
  }

  /** Writes as much of the pending chunk as the kernel takes now; its callback runs when all is in. */
  #flushWrite(): void {
    const pending = this.#pending!;
    const handle = this.#live();
    try {
      pending.offset = this.#send(handle, pending.chunk, pending.offset);
    } catch (err) {
      this.#pending = null;
      pending.cb(err as Error);
      return;
    }
    if (pending.offset < pending.chunk.length) return;
    this.#pending = null;
    pending.cb();
  }

  /** Node stream hook. @internal */
  override _final(cb: (err?: Error | null) => void): void {
    this.#pendingFinal = cb;
    if (!this.#connecting) this.#shutdownWrite();
  }

  #shutdownWrite(): void {
    const cb = this.#pendingFinal;
    if (!cb) return;
    this.#pendingFinal = null;
    try {
      native.vsockShutdown(this.#live(), SHUT_WR);
    } catch (err) {
      // The peer is already gone: nothing is left to half-close (as net does).
      if ((err as VhostError).code !== 'ENOTCONN') {
        cb(err as Error);
        return;
      }
    }
    cb();
  }

  /** Node stream hook. @internal */
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#signal = undefined;
    this.#connecting = false;
    this.#pending = null;
    this.#pendingFinal = null;
    this.#handle?.close(); // stops the poll before close(fd)
    this.#watched = 0;
    this.#scratch = null;
    cb(err);
  }
}

// ---- the server --------------------------------------------------------------

/**
 * A listening AF_VSOCK socket. Emits 'listening', 'connection' (a
 * VsockSocket), 'error' and 'close' — the latter once close() was called and
 * every accepted connection has closed, as net.Server does.
 */
export class VsockServer extends EventEmitter {
  readonly type: VsockType;
  readonly allowHalfOpen: boolean;
  #handle: OwnedFd | null = null;
  #connections = new Set<VsockSocket>();
  #closing = false;
  #refed = true;

  /** @internal Use createServer(). */
  constructor(options: Required<VsockServerOptions>, listener?: (socket: VsockSocket) => void) {
    super();
    this.type = options.type;
    this.allowHalfOpen = options.allowHalfOpen;
    if (listener) this.on('connection', listener);
  }

  /** True between a successful listen() and close(). */
  get listening(): boolean {
    return this.#handle !== null && !this.#handle.closed;
  }

  /** Number of accepted connections not yet closed. */
  get connections(): number {
    return this.#connections.size;
  }

  /**
   * bind() + listen(). Validation errors throw; kernel errors (EADDRINUSE,
   * EAFNOSUPPORT, ...) are emitted as 'error', like net.Server.
   */
  listen(options: VsockListenOptions = {}, cb?: () => void): this {
    const opts = checkListenOptions(options);
    checkFunction(cb, 'cb', true);
    if (this.listening) throw invalidArg('server', 'is already listening');
    if (cb) this.once('listening', cb);
    const local = { cid: opts.cid, port: opts.port };
    let handle: OwnedFd | undefined;
    try {
      handle = native.vsockSocket(this.type === 'seqpacket' ? SOCK_SEQPACKET : SOCK_STREAM, addressPath(local));
      native.vsockBind(handle, local.cid, local.port);
      native.vsockListen(handle, opts.backlog);
      if (!this.#refed) handle.unref();
      handle.watch(POLL_READABLE, this.#onPoll);
    } catch (err) {
      handle?.close();
      process.nextTick(() => this.emit('error', withVsockHint(err)));
      return this;
    }
    this.#handle = handle;
    this.#closing = false;
    process.nextTick(() => this.emit('listening'));
    return this;
  }

  /** The bound { cid, port } (the port the kernel picked for VMADDR_PORT_ANY); null when not listening. */
  address(): VsockAddress | null {
    return this.listening ? native.vsockGetSockName(this.#handle!) : null;
  }

  /**
   * Stops accepting (closes the listening socket now); 'close' follows once
   * every accepted connection has closed. cb gets an error if not listening.
   */
  close(cb?: (err?: Error) => void): this {
    checkFunction(cb, 'cb', true);
    if (!this.listening) {
      if (cb) process.nextTick(cb, closedError('VsockServer'));
      return this;
    }
    if (cb) this.once('close', cb);
    this.#handle!.close();
    this.#handle = null;
    this.#closing = true;
    this.#maybeClosed();
    return this;
  }

  /** The listener keeps the process alive (the default). */
  ref(): this {
    this.#refed = true;
    if (this.listening) this.#handle!.ref();
    return this;
  }

  /** The listener no longer keeps the process alive on its own. */
  unref(): this {
    this.#refed = false;
    if (this.listening) this.#handle!.unref();
    return this;
  }

  /** Same as close() when listening, for `using`. */
  [Symbol.dispose](): void {
    if (this.listening) this.close();
  }

  #maybeClosed(): void {
    if (this.#closing && this.#connections.size === 0) {
      this.#closing = false;
      process.nextTick(() => this.emit('close'));
    }
  }

  #onPoll = (status: number): void => {
    const handle = this.#handle;
    if (!handle || handle.closed) return;
    if (status < 0) {
      // EPOLLERR (reported as UV_EBADF; libuv stopped the watcher): say why, from SO_ERROR.
      let errno = -status;
      try {
        errno = native.vsockGetSocketError(handle) || errno;
      } catch {
        // keep libuv's status
      }
      this.emit('error', errnoError(errno, 'accept', handle.path));
      return;
    }
    for (let i = 0; i < ACCEPTS_PER_WAKEUP && this.#handle === handle && !handle.closed; i++) {
      let accepted: ReturnType<typeof native.vsockAccept>;
      try {
        accepted = native.vsockAccept(handle);
      } catch (err) {
        // A connection reset before accept() is the peer's business, not the server's.
        if ((err as VhostError).code === 'ECONNABORTED') continue;
        this.emit('error', err);
        return;
      }
      if (accepted === null) return;
      const socket = new VsockSocket({ type: this.type, allowHalfOpen: this.allowHalfOpen });
      try {
        socket[kAdopt](accepted.fd, { cid: accepted.cid, port: accepted.port });
      } catch (err) {
        accepted.fd.close();
        this.emit('error', err);
        continue;
      }
      this.#connections.add(socket);
      socket.once('close', () => {
        this.#connections.delete(socket);
        this.#maybeClosed();
      });
      this.emit('connection', socket);
    }
  };
}

// ---- entry points ------------------------------------------------------------

/**
 * A vsock server; `listener` is added for 'connection'. Call listen() next:
 * `createServer((conn) => conn.pipe(conn)).listen({ port: 1234 })`.
 */
export function createServer(listener?: (socket: VsockSocket) => void): VsockServer;
export function createServer(options: VsockServerOptions, listener?: (socket: VsockSocket) => void): VsockServer;
export function createServer(
  optionsOrListener?: VsockServerOptions | ((socket: VsockSocket) => void),
  listener?: (socket: VsockSocket) => void,
): VsockServer {
  let options: unknown = {};
  if (typeof optionsOrListener === 'function') listener = optionsOrListener;
  else if (optionsOrListener !== undefined) options = optionsOrListener;
  checkFunction(listener, 'listener', true);
  return new VsockServer(checkServerOptions(options), listener);
}

/**
 * Connects to { cid, port } without blocking; `cb` is added for 'connect'.
 * Validation errors throw; kernel errors arrive as 'error' (ENODEV: no
 * transport reaches the CID; ECONNRESET: nothing listens there, as the virtio
 * transports report it; ETIMEDOUT; AbortError for the signal).
 *
 * With `path` instead of `cid` it connects through hybrid vsock (Firecracker,
 * Cloud Hypervisor, this library's vsock back-end): a unix socket, the
 * `CONNECT <port>\n` / `OK <port>\n` handshake, then a HybridVsockSocket
 * (see there for its errors). No AF_VSOCK socket is opened then.
 */
export function connect(options: HybridVsockConnectOptions, cb?: () => void): HybridVsockSocket;
export function connect(options: VsockConnectOptions, cb?: () => void): VsockSocket;
export function connect(options: VsockConnectOptions | HybridVsockConnectOptions, cb?: () => void): VsockSocket | HybridVsockSocket {
  const o = readOptions(optionsObject(options), CONNECT_KEYS); // each option read once
  if (o.path !== undefined) {
    const h = checkHybridConnectOptions(o);
    checkFunction(cb, 'cb', true);
    const socket = connectHybrid(h);
    if (cb) socket.once('connect', cb);
    return socket;
  }
  const opts = checkConnectOptions(o);
  checkFunction(cb, 'cb', true);
  const socket = new VsockSocket({ type: opts.type, allowHalfOpen: opts.allowHalfOpen });
  if (cb) socket.once('connect', cb);
  socket[kConnect](opts);
  return socket;
}

const CONNECT_KEYS = ['cid', 'port', 'type', 'timeout', 'signal', 'allowHalfOpen', 'path'];

/**
 * This machine's CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID on /dev/vsock): the
 * guest's CID inside a VM; on a host with only vhost_vsock, VMADDR_CID_HOST (2).
 */
export function localCid(): number {
  let dev: OwnedFd;
  try {
    dev = native.openPath('/dev/vsock', 0);
  } catch (err) {
    throw withVsockHint(err);
  }
  try {
    return native.vsockGetLocalCid(dev);
  } finally {
    dev.close();
  }
}
