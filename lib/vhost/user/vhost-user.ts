// VhostUser: the vhost-user front-end (this process plays QEMU's role). The
// vhost message set of VhostBackend, sent over a unix socket with guest memory
// and eventfds passed alongside (SCM_RIGHTS), to a back-end in another process
// (qemu-storage-daemon, virtiofsd, vhost-device-*).
//
// Calls are synchronous, as QEMU's are: send, then wait for the reply with a
// bounded poll (timeoutMs, ETIMEDOUT past it). Between calls the socket is
// watched on the event loop: end of stream, a hang-up or a message nobody asked
// for means the back-end is gone or broken, reported once as 'disconnect' with
// the reason; after that every call fails with ERR_VHOST_USER_DISCONNECTED
// until reconnect(). Any reply that breaks the protocol, and any timeout,
// closes the connection too: the stream cannot be trusted to resynchronise.
import { EventEmitter } from 'node:events';
import { checkInt, checkObject, describe, toU64 } from '../../core/check';
import { closedError, invalidArg, VhostError } from '../../core/errors';
import { FdOwner } from '../../core/fd';
import { UnixSocket, type PassableFd } from '../../core/unix-socket';
import type { FdLike, LogArea, MemoryLike, MemoryRegion, VhostBackend, VringAddr } from '../backend';
import {
  checkReplyHeader, CONFIG_HEADER_SIZE, decodeConfig, decodeHeader, decodeU64, decodeVringState, encodeConfig, encodeLog, encodeMemTable,
  encodeMessage, encodeU64, encodeVringAddr, encodeVringState, FLAG_NEED_REPLY, HEADER_SIZE, MAX_CONFIG_SIZE, MAX_MEM_REGIONS,
  protocolError, requestName, U64_SIZE, VERSION, VHOST_USER_F_PROTOCOL_FEATURES, VhostUserProtocolFeature as P, VhostUserRequest as R,
  vringFdPayload, VRING_INDEX_MASK,
} from './messages';

/** Default bound on every reply. */
export const VHOST_USER_DEFAULT_TIMEOUT_MS = 5000;

const bit = (n: number): bigint => 1n << BigInt(n);
const PROTOCOL_FEATURES_BIT = bit(VHOST_USER_F_PROTOCOL_FEATURES);

/** Protocol features this front-end implements (and asks for when offered). */
export const VHOST_USER_SUPPORTED_PROTOCOL_FEATURES = bit(P.MQ) | bit(P.LOG_SHMFD) | bit(P.REPLY_ACK) | bit(P.CONFIG) | bit(P.RESET_DEVICE);

/** Options of VhostUser.connect(), fromSocket() and fromFd(). */
export interface VhostUserOptions {
  /** Bound on each reply in milliseconds (1..600000); default 5000. */
  timeoutMs?: number;
  /**
   * Protocol features to ask for (bits VhostUserProtocolFeature), intersected
   * with what the back-end offers and what this front-end implements.
   * Default: all it implements (MQ, LOG_SHMFD, REPLY_ACK, CONFIG, RESET_DEVICE).
   */
  protocolFeatures?: bigint;
}

/** Why the connection ended: the reason given to 'disconnect'. */
export type DisconnectReason = VhostError;

interface RingConfig {
  num?: number;
  base?: number;
  addr?: VringAddr;
  kick?: FdLike;
  call?: FdLike;
  err?: FdLike;
  enable?: boolean;
}

/** What reconnect() replays, in the order it was first sent. */
interface SavedConfig {
  owner: boolean;
  features?: bigint;
  memTable?: MemoryRegion[];
  log?: LogArea;
  rings: Map<number, RingConfig>;
}

function disconnectedError(path: string, reason: VhostError | null): VhostError {
  const why = reason ? ` (${reason.message})` : '';
  return new VhostError(`ERR_VHOST_USER_DISCONNECTED: the vhost-user back-end at '${path}' is disconnected${why}: call reconnect() or close()`, {
    code: 'ERR_VHOST_USER_DISCONNECTED',
    path,
  });
}

function fdOf(value: unknown, arg: string): PassableFd | null {
  if (value === null || value === undefined || value === -1) return null;
  if (value instanceof FdOwner) {
    void value.nativeHandle; // throws ERR_VHOST_CLOSED now rather than in sendmsg
    return value;
  }
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 0x7fff_ffff) return value;
  throw invalidArg(arg, `must be an EventFd (an FdOwner), an fd number or null, got ${describe(value)}`);
}

const checkIndex = (index: unknown): number => checkInt(index, 'index', 0, VRING_INDEX_MASK, describe);
const checkU32 = (value: unknown, arg: string): number => checkInt(value, arg, 0, 0xffff_ffff, describe);
const checkU64 = (value: unknown, arg: string): bigint => toU64(value, arg, describe);

/**
 * A connection to a vhost-user back-end: one method per message, named after
 * it, implementing VhostBackend. Emits 'disconnect' (reason) once when the
 * back-end goes away or breaks the protocol.
 */
export class VhostUser extends EventEmitter implements VhostBackend {
  readonly path: string;
  readonly memoryAccess = 'fd' as const;
  readonly timeoutMs: number;
  readonly #wantedProtocol: bigint;
  #sock: UnixSocket | null = null;
  #closed = false;
  #disconnectReason: VhostError | null = null;
  #offered = 0n;
  #protocol = 0n;
  #offeredProtocol = 0n;
  #refed = true;
  #saved: SavedConfig = { owner: false, rings: new Map() };
  #fromSocket = false;
  readonly #connect: () => UnixSocket;

  private constructor(path: string, connect: () => UnixSocket, options: VhostUserOptions) {
    super();
    this.path = path;
    this.#connect = connect;
    checkObject(options, 'options');
    this.timeoutMs = checkInt(options.timeoutMs ?? VHOST_USER_DEFAULT_TIMEOUT_MS, 'options.timeoutMs', 1, 600_000, describe);
    this.#wantedProtocol = checkU64(options.protocolFeatures ?? VHOST_USER_SUPPORTED_PROTOCOL_FEATURES, 'options.protocolFeatures');
  }

  /**
   * Connects to the back-end listening at `path` and negotiates the protocol:
   * GET_FEATURES, then (when it offers VHOST_USER_F_PROTOCOL_FEATURES)
   * GET_PROTOCOL_FEATURES and SET_PROTOCOL_FEATURES. Nothing is left open when
   * any of it fails (ECONNREFUSED for a path that is no socket, ENOENT, ...).
   */
  static connect(path: string, options: VhostUserOptions = {}): VhostUser {
    if (typeof path !== 'string' || path.length === 0) throw invalidArg('path', `must be a non-empty string, got ${describe(path)}`);
    const dev = new VhostUser(path, () => UnixSocket.connect(path), options);
    dev.#open();
    return dev;
  }

  /**
   * Speaks vhost-user over a connected stream socket this process already has
   * (a socketpair end handed to a back-end it spawned, or an inherited fd); the
   * VhostUser owns it from here. reconnect() is not possible without a path.
   */
  static fromSocket(socket: UnixSocket, options: VhostUserOptions = {}): VhostUser {
    if (!(socket instanceof UnixSocket) || socket.type !== 'stream') throw invalidArg('socket', 'must be a connected stream UnixSocket');
    const dev = new VhostUser(socket.path, () => socket, options);
    dev.#fromSocket = true;
    try {
      dev.#open();
    } catch (err) {
      socket.close();
      throw err;
    }
    return dev;
  }

  /** Like fromSocket() for a raw fd number this process owns (it is adopted, then owned here). */
  static fromFd(fd: number, options: VhostUserOptions = {}): VhostUser {
    return VhostUser.fromSocket(UnixSocket.fromFd(fd, { label: `vhost-user-fd:${fd}` }), options);
  }

  /** True after close(). */
  get closed(): boolean {
    return this.#closed;
  }

  /** True while connected (not closed, not disconnected). */
  get connected(): boolean {
    return this.#sock !== null;
  }

  /** The virtio feature bits the back-end offered at connect (GET_FEATURES). */
  get offeredFeatures(): bigint {
    return this.#offered;
  }

  /** Protocol features in use (offered ∩ asked for ∩ implemented); 0n without VHOST_USER_F_PROTOCOL_FEATURES. */
  get protocolFeatures(): bigint {
    return this.#protocol;
  }

  /** Protocol features the back-end offered. */
  get offeredProtocolFeatures(): bigint {
    return this.#offeredProtocol;
  }

  /** Whether protocol feature `bit` (VhostUserProtocolFeature) is in use. */
  hasProtocolFeature(bitNumber: number): boolean {
    return (this.#protocol & bit(bitNumber)) !== 0n;
  }

  #open(): void {
    const sock = this.#connect();
    this.#sock = sock;
    this.#disconnectReason = null;
    try {
      this.#offered = this.getFeatures();
      this.#offeredProtocol = 0n;
      this.#protocol = 0n;
      if (this.#offered & PROTOCOL_FEATURES_BIT) {
        this.#offeredProtocol = this.getProtocolFeatures();
        const use = this.#offeredProtocol & this.#wantedProtocol & VHOST_USER_SUPPORTED_PROTOCOL_FEATURES;
        this.setProtocolFeatures(use);
      }
    } catch (err) {
      this.#drop(null);
      throw err;
    }
    this.#watchIdle();
  }

  // Between calls any readable event is bad news: the back-end closed, hung
  // up, or sent something nobody asked for (back-end requests come on their
  // own channel, which this front-end does not set up).
  #watchIdle(): void {
    const sock = this.#sock!;
    sock.watch((pollErr) => {
      if (this.#sock !== sock) return;
      if (pollErr) return this.#disconnect(pollErr);
      let reason: VhostError;
      try {
        const got = sock.receive(Buffer.alloc(HEADER_SIZE));
        if (got === null) return; // a reply already read by a synchronous call
        reason =
          got.bytes === 0
            ? new VhostError(`ECONNRESET: the vhost-user back-end closed the connection '${this.path}'`, { code: 'ECONNRESET', path: this.path })
            : protocolError('idle', `the back-end sent ${got.bytes} bytes nobody asked for`);
      } catch (err) {
        reason = err as VhostError;
      }
      this.#disconnect(reason);
    });
    if (!this.#refed) sock.unref();
  }

  /** Closes the socket (if any) without emitting. */
  #drop(reason: VhostError | null): void {
    const sock = this.#sock;
    this.#sock = null;
    this.#disconnectReason = reason;
    sock?.close();
  }

  #disconnect(reason: VhostError): void {
    if (this.#sock === null) return;
    this.#drop(reason);
    this.emit('disconnect', reason);
  }

  /** The live socket, or the error explaining why there is none. */
  #live(): UnixSocket {
    if (this.#closed) throw closedError('VhostUser', this.path);
    if (this.#sock === null) throw disconnectedError(this.path, this.#disconnectReason);
    return this.#sock;
  }

  // ---- one request -------------------------------------------------------

  #timeoutError(name: string, what: string): VhostError {
    return new VhostError(`ETIMEDOUT: the vhost-user back-end did not ${what} within ${this.timeoutMs} ms, ${name} '${this.path}'`, {
      code: 'ETIMEDOUT',
      errno: -110,
      syscall: `vhost-user(${name})`,
      path: this.path,
      step: name,
    });
  }

  /** A failure that leaves the stream unusable: disconnect (reported on the next tick) and throw. */
  #fatal(err: unknown, name: string): never {
    const e = err instanceof VhostError ? err : new VhostError(`${name}: ${String(err)}`, { code: 'ERR_VHOST_USER_PROTOCOL' });
    e.step ??= name;
    if (e.path === undefined) e.path = this.path;
    if (this.#sock !== null) {
      this.#drop(e);
      process.nextTick(() => this.emit('disconnect', e));
    }
    throw e;
  }

  #send(sock: UnixSocket, name: string, message: Buffer, fds: PassableFd[], deadline: number): void {
    let done: boolean;
    try {
      done = sock.sendAll(message, fds, Math.max(0, deadline - Date.now()));
    } catch (err) {
      // The back-end is gone (EPIPE, ECONNRESET): name the message that found out.
      (err as VhostError).step = name;
      throw err;
    }
    if (!done) throw this.#timeoutError(name, 'take the request');
  }

  #readExactly(sock: UnixSocket, name: string, n: number, deadline: number): Buffer {
    const buf = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      let r;
      try {
        r = sock.receive(buf.subarray(got)); // no reply this front-end reads carries fds
      } catch (err) {
        if ((err as VhostError).code !== 'ERR_VHOST_TRUNCATED') throw err;
        throw protocolError(name, 'the back-end sent file descriptors with its reply (closed unread)');
      }
      if (r === null) {
        const left = deadline - Date.now();
        if (left <= 0 || !sock.waitReadable(left)) throw this.#timeoutError(name, 'reply');
        continue;
      }
      if (r.bytes === 0) {
        throw new VhostError(`ECONNRESET: the vhost-user back-end closed the connection while ${name} waited for its reply '${this.path}'`, {
          code: 'ECONNRESET',
          syscall: `vhost-user(${name})`,
          path: this.path,
        });
      }
      got += r.bytes;
    }
    return buf;
  }

  /**
   * Sends one message and, per `reply`, reads its reply: 'none', 'ack' (a
   * REPLY_ACK u64 when the back-end offers it), or a payload whose size
   * `reply.sizeOk` accepts. Returns the reply payload (empty for none/ack).
   */
  #request(request: number, payload: Uint8Array, fds: PassableFd[], reply: 'none' | 'ack' | { sizeOk: (size: number) => boolean; words: string }): Buffer {
    const sock = this.#live();
    const name = requestName(request);
    const ack = reply === 'ack' && this.hasProtocolFeature(P.REPLY_ACK);
    const message = encodeMessage(request, VERSION | (ack ? FLAG_NEED_REPLY : 0), payload);
    const deadline = Date.now() + this.timeoutMs;
    let body: Buffer;
    try {
      this.#send(sock, name, message, fds, deadline);
      if (reply === 'none' || (reply === 'ack' && !ack)) return Buffer.alloc(0);
      const header = decodeHeader(this.#readExactly(sock, name, HEADER_SIZE, deadline), name);
      const expect = reply === 'ack' ? { sizeOk: (s: number) => s === U64_SIZE, words: '8 bytes (a REPLY_ACK u64)' } : reply;
      checkReplyHeader(header, request, expect.sizeOk, expect.words);
      body = this.#readExactly(sock, name, header.size, deadline);
    } catch (err) {
      this.#fatal(err, name);
    }
    if (ack) {
      const status = decodeU64(body, name);
      if (status !== 0n) {
        // The back-end refused this message but the stream is intact: the connection stays.
        throw new VhostError(`ERR_VHOST_USER_NACK: the vhost-user back-end refused ${name} (REPLY_ACK status ${status}) '${this.path}'`, {
          code: 'ERR_VHOST_USER_NACK',
          step: name,
          path: this.path,
        });
      }
      return Buffer.alloc(0);
    }
    return body;
  }

  #getU64(request: number): bigint {
    const body = this.#request(request, Buffer.alloc(0), [], { sizeOk: (s) => s === U64_SIZE, words: '8 bytes (a u64)' });
    return decodeU64(body, requestName(request));
  }

  #ring(index: number): RingConfig {
    let ring = this.#saved.rings.get(index);
    if (!ring) this.#saved.rings.set(index, (ring = {}));
    return ring;
  }

  // ---- the messages ------------------------------------------------------

  /** GET_FEATURES: the virtio feature bits the back-end offers (bit 30: it speaks protocol features). */
  getFeatures(): bigint {
    return this.#getU64(R.GET_FEATURES);
  }

  /**
   * SET_FEATURES: acknowledges virtio features. VHOST_USER_F_PROTOCOL_FEATURES
   * is added when protocol features are in use (as QEMU does: the rings then
   * start disabled until setVringEnable). A bit the back-end did not offer is
   * ERR_VHOST_UNSUPPORTED before anything is sent.
   */
  setFeatures(bits: bigint): void {
    if (typeof bits !== 'bigint') throw invalidArg('bits', `must be a bigint, got ${describe(bits)}`);
    const v = checkU64(bits, 'bits') | (this.#offered & PROTOCOL_FEATURES_BIT);
    const extra = v & ~this.#offered;
    if (extra !== 0n) throw invalidArg('bits', `asks for 0x${extra.toString(16)}, which the back-end did not offer (0x${this.#offered.toString(16)})`, 'ERR_VHOST_UNSUPPORTED');
    this.#request(R.SET_FEATURES, encodeU64(v), [], 'ack');
    this.#saved.features = v;
  }

  /** GET_PROTOCOL_FEATURES (only when the back-end offers VHOST_USER_F_PROTOCOL_FEATURES). */
  getProtocolFeatures(): bigint {
    return this.#getU64(R.GET_PROTOCOL_FEATURES);
  }

  /** SET_PROTOCOL_FEATURES; connect() already negotiated them. Not acknowledged (REPLY_ACK is what is being set). */
  setProtocolFeatures(bits: bigint): void {
    const v = checkU64(bits, 'bits');
    const notOffered = v & ~this.#offeredProtocol;
    if (notOffered !== 0n) throw invalidArg('bits', `asks for protocol features 0x${notOffered.toString(16)}, which the back-end did not offer (0x${this.#offeredProtocol.toString(16)})`, 'ERR_VHOST_UNSUPPORTED');
    const unknown = v & ~VHOST_USER_SUPPORTED_PROTOCOL_FEATURES;
    if (unknown !== 0n) throw invalidArg('bits', `asks for protocol features 0x${unknown.toString(16)}, which this front-end does not implement`, 'ERR_VHOST_UNSUPPORTED');
    this.#request(R.SET_PROTOCOL_FEATURES, encodeU64(v), [], 'none');
    this.#protocol = v;
  }

  /** SET_OWNER: starts the session. */
  setOwner(): void {
    this.#request(R.SET_OWNER, Buffer.alloc(0), [], 'ack');
    this.#saved.owner = true;
  }

  /** RESET_OWNER (deprecated by the spec; back-ends disable every ring or ignore it). */
  resetOwner(): void {
    this.#request(R.RESET_OWNER, Buffer.alloc(0), [], 'ack');
  }

  /**
   * RESET_DEVICE when the back-end offers it, else RESET_OWNER: every ring
   * disabled and the device state reset. The saved configuration is forgotten.
   */
  resetDevice(): void {
    if (this.hasProtocolFeature(P.RESET_DEVICE)) this.#request(R.RESET_DEVICE, Buffer.alloc(0), [], 'ack');
    else this.resetOwner();
    this.#saved = { owner: this.#saved.owner, rings: new Map() };
  }

  /** GET_QUEUE_NUM: how many queues the back-end supports (needs the MQ protocol feature). */
  getQueueNum(): number {
    this.#needProtocol(P.MQ, 'MQ', 'GET_QUEUE_NUM');
    return Number(this.#getU64(R.GET_QUEUE_NUM));
  }

  /**
   * SET_MEM_TABLE: each region's file travels with the message (SCM_RIGHTS),
   * so every region needs one (GuestMemory with memfd backing, the default);
   * at most 8 regions. Checked before anything is sent.
   */
  setMemTable(mem: readonly MemoryRegion[] | MemoryLike): void {
    const list = Array.isArray(mem) ? mem : (mem as MemoryLike | null)?.regions;
    if (!Array.isArray(list) || list.length === 0) throw invalidArg('mem', 'must be a GuestMemory or a non-empty array of { gpa, size, hva, fd, offset }');
    if (list.length > MAX_MEM_REGIONS) {
      throw invalidArg('mem', `has ${list.length} regions; a vhost-user memory table holds at most ${MAX_MEM_REGIONS}`, 'ERR_VHOST_OUT_OF_RANGE');
    }
    const regions: MemoryRegion[] = list.map((r: MemoryRegion, i: number) => {
      checkObject(r, `mem[${i}]`, 'an object { gpa, size, hva, fd, offset }');
      if (r.fd === undefined || r.fd === null || r.fd < 0) {
        throw new VhostError(
          `ERR_VHOST_USER_NO_FD: mem[${i}] (gpa 0x${BigInt(r.gpa).toString(16)}) has no file, so it cannot be shared with a vhost-user back-end: use memfd backing`,
          { code: 'ERR_VHOST_USER_NO_FD', step: 'SET_MEM_TABLE' },
        );
      }
      checkInt(r.fd, `mem[${i}].fd`, 0, 0x7fff_ffff, describe);
      return { gpa: checkU64(r.gpa, `mem[${i}].gpa`), size: checkU64(r.size, `mem[${i}].size`), hva: checkU64(r.hva, `mem[${i}].hva`), fd: r.fd, offset: checkU64(r.offset ?? 0n, `mem[${i}].offset`) };
    });
    const payload = encodeMemTable(regions.map((r) => ({ gpa: r.gpa, size: r.size, userAddr: r.hva, mmapOffset: r.offset! })));
    this.#request(R.SET_MEM_TABLE, payload, regions.map((r) => r.fd!), 'ack');
    this.#saved.memTable = regions;
  }

  /**
   * SET_LOG_BASE with LOG_SHMFD: the dirty log's memfd and its size/offset.
   * The back-end answers (the spec's one reply for this message).
   */
  setLogBase(log: LogArea | bigint | number): void {
    this.#needProtocol(P.LOG_SHMFD, 'LOG_SHMFD', 'SET_LOG_BASE');
    if (typeof log !== 'object' || log === null || typeof log.fd !== 'number' || log.fd < 0) {
      throw invalidArg('log', 'must be a LogArea with the memfd holding the log (vhost-user shares the log by fd, LOG_SHMFD)');
    }
    const area = { hva: checkU64(log.hva, 'log.hva'), size: checkU64(log.size, 'log.size'), fd: checkInt(log.fd, 'log.fd', 0, 0x7fff_ffff), offset: checkU64(log.offset ?? 0n, 'log.offset') };
    this.#request(R.SET_LOG_BASE, encodeLog({ size: area.size, offset: area.offset }), [area.fd], {
      sizeOk: (s) => s === 0 || s === U64_SIZE, // QEMU reads any; libvhost-user sends a u64, DPDK nothing
      words: '0 or 8 bytes',
    });
    this.#saved.log = area;
  }

  /** SET_VRING_NUM: the ring's size. */
  setVringNum(index: number, num: number): void {
    const i = checkIndex(index);
    const n = checkU32(num, 'num');
    this.#request(R.SET_VRING_NUM, encodeVringState({ index: i, num: n }), [], 'ack');
    this.#ring(i).num = n;
  }

  /** SET_VRING_BASE: the next available index the back-end processes. */
  setVringBase(index: number, base: number): void {
    const i = checkIndex(index);
    const b = checkU32(base, 'base');
    this.#request(R.SET_VRING_BASE, encodeVringState({ index: i, num: b }), [], 'ack');
    this.#ring(i).base = b;
  }

  /** GET_VRING_BASE: stops the ring and returns its next available index (saved for reconnect()). */
  getVringBase(index: number): number {
    const i = checkIndex(index);
    const body = this.#request(R.GET_VRING_BASE, encodeVringState({ index: i, num: 0 }), [], { sizeOk: (s) => s === 8, words: '8 bytes (a vring state)' });
    const state = decodeVringState(body, 'GET_VRING_BASE');
    if (state.index !== i) this.#fatal(protocolError('GET_VRING_BASE', `the reply is for ring ${state.index}, asked for ${i}`), 'GET_VRING_BASE');
    this.#ring(i).base = state.num;
    return state.num;
  }

  /**
   * SET_VRING_ADDR: the ring parts' addresses in this process (vhost-user
   * takes the front-end's virtual addresses; the back-end translates them
   * through the memory table's user addresses), as for the kernel.
   */
  setVringAddr(index: number, addr: VringAddr): void {
    const i = checkIndex(index);
    checkObject(addr, 'addr', 'an object { desc, avail, used, log?, flags? }');
    const a = {
      index: i,
      flags: checkU32(addr.flags ?? 0, 'addr.flags'),
      desc: checkU64(addr.desc, 'addr.desc'),
      used: checkU64(addr.used, 'addr.used'),
      avail: checkU64(addr.avail, 'addr.avail'),
      log: checkU64(addr.log ?? 0n, 'addr.log'),
    };
    this.#request(R.SET_VRING_ADDR, encodeVringAddr(a), [], 'ack');
    this.#ring(i).addr = { desc: a.desc, avail: a.avail, used: a.used, log: a.log, flags: a.flags };
  }

  #vringFd(request: number, index: number, fd: FdLike, key: 'kick' | 'call' | 'err'): void {
    const i = checkIndex(index);
    const f = fdOf(fd, 'fd');
    this.#request(request, vringFdPayload(i, f !== null, requestName(request)), f === null ? [] : [f], 'ack');
    this.#ring(i)[key] = f;
  }

  /** SET_VRING_KICK: the eventfd the driver signals (null: NOFD, the back-end polls). Starts the ring. */
  setVringKick(index: number, fd: FdLike): void {
    this.#vringFd(R.SET_VRING_KICK, index, fd, 'kick');
  }

  /** SET_VRING_CALL: the eventfd the back-end signals when it used buffers (null: NOFD). */
  setVringCall(index: number, fd: FdLike): void {
    this.#vringFd(R.SET_VRING_CALL, index, fd, 'call');
  }

  /** SET_VRING_ERR: the eventfd the back-end signals on ring errors (null: NOFD). */
  setVringErr(index: number, fd: FdLike): void {
    this.#vringFd(R.SET_VRING_ERR, index, fd, 'err');
  }

  /** SET_VRING_ENABLE: with protocol features in use rings start disabled; this enables (or disables) one. */
  setVringEnable(index: number, enable: boolean): void {
    const i = checkIndex(index);
    if (typeof enable !== 'boolean') throw invalidArg('enable', `must be a boolean, got ${describe(enable)}`);
    if (!(this.#offered & PROTOCOL_FEATURES_BIT)) {
      throw new VhostError('ERR_VHOST_UNSUPPORTED: SET_VRING_ENABLE needs VHOST_USER_F_PROTOCOL_FEATURES, which this back-end does not offer (its rings start enabled)', {
        code: 'ERR_VHOST_UNSUPPORTED',
        step: 'SET_VRING_ENABLE',
      });
    }
    this.#request(R.SET_VRING_ENABLE, encodeVringState({ index: i, num: enable ? 1 : 0 }), [], 'ack');
    this.#ring(i).enable = enable;
  }

  /**
   * GET_CONFIG: `size` bytes of the device's config space from `offset` (needs
   * the CONFIG protocol feature). A back-end answering with an empty payload
   * reports a failure: ERR_VHOST_USER_NACK.
   */
  getConfig(offset: number, size: number, flags = 0): Uint8Array {
    this.#needProtocol(P.CONFIG, 'CONFIG', 'GET_CONFIG');
    const off = checkU32(offset, 'offset');
    const n = checkInt(size, 'size', 1, MAX_CONFIG_SIZE, describe);
    const f = checkU32(flags, 'flags');
    const body = this.#request(R.GET_CONFIG, encodeConfig({ offset: off, flags: f, data: new Uint8Array(n) }), [], {
      sizeOk: (s) => s === 0 || s === CONFIG_HEADER_SIZE + n,
      words: `${CONFIG_HEADER_SIZE + n} bytes (the ${n} asked for), or 0 for a failure`,
    });
    if (body.length === 0) {
      throw new VhostError(`ERR_VHOST_USER_NACK: the vhost-user back-end refused GET_CONFIG (offset ${off}, ${n} bytes) '${this.path}'`, {
        code: 'ERR_VHOST_USER_NACK',
        step: 'GET_CONFIG',
        path: this.path,
      });
    }
    let config;
    try {
      config = decodeConfig(body, 'GET_CONFIG');
      if (config.offset !== off) throw protocolError('GET_CONFIG', `the reply is for offset ${config.offset}, asked for ${off}`);
    } catch (err) {
      this.#fatal(err, 'GET_CONFIG');
    }
    return config.data;
  }

  /** SET_CONFIG: writes `data` into the device's config space at `offset` (flags 0: a driver write; 1: migration). */
  setConfig(offset: number, data: Uint8Array, flags = 0): void {
    this.#needProtocol(P.CONFIG, 'CONFIG', 'SET_CONFIG');
    if (!(data instanceof Uint8Array) || data.length === 0 || data.length > MAX_CONFIG_SIZE) throw invalidArg('data', `must be a Uint8Array of 1..${MAX_CONFIG_SIZE} bytes`, 'ERR_VHOST_OUT_OF_RANGE');
    this.#request(R.SET_CONFIG, encodeConfig({ offset: checkU32(offset, 'offset'), flags: checkU32(flags, 'flags'), data }), [], 'ack');
  }

  #needProtocol(bitNumber: number, feature: string, name: string): void {
    this.#live();
    if (!this.hasProtocolFeature(bitNumber)) {
      throw new VhostError(`ERR_VHOST_UNSUPPORTED: ${name} needs the ${feature} protocol feature, which was not negotiated with '${this.path}' (offered 0x${this.#offeredProtocol.toString(16)})`, {
        code: 'ERR_VHOST_UNSUPPORTED',
        step: name,
        path: this.path,
      });
    }
  }

  // ---- lifecycle ---------------------------------------------------------

  /**
   * Connects again (a back-end restarted after a crash, or after 'disconnect')
   * and replays the saved configuration: SET_OWNER, SET_FEATURES,
   * SET_MEM_TABLE, SET_LOG_BASE, then per ring NUM, BASE, ADDR, KICK, CALL,
   * ERR, ENABLE. Each ring resumes from its saved base (the last one set or
   * read), or from `bases[index]` when given (a driver that knows which
   * requests completed, e.g. its used index, to have the rest redone).
   */
  reconnect(options: { bases?: Record<number, number> } = {}): void {
    if (this.#closed) throw closedError('VhostUser', this.path);
    checkObject(options, 'options');
    if (this.#fromSocket) {
      throw new VhostError('ERR_VHOST_UNSUPPORTED: a vhost-user connection made from a socket or fd has no path to reconnect to', { code: 'ERR_VHOST_UNSUPPORTED', step: 'reconnect' });
    }
    const saved = this.#saved;
    this.#drop(this.#disconnectReason);
    this.#open();
    this.#saved = { owner: false, rings: new Map() };
    try {
      this.#replay(saved, options.bases);
    } catch (err) {
      this.#saved = saved; // a later reconnect() replays all of it again
      throw err;
    }
  }

  #replay(saved: SavedConfig, bases: Record<number, number> | undefined): void {
    if (saved.owner) this.setOwner();
    if (saved.features !== undefined) this.setFeatures(saved.features & ~PROTOCOL_FEATURES_BIT);
    if (saved.memTable) this.setMemTable(saved.memTable);
    if (saved.log) this.setLogBase(saved.log);
    for (const [i, ring] of saved.rings) {
      const base = bases?.[i] ?? ring.base;
      if (ring.num !== undefined) this.setVringNum(i, ring.num);
      if (base !== undefined) this.setVringBase(i, base);
      if (ring.addr) this.setVringAddr(i, ring.addr);
      if (ring.kick !== undefined) this.setVringKick(i, ring.kick);
      if (ring.call !== undefined) this.setVringCall(i, ring.call);
      if (ring.err !== undefined) this.setVringErr(i, ring.err);
      if (ring.enable !== undefined) this.setVringEnable(i, ring.enable);
    }
  }

  /** The idle watcher keeps the process alive (the default). */
  ref(): void {
    this.#refed = true;
    this.#sock?.ref();
  }

  /** The idle watcher no longer keeps the process alive on its own. */
  unref(): void {
    this.#refed = false;
    this.#sock?.unref();
  }

  /** Closes the connection (the back-end sees end of stream). Idempotent; no 'disconnect' is emitted. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#drop(null);
  }

  /** close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
