// An in-memory virtio-vsock guest for the device back-end's unit tests: the
// guest side is the library's own guest protocol engine (VirtioVsockConnection
// over a VsockLink), as VirtioVsockGuest uses it over real rings; the rings
// are replaced by a packet pipe to a VsockGuestChannel. Each direction copies
// packets, as a ring would; packet size is bounded like a guest's RX buffers.
import { CREDIT_STALL, VirtioVsockConnection, connectionKey, type VsockLink } from '../../lib/guest/vsock-connection';
import { VSOCK_HDR_SIZE, VSOCK_OP, VSOCK_TYPE, VsockPacketView } from '../../lib/virtio/vsock-packet';
import type { VsockDeviceBackend, VsockGuestChannel } from '../../lib/device/vsock/backend';
import type { VsockType } from '../../lib/vsock/options';

export class PipeGuest {
  readonly cid: number;
  readonly channel: VsockGuestChannel;
  readonly conns = new Map<string, VirtioVsockConnection>();
  readonly listeners = new Map<number, { type: VsockType; cb: (c: VirtioVsockConnection) => void }>();
  readonly received: { op: number; srcCid: number; srcPort: number; dstPort: number }[] = [];
  readonly #txWanted = new Set<VirtioVsockConnection>();
  readonly #refusals: { localPort: number; peerCid: number; peerPort: number; type: number }[] = [];
  readonly #link: VsockLink;
  readonly #txBuf: Buffer;
  readonly #rxBuf: Buffer;
  #nextPort = 49152;
  #scheduled = false;
  /** Guest-to-device packets are dropped while false (a stalled guest). */
  sending = true;
  /** Device-to-guest packets are not pulled while false (a guest with no RX buffers). */
  receiving = true;

  constructor(backend: VsockDeviceBackend, cid: number, opts: { bufAlloc?: number; packetSize?: number } = {}) {
    this.cid = cid;
    const size = VSOCK_HDR_SIZE + (opts.packetSize ?? 4096);
    this.#txBuf = Buffer.alloc(size);
    this.#rxBuf = Buffer.alloc(size);
    this.#link = {
      localCid: cid,
      bufAlloc: opts.bufAlloc ?? 65536,
      wantTx: (c) => {
        this.#txWanted.add(c);
        this.#schedule();
      },
      forget: (c) => {
        if (this.conns.get(c.key) === c) this.conns.delete(c.key);
      },
      defer: (cb, err) => process.nextTick(cb, err),
    };
    this.channel = backend.attach(cid, { wake: () => this.#schedule() });
  }

  listen(port: number, cb: (c: VirtioVsockConnection) => void, type: VsockType = 'stream'): void {
    this.listeners.set(port, { type, cb });
  }

  connect(cid: number, port: number, type: VsockType = 'stream'): VirtioVsockConnection {
    const c = new VirtioVsockConnection(this.#link, { localPort: this.#nextPort++, peerCid: cid, peerPort: port, allowHalfOpen: false, type });
    this.conns.set(c.key, c);
    c.startConnect(undefined, undefined);
    return c;
  }

  /** Sends raw bytes to the device as one packet (a hostile guest). */
  sendRaw(bytes: Uint8Array): void {
    this.channel.receive(bytes);
  }

  kick(): void {
    this.#schedule();
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#pump();
    });
  }

  #pump(): void {
    // device → guest
    if (this.receiving) {
      for (let i = 0; i < 256; i++) {
        const n = this.channel.nextPacket(this.#rxBuf);
        if (n === 0) break;
        this.#receive(new VsockPacketView(Buffer.from(this.#rxBuf.subarray(0, n))).at(0, n));
      }
    }
    // guest → device
    if (this.sending) {
      const pkt = new VsockPacketView(this.#txBuf).at(0, this.#txBuf.length);
      let budget = 256;
      while (this.#refusals.length > 0 && budget-- > 0) {
        const r = this.#refusals.shift()!;
        pkt.writeHeader(this.cid, r.peerCid, r.localPort, r.peerPort, 0, r.type, VSOCK_OP.RST, 0, 0, 0);
        this.channel.receive(Buffer.from(this.#txBuf.subarray(0, VSOCK_HDR_SIZE)));
      }
      for (const dataToo of [false, true]) {
        for (const c of this.#txWanted) {
          while (budget-- > 0) {
            const n = c.nextPacket(pkt, dataToo);
            if (n > 0) {
              this.channel.receive(Buffer.from(this.#txBuf.subarray(0, n)));
              continue;
            }
            if (n !== CREDIT_STALL && dataToo) this.#txWanted.delete(c);
            break;
          }
        }
      }
      if (budget <= 0) this.#schedule();
    }
    if (this.channel.hasPackets && this.receiving) this.#schedule();
  }

  #receive(pkt: VsockPacketView): void {
    this.received.push({ op: pkt.op, srcCid: pkt.srcCid, srcPort: pkt.srcPort, dstPort: pkt.dstPort });
    if (pkt.dstCid !== this.cid) return;
    const conn = this.conns.get(connectionKey(pkt.dstPort, pkt.srcCid, pkt.srcPort));
    if (conn) {
      if (conn.wireType !== pkt.type || !conn.onPacket(pkt)) this.#refuse(pkt);
      return;
    }
    if (pkt.op === VSOCK_OP.REQUEST) {
      const l = this.listeners.get(pkt.dstPort);
      const type = pkt.type === VSOCK_TYPE.SEQPACKET ? 'seqpacket' : 'stream';
      if (!l || l.type !== type) {
        this.#refuse(pkt);
        return;
      }
      const c = new VirtioVsockConnection(this.#link, { localPort: pkt.dstPort, peerCid: pkt.srcCid, peerPort: pkt.srcPort, allowHalfOpen: false, type });
      c.acceptRequest(pkt);
      this.conns.set(c.key, c);
      l.cb(c);
      return;
    }
    if (pkt.op !== VSOCK_OP.RST && pkt.op !== VSOCK_OP.CREDIT_UPDATE && pkt.op !== VSOCK_OP.CREDIT_REQUEST) this.#refuse(pkt);
  }

  #refuse(pkt: VsockPacketView): void {
    this.#refusals.push({ localPort: pkt.dstPort, peerCid: pkt.srcCid, peerPort: pkt.srcPort, type: pkt.type });
    this.#schedule();
  }
}
