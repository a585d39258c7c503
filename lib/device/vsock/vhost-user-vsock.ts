// VhostUserVsock: virtio-vsock served to a real guest over vhost-user (QEMU
// `-device vhost-user-vsock-pci,chardev=...`). QEMU keeps the event queue
// (ring 2) itself and hands this back-end the RX (0) and TX (1) rings; the
// guest's CID is read from this back-end's config space (GET_CONFIG: struct
// virtio_vsock_config, one le64 guest_cid). Packets go through a
// VsockDeviceBackend channel (lib/device/vsock/channel.ts), which checks every
// header; this file only moves chains:
//   TX ring chain (readable: header + payload) → channel.receive()
//   channel.nextPacket() → RX ring chain (writable)
import { EventEmitter } from 'node:events';
import { checkInt, checkObject, readOptions } from '../../core/check';
import { features as F } from '../../core/features';
import type { VhostUserDevice } from '../../vhost/user/backend-device';
import type { VhostUserRing } from '../../vhost/user/backend-ring';
import { VhostUserBackend, type VhostUserBackendOptions } from '../../vhost/user/backend';
import { VhostUserProtocolFeature } from '../../vhost/user/messages';
import { VSOCK_HDR_SIZE } from '../../virtio/vsock-packet';
import { VSOCK_MAX_PAYLOAD, type VsockDeviceBackend, type VsockGuestChannel } from './backend';

/** The RX ring (device → guest). QEMU hands a vhost-user-vsock back-end rings 0 and 1; the event queue (2) stays in QEMU. */
export const VHOST_USER_VSOCK_RX = 0;
/** The TX ring (guest → device). */
export const VHOST_USER_VSOCK_TX = 1;

/** Options of VhostUserVsock. */
export interface VhostUserVsockOptions {
  /** The guest's CID (3..0xfffffffe), given to the guest through config space; unique on `backend`. */
  cid: number;
}

/**
 * One guest's virtio-vsock device on a VsockDeviceBackend, served over
 * vhost-user. Emits 'ready' (both rings run) and 'stopped' (a ring stopped:
 * the guest's connections were reset).
 */
export class VhostUserVsock extends EventEmitter implements VhostUserDevice {
  readonly name = 'vhost-user-vsock';
  readonly features: bigint;
  readonly protocolFeatures = 1n << BigInt(VhostUserProtocolFeature.CONFIG);
  readonly queues = 2;
  readonly cid: number;
  readonly channel: VsockGuestChannel;
  readonly #vsock: VsockDeviceBackend;
  readonly #scratch = Buffer.alloc(VSOCK_HDR_SIZE + VSOCK_MAX_PAYLOAD);
  #rx: VhostUserRing | null = null;
  #tx: VhostUserRing | null = null;
  #fillScheduled = false;
  /** Length of a packet made in #scratch and not yet in an RX chain (0: none). */
  #held = 0;
  /** Bytes per packet: the smallest RX chain seen, header + 4 KiB until one is seen. */
  #room = VSOCK_HDR_SIZE + 4096;
  /** Counters of the ring side (the packet side is in channel.stats). */
  readonly stats = { rxChainTooSmall: 0 };
  #backend: VhostUserBackend | null = null;

  constructor(vsock: VsockDeviceBackend, options: VhostUserVsockOptions) {
    super();
    const o = readOptions(checkObject<VhostUserVsockOptions>(options, 'options'), ['cid']);
    this.cid = checkInt(o.cid, 'options.cid', 3, 0xffff_fffe);
    this.#vsock = vsock;
    this.features = F.ring.VERSION_1 | F.ring.RING_EVENT_IDX | F.ring.RING_INDIRECT_DESC | (vsock.seqpacket ? F.vsock.SEQPACKET : 0n);
    this.channel = vsock.attach(this.cid, { wake: () => this.#scheduleFill() });
  }

  /** Serves guest `options.cid` of `vsock` at `path` (VhostUserBackend's socket rules); close() detaches the guest and closes the socket. */
  static listen(vsock: VsockDeviceBackend, path: string, options: VhostUserVsockOptions & VhostUserBackendOptions): VhostUserVsock {
    checkObject(options, 'options');
    const { mode, allowReplace, ...rest } = options;
    const dev = new VhostUserVsock(vsock, rest);
    try {
      dev.#backend = VhostUserBackend.listen(path, dev, { mode, allowReplace });
    } catch (err) {
      vsock.detach(dev.cid);
      throw err;
    }
    return dev;
  }

  /** The vhost-user back-end listen() made. */
  get backend(): VhostUserBackend | null {
    return this.#backend;
  }

  /** True while both rings run. */
  get ready(): boolean {
    return this.#rx !== null && this.#tx !== null;
  }

  /** Detaches the guest (its connections reset) and closes the back-end listen() made. */
  close(): void {
    this.#vsock.detach(this.cid, 'the vhost-user-vsock device was closed');
    this.#backend?.close();
    this.#backend = null;
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  // ---- VhostUserDevice ---------------------------------------------------------

  /** @internal GET_CONFIG: struct virtio_vsock_config { le64 guest_cid; }. */
  readConfig(offset: number, size: number): Uint8Array {
    const config = Buffer.alloc(8);
    config.writeBigUInt64LE(BigInt(this.cid));
    const out = Buffer.alloc(size);
    if (offset < config.length) config.copy(out, 0, offset, Math.min(config.length, offset + size));
    return out;
  }

  /** @internal */
  startQueue(ring: VhostUserRing): void {
    if (ring.index === VHOST_USER_VSOCK_RX) this.#rx = ring;
    else if (ring.index === VHOST_USER_VSOCK_TX) this.#tx = ring;
    if (this.ready) this.emit('ready');
  }

  /** @internal */
  kick(ring: VhostUserRing): boolean {
    if (ring.index === VHOST_USER_VSOCK_RX) {
      this.#fill();
      return false;
    }
    const more = ring.drain((chain) => {
      ring.complete(chain.head);
      this.channel.receive(chain.readable); // checked there: the guest is untrusted
    });
    this.#fill(); // the answers (RESPONSE, credit, RST) go out in the same turn
    return more;
  }

  /** @internal A ring stops (guest reset, QEMU gone or reconnecting): the guest's connections are stale. */
  stopQueue(ring: VhostUserRing): void {
    this.#held = 0; // made for connections the reset below ends
    if (this.#rx === ring) this.#rx = null;
    if (this.#tx === ring) this.#tx = null;
    this.channel.reset(`the vhost-user-vsock rings of guest ${this.cid} stopped (guest reset, or its front-end went away)`);
    this.emit('stopped', ring.index);
  }

  /** @internal */
  reset(): void {
    this.channel.reset(`guest ${this.cid}'s vhost-user-vsock device was reset`);
  }

  #scheduleFill(): void {
    if (this.#fillScheduled) return;
    this.#fillScheduled = true;
    setImmediate(() => {
      this.#fillScheduled = false;
      this.#fill();
    });
  }

  /**
   * Packets for the guest into its posted RX chains, one packet per chain;
   * one flush. A packet is made before a chain is popped (so no chain goes
   * back empty) and sized to the smallest RX chain seen (Linux posts them
   * all alike: header + 4 KiB); one made while no chain waits is held for
   * the next RX kick.
   */
  #fill(): void {
    const rx = this.#rx;
    if (rx === null) return;
    let moved = 0;
    while (moved < 1024) {
      if (this.#held === 0) this.#held = this.channel.nextPacket(this.#scratch.subarray(0, this.#room));
      if (this.#held === 0) break;
      const chain = rx.pop();
      if (chain === null) break; // held for the next RX kick
      moved++;
      if (chain.writable < this.#room) this.#room = Math.max(VSOCK_HDR_SIZE, Math.min(chain.writable, this.#scratch.length));
      if (chain.writable < this.#held) {
        this.stats.rxChainTooSmall++; // a chain smaller than the others: given back empty, the packet waits for a bigger one
        rx.complete(chain.head);
        continue;
      }
      rx.complete(chain.head, this.#scratch.subarray(0, this.#held));
      this.#held = 0;
    }
    if (moved > 0) rx.flush();
    if (moved >= 1024) this.#scheduleFill();
  }
}
