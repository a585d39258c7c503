// A client of QEMU's machine protocol (QMP, docs/interop/qmp-spec): JSON
// objects, one per line, over the monitor's unix socket. The monitor greets
// ({"QMP": {...}}), then accepts only `qmp_capabilities`; afterwards each
// command `{"execute", "arguments", "id"}` gets `{"return", "id"}` or
// `{"error": {"class", "desc"}, "id"}`, and events `{"event", "data",
// "timestamp"}` arrive between answers at any time.
//
// Commands go out one at a time, like libvirt's monitor: QEMU keeps only the
// fds that came with the latest read of its socket, so a second command with
// fds sent before the first was handled could take its place (getfd would
// name the wrong fd). One in flight costs nothing here: QEMU answers in order anyway.
//
// The monitor is a peer, not a friend: every line is bounded (maxLineBytes),
// malformed JSON or an answer to a command never sent ends the connection
// with ERR_VHOST_QMP_PROTOCOL, and event names are only emitted by name when
// they look like QMP event names (no 'error' or '__proto__' from a peer).
import { EventEmitter } from 'node:events';
import '../core/dispose';
import { checkInt, checkNonEmptyString, checkObject, describe, plain } from '../core/check';
import { closedError, invalidArg, VhostError } from '../core/errors';
import { UnixSocket, type PassableFd } from '../core/unix-socket';

/** Default bound on a command's answer, and on the greeting. */
export const QMP_DEFAULT_TIMEOUT_MS = 10_000;
/** Default bound on one line from the monitor (query-qmp-schema, the largest answer of QEMU 7.2, is ~200 KiB). */
export const QMP_DEFAULT_MAX_LINE_BYTES = 4 << 20;
const READ_CHUNK = 64 * 1024;
/** QMP event names are upper-case words (DEVICE_DELETED); anything else is only emitted as 'event'. */
const EVENT_NAME = /^[A-Z][A-Z0-9_]{0,63}$/;
const COMMAND_NAME = /^[A-Za-z][A-Za-z0-9_-]{0,127}$/;

/** Options of Qmp.connect(). */
export interface QmpOptions {
  /** Default bound (ms) on each command's answer and on the greeting; default QMP_DEFAULT_TIMEOUT_MS. */
  timeoutMs?: number;
  /** Longest line accepted from the monitor, newline excluded; default QMP_DEFAULT_MAX_LINE_BYTES. */
  maxLineBytes?: number;
}

/** Options of one command. */
export interface QmpExecuteOptions {
  /** Fds sent with the command (SCM_RIGHTS), for getfd and add-fd; QEMU gets its own copies. */
  fds?: readonly PassableFd[];
  /** Bound (ms) on the answer, counted from the call; default the connection's timeoutMs. */
  timeoutMs?: number;
}

/** An event as the monitor sent it. */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** What QEMU says about itself in its greeting. */
export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

/** A command error from QEMU: code ERR_VHOST_QMP, with QMP's error class and description and the command named. */
export class QmpError extends VhostError {
  /** QMP's error class: 'GenericError', 'CommandNotFound', 'DeviceNotFound', ... */
  readonly qmpClass: string;
  /** QEMU's own words. */
  readonly desc: string;
  /** The command that failed. */
  readonly command: string;

  /** @internal Built from a monitor's answer. */
  constructor(command: string, qmpClass: string, desc: string, path: string) {
    super(`ERR_VHOST_QMP: ${command} failed: ${qmpClass}: ${desc} '${path}'`, { code: 'ERR_VHOST_QMP', syscall: `qmp(${command})`, path });
    this.name = 'QmpError';
    this.qmpClass = qmpClass;
    this.desc = desc;
    this.command = command;
  }
}

interface Pending {
  id: number;
  command: string;
  line: Buffer;
  fds: readonly PassableFd[];
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The events a Qmp emits; QMP events by name (DEVICE_DELETED, SHUTDOWN, ...) take (data, event). */
export interface QmpEvents {
  /** Every event, whatever its name. */
  event: [QmpEvent];
  /** The monitor went away or broke the protocol, or close() was called (reason null); emitted once. */
  close: [VhostError | null];
}

/**
 * A QMP connection. QMP events are emitted by name with (data, event) and all
 * of them as 'event'; 'close' (reason) once when the connection ends. Commands
 * still waiting when it ends are rejected with ERR_VHOST_QMP_DISCONNECTED.
 */
export class Qmp extends EventEmitter implements Disposable {
  /** The monitor socket's path. */
  readonly path: string;
  #greeting: QmpGreeting | null = null;
  readonly #sock: UnixSocket;
  readonly #timeoutMs: number;
  readonly #maxLine: number;
  readonly #readBuf = Buffer.allocUnsafe(READ_CHUNK);
  #partial: Buffer[] = [];
  #partialBytes = 0;
  #queue: Pending[] = [];
  #inFlight: Pending | null = null;
  #out: Buffer | null = null;
  #waitWritable = false;
  #nextId = 1;
  #ended: VhostError | null = null;
  #closed = false;
  #onGreeting: ((line: unknown) => void) | null = null;
  #refed = true;

  private constructor(sock: UnixSocket, path: string, timeoutMs: number, maxLine: number) {
    super();
    this.#sock = sock;
    this.path = path;
    this.#timeoutMs = timeoutMs;
    this.#maxLine = maxLine;
  }

  /**
   * Connects to QEMU's QMP socket (`-qmp unix:PATH,server=on,wait=off`, or a
   * `-chardev socket` + `-mon mode=control`), waits for the greeting and
   * enters command mode (`qmp_capabilities`). ENOENT / ECONNREFUSED when
   * nothing listens, ETIMEDOUT without a greeting in time; nothing stays open on failure.
   */
  static async connect(path: string, options: QmpOptions = {}): Promise<Qmp> {
    checkNonEmptyString(path, 'path', describe);
    checkObject(options, 'options');
    const timeoutMs = checkInt(options.timeoutMs ?? QMP_DEFAULT_TIMEOUT_MS, 'options.timeoutMs', 1, 0x7fff_ffff);
    const maxLine = checkInt(options.maxLineBytes ?? QMP_DEFAULT_MAX_LINE_BYTES, 'options.maxLineBytes', 1024, 1 << 30);
    const qmp = new Qmp(UnixSocket.connect(path), path, timeoutMs, maxLine);
    try {
      await qmp.#greet();
      await qmp.execute('qmp_capabilities');
      return qmp;
    } catch (err) {
      qmp.close();
      throw err;
    }
  }

  #greet(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#onGreeting = null;
        this.off('close', onClose);
        reject(new VhostError(`ETIMEDOUT: no QMP greeting within ${this.#timeoutMs} ms '${this.path}'`, { code: 'ETIMEDOUT', syscall: 'qmp(greeting)', path: this.path }));
      }, this.#timeoutMs);
      this.#onGreeting = (msg) => {
        clearTimeout(timer);
        this.off('close', onClose);
        this.#onGreeting = null;
        const g = isRecord(msg) ? msg.QMP : undefined;
        if (!isRecord(g) || !isRecord(g.version) || !Array.isArray(g.capabilities)) {
          reject(this.#protocolError('the first line is not a QMP greeting'));
          return;
        }
        this.#greeting = g as unknown as QmpGreeting;
        resolve();
      };
      // A monitor that is gone before greeting ends the wait too.
      const onClose = (reason: VhostError | null): void => {
        clearTimeout(timer);
        this.#onGreeting = null;
        reject(reason ?? closedError('QMP connection', this.path));
      };
      this.once('close', onClose);
      this.#watch();
    });
  }

  /** QEMU's version and capabilities from the greeting. */
  get greeting(): QmpGreeting {
    return this.#greeting as QmpGreeting;
  }

  /** True once close() was called or the monitor went away. */
  get closed(): boolean {
    return this.#closed || this.#ended !== null;
  }

  /**
   * Runs a command and resolves with its `return` value. Rejects with a
   * QmpError (code ERR_VHOST_QMP: QMP class and desc) when QEMU refuses it,
   * ETIMEDOUT when no answer comes within the bound (a late answer is then
   * dropped), ERR_VHOST_QMP_DISCONNECTED when the monitor goes away first.
   * Throws ERR_VHOST_CLOSED after close().
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: QmpExecuteOptions = {}): Promise<T> {
    if (this.#closed) throw closedError('QMP connection', this.path);
    if (typeof command !== 'string' || !COMMAND_NAME.test(command)) throw invalidArg('command', `must be a QMP command name, got ${describe(command)}`);
    if (args !== undefined) checkObject(args, 'args');
    checkObject(options, 'options');
    const fds = options.fds ?? [];
    if (!Array.isArray(fds)) throw invalidArg('options.fds', 'must be an array');
    const timeoutMs = checkInt(options.timeoutMs ?? this.#timeoutMs, 'options.timeoutMs', 1, 0x7fff_ffff);
    if (this.#ended) return Promise.reject(this.#disconnected(command));
    const id = this.#nextId++;
    const line = Buffer.from(`${JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id })}\n`);
    return new Promise<T>((resolve, reject) => {
      const p: Pending = {
        id, command, line, fds: [...fds], resolve: resolve as (v: unknown) => void, reject,
        timer: setTimeout(() => this.#timedOut(p, timeoutMs), timeoutMs),
      };
      this.#queue.push(p);
      this.#pump();
    });
  }

  /**
   * Resolves with the first event named `name` for which `match` (when given)
   * is true, or rejects with ETIMEDOUT after `timeoutMs`, or with
   * ERR_VHOST_QMP_DISCONNECTED when the monitor goes away. Arm it before the
   * command that causes the event: QEMU may send the event before the answer.
   */
  waitForEvent(name: string, match: (data: Record<string, unknown>) => boolean = () => true, timeoutMs = this.#timeoutMs): Promise<QmpEvent> {
    if (this.#closed) throw closedError('QMP connection', this.path);
    if (typeof name !== 'string' || !EVENT_NAME.test(name)) throw invalidArg('name', `must be a QMP event name, got ${describe(name)}`);
    if (typeof match !== 'function') throw invalidArg('match', 'must be a function');
    checkInt(timeoutMs, 'timeoutMs', 1, 0x7fff_ffff);
    if (this.#ended) return Promise.reject(this.#disconnected(`waiting for ${name}`));
    return new Promise<QmpEvent>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      const onEvent = (ev: QmpEvent): void => {
        if (ev.event !== name) return;
        let ok: boolean;
        try {
          ok = match(ev.data);
        } catch (err) {
          done();
          reject(err);
          return;
        }
        if (ok) {
          done();
          resolve(ev);
        }
      };
      const onClose = (): void => {
        done();
        reject(this.#disconnected(`waiting for ${name}`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new VhostError(`ETIMEDOUT: no ${name} event within ${timeoutMs} ms '${this.path}'`, { code: 'ETIMEDOUT', syscall: `qmp(${name})`, path: this.path }));
      }, timeoutMs);
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /** The connection keeps the process alive (the default). */
  ref(): void {
    this.#refed = true;
    if (!this.closed) this.#sock.ref();
  }

  /** The connection alone no longer keeps the process alive (pending commands' timers still do). */
  unref(): void {
    this.#refed = false;
    if (!this.closed) this.#sock.unref();
  }

  /** Closes the connection; commands still waiting are rejected (ERR_VHOST_QMP_DISCONNECTED). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#end(null);
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  // ---- sending -------------------------------------------------------------

  #pump(): void {
    if (this.#ended || this.#inFlight !== null || this.#out !== null) return;
    const next = this.#queue.shift();
    if (next === undefined) return;
    this.#inFlight = next;
    let sent: number | null;
    try {
      sent = this.#sock.send(next.line, next.fds);
    } catch (err) {
      const code = (err as VhostError).code;
      if (code === 'EPIPE' || code === 'ECONNRESET' || code === 'ENOTCONN') {
        this.#end(err as VhostError); // the monitor is gone: this command and all others fail as disconnected
        return;
      }
      // An fd the caller closed meanwhile (ERR_VHOST_CLOSED) or the like: only this command fails.
      this.#inFlight = null;
      this.#settle(next, err as Error);
      this.#pump();
      return;
    }
    if (sent === null) {
      // Nothing went out (a full send buffer): the whole message, fds included, goes again when writable.
      this.#inFlight = null;
      this.#queue.unshift(next);
      this.#waitWritable = true;
    } else if (sent < next.line.length) {
      this.#out = next.line.subarray(sent); // the fds went with the first byte; the rest is plain bytes
    }
    this.#watch();
  }

  #flush(): void {
    this.#waitWritable = false;
    if (this.#out === null) {
      this.#pump();
      return;
    }
    const sent = this.#sock.send(this.#out);
    if (sent !== null) this.#out = sent < this.#out.length ? this.#out.subarray(sent) : null;
    this.#watch();
  }

  #watch(): void {
    if (this.#ended) return;
    const writable = this.#out !== null || this.#waitWritable;
    this.#sock.watch((err) => this.#onReady(err), { writable });
    if (!this.#refed) this.#sock.unref();
  }

  // ---- receiving -----------------------------------------------------------

  #onReady(err?: VhostError): void {
    if (this.#ended) return;
    if (err) {
      // libuv reports POLLERR as EBADF: read to learn what happened (ECONNRESET, or the end of stream).
      try {
        this.#read();
      } catch (e) {
        this.#end(e instanceof VhostError ? e : err);
        return;
      }
      this.#end(err);
      return;
    }
    try {
      if (this.#out !== null || this.#waitWritable) this.#flush();
      this.#read();
    } catch (e) {
      this.#end(e instanceof VhostError ? e : new VhostError(`ERR_VHOST_QMP_PROTOCOL: ${(e as Error).message} '${this.path}'`, { code: 'ERR_VHOST_QMP_PROTOCOL', path: this.path }));
    }
  }

  #read(): void {
    // Bounded per wake-up: at most a few chunks, then back to the loop.
    for (let round = 0; round < 16 && !this.#ended; round++) {
      const got = this.#sock.receive(this.#readBuf);
      if (got === null) return;
      if (got.bytes === 0) {
        this.#end(new VhostError(`ECONNRESET: the QMP monitor closed the connection '${this.path}'`, { code: 'ECONNRESET', path: this.path }));
        return;
      }
      this.#take(this.#readBuf.subarray(0, got.bytes));
    }
  }

  #take(chunk: Buffer): void {
    let start = 0;
    while (!this.#ended) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) {
        const rest = chunk.length - start;
        if (this.#partialBytes + rest > this.#maxLine) {
          throw this.#protocolError(`a line from the monitor exceeds ${this.#maxLine} bytes`);
        }
        if (rest > 0) {
          this.#partial.push(Buffer.from(chunk.subarray(start)));
          this.#partialBytes += rest;
        }
        return;
      }
      const piece = chunk.subarray(start, nl);
      if (this.#partialBytes + piece.length > this.#maxLine) throw this.#protocolError(`a line from the monitor exceeds ${this.#maxLine} bytes`);
      const line = this.#partial.length === 0 ? piece : Buffer.concat([...this.#partial, piece]);
      this.#partial = [];
      this.#partialBytes = 0;
      start = nl + 1;
      const text = line.toString('utf8').trim();
      if (text.length > 0) this.#message(text);
    }
  }

  #message(text: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch {
      throw this.#protocolError(`the monitor sent a line that is not JSON (${plain(text)})`);
    }
    if (!isRecord(msg)) throw this.#protocolError('the monitor sent JSON that is not an object');
    if (this.#onGreeting) {
      this.#onGreeting(msg);
      return;
    }
    if (typeof msg.event === 'string') {
      this.#event(msg);
      return;
    }
    if (!('return' in msg) && !isRecord(msg.error)) throw this.#protocolError('the monitor sent an object that is neither an answer nor an event');
    const id = msg.id;
    const p = this.#inFlight;
    if (p === null || id !== p.id) {
      // An answer to a command that timed out arrives late: dropped. Anything else is a broken peer.
      if (typeof id === 'number' && Number.isInteger(id) && id > 0 && id < this.#nextId) return;
      throw this.#protocolError(`the monitor answered a command never sent (id ${plain(id)})`);
    }
    this.#inFlight = null;
    if ('return' in msg) this.#settle(p, null, msg.return);
    else {
      const e = msg.error as Record<string, unknown>;
      this.#settle(p, new QmpError(p.command, typeof e.class === 'string' ? e.class : 'GenericError', typeof e.desc === 'string' ? e.desc : '(no description)', this.path));
    }
    this.#pump();
  }

  #event(msg: Record<string, unknown>): void {
    const ts = isRecord(msg.timestamp) ? msg.timestamp : {};
    const ev: QmpEvent = {
      event: msg.event as string,
      data: isRecord(msg.data) ? msg.data : {},
      timestamp: { seconds: Number(ts.seconds) || 0, microseconds: Number(ts.microseconds) || 0 },
    };
    try {
      this.emit('event', ev);
      if (EVENT_NAME.test(ev.event)) this.emit(ev.event, ev.data, ev);
    } catch (err) {
      // A listener's exception is the caller's bug, not the monitor's: it surfaces as uncaught, the connection stays.
      queueMicrotask(() => {
        throw err;
      });
    }
  }

  // ---- ending --------------------------------------------------------------

  #settle(p: Pending, err: Error | null, value?: unknown): void {
    clearTimeout(p.timer);
    if (err) p.reject(err);
    else p.resolve(value);
  }

  #timedOut(p: Pending, ms: number): void {
    const queued = this.#queue.indexOf(p);
    if (queued >= 0) this.#queue.splice(queued, 1);
    if (this.#inFlight === p) this.#inFlight = null; // its answer, if it ever comes, is dropped
    p.reject(new VhostError(`ETIMEDOUT: QMP command ${p.command} got no answer within ${ms} ms '${this.path}'`, {
      code: 'ETIMEDOUT', syscall: `qmp(${p.command})`, path: this.path,
    }));
    this.#pump();
  }

  #protocolError(what: string): VhostError {
    return new VhostError(`ERR_VHOST_QMP_PROTOCOL: ${what} '${this.path}'`, { code: 'ERR_VHOST_QMP_PROTOCOL', path: this.path });
  }

  #disconnected(command: string): VhostError {
    const why = this.#ended && this.#ended.code !== 'ERR_VHOST_CLOSED' ? ` (${this.#ended.message})` : '';
    return new VhostError(`ERR_VHOST_QMP_DISCONNECTED: ${command}: the QMP connection ended${why} '${this.path}'`, {
      code: 'ERR_VHOST_QMP_DISCONNECTED', syscall: `qmp(${command})`, path: this.path,
    });
  }

  #end(reason: VhostError | null): void {
    if (this.#ended) return;
    this.#ended = reason ?? closedError('QMP connection', this.path);
    this.#sock.close();
    this.#partial = [];
    this.#partialBytes = 0;
    this.#out = null;
    const all = [...(this.#inFlight ? [this.#inFlight] : []), ...this.#queue.splice(0)];
    this.#inFlight = null;
    for (const p of all) this.#settle(p, this.#disconnected(p.command));
    this.emit('close', reason);
  }
}
