// One connection of a VirtioVsockGuest (lib/guest/vsock.ts): the
// Duplex that user code sees, its credit counters and its receive queue. The
// guest owns the rings and sends packets for it through GuestLink; this file
// holds the per-connection state machine and stream semantics only.
import { Duplex } from 'node:stream';
import { abortError } from '../core/check';
import { VhostError } from '../core/errors';
import type { VsockType } from '../vsock/socket';
import { VSOCK_OP, VSOCK_SEQ, VSOCK_SHUTDOWN, VSOCK_TYPE } from '../virtio/vsock-packet';

/** A vsock address as the userspace guest sees it: context id and port. */
export interface VsockGuestAddress {
  cid: number;
  port: number;
}

function connError(code: string, message: string, local: VsockGuestAddress, peer: VsockGuestAddress): VhostError {
  return new VhostError(`${code}: ${message} (guest ${local.cid}:${local.port} ↔ ${peer.cid}:${peer.port})`, { code, syscall: 'virtio-vsock', path: `vsock:${peer.cid}:${peer.port}` });
}

/** A packet waiting for a TX buffer: a header without payload (payload packets are built from the connection). */
export interface Control {
  conn: VirtioVsockConnection | null;
  op: number;
  flags: number;
  /** For packets to an unknown connection (RST): the addressing and the type of the packet answered. */
  addr?: PacketAddr;
}

export interface PacketAddr {
  localPort: number;
  peerCid: number;
  peerPort: number;
  type: number;
}

interface PendingWrite {
  chunk: Buffer;
  offset: number;
  cb: ((err?: Error | null) => void) | null;
}

/** @internal The guest's side of a connection, used by VirtioVsockConnection. */
export interface GuestLink {
  readonly cid: number;
  readonly bufAlloc: number;
  queueControl(c: Control): void;
  wantTx(conn: VirtioVsockConnection): void;
  forget(conn: VirtioVsockConnection): void;
}

export type ConnState = 'connecting' | 'connected' | 'closed';

/** @internal How a connection is made: by connect() or for an incoming request. */
export interface ConnInit {
  localPort: number;
  peerCid: number;
  peerPort: number;
  state: ConnState;
  allowHalfOpen: boolean;
  type: VsockType;
}

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
  /** @internal A CREDIT_UPDATE waits in the control queue: one is enough, it carries fwdCnt as of sending. */ creditUpdateQueued = false;
  /** @internal */ readonly pending: PendingWrite[] = [];
  /** @internal */ finalCb: ((err?: Error | null) => void) | null = null;
  /** @internal */ creditRequested = false;
  /** @internal The REQUEST is in the TX ring: an abandoned connect owes the peer an RST. */ requestSent = false;
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

  /** @internal Created by VirtioVsockGuest.connect() or for an incoming request. */
  constructor(guest: GuestLink, a: ConnInit) {
    super({ allowHalfOpen: a.allowHalfOpen, readableObjectMode: a.type === 'seqpacket' });
    this.#guest = guest;
    this.type = a.type;
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

  /** True until the peer answers the connect request (RESPONSE) or it fails. */
  get connecting(): boolean {
    return this.state === 'connecting';
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

  /** @internal Wire value of the type. */
  get wireType(): number {
    return this.type === 'seqpacket' ? VSOCK_TYPE.SEQPACKET : VSOCK_TYPE.STREAM;
  }

  /** @internal Arms the connect timeout and the abort signal (connect() only). */
  watchConnect(timeout: number | undefined, signal: AbortSignal | undefined): void {
    if (timeout !== undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = null;
        if (this.state === 'connecting') this.destroy(connError('ETIMEDOUT', `no answer to the connection request within ${timeout} ms`, this.localAddress, this.remoteAddress));
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

  /** @internal Bytes the peer lets us send now. */
  credit(): number {
    const inFlight = (this.txCnt - this.peerFwdCnt) >>> 0;
    return Math.max(0, this.peerBufAlloc - inFlight);
  }

  /** @internal The peer accepted our REQUEST. */
  onResponse(): void {
    this.state = 'connected';
    this.#clearTimer();
    this.emit('connect');
    this.#guest.wantTx(this);
  }

  /** @internal Payload from the peer; `flags` matter for seqpacket (EOM ends a message). */
  onData(payload: Buffer, flags: number): void {
    if (this.#peerSendDone || this.state !== 'connected') return; // data after SHUTDOWN(SEND) is a protocol violation: drop
    if (this.type === 'seqpacket') {
      if (payload.length > 0) this.#partial.push(payload);
      if ((flags & VSOCK_SEQ.EOM) === 0) return;
      const parts = this.#partial;
      this.#partial = [];
      if (parts.length === 0) return; // an empty message: no chunk, as lib/vsock/socket.ts never sends one
      this.#rxQueue.push(parts.length === 1 ? parts[0] : Buffer.concat(parts));
    } else {
      if (payload.length === 0) return;
      this.#rxQueue.push(payload);
    }
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

  /** @internal The device was replaced: the host kernel reset its side already, so no RST goes out. */
  onTransportReset(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.#guest.forget(this);
    this.destroy(connError('ECONNRESET', "connection reset: the guest's vhost-vsock device was replaced", this.localAddress, this.remoteAddress));
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

  /** @internal The error of a seqpacket message the peer can never take whole. */
  tooBig(len: number): VhostError {
    return connError('EMSGSIZE', `message of ${len} bytes exceeds the peer's receive buffer (buf_alloc ${this.peerBufAlloc})`, this.localAddress, this.remoteAddress);
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
      if (this.state === 'connected' && !this.#peerSendDone && !this.creditUpdateQueued && unheard >= this.#guest.bufAlloc / 4) {
        this.creditUpdateQueued = true;
        this.#guest.queueControl({ conn: this, op: VSOCK_OP.CREDIT_UPDATE, flags: 0 });
      }
    }
    if (this.#rxQueue.length === 0 && this.#peerSendDone && !this.#eofPushed) {
      this.#eofPushed = true;
      this.push(null);
    }
  }

  #clearTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

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
    if (this.state === 'closed') {
      cb(connError('EPIPE', 'the connection is closed', this.localAddress, this.remoteAddress));
      return;
    }
    chunks.forEach(({ chunk }, i) => {
      if (chunk.length > 0 || i === chunks.length - 1) this.pending.push({ chunk, offset: 0, cb: i === chunks.length - 1 ? cb : null });
    });
    this.#guest.wantTx(this);
  }

  /** Node stream hook. @internal */
  override _final(cb: (err?: Error | null) => void): void {
    if (this.state === 'closed') {
      cb();
      return;
    }
    this.finalCb = cb;
    this.#guest.wantTx(this);
  }

  /** Node stream hook. @internal */
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#clearTimer();
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#signal = undefined;
    if (this.state !== 'closed') {
      // A connect abandoned before its REQUEST left needs no RST: the peer never heard of it.
      const owesReset = this.state === 'connected' || this.requestSent;
      this.state = 'closed';
      if (owesReset) this.#guest.queueControl({ conn: this, op: VSOCK_OP.RST, flags: 0 });
      this.#guest.forget(this);
    }
    this.pending.length = 0;
    this.finalCb = null;
    this.#rxQueue = [];
    this.#partial = [];
    cb(err);
  }
}
