// virtioNetConfig: the struct virtio_net_config bytes a transport serves, with
// the feature bits that make each field valid, and the advised-MTU check.
import * as fc from 'fast-check';
import { features } from '../../../lib/core/features';
import { checkAdvisedMtu, virtioNetConfig, virtioNetConfigLayout as L } from '../../../lib/virtio/net-config';
import { tapMacFor } from '../../../lib/netdev/bridge';

const le16 = (b: Uint8Array, off: number) => b[off] | (b[off + 1] << 8);
const le32 = (b: Uint8Array, off: number) => (b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24)) >>> 0;
const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
};

describe('virtioNetConfig', () => {
  test('layout follows the spec: mac 0..5, status 6, max_virtqueue_pairs 8, mtu 10, speed 12, duplex 16', () => {
    const { bytes, features: bits } = virtioNetConfig({
      mac: '52:54:00:12:34:56', status: { linkUp: true, announce: true }, maxQueuePairs: 4, mtu: 9000, speed: 10000, duplex: 'full',
    });
    expect(bytes.length).toBe(17);
    expect(Array.from(bytes.subarray(0, 6))).toEqual([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    expect(le16(bytes, 6)).toBe(3);
    expect(le16(bytes, 8)).toBe(4);
    expect(le16(bytes, 10)).toBe(9000);
    expect(le32(bytes, 12)).toBe(10000);
    expect(bytes[16]).toBe(1);
    const n = features.net;
    expect(bits).toBe(n.MAC | n.STATUS | n.MQ | n.CTRL_VQ | n.MTU | n.SPEED_DUPLEX);
  });

  test('each field brings exactly its feature bit; MQ brings CTRL_VQ, which the spec requires with it', () => {
    const n = features.net;
    expect(virtioNetConfig({ mac: '02:00:00:00:00:01' }).features).toBe(n.MAC);
    expect(virtioNetConfig({ status: { linkUp: false } }).features).toBe(n.STATUS);
    expect(virtioNetConfig({ maxQueuePairs: 2 }).features).toBe(n.MQ | n.CTRL_VQ);
    expect(virtioNetConfig({ mtu: 1500 }).features).toBe(n.MTU);
    expect(virtioNetConfig({ speed: 100 }).features).toBe(n.SPEED_DUPLEX);
    expect(virtioNetConfig({}).features).toBe(0n);
  });

  test('the bytes end after the last valid field (never shorter than mac); absent fields read zero', () => {
    expect(virtioNetConfig({}).bytes).toEqual(new Uint8Array(6));
    expect(virtioNetConfig({ status: { linkUp: true } }).bytes.length).toBe(8);
    expect(virtioNetConfig({ maxQueuePairs: 1 }).bytes.length).toBe(10);
    const mtuOnly = virtioNetConfig({ mtu: 1400 }).bytes;
    expect(mtuOnly.length).toBe(12);
    expect(Array.from(mtuOnly.subarray(0, 10))).toEqual(new Array(10).fill(0));
  });

  test('speed or duplex alone leaves the other unknown (0xffffffff, 0xff)', () => {
    const a = virtioNetConfig({ speed: 1000 }).bytes;
    expect(a[L.duplex]).toBe(0xff);
    const b = virtioNetConfig({ duplex: 'half' }).bytes;
    expect(le32(b, L.speed)).toBe(0xffffffff);
    expect(b[L.duplex]).toBe(0);
    expect(le32(virtioNetConfig({ speed: 'unknown' }).bytes, L.speed)).toBe(0xffffffff);
  });

  test('any valid field values round trip through the bytes', () => {
    fc.assert(fc.property(
      fc.uint8Array({ minLength: 6, maxLength: 6 }).filter((m) => (m[0] & 1) === 0 && m.some((b) => b !== 0)),
      fc.integer({ min: 1, max: 0x8000 }), fc.integer({ min: 68, max: 65535 }), fc.integer({ min: 0, max: 0x7fffffff }),
      (mac, pairs, mtu, speed) => {
        const { bytes } = virtioNetConfig({ mac, maxQueuePairs: pairs, mtu, speed, duplex: 'full' });
        expect(Array.from(bytes.subarray(0, 6))).toEqual(Array.from(mac));
        expect([le16(bytes, L.maxVirtqueuePairs), le16(bytes, L.mtu), le32(bytes, L.speed)]).toEqual([pairs, mtu, speed]);
      },
    ));
  });

  test.each([
    ['mtu below 68', { mtu: 67 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['mtu above 65535', { mtu: 65536 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['maxQueuePairs 0', { maxQueuePairs: 0 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['maxQueuePairs above 0x8000', { maxQueuePairs: 0x8001 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['speed above 0x7fffffff', { speed: 0x80000000 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['duplex unknown word', { duplex: 'double' }, 'ERR_VHOST_INVALID_ARG'],
    ['multicast mac', { mac: '01:00:5e:00:00:01' }, 'ERR_VHOST_INVALID_ARG'],
    ['status not an object', { status: 1 }, 'ERR_VHOST_INVALID_ARG'],
    ['pathMtu without mtu', { pathMtu: 1500 }, 'ERR_VHOST_INVALID_ARG'],
    ['unknown option', { speedMbps: 1 }, 'ERR_VHOST_INVALID_ARG'],
  ])('refuses %s', (_what, opts, expected) => {
    expect(code(() => virtioNetConfig(opts as never))).toBe(expected);
  });

  test('an advised MTU above the path MTU is refused, equal or below passes', () => {
    expect(code(() => virtioNetConfig({ mtu: 9000, pathMtu: 1500 }))).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(code(() => checkAdvisedMtu(1501, 1500))).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(() => checkAdvisedMtu(1500, 1500)).not.toThrow();
    expect(le16(virtioNetConfig({ mtu: 9000, pathMtu: 9000 }).bytes, L.mtu)).toBe(9000);
  });
});

describe('tapMacFor (libvirt rule)', () => {
  test('the tap MAC is the guest MAC with the first byte 0xFE', () => {
    expect(Array.from(tapMacFor('52:54:00:ab:cd:ef'))).toEqual([0xfe, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    expect(code(() => tapMacFor('01:00:00:00:00:01'))).toBe('ERR_VHOST_INVALID_ARG');
  });
});
