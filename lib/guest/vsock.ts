// VirtioVsockGuest: this process plays a virtio-vsock guest over vhost-vsock,
// so host AF_VSOCK sockets reach it at its CID. It owns guest memory (both
// rings and buffer pools in one memfd region), the kick/call eventfds and the
// device. Packets (virtio_vsock_hdr + payload, one descriptor each):
//   queue 0 (RX): the device fills buffers we post → #drainRx → connections
//   queue 1 (TX): connections → #flushTx → the device
// Each connection (vsock-connection.ts) owns its protocol state and decides
// its next packet; this file only moves packets between the rings and the
// connections: lookup by address, listeners, RST to packets nobody takes.
//
// Flow control is virtio-vsock's credit scheme, both ways (kept per connection):
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
import type { DeviceState } from '../vhost/plan';
import { abortError, checkBool, checkFunction, checkInt, checkObject, checkSignal, plain, readOptions } from '../core/check';
import { checkVsockType } from '../vsock/options';
import { invalidArg, VhostError } from '../core/errors';
import { features } from '../core/features';
import { SEG_END } from '../core/native';
import { GuestRings, RX_QUEUE, TX_QUEUE, UserspaceGuest } from './userspace-guest';
import { VhostVsock } from '../vhost/vsock';
import type { VsockType } from '../vsock/socket';
import type { RunningVhostVsock } from '../vhost/vsock';
import type { BufferPool } from '../virtio/virtqueue';
import { validateQueueSize } from '../virtio/vring';
import { connectionKey, CREDIT_STALL, type VsockLink, VirtioVsockConnection } from './vsock-connection';
import { VSOCK_HDR_SIZE, VSOCK_OP, VSOCK_TYPE, VsockPacketView } from '../virtio/vsock-packet';

export { VirtioVsockConnection, type VsockGuestAddress } from './vsock-connection';

/** The host's CID, the default peer of connect(). */
const HOST_CID = 2;
const PORT_MAX = 0xffff_fffe; // 0xffffffff is VMADDR_PORT_ANY
const EPHEMERAL_FIRST = 49152;
const INT32_MAX = 0x7fff_ffff;

/** Options of VirtioVsockGuest.create(). */
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

/** An RST owed to a packet no connection takes: its addressing, seen from here, and its type. */
interface Refusal {
  localPort: number;
  peerCid: number;
  peerPort: number;
  type: number;
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
 * (RST to each peer, sent before the device stops), stops listening and
 * releases the device (the kernel then resets host sockets still connected
 * to this CID). Events: 'error' (ring or device failure), 'close'.
 * SEQPACKET connections work when the device offers the feature (see
 * `seqpacket`). pause() (VHOST_VSOCK_SET_RUNNING 0, then GET_VRING_BASE per
 * ring) leaves connections open but stalled: writes queue, the host's data
 * waits in its sockets (the kernel keeps host sockets of a stopped device
 * connected). resume() brings the guest back on a new device with the same
 * CID over the same rings; closing the old device makes the kernel reset
 * every host socket of this CID, so connections do not survive it (both ends
 * see ECONNRESET); listeners do.
 */
export class VirtioVsockGuest extends UserspaceGuest<RunningVhostVsock> {
  /** The CID the kernel accepted for this guest. */
  readonly cid: number;
  readonly queueSize: number;
  /** Payload bytes per ring buffer. */
  readonly bufferSize: number;
  /** Receive buffer advertised per connection. */
  readonly bufAlloc: number;
  /** VIRTIO_VSOCK_F_SEQPACKET was negotiated: type 'seqpacket' works. */
  readonly seqpacket: boolean;
  // TX packets being assembled (SEG_* triples, their txPool slots); used RX heads.
  readonly #segs: Uint32Array;
  readonly #slots: Uint32Array;
  readonly #rxUsed: Uint32Array;
  // Packets are read and written through these, slot s at s * slotSize: no object per packet.
  readonly #rxPkt: VsockPacketView;
  readonly #txPkt: VsockPacketView;
  readonly #conns = new Map<string, VirtioVsockConnection>();
  readonly #listeners = new Map<number, { cb: (conn: VirtioVsockConnection) => void; allowHalfOpen: boolean; type: VsockType }>();
  readonly #refusals: Refusal[] = [];
  /** Connections that may have a packet to send (nextPacket()). */
  readonly #txWanted = new Set<VirtioVsockConnection>();
  // Write callbacks the connections completed during a TX pass, run once it is posted.
  #deferredCbs: ((err?: Error | null) => void)[] = [];
  #deferredErrs: (Error | null)[] = [];
  readonly #stats: VirtioVsockGuestStats = { rxPackets: 0, txPackets: 0, creditUpdatesSent: 0, creditStalls: 0, txRingFull: 0, resetsSent: 0 };
  readonly #link: VsockLink;
  #nextPort = EPHEMERAL_FIRST;
  #flushScheduled = false;
  #flushing = false;
  #receiving = false;

  private constructor(plan: Plan, rings: GuestRings<RunningVhostVsock>) {
    super('VirtioVsockGuest', rings);
    this.cid = rings.device.cid;
    this.queueSize = plan.queueSize;
    this.bufferSize = plan.bufferSize;
    this.bufAlloc = plan.bufAlloc;
    this.seqpacket = (rings.device.features & features.vsock.SEQPACKET) !== 0n;
    const n = this.queueSize;
    this.#segs = new Uint32Array(3 * n);
    this.#slots = new Uint32Array(n);
    this.#rxUsed = new Uint32Array(2 * n);
    this.#rxPkt = new VsockPacketView(poolBytes(rings.rxPool));
    this.#txPkt = new VsockPacketView(poolBytes(rings.txPool));
    this.#link = {
      localCid: this.cid,
      bufAlloc: this.bufAlloc,
      wantTx: (conn) => {
        if (this.closed) return;
        this.#txWanted.add(conn);
        if (!this.#receiving) this.#scheduleFlush(); // else #drainRx flushes when the batch is done
      },
      forget: (conn) => {
        if (this.#conns.get(conn.key) === conn) this.#conns.delete(conn.key);
      },
      defer: (cb, err) => {
        this.#deferredCbs.push(cb);
        this.#deferredErrs.push(err);
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
      guest.start();
      return guest;
    });
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
    this.checkOpen('listen');
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
    this.checkOpen('connect');
    const o = checkGuestConnectOptions(options);
    checkFunction(onConnect, 'onConnect', true);
    this.#checkTypeNegotiated(o.type);
    const localPort = this.#allocPort(o.cid, o.port);
    const conn = new VirtioVsockConnection(this.#link, { localPort, peerCid: o.cid, peerPort: o.port, allowHalfOpen: o.allowHalfOpen, type: o.type });
    if (onConnect) conn.once('connect', onConnect);
    if (o.signal?.aborted) {
      const signal = o.signal;
      process.nextTick(() => conn.destroy(abortError(signal))); // nothing was sent: no entry, no RST
      return conn;
    }
    this.#conns.set(conn.key, conn);
    conn.startConnect(o.timeout, o.signal);
    return conn;
  }

  #allocPort(cid: number, port: number): number {
    for (let i = 0; i <= PORT_MAX - EPHEMERAL_FIRST; i++) {
      const p = this.#nextPort;
      this.#nextPort = p >= PORT_MAX ? EPHEMERAL_FIRST : p + 1;
      if (!this.#listeners.has(p) && !this.#conns.has(connectionKey(p, cid, port))) return p;
    }
    throw new VhostError('EADDRNOTAVAIL: no free local port', { code: 'EADDRNOTAVAIL', syscall: 'connect' });
  }

  // ---- TX ------------------------------------------------------------------

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.closed) return;
    this.#flushScheduled = true;
    process.nextTick(() => {
      this.#flushScheduled = false;
      this.#flushTx();
    });
  }

  /**
   * Fills free TX buffers: RSTs to unknown packets first, then what each
   * connection sends next (nextPacket()), their control packets before any
   * data; one publish, one kick at most. Write callbacks run once it is posted.
   */
  #flushTx(): void {
    if (this.closed || this.#flushing) return;
    this.#flushing = true;
    const pool = this.rings.txPool;
    const size = pool.slotSize;
    const pkt = this.#txPkt;
    let count = 0;
    let spare = -1; // a slot taken that no packet was written into yet
    let full = false;
    try {
      this.rings.reclaimTx();
      while (this.#refusals.length > 0) {
        const slot = pool.alloc();
        if (slot < 0) {
          full = true;
          break;
        }
        const r = this.#refusals.shift()!;
        pkt.at(slot * size, size).writeHeader(this.cid, r.peerCid, r.localPort, r.peerPort, 0, r.type, VSOCK_OP.RST, 0, 0, 0);
        this.#stats.resetsSent++;
        count = this.#addTx(count, slot, VSOCK_HDR_SIZE);
      }
      // Two passes: every connection's control packets (RESPONSE, CREDIT_UPDATE...), then data.
      for (let pass = 0; pass < 2 && !full; pass++) {
        const dataToo = pass === 1;
        for (const conn of this.#txWanted) {
          for (;;) {
            if (spare < 0) spare = pool.alloc();
            if (spare < 0) {
              full = true;
              break;
            }
            const n = conn.nextPacket(pkt.at(spare * size, size), dataToo);
            if (n > 0) {
              const op = pkt.op;
              if (op === VSOCK_OP.CREDIT_UPDATE) this.#stats.creditUpdatesSent++;
              else if (op === VSOCK_OP.RST) this.#stats.resetsSent++;
              count = this.#addTx(count, spare, n);
              spare = -1;
              continue;
            }
            if (n === CREDIT_STALL) this.#stats.creditStalls++; // stays wanted: its next packet waits for credit
            else if (dataToo) this.#txWanted.delete(conn);
            break;
          }
          if (full) break;
        }
      }
      if (spare >= 0) pool.release(spare);
      // Every TX slot has a free descriptor (one descriptor per packet, as many slots as entries): the ring takes all.
      if (count > 0) this.#stats.txPackets += this.rings.postTx(this.#segs, count, this.#slots);
      if (full) {
        this.#stats.txRingFull++;
        if (this.rings.txq.enableCallbacks(false)) this.#scheduleFlush();
      }
    } catch (e) {
      this.#flushing = false;
      this.#deferredCbs = [];
      this.#deferredErrs = [];
      this.fail(e);
      return;
    }
    this.#flushing = false;
    if (this.#deferredCbs.length > 0) {
      const cbs = this.#deferredCbs;
      const errs = this.#deferredErrs;
      this.#deferredCbs = [];
      this.#deferredErrs = [];
      for (let i = 0; i < cbs.length; i++) cbs[i](errs[i]);
    }
  }

  /** Adds packet `count` (txPool `slot`, `len` bytes) to the batch being assembled; returns the new count. */
  #addTx(count: number, slot: number, len: number): number {
    this.#segs[3 * count] = this.rings.txPool.offset(slot);
    this.#segs[3 * count + 1] = len;
    this.#segs[3 * count + 2] = SEG_END;
    this.#slots[count] = slot;
    return count + 1;
  }

  // ---- RX ------------------------------------------------------------------

  /** A call eventfd woke up (already read). */
  protected onCall(which: 'rx' | 'tx'): void {
    if (which === 'rx') this.#drainRx();
    else {
      this.rings.txq.disableCallbacks();
      this.#flushTx();
    }
  }

  #drainRx(): void {
    this.#receiving = true;
    try {
      this.#receiveAll();
    } finally {
      this.#receiving = false;
    }
    this.#flushTx();
  }

  /** Takes every used RX buffer to its connection and posts it again. */
  #receiveAll(): void {
    const used = this.#rxUsed;
    const { rxq, rxPool } = this.rings;
    const size = rxPool.slotSize;
    for (;;) {
      if (this.closed) return;
      const n = rxq.collectInto(used, this.queueSize);
      for (let i = 0; i < n && !this.closed; i++) {
        const slot = this.rings.takeRx(used[2 * i]);
        const len = Math.min(used[2 * i + 1], size);
        try {
          if (len >= VSOCK_HDR_SIZE) this.#receive(this.#rxPkt.at(slot * size, len));
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
      if (this.closed) return;
      this.rings.refillRx();
      if (n === 0 && !rxq.enableCallbacks(false)) return;
    }
  }

  /**
   * One received packet: to its connection, or a new one for a listener's
   * REQUEST; anything else nobody takes gets an RST (never an RST itself, nor
   * a credit packet), as virtio_transport_recv_pkt answers.
   */
  #receive(pkt: VsockPacketView): void {
    this.#stats.rxPackets++;
    if (pkt.dstCid !== this.cid) return;
    const srcCid = pkt.srcCid;
    const srcPort = pkt.srcPort;
    const dstPort = pkt.dstPort;
    const type = pkt.type;
    const op = pkt.op;
    const conn = this.#conns.get(connectionKey(dstPort, srcCid, srcPort));
    const validType = type === VSOCK_TYPE.STREAM || (type === VSOCK_TYPE.SEQPACKET && this.seqpacket);
    // An unknown type, or one other than the connection's, is refused.
    if (!validType || (conn && conn.wireType !== type)) {
      if (op !== VSOCK_OP.RST) this.#refuse(dstPort, srcCid, srcPort, type);
      return;
    }
    if (conn) {
      if (!conn.onPacket(pkt)) this.#refuse(dstPort, srcCid, srcPort, type);
      return;
    }
    if (op === VSOCK_OP.REQUEST) {
      const l = this.#listeners.get(dstPort);
      if (!l || (l.type === 'seqpacket' ? VSOCK_TYPE.SEQPACKET : VSOCK_TYPE.STREAM) !== type) {
        this.#refuse(dstPort, srcCid, srcPort, type);
        return;
      }
      const c = new VirtioVsockConnection(this.#link, { localPort: dstPort, peerCid: srcCid, peerPort: srcPort, allowHalfOpen: l.allowHalfOpen, type: l.type });
      c.acceptRequest(pkt);
      this.#conns.set(c.key, c);
      l.cb(c);
      return;
    }
    if (op !== VSOCK_OP.RST && op !== VSOCK_OP.CREDIT_REQUEST && op !== VSOCK_OP.CREDIT_UPDATE) this.#refuse(dstPort, srcCid, srcPort, type);
  }

  /** RST to a packet no connection takes, with the packet's type: the peer drops an RST of another type. */
  #refuse(localPort: number, peerCid: number, peerPort: number, type: number): void {
    this.#refusals.push({ localPort, peerCid, peerPort, type }); // sent by #drainRx's flush
  }

  // ---- lifecycle -------------------------------------------------------------

  // ---- lifecycle (UserspaceGuest) ---------------------------------------------

  /** resume(): the old device took every connection down with it. */
  protected override onDeviceReleased(): void {
    this.#refusals.length = 0; // answers to the old device's packets
    // Every connection ends without a packet: the kernel reset the host sockets already.
    for (const conn of new Set([...this.#conns.values(), ...this.#txWanted])) conn.onTransportReset();
    this.#txWanted.clear();
  }

  /** close(): every connection destroyed, its RST sent before the device stops; listening stops. */
  protected override beforeClose(): void {
    for (const conn of [...this.#conns.values()]) conn.destroy();
    this.#listeners.clear();
    try {
      this.#flushTx();
    } catch {
      // best effort: the device close resets host sockets anyway
    }
  }

  protected override afterClose(): void {
    this.#refusals.length = 0;
    this.#txWanted.clear();
    this.#deferredCbs = [];
    this.#deferredErrs = [];
  }
}

/** One view over all of a pool's slots. */
function poolBytes(pool: BufferPool): Uint8Array {
  const first = pool.view(0);
  return new Uint8Array(first.buffer, first.byteOffset, pool.slotSize * pool.count);
}
