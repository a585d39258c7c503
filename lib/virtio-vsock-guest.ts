// VirtioVsockGuest: this process plays a virtio-vsock guest over vhost-vsock,
// so host AF_VSOCK sockets reach it at its CID. It owns guest memory (both
// rings and buffer pools in one memfd region), the kick/call eventfds and the
// device. Packets (virtio_vsock_hdr + payload, one descriptor each):
//   queue 0 (RX): the device fills buffers we post → #drainRx → connections
//   queue 1 (TX): connections → #flushTx → the device
//
// Flow control is virtio-vsock's credit scheme, both ways:
// - sending: never more than peerBufAlloc - (txCnt - peerFwdCnt) bytes in
//   flight; the peer's headers (CREDIT_UPDATE or any other) reopen it.
// - receiving: we advertise bufAlloc and fwdCnt (bytes handed to the
//   Readable) in every header; data waits in a per-connection queue while the
//   reader is slow, so memory stays within bufAlloc + highWaterMark per
//   connection; a CREDIT_UPDATE goes out once a quarter of bufAlloc was freed
//   since the peer last heard our fwdCnt.
import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import { closedError, invalidArg, VhostError } from './errors';
import { EventFd } from './eventfd';
import { features } from './features';
import { GuestMemory } from './memory';
import { SEG_END, SEG_WRITABLE } from './native';
import { VhostVsock } from './vhost-vsock';
import type { RunningVhostVsock } from './vsock-builder';
import { BufferPool, placeVirtqueue, Virtqueue } from './virtqueue';
import { validateQueueSize } from './vring';
import { VSOCK_HDR_SIZE, VSOCK_OP, VSOCK_SHUTDOWN, VSOCK_TYPE, writeVsockHeader } from './vsock-packet';

/** The host's CID, the default peer of connect(). */
const HOST_CID = 2;
const PORT_MAX = 0xffff_fffe; // 0xffffffff is VMADDR_PORT_ANY
const EPHEMERAL_FIRST = 49152;
const PAGE = 4096n;
const RX_QUEUE = 0;
const TX_QUEUE = 1;

const alignUp = (v: bigint, a: bigint): bigint => (v + a - 1n) & ~(a - 1n);

export interface VirtioVsockGuestOptions {
  /** The guest's CID (3..0xfffffffe) or 'auto' (the first free one from 3). Default 'auto'. */
  cid?: number | 'auto';
  /** Entries per ring (power of two, 1..32768). Default 128. */
  queueSize?: number;
  /** Payload bytes per ring buffer (the largest packet sent or received), 256..65536. Default 32768. */
  bufferSize?: number;
  /** Receive buffer per connection advertised to the peer (buf_alloc), 4096..2^30. Default 262144. */
  bufAlloc?: number;
}

/** Options of VirtioVsockGuest.connect(). */
export interface VirtioVsockConnectOptions {
  port: number;
  /** Peer CID (default 2, the host). */
  cid?: number;
  /** Keep the writable side open after the peer ends (default false: end() follows 'end'). */
  allowHalfOpen?: boolean;
}

/** Counters of a VirtioVsockGuest. */
export interface VirtioVsockGuestStats {
  rxPackets: number;
  txPackets: number;
  /** CREDIT_UPDATEs sent because the local reader freed buffer space. */
  creditUpdatesSent: number;
  /** Times a connection had data to send and no credit left. */
  creditStalls: number;
  /** Times the TX ring had no free buffer. */
  txRingFull: number;
}

export interface VsockGuestAddress {
  cid: number;
  port: number;
}

interface Plan {
  cid: number | 'auto';
  queueSize: number;
  bufferSize: number;
  bufAlloc: number;
}

const OPTION_KEYS = new Set(['cid', 'queueSize', 'bufferSize', 'bufAlloc']);

function intIn(v: unknown, arg: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw invalidArg(arg, `must be an integer, got ${String(v)}`);
  if (v < min || v > max) throw invalidArg(arg, `must be in ${min}..${max}, got ${v}`, 'ERR_VHOST_OUT_OF_RANGE');
  return v;
}

/** Checks VirtioVsockGuest options without any syscall. */
export function planVirtioVsockGuest(options: VirtioVsockGuestOptions = {}): Plan {
  if (options === null || typeof options !== 'object') throw invalidArg('options', 'must be an object');
  for (const k of Object.keys(options)) if (!OPTION_KEYS.has(k)) throw invalidArg(`options.${k}`, 'is not a VirtioVsockGuest option');
  const cid = options.cid === undefined || options.cid === 'auto' ? 'auto' : intIn(options.cid, 'options.cid', 3, 0xffff_fffe);
  const queueSize = validateQueueSize(options.queueSize ?? 128, 'options.queueSize');
  const bufferSize = intIn(options.bufferSize ?? 32768, 'options.bufferSize', 256, 65536);
  const bufAlloc = intIn(options.bufAlloc ?? 262144, 'options.bufAlloc', 4096, 1 << 30);
  return { cid, queueSize, bufferSize, bufAlloc };
}

function checkPort(v: unknown, arg: string): number {
  return intIn(v, arg, 0, PORT_MAX);
}

function connError(code: string, message: string, local: VsockGuestAddress, peer: VsockGuestAddress): VhostError {
  return new VhostError(`${code}: ${message} (guest ${local.cid}:${local.port} ↔ ${peer.cid}:${peer.port})`, { code, syscall: 'virtio-vsock', path: `vsock:${peer.cid}:${peer.port}` });
}

/** A packet waiting for a TX buffer: a header without payload (payload packets are built from the connection). */
interface Control {
  conn: VirtioVsockConnection | null;
  op: number;
  flags: number;
  /** For packets to an unknown connection (RST): the addressing. */
  addr?: { localPort: number; peerCid: number; peerPort: number };
}

interface PendingWrite {
  chunk: Buffer;
  offset: number;
  cb: ((err?: Error | null) => void) | null;
}

/** @internal The guest's side of a connection, used by VirtioVsockConnection. */
interface GuestLink {
  readonly cid: number;
  readonly bufAlloc: number;
  queueControl(c: Control): void;
  wantTx(conn: VirtioVsockConnection): void;
  forget(conn: VirtioVsockConnection): void;
}

type ConnState = 'connecting' | 'connected' | 'closed';

/**
 * One stream connection of a VirtioVsockGuest, a Duplex like net.Socket:
 * 'connect', backpressure (write() returns false above highWaterMark; data
 * only leaves within the peer's credit), end() sends SHUTDOWN(SEND) once
 * queued data is out, destroy() sends RST, 'end' when the peer shuts down its
 * sending side, 'close', 'error' with code ECONNREFUSED (the peer answered
 * the request with RST) or ECONNRESET (RST on an established connection).
 */
export class VirtioVsockConnection extends Duplex {
  readonly #guest: GuestLink;
  /** @internal */ readonly localPort: number;
  /** @internal */ readonly peerCid: number;
  /** @internal */ readonly peerPort: number;
  /** @internal */ state: ConnState;
  /** @internal Credit the peer grants. */ peerBufAlloc = 0;
  /** @internal */ peerFwdCnt = 0;
  /** @internal Payload bytes sent (u32 wrap). */ txCnt = 0;
  /** @internal Bytes handed to the Readable (u32 wrap). */ fwdCnt = 0;
  /** @internal fwdCnt as the peer last heard it. */ lastFwdSent = 0;
  /** @internal */ readonly pending: PendingWrite[] = [];
  /** @internal */ finalCb: ((err?: Error | null) => void) | null = null;
  /** @internal */ creditRequested = false;
  #rxQueue: Buffer[] = [];
  #peerSendDone = false;
  #eofPushed = false;
  #wantRead = false;
  #bytesRead = 0;
  #bytesWritten = 0;

  /** @internal Created by VirtioVsockGuest.connect() or for an incoming request. */
  constructor(guest: GuestLink, a: { localPort: number; peerCid: number; peerPort: number; state: ConnState; allowHalfOpen: boolean }) {
    super({ allowHalfOpen: a.allowHalfOpen });
    this.#guest = guest;
    this.localPort = a.localPort;
    this.peerCid = a.peerCid;
    this.peerPort = a.peerPort;
    this.state = a.state;
  }

  /** The peer as { cid, port }. */
  get remoteAddress(): VsockGuestAddress {
    return { cid: this.peerCid, port: this.peerPort };
  }

  /** This end as { cid: the guest's CID, port }. */
  get localAddress(): VsockGuestAddress {
    return { cid: this.#guest.cid, port: this.localPort };
  }

  get connecting(): boolean {
    return this.state === 'connecting';
  }

  get bytesRead(): number {
    return this.#bytesRead;
  }

  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  /** Bytes received and not yet taken by the Readable (bounded by the credit we grant). */
  get receiveQueued(): number {
    let n = 0;
    for (const b of this.#rxQueue) n += b.length;
    return n;
  }

  /** @internal Bytes the peer lets us send now. */
  credit(): number {
    const inFlight = (this.txCnt - this.peerFwdCnt) >>> 0;
    return Math.max(0, this.peerBufAlloc - inFlight);
  }

  /** @internal The peer accepted our REQUEST. */
  onResponse(): void {
    this.state = 'connected';
    this.emit('connect');
    this.#guest.wantTx(this);
  }

  /** @internal Payload from the peer. */
  onData(payload: Buffer): void {
    if (this.#peerSendDone || this.state !== 'connected') return; // data after SHUTDOWN(SEND) is a protocol violation: drop
    if (payload.length === 0) return;
    this.#rxQueue.push(payload);
    if (this.#wantRead) this.#pushQueued();
  }

  /** @internal SHUTDOWN from the peer. */
  onShutdown(flags: number): void {
    if (flags & VSOCK_SHUTDOWN.SEND) {
      this.#peerSendDone = true;
      this.#pushQueued();
    }
  }

  /** @internal RST from the peer. */
  onReset(): void {
    const was = this.state;
    this.state = 'closed';
    this.#guest.forget(this);
    const local = this.localAddress;
    if (was === 'connecting') {
      this.destroy(connError('ECONNREFUSED', 'connection refused: the peer answered with RST', local, this.remoteAddress));
    } else if (this.#peerSendDone && this.pending.length === 0) {
      // The peer closed after shutting down its side: a normal end.
      for (const cb of this.#takeCallbacks()) cb(null);
      this.#pushQueued();
      if (this.writableFinished || !this.writable) this.destroy();
    } else {
      this.destroy(connError('ECONNRESET', 'connection reset by the peer', local, this.remoteAddress));
    }
  }

  #takeCallbacks(): ((err?: Error | null) => void)[] {
    const cbs: ((err?: Error | null) => void)[] = [];
    for (const p of this.pending.splice(0)) if (p.cb) cbs.push(p.cb);
    if (this.finalCb) cbs.push(this.finalCb);
    this.finalCb = null;
    return cbs;
  }

  /** @internal Counts bytes written to the ring. */
  sent(n: number): void {
    this.txCnt = (this.txCnt + n) >>> 0;
    this.#bytesWritten += n;
  }

  #pushQueued(): void {
    let freed = 0;
    while (this.#rxQueue.length > 0 && this.#wantRead) {
      const chunk = this.#rxQueue.shift()!;
      freed += chunk.length;
      this.#bytesRead += chunk.length;
      this.#wantRead = this.push(chunk);
    }
    if (freed > 0) {
      this.fwdCnt = (this.fwdCnt + freed) >>> 0;
      const unheard = (this.fwdCnt - this.lastFwdSent) >>> 0;
      if (this.state === 'connected' && !this.#peerSendDone && unheard >= this.#guest.bufAlloc / 4) {
        this.#guest.queueControl({ conn: this, op: VSOCK_OP.CREDIT_UPDATE, flags: 0 });
      }
    }
    if (this.#rxQueue.length === 0 && this.#peerSendDone && !this.#eofPushed) {
      this.#eofPushed = true;
      this.push(null);
    }
  }

  override _read(): void {
    this.#wantRead = true;
    this.#pushQueued();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    this._writev([{ chunk }], cb);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    if (this.state === 'closed') {
      cb(connError('EPIPE', 'the connection is closed', this.localAddress, this.remoteAddress));
      return;
    }
    chunks.forEach(({ chunk }, i) => {
      if (chunk.length > 0 || i === chunks.length - 1) this.pending.push({ chunk, offset: 0, cb: i === chunks.length - 1 ? cb : null });
    });
    this.#guest.wantTx(this);
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.state === 'closed') {
      cb();
      return;
    }
    this.finalCb = cb;
    this.#guest.wantTx(this);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.state !== 'closed') {
      this.state = 'closed';
      this.#guest.queueControl({ conn: this, op: VSOCK_OP.RST, flags: 0 });
      this.#guest.forget(this);
    }
    this.pending.length = 0;
    this.finalCb = null;
    this.#rxQueue = [];
    cb(err);
  }
}

/**
 * A virtio-vsock guest driven by this process over /dev/vhost-vsock: no VM.
 * Host sockets reach it at `cid`; listen() accepts their connections and
 * connect() opens connections to them (the host by default). Create with
 * VirtioVsockGuest.create(); close() (or `using`) destroys every connection
 * and releases the device (the kernel then resets host sockets still
 * connected to this CID). Events: 'error' (ring or device failure), 'close'.
 * Stream sockets only (SEQPACKET is not negotiated).
 */
export class VirtioVsockGuest extends EventEmitter implements Disposable {
  /** The CID the kernel accepted for this guest. */
  readonly cid: number;
  readonly queueSize: number;
  /** Payload bytes per ring buffer. */
  readonly bufferSize: number;
  /** Receive buffer advertised per connection. */
  readonly bufAlloc: number;
  readonly #mem: GuestMemory;
  readonly #fds: EventFd[];
  readonly #device: RunningVhostVsock;
  readonly #rxq: Virtqueue;
  readonly #txq: Virtqueue;
  readonly #rxPool: BufferPool;
  readonly #txPool: BufferPool;
  readonly #rxSlotOf: Int32Array;
  readonly #txSlotOf: Int32Array;
  readonly #segs: Uint32Array;
  readonly #heads: Uint32Array;
  readonly #used: Uint32Array;
  readonly #rxUsed: Uint32Array;
  readonly #conns = new Map<string, VirtioVsockConnection>();
  readonly #listeners = new Map<number, { cb: (conn: VirtioVsockConnection) => void; allowHalfOpen: boolean }>();
  readonly #control: Control[] = [];
  readonly #txWanted = new Set<VirtioVsockConnection>();
  readonly #stats: VirtioVsockGuestStats = { rxPackets: 0, txPackets: 0, creditUpdatesSent: 0, creditStalls: 0, txRingFull: 0 };
  readonly #link: GuestLink;
  #nextPort = EPHEMERAL_FIRST;
  #flushScheduled = false;
  #flushing = false;
  #closed = false;

  private constructor(init: { plan: Plan; mem: GuestMemory; fds: EventFd[]; device: RunningVhostVsock; rxq: Virtqueue; txq: Virtqueue; rxPool: BufferPool; txPool: BufferPool }) {
    super();
    this.cid = init.device.cid;
    this.queueSize = init.plan.queueSize;
    this.bufferSize = init.plan.bufferSize;
    this.bufAlloc = init.plan.bufAlloc;
    this.#mem = init.mem;
    this.#fds = init.fds;
    this.#device = init.device;
    this.#rxq = init.rxq;
    this.#txq = init.txq;
    this.#rxPool = init.rxPool;
    this.#txPool = init.txPool;
    const n = this.queueSize;
    this.#rxSlotOf = new Int32Array(n).fill(-1);
    this.#txSlotOf = new Int32Array(n).fill(-1);
    this.#segs = new Uint32Array(3 * n);
    this.#heads = new Uint32Array(n);
    this.#used = new Uint32Array(2 * n);
    this.#rxUsed = new Uint32Array(2 * n);
    const self = this;
    this.#link = {
      get cid() {
        return self.cid;
      },
      get bufAlloc() {
        return self.bufAlloc;
      },
      queueControl: (c) => {
        this.#control.push(c);
        this.#scheduleFlush();
      },
      wantTx: (conn) => {
        this.#txWanted.add(conn);
        this.#scheduleFlush();
      },
      forget: (conn) => {
        this.#conns.delete(keyOf(conn.localPort, conn.peerCid, conn.peerPort));
        this.#txWanted.delete(conn);
      },
    };
  }

  /**
   * Validates the options (before any syscall), then creates guest memory,
   * the eventfds and the vhost-vsock device (VERSION_1 + EVENT_IDX, CID set,
   * running), fills the RX ring and watches the call eventfds. On failure
   * everything created so far is released.
   */
  static create(options: VirtioVsockGuestOptions = {}): VirtioVsockGuest {
    const plan = planVirtioVsockGuest(options);
    const n = plan.queueSize;
    const slot = VSOCK_HDR_SIZE + plan.bufferSize;
    const rxRing = placeVirtqueue(n, 0n);
    const txRing = placeVirtqueue(n, alignUp(rxRing.end, 16n));
    const rxPoolGpa = alignUp(txRing.end, PAGE);
    const txPoolGpa = alignUp(rxPoolGpa + BigInt(slot) * BigInt(n), PAGE);
    const size = alignUp(txPoolGpa + BigInt(slot) * BigInt(n), PAGE);
    const made: { close(): void }[] = [];
    try {
      const mem = GuestMemory.create({ regions: [{ gpa: 0n, size }], name: 'virtio-vsock-guest' });
      made.push(mem);
      const fds = [EventFd.create(), EventFd.create(), EventFd.create(), EventFd.create()];
      made.push(...fds);
      const [rxKick, rxCall, txKick, txCall] = fds;
      const ring = (r: { desc: bigint; avail: bigint; used: bigint }) => ({ desc: r.desc, avail: r.avail, used: r.used });
      const rxq = Virtqueue.create({ memory: mem, size: n, ...ring(rxRing), kick: rxKick, eventIdx: true });
      made.push(rxq);
      const txq = Virtqueue.create({ memory: mem, size: n, ...ring(txRing), kick: txKick, eventIdx: true });
      made.push(txq);
      const builder = VhostVsock.builder()
        .memory(mem)
        .features(features.ring.VERSION_1 | features.ring.RING_EVENT_IDX)
        .queue(RX_QUEUE, { size: n, ...ring(rxRing), kick: rxKick, call: rxCall })
        .queue(TX_QUEUE, { size: n, ...ring(txRing), kick: txKick, call: txCall });
      if (plan.cid === 'auto') builder.cid('auto');
      else builder.cid(plan.cid);
      const device = builder.start();
      made.push(device);
      const guest = new VirtioVsockGuest({
        plan, mem, fds, device, rxq, txq,
        rxPool: new BufferPool(mem, 0n, rxPoolGpa, slot, n),
        txPool: new BufferPool(mem, 0n, txPoolGpa, slot, n),
      });
      guest.#start(rxCall, txCall);
      return guest;
    } catch (err) {
      for (const res of made.reverse()) {
        try {
          res.close();
        } catch {
          // the original error is the one to report
        }
      }
      throw err;
    }
  }

  #start(rxCall: EventFd, txCall: EventFd): void {
    this.#txq.disableCallbacks(); // TX buffers are reclaimed when sending; calls only while waiting for space
    this.#refill();
    rxCall.watch((err) => this.#onCall(rxCall, 'rx', err));
    txCall.watch((err) => this.#onCall(txCall, 'tx', err));
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Open connections. */
  get connections(): number {
    return this.#conns.size;
  }

  /** A snapshot of the counters. */
  get stats(): VirtioVsockGuestStats {
    return { ...this.#stats };
  }

  /**
   * Accepts stream connections to `port` (0..0xfffffffe); `onConnection`
   * receives each as a connected VirtioVsockConnection. Throws EADDRINUSE
   * when the port already listens.
   */
  listen(port: number, onConnection: (conn: VirtioVsockConnection) => void, options: { allowHalfOpen?: boolean } = {}): this {
    if (this.#closed) throw closedError('VirtioVsockGuest (listen)');
    const p = checkPort(port, 'port');
    if (typeof onConnection !== 'function') throw invalidArg('onConnection', 'must be a function');
    if (options === null || typeof options !== 'object') throw invalidArg('options', 'must be an object');
    const allowHalfOpen = options.allowHalfOpen ?? false;
    if (typeof allowHalfOpen !== 'boolean') throw invalidArg('options.allowHalfOpen', 'must be a boolean');
    if (this.#listeners.has(p)) throw new VhostError(`EADDRINUSE: port ${p} of guest CID ${this.cid} already listens`, { code: 'EADDRINUSE', syscall: 'listen', path: `vsock:${this.cid}:${p}` });
    this.#listeners.set(p, { cb: onConnection, allowHalfOpen });
    return this;
  }

  /** Stops accepting on `port` (established connections stay). */
  unlisten(port: number): this {
    this.#listeners.delete(checkPort(port, 'port'));
    return this;
  }

  /**
   * Opens a stream connection to `cid` (default 2, the host) : `port` from a
   * free local port (49152 upward). 'connect' when the peer answers; 'error'
   * with ECONNREFUSED when it answers with RST (nobody listens).
   */
  connect(options: VirtioVsockConnectOptions, onConnect?: () => void): VirtioVsockConnection {
    if (this.#closed) throw closedError('VirtioVsockGuest (connect)');
    if (options === null || typeof options !== 'object') throw invalidArg('options', 'must be an object { port, cid }');
    const port = checkPort(options.port, 'options.port');
    const cid = options.cid === undefined ? HOST_CID : intIn(options.cid, 'options.cid', 0, 0xffff_fffe);
    const allowHalfOpen = options.allowHalfOpen ?? false;
    if (typeof allowHalfOpen !== 'boolean') throw invalidArg('options.allowHalfOpen', 'must be a boolean');
    if (onConnect !== undefined && typeof onConnect !== 'function') throw invalidArg('onConnect', 'must be a function');
    const localPort = this.#allocPort(cid, port);
    const conn = new VirtioVsockConnection(this.#link, { localPort, peerCid: cid, peerPort: port, state: 'connecting', allowHalfOpen });
    this.#conns.set(keyOf(localPort, cid, port), conn);
    if (onConnect) conn.once('connect', onConnect);
    this.#link.queueControl({ conn, op: VSOCK_OP.REQUEST, flags: 0 });
    return conn;
  }

  #allocPort(cid: number, port: number): number {
    for (let i = 0; i <= PORT_MAX - EPHEMERAL_FIRST; i++) {
      const p = this.#nextPort;
      this.#nextPort = p >= PORT_MAX ? EPHEMERAL_FIRST : p + 1;
      if (!this.#listeners.has(p) && !this.#conns.has(keyOf(p, cid, port))) return p;
    }
    throw new VhostError('EADDRNOTAVAIL: no free local port', { code: 'EADDRNOTAVAIL', syscall: 'connect' });
  }

  // ---- TX ------------------------------------------------------------------

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#closed) return;
    this.#flushScheduled = true;
    process.nextTick(() => {
      this.#flushScheduled = false;
      this.#flushTx();
    });
  }

  #reclaimTx(): void {
    const n = this.#txq.collectInto(this.#used, this.queueSize);
    for (let i = 0; i < n; i++) {
      const head = this.#used[2 * i];
      this.#txPool.release(this.#txSlotOf[head]);
      this.#txSlotOf[head] = -1;
    }
  }

  /** Writes one packet into a free TX slot; returns the slot's payload view, or null when none is free. */
  #packet(conn: VirtioVsockConnection | null, op: number, flags: number, len: number, addr?: Control['addr']): { slot: number; payload: Uint8Array } | null {
    const slot = this.#txPool.alloc();
    if (slot < 0) return null;
    const view = this.#txPool.view(slot);
    if (conn) conn.lastFwdSent = conn.fwdCnt;
    writeVsockHeader(view, 0, {
      srcCid: BigInt(this.cid),
      dstCid: BigInt(conn ? conn.peerCid : addr!.peerCid),
      srcPort: conn ? conn.localPort : addr!.localPort,
      dstPort: conn ? conn.peerPort : addr!.peerPort,
      len,
      type: VSOCK_TYPE.STREAM,
      op,
      flags,
      bufAlloc: conn ? this.bufAlloc : 0,
      fwdCnt: conn ? conn.fwdCnt : 0,
    });
    return { slot, payload: view.subarray(VSOCK_HDR_SIZE, VSOCK_HDR_SIZE + len) };
  }

  /** Fills free TX buffers: control packets first, then data within each connection's credit; one publish, one kick at most. */
  #flushTx(): void {
    if (this.#closed || this.#flushing) return;
    this.#flushing = true;
    const done: Array<{ cb: (err?: Error | null) => void }> = [];
    let count = 0;
    const add = (slot: number, len: number) => {
      this.#segs[3 * count] = this.#txPool.offset(slot);
      this.#segs[3 * count + 1] = VSOCK_HDR_SIZE + len;
      this.#segs[3 * count + 2] = SEG_END;
      this.#heads[count] = slot; // remembered until post returns the real heads
      count++;
    };
    let full = false;
    try {
      this.#reclaimTx();
      while (this.#control.length > 0) {
        const c = this.#control[0];
        if (c.conn && c.op !== VSOCK_OP.RST && c.conn.state === 'closed') {
          this.#control.shift();
          continue;
        }
        const p = this.#packet(c.conn, c.op, c.flags, 0, c.addr);
        if (!p) {
          full = true;
          break;
        }
        this.#control.shift();
        if (c.op === VSOCK_OP.CREDIT_UPDATE) this.#stats.creditUpdatesSent++;
        add(p.slot, 0);
      }
      if (!full) {
        for (const conn of this.#txWanted) {
          if (conn.state !== 'connected') {
            if (conn.state === 'closed') this.#txWanted.delete(conn);
            continue;
          }
          while (conn.pending.length > 0) {
            const w = conn.pending[0];
            const left = w.chunk.length - w.offset;
            if (left === 0) {
              conn.pending.shift();
              if (w.cb) done.push({ cb: w.cb });
              continue;
            }
            const credit = conn.credit();
            if (credit === 0) {
              this.#stats.creditStalls++;
              if (!conn.creditRequested) {
                // Ask once per stall: the peer's CREDIT_UPDATE reopens the window.
                conn.creditRequested = true;
                const p = this.#packet(conn, VSOCK_OP.CREDIT_REQUEST, 0, 0);
                if (p) add(p.slot, 0);
              }
              break;
            }
            const len = Math.min(left, credit, this.bufferSize);
            const p = this.#packet(conn, VSOCK_OP.RW, 0, len);
            if (!p) {
              full = true;
              break;
            }
            conn.creditRequested = false;
            p.payload.set(w.chunk.subarray(w.offset, w.offset + len));
            w.offset += len;
            conn.sent(len);
            add(p.slot, len);
          }
          if (full) break;
          if (conn.pending.length === 0) {
            if (conn.finalCb) {
              const p = this.#packet(conn, VSOCK_OP.SHUTDOWN, VSOCK_SHUTDOWN.SEND, 0);
              if (!p) {
                full = true;
                break;
              }
              add(p.slot, 0);
              done.push({ cb: conn.finalCb });
              conn.finalCb = null;
            }
            this.#txWanted.delete(conn);
          }
        }
      }
      if (count > 0) {
        const slots = this.#heads.slice(0, count);
        const posted = this.#txq.postEncoded(this.#segs, count, this.#heads, true);
        // Every TX slot has a free descriptor (one descriptor per packet, as many slots as entries).
        for (let i = 0; i < posted; i++) this.#txSlotOf[this.#heads[i]] = slots[i];
        this.#stats.txPackets += posted;
      }
      if (full) {
        this.#stats.txRingFull++;
        if (this.#txq.enableCallbacks(false)) this.#scheduleFlush();
      }
    } catch (e) {
      this.#flushing = false;
      this.#failOrRethrow(e);
      return;
    }
    this.#flushing = false;
    for (const d of done) d.cb(null);
  }

  // ---- RX ------------------------------------------------------------------

  #onCall(call: EventFd, which: 'rx' | 'tx', err?: VhostError): void {
    if (this.#closed) return;
    if (err) {
      this.#fail(err);
      return;
    }
    try {
      call.read();
      if (which === 'rx') this.#drainRx();
      else {
        this.#txq.disableCallbacks();
        this.#flushTx();
      }
    } catch (e) {
      this.#failOrRethrow(e);
    }
  }

  #refill(): void {
    const pool = this.#rxPool;
    const count = pool.available;
    if (count === 0) return;
    const slots: number[] = [];
    for (let i = 0; i < count; i++) {
      const slot = pool.alloc();
      slots.push(slot);
      this.#segs[3 * i] = pool.offset(slot);
      this.#segs[3 * i + 1] = pool.slotSize;
      this.#segs[3 * i + 2] = SEG_WRITABLE | SEG_END;
    }
    const posted = this.#rxq.postEncoded(this.#segs, count, this.#heads, true);
    for (let i = 0; i < posted; i++) this.#rxSlotOf[this.#heads[i]] = slots[i];
    for (let i = posted; i < count; i++) pool.release(slots[i]);
  }

  #drainRx(): void {
    const used = this.#rxUsed;
    for (;;) {
      if (this.#closed) return;
      const n = this.#rxq.collectInto(used, this.queueSize);
      for (let i = 0; i < n && !this.#closed; i++) {
        const head = used[2 * i];
        const slot = this.#rxSlotOf[head];
        this.#rxSlotOf[head] = -1;
        const view = this.#rxPool.view(slot);
        const len = Math.min(used[2 * i + 1], view.length);
        try {
          if (len >= VSOCK_HDR_SIZE) this.#receive(view, len);
        } catch (e) {
          // A throwing user handler ('data', 'connect', a listener) must not
          // strand the rest of this batch's buffers: rethrow it afterwards.
          if (e instanceof VhostError) throw e;
          process.nextTick(() => {
            throw e;
          });
        } finally {
          this.#rxPool.release(slot);
        }
      }
      if (this.#closed) return;
      this.#refill();
      if (n === 0 && !this.#rxq.enableCallbacks(false)) break;
    }
    this.#flushTx();
  }

  #receive(view: Uint8Array, len: number): void {
    this.#stats.rxPackets++;
    const dv = new DataView(view.buffer, view.byteOffset, VSOCK_HDR_SIZE);
    const srcCid = Number(dv.getBigUint64(0, true));
    const dstCid = Number(dv.getBigUint64(8, true));
    const srcPort = dv.getUint32(16, true);
    const dstPort = dv.getUint32(20, true);
    const payloadLen = Math.min(dv.getUint32(24, true), len - VSOCK_HDR_SIZE);
    const type = dv.getUint16(28, true);
    const op = dv.getUint16(30, true);
    const flags = dv.getUint32(32, true);
    if (dstCid !== this.cid) return;
    const addr = { localPort: dstPort, peerCid: srcCid, peerPort: srcPort };
    const conn = this.#conns.get(keyOf(dstPort, srcCid, srcPort));
    if (type !== VSOCK_TYPE.STREAM) {
      if (op !== VSOCK_OP.RST) this.#control.push({ conn: null, op: VSOCK_OP.RST, flags: 0, addr });
      return;
    }
    if (conn) {
      conn.peerBufAlloc = dv.getUint32(36, true);
      conn.peerFwdCnt = dv.getUint32(40, true);
      if (conn.pending.length > 0 || conn.finalCb) this.#txWanted.add(conn);
    }
    switch (op) {
      case VSOCK_OP.REQUEST: {
        const l = this.#listeners.get(dstPort);
        if (conn || !l) {
          this.#control.push({ conn: null, op: VSOCK_OP.RST, flags: 0, addr });
          return;
        }
        const c = new VirtioVsockConnection(this.#link, { ...addr, state: 'connected', allowHalfOpen: l.allowHalfOpen });
        c.peerBufAlloc = dv.getUint32(36, true);
        c.peerFwdCnt = dv.getUint32(40, true);
        this.#conns.set(keyOf(dstPort, srcCid, srcPort), c);
        this.#control.push({ conn: c, op: VSOCK_OP.RESPONSE, flags: 0 });
        l.cb(c);
        return;
      }
      case VSOCK_OP.RESPONSE:
        if (conn?.state === 'connecting') conn.onResponse();
        else this.#control.push({ conn: null, op: VSOCK_OP.RST, flags: 0, addr });
        return;
      case VSOCK_OP.RW:
        if (!conn) {
          this.#control.push({ conn: null, op: VSOCK_OP.RST, flags: 0, addr });
          return;
        }
        conn.onData(Buffer.from(view.subarray(VSOCK_HDR_SIZE, VSOCK_HDR_SIZE + payloadLen)));
        return;
      case VSOCK_OP.CREDIT_REQUEST:
        if (conn) this.#control.push({ conn, op: VSOCK_OP.CREDIT_UPDATE, flags: 0 });
        return;
      case VSOCK_OP.CREDIT_UPDATE:
        return; // the credit fields were taken above
      case VSOCK_OP.SHUTDOWN:
        if (conn) conn.onShutdown(flags);
        else this.#control.push({ conn: null, op: VSOCK_OP.RST, flags: 0, addr });
        return;
      case VSOCK_OP.RST:
        conn?.onReset(); // never answer a reset
        return;
      default:
        if (!conn) this.#control.push({ conn: null, op: VSOCK_OP.RST, flags: 0, addr });
    }
  }

  // ---- lifecycle -------------------------------------------------------------

  /** Ring and syscall failures close the guest; anything else (a throwing listener) propagates. */
  #failOrRethrow(e: unknown): void {
    if (!(e instanceof VhostError)) throw e;
    this.#fail(e);
  }

  #fail(err: Error): void {
    if (this.#closed) return;
    if (this.listenerCount('error') > 0) this.emit('error', err);
    this.close();
  }

  /** The call watchers keep the process alive (the default). */
  ref(): void {
    if (this.#closed) return;
    this.#fds[1].ref();
    this.#fds[3].ref();
  }

  /** The guest no longer keeps the process alive on its own. */
  unref(): void {
    if (this.#closed) return;
    this.#fds[1].unref();
    this.#fds[3].unref();
  }

  /**
   * Destroys every connection (RST to each peer, sent before the device
   * stops), stops listening, then stops and closes the device, the eventfds
   * and the guest memory. Emits 'close'. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    for (const conn of [...this.#conns.values()]) conn.destroy();
    this.#listeners.clear();
    try {
      this.#flushTx();
    } catch {
      // best effort: the device close resets host sockets anyway
    }
    this.#closed = true;
    let first: unknown;
    const attempt = (fn: () => void) => {
      try {
        fn();
      } catch (err) {
        first ??= err;
      }
    };
    for (const fd of this.#fds) attempt(() => fd.unwatch());
    attempt(() => this.#device.close());
    attempt(() => this.#rxq.close());
    attempt(() => this.#txq.close());
    for (const fd of this.#fds) attempt(() => fd.close());
    attempt(() => this.#mem.close());
    this.#control.length = 0;
    this.#txWanted.clear();
    this.emit('close');
    if (first !== undefined) throw first;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function keyOf(localPort: number, peerCid: number, peerPort: number): string {
  return `${localPort}:${peerCid}:${peerPort}`;
}
