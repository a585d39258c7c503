// Feature bit constants and their names, checked against the kernel's uapi
// headers when this machine has them.
import * as fs from 'node:fs';
import { describeFeatures, featureList, features } from '../../../lib/core/features';
import { thrown } from '../../support/helpers';

describe('features', () => {
  test('are bigint masks of the header bit numbers', () => {
    expect(features.vhost.LOG_ALL).toBe(1n << 26n);
    expect(features.vhost.NET_VIRTIO_NET_HDR).toBe(1n << 27n);
    expect(features.ring.NOTIFY_ON_EMPTY).toBe(1n << 24n);
    expect(features.ring.RING_INDIRECT_DESC).toBe(1n << 28n);
    expect(features.ring.RING_EVENT_IDX).toBe(1n << 29n);
    expect(features.ring.VERSION_1).toBe(1n << 32n);
    expect(features.ring.ACCESS_PLATFORM).toBe(1n << 33n);
    expect(features.ring.RING_PACKED).toBe(1n << 34n);
    expect(features.ring.RING_RESET).toBe(1n << 40n);
    expect(features.net.CSUM).toBe(1n);
    expect(features.net.MRG_RXBUF).toBe(1n << 15n);
    expect(features.net.MQ).toBe(1n << 22n);
    expect(features.net.SPEED_DUPLEX).toBe(1n << 63n);
    expect(features.vsock.STREAM).toBe(1n);
    expect(features.vsock.SEQPACKET).toBe(2n);
    expect(features.backend.IOTLB_MSG_V2).toBe(2n);
    expect(features.backend.IOTLB_BATCH).toBe(4n);
  });

  test('are frozen', () => {
    expect(Object.isFrozen(features)).toBe(true);
    expect(Object.isFrozen(features.net)).toBe(true);
    expect(() => {
      (features.net as { MRG_RXBUF: bigint }).MRG_RXBUF = 0n;
    }).toThrow(TypeError);
  });

  test('featureList has one entry per constant, with distinct bits within each group', () => {
    const groups = Object.entries(features) as [string, Record<string, bigint>][];
    const constants = groups.reduce((n, [, g]) => n + Object.keys(g).length, 0);
    expect(featureList).toHaveLength(constants);
    for (const f of featureList) {
      expect((features as unknown as Record<string, Record<string, bigint>>)[f.group][f.key]).toBe(1n << BigInt(f.bit));
    }
    for (const [group] of groups) {
      const bits = featureList.filter((f) => f.group === group).map((f) => f.bit);
      expect(new Set(bits).size).toBe(bits.length);
    }
  });
});

describe('describeFeatures', () => {
  test('names the vhost-net feature word measured on Linux 6.1 (0x33d008000)', () => {
    expect(describeFeatures(0x33d008000n, 'net')).toEqual([
      'VIRTIO_NET_F_MRG_RXBUF',
      'VIRTIO_F_NOTIFY_ON_EMPTY',
      'VHOST_F_LOG_ALL',
      'VHOST_NET_F_VIRTIO_NET_HDR',
      'VIRTIO_RING_F_INDIRECT_DESC',
      'VIRTIO_RING_F_EVENT_IDX',
      'VIRTIO_F_VERSION_1',
      'VIRTIO_F_ACCESS_PLATFORM',
    ]);
  });

  test('names the vhost-vsock feature word measured on Linux 6.1 (0x33d000002)', () => {
    expect(describeFeatures(0x33d000002n, 'vsock')).toEqual([
      'VIRTIO_VSOCK_F_SEQPACKET',
      'VIRTIO_F_NOTIFY_ON_EMPTY',
      'VHOST_F_LOG_ALL',
      'VIRTIO_F_ANY_LAYOUT',
      'VIRTIO_RING_F_INDIRECT_DESC',
      'VIRTIO_RING_F_EVENT_IDX',
      'VIRTIO_F_VERSION_1',
      'VIRTIO_F_ACCESS_PLATFORM',
    ]);
  });

  test('reads bit 27 per device: VHOST_NET_F_VIRTIO_NET_HDR for net, VIRTIO_F_ANY_LAYOUT otherwise', () => {
    expect(describeFeatures(1n << 27n, 'net')).toEqual(['VHOST_NET_F_VIRTIO_NET_HDR']);
    expect(describeFeatures(1n << 27n, 'vsock')).toEqual(['VIRTIO_F_ANY_LAYOUT']);
    expect(describeFeatures(1n << 27n)).toEqual(['VIRTIO_F_ANY_LAYOUT']);
  });

  test('without a kind names only device-independent bits', () => {
    expect(describeFeatures(features.net.MRG_RXBUF | features.ring.VERSION_1)).toEqual(['bit 15', 'VIRTIO_F_VERSION_1']);
  });

  test('names the backend word from the backend table only', () => {
    expect(describeFeatures(0x2n, 'backend')).toEqual(['VHOST_BACKEND_F_IOTLB_MSG_V2']);
    expect(describeFeatures(features.backend.IOTLB_BATCH | features.backend.IOTLB_PERSIST | (1n << 32n), 'backend')).toEqual([
      'VHOST_BACKEND_F_IOTLB_BATCH',
      'VHOST_BACKEND_F_IOTLB_PERSIST',
      'bit 32',
    ]);
  });

  test("reports unknown bits as 'bit N', also above 63", () => {
    expect(describeFeatures((1n << 4n) | (1n << 58n) | (1n << 70n), 'net')).toEqual(['bit 4', 'bit 58', 'bit 70']);
    expect(describeFeatures(0n, 'net')).toEqual([]);
  });

  test('rejects a non-bigint or negative word and an unknown kind', () => {
    expect(thrown(() => describeFeatures(5 as unknown as bigint)).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => describeFeatures(-1n)).message).toMatch(/bits/);
    expect(thrown(() => describeFeatures(1n, 'blk' as never)).message).toMatch(/kind/);
  });
});

// Every feature macro in the installed uapi headers must be in featureList
// with the same bit, and every constant whose macro the headers define must
// agree with them. Newer bits than the installed headers know are allowed.
const HEADERS = ['virtio_config.h', 'virtio_ring.h', 'virtio_net.h', 'virtio_vsock.h', 'vhost_types.h'].map(
  (h) => `/usr/include/linux/${h}`,
);
const MACRO = /^#define\s+((?:VIRTIO_F|VIRTIO_RING_F|VIRTIO_NET_F|VIRTIO_VSOCK_F|VHOST_F|VHOST_NET_F|VHOST_BACKEND_F)_\w+)\s+(0x[0-9a-fA-F]+|\d+)\b/gm;

function headerMacros(): Map<string, number> {
  const macros = new Map<string, number>();
  for (const file of HEADERS) {
    for (const m of fs.readFileSync(file, 'utf8').matchAll(MACRO)) macros.set(m[1], Number(m[2]));
  }
  return macros;
}

const missingHeaders = HEADERS.filter((h) => !fs.existsSync(h));
const headerTest = missingHeaders.length === 0 ? test : test.skip;

describe('against the kernel uapi headers', () => {
  headerTest(
    `every feature macro of ${HEADERS.join(', ')} matches${missingHeaders.length ? ` [skipped: ${missingHeaders.join(', ')} missing; install linux-libc-dev]` : ''}`,
    () => {
      const macros = headerMacros();
      expect(macros.size).toBeGreaterThan(40); // the parser found the headers' macros
      const ours = new Map(featureList.map((f) => [f.name, f.bit]));
      for (const [name, bit] of macros) expect([name, ours.get(name)]).toEqual([name, bit]);
      for (const [name, bit] of ours) if (macros.has(name)) expect([name, bit]).toEqual([name, macros.get(name)]);
    },
  );
});
