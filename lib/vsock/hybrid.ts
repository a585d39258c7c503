// Hybrid vsock, the host side of a guest's vsock as Firecracker and Cloud
// Hypervisor expose it (and this library's vsock back-end does): a unix
// stream socket PATH; a host client connects, writes `CONNECT <port>\n`, reads
// `OK <assigned host port>\n` and then owns a stream to the guest's port.
// No AF_VSOCK anywhere: plain unix sockets (node:net), so no poll of our own.
// The handshake line is shared by the client here and the back-end's server
// (lib/device/vsock/hybrid-server.ts): one parser, one bound.
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import { abortError, checkBool, checkInt, checkNonEmptyString, checkObject, checkSignal, describe } from '../core/check';
import { closedError, invalidArg, VhostError } from '../core/errors';

/** The longest handshake line either side reads, newline included: `CONNECT 4294967295\n` is 19 bytes. */
export const HYBRID_LINE_MAX = 32;

/** Options of vsock.connect() for hybrid vsock (`path` given instead of `cid`). */
export interface HybridVsockConnectOptions {
  /** The VMM's (or back-end's) hybrid vsock unix socket: Firecracker's `uds_path`, Cloud Hypervisor's `--vsock socket=`. */
  path: string;
  /** The guest's vsock port, 0..0xfffffffe. */
  port: number;
  /** Only 'stream': hybrid vsock is a unix byte stream (no message boundaries). */
  type?: 'stream';
  /** Connect + handshake timeout in ms (1..2^31-1): no `OK` by then → 'error' with code ETIMEDOUT. Default: no timeout. */
  timeout?: number;
  /** Aborting it destroys the socket with an AbortError (code ABORT_ERR), connected or not. */
  signal?: AbortSignal;
  /** Keep the writable side open after the peer ends (default false: end() follows, like net). */
  allowHalfOpen?: boolean;
}

const INT32_MAX = 0x7fff_ffff;
const PORT_MAX = 0xffff_fffe;

/** Validated hybrid connect options. @internal Use vsock.connect({ path, port }). */
export function checkHybridConnectOptions(o: Record<string, unknown>): Required<Pick<HybridVsockConnectOptions, 'path' | 'port' | 'allowHalfOpen'>> & Pick<HybridVsockConnectOptions, 'timeout' | 'signal'> {
  const path = checkNonEmptyString(o.path, 'options.path', describe);
  if (path.includes('\0')) throw invalidArg('options.path', 'must not contain NUL bytes');
  if (o.cid !== undefined) throw invalidArg('options.cid', 'cannot be given with options.path (hybrid vsock: the path names the guest)');
  if (o.port === undefined) throw invalidArg('options.port', 'is required');
  const port = checkInt(o.port, 'options.port', 0, PORT_MAX);
  if (o.type !== undefined && o.type !== 'stream') throw invalidArg('options.type', `must be 'stream' with options.path (hybrid vsock carries no message boundaries), got ${describe(o.type)}`, 'ERR_VHOST_UNSUPPORTED');
  const timeout = o.timeout === undefined ? undefined : checkInt(o.timeout, 'options.timeout', 1, INT32_MAX);
  const signal = checkSignal(o.signal, 'options.signal');
  const allowHalfOpen = checkBool(o.allowHalfOpen, 'options.allowHalfOpen');
  return { path, port, timeout, signal, allowHalfOpen };
}

/** The error of a handshake line that is not what the protocol allows. */
export function handshakeError(message: string, path: string): VhostError {
  return new VhostError(`ERR_VHOST_VSOCK_HANDSHAKE: ${message} '${path}'`, { code: 'ERR_VHOST_VSOCK_HANDSHAKE', syscall: 'hybrid-vsock', path });
}

/**
 * Reads one handshake line out of `buffered` (bytes received so far): the
 * line without its '\n' and what follows it, null when more bytes are
 * needed, or an Error when HYBRID_LINE_MAX bytes came without a newline.
 */
export function takeLine(buffered: Buffer, path: string): { line: string; rest: Buffer } | null | VhostError {
  const nl = buffered.indexOf(0x0a);
  if (nl < 0 || nl >= HYBRID_LINE_MAX) {
    return buffered.length >= HYBRID_LINE_MAX ? handshakeError(`no newline within the first ${HYBRID_LINE_MAX} bytes of the handshake (oversized line)`, path) : null;
  }
  return { line: buffered.subarray(0, nl).toString('latin1'), rest: buffered.subarray(nl + 1) };
}

/**
 * A port as the protocol writes it: decimal digits, no sign, no leading
 * zeros beyond "0", within u32. Returns null for anything else.
 */
export function parsePort(text: string): number | null {
  if (!/^(0|[1-9][0-9]{0,9})$/.test(text)) return null;
  const n = Number(text);
  return n <= 0xffff_ffff ? n : null;
}

/** Shows a received line safely in a message: printable ASCII only, cut. */
export function showLine(line: string): string {
  const shown = line.slice(0, HYBRID_LINE_MAX).replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return JSON.stringify(shown);
}

const kStart = Symbol('start');

/** What a net error during connect means for hybrid vsock. */
function connectError(err: NodeJS.ErrnoException, path: string): VhostError {
  const code = err.code ?? 'EIO';
  const e = new VhostError(`${code}: ${err.message.replace(/^\w+ /, '')}`, { code, errno: err.errno, syscall: 'connect', path });
  if (code === 'ENOENT') e.hint = `no hybrid vsock socket at ${path}: is the VMM (or vsock back-end) running with this socket path?`;
  else if (code === 'ECONNREFUSED') e.hint = `nothing accepts on ${path}: a stale socket file of a VMM that exited, or not a socket`;
  else if (code === 'EACCES') e.hint = `no permission to connect to ${path}: hybrid vsock sockets are usually owner-only (mode 0600)`;
  if (e.hint) e.message += ` (${e.hint})`;
  return e;
}

/**
 * A host connection to a guest's vsock port through hybrid vsock, a Duplex
 * stream like vsock.VsockSocket: 'connect' once the VMM answered `OK`
 * (`assignedPort` is then the host-side port it gave this connection),
 * backpressure, end() half-closes, 'end', 'close', 'error' with a code:
 * ENOENT / ECONNREFUSED / EACCES (the unix connect, path named),
 * ECONNRESET (the VMM closed before `OK`: nothing listens on that guest port),
 * ERR_VHOST_VSOCK_HANDSHAKE (an answer that is not `OK <port>\n`, or no
 * newline within HYBRID_LINE_MAX bytes), ETIMEDOUT, or an AbortError.
 * Writes made before 'connect' wait for it.
 */
export class HybridVsockSocket extends Duplex {
  /** Always 'stream'. */
  readonly type = 'stream' as const;
  /** The hybrid vsock socket connected to. */
  readonly path: string;
  /** The guest port asked for in `CONNECT`. */
  readonly port: number;
  #sock: net.Socket | null = null;
  #connecting = true;
  #assigned: number | undefined;
  #handshake: Buffer = Buffer.alloc(0);
  #timer: NodeJS.Timeout | null = null;
  #signal: AbortSignal | undefined;
  #early: { chunk: Buffer; cb: (err?: Error | null) => void }[] = [];
  #earlyFinal: ((err?: Error | null) => void) | null = null;
  #bytesRead = 0;
  #refed = true;

  /** @internal Use vsock.connect({ path, port }). */
  constructor(options: { path: string; port: number; allowHalfOpen: boolean }) {
    super({ allowHalfOpen: options.allowHalfOpen });
    this.path = options.path;
    this.port = options.port;
  }

  /** True until `OK` arrived or the connect failed. */
  get connecting(): boolean {
    return this.#connecting;
  }

  /** The host-side port the VMM assigned (the number in `OK <port>`), once connected. */
  get assignedPort(): number | undefined {
    return this.#assigned;
  }

  /** The peer as the guest sees it: the guest port (its CID is the VMM's business). */
  get remoteAddress(): { path: string; port: number } {
    return { path: this.path, port: this.port };
  }

  /** Payload bytes received after the handshake. */
  get bytesRead(): number {
    return this.#bytesRead;
  }

  /** Payload bytes written after the handshake (queued in the unix socket included). */
  get bytesWritten(): number {
    const s = this.#sock;
    return s ? Math.max(0, s.bytesWritten - `CONNECT ${this.port}\n`.length) : 0;
  }

  /** The socket keeps the process alive (the default). */
  ref(): this {
    this.#refed = true;
    this.#sock?.ref();
    return this;
  }

  /** The socket no longer keeps the process alive on its own. */
  unref(): this {
    this.#refed = false;
    this.#sock?.unref();
    return this;
  }

  /** Same as destroy(), for `using`. */
  [Symbol.dispose](): void {
    this.destroy();
  }

  /** @internal Connects, sends CONNECT, arms timeout and signal. */
  [kStart](timeout: number | undefined, signal: AbortSignal | undefined): void {
    if (signal) {
      if (signal.aborted) {
        process.nextTick(() => this.destroy(abortError(signal)));
        return;
      }
      this.#signal = signal;
      signal.addEventListener('abort', this.#onAbort, { once: true });
    }
    if (timeout !== undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = null;
        if (this.#connecting) {
          this.destroy(new VhostError(`ETIMEDOUT: no hybrid vsock answer within ${timeout} ms, connect '${this.path}' port ${this.port}`, { code: 'ETIMEDOUT', syscall: 'connect', path: this.path }));
        }
      }, timeout);
    }
    const sock = net.connect({ path: this.path, allowHalfOpen: true });
    this.#sock = sock;
    if (!this.#refed) sock.unref();
    sock.on('error', this.#onSockError);
    sock.once('connect', () => sock.write(`CONNECT ${this.port}\n`));
    sock.on('data', this.#onHandshakeData);
    sock.on('end', this.#onSockEnd);
    sock.on('close', this.#onSockClose);
  }

  #onAbort = (): void => {
    if (this.#signal) this.destroy(abortError(this.#signal));
  };

  #onSockError = (err: NodeJS.ErrnoException): void => {
    if (this.destroyed) return;
    this.destroy(this.#connecting && err.syscall === 'connect' ? connectError(err, this.path) : err);
  };

  #onHandshakeData = (data: Buffer): void => {
    if (this.destroyed) return;
    // Bounded: at most HYBRID_LINE_MAX bytes are kept before the line must have ended.
    this.#handshake = this.#handshake.length === 0 ? data : Buffer.concat([this.#handshake, data]);
    const got = takeLine(this.#handshake, this.path);
    if (got === null) return;
    if (got instanceof VhostError) {
      this.destroy(got);
      return;
    }
    const m = /^OK (.*)$/.exec(got.line);
    const assigned = m ? parsePort(m[1]) : null;
    if (assigned === null) {
      this.destroy(handshakeError(`expected "OK <port>" after CONNECT ${this.port}, got ${showLine(got.line)}`, this.path));
      return;
    }
    this.#handshake = Buffer.alloc(0);
    this.#assigned = assigned;
    this.#connecting = false;
    this.#clearTimer();
    const sock = this.#sock!;
    sock.off('data', this.#onHandshakeData);
    sock.on('data', this.#onData);
    this.emit('connect');
    this.emit('ready');
    if (got.rest.length > 0) this.#onData(Buffer.from(got.rest)); // the guest spoke right after OK
    for (const w of this.#early.splice(0)) sock.write(w.chunk, w.cb);
    if (this.#earlyFinal) {
      const cb = this.#earlyFinal;
      this.#earlyFinal = null;
      sock.end(cb);
    }
  };

  #onData = (data: Buffer): void => {
    this.#bytesRead += data.length;
    if (!this.push(data)) this.#sock?.pause();
  };

  #onSockEnd = (): void => {
    if (this.#connecting) {
      const e = new VhostError(
        `ECONNRESET: the hybrid vsock peer closed before answering OK, connect '${this.path}' port ${this.port}`,
        { code: 'ECONNRESET', syscall: 'connect', path: this.path },
      );
      e.hint = `nothing listens on port ${this.port} in the guest (hybrid vsock refuses by closing the connection)`;
      e.message += ` (${e.hint})`;
      this.destroy(e);
      return;
    }
    this.push(null);
  };

  #onSockClose = (): void => {
    if (!this.destroyed && this.#connecting) this.#onSockEnd();
    else if (!this.destroyed && this.writableFinished && this.readableEnded) this.destroy();
  };

  #clearTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** Node stream hook. @internal */
  override _read(): void {
    if (!this.#connecting) this.#sock?.resume();
  }

  /** Node stream hook. @internal */
  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.#connecting) {
      this.#early.push({ chunk, cb });
      return;
    }
    const sock = this.#sock;
    if (!sock || sock.destroyed) {
      cb(closedError('HybridVsockSocket', this.path));
      return;
    }
    sock.write(chunk, cb);
  }

  /** Node stream hook. @internal */
  override _final(cb: (err?: Error | null) => void): void {
    if (this.#connecting) {
      this.#earlyFinal = cb;
      return;
    }
    const sock = this.#sock;
    if (!sock || sock.destroyed) {
      cb();
      return;
    }
    sock.end(cb);
  }

  /** Node stream hook. @internal */
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#clearTimer();
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#signal = undefined;
    this.#connecting = false;
    this.#early.length = 0;
    this.#earlyFinal = null;
    const sock = this.#sock;
    if (sock) {
      sock.off('close', this.#onSockClose);
      sock.destroy();
    }
    cb(err);
  }
}

/** Starts a hybrid connect. @internal Use vsock.connect({ path, port }). */
export function connectHybrid(o: ReturnType<typeof checkHybridConnectOptions>): HybridVsockSocket {
  const socket = new HybridVsockSocket({ path: o.path, port: o.port, allowHalfOpen: o.allowHalfOpen });
  socket[kStart](o.timeout, o.signal);
  return socket;
}

/** Throws when `o` is not an options object (the shared first check of vsock.connect()). */
export function optionsObject(value: unknown): Record<string, unknown> {
  return checkObject(value, 'options', 'an object', (v) => (v === null ? 'null' : typeof v));
}
