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
//
// SEQPACKET (when the device offers VIRTIO_VSOCK_F_SEQPACKET) uses the same
// packets with type SEQPACKET: a message goes out in bufferSize pieces, the
// last one flagged EOM, and arrives as one chunk once its EOM packet is in,
// as net/vmw_vsock/virtio_transport_common.c does. The credit rules apply
// per byte; a message larger than the peer's buf_alloc fails with EMSGSIZE.
import { EventEmitter } from 'node:events';
import type { DeviceState } from '../vhost/builder';
import { abortError, checkBool, checkFunction, checkInt, checkObject, checkSignal, plain, readOptions } from '../core/check';
import { checkVsockType } from '../vsock/options';
import { closedError, invalidArg, VhostError } from '../core/errors';
import { features } from '../core/features';
import { SEG_END } from '../core/native';
import { failOrRethrow, GuestRings, RX_QUEUE, TX_QUEUE } from './userspace-guest';
import { VhostVsock } from '../vhost/vsock';
import type { VsockType } from '../vsock/socket';
import type { RunningVhostVsock } from '../vhost/vsock';
import type { BufferPool } from '../virtio/virtqueue';
import { validateQueueSize } from '../virtio/vring';
import { type Control, type GuestLink, VirtioVsockConnection } from './vsock-connection';
import { getVsockCid, putVsockHeader, VSOCK_HDR_SIZE, VSOCK_OP, VSOCK_SEQ, VSOCK_SHUTDOWN, VSOCK_TYPE } from '../virtio/vsock-packet';

export { VirtioVsockConnection, type VsockGuestAddress } from './vsock-connection';

/** The host's CID, the default peer of connect(). */
const HOST_CID = 2;
const PORT_MAX = 0xffff_fffe; // 0xffffffff is VMADDR_PORT_ANY
const EPHEMERAL_FIRST = 49152;
const INT32_MAX = 0x7fff_ffff;

export interface VirtioVsockGuestOptions {
  /** The guest's CID (3..0xfffffffe) or 'auto' (the first free one from 3). Default 'auto'. */
  cid?: number | 'auto';
  /** Entries per ring (power of two, 1..32768). Default 128. */
  queueSize?: number;
  /** Payload bytes per ring buffer (the largest packet sent or received), 256..65536. Default 32768. */
  bufferSize?: number;
  /** Receive buffer per connection advertised to the peer (buf_alloc), 4096..2^30. Default 262144. */
  bufAlloc?: number;
  /**
   * VIRTIO_VSOCK_F_SEQPACKET: undefined (default) negotiates it when the
   * device offers it, true requires it (ERR_VHOST_UNSUPPORTED otherwise),
   * false leaves it off (host SEQPACKET connects then fail with ESOCKTNOSUPPORT).
   */
  seqpacket?: boolean;
}

/** Options of VirtioVsockGuest.connect(). */
export interface VirtioVsockConnectOptions {
  port: number;
  /** Peer CID (default 2, the host). */
  cid?: number;
  /** Keep the writable side open after the peer ends (default false: end() follows 'end'). */
  allowHalfOpen?: boolean;
  /** Default 'stream'; 'seqpacket' needs the feature negotiated (see VirtioVsockGuest.seqpacket). */
  type?: VsockType;
  /** Connect timeout in ms (1..2^31-1): no RESPONSE or RST by then → 'error' with code ETIMEDOUT. No timeout by default. */
  timeout?: number;
  /** Aborting it destroys the connection with an AbortError (code ABORT_ERR), connected or not. */
  signal?: AbortSignal;
}

/** Options of VirtioVsockGuest.listen(). */
export interface VirtioVsockListenOptions {
  /** For accepted connections, as in VirtioVsockConnectOptions. Default false. */
  allowHalfOpen?: boolean;
  /** Default 'stream'; requests of the other type are refused with RST, as the kernel does. */
  type?: VsockType;
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
  /** RST packets sent (refusals, destroy(), aborted or timed-out connects). */
  resetsSent: number;
}

interface Plan {
  cid: number | 'auto';
  queueSize: number;
  bufferSize: number;
  bufAlloc: number;
  seqpacket: boolean | 'offered';
}

const OPTION_KEYS = new Set(['cid', 'queueSize', 'bufferSize', 'bufAlloc', 'seqpacket']);

const intIn = (v: unknown, arg: string, min: number, max: number): number => checkInt(v, arg, min, max, plain);

/** Checks VirtioVsockGuest options without any syscall. */
export function planVirtioVsockGuest(options: VirtioVsockGuestOptions = {}): Plan {
  checkObject(options, 'options');
  for (const k of Object.keys(options)) if (!OPTION_KEYS.has(k)) throw invalidArg(`options.${k}`, 'is not a VirtioVsockGuest option');
  options = readOptions(options, OPTION_KEYS);
  const cid = options.cid === undefined || options.cid === 'auto' ? 'auto' : intIn(options.cid, 'options.cid', 3, 0xffff_fffe);
  const queueSize = validateQueueSize(options.queueSize ?? 128, 'options.queueSize');
  const bufferSize = intIn(options.bufferSize ?? 32768, 'options.bufferSize', 256, 65536);
  const bufAlloc = intIn(options.bufAlloc ?? 262144, 'options.bufAlloc', 4096, 1 << 30);
  const asked = options.seqpacket ?? 'offered';
  const seqpacket = asked === 'offered' ? asked : checkBool(asked, 'options.seqpacket');
  return { cid, queueSize, bufferSize, bufAlloc, seqpacket };
}

const checkPort = (v: unknown, arg: string): number => intIn(v, arg, 0, PORT_MAX);

/** Checked connect() options. Exported for the unit tests; use VirtioVsockGuest.connect(). */
export function checkGuestConnectOptions(options: unknown): { port: number; cid: number; allowHalfOpen: boolean; type: VsockType; timeout?: number; signal?: AbortSignal } {
  const o = checkObject(options, 'options', 'an object { port, cid }');
  const port = checkPort(o.port, 'options.port');
  const cid = o.cid === undefined ? HOST_CID : intIn(o.cid, 'options.cid', 0, 0xffff_fffe);
  const allowHalfOpen = checkBool(o.allowHalfOpen, 'options.allowHalfOpen');
  const type = checkVsockType(o.type, 'options.type');
  const timeout = o.timeout === undefined ? undefined : intIn(o.timeout, 'options.timeout', 1, INT32_MAX);
  const signal = checkSignal(o.signal, 'options.signal');
  return { port, cid, allowHalfOpen, type, timeout, signal };
}

/** The virtio-vsock feature bits to ack for `plan` given what the device offers; ERR_VHOST_UNSUPPORTED when SEQPACKET is required and not offered. */
export function vsockGuestFeatures(plan: Pick<Plan, 'seqpacket'>, offered: bigint): bigint {
  let acked = features.ring.VERSION_1 | features.ring.RING_EVENT_IDX;
  const seq = features.vsock.SEQPACKET;
  if (plan.seqpacket === true && (offered & seq) === 0n) {
    throw invalidArg('options.seqpacket', `is true but the device does not offer VIRTIO_VSOCK_F_SEQPACKET (offered 0x${offered.toString(16)})`, 'ERR_VHOST_UNSUPPORTED');
  }
  if (plan.seqpacket !== false && (offered & seq) !== 0n) acked |= seq;
  return acked;
}

/**
 * A virtio-vsock guest driven by this process over /dev/vhost-vsock: no VM.
 * Host sockets reach it at `cid`; listen() accepts their connections and
 * connect() opens connections to them (the host by default). Create with
 * VirtioVsockGuest.create(); close() (or `using`) destroys every connection
 * and releases the device (the kernel then resets host sockets still
 * connected to this CID). Events: 'error' (ring or device failure), 'close'.
 * SEQPACKET connections work when the device offers the feature (see
 * `seqpacket`). pause() / resume() stop the device and bring it back on a new
 * one over the same rings; connections do not survive that (both ends see
 * ECONNRESET), listeners do.
 */
export class VirtioVsockGuest extends EventEmitter implements Disposable {
  /** The CID the kernel accepted for this guest. */
  readonly cid: number;
  readonly queueSize: number;
  /** Payload bytes per ring buffer. */
  readonly bufferSize: number;
  /** Receive buffer advertised per connection. */
  readonly bufAlloc: number;
  /** VIRTIO_VSOCK_F_SEQPACKET was negotiated: type 'seqpacket' works. */
  readonly seqpacket: boolean;
  readonly #rings: GuestRings<RunningVhostVsock>;
  // TX packets being assembled (SEG_* triples, their txPool slots); used RX heads.
  readonly #segs: Uint32Array;
  readonly #slots: Uint32Array;
  readonly #rxUsed: Uint32Array;
  // Headers are read and written through these, slot s at s * slotSize: no DataView per packet.
  readonly #rxHdr: DataView;
  readonly #txHdr: DataView;
  readonly #conns = new Map<string, VirtioVsockConnection>();
  readonly #listeners = new Map<number, { cb: (conn: VirtioVsockConnection) => void; allowHalfOpen: boolean; type: VsockType }>();
  readonly #control: Control[] = [];
  readonly #txWanted = new Set<VirtioVsockConnection>();
  readonly #stats: VirtioVsockGuestStats = { rxPackets: 0, txPackets: 0, creditUpdatesSent: 0, creditStalls: 0, txRingFull: 0, resetsSent: 0 };
  readonly #link: GuestLink;
  #nextPort = EPHEMERAL_FIRST;
  #flushScheduled = false;
  #flushing = false;
  #closed = false;

  private constructor(plan: Plan, rings: GuestRings<RunningVhostVsock>) {
    super();
    this.cid = rings.device.cid;
    this.queueSize = plan.queueSize;
    this.bufferSize = plan.bufferSize;
    this.bufAlloc = plan.bufAlloc;
    this.seqpacket = (rings.device.features & features.vsock.SEQPACKET) !== 0n;
    this.#rings = rings;
    const n = this.queueSize;
    this.#segs = new Uint32Array(3 * n);
    this.#slots = new Uint32Array(n);
    this.#rxUsed = new Uint32Array(2 * n);
    this.#rxHdr = poolDataView(rings.rxPool);
    this.#txHdr = poolDataView(rings.txPool);
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
   * the eventfds and the vhost-vsock device (VERSION_1 + EVENT_IDX, plus
   * SEQPACKET when offered unless `seqpacket: false`; CID set; running), fills the RX ring and watches the call eventfds. On failure
   * everything created so far is released.
   */
  static create(options: VirtioVsockGuestOptions = {}): VirtioVsockGuest {
    const plan = planVirtioVsockGuest(options);
    const slot = VSOCK_HDR_SIZE + plan.bufferSize;
    const layout = { name: 'virtio-vsock-guest', queueSize: plan.queueSize, rxBufferSize: slot, txBufferSize: slot, eventIdx: true };
    // On resume, `previous` (the closed device) gives the CID the kernel accepted and the features acked before.
    const startDevice = (rings: GuestRings<RunningVhostVsock>, state?: DeviceState, previous?: RunningVhostVsock) => {
      // Opened here (not by the builder) to read the offered features first: SEQPACKET is acked only when offered.
      const dev = VhostVsock.open();
      try {
        const bits = previous?.features ?? vsockGuestFeatures(plan, dev.getFeatures());
        const cid = previous?.cid ?? plan.cid;
        const builder = VhostVsock.builder()
          .device(dev)
          .memory(rings.memory)
          .features(bits)
          .queue(RX_QUEUE, rings.queue(RX_QUEUE, state))
          .queue(TX_QUEUE, rings.queue(TX_QUEUE, state));
        if (cid === 'auto') builder.cid('auto');
        else builder.cid(cid);
        return builder.start();
      } catch (err) {
        dev.close(); // the builder leaves a device passed in open on failure
        throw err;
      }
    };
    return GuestRings.create(layout, startDevice, (rings) => {
      const guest = new VirtioVsockGuest(plan, rings);
      guest.#start();
      return guest;
    });
  }

  #start(): void {
    this.#rings.txq.disableCallbacks(); // TX buffers are reclaimed when sending; calls only while waiting for space
    this.#rings.refillRx();
    this.#rings.watchCalls((which) => this.#onCall(which), (e) => failOrRethrow(this, e));
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
   * Accepts connections of `options.type` (default 'stream') to `port`
   * (0..0xfffffffe); `onConnection` receives each as a connected
   * VirtioVsockConnection. Requests of the other type get RST, as the
   * kernel answers them. Throws EADDRINUSE when the port already listens
   * (one listener per port, whatever its type, as in the kernel), and
   * ERR_VHOST_UNSUPPORTED for 'seqpacket' when it was not negotiated.
   */
  listen(port: number, onConnection: (conn: VirtioVsockConnection) => void, options: VirtioVsockListenOptions = {}): this {
    if (this.#closed) throw closedError('VirtioVsockGuest (listen)');
    const p = checkPort(port, 'port');
    checkFunction(onConnection, 'onConnection');
    checkObject(options, 'options');
    const allowHalfOpen = checkBool(options.allowHalfOpen, 'options.allowHalfOpen');
    const type = checkVsockType(options.type, 'options.type');
    this.#checkTypeNegotiated(type);
    if (this.#listeners.has(p)) throw new VhostError(`EADDRINUSE: port ${p} of guest CID ${this.cid} already listens`, { code: 'EADDRINUSE', syscall: 'listen', path: `vsock:${this.cid}:${p}` });
    this.#listeners.set(p, { cb: onConnection, allowHalfOpen, type });
    return this;
  }

  #checkTypeNegotiated(type: VsockType): void {
    if (type === 'seqpacket' && !this.seqpacket) {
      throw invalidArg('options.type', "is 'seqpacket' but VIRTIO_VSOCK_F_SEQPACKET was not negotiated with the device", 'ERR_VHOST_UNSUPPORTED');
    }
  }

  /** Stops accepting on `port` (established connections stay). */
  unlisten(port: number): this {
    this.#listeners.delete(checkPort(port, 'port'));
    return this;
  }

  /**
   * Opens a connection of `options.type` (default 'stream') to `cid`
   * (default 2, the host) : `port` from a free local port (49152 upward).
   * 'connect' when the peer answers; 'error' with ECONNREFUSED when it
   * answers with RST (nobody listens, or a listener of the other type),
   * ETIMEDOUT when `timeout` ms pass without an answer (vhost-vsock drops
   * packets to any CID but the host's, so only a timeout ends those), an
   * AbortError (code ABORT_ERR) when `signal` aborts. A timed-out or aborted
   * connect sends RST if its REQUEST already left and leaves no entry behind.
   * Validation errors throw (ERR_VHOST_UNSUPPORTED for 'seqpacket' when not negotiated).
   */
  connect(options: VirtioVsockConnectOptions, onConnect?: () => void): VirtioVsockConnection {
    if (this.#closed) throw closedError('VirtioVsockGuest (connect)');
    const o = checkGuestConnectOptions(options);
    checkFunction(onConnect, 'onConnect', true);
    this.#checkTypeNegotiated(o.type);
    const localPort = this.#allocPort(o.cid, o.port);
    const conn = new VirtioVsockConnection(this.#link, { localPort, peerCid: o.cid, peerPort: o.port, state: 'connecting', allowHalfOpen: o.allowHalfOpen, type: o.type });
    if (onConnect) conn.once('connect', onConnect);
    if (o.signal?.aborted) {
      const signal = o.signal;
      process.nextTick(() => conn.destroy(abortError(signal))); // nothing was sent: no entry, no RST
      return conn;
    }
    this.#conns.set(keyOf(localPort, o.cid, o.port), conn);
    conn.watchConnect(o.timeout, o.signal);
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

  /** Writes one packet's header into a free TX slot; returns the slot (its payload goes at VSOCK_HDR_SIZE), or -1 when none is free. */
  #packet(conn: VirtioVsockConnection | null, op: number, flags: number, len: number, addr?: Control['addr']): number {
    const pool = this.#rings.txPool;
    const slot = pool.alloc();
    if (slot < 0) return -1;
    const at = slot * pool.slotSize;
    if (conn) {
      conn.lastFwdSent = conn.fwdCnt;
      putVsockHeader(this.#txHdr, at, this.cid, conn.peerCid, conn.localPort, conn.peerPort, len, conn.wireType, op, flags, this.bufAlloc, conn.fwdCnt);
    } else {
      putVsockHeader(this.#txHdr, at, this.cid, addr!.peerCid, addr!.localPort, addr!.peerPort, len, addr!.type, op, flags, 0, 0);
    }
    return slot;
  }

  /** Fills free TX buffers: control packets first, then data within each connection's credit; one publish, one kick at most. */
  #flushTx(): void {
    if (this.#closed || this.#flushing) return;
    this.#flushing = true;
    const done: Array<{ cb: (err?: Error | null) => void; err?: Error }> = [];
    let count = 0;
    const add = (slot: number, len: number) => {
      this.#segs[3 * count] = this.#rings.txPool.offset(slot);
      this.#segs[3 * count + 1] = VSOCK_HDR_SIZE + len;
      this.#segs[3 * count + 2] = SEG_END;
      this.#slots[count] = slot;
      count++;
    };
    let full = false;
    try {
      this.#rings.reclaimTx();
      while (this.#control.length > 0) {
        const c = this.#control[0];
        if (c.conn && c.op !== VSOCK_OP.RST && c.conn.state === 'closed') {
          this.#control.shift();
          continue;
        }
        const slot = this.#packet(c.conn, c.op, c.flags, 0, c.addr);
        if (slot < 0) {
          full = true;
          break;
        }
        this.#control.shift();
        if (c.op === VSOCK_OP.CREDIT_UPDATE) {
          this.#stats.creditUpdatesSent++;
          if (c.conn) c.conn.creditUpdateQueued = false;
        }
        else if (c.op === VSOCK_OP.RST) this.#stats.resetsSent++;
        else if (c.op === VSOCK_OP.REQUEST && c.conn) c.conn.requestSent = true;
        add(slot, 0);
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
            const seqpacket = conn.type === 'seqpacket';
            if (seqpacket && w.offset === 0 && w.chunk.length > conn.peerBufAlloc) {
              // The kernel's rule (virtio_transport_seqpacket_enqueue): the peer could never hold it whole.
              // The write's callback fails the stream (destroy → RST); later messages go nowhere.
              const last = conn.pending[conn.pending.length - 1];
              conn.pending.length = 0;
              done.push({ cb: last.cb ?? ((err) => conn.destroy(err ?? undefined)), err: conn.tooBig(w.chunk.length) });
              break;
            }
            const credit = conn.credit();
            if (credit === 0) {
              this.#stats.creditStalls++;
              if (!conn.creditRequested) {
                // Ask once per stall: the peer's CREDIT_UPDATE reopens the window.
                conn.creditRequested = true;
                const slot = this.#packet(conn, VSOCK_OP.CREDIT_REQUEST, 0, 0);
                if (slot >= 0) add(slot, 0);
              }
              break;
            }
            const len = Math.min(left, credit, this.bufferSize);
            // The last packet of a message carries EOM (never EOR: there is no MSG_EOR to ask for it).
            const slot = this.#packet(conn, VSOCK_OP.RW, seqpacket && len === left ? VSOCK_SEQ.EOM : 0, len);
            if (slot < 0) {
              full = true;
              break;
            }
            conn.creditRequested = false;
            this.#rings.txPool.view(slot).set(w.chunk.subarray(w.offset, w.offset + len), VSOCK_HDR_SIZE);
            w.offset += len;
            conn.sent(len);
            add(slot, len);
          }
          if (full) break;
          if (conn.pending.length === 0) {
            if (conn.finalCb) {
              const slot = this.#packet(conn, VSOCK_OP.SHUTDOWN, VSOCK_SHUTDOWN.SEND, 0);
              if (slot < 0) {
                full = true;
                break;
              }
              add(slot, 0);
              done.push({ cb: conn.finalCb });
              conn.finalCb = null;
            }
            this.#txWanted.delete(conn);
          }
        }
      }
      // Every TX slot has a free descriptor (one descriptor per packet, as many slots as entries): the ring takes all.
      if (count > 0) this.#stats.txPackets += this.#rings.postTx(this.#segs, count, this.#slots);
      if (full) {
        this.#stats.txRingFull++;
        if (this.#rings.txq.enableCallbacks(false)) this.#scheduleFlush();
      }
    } catch (e) {
      this.#flushing = false;
      failOrRethrow(this, e);
      return;
    }
    this.#flushing = false;
    for (const d of done) d.cb(d.err ?? null);
  }

  // ---- RX ------------------------------------------------------------------

  /** A call eventfd woke up (already read). */
  #onCall(which: 'rx' | 'tx'): void {
    if (which === 'rx') this.#drainRx();
    else {
      this.#rings.txq.disableCallbacks();
      this.#flushTx();
    }
  }

  #drainRx(): void {
    const used = this.#rxUsed;
    const { rxq, rxPool } = this.#rings;
    for (;;) {
      if (this.#closed) return;
      const n = rxq.collectInto(used, this.queueSize);
      for (let i = 0; i < n && !this.#closed; i++) {
        const slot = this.#rings.takeRx(used[2 * i]);
        const view = rxPool.view(slot);
        const len = Math.min(used[2 * i + 1], view.length);
        try {
          if (len >= VSOCK_HDR_SIZE) this.#receive(view, slot * rxPool.slotSize, len);
        } catch (e) {
          // A throwing user handler ('data', 'connect', a listener) must not
          // strand the rest of this batch's buffers: rethrow it afterwards.
          if (e instanceof VhostError) throw e;
          process.nextTick(() => {
            throw e;
          });
        } finally {
          rxPool.release(slot);
        }
      }
      if (this.#closed) return;
      this.#rings.refillRx();
      if (n === 0 && !rxq.enableCallbacks(false)) break;
    }
    this.#flushTx();
  }

  /** One received packet: `view` is its RX slot, at `at` in #rxHdr. */
  #receive(view: Uint8Array, at: number, len: number): void {
    this.#stats.rxPackets++;
    const dv = this.#rxHdr;
    const srcCid = getVsockCid(dv, at);
    const dstCid = getVsockCid(dv, at + 8);
    const srcPort = dv.getUint32(at + 16, true);
    const dstPort = dv.getUint32(at + 20, true);
    const payloadLen = Math.min(dv.getUint32(at + 24, true), len - VSOCK_HDR_SIZE);
    const type = dv.getUint16(at + 28, true);
    const op = dv.getUint16(at + 30, true);
    const flags = dv.getUint32(at + 32, true);
    if (dstCid !== this.cid) return;
    const conn = this.#conns.get(keyOf(dstPort, srcCid, srcPort));
    const validType = type === VSOCK_TYPE.STREAM || (type === VSOCK_TYPE.SEQPACKET && this.seqpacket);
    // As virtio_transport_recv_pkt: an unknown type, or one other than the connection's, is refused (never an RST itself).
    if (!validType || (conn && conn.wireType !== type)) {
      if (op !== VSOCK_OP.RST) this.#refuse(dstPort, srcCid, srcPort, type);
      return;
    }
    if (conn) {
      conn.peerBufAlloc = dv.getUint32(at + 36, true);
      conn.peerFwdCnt = dv.getUint32(at + 40, true);
      if (conn.pending.length > 0 || conn.finalCb) this.#txWanted.add(conn);
    }
    switch (op) {
      case VSOCK_OP.REQUEST: {
        const l = this.#listeners.get(dstPort);
        if (conn || !l || (l.type === 'seqpacket' ? VSOCK_TYPE.SEQPACKET : VSOCK_TYPE.STREAM) !== type) {
          this.#refuse(dstPort, srcCid, srcPort, type);
          return;
        }
        const c = new VirtioVsockConnection(this.#link, { localPort: dstPort, peerCid: srcCid, peerPort: srcPort, state: 'connected', allowHalfOpen: l.allowHalfOpen, type: l.type });
        c.peerBufAlloc = dv.getUint32(at + 36, true);
        c.peerFwdCnt = dv.getUint32(at + 40, true);
        this.#conns.set(keyOf(dstPort, srcCid, srcPort), c);
        this.#control.push({ conn: c, op: VSOCK_OP.RESPONSE, flags: 0 });
        l.cb(c);
        return;
      }
      case VSOCK_OP.RESPONSE:
        if (conn?.state === 'connecting') conn.onResponse();
        else this.#refuse(dstPort, srcCid, srcPort, type);
        return;
      case VSOCK_OP.RW:
        if (!conn) {
          this.#refuse(dstPort, srcCid, srcPort, type);
          return;
        }
        conn.onData(Buffer.from(view.subarray(VSOCK_HDR_SIZE, VSOCK_HDR_SIZE + payloadLen)), flags);
        return;
      case VSOCK_OP.CREDIT_REQUEST:
        if (conn) this.#control.push({ conn, op: VSOCK_OP.CREDIT_UPDATE, flags: 0 });
        return;
      case VSOCK_OP.CREDIT_UPDATE:
        return; // the credit fields were taken above
      case VSOCK_OP.SHUTDOWN:
        if (conn) conn.onShutdown(flags);
        else this.#refuse(dstPort, srcCid, srcPort, type);
        return;
      case VSOCK_OP.RST:
        conn?.onReset(); // never answer a reset
        return;
      default:
        if (!conn) this.#refuse(dstPort, srcCid, srcPort, type);
    }
  }

  /** RST to a packet no connection takes, with the packet's type: the peer drops an RST of another type. */
  #refuse(localPort: number, peerCid: number, peerPort: number, type: number): void {
    this.#control.push({ conn: null, op: VSOCK_OP.RST, flags: 0, addr: { localPort, peerCid, peerPort, type } });
  }

  // ---- lifecycle -------------------------------------------------------------

  /** The call watchers keep the process alive (the default). */
  ref(): void {
    this.#rings.ref();
  }

  /** The guest no longer keeps the process alive on its own. */
  unref(): void {
    this.#rings.unref();
  }

  /** True between pause() and resume(). */
  get paused(): boolean {
    return this.#rings.paused;
  }

  /**
   * Stops the device (VHOST_VSOCK_SET_RUNNING 0, then GET_VRING_BASE per
   * ring) and returns each ring's saved base. Connections stay open but
   * stalled: writes queue, the host's data waits in its sockets (the kernel
   * keeps host sockets of a stopped device connected). Calling it again
   * returns the same state. Throws ERR_VHOST_CLOSED after close().
   */
  pause(): DeviceState {
    if (this.#closed) throw closedError('VirtioVsockGuest (pause)');
    return this.#rings.device.stop();
  }

  /**
   * Brings a paused guest back on a new vhost-vsock device with the same CID
   * over the same memory, rings and eventfds, each ring resuming at its base
   * from `state` (default: the one pause() returned). Closing the old device
   * makes the kernel reset every host socket connected to this CID
   * (ECONNRESET), so every connection here is destroyed with ECONNRESET too;
   * listeners stay. If the new device cannot be built the guest closes and
   * the error is thrown.
   */
  resume(state?: DeviceState): void {
    if (this.#closed) throw closedError('VirtioVsockGuest (resume)');
    const saved = this.#rings.releaseDevice(state); // releases the CID: vhost_vsock_dev_release resets the host sockets connected to it
    this.#control.length = 0; // packets for the connections that are gone
    for (const conn of [...this.#conns.values()]) conn.onTransportReset();
    try {
      this.#rings.restartDevice(saved); // same CID and features; kicks: the RX buffers posted, whatever is in the TX ring
    } catch (err) {
      this.close();
      throw err;
    }
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
    const error = this.#rings.close();
    this.#control.length = 0;
    this.#txWanted.clear();
    this.emit('close');
    if (error !== undefined) throw error;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** One DataView over all of a pool's slots. */
function poolDataView(pool: BufferPool): DataView {
  const first = pool.view(0);
  return new DataView(first.buffer, first.byteOffset, pool.slotSize * pool.count);
}

function keyOf(localPort: number, peerCid: number, peerPort: number): string {
  return `${localPort}:${peerCid}:${peerPort}`;
}
