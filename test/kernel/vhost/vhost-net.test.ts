// /dev/vhost-net on the real kernel: every ioctl, read back where the kernel
// lets us, and every error path triggered for real.
import * as fs from 'node:fs';
import * as os from 'node:os';
import { EventFd } from '../../../lib/core/eventfd';
import { describeFeatures, features } from '../../../lib/core/features';
import { GuestMemory } from '../../../lib/core/memory';
import { Tap } from '../../../lib/netdev/tap';
import { VhostNet } from '../../../lib/vhost/net';
import { layoutSplitRing, type SplitRingLayout } from '../../../lib/virtio/vring';
import { closeAfterEach, describeKernel, errnoExpecter, thrown, waitFor } from '../../support/helpers';
import { linkStat } from '../../support/net-helpers';

const QUEUE_SIZE = 256;
const EOPNOTSUPP = -os.constants.errno.EOPNOTSUPP;

function maxMemRegions(): number {
  return Number(fs.readFileSync('/sys/module/vhost/parameters/max_mem_regions', 'utf8').trim());
}

const expectErrno = errnoExpecter('/dev/vhost-net');

function dataView(mem: GuestMemory, gpa: bigint, length: number): DataView {
  const bytes = mem.view(gpa, length);
  return new DataView(bytes.buffer, bytes.byteOffset, length);
}

// One device with owner set, 1 MiB of guest memory at gpa 0 in its memory
// table, and split rings laid out at gpa 0 (rx) and 0x10000 (tx).
interface Rig {
  net: VhostNet;
  mem: GuestMemory;
  rings: SplitRingLayout[];
  kick: EventFd[];
  call: EventFd[];
  close(): void;
}

function rig(): Rig {
  const net = VhostNet.open();
  const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] });
  const kick = [EventFd.create(), EventFd.create()];
  const call = [EventFd.create(), EventFd.create()];
  net.setOwner();
  net.setMemTable(mem);
  const rings = [0, 1].map((q) => layoutSplitRing(QUEUE_SIZE, BigInt(q) * 0x10000n));
  return {
    net, mem, rings, kick, call,
    close() {
      net.close();
      for (const e of [...kick, ...call]) e.close();
      mem.close();
    },
  };
}

/** NUM, BASE, ADDR (host virtual addresses of the rings), KICK and CALL for queue q. */
function setupRing(r: Rig, q: number): void {
  const ring = r.rings[q];
  r.net.setVringNum(q, QUEUE_SIZE);
  r.net.setVringBase(q, 0);
  r.net.setVringAddr(q, { desc: r.mem.translate(ring.desc), avail: r.mem.translate(ring.avail), used: r.mem.translate(ring.used) });
  r.net.setVringKick(q, r.kick[q]);
  r.net.setVringCall(q, r.call[q]);
}

describeKernel('vhost-net ioctls', ['/dev/vhost-net', '/dev/net/tun'], () => {
  let r: Rig;
  // the rig, and whatever a test opens beyond it, closed after each test
  const track = closeAfterEach();
  beforeEach(() => {
    r = track(rig());
  });

  describe('features', () => {
    test('GET_FEATURES offers the vhost-net word (0x33d008000 on 6.1)', () => {
      const offered = r.net.getFeatures();
      for (const bit of [features.net.MRG_RXBUF, features.ring.VERSION_1, features.vhost.NET_VIRTIO_NET_HDR, features.vhost.LOG_ALL, features.ring.ACCESS_PLATFORM]) {
        expect(offered & bit).toBe(bit);
      }
      if (os.release().startsWith('6.1.')) expect(offered).toBe(0x33d008000n);
      expect(describeFeatures(offered, 'net')).not.toContain(expect.stringMatching(/^bit /));
    });

    test('SET_FEATURES takes any subset of the offer', () => {
      const offered = r.net.getFeatures();
      r.net.setFeatures(offered);
      r.net.setFeatures(features.ring.VERSION_1 | features.net.MRG_RXBUF);
      r.net.setFeatures(0n);
    });

    test('a feature not offered fails with EOPNOTSUPP (Node/libuv name it ENOTSUP)', () => {
      const notOffered = [features.net.CSUM, features.ring.RING_PACKED, 1n << 63n];
      for (const bit of notOffered) {
        expect(r.net.getFeatures() & bit).toBe(0n);
        const err = thrown(() => r.net.setFeatures(features.ring.VERSION_1 | bit));
        expect(err).toMatchObject({ code: 'ENOTSUP', errno: EOPNOTSUPP, syscall: 'ioctl(VHOST_SET_FEATURES)', path: '/dev/vhost-net' });
      }
    });

    test('acknowledging ACCESS_PLATFORM is what lets IOTLB updates in (EFAULT before)', () => {
      const update = { type: 'update', iova: 0x100000n, size: 0x1000n, uaddr: r.mem.regions[0].hva, perm: 'rw' } as const;
      const err = thrown(() => r.net.sendIotlbMsg(update));
      expect(err).toMatchObject({ code: 'EFAULT', syscall: 'write(VHOST_IOTLB_MSG_V2)', path: '/dev/vhost-net' });
      r.net.setFeatures(features.ring.VERSION_1 | features.ring.ACCESS_PLATFORM);
      r.net.sendIotlbMsg(update);
      expect(r.net.readIotlbMsg()).toBeNull();
    });

    test('backend features: IOTLB_MSG_V2 is offered and can be set, others fail with EOPNOTSUPP', () => {
      const offered = r.net.getBackendFeatures();
      expect(offered & features.backend.IOTLB_MSG_V2).toBe(features.backend.IOTLB_MSG_V2);
      if (os.release().startsWith('6.1.')) expect(offered).toBe(0x2n);
      r.net.setBackendFeatures(features.backend.IOTLB_MSG_V2);
      expect(r.net.getBackendFeatures()).toBe(offered);
      const missing = [features.backend.IOTLB_BATCH, features.backend.IOTLB_ASID, features.backend.SUSPEND].find((b) => (offered & b) === 0n)!;
      const err = thrown(() => r.net.setBackendFeatures(missing));
      expect(err).toMatchObject({ code: 'ENOTSUP', errno: EOPNOTSUPP, syscall: 'ioctl(VHOST_SET_BACKEND_FEATURES)' });
    });
  });

  describe('vring state', () => {
    test('GET_VRING_BASE returns the base set before, per queue', () => {
      r.net.setVringBase(0, 1234);
      r.net.setVringBase(1, 65535);
      expect(r.net.getVringBase(0)).toBe(1234);
      expect(r.net.getVringBase(1)).toBe(65535);
      r.net.setVringBase(0, 0);
      expect(r.net.getVringBase(0)).toBe(0);
    });

    test('a split-ring base above 0xffff fails with EINVAL', () => {
      expectErrno(() => r.net.setVringBase(0, 0x10000), 'EINVAL', 'ioctl(VHOST_SET_VRING_BASE)');
      expect(r.net.getVringBase(0)).toBe(0);
    });

    test('busyloop timeout reads back per queue', () => {
      expect(r.net.getVringBusyloopTimeout(0)).toBe(0);
      r.net.setVringBusyloopTimeout(0, 50);
      r.net.setVringBusyloopTimeout(1, 0xffff_ffff);
      expect(r.net.getVringBusyloopTimeout(0)).toBe(50);
      expect(r.net.getVringBusyloopTimeout(1)).toBe(0xffff_ffff);
    });

    test('vring endian: reads back, or ENOTTY for both SET and GET without CONFIG_VHOST_CROSS_ENDIAN_LEGACY', () => {
      let setErr: ReturnType<typeof thrown> | undefined;
      try {
        r.net.setVringEndian(0, 'big');
      } catch (err) {
        setErr = err as ReturnType<typeof thrown>;
      }
      if (setErr) {
        // Debian's 6.1 is built without it (measured)
        expect({ code: setErr.code, syscall: setErr.syscall }).toEqual({ code: 'ENOTTY', syscall: 'ioctl(VHOST_SET_VRING_ENDIAN)' });
        expectErrno(() => r.net.getVringEndian(0), 'ENOTTY', 'ioctl(VHOST_GET_VRING_ENDIAN)');
      } else {
        expect(r.net.getVringEndian(0)).toBe('big');
        r.net.setVringEndian(0, 'little');
        expect(r.net.getVringEndian(0)).toBe('little');
      }
    });

    test('SET_VRING_NUM takes powers of two up to 32768, EINVAL otherwise', () => {
      r.net.setVringNum(0, 1);
      r.net.setVringNum(0, 32768);
      expectErrno(() => r.net.setVringNum(0, 3), 'EINVAL', 'ioctl(VHOST_SET_VRING_NUM)');
      expectErrno(() => r.net.setVringNum(0, 0), 'EINVAL', 'ioctl(VHOST_SET_VRING_NUM)');
      expectErrno(() => r.net.setVringNum(0, 65536), 'EINVAL', 'ioctl(VHOST_SET_VRING_NUM)');
    });

    test('queue index 2 (vhost-net has 2 queues) fails with ENOBUFS', () => {
      expectErrno(() => r.net.setVringNum(2, QUEUE_SIZE), 'ENOBUFS', 'ioctl(VHOST_SET_VRING_NUM)');
      expectErrno(() => r.net.getVringBase(2), 'ENOBUFS', 'ioctl(VHOST_GET_VRING_BASE)');
      expectErrno(() => r.net.setVringKick(2, null), 'ENOBUFS', 'ioctl(VHOST_SET_VRING_KICK)');
      expectErrno(() => r.net.setBackend(2, null), 'ENOBUFS', 'ioctl(VHOST_NET_SET_BACKEND)');
    });

    test('SET_VRING_ADDR: avail must be 2-aligned and used 4-aligned (EINVAL), unknown flags EOPNOTSUPP', () => {
      const ring = r.rings[0];
      const addr = { desc: r.mem.translate(ring.desc), avail: r.mem.translate(ring.avail), used: r.mem.translate(ring.used) };
      r.net.setVringAddr(0, addr);
      expectErrno(() => r.net.setVringAddr(0, { ...addr, avail: addr.avail + 1n }), 'EINVAL', 'ioctl(VHOST_SET_VRING_ADDR)');
      expectErrno(() => r.net.setVringAddr(0, { ...addr, used: addr.used + 2n }), 'EINVAL', 'ioctl(VHOST_SET_VRING_ADDR)');
      expect(thrown(() => r.net.setVringAddr(0, { ...addr, flags: 2 })).code).toBe('ENOTSUP');
    });

    test('kick, call and err take an eventfd or null; another file is EINVAL, a closed number EBADF', () => {
      const devNull = VhostNet.open('/dev/null'); // an open fd that is not an eventfd
      track(devNull);
      for (const [set, name] of [
        [(q: number, fd: EventFd | number | null) => r.net.setVringKick(q, fd), 'VHOST_SET_VRING_KICK'],
        [(q: number, fd: EventFd | number | null) => r.net.setVringCall(q, fd), 'VHOST_SET_VRING_CALL'],
        [(q: number, fd: EventFd | number | null) => r.net.setVringErr(q, fd), 'VHOST_SET_VRING_ERR'],
      ] as const) {
        set(0, r.kick[0]);
        set(1, r.call[1].fd); // a raw fd number
        set(0, null);
        expectErrno(() => set(0, devNull.fd), 'EINVAL', `ioctl(${name})`);
        expectErrno(() => set(0, 0x7fff_0000), 'EBADF', `ioctl(${name})`);
      }
    });

    test('log fd takes an eventfd or null (EINVAL otherwise); log base any user address', () => {
      r.net.setLogFd(r.call[0]);
      r.net.setLogFd(null);
      const devNull = VhostNet.open('/dev/null');
      track(devNull);
      expectErrno(() => r.net.setLogFd(devNull.fd), 'EINVAL', 'ioctl(VHOST_SET_LOG_FD)');
      r.net.setLogBase(r.mem.regions[0].hva);
    });
  });

  describe('memory table', () => {
    test('takes up to max_mem_regions regions (64 on 6.1); one more fails with E2BIG', () => {
      const max = maxMemRegions();
      if (os.release().startsWith('6.1.')) expect(max).toBe(64);
      const hva = r.mem.regions[0].hva;
      const regions = (n: number) => Array.from({ length: n }, (_, i) => ({ gpa: BigInt(i) << 12n, size: 4096n, hva: hva + (BigInt(i % 256) << 12n) }));
      r.net.setMemTable(regions(max));
      expectErrno(() => r.net.setMemTable(regions(max + 1)), 'E2BIG', 'ioctl(VHOST_SET_MEM_TABLE)');
      r.net.setMemTable([]);
    });

    test('a region outside user space is refused (EFAULT) only while a ring is attached (measured on 6.1)', () => {
      const kernelSpace = [{ gpa: 0n, size: 4096n, hva: 0xffff_8880_0000_0000n }];
      r.net.setMemTable(kernelSpace); // no active ring: checked when one is attached
      r.net.setMemTable(r.mem);
      const tap = Tap.create({ name: 'vhn%d' });
      track(tap);
      setupRing(r, 0);
      r.net.setBackend(0, tap);
      expectErrno(() => r.net.setMemTable(kernelSpace), 'EFAULT', 'ioctl(VHOST_SET_MEM_TABLE)');
      r.net.setBackend(0, null);
      r.net.setMemTable(kernelSpace);
    });
  });

  describe('backend', () => {
    test('an fd that is not a tap or packet socket fails with ENOTSOCK', () => {
      setupRing(r, 0);
      const err = thrown(() => r.net.setBackend(0, r.kick[1]));
      expect(err).toMatchObject({ code: 'ENOTSOCK', syscall: 'ioctl(VHOST_NET_SET_BACKEND)', path: '/dev/vhost-net' });
    });

    test('without a memory table even detaching fails with EFAULT (measured on 6.1)', () => {
      const net = VhostNet.open();
      track(net);
      net.setOwner();
      expectErrno(() => net.setBackend(0, null), 'EFAULT', 'ioctl(VHOST_NET_SET_BACKEND)');
      net.setMemTable([]);
      net.setBackend(0, null);
    });

    test('attaching a tap to a ring whose used ring is not mapped fails with EFAULT', () => {
      const tap = Tap.create({ name: 'vhn%d' });
      track(tap);
      r.net.setVringNum(0, QUEUE_SIZE);
      r.net.setVringAddr(0, { desc: 0x1000n, avail: 0x2000n, used: 0x3000n }); // nothing is mapped there
      expectErrno(() => r.net.setBackend(0, tap), 'EFAULT', 'ioctl(VHOST_NET_SET_BACKEND)');
    });

    test('while a tap is attached: NUM and BASE fail with EBUSY, ADDR is access-checked; after detach they work', () => {
      const tap = Tap.create({ name: 'vhn%d' });
      track(tap);
      setupRing(r, 0);
      r.net.setVringBase(0, 7);
      r.net.setBackend(0, tap);
      expectErrno(() => r.net.setVringNum(0, 128), 'EBUSY', 'ioctl(VHOST_SET_VRING_NUM)');
      expectErrno(() => r.net.setVringBase(0, 1), 'EBUSY', 'ioctl(VHOST_SET_VRING_BASE)');
      expect(r.net.getVringBase(0)).toBe(7);
      const ring = r.rings[0];
      const addr = { desc: r.mem.translate(ring.desc), avail: r.mem.translate(ring.avail), used: r.mem.translate(ring.used) };
      expectErrno(() => r.net.setVringAddr(0, { ...addr, desc: 0xffff_8880_0000_0000n }), 'EINVAL', 'ioctl(VHOST_SET_VRING_ADDR)');
      r.net.setVringAddr(0, addr);
      r.net.setBackend(0, null);
      r.net.setVringNum(0, 128);
      r.net.setVringBase(0, 1);
      expect(r.net.getVringBase(0)).toBe(1);
    });

    test('with LOG_ALL and an attached ring, a log base outside user space fails with EFAULT', () => {
      const tap = Tap.create({ name: 'vhn%d' });
      track(tap);
      setupRing(r, 0);
      r.net.setBackend(0, tap);
      r.net.setFeatures(features.ring.VERSION_1 | features.vhost.LOG_ALL);
      expectErrno(() => r.net.setLogBase(0xffff_8880_0000_0000n), 'EFAULT', 'ioctl(VHOST_SET_LOG_BASE)');
      r.net.setLogBase(r.mem.translate(0x80000n));
      r.net.setBackend(0, null);
    });

    test('a fully set up TX ring sends a frame from guest memory to the tap', async () => {
      const tap = Tap.create({ name: 'vhn%d', vnetHdrSize: 12, up: true });
      track(tap);
      const rxPackets = () => linkStat(tap.name, 'rx_packets');
      r.net.setFeatures(features.ring.VERSION_1); // 12-byte virtio_net_hdr, supplied by the "guest" and parsed by the tap
      const TX = 1;
      setupRing(r, TX);
      r.net.setBackend(TX, tap);

      // one descriptor: virtio_net_hdr (zeros: no offloads) + a 60-byte broadcast frame
      const ring = r.rings[TX];
      const buf = 0x40000n;
      const frame = r.mem.view(buf, 72);
      frame.fill(0);
      frame.fill(0xff, 12, 18); // destination: broadcast
      frame.set([0x02, 0, 0, 0, 0, 1], 18); // source: a local MAC
      frame.set([0x88, 0xb5], 24); // EtherType for local experiments
      const desc = dataView(r.mem, ring.desc, 16);
      desc.setBigUint64(0, buf, true); // guest-physical: translated through the memory table
      desc.setUint32(8, 72, true);
      desc.setUint16(12, 0, true);
      const avail = dataView(r.mem, ring.avail, 6);
      avail.setUint16(4, 0, true); // ring[0] = descriptor 0
      avail.setUint16(2, 1, true); // idx = 1
      const used = dataView(r.mem, ring.used, 12);

      const before = rxPackets();
      r.kick[TX].write(1n);
      await waitFor('the used ring to advance', () => used.getUint16(2, true) === 1);
      expect(used.getUint32(4, true)).toBe(0); // id of the used descriptor
      await waitFor('the call eventfd', () => r.call[TX].read() !== null);
      await waitFor('the tap to count the frame', () => rxPackets() === before + 1);
      expect(r.net.getVringBase(TX)).toBe(1);
      r.net.setBackend(TX, null);
    });
  });
});
