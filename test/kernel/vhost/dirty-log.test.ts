// Dirty logging on the real kernel: the wiring is accepted (and LOG_ALL is
// really on, as the kernel's memory-table check shows), and vhost writing the
// used ring after a TX frame marks exactly that page dirty.
import type { QueueSpec } from '../../../lib/vhost/plan';
import { EventFd } from '../../../lib/core/eventfd';
import { features } from '../../../lib/core/features';
import { GuestMemory } from '../../../lib/core/memory';
import { Tap } from '../../../lib/netdev/tap';
import { VhostNet } from '../../../lib/vhost/net';
import { VhostVsock } from '../../../lib/vhost/vsock';
import { describeKernel, ringAt, thrown, waitFor, closeAfterEach } from '../../support/helpers';
import { linkStat, postTxFrame } from '../../support/net-helpers';

const { ring } = features;
const QSIZE = 256;
const TX = 1;
// TX ring: desc 0x20000, avail 0x21000, used 0x22000 (page 0x22)
const TX_RING = { desc: 0x20000n, avail: 0x21000n, used: 0x22000n };
const USED_PAGE = Number(TX_RING.used >> 12n);

describeKernel('dirty logging on the real kernel', ['/dev/vhost-net', '/dev/vhost-vsock', '/dev/net/tun'], () => {
  const track = closeAfterEach();

  let mem: GuestMemory;
  beforeEach(() => {
    mem = track(GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] }));
  });

  const queue = (q: number, ringAddr = ringAt(q)): QueueSpec & { kick: EventFd; call: EventFd } => ({
    size: QSIZE, ...ringAddr, kick: track(EventFd.create()), call: track(EventFd.create()),
  });

  /**
   * A memory table with a region at guest-physical 2^62: its log bits would
   * lie 2^47 bytes past the log base, beyond user space. The kernel checks
   * that only when VHOST_F_LOG_ALL is on (EFAULT), so it shows LOG_ALL's state.
   */
  function farRegionTable() {
    return [
      { gpa: 0n, size: mem.regions[0].size, hva: mem.regions[0].hva },
      { gpa: 1n << 62n, size: 4096n, hva: mem.regions[0].hva },
    ];
  }

  test('vhost-net: the kernel accepts the log base, LOG_ALL and the logged ring addresses; LOG_ALL is really on, then off', () => {
    const tap = track(Tap.create({ name: 'vdl%d' }));
    const running = track(VhostNet.builder().memory(mem).backend(tap).features(ring.VERSION_1).queue(0, queue(0)).queue(1, queue(1)).start());
    running.device.setMemTable(farRegionTable()); // without LOG_ALL: fine
    running.device.setMemTable(mem);
    running.enableDirtyLog();
    expect(running.dirtyLogging).toBe(true);
    expect(thrown(() => running.device.setMemTable(farRegionTable()))).toMatchObject({ code: 'EFAULT', syscall: 'ioctl(VHOST_SET_MEM_TABLE)' });
    running.disableDirtyLog();
    expect(running.dirtyLogging).toBe(false);
    running.device.setMemTable(farRegionTable()); // LOG_ALL off again
  });

  test('vhost-vsock: same wiring on a running vsock device', () => {
    const running = track(VhostVsock.builder().memory(mem).features(ring.VERSION_1).cid('auto', { from: 300_000 }).queue(0, queue(0)).queue(1, queue(1)).start());
    running.enableDirtyLog();
    expect(thrown(() => running.device.setMemTable(farRegionTable())).code).toBe('EFAULT');
    expect(running.readDirtyLog()).toEqual([]); // nothing written: rings idle
    running.disableDirtyLog();
    running.device.setMemTable(farRegionTable());
  });

  test('a TX frame makes vhost write the used ring: exactly its page is dirty, and reading clears it', async () => {
    const tap = track(Tap.create({ name: 'vdl%d', up: true }));
    const rxPackets = () => linkStat(tap.name, 'rx_packets');
    const q = queue(TX, TX_RING);
    const running = track(VhostNet.builder().memory(mem).backend(tap).features(ring.VERSION_1 | ring.RING_EVENT_IDX).queue(TX, q).start());
    const used = (() => { const b = mem.view(TX_RING.used, 8); return new DataView(b.buffer, b.byteOffset, 8); })();
    const post = (d: number) => {
      postTxFrame(mem, TX_RING, QSIZE, d);
      q.kick.write(1n);
    };
    const before = rxPackets();

    // a frame before logging starts leaves no trace in the log
    post(0);
    await waitFor('frame 0', () => used.getUint16(2, true) === 1 && rxPackets() === before + 1);
    running.enableDirtyLog();
    expect(running.readDirtyLog()).toEqual([]);

    post(1);
    await waitFor('frame 1', () => used.getUint16(2, true) === 2 && rxPackets() === before + 2);
    // the buffers vhost only read (descriptors, frames at 0x40000) are not dirty; the used ring it wrote is
    await waitFor('the used ring page in the log', () => {
      const pages = running.readDirtyLog();
      if (pages.length === 0) return false;
      expect(pages).toEqual([USED_PAGE]);
      return true;
    });
    expect(running.readDirtyLog()).toEqual([]);

    // stop keeps the log for a final read; a frame processed before stop is in it
    post(2);
    await waitFor('frame 2', () => used.getUint16(2, true) === 3);
    running.stop();
    expect(running.readDirtyLog()).toEqual([USED_PAGE]);
    running.disableDirtyLog();
    expect(running.readDirtyLog()).toEqual([]);
  });
});
