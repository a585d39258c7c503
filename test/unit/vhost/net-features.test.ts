// Feature negotiation of the builders, as pure functions: which bits reach
// VHOST_SET_FEATURES, the vnet header size, and the tap's offload flags.
import fc from 'fast-check';
import { VHOST_RING_BITS } from '../../../lib/vhost/plan';
import { features } from '../../../lib/core/features';
import { NET_VHOST_BITS, negotiateNetFeatures, tapOffloadFor, vnetHdrSizeFor } from '../../../lib/vhost/net';
import { tunOffload } from '../../../lib/netdev/tap';
import { negotiateVsockFeatures, VSOCK_VHOST_BITS } from '../../../lib/vhost/vsock';

const { net, ring, vhost, vsock } = features;
const HDR = vhost.NET_VIRTIO_NET_HDR;
/** What Linux 6.1's vhost-net and vhost-vsock offer (measured). */
const NET_OFFER_6_1 = 0x33d008000n;
const VSOCK_OFFER_6_1 = 0x33d000002n;

/** Bits a virtio-net device model offers and Linux guests ack: device-only ones included. */
const LINUX_GUEST_NET =
  net.CSUM | net.GUEST_CSUM | net.CTRL_GUEST_OFFLOADS | net.MTU | net.MAC | net.GUEST_TSO4 | net.GUEST_TSO6 | net.GUEST_ECN |
  net.GUEST_UFO | net.HOST_TSO4 | net.HOST_TSO6 | net.HOST_ECN | net.HOST_UFO | net.MRG_RXBUF | net.STATUS | net.CTRL_VQ |
  net.CTRL_RX | net.CTRL_VLAN | net.GUEST_ANNOUNCE | net.MQ | net.CTRL_MAC_ADDR | ring.RING_INDIRECT_DESC | ring.RING_EVENT_IDX |
  ring.VERSION_1 | ring.ACCESS_PLATFORM | net.SPEED_DUPLEX | net.RSS | net.HASH_REPORT | net.STANDBY;

const DEVICE_ONLY = Object.values(net).filter((b) => b !== net.MRG_RXBUF);

const word = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
/** Feature words biased towards the bits that matter. */
const interesting = fc.oneof(
  word,
  fc.subarray([...Object.values(net), ...Object.values(ring), ...Object.values(vhost)]).map((bits) => bits.reduce((a, b) => a | b, 0n)),
  fc.constantFrom(NET_OFFER_6_1, LINUX_GUEST_NET, 0n),
);

/**
 * tun's set_offload (drivers/net/tun.c, 6.1): checksum first, TSO only with
 * checksum, ECN only with TSO; UFO accepted with checksum; anything left is EINVAL.
 */
function tunAccepts(arg: number): boolean {
  if (arg & tunOffload.TUN_F_CSUM) {
    arg &= ~tunOffload.TUN_F_CSUM;
    if (arg & (tunOffload.TUN_F_TSO4 | tunOffload.TUN_F_TSO6)) {
      arg &= ~(tunOffload.TUN_F_TSO_ECN | tunOffload.TUN_F_TSO4 | tunOffload.TUN_F_TSO6);
    }
    arg &= ~tunOffload.TUN_F_UFO;
  }
  return arg === 0;
}

describe('negotiateNetFeatures', () => {
  test('a Linux guest on 6.1 with a vnet-header tap: only ring bits and MRG_RXBUF reach vhost', () => {
    const r = negotiateNetFeatures(NET_OFFER_6_1, LINUX_GUEST_NET, { tapHasVnetHdr: true });
    expect(r.vhostFeatures).toBe(net.MRG_RXBUF | ring.RING_INDIRECT_DESC | ring.RING_EVENT_IDX | ring.VERSION_1);
    expect(r.unsupported).toBe(0n);
    expect(r.vnetHdrSize).toBe(12);
    expect(r.tapOffload).toBe(tunOffload.TUN_F_CSUM | tunOffload.TUN_F_TSO4 | tunOffload.TUN_F_TSO6 | tunOffload.TUN_F_TSO_ECN | tunOffload.TUN_F_UFO);
  });

  test('a tap without vnet header: vhost gets VHOST_NET_F_VIRTIO_NET_HDR and the tap no offloads', () => {
    const r = negotiateNetFeatures(NET_OFFER_6_1, LINUX_GUEST_NET, { tapHasVnetHdr: false });
    expect(r.vhostFeatures & HDR).toBe(HDR);
    expect(r.tapOffload).toBe(0);
  });

  test('a legacy guest without VERSION_1 or MRG_RXBUF uses the 10-byte header', () => {
    expect(negotiateNetFeatures(NET_OFFER_6_1, net.CSUM | ring.RING_EVENT_IDX, { tapHasVnetHdr: true }).vnetHdrSize).toBe(10);
    expect(vnetHdrSizeFor(net.MRG_RXBUF)).toBe(12);
    expect(vnetHdrSizeFor(ring.VERSION_1)).toBe(12);
  });

  test('a ring format the device does not offer (packed on 6.1) is reported, not silently dropped', () => {
    const r = negotiateNetFeatures(NET_OFFER_6_1, ring.VERSION_1 | ring.RING_PACKED, { tapHasVnetHdr: true });
    expect(r.unsupported).toBe(ring.RING_PACKED);
    expect(r.vhostFeatures).toBe(ring.VERSION_1);
  });

  test('bit 27 acked by the guest (ANY_LAYOUT) never turns on vhost header handling', () => {
    expect(negotiateNetFeatures(NET_OFFER_6_1, ring.ANY_LAYOUT | ring.VERSION_1, { tapHasVnetHdr: true }).vhostFeatures & HDR).toBe(0n);
  });

  test('property: vhost gets only offered bits, and only acked ones except bit 27', () => {
    fc.assert(
      fc.property(interesting, interesting, fc.boolean(), (offered, acked, tapHasVnetHdr) => {
        const { vhostFeatures } = negotiateNetFeatures(offered, acked, { tapHasVnetHdr });
        expect(vhostFeatures & ~offered).toBe(0n);
        expect(vhostFeatures & ~HDR & ~acked).toBe(0n);
      }),
    );
  });

  test('property: device-only bits, LOG_ALL and ACCESS_PLATFORM never reach vhost', () => {
    fc.assert(
      fc.property(interesting, interesting, fc.boolean(), (offered, acked, tapHasVnetHdr) => {
        const { vhostFeatures } = negotiateNetFeatures(offered, acked, { tapHasVnetHdr });
        for (const bit of [...DEVICE_ONLY, vhost.LOG_ALL, ring.ACCESS_PLATFORM]) expect(vhostFeatures & bit).toBe(0n);
        expect(vhostFeatures & ~(NET_VHOST_BITS | HDR)).toBe(0n);
      }),
    );
  });

  test('property: bit 27 exactly when the tap has no vnet header (and the device offers it)', () => {
    fc.assert(
      fc.property(interesting, interesting, fc.boolean(), (offered, acked, tapHasVnetHdr) => {
        const r = negotiateNetFeatures(offered, acked, { tapHasVnetHdr });
        const offersHdr = (offered & HDR) !== 0n;
        expect((r.vhostFeatures & HDR) !== 0n).toBe(!tapHasVnetHdr && offersHdr);
        expect((r.unsupported & HDR) !== 0n).toBe(!tapHasVnetHdr && !offersHdr);
      }),
    );
  });

  test('property: unsupported is exactly the acked vhost bits the device lacks', () => {
    fc.assert(
      fc.property(interesting, interesting, (offered, acked) => {
        const r = negotiateNetFeatures(offered, acked, { tapHasVnetHdr: true });
        expect(r.unsupported).toBe(acked & NET_VHOST_BITS & ~offered);
        expect(r.vhostFeatures | r.unsupported).toBe(acked & NET_VHOST_BITS);
      }),
    );
  });

  test('property: header size is 12 exactly with VERSION_1 or MRG_RXBUF', () => {
    fc.assert(
      fc.property(interesting, interesting, fc.boolean(), (offered, acked, tapHasVnetHdr) => {
        const r = negotiateNetFeatures(offered, acked, { tapHasVnetHdr });
        expect(r.vnetHdrSize).toBe((acked & (ring.VERSION_1 | net.MRG_RXBUF)) !== 0n ? 12 : 10);
      }),
    );
  });

  test('property: negotiating again with the result changes nothing (a fixed point)', () => {
    fc.assert(
      fc.property(interesting, interesting, (offered, acked) => {
        const once = negotiateNetFeatures(offered, acked, { tapHasVnetHdr: true }).vhostFeatures;
        expect(negotiateNetFeatures(offered, once, { tapHasVnetHdr: true }).vhostFeatures).toBe(once);
      }),
    );
  });
});

describe('tapOffloadFor', () => {
  test.each([
    ['nothing', 0n, 0],
    ['GUEST_CSUM', net.GUEST_CSUM, tunOffload.TUN_F_CSUM],
    ['TSO4 without GUEST_CSUM (the tap would refuse it)', net.GUEST_TSO4 | net.GUEST_ECN, 0],
    ['CSUM + TSO4', net.GUEST_CSUM | net.GUEST_TSO4, tunOffload.TUN_F_CSUM | tunOffload.TUN_F_TSO4],
    ['CSUM + ECN without TSO', net.GUEST_CSUM | net.GUEST_ECN, tunOffload.TUN_F_CSUM],
    ['CSUM + TSO6 + ECN', net.GUEST_CSUM | net.GUEST_TSO6 | net.GUEST_ECN, tunOffload.TUN_F_CSUM | tunOffload.TUN_F_TSO6 | tunOffload.TUN_F_TSO_ECN],
    ['CSUM + UFO', net.GUEST_CSUM | net.GUEST_UFO, tunOffload.TUN_F_CSUM | tunOffload.TUN_F_UFO],
    ['host-side offloads only (they need nothing on the tap)', net.CSUM | net.HOST_TSO4 | net.HOST_UFO, 0],
  ])('%s', (_name, acked, expected) => {
    expect(tapOffloadFor(acked)).toBe(expected);
  });

  test('property: every derived flag set is one tun accepts', () => {
    fc.assert(fc.property(interesting, (acked) => expect(tunAccepts(tapOffloadFor(acked))).toBe(true)));
  });

  test('property: each flag follows its guest bit (TSO/ECN/UFO only with GUEST_CSUM)', () => {
    fc.assert(
      fc.property(interesting, (acked) => {
        const f = tapOffloadFor(acked);
        const has = (b: bigint) => (acked & b) !== 0n;
        const csum = has(net.GUEST_CSUM);
        expect((f & tunOffload.TUN_F_CSUM) !== 0).toBe(csum);
        expect((f & tunOffload.TUN_F_TSO4) !== 0).toBe(csum && has(net.GUEST_TSO4));
        expect((f & tunOffload.TUN_F_TSO6) !== 0).toBe(csum && has(net.GUEST_TSO6));
        expect((f & tunOffload.TUN_F_TSO_ECN) !== 0).toBe(csum && has(net.GUEST_ECN) && (has(net.GUEST_TSO4) || has(net.GUEST_TSO6)));
        expect((f & tunOffload.TUN_F_UFO) !== 0).toBe(csum && has(net.GUEST_UFO));
      }),
    );
  });

  test('property: no offloads for a tap without vnet header', () => {
    fc.assert(fc.property(interesting, interesting, (offered, acked) => expect(negotiateNetFeatures(offered, acked, { tapHasVnetHdr: false }).tapOffload).toBe(0)));
  });
});

describe('negotiateVsockFeatures', () => {
  test('a Linux guest on 6.1: VERSION_1, EVENT_IDX and SEQPACKET pass; ACCESS_PLATFORM does not', () => {
    const acked = ring.VERSION_1 | ring.RING_EVENT_IDX | ring.ACCESS_PLATFORM | vsock.SEQPACKET;
    expect(negotiateVsockFeatures(VSOCK_OFFER_6_1, acked)).toEqual({ vhostFeatures: ring.VERSION_1 | ring.RING_EVENT_IDX | vsock.SEQPACKET, unsupported: 0n });
  });

  test('NO_IMPLIED_STREAM, which 6.1 does not offer, is reported unsupported', () => {
    expect(negotiateVsockFeatures(VSOCK_OFFER_6_1, ring.VERSION_1 | vsock.NO_IMPLIED_STREAM).unsupported).toBe(vsock.NO_IMPLIED_STREAM);
  });

  test('property: only offered vhost-vsock bits the guest acked; the rest of the acked vhost bits is unsupported', () => {
    fc.assert(
      fc.property(interesting, interesting, (offered, acked) => {
        const r = negotiateVsockFeatures(offered, acked);
        expect(r.vhostFeatures & ~offered).toBe(0n);
        expect(r.vhostFeatures & ~acked).toBe(0n);
        expect(r.vhostFeatures & ~VSOCK_VHOST_BITS).toBe(0n);
        expect(r.vhostFeatures & (vhost.LOG_ALL | ring.ACCESS_PLATFORM | ring.ANY_LAYOUT)).toBe(0n);
        expect(r.unsupported).toBe(acked & VSOCK_VHOST_BITS & ~offered);
      }),
    );
  });

  test('the ring bits both devices pass are the same set', () => {
    expect(NET_VHOST_BITS & ~net.MRG_RXBUF).toBe(VHOST_RING_BITS);
    expect(VSOCK_VHOST_BITS & VHOST_RING_BITS).toBe(VHOST_RING_BITS);
  });
});
