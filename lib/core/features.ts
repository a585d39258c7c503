// Feature bits of vhost devices, as bigint masks (1n << bit) named after the
// kernel's uapi headers: linux/vhost_types.h, virtio_config.h, virtio_ring.h,
// virtio_net.h, virtio_vsock.h (values as of Linux 6.12; bits above 63 do
// not fit the u64 of VHOST_GET_FEATURES and are left out).
import { invalidArg } from './errors';

/** One named feature bit: its group, short key, bit number and header name. */
export interface FeatureBit {
  readonly group: FeatureGroup;
  readonly key: string;
  readonly bit: number;
  /** The macro in the kernel's uapi headers, e.g. 'VIRTIO_NET_F_MRG_RXBUF'. */
  readonly name: string;
}

/** The groups of `features`: vhost-only bits, device-independent ring bits, virtio-net, virtio-vsock, vhost backend features. */
export type FeatureGroup = 'vhost' | 'ring' | 'net' | 'vsock' | 'backend';

/** Which device's feature word is described: device bits mean different things per device. */
export type FeatureKind = 'net' | 'vsock' | 'backend';

const mask = (bit: number): bigint => 1n << BigInt(bit);

// Bit numbers, grouped; the header name is derived in headerName().
const BITS = {
  /** vhost's own bits in the device feature word (VHOST_F_*, VHOST_NET_F_*). */
  vhost: { LOG_ALL: 26, NET_VIRTIO_NET_HDR: 27 },
  /** Device-independent virtio bits (VIRTIO_F_*, VIRTIO_RING_F_*). */
  ring: {
    NOTIFY_ON_EMPTY: 24,
    ANY_LAYOUT: 27,
    RING_INDIRECT_DESC: 28,
    RING_EVENT_IDX: 29,
    VERSION_1: 32,
    ACCESS_PLATFORM: 33,
    RING_PACKED: 34,
    IN_ORDER: 35,
    ORDER_PLATFORM: 36,
    SR_IOV: 37,
    NOTIFICATION_DATA: 38,
    NOTIF_CONFIG_DATA: 39,
    RING_RESET: 40,
    ADMIN_VQ: 41,
  },
  /** virtio-net device bits (VIRTIO_NET_F_*). */
  net: {
    CSUM: 0,
    GUEST_CSUM: 1,
    CTRL_GUEST_OFFLOADS: 2,
    MTU: 3,
    MAC: 5,
    GSO: 6,
    GUEST_TSO4: 7,
    GUEST_TSO6: 8,
    GUEST_ECN: 9,
    GUEST_UFO: 10,
    HOST_TSO4: 11,
    HOST_TSO6: 12,
    HOST_ECN: 13,
    HOST_UFO: 14,
    MRG_RXBUF: 15,
    STATUS: 16,
    CTRL_VQ: 17,
    CTRL_RX: 18,
    CTRL_VLAN: 19,
    CTRL_RX_EXTRA: 20,
    GUEST_ANNOUNCE: 21,
    MQ: 22,
    CTRL_MAC_ADDR: 23,
    DEVICE_STATS: 50,
    VQ_NOTF_COAL: 52,
    NOTF_COAL: 53,
    GUEST_USO4: 54,
    GUEST_USO6: 55,
    HOST_USO: 56,
    HASH_REPORT: 57,
    GUEST_HDRLEN: 59,
    RSS: 60,
    RSC_EXT: 61,
    STANDBY: 62,
    SPEED_DUPLEX: 63,
  },
  /** virtio-vsock device bits (VIRTIO_VSOCK_F_*). */
  vsock: { STREAM: 0, SEQPACKET: 1, NO_IMPLIED_STREAM: 2 },
  /** The separate backend feature word (VHOST_GET_BACKEND_FEATURES, VHOST_BACKEND_F_*). */
  backend: {
    IOTLB_MSG_V2: 1,
    IOTLB_BATCH: 2,
    IOTLB_ASID: 3,
    SUSPEND: 4,
    RESUME: 5,
    ENABLE_AFTER_DRIVER_OK: 6,
    DESC_ASID: 7,
    IOTLB_PERSIST: 8,
  },
} as const;

/** A group of `features`: each bit's name mapped to its mask (1n << bit). */
export type Masks<T> = { readonly [K in keyof T]: bigint };

function masks<T extends Record<string, number>>(group: T): Masks<T> {
  const out: Record<string, bigint> = {};
  for (const [key, bit] of Object.entries(group)) out[key] = mask(bit);
  return Object.freeze(out) as Masks<T>;
}

/**
 * Every feature bit the kernel headers define for vhost devices, as masks:
 * `features.net.MRG_RXBUF`, `features.ring.VERSION_1`, `features.vhost.LOG_ALL`,
 * `features.vsock.SEQPACKET`, `features.backend.IOTLB_MSG_V2`.
 */
export const features = Object.freeze({
  vhost: masks(BITS.vhost),
  ring: masks(BITS.ring),
  net: masks(BITS.net),
  vsock: masks(BITS.vsock),
  backend: masks(BITS.backend),
});

function headerName(group: FeatureGroup, key: string): string {
  switch (group) {
    case 'vhost':
      return key === 'NET_VIRTIO_NET_HDR' ? 'VHOST_NET_F_VIRTIO_NET_HDR' : `VHOST_F_${key}`;
    case 'ring':
      return key === 'RING_INDIRECT_DESC' || key === 'RING_EVENT_IDX' ? `VIRTIO_RING_F_${key.slice(5)}` : `VIRTIO_F_${key}`;
    case 'net':
      return `VIRTIO_NET_F_${key}`;
    case 'vsock':
      return `VIRTIO_VSOCK_F_${key}`;
    case 'backend':
      return `VHOST_BACKEND_F_${key}`;
  }
}

/** Every known feature bit with its header name (for tools and tests). */
export const featureList: readonly FeatureBit[] = Object.freeze(
  (Object.keys(BITS) as FeatureGroup[]).flatMap((group) =>
    Object.entries(BITS[group]).map(([key, bit]) => Object.freeze({ group, key, bit, name: headerName(group, key) })),
  ),
);

// Name of each bit of one feature word. Device-specific bits (0..23, 50..63)
// and bit 27 mean different things per device, hence one table per kind.
function table(kind: FeatureKind | undefined): Map<number, string> {
  const names = new Map<number, string>();
  const add = (group: FeatureGroup) => {
    for (const f of featureList) if (f.group === group) names.set(f.bit, f.name);
  };
  if (kind === 'backend') {
    add('backend');
    return names;
  }
  add('ring');
  names.set(BITS.vhost.LOG_ALL, 'VHOST_F_LOG_ALL');
  if (kind === 'net') {
    add('net');
    // vhost-net reads bit 27 as "vhost adds/strips the virtio-net header".
    names.set(BITS.vhost.NET_VIRTIO_NET_HDR, 'VHOST_NET_F_VIRTIO_NET_HDR');
  } else if (kind === 'vsock') {
    add('vsock');
  }
  return names;
}

const TABLES = new Map<FeatureKind | undefined, Map<number, string>>(
  ([undefined, 'net', 'vsock', 'backend'] as const).map((k) => [k, table(k)]),
);

/**
 * Names of the bits set in a feature word, lowest bit first, e.g.
 * `describeFeatures(net.getFeatures(), 'net')` → ['VIRTIO_NET_F_MRG_RXBUF', ...].
 * Without a kind only device-independent bits are named. Unknown bits read 'bit N'.
 */
export function describeFeatures(bits: bigint, kind?: FeatureKind): string[] {
  if (typeof bits !== 'bigint' || bits < 0n) throw invalidArg('bits', 'must be a non-negative bigint');
  const names = TABLES.get(kind);
  if (!names) throw invalidArg('kind', "must be 'net', 'vsock', 'backend' or undefined");
  const out: string[] = [];
  for (let bit = 0; bits >> BigInt(bit) !== 0n; bit++) {
    if ((bits >> BigInt(bit)) & 1n) out.push(names.get(bit) ?? `bit ${bit}`);
  }
  return out;
}
