// VhostUserBackend: the back-end half of vhost-user (this process plays the
// role virtiofsd or vhost-device-* play). It listens on a unix socket (the
// device's front door), accepts one front-end (QEMU) at a time, answers its
// messages, maps its memory regions from the fds it sends (DeviceMemory),
// builds a device-side queue per ring (DeviceQueue) and hands started rings
// to a VhostUserDevice. Everything runs on the event loop: the socket and the
// kick eventfds are watched, no thread waits.
//
// The front-end is not trusted: every message is decoded strictly
// (messages.ts), fds are counted per message, ring indices bounded, and a
// message that breaks the protocol drops the connection with a typed error
// ('disconnect' with the reason), leaving no fd or mapping behind. A ring the
// guest corrupts breaks only that ring ('queue-broken', err eventfd).
//
// Events:
//   'connect'                       a front-end attached
//   'disconnect' (reason | null)    it left (null: a clean end of stream) or was dropped (a VhostError)
//   'refused' (err)                 another front-end tried to attach while one is (EBUSY); counted in refusedConnections
//   'queue-broken' (index, err)     a ring the guest corrupted; its err eventfd was signalled
//   'nack' (err)                    a message refused without dropping the connection (REPLY_ACK status 1)
//   'message' (name, flags)         each message as it arrives (diagnostics: what a front-end really sends)
import { EventEmitter } from 'node:events';
import { checkBool, checkInt, checkNonEmptyString, checkObject, describe } from '../../core/check';
import { closedError, invalidArg, VhostError } from '../../core/errors';
import { native, POLL_READABLE } from '../../core/native';
import { claimSocketPath, UnixServer, UnixSocket, type ReceivedFd } from '../../core/unix-socket';
import { DeviceMemory } from '../../virtio/device-memory';
import { DeviceQueue } from '../../virtio/device-queue';
import type { VhostUserDevice } from './backend-device';
import { VhostUserRing, type RingFds } from './backend-ring';
import {
  decodeConfig, decodeHeader, decodeMemTable, decodeU64, decodeVringAddr, decodeVringFdPayload, decodeVringState, encodeConfig, encodeMessage,
  encodeU64, encodeVringState, FLAG_NEED_REPLY, FLAG_REPLY, HEADER_SIZE, MAX_MEM_REGIONS, protocolError, requestName, VERSION,
  VHOST_USER_F_PROTOCOL_FEATURES, VhostUserProtocolFeature as P, VhostUserRequest as R, type VhostUserHeader,
} from './messages';

const bit = (n: number): bigint => 1n << BigInt(n);
const PROTOCOL_FEATURES_BIT = bit(VHOST_USER_F_PROTOCOL_FEATURES);
const VIRTIO_RING_F_INDIRECT_DESC = 28;
const VIRTIO_RING_F_EVENT_IDX = 29;
/** Most fds one message may carry: a full memory table. */
const MAX_FDS = MAX_MEM_REGIONS;
/** Messages handled per readable event before yielding the loop. */
const MESSAGES_PER_TURN = 64;
/** Bound on writing one reply when the front-end does not read. */
const REPLY_TIMEOUT_MS = 1000;

/** Protocol features this back-end implements (each offered when the device agrees; CONFIG only with readConfig). */
export const VHOST_USER_BACKEND_PROTOCOL_FEATURES = bit(P.MQ) | bit(P.REPLY_ACK) | bit(P.CONFIG) | bit(P.RESET_DEVICE);

/** Options of VhostUserBackend.listen(). */
export interface VhostUserBackendOptions {
  /** Mode of the socket file; default 0o600 (only this user may connect). */
  mode?: number;
  /**
   * A front-end connecting while another is attached replaces it (the old
   * one is dropped, the device keeps its state) instead of being refused.
   * Default false: refused ('refused', EBUSY), the attached one keeps going.
   */
  allowReplace?: boolean;
}

/** Counters of a back-end. */
export interface VhostUserBackendStats {
  /** Front-ends attached so far. */
  connections: number;
  /** Front-ends refused because one was attached. */
  refusedConnections: number;
  /** Messages handled. */
  messages: number;
  /** Rings the guest broke. */
  brokenQueues: number;
}

interface Ring {
  num: number | null;
  base: number;
  addr: { desc: bigint; avail: bigint; used: bigint } | null;
  fds: RingFds;
  /** A kick fd arrived (the spec's "started"); GET_VRING_BASE clears it. */
  started: boolean;
  /** SET_VRING_ENABLE; null: never set (enabled unless protocol features were negotiated). */
  enabled: boolean | null;
  active: VhostUserRing | null;
  /** A drain that ran out of budget continues on a later turn. */
  pending: NodeJS.Immediate | null;
}

const newRing = (): Ring => ({ num: null, base: 0, addr: null, fds: { kick: null, call: null, err: null }, started: false, enabled: null, active: null, pending: null });

/** A message as read: header, payload, the fds that came with it (owned until handled). */
interface Message {
  header: VhostUserHeader;
  name: string;
  payload: Buffer;
  fds: ReceivedFd[];
}

function closeAll(fds: ReceivedFd[]): void {
  for (const fd of fds.splice(0)) fd.close();
}

/** A failed reply (REPLY_ACK status 1) for a message the back-end refuses while keeping the connection. */
class Refusal extends Error {
  constructor(readonly error: VhostError) {
    super(error.message);
  }
}

function unsupported(name: string, why: string): VhostError {
  return new VhostError(`ERR_VHOST_USER_UNSUPPORTED: ${name}: ${why}`, { code: 'ERR_VHOST_USER_UNSUPPORTED', step: name });
}

/**
 * Serves one VhostUserDevice at a unix socket path. Emits 'connect',
 * 'disconnect', 'refused', 'queue-broken', 'nack' (see the file comment).
 */
export class VhostUserBackend extends EventEmitter implements Disposable {
  readonly path: string;
  readonly device: VhostUserDevice;
  readonly #server: UnixServer;
  readonly #allowReplace: boolean;
  #conn: UnixSocket | null = null;
  #closed = false;
  #rings: Ring[];
  #memory: DeviceMemory | null = null;
  #features = 0n;
  #protocol = 0n;
  #read: { header: Buffer; got: number; payload: Buffer | null; pgot: number; fds: ReceivedFd[] } | null = null;
  readonly stats: VhostUserBackendStats = { connections: 0, refusedConnections: 0, messages: 0, brokenQueues: 0 };

  private constructor(path: string, server: UnixServer, device: VhostUserDevice, allowReplace: boolean) {
    super();
    this.path = path;
    this.#server = server;
    this.device = device;
    this.#allowReplace = allowReplace;
    this.#rings = Array.from({ length: device.queues }, newRing);
    server.watch(() => this.#accept());
  }

  /**
   * Listens at `path` for a front-end. The socket file is created with
   * `options.mode` (0o600). A socket file left by a dead process (nobody
   * accepts on it: ECONNREFUSED) is replaced; a live one, or any file that
   * is not a socket, is refused with EADDRINUSE and left alone.
   */
  static listen(path: string, device: VhostUserDevice, options: VhostUserBackendOptions = {}): VhostUserBackend {
    checkNonEmptyString(path, 'path', describe);
    checkDevice(device);
    checkObject(options, 'options');
    const mode = checkInt(options.mode ?? 0o600, 'options.mode', 0, 0o777);
    const allowReplace = checkBool(options.allowReplace, 'options.allowReplace');
    claimSocketPath(path);
    const server = UnixServer.listen(path, { mode });
    return new VhostUserBackend(path, server, device, allowReplace);
  }

  /** True while a front-end is attached. */
  get connected(): boolean {
    return this.#conn !== null;
  }

  /** True after close(). */
  get closed(): boolean {
    return this.#closed;
  }

  /** Virtio features the front-end acknowledged (SET_FEATURES), VHOST_USER_F_PROTOCOL_FEATURES included. */
  get ackedFeatures(): bigint {
    return this.#features;
  }

  /** Protocol features in use (SET_PROTOCOL_FEATURES). */
  get protocolFeatures(): bigint {
    return this.#protocol;
  }

  /** Protocol features offered (GET_PROTOCOL_FEATURES). */
  get offeredProtocolFeatures(): bigint {
    // MQ only when the device asks: GET_QUEUE_NUM means queue pairs to QEMU's vhost-user-net
    // (offering it with 2 rings made QEMU 7.2 expect 2 queue pairs and crash), rings elsewhere.
    let want = (this.device.protocolFeatures ?? 0n) | bit(P.REPLY_ACK) | bit(P.RESET_DEVICE);
    if (typeof this.device.readConfig === 'function') want |= bit(P.CONFIG);
    return want & VHOST_USER_BACKEND_PROTOCOL_FEATURES;
  }

  /** The state of ring `index` (for tests and diagnostics). */
  ringState(index: number): { started: boolean; enabled: boolean; running: boolean; base: number; size: number | null } {
    checkInt(index, 'index', 0, this.#rings.length - 1);
    const r = this.#rings[index];
    return { started: r.started, enabled: this.#enabled(r), running: r.active?.running ?? false, base: r.active ? r.active.queue.nextAvail : r.base, size: r.num };
  }

  // ---- front door ----------------------------------------------------------

  #accept(): void {
    for (;;) {
      let sock: UnixSocket | null;
      try {
        sock = this.#server.accept();
      } catch {
        return; // ECONNABORTED and friends: the peer gave up; nothing to keep
      }
      if (sock === null) return;
      // A front-end reconnecting closes its old socket just before: read what the old one
      // still holds first, so its end of stream is seen before the new one is judged.
      if (this.#conn !== null && this.#conn.waitReadable(0)) this.#onReadable(this.#conn);
      if (this.#conn !== null && !this.#allowReplace) {
        sock.close();
        this.stats.refusedConnections++;
        this.emit('refused', new VhostError(`EBUSY: a vhost-user front-end is already attached to '${this.path}'; the new connection was closed (listen with allowReplace to let a new front-end take over)`, {
          code: 'EBUSY',
          path: this.path,
        }));
        continue;
      }
      if (this.#conn !== null) {
        this.#disconnect(new VhostError(`ECONNRESET: replaced by a new front-end on '${this.path}'`, { code: 'ECONNRESET', path: this.path }));
      }
      this.#attach(sock);
    }
  }

  #attach(sock: UnixSocket): void {
    this.#conn = sock;
    this.stats.connections++;
    sock.watch((pollErr) => {
      if (this.#conn !== sock) return;
      if (pollErr) return this.#disconnect(pollErr);
      this.#onReadable(sock);
    });
    this.emit('connect');
  }

  #onReadable(sock: UnixSocket): void {
    for (let n = 0; n < MESSAGES_PER_TURN && this.#conn === sock; n++) {
      let msg: Message | null | 'eof';
      try {
        msg = this.#readMessage(sock);
      } catch (err) {
        return this.#disconnect(asProtocolError(err, 'read'));
      }
      if (msg === null) return;
      if (msg === 'eof') return this.#disconnect(null);
      this.stats.messages++;
      if (this.listenerCount('message') > 0) this.emit('message', msg.name, msg.header.flags);
      try {
        this.#handle(msg);
      } catch (err) {
        closeAll(msg.fds);
        return this.#disconnect(asProtocolError(err, msg.name));
      }
      closeAll(msg.fds);
    }
  }

  /** One whole message, null when it has not all arrived yet, 'eof' at end of stream. */
  #readMessage(sock: UnixSocket): Message | null | 'eof' {
    const st = (this.#read ??= { header: Buffer.alloc(HEADER_SIZE), got: 0, payload: null, pgot: 0, fds: [] });
    const take = (buf: Buffer, at: number): number | null | 'eof' => {
      let got;
      try {
        got = sock.receive(buf.subarray(at), MAX_FDS - st.fds.length);
      } catch (err) {
        if ((err as VhostError).code === 'ERR_VHOST_TRUNCATED') throw protocolError('read', `more than ${MAX_FDS} file descriptors in one message (closed unread)`);
        throw err;
      }
      if (got === null) return null;
      st.fds.push(...got.fds);
      return got.bytes === 0 ? 'eof' : got.bytes;
    };
    while (st.got < HEADER_SIZE) {
      const r = take(st.header, st.got);
      if (r === null || r === 'eof') return r;
      st.got += r;
    }
    if (st.payload === null) {
      const header = decodeHeader(st.header);
      if (header.flags & FLAG_REPLY) throw protocolError(requestName(header.request), 'a front-end message with the REPLY flag');
      st.payload = Buffer.alloc(header.size);
    }
    while (st.pgot < st.payload.length) {
      const r = take(st.payload, st.pgot);
      if (r === null) return null;
      if (r === 'eof') return 'eof';
      st.pgot += r;
    }
    const header = decodeHeader(st.header);
    this.#read = null;
    return { header, name: requestName(header.request), payload: st.payload, fds: st.fds };
  }

  #reply(request: number, payload: Uint8Array): void {
    const sock = this.#conn;
    if (sock === null) return;
    const message = encodeMessage(request, VERSION | FLAG_REPLY, payload);
    if (!sock.sendAll(message, [], REPLY_TIMEOUT_MS)) throw protocolError(requestName(request), `the front-end did not read the reply within ${REPLY_TIMEOUT_MS} ms`);
  }

  // ---- the messages ----------------------------------------------------------

  #handle(msg: Message): void {
    const { header, name, payload } = msg;
    const needAck = (header.flags & FLAG_NEED_REPLY) !== 0;
    const fdsAllowed = this.#fdsAllowed(header.request, payload);
    if (msg.fds.length !== fdsAllowed && !(fdsAllowed === -1)) {
      throw protocolError(name, `came with ${msg.fds.length} file descriptors, expected ${fdsAllowed}`);
    }
    let reply: Uint8Array | null = null;
    let status = 0n;
    try {
      reply = this.#dispatch(msg);
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      status = 1n;
      this.emit('nack', err.error);
    }
    // Without NEED_REPLY a refusal reaches the front-end only as the 'nack' event here.
    if (reply !== null) this.#reply(header.request, reply);
    else if (needAck) this.#reply(header.request, encodeU64(status));
  }

  /** How many fds `request` must carry (-1: not checked here). */
  #fdsAllowed(request: number, payload: Buffer): number {
    switch (request) {
      case R.SET_MEM_TABLE:
        return payload.length >= 4 ? Math.min(payload.readUInt32LE(0), MAX_FDS + 1) : 0;
      case R.SET_VRING_KICK: case R.SET_VRING_CALL: case R.SET_VRING_ERR:
        return payload.length === 8 && (payload.readUInt32LE(0) & 0x100) === 0 ? 1 : 0;
      default:
        return 0;
    }
  }

  #ringOf(index: number, name: string): Ring {
    if (index >= this.#rings.length) throw protocolError(name, `ring ${index} does not exist: ${this.device.name} has ${this.#rings.length} queue(s)`);
    return this.#rings[index];
  }

  /** Handles one message: returns its reply payload, or null for none (then an ack when asked). */
  #dispatch(msg: Message): Uint8Array | null {
    const { header, name, payload } = msg;
    const noPayload = (): void => {
      if (payload.length !== 0 && header.request !== R.SET_OWNER && header.request !== R.RESET_OWNER) throw protocolError(name, `takes no payload, got ${payload.length} bytes`);
    };
    switch (header.request) {
      case R.GET_FEATURES:
        noPayload();
        return encodeU64(this.device.features | PROTOCOL_FEATURES_BIT);
      case R.SET_FEATURES: {
        const f = decodeU64(payload, name);
        const offered = this.device.features | PROTOCOL_FEATURES_BIT;
        if (f & ~offered) throw new Refusal(unsupported(name, `asks for features 0x${(f & ~offered).toString(16)} that were not offered (0x${offered.toString(16)})`));
        this.#features = f;
        this.#callDevice(() => this.device.setFeatures?.(f & ~PROTOCOL_FEATURES_BIT));
        return null;
      }
      case R.GET_PROTOCOL_FEATURES:
        noPayload();
        return encodeU64(this.offeredProtocolFeatures);
      case R.SET_PROTOCOL_FEATURES: {
        const f = decodeU64(payload, name);
        this.#protocol = f & this.offeredProtocolFeatures;
        return null;
      }
      case R.SET_OWNER:
        return null;
      case R.RESET_OWNER:
      case R.RESET_DEVICE:
        this.#reset();
        return null;
      case R.GET_QUEUE_NUM:
        noPayload();
        return encodeU64(BigInt(this.device.queues));
      case R.SET_MEM_TABLE:
        this.#setMemTable(msg);
        return null;
      case R.SET_VRING_NUM: {
        const s = decodeVringState(payload, name);
        const ring = this.#ringOf(s.index, name);
        if (s.num < 1 || s.num > 32768 || (s.num & (s.num - 1)) !== 0) throw protocolError(name, `ring ${s.index} size ${s.num} is not a power of two in 1..32768`);
        this.#restart(s.index, () => (ring.num = s.num));
        return null;
      }
      case R.SET_VRING_BASE: {
        const s = decodeVringState(payload, name);
        const ring = this.#ringOf(s.index, name);
        if (s.num > 0xffff) throw protocolError(name, `ring ${s.index} base ${s.num} is not a 16-bit index`);
        this.#restart(s.index, () => (ring.base = s.num));
        return null;
      }
      case R.SET_VRING_ADDR: {
        const a = decodeVringAddr(payload, name);
        const ring = this.#ringOf(a.index, name);
        if (a.flags & 1) throw new Refusal(unsupported(name, 'dirty logging of the used ring (VHOST_VRING_F_LOG) is not implemented'));
        this.#restart(a.index, () => (ring.addr = { desc: a.desc, avail: a.avail, used: a.used }));
        return null;
      }
      case R.GET_VRING_BASE: {
        const s = decodeVringState(payload, name);
        const ring = this.#ringOf(s.index, name);
        this.#stopRing(s.index);
        ring.started = false;
        ring.fds.kick?.close();
        ring.fds.kick = null;
        return encodeVringState({ index: s.index, num: ring.base }, name);
      }
      case R.SET_VRING_KICK:
      case R.SET_VRING_CALL:
      case R.SET_VRING_ERR:
        this.#setVringFd(msg);
        return null;
      case R.SET_VRING_ENABLE: {
        const s = decodeVringState(payload, name);
        const ring = this.#ringOf(s.index, name);
        if (s.num > 1) throw protocolError(name, `enable must be 0 or 1, got ${s.num}`);
        this.#restart(s.index, () => (ring.enabled = s.num === 1));
        return null;
      }
      case R.GET_CONFIG:
        return this.#getConfig(msg);
      case R.SET_CONFIG: {
        const c = decodeConfig(payload, name);
        if (typeof this.device.writeConfig !== 'function') throw new Refusal(unsupported(name, `${this.device.name} has no writable config space`));
        try {
          this.device.writeConfig(c.offset, c.data);
        } catch (err) {
          throw new Refusal(asDeviceError(err, name, this.device.name));
        }
        return null;
      }
      case R.SEND_RARP:
      case R.NET_SET_MTU:
      case R.SET_VRING_ENDIAN:
        // Features this back-end never offers (RARP, NET_MTU, CROSS_ENDIAN): a front-end
        // sending them anyway gets a failed ack; nothing else changes.
        throw new Refusal(unsupported(name, 'needs a protocol feature this back-end does not offer'));
      default:
        // Anything else may expect a reply whose shape this back-end does not know:
        // answering nothing would leave the front-end waiting, answering something would
        // desynchronise the stream. Drop the connection and say which message it was.
        throw unsupported(name, `not implemented by this back-end (the connection is closed rather than left out of step); ${this.device.name} offers protocol features 0x${this.offeredProtocolFeatures.toString(16)}`);
    }
  }

  #getConfig(msg: Message): Uint8Array {
    const c = decodeConfig(msg.payload, msg.name);
    if (typeof this.device.readConfig !== 'function') return new Uint8Array(0); // an empty reply is QEMU's failure
    let data: Uint8Array;
    try {
      data = this.device.readConfig(c.offset, c.data.length);
    } catch (err) {
      this.emit('nack', asDeviceError(err, msg.name, this.device.name));
      return new Uint8Array(0);
    }
    if (!(data instanceof Uint8Array) || data.length !== c.data.length) {
      this.emit('nack', new VhostError(`ERR_VHOST_USER_DEVICE: ${this.device.name}.readConfig(${c.offset}, ${c.data.length}) did not return ${c.data.length} bytes`, { code: 'ERR_VHOST_USER_DEVICE', step: msg.name }));
      return new Uint8Array(0);
    }
    return encodeConfig({ offset: c.offset, flags: c.flags, data }, msg.name);
  }

  #setMemTable(msg: Message): void {
    const table = decodeMemTable(msg.payload, msg.name);
    if (table.length === 0) throw protocolError(msg.name, 'an empty memory table');
    // DeviceMemory.map is all or nothing and keeps no fd: the mapping keeps each file alive.
    const memory = DeviceMemory.map(table.map((r, i) => ({ fd: msg.fds[i], gpa: r.gpa, size: r.size, userAddr: r.userAddr, mmapOffset: r.mmapOffset })));
    closeAll(msg.fds);
    const running = this.#rings.map((r, i) => (r.active ? i : -1)).filter((i) => i >= 0);
    for (const i of running) this.#stopRing(i);
    this.#memory?.close();
    this.#memory = memory;
    for (let i = 0; i < this.#rings.length; i++) this.#maybeStart(i);
  }

  #setVringFd(msg: Message): void {
    const { index, noFd } = decodeVringFdPayload(msg.payload, msg.name);
    const ring = this.#ringOf(index, msg.name);
    const fd = noFd ? null : msg.fds.shift()!;
    if (fd !== null) {
      try {
        native.eventfdAdopt(fd.nativeHandle);
      } catch (err) {
        fd.close();
        throw protocolError(msg.name, `ring ${index}: the fd sent is ${(err as Error).message.replace(/^ERR_VHOST_INVALID_ARG: /, '')}; an eventfd is required`);
      }
    }
    const key = msg.header.request === R.SET_VRING_KICK ? 'kick' : msg.header.request === R.SET_VRING_CALL ? 'call' : 'err';
    if (key === 'kick') {
      if (fd === null) {
        throw new Refusal(unsupported(msg.name, `ring ${index}: polling without a kick eventfd (VHOST_USER_VRING_NOFD_MASK) is not implemented`));
      }
      this.#restart(index, () => {
        ring.fds.kick?.close();
        ring.fds.kick = fd;
        ring.started = true;
      });
      return;
    }
    // call and err: the running ring reads ring.fds at each signal, no restart needed.
    ring.fds[key]?.close();
    ring.fds[key] = fd;
  }

  // ---- rings -------------------------------------------------------------------

  #enabled(ring: Ring): boolean {
    return ring.enabled ?? (this.#features & PROTOCOL_FEATURES_BIT) === 0n;
  }

  /** Stops ring `index` if it runs, applies `change`, and starts it again if it can. */
  #restart(index: number, change: () => void): void {
    this.#stopRing(index);
    change();
    this.#maybeStart(index);
  }

  #maybeStart(index: number): void {
    const ring = this.#rings[index];
    if (ring.active || !this.#memory || ring.num === null || !ring.addr || !ring.started || !ring.fds.kick || !this.#enabled(ring)) return;
    let queue: DeviceQueue;
    try {
      queue = new DeviceQueue(this.#memory, {
        size: ring.num,
        desc: ring.addr.desc,
        avail: ring.addr.avail,
        used: ring.addr.used,
        base: ring.base,
        eventIdx: (this.#features & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n,
        indirect: (this.#features & bit(VIRTIO_RING_F_INDIRECT_DESC)) !== 0n,
      });
    } catch (err) {
      // A ring outside the memory the front-end shared: that ring is broken, the connection stays.
      const e = err instanceof VhostError ? err : new VhostError(String(err), { code: 'ERR_VHOST_RING_BROKEN' });
      e.queue ??= index;
      this.stats.brokenQueues++;
      signalErr(ring.fds);
      this.emit('queue-broken', index, e);
      return;
    }
    const active = new VhostUserRing(index, queue, ring.fds, (r, e) => this.#broken(r, e));
    active.queueSizeHint = ring.num;
    ring.active = active;
    const kick = ring.fds.kick;
    kick.nativeHandle.watch(POLL_READABLE, (status) => {
      if (ring.active !== active) return;
      if (status < 0) return active.fail(new VhostError(`uv_poll failed on the kick eventfd of ring ${index}`, { code: 'ERR_VHOST_RING_BROKEN', queue: index }));
      try {
        readEventFd(kick);
      } catch (err) {
        return active.fail(new VhostError(`ERR_VHOST_RING_BROKEN: ring ${index}: reading the kick eventfd failed (${(err as Error).message})`, { code: 'ERR_VHOST_RING_BROKEN', queue: index }));
      }
      this.#kick(ring, active);
    });
    if (!this.#callDevice(() => this.device.startQueue(active), active)) return;
    this.#kick(ring, active);
  }

  #kick(ring: Ring, active: VhostUserRing): void {
    if (ring.pending !== null || !active.running) return;
    let more = false;
    this.#callDevice(() => {
      more = this.device.kick(active) === true;
    }, active);
    // The device stopped at its budget with chains left: go on after other work had its turn.
    if (more && ring.active === active) {
      ring.pending = setImmediate(() => {
        ring.pending = null;
        if (ring.active === active) this.#kick(ring, active);
      });
    }
  }

  /** Runs a device callback; an exception breaks `ring` (or is reported as a nack without one). False when it threw. */
  #callDevice(fn: () => void, ring?: VhostUserRing): boolean {
    try {
      fn();
      return true;
    } catch (err) {
      const e = asDeviceError(err, ring ? `ring ${ring.index}` : 'device', this.device.name);
      if (ring) ring.fail(e);
      else this.emit('nack', e);
      return false;
    }
  }

  #broken(active: VhostUserRing, err: VhostError): void {
    const ring = this.#rings[active.index];
    this.stats.brokenQueues++;
    active.signalError();
    if (ring.active === active) this.#stopRing(active.index);
    this.emit('queue-broken', active.index, err);
  }

  /** Stops ring `index` if it runs: the device is told, its base saved, the kick no longer watched. */
  #stopRing(index: number): void {
    const ring = this.#rings[index];
    const active = ring.active;
    if (active === null) return;
    ring.active = null;
    if (ring.pending) clearImmediate(ring.pending);
    ring.pending = null;
    if (ring.fds.kick && !ring.fds.kick.closed) ring.fds.kick.nativeHandle.unwatch();
    active.stop();
    try {
      this.device.stopQueue(active);
    } catch (err) {
      this.emit('nack', asDeviceError(err, `ring ${index}`, this.device.name));
    }
    ring.base = active.queue.nextAvail;
    active.queue.close();
  }

  #reset(): void {
    for (let i = 0; i < this.#rings.length; i++) {
      this.#stopRing(i);
      closeRingFds(this.#rings[i]);
    }
    this.#rings = Array.from({ length: this.device.queues }, newRing);
    this.#features = 0n;
    try {
      this.device.reset?.();
    } catch (err) {
      this.emit('nack', asDeviceError(err, 'reset', this.device.name));
    }
  }

  // ---- lifecycle ---------------------------------------------------------------

  /**
   * The front-end left (or is dropped): every ring stops with its base kept,
   * the memory is unmapped and every fd it sent is closed. Features and ring
   * bases stay, so a front-end that reconnects resumes where it set them.
   */
  #disconnect(reason: VhostError | null): void {
    const sock = this.#conn;
    if (sock === null) return;
    this.#conn = null;
    if (this.#read) closeAll(this.#read.fds);
    this.#read = null;
    for (let i = 0; i < this.#rings.length; i++) {
      this.#stopRing(i);
      const ring = this.#rings[i];
      closeRingFds(ring);
      ring.started = false;
      ring.enabled = null;
    }
    this.#memory?.close();
    this.#memory = null;
    sock.close();
    if (reason && reason.path === undefined) reason.path = this.path;
    this.emit('disconnect', reason);
  }

  /** Drops the attached front-end (if any) as if it had left. */
  disconnect(): void {
    if (this.#closed) throw closedError('VhostUserBackend', this.path);
    this.#disconnect(null);
  }

  /** Stops listening, drops the front-end, removes the socket file. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#disconnect(null);
    this.#server.close();
  }

  /** The server socket keeps the process alive (the default). */
  ref(): void {
    this.#server.ref();
  }

  /** The listening socket no longer keeps the process alive on its own (an attached front-end still does). */
  unref(): void {
    this.#server.unref();
  }

  /** close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Reads (and so resets) a kick eventfd's counter; throws for an fd that is no eventfd. */
function readEventFd(fd: ReceivedFd): void {
  native.eventfdRead(fd.nativeHandle);
}

function signalErr(fds: RingFds): void {
  if (fds.err === null || fds.err.closed) return;
  try {
    native.eventfdWrite(fds.err.nativeHandle, 1n);
  } catch {
    // not an eventfd: nothing to signal
  }
}

function closeRingFds(ring: Ring): void {
  for (const key of ['kick', 'call', 'err'] as const) {
    ring.fds[key]?.close();
    ring.fds[key] = null;
  }
}

function asProtocolError(err: unknown, name: string): VhostError {
  if (err instanceof VhostError) {
    err.step ??= name;
    return err;
  }
  return protocolError(name, err instanceof Error ? err.message : 'failed');
}

function asDeviceError(err: unknown, where: string, device: string): VhostError {
  if (err instanceof VhostError) return err;
  const what = err instanceof Error ? err.message : typeof err;
  return new VhostError(`ERR_VHOST_USER_DEVICE: ${device} failed in ${where}: ${what}`, { code: 'ERR_VHOST_USER_DEVICE', step: where });
}

function checkDevice(device: unknown): asserts device is VhostUserDevice {
  checkObject(device, 'device', 'a VhostUserDevice');
  const d = device as Partial<VhostUserDevice>;
  if (typeof d.features !== 'bigint') throw invalidArg('device.features', 'must be a bigint of virtio feature bits');
  checkInt(d.queues, 'device.queues', 1, 256);
  for (const m of ['startQueue', 'kick', 'stopQueue'] as const) {
    if (typeof d[m] !== 'function') throw invalidArg(`device.${m}`, 'must be a function');
  }
}

