// VhostNet.builder() on the real kernel: the order of the ioctls, what the
// kernel and tap hold afterwards, stop/restore through a real TX datapath,
// and every bring-up step that the kernel can be made to refuse, with the
// step, the code and the fd count after rollback.
import * as fs from 'node:fs';
import type { QueueSpec } from '../../../lib/vhost/plan';
import { EventFd } from '../../../lib/core/eventfd';
import { features } from '../../../lib/core/features';
import { GuestMemory } from '../../../lib/core/memory';
import type { RunningVhostNet } from '../../../lib/vhost/net';
import { Tap } from '../../../lib/netdev/tap';
import { VhostNet } from '../../../lib/vhost/net';
import { describeKernel, expectStepFailure, openFdCount, ringAt, sleep, thrown, waitFor, closeAfterEach, type StepError } from '../../support/helpers';
import { linkStat, postTxFrame } from '../../support/net-helpers';

const { ring, net, vhost } = features;
/** What a Linux guest acks on a virtio-net device with these offers (device-only bits included). */
const LINUX_ACKED =
  net.CSUM | net.GUEST_CSUM | net.MAC | net.GUEST_TSO4 | net.GUEST_TSO6 | net.GUEST_ECN | net.GUEST_UFO | net.HOST_TSO4 |
  net.MRG_RXBUF | net.STATUS | net.CTRL_VQ | net.MQ | ring.RING_INDIRECT_DESC | ring.RING_EVENT_IDX | ring.VERSION_1;
const QSIZE = 256;
const KERNEL_SPACE = 0xffff_8880_0000_0000n;

describeKernel('VhostNet.builder() on the real kernel', ['/dev/vhost-net', '/dev/net/tun'], () => {
  const track = closeAfterEach();

  let mem: GuestMemory;
  beforeEach(() => {
    mem = track(GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] }));
  });

  function queue(q: number, extra: Partial<QueueSpec> = {}): QueueSpec {
    return { size: QSIZE, ...ringAt(q), kick: track(EventFd.create()), call: track(EventFd.create()), err: track(EventFd.create()), ...extra };
  }

  const tap = (opts: Parameters<typeof Tap.create>[0] = {}) => track(Tap.create({ name: 'vhb%d', ...opts }));

  describe('bring-up', () => {
    test('issues the ioctls in QEMU order, backend last, and the kernel holds the result', () => {
      const t = tap();
      const running = track(
        VhostNet.builder()
          .memory(mem)
          .backend(t)
          .features(LINUX_ACKED)
          .queue(0, queue(0, { busyloopTimeout: 50, base: 3 }))
          .queue(1, queue(1, { base: 7 }))
          .start(),
      );
      const q = (i: number) => [`SET_VRING_NUM[${i}]`, `SET_VRING_BASE[${i}]`, `SET_VRING_ADDR[${i}]`, `SET_VRING_KICK[${i}]`, `SET_VRING_CALL[${i}]`, `SET_VRING_ERR[${i}]`];
      expect(running.trace).toEqual([
        'TUNGETIFF', 'open', 'SET_OWNER', 'GET_FEATURES', 'SET_FEATURES', 'SET_MEM_TABLE',
        ...q(0), 'SET_VRING_BUSYLOOP_TIMEOUT[0]', ...q(1),
        'TUNSETVNETHDRSZ', 'TUNSETOFFLOAD', 'NET_SET_BACKEND[0]', 'NET_SET_BACKEND[1]',
      ]);
      expect(running.features).toBe(ring.RING_INDIRECT_DESC | ring.RING_EVENT_IDX | ring.VERSION_1 | net.MRG_RXBUF);
      const dev = running.device;
      expect(dev.getVringBase(0)).toBe(3);
      expect(dev.getVringBase(1)).toBe(7);
      expect(dev.getVringBusyloopTimeout(0)).toBe(50);
      expect(dev.getVringBusyloopTimeout(1)).toBe(0);
      expect(t.vnetHdrSize).toBe(12);
      expect(running.vnetHdrSize).toBe(12);
      expect(running.tapOffload).toBe(0x1f); // CSUM | TSO4 | TSO6 | TSO_ECN | UFO, accepted by the tap
      // both rings have the tap attached: the kernel refuses to resize them
      for (const i of [0, 1]) expect(thrown(() => dev.setVringNum(i, 128)).code).toBe('EBUSY');
      expect(thrown(() => dev.setOwner()).code).toBe('EBUSY');
    });

    test('a legacy guest (no VERSION_1, no MRG_RXBUF) gets a 10-byte header on the tap', () => {
      const t = tap();
      expect(t.vnetHdrSize).toBe(12);
      track(VhostNet.builder().memory(mem).backend(t).features(net.CSUM | ring.RING_EVENT_IDX).queue(1, queue(1)).start());
      expect(t.vnetHdrSize).toBe(10);
    });

    test('a tap without vnet header: vhost gets VHOST_NET_F_VIRTIO_NET_HDR and the tap is left alone', () => {
      const t = tap({ vnetHdr: false });
      const running = track(VhostNet.builder().memory(mem).backend(t).features(LINUX_ACKED).queue(0, queue(0)).start());
      expect(running.features & vhost.NET_VIRTIO_NET_HDR).toBe(vhost.NET_VIRTIO_NET_HDR);
      expect(running.backendVnetHdr).toBe(false);
      expect(running.tapOffload).toBe(0);
      expect(running.trace).not.toContain('TUNSETVNETHDRSZ');
      expect(thrown(() => running.device.setVringNum(0, 128)).code).toBe('EBUSY');
    });

    test('guest memory in several regions: the table is merged where contiguous and rings are found in any region', () => {
      const two = track(GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 16 }, { gpa: 0x100000n, size: 1 << 20 }] }));
      const spec = queue(1, { desc: 0x100000n, avail: 0x101000n, used: 0x102000n });
      const running = track(VhostNet.builder().memory(two).backend(tap()).features(ring.VERSION_1).queue(1, spec).start());
      expect(thrown(() => running.device.setVringNum(1, 128)).code).toBe('EBUSY');
    });

    test('no backend: the rings are set up but idle; attachBackend() attaches and configures the tap later', () => {
      const running = track(VhostNet.builder().memory(mem).features(ring.VERSION_1 | ring.RING_EVENT_IDX).queue(0, queue(0)).queue(1, queue(1)).start());
      expect(running.trace).not.toContain('NET_SET_BACKEND[0]');
      running.device.setVringNum(0, QSIZE); // no backend: not busy
      const t = tap({ vnetHdrSize: 10 });
      running.attachBackend(t);
      expect(running.backendAttached).toBe(true);
      expect(t.vnetHdrSize).toBe(12);
      expect(thrown(() => running.device.setVringNum(0, QSIZE)).code).toBe('EBUSY');
      running.detachBackend();
      running.device.setVringNum(0, QSIZE);
    });
  });

  describe('stop, restore, close', () => {
    test('stop() detaches the backend and returns the bases the kernel holds; restoring them round-trips', () => {
      const t = tap();
      const first = track(VhostNet.builder().memory(mem).backend(t).features(LINUX_ACKED).queue(0, queue(0, { base: 1234 })).queue(1, queue(1, { base: 65535 })).start());
      const state = first.stop();
      expect(state).toEqual({ queues: [{ index: 0, base: 1234 }, { index: 1, base: 65535 }] });
      expect(first.running).toBe(false);
      first.device.setVringNum(0, QSIZE); // detached: no longer busy
      first.close();
      const second = track(
        VhostNet.builder().memory(mem).backend(t).features(LINUX_ACKED)
          .queue(0, queue(0, { base: state.queues[0].base }))
          .queue(1, queue(1, { base: state.queues[1].base }))
          .start(),
      );
      expect([second.device.getVringBase(0), second.device.getVringBase(1)]).toEqual([1234, 65535]);
      expect(second.stop()).toEqual(state);
    });

    test('stop mid-stream and resume on a new device: each buffer is sent exactly once', async () => {
      const t = tap({ up: true });
      const rxPackets = () => linkStat(t.name, 'rx_packets');
      const TX = 1;
      const r = ringAt(TX);
      const usedView = () => { const b = mem.view(r.used, 4 + 8 * QSIZE); return new DataView(b.buffer, b.byteOffset, b.byteLength); };
      // descriptor d: a 12-byte virtio_net_hdr (zeros) + a 60-byte broadcast frame at 0x40000 + 0x100 * d
      const post = (d: number) => postTxFrame(mem, r, QSIZE, d);
      const start = (base: number) => {
        const kick = track(EventFd.create());
        const call = track(EventFd.create());
        return { kick, call, dev: track(VhostNet.builder().memory(mem).backend(t).features(ring.VERSION_1).queue(TX, { size: QSIZE, ...r, kick, call, base }).start()) };
      };

      const before = rxPackets();
      const a = start(0);
      post(0);
      a.kick.write(1n);
      await waitFor('the first frame', () => usedView().getUint16(2, true) === 1 && rxPackets() === before + 1);
      const state = a.dev.stop();
      expect(state).toEqual({ queues: [{ index: TX, base: 1 }] });
      post(1); // posted while no device runs the ring
      a.dev.close();

      const b = start(state.queues[0].base);
      b.kick.write(1n);
      await waitFor('the second frame', () => usedView().getUint16(2, true) === 2);
      await waitFor('the tap to count it', () => rxPackets() === before + 2);
      expect(usedView().getUint32(4 + 8, true)).toBe(1); // used[1] is descriptor 1
      await sleep(100);
      expect(rxPackets()).toBe(before + 2); // nothing sent twice
      expect(b.dev.stop().queues[0].base).toBe(2);
    });

    test('close() of a running device stops and closes it; every fd is released; then ERR_VHOST_CLOSED', () => {
      const t = tap();
      const specs = [queue(0), queue(1)];
      const before = openFdCount();
      const running = VhostNet.builder().memory(mem).backend(t).features(LINUX_ACKED).queue(0, specs[0]).queue(1, specs[1]).start();
      expect(openFdCount()).toBe(before + 1);
      const fd = running.fd;
      running.close();
      running.close();
      expect(openFdCount()).toBe(before);
      expect(running.device.closed).toBe(true);
      expect(fs.existsSync(`/proc/self/fd/${fd}`) && fs.readlinkSync(`/proc/self/fd/${fd}`) === '/dev/vhost-net').toBe(false);
      for (const call of [() => running.stop(), () => running.enableDirtyLog(), () => running.attachBackend(t), () => running.device.getVringBase(0)]) {
        expect(thrown(call).code).toBe('ERR_VHOST_CLOSED');
      }
    });

    test('`using` disposes a running device', () => {
      const spec = queue(1);
      const before = openFdCount();
      {
        using running = VhostNet.builder().memory(mem).features(ring.VERSION_1).queue(1, spec).start();
        expect(running.running).toBe(true);
      }
      expect(openFdCount()).toBe(before);
    });

    test('a stopped device can be built on again ({ owned: true }) with the saved bases', () => {
      const t = tap();
      const first = VhostNet.builder().memory(mem).backend(t).features(ring.VERSION_1).queue(0, queue(0, { base: 40 })).start();
      const state = first.stop();
      const dev = first.device;
      const again = track(VhostNet.builder().device(dev, { owned: true }).memory(mem).backend(t).features(ring.VERSION_1).queue(0, queue(0, { base: state.queues[0].base })).start());
      expect(again.trace[0]).toBe('TUNGETIFF');
      expect(again.trace).not.toContain('SET_OWNER');
      expect(dev.getVringBase(0)).toBe(40);
      expect(thrown(() => dev.setVringNum(0, QSIZE)).code).toBe('EBUSY');
    });
  });

  describe('rollback: each step the kernel can refuse, for real', () => {
    test('open: a missing device node (ENOENT)', () => {
      const spec = queue(0);
      const err = expectStepFailure(() => VhostNet.builder().device('/dev/vhost-net-missing').memory(mem).features(ring.VERSION_1).queue(0, spec).start(), 'open', 'ENOENT');
      expect(err.hint).toMatch(/modprobe vhost_net/);
    });

    test('SET_OWNER: a device this process already owns (EBUSY); the caller keeps its device', () => {
      const dev = track(VhostNet.open());
      dev.setOwner();
      const spec = queue(0);
      const err = expectStepFailure(() => VhostNet.builder().device(dev).memory(mem).features(ring.VERSION_1).queue(0, spec).start(), 'SET_OWNER', 'EBUSY');
      expect(err.syscall).toBe('ioctl(VHOST_SET_OWNER)');
      expect(err.trace).toEqual(['SET_OWNER']);
      expect(dev.closed).toBe(false);
    });

    test('SET_FEATURES: exact bits with one the device does not offer (EOPNOTSUPP, named ENOTSUP by libuv)', () => {
      const spec = queue(0);
      const err = expectStepFailure(() => VhostNet.builder().memory(mem).vhostFeatures(ring.VERSION_1 | net.CSUM).queue(0, spec).start(), 'SET_FEATURES', 'ENOTSUP');
      expect(err.syscall).toBe('ioctl(VHOST_SET_FEATURES)');
      expect(err.path).toBe('/dev/vhost-net');
    });

    test('SET_FEATURES: a guest that acked packed rings, which vhost does not offer (ERR_VHOST_UNSUPPORTED)', () => {
      const spec = queue(0);
      const err = expectStepFailure(() => VhostNet.builder().memory(mem).features(ring.VERSION_1 | ring.RING_PACKED).queue(0, spec).start(), 'SET_FEATURES', 'ERR_VHOST_UNSUPPORTED');
      expect(err.trace).toEqual(['open', 'SET_OWNER', 'GET_FEATURES']);
    });

    /** An owned device whose ring 0 runs with a tap attached. */
    function busyDevice(): VhostNet {
      const dev = track(VhostNet.open());
      dev.setOwner();
      dev.setMemTable(mem);
      const r = ringAt(0);
      dev.setVringNum(0, QSIZE);
      dev.setVringAddr(0, { desc: mem.translate(r.desc), avail: mem.translate(r.avail), used: mem.translate(r.used) });
      dev.setBackend(0, tap());
      return dev;
    }

    test('SET_MEM_TABLE: memory outside user space while a ring is attached (EFAULT)', () => {
      const dev = busyDevice();
      const kernelMem = { regions: [{ gpa: 0n, size: 1n << 20n, hva: KERNEL_SPACE }] };
      const spec = queue(1);
      const err = expectStepFailure(() => VhostNet.builder().device(dev, { owned: true }).memory(kernelMem).features(ring.VERSION_1).queue(1, spec).start(), 'SET_MEM_TABLE', 'EFAULT');
      expect(err.syscall).toBe('ioctl(VHOST_SET_MEM_TABLE)');
      expect(dev.closed).toBe(false);
    });

    test('SET_VRING_NUM: a ring with a backend attached (EBUSY)', () => {
      const dev = busyDevice();
      const spec = queue(0);
      const err = expectStepFailure(() => VhostNet.builder().device(dev, { owned: true }).memory(mem).features(ring.VERSION_1).queue(0, spec).start(), 'SET_VRING_NUM', 'EBUSY', 0);
      expect(err.syscall).toBe('ioctl(VHOST_SET_VRING_NUM)');
    });

    test('SET_VRING_ENDIAN: asked for on a kernel without cross-endian support (ENOTTY), else read back', () => {
      const spec = queue(0, { endian: 'big' });
      const before = openFdCount();
      let running: RunningVhostNet | undefined;
      let err: StepError | undefined;
      try {
        running = track(VhostNet.builder().memory(mem).features(ring.RING_EVENT_IDX).queue(0, spec).start());
      } catch (e) {
        err = e as StepError;
      }
      if (err) {
        // Debian's 6.1: CONFIG_VHOST_CROSS_ENDIAN_LEGACY is off (measured)
        expect({ step: err.step, code: err.code, queue: err.queue, syscall: err.syscall }).toEqual({ step: 'SET_VRING_ENDIAN', code: 'ENOTTY', queue: 0, syscall: 'ioctl(VHOST_SET_VRING_ENDIAN)' });
        expect(openFdCount()).toBe(before);
      } else {
        expect(running!.device.getVringEndian(0)).toBe('big');
      }
    });

    test.each([
      ['kick', 'SET_VRING_KICK'],
      ['call', 'SET_VRING_CALL'],
      ['err', 'SET_VRING_ERR'],
    ] as const)('%s: an fd that is not an eventfd fails at %s (EINVAL)', (which, step) => {
      const notEventfd = track(VhostNet.open('/dev/null'));
      const spec = queue(1, { [which]: notEventfd.fd });
      const err = expectStepFailure(() => VhostNet.builder().memory(mem).features(ring.VERSION_1).queue(1, spec).start(), step, 'EINVAL', 1);
      expect(err.syscall).toBe(`ioctl(VHOST_${step})`);
    });

    test('NET_SET_BACKEND: a backend fd that is not a socket (ENOTSOCK)', () => {
      const notSocket = track(EventFd.create());
      const spec = queue(0);
      const err = expectStepFailure(() => VhostNet.builder().memory(mem).backend(notSocket).features(ring.VERSION_1).queue(0, spec).start(), 'NET_SET_BACKEND', 'ENOTSOCK', 0);
      expect(err.syscall).toBe('ioctl(VHOST_NET_SET_BACKEND)');
    });

    test('NET_SET_BACKEND: rings in memory that is not mapped (EFAULT when the kernel first touches the used ring)', () => {
      const unmapped = { regions: [{ gpa: 0n, size: 1n << 20n, hva: 0x1000n }] }; // below mmap_min_addr: never mapped
      const t = tap();
      const specs = [queue(0), queue(1)];
      const err = expectStepFailure(() => VhostNet.builder().memory(unmapped).backend(t).features(ring.VERSION_1).queue(0, specs[0]).queue(1, specs[1]).start(), 'NET_SET_BACKEND', 'EFAULT', 0);
      expect(err.trace!.slice(-3)).toEqual(['TUNSETVNETHDRSZ', 'TUNSETOFFLOAD', 'NET_SET_BACKEND[0]']);
    });

    test('validation errors come before any syscall: the fd count does not move and the device is never opened', () => {
      const spec = queue(0, { used: 0xffc00n }); // 2052 bytes of used ring from 0xffc00 cross the end of the 1 MiB region
      const before = openFdCount();
      const err = thrown(() => VhostNet.builder().memory(mem).features(ring.VERSION_1).queue(0, spec).start()) as StepError & { argument?: string };
      expect({ code: err.code, argument: err.argument, step: err.step }).toEqual({ code: 'ERR_VHOST_OUT_OF_RANGE', argument: 'queue(0).used', step: undefined });
      expect(openFdCount()).toBe(before);
    });

    test('many failed and successful bring-ups leave no fd behind', () => {
      const t = tap();
      const specs = [queue(0), queue(1)];
      const badKick = queue(1, { kick: 0x7fff_0000 }); // EBADF
      const before = openFdCount();
      for (let i = 0; i < 50; i++) {
        VhostNet.builder().memory(mem).backend(t).features(LINUX_ACKED).queue(0, specs[0]).queue(1, specs[1]).start().close();
        expect(thrown(() => VhostNet.builder().memory(mem).features(ring.VERSION_1).queue(1, badKick).start()).code).toBe('EBADF');
      }
      expect(openFdCount()).toBe(before);
    });
  });
});
