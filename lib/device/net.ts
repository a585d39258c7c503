// VhostUserNet: a virtio-net NIC this process serves to a real guest over
// vhost-user (QEMU `-netdev vhost-user`). The guest's own virtio-net driver
// posts RX buffers (ring 0) and TX frames (ring 1); this device:
//   guest TX ring → 'frame' (or the responder answers it)
//   send(frame)   → guest RX ring
// with the 12-byte virtio_net_hdr (VERSION_1) in front of every buffer. The
// API mirrors VirtioNetGuest (lib/guest/net.ts), seen from the other side.
//
// Backpressure toward the guest: send() delivers at once when the guest has
// an RX buffer posted; otherwise the frame waits in a bounded queue
// (queueLimit frames) and send() returns false; once the guest posts buffers
// the queue is delivered in order and 'drain' is emitted. A frame arriving
// with the queue full is dropped and counted (stats.txDropped), like a NIC's
// full ring. Frames from the guest are delivered as they come; a guest that
// sends faster than 'frame' listeners return simply waits on its TX ring.
//
// Offered features: VERSION_1, EVENT_IDX, INDIRECT_DESC. MRG_RXBUF is not
// offered: Linux then posts RX buffers that each hold a whole frame (MTU
// 1500: 1518 bytes + header), so one frame is one chain and num_buffers is
// always 1. Checksum and segmentation offloads are not offered either: the
// guest computes checksums and sends MTU-sized frames. The MAC and MTU the
// guest sees are QEMU's own (-device virtio-net-pci,mac=...,host_mtu=...).
import { EventEmitter } from 'node:events';
import { checkInt, checkObject, describe, readOptions } from '../core/check';
import { closedError, invalidArg, VhostError } from '../core/errors';
import { features as F } from '../core/features';
import { formatMac, parseMac } from '../netdev/tap';
import type { DeviceChain } from '../virtio/device-queue';
import type { VhostUserDevice } from '../vhost/user/backend-device';
import type { VhostUserRing } from '../vhost/user/backend-ring';
import { VhostUserBackend, type VhostUserBackendOptions } from '../vhost/user/backend';
import { buildArpRequest, buildIcmpEcho, ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_ICMP, NetResponder, parseIpv4 } from '../guest/responder';

/** Ring indices of virtio-net (one queue pair). */
export const VHOST_USER_NET_RX = 0;
export const VHOST_USER_NET_TX = 1;
/** Header length with VERSION_1 (or MRG_RXBUF); 10 for a legacy driver without either. */
const HDR_V1 = 12;
const HDR_LEGACY = 10;
const ETH_HLEN = 14;
const VLAN_HLEN = 4;

/** Virtio features VhostUserNet offers. */
export const VHOST_USER_NET_FEATURES = F.ring.VERSION_1 | F.ring.RING_EVENT_IDX | F.ring.RING_INDIRECT_DESC;

/** Options of VhostUserNet (and VhostUserNet.listen(), which adds the back-end's). */
export interface VhostUserNetOptions {
  /** Largest IP packet the guest's link carries (68..65535); frames up to mtu + 18 bytes. Default 1500. */
  mtu?: number;
  /** Frames held while the guest has no RX buffer (0..65536); more are dropped. Default 256. */
  queueLimit?: number;
  /** This side's MAC (the responder's and ping()'s). Default: a random locally administered one. */
  mac?: string | Uint8Array;
  /** Answer ARP and ICMP echo for this IPv4 address (and UDP echo on udpEchoPort, default 7); answered frames are not emitted. */
  responder?: { ipv4: string; udpEchoPort?: number | null };
}

/** Counters of a VhostUserNet (tx: toward the guest, rx: from the guest, as for VirtioNetGuest). */
export interface VhostUserNetStats {
  txFrames: number;
  txBytes: number;
  /** Frames that waited in the queue for RX buffers. */
  txQueued: number;
  /** Frames dropped: the queue was full (queueLimit). */
  txDropped: number;
  /** Frames dropped because the guest's RX buffer was too small for them. */
  txTooBig: number;
  rxFrames: number;
  rxBytes: number;
  /** Frames the responder answered (not emitted). */
  rxAnswered: number;
  /** Frames nobody listened to. */
  rxUnclaimed: number;
  /** Chains from the guest too short to hold a virtio-net header (completed, not delivered). */
  rxMalformed: number;
}

const OPTION_KEYS = new Set(['mtu', 'queueLimit', 'mac', 'responder']);

function randomMac(): Uint8Array {
  const mac = new Uint8Array(6);
  for (let i = 0; i < 6; i++) mac[i] = Math.floor(Math.random() * 256);
  mac[0] = (mac[0] & 0xfe) | 0x02;
  return mac;
}

/** A frame watcher ping() installs: true when it consumed the frame. */
type FrameHook = (frame: Buffer) => boolean;

/**
 * A virtio-net device served over vhost-user. Emits 'frame' (Buffer, from the
 * guest), 'drain' (queued frames delivered), 'ready' (both rings running) and
 * 'stopped' (a ring stopped).
 */
export class VhostUserNet extends EventEmitter implements VhostUserDevice {
  readonly name = 'vhost-user-net';
  readonly features = VHOST_USER_NET_FEATURES;
  readonly queues = 2;
  readonly mtu: number;
  readonly maxFrame: number;
  readonly queueLimit: number;
  /** This side's MAC ('02:...'). */
  readonly mac: string;
  readonly responder: NetResponder | null;
  readonly stats: VhostUserNetStats = { txFrames: 0, txBytes: 0, txQueued: 0, txDropped: 0, txTooBig: 0, rxFrames: 0, rxBytes: 0, rxAnswered: 0, rxUnclaimed: 0, rxMalformed: 0 };
  #rx: VhostUserRing | null = null;
  #tx: VhostUserRing | null = null;
  #hdrLen = HDR_V1;
  #queue: Uint8Array[] = [];
  #full = false;
  #closed = false;
  #backend: VhostUserBackend | null = null;
  readonly #hooks = new Set<FrameHook>();

  constructor(options: VhostUserNetOptions = {}) {
    super();
    checkObject(options, 'options');
    for (const k of Object.keys(options)) if (!OPTION_KEYS.has(k)) throw invalidArg(`options.${k}`, 'is not a VhostUserNet option');
    const o = readOptions(options, OPTION_KEYS) as VhostUserNetOptions;
    this.mtu = checkInt(o.mtu ?? 1500, 'options.mtu', 68, 65535, describe);
    this.maxFrame = this.mtu + ETH_HLEN + VLAN_HLEN;
    this.queueLimit = checkInt(o.queueLimit ?? 256, 'options.queueLimit', 0, 65536, describe);
    const mac = o.mac === undefined ? randomMac() : parseMac(o.mac, 'options.mac');
    this.mac = formatMac(mac);
    if (o.responder !== undefined) {
      checkObject(o.responder, 'options.responder', 'an object { ipv4, udpEchoPort? }');
      this.responder = new NetResponder({ mac, ipv4: o.responder.ipv4, udpEchoPort: o.responder.udpEchoPort });
    } else this.responder = null;
  }

  /**
   * Serves a new VhostUserNet at `path` (see VhostUserBackend.listen for the
   * socket rules); close() closes the back-end too.
   */
  static listen(path: string, options: VhostUserNetOptions & VhostUserBackendOptions = {}): VhostUserNet {
    checkObject(options, 'options');
    const { mode, allowReplace, ...netOptions } = options;
    const net = new VhostUserNet(netOptions);
    net.#backend = VhostUserBackend.listen(path, net, { mode, allowReplace });
    return net;
  }

  /** The back-end listen() made (null for a device handed to VhostUserBackend.listen by the caller). */
  get backend(): VhostUserBackend | null {
    return this.#backend;
  }

  /** True while both rings run (the guest driver is up). */
  get ready(): boolean {
    return this.#rx !== null && this.#tx !== null;
  }

  /** Frames waiting for the guest's RX buffers. */
  get queued(): number {
    return this.#queue.length;
  }

  /** True after close(). */
  get closed(): boolean {
    return this.#closed;
  }

  // ---- toward the guest --------------------------------------------------------

  /**
   * Sends one Ethernet frame (14..maxFrame bytes, no FCS) to the guest.
   * True when it went onto the guest's RX ring now; false when it waits in
   * the queue (or was dropped: the queue was full): wait for 'drain'.
   */
  send(frame: Uint8Array): boolean {
    this.#checkFrame(frame, 'frame');
    return this.#send(frame);
  }

  /** Sends frames in order; returns how many went onto the RX ring now (the rest queue or drop as send() says). */
  sendBatch(frames: readonly Uint8Array[]): number {
    if (!Array.isArray(frames)) throw invalidArg('frames', 'must be an array of Uint8Array');
    frames.forEach((f, i) => this.#checkFrame(f, `frames[${i}]`));
    let now = 0;
    for (const f of frames) if (this.#send(f, false)) now++;
    this.#rx?.flush();
    return now;
  }

  #checkFrame(frame: unknown, arg: string): void {
    if (this.#closed) throw closedError('VhostUserNet');
    if (!(frame instanceof Uint8Array)) throw invalidArg(arg, `must be a Uint8Array, got ${describe(frame)}`);
    if (frame.length < ETH_HLEN || frame.length > this.maxFrame) throw invalidArg(arg, `must be ${ETH_HLEN}..${this.maxFrame} bytes (mtu ${this.mtu}), got ${frame.length}`, 'ERR_VHOST_OUT_OF_RANGE');
  }

  #send(frame: Uint8Array, flush = true): boolean {
    if (this.#queue.length === 0 && this.#deliver(frame)) {
      if (flush) this.#rx!.flush();
      return true;
    }
    if (this.#queue.length >= this.queueLimit) {
      this.stats.txDropped++;
    } else {
      this.#queue.push(frame);
      this.stats.txQueued++;
    }
    this.#full = true;
    return false;
  }

  /** Puts one frame into the next RX chain; false when the guest has none posted. */
  #deliver(frame: Uint8Array): boolean {
    const rx = this.#rx;
    if (rx === null) return false;
    const chain = rx.pop();
    if (chain === null) return false;
    if (chain.writable < this.#hdrLen + frame.length) {
      rx.complete(chain.head); // an empty buffer back: the driver counts a length error
      this.stats.txTooBig++;
      return true;
    }
    const hdr = Buffer.alloc(this.#hdrLen);
    if (this.#hdrLen === HDR_V1) hdr.writeUInt16LE(1, 10); // num_buffers: one chain per frame
    rx.complete(chain.head, [hdr, frame]);
    this.stats.txFrames++;
    this.stats.txBytes += frame.length;
    return true;
  }

  #flushQueue(): void {
    let moved = 0;
    while (this.#queue.length > 0 && this.#deliver(this.#queue[0])) {
      this.#queue.shift();
      moved++;
    }
    if (moved > 0) this.#rx?.flush();
    if (this.#full && this.#queue.length === 0 && this.#rx !== null) {
      this.#full = false;
      this.emit('drain');
    }
  }

  // ---- from the guest ----------------------------------------------------------

  #receive(ring: VhostUserRing, chain: DeviceChain): void {
    ring.complete(chain.head);
    if (chain.readable.length < this.#hdrLen + ETH_HLEN) {
      this.stats.rxMalformed++;
      return;
    }
    const frame = chain.readable.subarray(this.#hdrLen);
    this.stats.rxFrames++;
    this.stats.rxBytes += frame.length;
    for (const hook of this.#hooks) if (hook(frame)) return;
    const reply = this.responder?.respond(frame) ?? null;
    if (reply !== null) {
      this.stats.rxAnswered++;
      this.#send(reply);
      return;
    }
    if (this.listenerCount('frame') === 0) this.stats.rxUnclaimed++;
    else this.emit('frame', frame);
  }

  // ---- VhostUserDevice ---------------------------------------------------------

  /** @internal VhostUserDevice: the driver's features fix the header length. */
  setFeatures(bits: bigint): void {
    this.#hdrLen = bits & (F.ring.VERSION_1 | F.net.MRG_RXBUF) ? HDR_V1 : HDR_LEGACY;
  }

  /** @internal VhostUserDevice */
  startQueue(ring: VhostUserRing): void {
    if (ring.index === VHOST_USER_NET_RX) this.#rx = ring;
    else if (ring.index === VHOST_USER_NET_TX) this.#tx = ring;
    if (this.ready) this.emit('ready');
  }

  /** @internal VhostUserDevice */
  kick(ring: VhostUserRing): boolean {
    if (ring.index === VHOST_USER_NET_RX) {
      this.#flushQueue();
      return false;
    }
    return ring.drain((chain) => this.#receive(ring, chain));
  }

  /** @internal VhostUserDevice */
  stopQueue(ring: VhostUserRing): void {
    if (this.#rx === ring) this.#rx = null;
    if (this.#tx === ring) this.#tx = null;
    this.emit('stopped', ring.index);
  }

  /** @internal VhostUserDevice */
  reset(): void {
    this.#hdrLen = HDR_V1;
  }

  // ---- ping ----------------------------------------------------------------------

  /**
   * Pings `ipv4` in the guest from the responder's address: ARP, then one
   * ICMP echo. Resolves with the round trip in milliseconds; rejects with
   * ETIMEDOUT after `timeoutMs` (default 5000). Needs options.responder.
   */
  async ping(ipv4: string, options: { timeoutMs?: number; payload?: Uint8Array } = {}): Promise<number> {
    if (this.responder === null) throw invalidArg('responder', 'ping() needs options.responder (this side\'s IPv4 address)');
    const target = parseIpv4(ipv4, 'ipv4');
    const timeoutMs = checkInt(options.timeoutMs ?? 5000, 'options.timeoutMs', 1, 600_000, describe);
    const me = this.responder;
    const deadline = Date.now() + timeoutMs;
    const arp = await this.#await(timeoutMs, `ARP reply from ${ipv4}`, () => this.send(buildArpRequest({ srcMac: me.mac, srcIp: me.ipv4, targetIp: target })), (f) => {
      if (f.length < 42 || f.readUInt16BE(12) !== ETHERTYPE_ARP || f.readUInt16BE(20) !== 2) return null;
      return Buffer.compare(f.subarray(28, 32), Buffer.from(target)) === 0 ? Uint8Array.prototype.slice.call(f, 22, 28) : null;
    });
    const id = Math.floor(Math.random() * 0xffff);
    const payload = options.payload ?? Buffer.from('linux-vhost ping');
    const start = process.hrtime.bigint();
    await this.#await(Math.max(1, deadline - Date.now()), `ICMP echo reply from ${ipv4}`, () => this.send(buildIcmpEcho({ srcMac: me.mac, dstMac: arp, srcIp: me.ipv4, dstIp: target, id, seq: 1, payload })), (f) => {
      if (f.length < 42 || f.readUInt16BE(12) !== ETHERTYPE_IPV4 || f[23] !== IPPROTO_ICMP) return null;
      const l4 = ETH_HLEN + (f[14] & 0x0f) * 4;
      return f[l4] === 0 && f.readUInt16BE(l4 + 4) === id ? true : null;
    });
    return Number(process.hrtime.bigint() - start) / 1e6;
  }

  #await<T>(ms: number, what: string, send: () => void, match: (f: Buffer) => T | null): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const hook: FrameHook = (f) => {
        const got = match(f);
        if (got === null) return false;
        done();
        resolve(got);
        return true;
      };
      const timer = setTimeout(() => {
        done();
        reject(new VhostError(`ETIMEDOUT: no ${what} within ${ms} ms`, { code: 'ETIMEDOUT', errno: -110 }));
      }, ms);
      const done = (): void => {
        clearTimeout(timer);
        this.#hooks.delete(hook);
      };
      this.#hooks.add(hook);
      send();
    });
  }

  // ---- lifecycle -------------------------------------------------------------------

  /** Closes the back-end listen() made (the guest sees its link's device go away) and drops queued frames. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#backend?.close();
    this.#queue = [];
  }

  /** close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
