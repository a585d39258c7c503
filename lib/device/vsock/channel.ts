// The device side of one guest's virtio-vsock: packets the guest sent (its TX
// queue) come in through receive(), packets for the guest (its RX queue) go out
// through nextPacket(). The guest is untrusted: every header is checked here,
// once, before anything acts on it; what fails a check is dropped or answered
// with RST and counted, never more. Each connection is the same protocol
// engine the userspace guest uses (lib/guest/vsock-connection.ts), turned
// around: the connection's "local" end is the host (CID 2) or, for routed
// connections, the other guest; it decides its own packets and credit, and
// this file only carries them, as the guest's carrier does on its side.
import { VhostError } from '../../core/errors';
import { CREDIT_STALL, type VirtioVsockConnection, type VsockLink } from '../../guest/vsock-connection';
import { VSOCK_HDR_SIZE, VSOCK_OP, VSOCK_TYPE, VsockPacketView } from '../../virtio/vsock-packet';

/** The largest payload a packet may claim: Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE (64 KiB). */
export const VSOCK_MAX_PAYLOAD = 64 * 1024;
/** The host's CID as guests address it. */
export const HOST_CID = 2;

/** Counters of one guest's channel: what the guest sent and what the device did about it. */
export interface VsockChannelStats {
  /** Packets received from the guest (well-formed or not). */
  rxPackets: number;
  /** Packets handed to the guest. */
  txPackets: number;
  /** Packets shorter than a header, or whose len runs past the bytes the guest gave, or past 64 KiB: dropped (the connection they name is reset). */
  malformed: number;
  /** Packets whose src_cid is not this guest's CID: dropped. */
  spoofed: number;
  /** Data beyond the credit this side granted: the connection is reset. */
  creditViolations: number;
  /** Connection requests refused because the guest holds maxConnections already. */
  connectionLimit: number;
  /** Connection requests to another guest that the allow-list does not permit. */
  routeDenied: number;
  /** RST packets sent to the guest. */
  resetsSent: number;
  /** RSTs not sent because maxRefusals were already waiting (a guest flooding garbage). */
  refusalsDropped: number;
}

/** What a channel asks of the back-end that owns it. @internal */
export interface VsockRouter {
  /** The guest asked for a connection nobody holds yet: accept, refuse (channel.refuse) or start routing it. */
  incoming(channel: VsockGuestChannel, req: IncomingRequest, pkt: VsockPacketView): void;
  readonly bufAlloc: number;
  readonly maxConnections: number;
  readonly maxRefusals: number;
  readonly seqpacket: boolean;
}

/** A guest's REQUEST: where to, from which guest port, of which wire type. */
export interface IncomingRequest {
  dstCid: number;
  dstPort: number;
  srcPort: number;
  type: number;
}

/** What the carrier (the guest's rings, or a test's packet pipe) gives the channel. */
export interface VsockChannelCarrier {
  /** The channel has packets for the guest: call nextPacket() while it returns > 0 and RX buffers last. */
  wake(): void;
}

interface Refusal {
  localCid: number;
  localPort: number;
  guestPort: number;
  type: number;
}

const key = (localCid: number, localPort: number, guestPort: number): string => `${localCid}:${localPort}:${guestPort}`;

/**
 * One guest attached to a vsock device back-end (VsockDeviceBackend.attach()).
 * @internal The back-end and its transports use it; users see connections.
 */
export class VsockGuestChannel {
  readonly cid: number;
  readonly #router: VsockRouter;
  readonly #carrier: VsockChannelCarrier;
  /** Connections by (local CID, local port, guest port). */
  readonly #conns = new Map<string, VirtioVsockConnection>();
  readonly #keys = new Map<VirtioVsockConnection, string>();
  /** Requests being routed (to a unix listener or another guest): no connection yet. */
  readonly #pending = new Map<string, () => void>();
  readonly #links = new Map<number, VsockLink>();
  readonly #txWanted = new Set<VirtioVsockConnection>();
  readonly #refusals: Refusal[] = [];
  #deferred: { cb: (err?: Error | null) => void; err: Error | null }[] = [];
  #deferScheduled = false;
  #detached = false;
  readonly stats: VsockChannelStats = {
    rxPackets: 0, txPackets: 0, malformed: 0, spoofed: 0, creditViolations: 0, connectionLimit: 0, routeDenied: 0, resetsSent: 0, refusalsDropped: 0,
  };

  /** @internal Use VsockDeviceBackend.attach(). */
  constructor(cid: number, router: VsockRouter, carrier: VsockChannelCarrier) {
    this.cid = cid;
    this.#router = router;
    this.#carrier = carrier;
  }

  /** Connections open (or being routed) with this guest. */
  get connections(): number {
    return this.#conns.size + this.#pending.size;
  }

  /** False once detach() ran. */
  get attached(): boolean {
    return !this.#detached;
  }

  /** True when nextPacket() has something to send. */
  get hasPackets(): boolean {
    return this.#refusals.length > 0 || this.#txWanted.size > 0;
  }

  /** The link of connections whose local end is `localCid` (the host, or another guest). @internal */
  link(localCid: number): VsockLink {
    let l = this.#links.get(localCid);
    if (!l) {
      l = {
        localCid,
        bufAlloc: this.#router.bufAlloc,
        wantTx: (conn) => {
          if (this.#detached) return;
          this.#txWanted.add(conn);
          this.#carrier.wake();
        },
        forget: (conn) => {
          const k = this.#keys.get(conn);
          if (k !== undefined && this.#conns.get(k) === conn) this.#conns.delete(k);
          this.#keys.delete(conn);
        },
        defer: (cb, err) => this.#defer(cb, err),
      };
      this.#links.set(localCid, l);
    }
    return l;
  }

  /** Registers a connection made for this guest. @internal */
  add(localCid: number, localPort: number, guestPort: number, conn: VirtioVsockConnection): void {
    const k = key(localCid, localPort, guestPort);
    this.#conns.set(k, conn);
    this.#keys.set(conn, k);
  }

  /** True when (local CID, local port, guest port) is taken (open or being routed). @internal */
  has(localCid: number, localPort: number, guestPort: number): boolean {
    const k = key(localCid, localPort, guestPort);
    return this.#conns.has(k) || this.#pending.has(k);
  }

  /** Marks a request as being routed; `cancel` runs if the guest resets it or detaches meanwhile. @internal */
  hold(req: IncomingRequest, cancel: () => void): void {
    this.#pending.set(key(req.dstCid, req.dstPort, req.srcPort), cancel);
  }

  /** The routed request is decided: no longer pending (true when it still was). @internal */
  release(req: IncomingRequest): boolean {
    return this.#pending.delete(key(req.dstCid, req.dstPort, req.srcPort));
  }

  /** Answers a guest's packet with RST (bounded: a flood of garbage cannot grow the queue). @internal */
  refuse(localCid: number, localPort: number, guestPort: number, type: number): void {
    if (this.#detached) return;
    if (this.#refusals.length >= this.#router.maxRefusals) {
      this.stats.refusalsDropped++;
      return;
    }
    this.#refusals.push({ localCid, localPort, guestPort, type });
    this.#carrier.wake();
  }

  // ---- from the guest ----------------------------------------------------------

  /**
   * One packet from the guest's TX queue: `bytes` are the chain's readable
   * bytes (header + payload). Checked before use: length, len field, src_cid,
   * type, then the connection's state and credit. Never throws for what the
   * guest wrote.
   */
  receive(bytes: Uint8Array): void {
    if (this.#detached) return;
    this.stats.rxPackets++;
    if (bytes.length < VSOCK_HDR_SIZE) {
      this.stats.malformed++;
      return;
    }
    const pkt = new VsockPacketView(bytes).at(0, bytes.length);
    // Read every field once: the values checked are the values used.
    const srcCid = pkt.srcCid;
    const dstCid = pkt.dstCid;
    const srcPort = pkt.srcPort;
    const dstPort = pkt.dstPort;
    const len = pkt.len;
    const type = pkt.type;
    const op = pkt.op;
    if (srcCid !== this.cid) {
      this.stats.spoofed++; // as vhost-vsock drops it: answering would address the spoofed CID
      return;
    }
    const k = key(dstCid, dstPort, srcPort);
    const conn = this.#conns.get(k);
    if (len > bytes.length - VSOCK_HDR_SIZE || len > VSOCK_MAX_PAYLOAD) {
      this.stats.malformed++;
      if (conn) this.#resetConnection(conn, `the guest sent a malformed packet (len ${len}, ${bytes.length - VSOCK_HDR_SIZE} payload bytes given)`, type);
      return;
    }
    const validType = type === VSOCK_TYPE.STREAM || (type === VSOCK_TYPE.SEQPACKET && this.#router.seqpacket);
    if (!validType || (conn && conn.wireType !== type)) {
      if (op !== VSOCK_OP.RST) this.refuse(dstCid, dstPort, srcPort, type);
      return;
    }
    if (conn) {
      if (op === VSOCK_OP.RW && conn.receiveQueued + len > this.#router.bufAlloc) {
        this.stats.creditViolations++;
        this.#resetConnection(conn, `the guest sent past the credit granted (${this.#router.bufAlloc} bytes)`, type);
        return;
      }
      if (!conn.onPacket(pkt)) this.refuse(dstCid, dstPort, srcPort, type);
      return;
    }
    const pending = this.#pending.get(k);
    if (pending) {
      if (op === VSOCK_OP.RST) {
        this.#pending.delete(k);
        pending(); // the guest gave up on its request
      }
      return; // anything else waits for the routing to decide
    }
    if (op === VSOCK_OP.REQUEST) {
      if (this.connections >= this.#router.maxConnections) {
        this.stats.connectionLimit++;
        this.refuse(dstCid, dstPort, srcPort, type);
        return;
      }
      this.#router.incoming(this, { dstCid, dstPort, srcPort, type }, pkt);
      return;
    }
    if (op !== VSOCK_OP.RST && op !== VSOCK_OP.CREDIT_REQUEST && op !== VSOCK_OP.CREDIT_UPDATE) this.refuse(dstCid, dstPort, srcPort, type);
  }

  /** RST to the guest and ECONNRESET to the host side of `conn`. */
  #resetConnection(conn: VirtioVsockConnection, reason: string, type: number): void {
    const k = this.#keys.get(conn)!;
    const [localCid, localPort, guestPort] = k.split(':').map(Number);
    conn.onTransportReset(reason); // host side: ECONNRESET with the reason; sends nothing
    this.#txWanted.delete(conn);
    this.refuse(localCid, localPort, guestPort, type);
  }

  // ---- to the guest ------------------------------------------------------------

  /**
   * Writes the next packet for the guest into `buf` (one RX buffer, at least
   * a header long) and returns its length, or 0 when there is nothing to send
   * now. Order: RSTs owed to refused packets, then every connection's control
   * packets, then data (connections take turns).
   */
  nextPacket(buf: Uint8Array): number {
    if (this.#detached || buf.length < VSOCK_HDR_SIZE) return 0;
    const pkt = new VsockPacketView(buf).at(0, buf.length);
    const r = this.#refusals.shift();
    if (r) {
      pkt.writeHeader(r.localCid, this.cid, r.localPort, r.guestPort, 0, r.type, VSOCK_OP.RST, 0, 0, 0);
      this.stats.resetsSent++;
      this.stats.txPackets++;
      return VSOCK_HDR_SIZE;
    }
    for (const dataToo of [false, true]) {
      for (const conn of this.#txWanted) {
        const n = conn.nextPacket(pkt, dataToo);
        if (n > 0) {
          if (dataToo) {
            // Take turns: the connection goes to the back of the queue.
            this.#txWanted.delete(conn);
            this.#txWanted.add(conn);
          }
          if (pkt.op === VSOCK_OP.RST) this.stats.resetsSent++;
          this.stats.txPackets++;
          this.#scheduleDeferred();
          return n;
        }
        if (n !== CREDIT_STALL && dataToo) this.#txWanted.delete(conn);
      }
    }
    this.#scheduleDeferred();
    return 0;
  }

  #defer(cb: (err?: Error | null) => void, err: Error | null): void {
    this.#deferred.push({ cb, err });
  }

  /** Write callbacks completed by nextPacket() run after it returned, never inside it. */
  #scheduleDeferred(): void {
    if (this.#deferred.length === 0 || this.#deferScheduled) return;
    this.#deferScheduled = true;
    process.nextTick(() => {
      this.#deferScheduled = false;
      for (const d of this.#deferred.splice(0)) d.cb(d.err);
    });
  }

  // ---- lifecycle ---------------------------------------------------------------

  /**
   * The guest's transport is gone or was reset (front-end disconnect, device
   * reset, the guest's QEMU killed): every connection ends with ECONNRESET
   * and `reason` on the host side; nothing goes to the guest (its driver
   * drops its own connections on a transport reset). Routed connections'
   * other legs are reset by their pipes.
   */
  reset(reason: string, quiet = false): void {
    this.#refusals.length = 0;
    for (const cancel of [...this.#pending.values()]) cancel();
    this.#pending.clear();
    // quiet: the back-end's own close(): connections are destroyed without an error, as a server's close does.
    for (const conn of [...this.#conns.values(), ...this.#txWanted]) {
      if (quiet) conn.destroy();
      else conn.onTransportReset(reason);
    }
    this.#conns.clear();
    this.#keys.clear();
    this.#txWanted.clear();
  }

  /** reset() and then nothing more: receive() and nextPacket() do nothing. @internal Use VsockDeviceBackend.detach(). */
  detach(reason: string, quiet = false): void {
    if (this.#detached) return;
    this.#detached = true; // first: the RSTs destroy() owes go nowhere
    this.reset(reason, quiet);
  }

  /** The error of an operation on a detached channel. */
  detachedError(): VhostError {
    return new VhostError(`ENODEV: guest CID ${this.cid} is detached from the vsock back-end`, { code: 'ENODEV', path: `vsock:${this.cid}` });
  }
}
