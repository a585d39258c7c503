// One connection of a VirtioVsockGuest (lib/guest/vsock.ts): the Duplex that
// user code sees and the virtio-vsock state machine behind it. The connection
// owns its protocol state (connecting / connected / closed, the credit both
// ways, what it owes the peer: REQUEST, RESPONSE, CREDIT_UPDATE, RST) and
// decides its own next packet: the carrier (VsockLink: the guest's rings) hands
// it the packets addressed to it (onPacket) and asks it for the next one to
// send into a free buffer (nextPacket). Nothing here knows which side of the
// ring it is on, as in Firecracker's vsock csm/connection.rs.
import { Duplex } from 'node:stream';
import { abortError } from '../core/check';
import { VhostError } from '../core/errors';
import type { VsockType } from '../vsock/socket';
import { VSOCK_HDR_SIZE, VSOCK_OP, VSOCK_SEQ, VSOCK_SHUTDOWN, VSOCK_TYPE, type VsockPacketView } from '../virtio/vsock-packet';

/** A vsock address as the userspace guest sees it: context id and port. */
export interface VsockGuestAddress {
  cid: number;
  port: number;
}

function connError(code: string, message: string, local: VsockGuestAddress, peer: VsockGuestAddress): VhostError {
  return new VhostError(`${code}: ${message} (guest ${local.cid}:${local.port} ↔ ${peer.cid}:${peer.port})`, { code, syscall: 'virtio-vsock', path: `vsock:${peer.cid}:${peer.port}` });
}

interface PendingWrite {
  chunk: Buffer;
  offset: number;
  cb: ((err?: Error | null) => void) | null;
}

/**
 * @internal What a connection needs of whoever carries its packets (the
 * guest's rings today; a device's queues work the same way): the connection
 * decides what it sends and when, the carrier only moves packets.
 */
export interface VsockLink {
  /** This end's CID: the source of every packet the connection sends. */
  readonly localCid: number;
  /** The receive buffer advertised per connection (buf_alloc). */
  readonly bufAlloc: number;
  /** The connection has a packet to send: call its nextPacket() soon. */
  wantTx(conn: VirtioVsockConnection): void;
  /** The connection is closed: take it out of the lookup (a last RST may still come out of nextPacket()). */
  forget(conn: VirtioVsockConnection): void;
  /** Runs cb(err) once the packets in hand are posted: a write callback must not run in the middle of a ring pass. */
  defer(cb: (err?: Error | null) => void, err: Error | null): void;
}

/** The key a carrier finds a connection by: its local port and the peer's address. */
export function connectionKey(localPort: number, peerCid: number, peerPort: number): string {
  return `${localPort}:${peerCid}:${peerPort}`;
}

/** @internal How a connection is made: by connect() or for an incoming request (then see acceptRequest()). */
export interface ConnInit {
  localPort: number;
  peerCid: number;
  peerPort: number;
  allowHalfOpen: boolean;
  type: VsockType;
}

/** nextPacket(): data waits for the peer's credit (nothing written). */
export const CREDIT_STALL = -1;

// Control packets a connection owes its peer (bits of #owed), sent before its data.
const OWE_REQUEST = 1;
const OWE_RESPONSE = 2;
const OWE_CREDIT_UPDATE = 4;
const OWE_RST = 8;

/**
 * One connection of a VirtioVsockGuest, a Duplex like net.Socket:
 * 'connect', backpressure (write() returns false above highWaterMark; data
 * only leaves within the peer's credit), end() sends SHUTDOWN(SEND) once
 * queued data is out, destroy() sends RST, 'end' when the peer shuts down its
 * sending side, 'close', 'error' with code ECONNREFUSED (the peer answered
 * the request with RST), ECONNRESET (RST on an established connection, or
 * the guest's device was replaced by resume()), ETIMEDOUT (connect timeout),
 * EMSGSIZE (a seqpacket message larger than the peer's buf_alloc), or an
 * AbortError (code ABORT_ERR) from the connect signal.
 *
 * For type 'seqpacket' each write() is one message and each chunk read is
 * one message (object mode on the readable side), as with lib/vsock/socket.ts sockets.
 */
export class VirtioVsockConnection extends Duplex {
  /** 'stream' or 'seqpacket'. */
  readonly type: VsockType;
  /** @internal The carrier's lookup key (connectionKey()). */
  readonly key: string;
  /** @internal The type's wire value (VSOCK_TYPE). */
  readonly wireType: number;
  readonly #link: VsockLink;
  readonly #localPort: number;
  readonly #peerCid: number;
  readonly #peerPort: number;
  #state: 'connecting' | 'connected' | 'closed' = 'connecting';
  /** Control packets owed to the peer (OWE_* bits). */
  #owed = 0;
  /** The REQUEST went out: an abandoned connect owes the peer an RST. */
  #requestSent = false;
  /** A CREDIT_REQUEST went out since data last did: one per stall. */
  #creditRequested = false;
  /** Credit the peer grants (its buf_alloc) and what it has consumed of it (its fwd_cnt). */
  #peerBufAlloc = 0;
  #peerFwdCnt = 0;
  /** Payload bytes sent (u32 wrap). */
  #txCnt = 0;
  /** Bytes handed to the Readable (u32 wrap), and that count as the peer last heard it. */
  #fwdCnt = 0;
  #lastFwdSent = 0;
  #pending: PendingWrite[] = [];
  #finalCb: ((err?: Error | null) => void) | null = null;
  /** Received payload waiting for the reader: bytes (stream) or whole messages (seqpacket). */
  #rxQueue: Buffer[] = [];
  /** Seqpacket: packets of the message whose EOM has not arrived yet. */
  #partial: Buffer[] = [];
  #peerSendDone = false;
  #eofPushed = false;
  #wantRead = false;
  #bytesRead = 0;
  #bytesWritten = 0;
  #timer: NodeJS.Timeout | null = null;
  #signal: AbortSignal | undefined;

  /** @internal Created by VirtioVsockGuest.connect() (then startConnect()) or for an incoming request (then acceptRequest()). */
  constructor(link: VsockLink, a: ConnInit) {
    super({ allowHalfOpen: a.allowHalfOpen, readableObjectMode: a.type === 'seqpacket' });
    this.#link = link;
    this.type = a.type;
    this.wireType = a.type === 'seqpacket' ? VSOCK_TYPE.SEQPACKET : VSOCK_TYPE.STREAM;
    this.#localPort = a.localPort;
    this.#peerCid = a.peerCid;
    this.#peerPort = a.peerPort;
    this.key = connectionKey(a.localPort, a.peerCid, a.peerPort);
  }

  /** The peer as { cid, port }. */
  get remoteAddress(): VsockGuestAddress {
    return { cid: this.#peerCid, port: this.#peerPort };
  }

  /** This end as { cid: the guest's CID, port }. */
  get localAddress(): VsockGuestAddress {
    return { cid: this.#link.localCid, port: this.#localPort };
  }

  /** True until the peer answers the connect request (RESPONSE) or it fails. */
  get connecting(): boolean {
    return this.#state === 'connecting';
  }

  /** Payload bytes received, as net.Socket counts them. */
  get bytesRead(): number {
    return this.#bytesRead;
  }

  /** Payload bytes sent to the peer, as net.Socket counts them. */
  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  /** Bytes received and not yet taken by the Readable (bounded by the credit we grant), incomplete messages included. */
  get receiveQueued(): number {
    let n = 0;
    for (const b of this.#rxQueue) n += b.length;
    for (const b of this.#partial) n += b.length;
    return n;
  }

  // ---- opening -----------------------------------------------------------------

  /** @internal Sends the REQUEST; arms the connect timeout and the abort signal. */
  startConnect(timeout: number | undefined, signal: AbortSignal | undefined): void {
    this.#owe(OWE_REQUEST);
    if (timeout !== undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = null;
        if (this.#state === 'connecting') this.destroy(connError('ETIMEDOUT', `no answer to the connection request within ${timeout} ms`, this.localAddress, this.remoteAddress));
      }, timeout);
    }
    if (signal) {
      this.#signal = signal;
      signal.addEventListener('abort', this.#onAbort, { once: true });
    }
  }

  #onAbort = (): void => {
    if (this.#signal) this.destroy(abortError(this.#signal));
  };

  /** @internal Takes the peer's REQUEST (`pkt`): connected, with the peer's credit, owing the RESPONSE. */
  acceptRequest(pkt: VsockPacketView): void {
    this.#state = 'connected';
    this.#takeCredit(pkt);
    this.#owe(OWE_RESPONSE);
  }

  // ---- receiving ---------------------------------------------------------------

  /**
   * @internal A packet from the peer addressed to this connection (type
   * already matched). Returns false when it does not fit the connection's
   * state (a second REQUEST, a RESPONSE when not connecting): the carrier
   * answers it with RST as it answers packets nobody takes.
   */
  onPacket(pkt: VsockPacketView): boolean {
    this.#takeCredit(pkt); // every header carries the peer's credit
    if (this.#pending.length > 0 || this.#finalCb) this.#link.wantTx(this); // it may have reopened
    switch (pkt.op) {
      case VSOCK_OP.REQUEST:
        return false;
      case VSOCK_OP.RESPONSE:
        if (this.#state !== 'connecting') return false;
        this.#onResponse();
        return true;
      case VSOCK_OP.RW:
        this.#onData(pkt);
        return true;
      case VSOCK_OP.CREDIT_REQUEST:
        this.#owe(OWE_CREDIT_UPDATE);
        return true;
      case VSOCK_OP.SHUTDOWN:
        this.#onShutdown(pkt.flags);
        return true;
      case VSOCK_OP.RST:
        this.#onReset(); // never answer a reset
        return true;
      default:
        return true; // CREDIT_UPDATE: its credit was taken above; unknown ops are ignored
    }
  }

  #takeCredit(pkt: VsockPacketView): void {
    this.#peerBufAlloc = pkt.bufAlloc;
    this.#peerFwdCnt = pkt.fwdCnt;
  }

  #onResponse(): void {
    this.#state = 'connected';
    this.#clearTimer();
    this.emit('connect');
    this.#link.wantTx(this);
  }

  /** Payload from the peer; the flags matter for seqpacket (EOM ends a message). */
  #onData(pkt: VsockPacketView): void {
    if (this.#peerSendDone || this.#state !== 'connected') return; // data after SHUTDOWN(SEND) is a protocol violation: drop
    const n = pkt.payloadLength;
    if (this.type === 'seqpacket') {
      if (n > 0) this.#partial.push(pkt.copyPayload());
      if ((pkt.flags & VSOCK_SEQ.EOM) === 0) return;
      const parts = this.#partial;
      this.#partial = [];
      if (parts.length === 0) return; // an empty message: no chunk, as lib/vsock/socket.ts never sends one
      this.#rxQueue.push(parts.length === 1 ? parts[0] : Buffer.concat(parts));
    } else {
      if (n === 0) return;
      this.#rxQueue.push(pkt.copyPayload());
    }
    if (this.#wantRead) this.#pushQueued();
  }

  #onShutdown(flags: number): void {
    if (flags & VSOCK_SHUTDOWN.SEND) {
      this.#peerSendDone = true;
      this.#pushQueued();
    }
  }

  #onReset(): void {
    const was = this.#state;
    this.#close();
    const local = this.localAddress;
    if (was === 'connecting') {
      this.destroy(connError('ECONNREFUSED', 'connection refused: the peer answered with RST', local, this.remoteAddress));
    } else if (this.#peerSendDone && this.#pending.length === 0) {
      // The peer closed after shutting down its side: a normal end.
      for (const cb of this.#takeCallbacks()) cb(null);
      this.#pushQueued();
      if (this.writableFinished || !this.writable) this.destroy();
    } else {
      this.destroy(connError('ECONNRESET', 'connection reset by the peer', local, this.remoteAddress));
    }
  }

  /**
   * @internal The transport went away (the guest's device was replaced, or a
   * device's guest disconnected): the peer's side is gone already, so nothing
   * (no RST) goes out. `reason` ends the ECONNRESET message.
   */
  onTransportReset(reason = "the guest's vhost-vsock device was replaced"): void {
    this.#owed = 0;
    if (this.#state === 'closed') return;
    this.#close();
    this.destroy(connError('ECONNRESET', `connection reset: ${reason}`, this.localAddress, this.remoteAddress));
  }

  /** Closed: owes nothing from now on (but an RST set after this), out of the carrier's lookup. */
  #close(): void {
    this.#state = 'closed';
    this.#owed = 0;
    this.#link.forget(this);
  }

  #takeCallbacks(): ((err?: Error | null) => void)[] {
    const cbs: ((err?: Error | null) => void)[] = [];
    for (const p of this.#pending.splice(0)) if (p.cb) cbs.push(p.cb);
    if (this.#finalCb) cbs.push(this.#finalCb);
    this.#finalCb = null;
    return cbs;
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
      this.#fwdCnt = (this.#fwdCnt + freed) >>> 0;
      const unheard = (this.#fwdCnt - this.#lastFwdSent) >>> 0;
      // One CREDIT_UPDATE owed at a time is enough: it carries fwd_cnt as of sending.
      if (this.#state === 'connected' && !this.#peerSendDone && unheard >= this.#link.bufAlloc / 4) this.#owe(OWE_CREDIT_UPDATE);
    }
    if (this.#rxQueue.length === 0 && this.#peerSendDone && !this.#eofPushed) {
      this.#eofPushed = true;
      this.push(null);
    }
  }

  // ---- sending -----------------------------------------------------------------

  #owe(bit: number): void {
    this.#owed |= bit;
    this.#link.wantTx(this);
  }

  /** Bytes the peer lets us send now. */
  #credit(): number {
    const inFlight = (this.#txCnt - this.#peerFwdCnt) >>> 0;
    return Math.max(0, this.#peerBufAlloc - inFlight);
  }

  /**
   * @internal Writes the next packet this connection sends into `pkt` (a
   * free buffer, at() already set): owed control packets first (REQUEST,
   * RESPONSE, CREDIT_UPDATE; only an owed RST once closed), then, when
   * `dataToo`, data within the peer's credit (CREDIT_REQUEST once per stall)
   * and SHUTDOWN(SEND) after the last of it once end() was called. Returns the
   * packet's length (header + payload), 0 when there is nothing to send now,
   * or CREDIT_STALL when data waits for the peer's credit.
   */
  nextPacket(pkt: VsockPacketView, dataToo = true): number {
    const owed = this.#owed;
    if (this.#state === 'closed') {
      this.#owed = 0;
      return owed & OWE_RST ? this.#control(pkt, VSOCK_OP.RST, 0) : 0;
    }
    if (owed & OWE_REQUEST) {
      this.#owed &= ~OWE_REQUEST;
      this.#requestSent = true;
      return this.#control(pkt, VSOCK_OP.REQUEST, 0);
    }
    if (owed & OWE_RESPONSE) {
      this.#owed &= ~OWE_RESPONSE;
      return this.#control(pkt, VSOCK_OP.RESPONSE, 0);
    }
    if (owed & OWE_CREDIT_UPDATE) {
      this.#owed &= ~OWE_CREDIT_UPDATE;
      return this.#control(pkt, VSOCK_OP.CREDIT_UPDATE, 0);
    }
    if (!dataToo || this.#state !== 'connected') return 0;
    return this.#nextData(pkt);
  }

  #nextData(pkt: VsockPacketView): number {
    const pending = this.#pending;
    while (pending.length > 0) {
      const w = pending[0];
      const left = w.chunk.length - w.offset;
      if (left === 0) {
        pending.shift();
        if (w.cb) this.#link.defer(w.cb, null);
        continue;
      }
      const seqpacket = this.type === 'seqpacket';
      if (seqpacket && w.offset === 0 && w.chunk.length > this.#peerBufAlloc) {
        // The kernel's rule (virtio_transport_seqpacket_enqueue): the peer could never hold it whole.
        // The write's callback fails the stream (destroy → RST); later messages go nowhere.
        const last = pending[pending.length - 1];
        pending.length = 0;
        this.#link.defer(last.cb ?? ((err) => this.destroy(err ?? undefined)), this.#tooBig(w.chunk.length));
        break;
      }
      const credit = this.#credit();
      if (credit === 0) {
        if (this.#creditRequested) return CREDIT_STALL;
        // Ask once per stall: the peer's CREDIT_UPDATE reopens the window.
        this.#creditRequested = true;
        return this.#control(pkt, VSOCK_OP.CREDIT_REQUEST, 0);
      }
      const len = Math.min(left, credit, pkt.payloadRoom);
      // The last packet of a message carries EOM (never EOR: there is no MSG_EOR to ask for it).
      this.#header(pkt, len, VSOCK_OP.RW, seqpacket && len === left ? VSOCK_SEQ.EOM : 0);
      pkt.writePayload(w.chunk, w.offset, w.offset + len);
      w.offset += len;
      this.#txCnt = (this.#txCnt + len) >>> 0;
      this.#bytesWritten += len;
      this.#creditRequested = false;
      return VSOCK_HDR_SIZE + len;
    }
    if (this.#finalCb) {
      this.#link.defer(this.#finalCb, null);
      this.#finalCb = null;
      return this.#control(pkt, VSOCK_OP.SHUTDOWN, VSOCK_SHUTDOWN.SEND);
    }
    return 0;
  }

  #control(pkt: VsockPacketView, op: number, flags: number): number {
    this.#header(pkt, 0, op, flags);
    return VSOCK_HDR_SIZE;
  }

  /** Every packet tells the peer our credit: buf_alloc and fwd_cnt as of now. */
  #header(pkt: VsockPacketView, len: number, op: number, flags: number): void {
    this.#lastFwdSent = this.#fwdCnt;
    pkt.writeHeader(this.#link.localCid, this.#peerCid, this.#localPort, this.#peerPort, len, this.wireType, op, flags, this.#link.bufAlloc, this.#fwdCnt);
  }

  /** The error of a seqpacket message the peer can never take whole. */
  #tooBig(len: number): VhostError {
    return connError('EMSGSIZE', `message of ${len} bytes exceeds the peer's receive buffer (buf_alloc ${this.#peerBufAlloc})`, this.localAddress, this.remoteAddress);
  }

  #clearTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  // ---- Duplex --------------------------------------------------------------------

  /** Node stream hook. @internal */
  override _read(): void {
    this.#wantRead = true;
    this.#pushQueued();
  }

  /** Node stream hook. @internal */
  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    this._writev([{ chunk }], cb);
  }

  /** Node stream hook. Stream: the chunks are one byte run. Seqpacket: each chunk is its own message. @internal */
  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    if (this.#state === 'closed') {
      cb(connError('EPIPE', 'the connection is closed', this.localAddress, this.remoteAddress));
      return;
    }
    chunks.forEach(({ chunk }, i) => {
      if (chunk.length > 0 || i === chunks.length - 1) this.#pending.push({ chunk, offset: 0, cb: i === chunks.length - 1 ? cb : null });
    });
    this.#link.wantTx(this);
  }

  /** Node stream hook. @internal */
  override _final(cb: (err?: Error | null) => void): void {
    if (this.#state === 'closed') {
      cb();
      return;
    }
    this.#finalCb = cb;
    this.#link.wantTx(this);
  }

  /** Node stream hook. @internal */
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#clearTimer();
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#signal = undefined;
    if (this.#state !== 'closed') {
      // A connect abandoned before its REQUEST left needs no RST: the peer never heard of it.
      const owesReset = this.#state === 'connected' || this.#requestSent;
      this.#close();
      if (owesReset) this.#owe(OWE_RST);
    }
    this.#pending.length = 0;
    this.#finalCb = null;
    this.#rxQueue = [];
    this.#partial = [];
    cb(err);
  }
}
