// /dev/vhost-vsock on the real kernel: guest CID rules, starting and stopping
// the rings, the shared vring ioctls, and the IOTLB message protocol.
import * as os from 'node:os';
import { EventFd } from '../../../lib/core/eventfd';
import { features } from '../../../lib/core/features';
import { GuestMemory } from '../../../lib/core/memory';
import { VhostVsock } from '../../../lib/vhost/vsock';
import { layoutSplitRing, type SplitRingLayout } from '../../../lib/virtio/vring';
import { describeKernel, thrown, closeAfterEach, errnoExpecter } from '../../support/helpers';

const QUEUE_SIZE = 256;
const EOPNOTSUPP = -os.constants.errno.EOPNOTSUPP;

const expectErrno = errnoExpecter('/dev/vhost-vsock');

// A CID nobody else in this VM uses.
let nextCid = 1000 + Math.floor(Math.random() * 100_000);
const freshCid = (): number => nextCid++;

describeKernel('vhost-vsock ioctls', ['/dev/vhost-vsock'], () => {
  const track = closeAfterEach();

  /** Opens a device with owner set, 1 MiB of guest memory and rings for both queues at `base` (+0x10000 per queue). */
  function rig(opts: { iommu?: boolean } = {}) {
    const vsock = track(VhostVsock.open());
    const mem = track(GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] }));
    const kick = [track(EventFd.create()), track(EventFd.create())];
    const call = [track(EventFd.create()), track(EventFd.create())];
    vsock.setOwner();
    // With an IOMMU the rings hold I/O virtual addresses translated through
    // IOTLB updates; without, host virtual addresses in this process.
    const base = opts.iommu ? 0x100000n : mem.regions[0].hva;
    if (opts.iommu) {
      vsock.setFeatures(features.ring.VERSION_1 | features.ring.ACCESS_PLATFORM);
      vsock.setMemTable([]); // the kernel wants a memory table even when the IOTLB translates
    } else {
      vsock.setFeatures(features.ring.VERSION_1);
      vsock.setMemTable(mem);
    }
    const rings: SplitRingLayout[] = [0, 1].map((q) => layoutSplitRing(QUEUE_SIZE, base + BigInt(q) * 0x10000n));
    rings.forEach((ring, q) => {
      vsock.setVringNum(q, QUEUE_SIZE);
      vsock.setVringBase(q, 0);
      vsock.setVringAddr(q, { desc: ring.desc, avail: ring.avail, used: ring.used });
      vsock.setVringKick(q, kick[q]);
      vsock.setVringCall(q, call[q]);
    });
    return { vsock, mem, rings, iovaBase: base };
  }

  describe('features', () => {
    test('GET_FEATURES offers the vhost-vsock word (0x33d000002 on 6.1), before SET_OWNER too', () => {
      const vsock = track(VhostVsock.open());
      const offered = vsock.getFeatures();
      expect(offered & features.vsock.SEQPACKET).toBe(features.vsock.SEQPACKET);
      expect(offered & features.ring.VERSION_1).toBe(features.ring.VERSION_1);
      if (os.release().startsWith('6.1.')) expect(offered).toBe(0x33d000002n);
      vsock.setOwner();
      vsock.setFeatures(offered);
    });

    test('a feature not offered fails with EOPNOTSUPP (Node/libuv name it ENOTSUP)', () => {
      const vsock = track(VhostVsock.open());
      vsock.setOwner();
      const missing = features.net.MRG_RXBUF;
      expect(vsock.getFeatures() & missing).toBe(0n);
      const err = thrown(() => vsock.setFeatures(features.ring.VERSION_1 | missing));
      expect(err).toMatchObject({ code: 'ENOTSUP', errno: EOPNOTSUPP, syscall: 'ioctl(VHOST_SET_FEATURES)', path: '/dev/vhost-vsock' });
    });

    test('backend features: IOTLB_MSG_V2 offered and settable, IOTLB_BATCH refused with EOPNOTSUPP', () => {
      const vsock = track(VhostVsock.open());
      vsock.setOwner();
      expect(vsock.getBackendFeatures() & features.backend.IOTLB_MSG_V2).toBe(features.backend.IOTLB_MSG_V2);
      vsock.setBackendFeatures(features.backend.IOTLB_MSG_V2);
      if ((vsock.getBackendFeatures() & features.backend.IOTLB_BATCH) === 0n) {
        expect(thrown(() => vsock.setBackendFeatures(features.backend.IOTLB_BATCH)).code).toBe('ENOTSUP');
      }
    });
  });

  describe('guest CID', () => {
    test.each([
      ['0 (hypervisor)', 0],
      ['1 (local)', 1],
      ['2 (host)', 2],
      ['0xffffffff (any)', 0xffff_ffff],
      ['2^32 (above 32 bits)', 1n << 32n],
    ])('CID %s fails with EINVAL', (_name, cid) => {
      const vsock = track(VhostVsock.open());
      expectErrno(() => vsock.setGuestCid(cid), 'EINVAL', 'ioctl(VHOST_VSOCK_SET_GUEST_CID)');
    });

    test('a CID another device holds fails with EADDRINUSE; the same device may set it again', () => {
      const cid = freshCid();
      const a = track(VhostVsock.open());
      const b = track(VhostVsock.open());
      a.setGuestCid(cid);
      a.setGuestCid(BigInt(cid));
      expectErrno(() => b.setGuestCid(cid), 'EADDRINUSE', 'ioctl(VHOST_VSOCK_SET_GUEST_CID)');
    });

    test('a CID is released when its device closes or takes another CID', () => {
      const cid = freshCid();
      const a = track(VhostVsock.open());
      const b = track(VhostVsock.open());
      a.setGuestCid(cid);
      a.setGuestCid(cid + 100_000); // moves: cid is free again
      b.setGuestCid(cid);
      expectErrno(() => a.setGuestCid(cid), 'EADDRINUSE', 'ioctl(VHOST_VSOCK_SET_GUEST_CID)');
      a.close();
      const c = track(VhostVsock.open());
      c.setGuestCid(cid + 100_000);
    });
  });

  describe('running', () => {
    test('SET_RUNNING starts fully set up rings; while running NUM and BASE fail with EBUSY; stop releases them', () => {
      const { vsock } = rig();
      vsock.setGuestCid(freshCid());
      vsock.setRunning(true);
      expectErrno(() => vsock.setVringNum(0, 128), 'EBUSY', 'ioctl(VHOST_SET_VRING_NUM)');
      expectErrno(() => vsock.setVringBase(1, 5), 'EBUSY', 'ioctl(VHOST_SET_VRING_BASE)');
      vsock.setRunning(true); // already running: no-op
      vsock.setRunning(false);
      vsock.setVringNum(0, 128);
      vsock.setVringBase(1, 5);
      expect(vsock.getVringBase(1)).toBe(5);
    });

    test('SET_RUNNING fails with EFAULT when the used ring is not mapped', () => {
      const vsock = track(VhostVsock.open());
      vsock.setOwner();
      vsock.setMemTable([]);
      vsock.setVringNum(0, QUEUE_SIZE);
      vsock.setVringAddr(0, { desc: 0x1000n, avail: 0x2000n, used: 0x3000n });
      expectErrno(() => vsock.setRunning(true), 'EFAULT', 'ioctl(VHOST_VSOCK_SET_RUNNING)');
    });
  });

  describe('vring state', () => {
    test('base and busyloop timeout read back; num 3 is EINVAL; queue 2 is ENOBUFS', () => {
      const vsock = track(VhostVsock.open());
      vsock.setOwner();
      vsock.setVringBase(0, 42);
      vsock.setVringBase(1, 4242);
      expect([vsock.getVringBase(0), vsock.getVringBase(1)]).toEqual([42, 4242]);
      vsock.setVringBusyloopTimeout(1, 20);
      expect([vsock.getVringBusyloopTimeout(0), vsock.getVringBusyloopTimeout(1)]).toEqual([0, 20]);
      expectErrno(() => vsock.setVringNum(0, 3), 'EINVAL', 'ioctl(VHOST_SET_VRING_NUM)');
      expectErrno(() => vsock.setVringNum(2, QUEUE_SIZE), 'ENOBUFS', 'ioctl(VHOST_SET_VRING_NUM)');
      expectErrno(() => vsock.getVringBase(2), 'ENOBUFS', 'ioctl(VHOST_GET_VRING_BASE)');
    });
  });

  describe('IOTLB', () => {
    test('a ring access through an unmapped IOVA queues a miss; an update answers it', () => {
      const { vsock, mem, rings, iovaBase } = rig({ iommu: true });
      vsock.setBackendFeatures(features.backend.IOTLB_MSG_V2);
      expect(vsock.readIotlbMsg()).toBeNull();
      expectErrno(() => vsock.setRunning(true), 'EFAULT', 'ioctl(VHOST_VSOCK_SET_RUNNING)');
      // starting writes the used ring's flags first: that IOVA missed, read access
      expect(vsock.readIotlbMsg()).toEqual({ type: 'miss', iova: rings[0].used, size: 0n, uaddr: 0n, perm: 'ro', asid: 0 });
      expect(vsock.readIotlbMsg()).toBeNull();

      vsock.sendIotlbMsg({ type: 'update', iova: iovaBase, size: mem.regions[0].size, uaddr: mem.regions[0].hva, perm: 'rw' });
      vsock.setRunning(true);
      expect(vsock.readIotlbMsg()).toBeNull();
      vsock.setRunning(false);

      // invalidating the range makes the next start miss again
      vsock.sendIotlbMsg({ type: 'invalidate', iova: iovaBase, size: mem.regions[0].size });
      expectErrno(() => vsock.setRunning(true), 'EFAULT', 'ioctl(VHOST_VSOCK_SET_RUNNING)');
      expect(vsock.readIotlbMsg()).toMatchObject({ type: 'miss', iova: rings[0].used });
    });

    test('without VHOST_BACKEND_F_IOTLB_MSG_V2 the kernel queues v1 messages, read the same way', () => {
      const { vsock, rings } = rig({ iommu: true });
      expectErrno(() => vsock.setRunning(true), 'EFAULT', 'ioctl(VHOST_VSOCK_SET_RUNNING)');
      expect(vsock.readIotlbMsg()).toEqual({ type: 'miss', iova: rings[0].used, size: 0n, uaddr: 0n, perm: 'ro', asid: 0 });
    });

    test('messages the kernel refuses: no ACCESS_PLATFORM (EFAULT), size 0 (EINVAL), kernel uaddr (EFAULT), batch hints (EFAULT)', () => {
      const plain = track(VhostVsock.open());
      plain.setOwner();
      const update = { type: 'update', iova: 0x100000n, size: 0x1000n, uaddr: 0x7000_0000n, perm: 'rw' } as const;
      expectErrno(() => plain.sendIotlbMsg(update), 'EFAULT', 'write(VHOST_IOTLB_MSG_V2)');

      const { vsock } = rig({ iommu: true });
      vsock.setBackendFeatures(features.backend.IOTLB_MSG_V2);
      vsock.sendIotlbMsg(update);
      expectErrno(() => vsock.sendIotlbMsg({ ...update, size: 0n }), 'EINVAL', 'write(VHOST_IOTLB_MSG_V2)');
      expectErrno(() => vsock.sendIotlbMsg({ ...update, uaddr: 0xffff_8880_0000_0000n }), 'EFAULT', 'write(VHOST_IOTLB_MSG_V2)');
      // vhost-vsock on 6.1 does not offer IOTLB_BATCH, and answers the hints with EFAULT
      if ((vsock.getBackendFeatures() & features.backend.IOTLB_BATCH) === 0n) {
        expectErrno(() => vsock.sendIotlbMsg({ type: 'batch-begin' }), 'EFAULT', 'write(VHOST_IOTLB_MSG_V2)');
      }
    });
  });
});
