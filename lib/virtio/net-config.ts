// The virtio-net device configuration space (struct virtio_net_config, virtio
// spec 1.2 §5.1.4) a VMM's transport serves to the guest, little-endian, with
// the feature bits that make each field valid. A field exists for the guest
// only when its feature is offered, so the bytes end after the last one.
import { invalidArg } from '../core/errors';
import { plain, readOptions } from '../core/check';
import { features } from '../core/features';
import { checkAdvisedMtu, parseMac } from '../netdev/tap';

export { checkAdvisedMtu };

/** VIRTIO_NET_S_* bits of the status field. */
export const virtioNetStatus = { LINK_UP: 1, ANNOUNCE: 2 } as const;

/** Field offsets in struct virtio_net_config. */
export const virtioNetConfigLayout = {
  mac: 0, // u8[6]
  status: 6, // le16
  maxVirtqueuePairs: 8, // le16
  mtu: 10, // le16
  speed: 12, // le32
  duplex: 16, // u8
} as const;

/** VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN / MAX. */
export const MAX_QUEUE_PAIRS = 0x8000;
const SPEED_UNKNOWN = 0xffffffff;
const DUPLEX = { half: 0x00, full: 0x01, unknown: 0xff } as const;

/** Options of virtioNetConfig(): each field given offers the feature bit that makes it valid. */
export interface VirtioNetConfigOptions {
  /** VIRTIO_NET_F_MAC: the guest's MAC. */
  mac?: string | Uint8Array;
  /** VIRTIO_NET_F_STATUS: link state (and a pending gratuitous announce). */
  status?: { linkUp: boolean; announce?: boolean };
  /** VIRTIO_NET_F_MQ (+ CTRL_VQ, which MQ requires): 1..0x8000. */
  maxQueuePairs?: number;
  /** VIRTIO_NET_F_MTU: the advised MTU, 68..65535. */
  mtu?: number;
  /** The MTU of the path behind the device (e.g. its bridge); an advised mtu above it is refused. */
  pathMtu?: number;
  /** VIRTIO_NET_F_SPEED_DUPLEX: Mbit/s, 0..0x7fffffff, or 'unknown'. */
  speed?: number | 'unknown';
  /** VIRTIO_NET_F_SPEED_DUPLEX: duplex mode. */
  duplex?: 'half' | 'full' | 'unknown';
}

/** What virtioNetConfig() returns: the config space bytes and the feature bits to offer with them. */
export interface VirtioNetConfig {
  /** The config space bytes, up to the end of the last field made valid by `features`. */
  bytes: Uint8Array;
  /** The device feature bits to offer so the guest reads those fields. */
  features: bigint;
}


/** Builds the config space and the features that validate each given field; validates everything first. */
export function virtioNetConfig(opts: VirtioNetConfigOptions = {}): VirtioNetConfig {
  if (typeof opts !== 'object' || opts === null) throw invalidArg('options', 'must be an object');
  const known = new Set(['mac', 'status', 'maxQueuePairs', 'mtu', 'pathMtu', 'speed', 'duplex']);
  for (const key of Object.keys(opts)) if (!known.has(key)) throw invalidArg(key, 'is not a virtioNetConfig option');
  opts = readOptions(opts, known);

  const mac = opts.mac === undefined ? undefined : parseMac(opts.mac);
  let status: number | undefined;
  if (opts.status !== undefined) {
    const s = opts.status;
    if (typeof s !== 'object' || s === null || typeof s.linkUp !== 'boolean') throw invalidArg('status', 'must be { linkUp: boolean, announce?: boolean }');
    if (s.announce !== undefined && typeof s.announce !== 'boolean') throw invalidArg('status.announce', 'must be a boolean');
    status = (s.linkUp ? virtioNetStatus.LINK_UP : 0) | (s.announce ? virtioNetStatus.ANNOUNCE : 0);
  }
  const pairs = opts.maxQueuePairs;
  if (pairs !== undefined && (typeof pairs !== 'number' || !Number.isInteger(pairs) || pairs < 1 || pairs > MAX_QUEUE_PAIRS))
    throw invalidArg('maxQueuePairs', `must be an integer in 1..${MAX_QUEUE_PAIRS} (got ${plain(pairs)})`, 'ERR_VHOST_OUT_OF_RANGE');
  if (opts.mtu !== undefined) {
    checkAdvisedMtu(opts.mtu, opts.pathMtu ?? 65535);
  } else if (opts.pathMtu !== undefined) {
    throw invalidArg('pathMtu', 'needs mtu (it bounds the advised MTU)');
  }
  let speed: number | undefined;
  if (opts.speed !== undefined) {
    if (opts.speed === 'unknown') speed = SPEED_UNKNOWN;
    else if (Number.isInteger(opts.speed) && opts.speed >= 0 && opts.speed <= 0x7fffffff) speed = opts.speed;
    else throw invalidArg('speed', "must be an integer in 0..0x7fffffff (Mbit/s) or 'unknown'", 'ERR_VHOST_OUT_OF_RANGE');
  }
  let duplex: number | undefined;
  if (opts.duplex !== undefined) {
    if (!(opts.duplex in DUPLEX)) throw invalidArg('duplex', "must be 'half', 'full' or 'unknown'");
    duplex = DUPLEX[opts.duplex];
  }

  const L = virtioNetConfigLayout;
  const bytes = new Uint8Array(L.duplex + 1);
  const view = new DataView(bytes.buffer);
  let bits = 0n;
  let end = L.mac + 6; // the config space is never shorter than mac (as QEMU serves it)
  if (mac) {
    bytes.set(mac, L.mac);
    bits |= features.net.MAC;
  }
  if (status !== undefined) {
    view.setUint16(L.status, status, true);
    bits |= features.net.STATUS;
    end = Math.max(end, L.status + 2);
  }
  if (pairs !== undefined) {
    view.setUint16(L.maxVirtqueuePairs, pairs, true);
    bits |= features.net.MQ | features.net.CTRL_VQ;
    end = Math.max(end, L.maxVirtqueuePairs + 2);
  }
  if (opts.mtu !== undefined) {
    view.setUint16(L.mtu, opts.mtu, true);
    bits |= features.net.MTU;
    end = Math.max(end, L.mtu + 2);
  }
  if (speed !== undefined || duplex !== undefined) {
    view.setUint32(L.speed, speed ?? SPEED_UNKNOWN, true);
    view.setUint8(L.duplex, duplex ?? DUPLEX.unknown);
    bits |= features.net.SPEED_DUPLEX;
    end = Math.max(end, L.duplex + 1);
  }
  return { bytes: bytes.slice(0, end), features: bits };
}
