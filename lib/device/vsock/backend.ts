// VsockDeviceBackend: the device side of virtio-vsock for one or many guests,
// independent of how packets reach it (vhost-user rings, or an in-memory pipe
// in the unit tests). It owns the guests' channels (by CID, unique), the
// host-side listeners and connects, the routing between guests (allow-list,
// default none) and, per guest, the hybrid vsock unix path its guest-initiated
// connections to host port P are forwarded to (PATH_P).
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import { abortError, checkBool, checkFunction, checkInt, checkObject, checkSignal, readOptions } from '../../core/check';
import { invalidArg, VhostError } from '../../core/errors';
import { VirtioVsockConnection } from '../../guest/vsock-connection';
import { VSOCK_HDR_SIZE, VSOCK_TYPE, VsockPacketView } from '../../virtio/vsock-packet';
import { checkVsockType, type VsockType } from '../../vsock/options';
import { HOST_CID, VsockGuestChannel, type IncomingRequest, type VsockChannelCarrier } from './channel';

export { VsockGuestChannel, type VsockChannelStats, type VsockChannelCarrier, VSOCK_MAX_PAYLOAD } from './channel';

const CID_MIN = 3;
const CID_MAX = 0xffff_fffe;
const PORT_MAX = 0xffff_fffe;
const INT32_MAX = 0x7fff_ffff;
/** Host-side ports of host-initiated connections start here, as Firecracker's do (its `OK 1073741824`). */
const HOST_EPHEMERAL_FIRST = 0x4000_0000;

/** Options of a VsockDeviceBackend. */
export interface VsockDeviceBackendOptions {
  /** Receive buffer per connection advertised to guests (buf_alloc), 4096..2^30. Default 262144. */
  bufAlloc?: number;
  /** Connections (open or being set up) per guest, 1..65536; a REQUEST beyond gets RST. Default 1024. */
  maxConnections?: number;
  /** RSTs waiting to go to one guest, 1..65536; beyond, refusals are counted and dropped. Default 256. */
  maxRefusals?: number;
  /** Offer and honour VIRTIO_VSOCK_F_SEQPACKET. Default true. */
  seqpacket?: boolean;
  /** Timeout in ms of the connection to a guest a routed or hybrid connection opens, 1..2^31-1. Default 10000. */
  routeTimeout?: number;
}

/** An allow-list entry: guest `from` may connect to guest `to` (on `port`, or any port when omitted). */
export interface VsockRoute {
  from: number;
  to: number;
  port?: number;
}

/** Options of VsockDeviceBackend.connect(). */
export interface VsockDeviceConnectOptions {
  /** The guest's CID. */
  cid: number;
  /** The guest's port. */
  port: number;
  /** Default 'stream'. */
  type?: VsockType;
  /** Connect timeout in ms (1..2^31-1): ETIMEDOUT. No timeout by default. */
  timeout?: number;
  /** Aborting it destroys the connection with an AbortError. */
  signal?: AbortSignal;
  /** Keep the writable side open after the guest ends. Default false. */
  allowHalfOpen?: boolean;
}

/** Options of VsockDeviceBackend.listen(). */
export interface VsockDeviceListenOptions {
  /** Default 'stream'; requests of the other type get RST. */
  type?: VsockType;
  /** For accepted connections. Default false. */
  allowHalfOpen?: boolean;
}

/**
 * Host port `port` of a VsockDeviceBackend, listening for guests: emits
 * 'connection' with a connected VirtioVsockConnection per guest that
 * connects (its remoteAddress is the guest's { cid, port }). close() stops
 * accepting; established connections stay.
 */
export class VsockDeviceListener extends EventEmitter {
  readonly port: number;
  readonly type: VsockType;
  readonly allowHalfOpen: boolean;
  #onClose: (() => void) | null;

  /** @internal Use VsockDeviceBackend.listen(). */
  constructor(port: number, type: VsockType, allowHalfOpen: boolean, onClose: () => void) {
    super();
    this.port = port;
    this.type = type;
    this.allowHalfOpen = allowHalfOpen;
    this.#onClose = onClose;
  }

  /** True until close(). */
  get listening(): boolean {
    return this.#onClose !== null;
  }

  /** Stops accepting; idempotent. */
  close(): void {
    const f = this.#onClose;
    this.#onClose = null;
    f?.();
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Joins two Duplex streams both ways (data, half-close); when either closes
 * without both directions having ended cleanly, the other is destroyed too.
 * @internal
 */
export function splice(a: Duplex, b: Duplex): void {
  a.pipe(b);
  b.pipe(a);
  const link = (x: Duplex, y: Duplex): void => {
    x.on('error', () => {}); // the close below carries it to y; no unhandled 'error'
    x.once('close', () => {
      if (!y.destroyed && !(x.readableEnded && x.writableFinished)) y.destroy();
    });
  };
  link(a, b);
  link(b, a);
}

const OPTION_KEYS = ['bufAlloc', 'maxConnections', 'maxRefusals', 'seqpacket', 'routeTimeout'];

/**
 * The device side of virtio-vsock: attach() a guest (a CID and a carrier for
 * its packets), then listen() for guests on host ports, connect() to guests'
 * ports, allow() routes between guests. Each guest's packets are checked
 * (VsockGuestChannel): malformed, spoofed, credit-ignoring or flooding guests
 * get RSTs, reset connections and counters, nothing more.
 */
export class VsockDeviceBackend {
  readonly bufAlloc: number;
  readonly maxConnections: number;
  readonly maxRefusals: number;
  readonly seqpacket: boolean;
  readonly routeTimeout: number;
  readonly #guests = new Map<number, VsockGuestChannel>();
  readonly #listeners = new Map<number, VsockDeviceListener>();
  readonly #routes: VsockRoute[] = [];
  readonly #hybridPaths = new Map<number, string>();
  #nextHostPort = HOST_EPHEMERAL_FIRST;
  #closed = false;

  constructor(options: VsockDeviceBackendOptions = {}) {
    const o = readOptions(checkObject<VsockDeviceBackendOptions>(options, 'options'), OPTION_KEYS);
    this.bufAlloc = checkInt(o.bufAlloc ?? 262144, 'options.bufAlloc', 4096, 1 << 30);
    this.maxConnections = checkInt(o.maxConnections ?? 1024, 'options.maxConnections', 1, 65536);
    this.maxRefusals = checkInt(o.maxRefusals ?? 256, 'options.maxRefusals', 1, 65536);
    this.seqpacket = o.seqpacket === undefined ? true : checkBool(o.seqpacket, 'options.seqpacket');
    this.routeTimeout = checkInt(o.routeTimeout ?? 10_000, 'options.routeTimeout', 1, INT32_MAX);
  }

  /** CIDs of the attached guests. */
  get guests(): number[] {
    return [...this.#guests.keys()];
  }

  /** The channel of guest `cid`, if attached. */
  guest(cid: number): VsockGuestChannel | undefined {
    return this.#guests.get(cid);
  }

  /**
   * Attaches a guest with CID `cid` (3..0xfffffffe): EADDRINUSE when another
   * guest of this back-end has it. `carrier.wake()` is called whenever the
   * channel has packets for the guest.
   */
  attach(cid: number, carrier: VsockChannelCarrier): VsockGuestChannel {
    this.#checkOpen();
    checkInt(cid, 'cid', CID_MIN, CID_MAX);
    checkObject(carrier, 'carrier');
    checkFunction(carrier.wake, 'carrier.wake');
    if (this.#guests.has(cid)) {
      throw new VhostError(`EADDRINUSE: guest CID ${cid} is already attached to this vsock back-end`, { code: 'EADDRINUSE', path: `vsock:${cid}` });
    }
    const ch = new VsockGuestChannel(cid, this, carrier);
    this.#guests.set(cid, ch);
    return ch;
  }

  /** Detaches guest `cid`: its connections end (ECONNRESET with `reason` on the host side); its CID is free again. */
  detach(cid: number, reason = 'the guest was detached from the vsock back-end'): void {
    this.#detach(cid, reason, false);
  }

  #detach(cid: number, reason: string, quiet: boolean): void {
    const ch = this.#guests.get(cid);
    if (!ch) return;
    this.#guests.delete(cid);
    this.#hybridPaths.delete(cid);
    ch.detach(reason, quiet);
  }

  /** Lets guest `from` connect to guest `to` (on `port`, any port when omitted). Default: no guest reaches another. */
  allow(route: VsockRoute): this {
    checkObject(route, 'route');
    const from = checkInt(route.from, 'route.from', CID_MIN, CID_MAX);
    const to = checkInt(route.to, 'route.to', CID_MIN, CID_MAX);
    const port = route.port === undefined ? undefined : checkInt(route.port, 'route.port', 0, PORT_MAX);
    this.#routes.push({ from, to, port });
    return this;
  }

  /** Takes back every allow() entry from `from` to `to` (established connections stay). */
  disallow(from: number, to: number): this {
    for (let i = this.#routes.length - 1; i >= 0; i--) if (this.#routes[i].from === from && this.#routes[i].to === to) this.#routes.splice(i, 1);
    return this;
  }

  /** True when the allow-list lets `from` reach `to`:`port`. */
  allowed(from: number, to: number, port: number): boolean {
    return this.#routes.some((r) => r.from === from && r.to === to && (r.port === undefined || r.port === port));
  }

  /** @internal The hybrid vsock server of guest `cid` forwards its guest-initiated connections to `${path}_${port}`. */
  setHybridPath(cid: number, path: string | null): void {
    if (path === null) this.#hybridPaths.delete(cid);
    else this.#hybridPaths.set(cid, path);
  }

  /**
   * Listens on host port `port` (0..0xfffffffe) for guests' connections:
   * EADDRINUSE when it listens already.
   */
  listen(port: number, options: VsockDeviceListenOptions = {}, onConnection?: (conn: VirtioVsockConnection) => void): VsockDeviceListener {
    this.#checkOpen();
    const p = checkInt(port, 'port', 0, PORT_MAX);
    const o = readOptions(checkObject<VsockDeviceListenOptions>(options, 'options'), ['type', 'allowHalfOpen']);
    const type = checkVsockType(o.type, 'options.type');
    const allowHalfOpen = checkBool(o.allowHalfOpen, 'options.allowHalfOpen');
    checkFunction(onConnection, 'onConnection', true);
    if (type === 'seqpacket' && !this.seqpacket) throw invalidArg('options.type', "is 'seqpacket' but this back-end does not offer VIRTIO_VSOCK_F_SEQPACKET", 'ERR_VHOST_UNSUPPORTED');
    if (this.#listeners.has(p)) throw new VhostError(`EADDRINUSE: host port ${p} of the vsock back-end already listens`, { code: 'EADDRINUSE', syscall: 'listen', path: `vsock:${HOST_CID}:${p}` });
    const l = new VsockDeviceListener(p, type, allowHalfOpen, () => {
      if (this.#listeners.get(p) === l) this.#listeners.delete(p);
    });
    if (onConnection) l.on('connection', onConnection);
    this.#listeners.set(p, l);
    return l;
  }

  /**
   * Connects from the host to guest `cid`'s `port`; the connection is a
   * VirtioVsockConnection ('connect', or 'error' ECONNREFUSED when the guest
   * answers RST, ETIMEDOUT, AbortError). ENODEV (thrown) when no guest has that CID.
   */
  connect(options: VsockDeviceConnectOptions, onConnect?: () => void): VirtioVsockConnection {
    this.#checkOpen();
    const o = readOptions(checkObject<VsockDeviceConnectOptions>(options, 'options'), ['cid', 'port', 'type', 'timeout', 'signal', 'allowHalfOpen']);
    const cid = checkInt(o.cid, 'options.cid', CID_MIN, CID_MAX);
    const port = checkInt(o.port, 'options.port', 0, PORT_MAX);
    const type = checkVsockType(o.type, 'options.type');
    const timeout = o.timeout === undefined ? undefined : checkInt(o.timeout, 'options.timeout', 1, INT32_MAX);
    const signal = checkSignal(o.signal, 'options.signal');
    const allowHalfOpen = checkBool(o.allowHalfOpen, 'options.allowHalfOpen');
    checkFunction(onConnect, 'onConnect', true);
    if (type === 'seqpacket' && !this.seqpacket) throw invalidArg('options.type', "is 'seqpacket' but this back-end does not offer VIRTIO_VSOCK_F_SEQPACKET", 'ERR_VHOST_UNSUPPORTED');
    const ch = this.#guests.get(cid);
    if (!ch) throw new VhostError(`ENODEV: no guest with CID ${cid} is attached to this vsock back-end`, { code: 'ENODEV', syscall: 'connect', path: `vsock:${cid}:${port}` });
    return this.#open(ch, HOST_CID, this.#hostPort(ch, port), port, type, allowHalfOpen, timeout, signal, onConnect);
  }

  #open(ch: VsockGuestChannel, localCid: number, localPort: number, port: number, type: VsockType, allowHalfOpen: boolean, timeout?: number, signal?: AbortSignal, onConnect?: () => void): VirtioVsockConnection {
    const conn = new VirtioVsockConnection(ch.link(localCid), { localPort, peerCid: ch.cid, peerPort: port, allowHalfOpen, type });
    if (onConnect) conn.once('connect', onConnect);
    if (signal?.aborted) {
      process.nextTick(() => conn.destroy(abortError(signal)));
      return conn;
    }
    ch.add(localCid, localPort, port, conn);
    conn.startConnect(timeout, signal);
    return conn;
  }

  #hostPort(ch: VsockGuestChannel, port: number): number {
    for (let i = 0; i < 0x1_0000; i++) {
      const p = this.#nextHostPort;
      this.#nextHostPort = p >= PORT_MAX ? HOST_EPHEMERAL_FIRST : p + 1;
      if (!this.#listeners.has(p) && !ch.has(HOST_CID, p, port)) return p;
    }
    throw new VhostError('EADDRNOTAVAIL: no free host port', { code: 'EADDRNOTAVAIL', syscall: 'connect' });
  }

  /** @internal A guest's REQUEST nobody holds: a host listener, its hybrid PATH_P, another guest, or RST. */
  incoming(ch: VsockGuestChannel, req: IncomingRequest, pkt: VsockPacketView): void {
    const typeName: VsockType = req.type === VSOCK_TYPE.SEQPACKET ? 'seqpacket' : 'stream';
    if (req.dstCid === HOST_CID) {
      const l = this.#listeners.get(req.dstPort);
      if (l) {
        if (l.type !== typeName) {
          ch.refuse(req.dstCid, req.dstPort, req.srcPort, req.type);
          return;
        }
        const conn = this.#accept(ch, req, pkt, l.allowHalfOpen);
        l.emit('connection', conn);
        return;
      }
      const path = this.#hybridPaths.get(ch.cid);
      if (path !== undefined && typeName === 'stream') {
        this.#toUnix(ch, req, pkt, `${path}_${req.dstPort}`);
        return;
      }
      ch.refuse(req.dstCid, req.dstPort, req.srcPort, req.type);
      return;
    }
    const peer = this.#guests.get(req.dstCid);
    if (!peer || peer === ch) {
      ch.refuse(req.dstCid, req.dstPort, req.srcPort, req.type);
      return;
    }
    if (!this.allowed(ch.cid, peer.cid, req.dstPort)) {
      ch.stats.routeDenied++;
      ch.refuse(req.dstCid, req.dstPort, req.srcPort, req.type);
      return;
    }
    if (peer.connections >= this.maxConnections || peer.has(ch.cid, req.srcPort, req.dstPort)) {
      ch.refuse(req.dstCid, req.dstPort, req.srcPort, req.type);
      return;
    }
    const header = Buffer.from(pktHeader(pkt));
    const toPeer = this.#open(peer, ch.cid, req.srcPort, req.dstPort, typeName, true, this.routeTimeout);
    this.#whenOpen(ch, req, toPeer, () => toPeer.destroy(), () => {
      const conn = this.#accept(ch, req, viewOf(header), true);
      splice(conn, toPeer);
    });
  }

  /** Holds `req` until `leg` connects (then `onOpen`) or fails (then RST to the guest). */
  #whenOpen(ch: VsockGuestChannel, req: IncomingRequest, leg: Duplex, cancel: () => void, onOpen: () => void): void {
    ch.hold(req, cancel);
    leg.on('error', () => {}); // a refused or timed-out leg: the guest gets RST below
    leg.once('connect', () => {
      if (!ch.release(req)) {
        leg.destroy(); // the guest gave up (RST) or went away meanwhile
        return;
      }
      onOpen();
    });
    leg.once('close', () => {
      if (ch.release(req)) ch.refuse(req.dstCid, req.dstPort, req.srcPort, req.type);
    });
  }

  #toUnix(ch: VsockGuestChannel, req: IncomingRequest, pkt: VsockPacketView, path: string): void {
    const header = Buffer.from(pktHeader(pkt));
    const sock = net.connect({ path, allowHalfOpen: true });
    const timer = setTimeout(() => sock.destroy(), this.routeTimeout);
    sock.once('close', () => clearTimeout(timer));
    this.#whenOpen(ch, req, sock, () => sock.destroy(), () => {
      clearTimeout(timer);
      splice(this.#accept(ch, req, viewOf(header), true), sock);
    });
  }

  #accept(ch: VsockGuestChannel, req: IncomingRequest, pkt: VsockPacketView, allowHalfOpen: boolean): VirtioVsockConnection {
    const type: VsockType = req.type === VSOCK_TYPE.SEQPACKET ? 'seqpacket' : 'stream';
    const conn = new VirtioVsockConnection(ch.link(req.dstCid), { localPort: req.dstPort, peerCid: ch.cid, peerPort: req.srcPort, allowHalfOpen, type });
    ch.add(req.dstCid, req.dstPort, req.srcPort, conn);
    conn.acceptRequest(pkt);
    return conn;
  }

  /** Detaches every guest (their connections destroyed, without an error) and stops every listener. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const cid of [...this.#guests.keys()]) this.#detach(cid, 'the vsock back-end was closed', true);
    for (const l of [...this.#listeners.values()]) l.close();
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #checkOpen(): void {
    if (this.#closed) throw new VhostError('ERR_VHOST_CLOSED: VsockDeviceBackend is closed', { code: 'ERR_VHOST_CLOSED' });
  }
}

/** The header bytes a view points at (kept: the guest's buffer is reused once the packet is handled). */
function pktHeader(pkt: VsockPacketView): Uint8Array {
  const h = Buffer.alloc(VSOCK_HDR_SIZE);
  h.writeUInt32LE(pkt.bufAlloc, 36);
  h.writeUInt32LE(pkt.fwdCnt, 40);
  return h;
}

/** A view over a kept header (only its credit fields are read by acceptRequest()). */
function viewOf(header: Buffer): VsockPacketView {
  return new VsockPacketView(header).at(0, VSOCK_HDR_SIZE);
}
