// The builders on any host: every validation reason (thrown before any
// syscall), the order of the bring-up steps, rollback and step errors, and
// the running-device lifecycle, driven through a fake device that records
// every call. Real syscalls only where the host allows them: opening a
// missing path, /dev/null standing in for a device (every ioctl ENOTTY),
// eventfds and anonymous memory for the dirty log.
import * as fs from 'node:fs';
import { checkMemory, mergeMemoryRegions, type QueueSpec } from '../../../lib/vhost/plan';
import { kernelMemoryLimits, readMaxMemRegions } from '../../../lib/vhost/kernel/vhost-device';
import { DirtyLog, dirtyLogSize, pagesOfWord } from '../../../lib/vhost/dirty-log';
import { EventFd } from '../../../lib/core/eventfd';
import { features } from '../../../lib/core/features';
import { GuestMemory } from '../../../lib/core/memory';
import { RunningVhostNet, VhostNetBuilder } from '../../../lib/vhost/net';
import type { MemoryLike } from '../../../lib/core/memory';
import { VhostNet } from '../../../lib/vhost/net';
import { VhostVsock } from '../../../lib/vhost/vsock';
import { allocateCid, VhostVsockBuilder } from '../../../lib/vhost/vsock';
import { FakeTransport } from '../../support/fake-transport';
import { openFdCount, thrown } from '../../support/helpers';

type Err = ReturnType<typeof thrown> & { argument?: string; queue?: number; trace?: string[] };

const { ring, net, vhost } = features;
const ACKED = ring.VERSION_1 | ring.RING_EVENT_IDX | net.MRG_RXBUF | net.CSUM | net.MAC;
const NET_OFFER = 0x33d008000n;
const VSOCK_OFFER = 0x33d000002n;
const MiB = 1n << 20n;

/** The fake transport stands in for a vhost device: it records each call and can fail at one. */
class FakeDevice extends FakeTransport {}

const cleanup: { close(): void }[] = [];
function track<T extends { close(): void }>(r: T): T {
  cleanup.push(r);
  return r;
}
afterEach(() => {
  for (const r of cleanup.splice(0).reverse()) r.close();
});

/** One 1 MiB region at gpa 0 (the fake never touches it, so any host address will do). */
const mem1: MemoryLike = { regions: [{ gpa: 0n, size: MiB, hva: 0x7f00_0000_0000n }] };

function eventfds() {
  return { kick: track(EventFd.create()), call: track(EventFd.create()), err: track(EventFd.create()) };
}

/** Queue q of 256 entries at 0x10000 * (q + 1), which fits mem1. */
function queueSpec(q: number, extra: Partial<QueueSpec> = {}): QueueSpec {
  const base = 0x10000n * BigInt(q + 1);
  return { size: 256, desc: base, avail: base + 0x1000n, used: base + 0x2000n, ...eventfds(), ...extra };
}

function netBuilder(fake = new FakeDevice(NET_OFFER)): { b: VhostNetBuilder<FakeDevice>; fake: FakeDevice; opened: () => number } {
  let opens = 0;
  const b = new VhostNetBuilder<FakeDevice>(() => {
    opens++;
    return fake;
  });
  return { b, fake, opened: () => opens };
}

function vsockBuilder(fake = new FakeDevice(VSOCK_OFFER)): { b: VhostVsockBuilder<FakeDevice>; fake: FakeDevice } {
  return { b: new VhostVsockBuilder<FakeDevice>(() => fake), fake };
}

/** A fully configured net builder on a fake device. */
function fullNet(extra: Partial<QueueSpec> = {}) {
  const r = netBuilder();
  r.b.memory(mem1).features(ACKED).queue(0, queueSpec(0, extra)).queue(1, queueSpec(1, extra));
  return r;
}

function fullVsock() {
  const r = vsockBuilder();
  r.b.memory(mem1).features(ring.VERSION_1).cid(42).queue(0, queueSpec(0)).queue(1, queueSpec(1));
  return r;
}

/** Expects a validation error naming `argument`, and that no device call was made. */
function expectInvalid(fn: () => unknown, argument: string | RegExp, code = 'ERR_VHOST_INVALID_ARG', fake?: FakeDevice): Err {
  const err = thrown(fn) as Err;
  expect(err.code).toBe(code);
  if (typeof argument === 'string') expect(err.argument).toBe(argument);
  else expect(err.argument).toMatch(argument);
  expect(err.message).toContain(err.argument);
  expect(err.syscall).toBeUndefined();
  expect(err.step).toBeUndefined();
  if (fake) expect(fake.calls).toEqual([]);
  return err;
}

describe('validation before any syscall', () => {
  test('memory() is required', () => {
    const { b, fake, opened } = netBuilder();
    b.features(ACKED).queue(0, queueSpec(0));
    expectInvalid(() => b.start(), 'memory', undefined, fake);
    expect(opened()).toBe(0);
  });

  test('memory must look like a GuestMemory', () => {
    const { b } = netBuilder();
    expectInvalid(() => b.memory(null as never), 'memory');
    expectInvalid(() => b.memory([] as never), 'memory');
  });

  test('a closed GuestMemory is ERR_VHOST_CLOSED at start', () => {
    const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] });
    const { b, fake } = netBuilder();
    b.memory(mem).features(ACKED).queue(0, queueSpec(0));
    mem.close();
    expect(thrown(() => b.start()).code).toBe('ERR_VHOST_CLOSED');
    expect(fake.calls).toEqual([]);
  });

  test('features() is required, and cannot be combined with vhostFeatures()', () => {
    const { b, fake } = netBuilder();
    b.memory(mem1).queue(0, queueSpec(0));
    expectInvalid(() => b.start(), 'features', undefined, fake);
    b.features(ACKED);
    expectInvalid(() => b.vhostFeatures(ring.VERSION_1), 'vhostFeatures');
    const other = netBuilder().b.vhostFeatures(ring.VERSION_1);
    expectInvalid(() => other.features(ACKED), 'features');
  });

  test.each([
    ['a number', 3, 'ERR_VHOST_INVALID_ARG'],
    ['negative', -1n, 'ERR_VHOST_OUT_OF_RANGE'],
    ['above 64 bits', 1n << 64n, 'ERR_VHOST_OUT_OF_RANGE'],
  ])('features rejects %s', (_name, bits, code) => {
    expectInvalid(() => netBuilder().b.features(bits as bigint), 'features', code);
  });

  test('at least one queue is required; vsock needs both', () => {
    const { b, fake } = netBuilder();
    b.memory(mem1).features(ACKED);
    expectInvalid(() => b.start(), 'queue', undefined, fake);
    const v = vsockBuilder();
    v.b.memory(mem1).features(ring.VERSION_1).cid(3).queue(1, queueSpec(1));
    expectInvalid(() => v.b.start(), 'queue(0)', undefined, v.fake);
  });

  test.each([2, -1, 1.5, '0'])('queue index %p is refused (0 and 1 only, one device per queue pair)', (index) => {
    expectInvalid(() => netBuilder().b.queue(index as number, queueSpec(0)), 'queue index', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => vsockBuilder().b.queue(index as number, queueSpec(0)), 'queue index', 'ERR_VHOST_OUT_OF_RANGE');
  });

  test('a queue index configured twice is refused', () => {
    const { b } = netBuilder();
    b.queue(0, queueSpec(0));
    const err = expectInvalid(() => b.queue(0, queueSpec(1)), 'queue index');
    expect(err.message).toMatch(/twice/);
  });

  test.each([
    [0, 'ERR_VHOST_OUT_OF_RANGE'],
    [3, 'ERR_VHOST_INVALID_ARG'],
    [384, 'ERR_VHOST_INVALID_ARG'],
    [65536, 'ERR_VHOST_OUT_OF_RANGE'],
    [2.5, 'ERR_VHOST_INVALID_ARG'],
  ])('queue size %p is refused (a power of two up to 32768)', (size, code) => {
    expectInvalid(() => netBuilder().b.queue(0, queueSpec(0, { size })), 'queue(0).size', code);
  });

  test('queue sizes 1 and 32768 are accepted', () => {
    netBuilder().b.queue(0, queueSpec(0, { size: 1 }));
    netBuilder().b.queue(1, queueSpec(1, { size: 32768 }));
  });

  test.each([
    ['desc', 0x10008n, 16],
    ['avail', 0x11001n, 2],
    ['used', 0x12002n, 4],
  ] as const)('%s must be %i-aligned', (part, addr, align) => {
    const err = expectInvalid(() => netBuilder().b.queue(0, queueSpec(0, { [part]: addr })), `queue(0).${part}`);
    expect(err.message).toContain(`${align}-aligned`);
  });

  test('ring addresses must be bigints or safe integers', () => {
    expectInvalid(() => netBuilder().b.queue(0, queueSpec(0, { desc: '0x1000' as never })), 'queue(0).desc');
    expectInvalid(() => netBuilder().b.queue(0, queueSpec(0, { used: -4n })), 'queue(0).used', 'ERR_VHOST_OUT_OF_RANGE');
  });

  test('an unknown queue option is refused', () => {
    expectInvalid(() => netBuilder().b.queue(0, { ...queueSpec(0), num: 256 } as never), 'queue(0).num');
  });

  describe('rings against memory', () => {
    // 256 entries with EVENT_IDX: desc 4096 bytes, avail 4 + 512 + 2 = 518, used 4 + 2048 + 2 = 2054
    const REGION_END = 0x20000n;
    const mem: MemoryLike = { regions: [{ gpa: 0n, size: REGION_END, hva: 0x7f00_0000_0000n }] };

    function startWith(spec: Partial<QueueSpec>, acked = ACKED) {
      const { b, fake } = netBuilder();
      b.memory(mem).features(acked).queue(0, queueSpec(0, spec));
      return { run: () => b.start(), fake };
    }

    // With EVENT_IDX a used ring is 6 + 8n bytes, never a multiple of 4; so the used cases go without it (4 + 8n).
    const NO_EVENT_IDX = ring.VERSION_1;
    test.each([
      ['desc', REGION_END - 4096n, ACKED],
      ['avail', REGION_END - 518n, ACKED],
      ['used', REGION_END - 2052n, NO_EVENT_IDX],
    ] as const)('a %s part that ends exactly at the end of the region is valid', (part, addr, acked) => {
      const { run, fake } = startWith({ [part]: addr }, acked);
      run();
      expect(fake.calls).toContain('SET_VRING_ADDR[0]');
    });

    test.each([
      ['desc', REGION_END - 4096n + 16n, ACKED],
      ['avail', REGION_END - 518n + 2n, ACKED],
      ['used', REGION_END - 2052n + 4n, NO_EVENT_IDX],
    ] as const)('a %s part one aligned step over the end of the region is refused', (part, addr, acked) => {
      const { run, fake } = startWith({ [part]: addr }, acked);
      const err = expectInvalid(run, `queue(0).${part}`, 'ERR_VHOST_OUT_OF_RANGE', fake);
      expect(err.message).toMatch(/crosses the end of its memory region at 0x20000/);
    });

    test('the ring sizes follow EVENT_IDX: the used ring that fits without it is 2 bytes too long with it', () => {
      startWith({ used: REGION_END - 2052n }, NO_EVENT_IDX).run();
      const withIdx = startWith({ used: REGION_END - 2052n });
      expectInvalid(withIdx.run, 'queue(0).used', 'ERR_VHOST_OUT_OF_RANGE', withIdx.fake);
    });

    test('a ring outside every region is refused', () => {
      const { run, fake } = startWith({ desc: 0x100000n });
      const err = expectInvalid(run, 'queue(0).desc', 'ERR_VHOST_OUT_OF_RANGE', fake);
      expect(err.message).toMatch(/not inside any memory region/);
    });

    test('a ring across two regions contiguous in guest-physical but not host addresses is refused', () => {
      const split: MemoryLike = { regions: [{ gpa: 0n, size: 0x10800n, hva: 0x7f00_0000_0000n }, { gpa: 0x10800n, size: 0x10000n, hva: 0x7f10_0000_0000n }] };
      const { b, fake } = netBuilder();
      b.memory(split).features(ACKED).queue(0, queueSpec(0)); // desc [0x10000, 0x11000) straddles 0x10800
      expectInvalid(() => b.start(), 'queue(0).desc', 'ERR_VHOST_OUT_OF_RANGE', fake);
    });

    test('...and accepted when they are contiguous in both (merged into one region)', () => {
      const joined: MemoryLike = { regions: [{ gpa: 0n, size: 0x10800n, hva: 0x7f00_0000_0000n }, { gpa: 0x10800n, size: 0x10000n, hva: 0x7f00_0001_0800n }] };
      const { b, fake } = netBuilder();
      b.memory(joined).features(ACKED).queue(0, queueSpec(0)).start();
      expect(fake.args['SET_MEM_TABLE'][0]).toEqual([{ gpa: 0n, size: 0x20800n, hva: 0x7f00_0000_0000n }]);
      expect(fake.args['SET_VRING_ADDR[0]'][0]).toEqual({ desc: 0x7f00_0001_0000n, avail: 0x7f00_0001_1000n, used: 0x7f00_0001_2000n });
    });
  });

  describe('memory table', () => {
    test('regions contiguous in both gpa and host address merge; others stay apart', () => {
      const merged = mergeMemoryRegions([
        { gpa: 0x3000n, size: 0x1000n, hva: 0x13000n },
        { gpa: 0n, size: 0x1000n, hva: 0x10000n },
        { gpa: 0x1000n, size: 0x2000n, hva: 0x11000n },
        { gpa: 0x4000n, size: 0x1000n, hva: 0x50000n },
      ]);
      expect(merged).toEqual([
        { gpa: 0n, size: 0x4000n, hva: 0x10000n },
        { gpa: 0x4000n, size: 0x1000n, hva: 0x50000n },
      ]);
    });

    test("more regions than max_mem_regions (after merging) is refused; contiguous ones count as one", () => {
      const max = readMaxMemRegions();
      const apart = { regions: Array.from({ length: max + 1 }, (_, i) => ({ gpa: BigInt(i) * 0x2000n, size: 0x1000n, hva: 0x10000000n + BigInt(i) * 0x2000n })) };
      const err = expectInvalid(() => checkMemory(apart, kernelMemoryLimits(max)), 'memory.regions', 'ERR_VHOST_OUT_OF_RANGE');
      expect(err.message).toContain(`max_mem_regions (${max})`);
      const together = { regions: Array.from({ length: max + 1 }, (_, i) => ({ gpa: BigInt(i) * 0x1000n, size: 0x1000n, hva: 0x10000000n + BigInt(i) * 0x1000n })) };
      expect(checkMemory(together, kernelMemoryLimits(max))).toHaveLength(1);
    });

    test('the limit is the vhost module parameter, 64 when it cannot be read', () => {
      expect(readMaxMemRegions('/nonexistent/max_mem_regions')).toBe(64);
      const expected = fs.existsSync('/sys/module/vhost/parameters/max_mem_regions')
        ? Number(fs.readFileSync('/sys/module/vhost/parameters/max_mem_regions', 'utf8'))
        : 64;
      expect(readMaxMemRegions()).toBe(expected);
    });

    test('the builder applies the limit before any syscall (maxMemRegions override)', () => {
      const two: MemoryLike = { regions: [{ gpa: 0n, size: MiB, hva: 0x7f00_0000_0000n }, { gpa: 0x1000_0000n, size: MiB, hva: 0x7f10_0000_0000n }] };
      const { b, fake } = netBuilder();
      b.memory(two).features(ACKED).queue(0, queueSpec(0)).maxMemRegions(1);
      expectInvalid(() => b.start(), 'memory.regions', 'ERR_VHOST_OUT_OF_RANGE', fake);
    });

    test.each([
      ['an empty region list', { regions: [] }, 'memory.regions', 'ERR_VHOST_INVALID_ARG'],
      ['a zero-size region', { regions: [{ gpa: 0n, size: 0n, hva: 0x1000n }] }, 'memory.regions[0].size', 'ERR_VHOST_OUT_OF_RANGE'],
      ['overlapping regions', { regions: [{ gpa: 0n, size: 0x2000n, hva: 0x1000n }, { gpa: 0x1000n, size: 0x1000n, hva: 0x9000n }] }, 'memory.regions[1]', 'ERR_VHOST_INVALID_ARG'],
      ['a region past 2^64', { regions: [{ gpa: (1n << 64n) - 0x1000n, size: 0x2000n, hva: 0x1000n }] }, 'memory.regions[0]', 'ERR_VHOST_OUT_OF_RANGE'],
      ['a non-numeric hva', { regions: [{ gpa: 0n, size: 0x1000n, hva: 'x' }] }, 'memory.regions[0].hva', 'ERR_VHOST_INVALID_ARG'],
    ])('%s is refused', (_name, mem, argument, code) => {
      expectInvalid(() => checkMemory(mem as MemoryLike, kernelMemoryLimits(64)), argument, code);
    });
  });

  describe('eventfds', () => {
    test.each(['kick', 'call'] as const)('%s is required', (which) => {
      const spec = queueSpec(0);
      delete (spec as Partial<QueueSpec>)[which];
      expectInvalid(() => netBuilder().b.queue(0, spec), `queue(0).${which}`);
    });

    test.each(['kick', 'call', 'err'] as const)('%s must be an EventFd or an fd number', (which) => {
      expectInvalid(() => netBuilder().b.queue(0, queueSpec(0, { [which]: 'fd' as never })), `queue(0).${which}`);
      expectInvalid(() => netBuilder().b.queue(0, queueSpec(0, { [which]: {} as never })), `queue(0).${which}`);
      expectInvalid(() => netBuilder().b.queue(0, queueSpec(0, { [which]: -1 })), `queue(0).${which}`, 'ERR_VHOST_OUT_OF_RANGE');
      netBuilder().b.queue(0, queueSpec(0, { [which]: 7 }));
    });

    test('a closed EventFd is ERR_VHOST_CLOSED', () => {
      const kick = EventFd.create();
      kick.close();
      expect(thrown(() => netBuilder().b.queue(0, queueSpec(0, { kick }))).code).toBe('ERR_VHOST_CLOSED');
    });
  });

  test.each([
    ['base', { base: 0x10000 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['base', { base: -1 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['base', { base: 1.5 }, 'ERR_VHOST_INVALID_ARG'],
    ['busyloopTimeout', { busyloopTimeout: 2 ** 32 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['busyloopTimeout', { busyloopTimeout: '50' }, 'ERR_VHOST_INVALID_ARG'],
    ['endian', { endian: 'middle' }, 'ERR_VHOST_INVALID_ARG'],
  ])('queue option %s: %p is refused', (name, extra, code) => {
    expectInvalid(() => netBuilder().b.queue(0, queueSpec(0, extra as Partial<QueueSpec>)), `queue(0).${name}`, code);
  });

  describe('vsock CID', () => {
    test.each([
      [0, 'ERR_VHOST_OUT_OF_RANGE'],
      [1, 'ERR_VHOST_OUT_OF_RANGE'],
      [2, 'ERR_VHOST_OUT_OF_RANGE'],
      [0xffff_ffff, 'ERR_VHOST_OUT_OF_RANGE'],
      [2 ** 32, 'ERR_VHOST_OUT_OF_RANGE'],
      [1n << 40n, 'ERR_VHOST_OUT_OF_RANGE'],
      [3.5, 'ERR_VHOST_INVALID_ARG'],
      ['3', 'ERR_VHOST_INVALID_ARG'],
    ])('CID %p is refused', (cid, code) => {
      expectInvalid(() => vsockBuilder().b.cid(cid as number), 'cid', code);
    });

    test('3 and 0xfffffffe are accepted', () => {
      vsockBuilder().b.cid(3);
      vsockBuilder().b.cid(0xffff_fffen);
    });

    test("cid('auto') options: from must be a valid CID, attempts positive; neither with a fixed CID", () => {
      expectInvalid(() => vsockBuilder().b.cid('auto', { from: 2 }), 'options.from', 'ERR_VHOST_OUT_OF_RANGE');
      expectInvalid(() => vsockBuilder().b.cid('auto', { attempts: 0 }), 'options.attempts', 'ERR_VHOST_OUT_OF_RANGE');
      expectInvalid(() => vsockBuilder().b.cid(5, { attempts: 3 }), 'options');
    });

    test('cid() is required', () => {
      const { b, fake } = vsockBuilder();
      b.memory(mem1).features(ring.VERSION_1).queue(0, queueSpec(0)).queue(1, queueSpec(1));
      expectInvalid(() => b.start(), 'cid', undefined, fake);
    });
  });

  describe('device and backend', () => {
    test('device() takes a path or an open device', () => {
      expectInvalid(() => netBuilder().b.device(''), 'device');
      expectInvalid(() => netBuilder().b.device(42 as never), 'device');
      expectInvalid(() => netBuilder().b.device('/dev/vhost-net', { owned: true }), 'options.owned');
    });

    test('a closed device is ERR_VHOST_CLOSED', () => {
      const dev = VhostNet.open('/dev/null');
      dev.close();
      expect(thrown(() => VhostNet.builder().device(dev)).code).toBe("ERR_VHOST_CLOSED");
    });

    test('backend must be a Tap, TapQueue, fd owner, fd number or null', () => {
      expectInvalid(() => netBuilder().b.backend('tap0' as never), 'backend');
      expectInvalid(() => netBuilder().b.backend(-2), 'backend', 'ERR_VHOST_OUT_OF_RANGE');
      expectInvalid(() => netBuilder().b.backend(5, { vnetHdr: 'yes' as never }), 'options.vnetHdr');
      netBuilder().b.backend(null, { vnetHdr: false });
    });
  });
});

describe('bring-up order (fake device)', () => {
  test('vhost-net: owner, features, mem table, each queue NUM..ERR (+ options), backend last', () => {
    const { b, fake } = fullNet({ endian: 'little', busyloopTimeout: 50 });
    const backend = track(EventFd.create());
    const running = track(b.backend(backend, { vnetHdr: true }).start());
    const q = (i: number) => [
      `SET_VRING_NUM[${i}]`, `SET_VRING_BASE[${i}]`, `SET_VRING_ENDIAN[${i}]`, `SET_VRING_ADDR[${i}]`,
      `SET_VRING_KICK[${i}]`, `SET_VRING_CALL[${i}]`, `SET_VRING_ERR[${i}]`, `SET_VRING_BUSYLOOP_TIMEOUT[${i}]`,
    ];
    const expected = ['SET_OWNER', 'GET_FEATURES', 'SET_FEATURES', 'SET_MEM_TABLE', ...q(0), ...q(1), 'NET_SET_BACKEND[0]', 'NET_SET_BACKEND[1]'];
    expect(fake.calls).toEqual(expected);
    expect(running.trace).toEqual(['open', ...expected]);
    expect(fake.args['SET_FEATURES']).toEqual([ring.VERSION_1 | ring.RING_EVENT_IDX | net.MRG_RXBUF]);
    expect(fake.args['SET_VRING_ADDR[1]']).toEqual([{ desc: 0x7f00_0002_0000n, avail: 0x7f00_0002_1000n, used: 0x7f00_0002_2000n }]);
    expect(fake.args['SET_VRING_BUSYLOOP_TIMEOUT[0]']).toEqual([50]);
    expect(fake.args['NET_SET_BACKEND[0]']).toEqual([backend]);
    expect(running.features).toBe(ring.VERSION_1 | ring.RING_EVENT_IDX | net.MRG_RXBUF);
    expect(running.vnetHdrSize).toBe(12);
  });

  test('vhost-net: optional steps are left out; no backend, no NET_SET_BACKEND; a vnet-less backend gets bit 27', () => {
    const { b, fake } = netBuilder();
    const { kick, call } = eventfds();
    track(b.memory(mem1).features(ACKED).queue(1, { size: 256, desc: 0x20000n, avail: 0x21000n, used: 0x22000n, kick, call, base: 9 }).backend(null, { vnetHdr: false }).start());
    expect(fake.calls).toEqual(['SET_OWNER', 'GET_FEATURES', 'SET_FEATURES', 'SET_MEM_TABLE', 'SET_VRING_NUM[1]', 'SET_VRING_BASE[1]', 'SET_VRING_ADDR[1]', 'SET_VRING_KICK[1]', 'SET_VRING_CALL[1]']);
    expect(fake.args['SET_VRING_BASE[1]']).toEqual([9]);
    expect((fake.args['SET_FEATURES'][0] as bigint) & vhost.NET_VIRTIO_NET_HDR).toBe(vhost.NET_VIRTIO_NET_HDR);
  });

  test('vhost-vsock: owner, features, mem table, queues, CID, SET_RUNNING last', () => {
    const { b, fake } = fullVsock();
    const running = track(b.start());
    const q = (i: number) => [`SET_VRING_NUM[${i}]`, `SET_VRING_BASE[${i}]`, `SET_VRING_ADDR[${i}]`, `SET_VRING_KICK[${i}]`, `SET_VRING_CALL[${i}]`, `SET_VRING_ERR[${i}]`];
    expect(fake.calls).toEqual(['SET_OWNER', 'GET_FEATURES', 'SET_FEATURES', 'SET_MEM_TABLE', ...q(0), ...q(1), 'SET_GUEST_CID', 'SET_RUNNING']);
    expect(fake.args['SET_RUNNING']).toEqual([true]);
    expect(running.cid).toBe(42);
  });

  test('a device passed with { owned: true } skips SET_OWNER', () => {
    const fake = new FakeDevice(NET_OFFER);
    const { b } = fullNet();
    track(b.device(fake, { owned: true }).start());
    expect(fake.calls[0]).toBe('GET_FEATURES');
  });

  test('vhostFeatures() sends exactly those bits', () => {
    const { b, fake } = netBuilder();
    track(b.memory(mem1).vhostFeatures(ring.VERSION_1 | net.CSUM).queue(0, queueSpec(0)).start());
    expect(fake.args['SET_FEATURES']).toEqual([ring.VERSION_1 | net.CSUM]);
  });
});

describe('rollback and step errors (fake device)', () => {
  const netSteps = (() => {
    const { b } = fullNet({ endian: 'big', busyloopTimeout: 1 });
    const r = b.backend(7).start();
    const steps = r.trace.filter((s) => s !== 'open');
    r.close();
    return steps;
  })();

  test.each(netSteps)('vhost-net failing at %s: the device the builder opened is closed, the error names the step', (failAt) => {
    const fake = new FakeDevice(NET_OFFER);
    fake.failAt = failAt;
    const builder = new VhostNetBuilder(() => fake);
    builder.memory(mem1).features(ACKED).queue(0, queueSpec(0, { endian: 'big', busyloopTimeout: 1 })).queue(1, queueSpec(1, { endian: 'big', busyloopTimeout: 1 })).backend(7);
    const err = thrown(() => builder.start()) as Err;
    const m = /^(\w+)(?:\[(\d)\])?$/.exec(failAt)!;
    expect({ step: err.step, queue: err.queue, code: err.code, errno: err.errno, path: err.path }).toEqual({
      step: m[1], queue: m[2] === undefined ? undefined : Number(m[2]), code: 'EIO', errno: -5, path: '/dev/fake',
    });
    expect(err.syscall).toBe(m[1]);
    expect(err.message).toContain(`[step ${m[1]}`);
    expect(err.trace![err.trace!.length - 1]).toBe(failAt);
    expect(fake.calls[fake.calls.length - 1]).toBe('close');
    expect(fake.calls.slice(0, -1)).toEqual(netSteps.slice(0, netSteps.indexOf(failAt) + 1));
    expect(fake.closed).toBe(true);
  });

  const vsockSteps = (() => {
    const r = fullVsock().b.start();
    const steps = r.trace.filter((s) => s !== 'open');
    r.close();
    return steps;
  })();

  test.each(vsockSteps)('vhost-vsock failing at %s: closed, step named', (failAt) => {
    const { b, fake } = fullVsock();
    fake.failAt = failAt;
    const err = thrown(() => b.start()) as Err;
    expect(err.step).toBe(failAt.replace(/\[\d\]$/, ''));
    expect(err.code).toBe('EIO');
    expect(fake.closed).toBe(true);
  });

  test('a device passed in is not closed when start() fails', () => {
    const fake = new FakeDevice(NET_OFFER);
    fake.failAt = 'SET_MEM_TABLE';
    const { b } = fullNet();
    expect(thrown(() => b.device(fake).start()).step).toBe('SET_MEM_TABLE');
    expect(fake.closed).toBe(false);
    fake.close();
  });

  test('acked ring bits the device does not offer fail at SET_FEATURES with ERR_VHOST_UNSUPPORTED, before it is issued', () => {
    const { b, fake } = netBuilder();
    b.memory(mem1).features(ring.VERSION_1 | ring.RING_PACKED).queue(0, queueSpec(0));
    const err = thrown(() => b.start()) as Err;
    expect({ code: err.code, step: err.step }).toEqual({ code: 'ERR_VHOST_UNSUPPORTED', step: 'SET_FEATURES' });
    expect(err.message).toContain('VIRTIO_F_RING_PACKED');
    expect(fake.calls).toEqual(['SET_OWNER', 'GET_FEATURES', 'close']);
  });

  test('opening a missing device node fails at step open (ENOENT, with a modprobe hint)', () => {
    const q0 = queueSpec(0);
    const before = openFdCount();
    const err = thrown(() => VhostNet.builder().memory(mem1).features(ACKED).queue(0, q0).device('/dev/vhost-net-missing').start()) as Err;
    expect({ step: err.step, code: err.code, syscall: err.syscall }).toEqual({ step: 'open', code: 'ENOENT', syscall: 'open' });
    expect(openFdCount()).toBe(before);
  });

  test('a real fd that is not a vhost device (/dev/null): SET_OWNER fails with ENOTTY and the fd is closed again', () => {
    const [q0, q1] = [queueSpec(0), queueSpec(1)];
    const before = openFdCount();
    const err = thrown(() => VhostNet.builder().memory(mem1).features(ACKED).queue(0, q0).device('/dev/null').start()) as Err;
    expect({ step: err.step, code: err.code, syscall: err.syscall, path: err.path }).toEqual({ step: 'SET_OWNER', code: 'ENOTTY', syscall: 'ioctl(VHOST_SET_OWNER)', path: '/dev/null' });
    expect(err.trace).toEqual(['open', 'SET_OWNER']);
    expect(openFdCount()).toBe(before);
    const verr = thrown(() => VhostVsock.builder().memory(mem1).features(0n).cid('auto').queue(0, q0).queue(1, q1).device('/dev/null').start()) as Err;
    expect({ step: verr.step, code: verr.code }).toEqual({ step: 'SET_OWNER', code: 'ENOTTY' });
    expect(openFdCount()).toBe(before);
  });
});

describe("cid('auto') (fake device)", () => {
  test('walks upward from 3 past CIDs in use (EADDRINUSE)', () => {
    const { b, fake } = vsockBuilder();
    fake.takenCids = new Set([3, 4, 5]);
    const running = track(b.memory(mem1).features(0n).cid('auto').queue(0, queueSpec(0)).queue(1, queueSpec(1)).start());
    expect(running.cid).toBe(6);
    expect(fake.calls.filter((c) => c === 'SET_GUEST_CID')).toHaveLength(4);
    expect(fake.calls.slice(-2)).toEqual(['SET_GUEST_CID', 'SET_RUNNING']);
  });

  test('from and attempts bound the walk; exhaustion fails with EADDRINUSE at SET_GUEST_CID', () => {
    const { b, fake } = vsockBuilder();
    fake.takenCids = new Set([100, 101, 102]);
    const err = thrown(() => b.memory(mem1).features(0n).cid('auto', { from: 100, attempts: 3 }).queue(0, queueSpec(0)).queue(1, queueSpec(1)).start()) as Err;
    expect({ step: err.step, code: err.code }).toEqual({ step: 'SET_GUEST_CID', code: 'EADDRINUSE' });
    expect(err.message).toContain('CIDs 100..102 are all in use');
    expect(fake.calls.filter((c) => c === 'SET_GUEST_CID')).toHaveLength(3);
    expect(fake.closed).toBe(true);
  });

  test('the walk stops at 0xfffffffe', () => {
    const { b, fake } = vsockBuilder();
    fake.takenCids = new Set([0xffff_fffd, 0xffff_fffe]);
    const err = thrown(() => b.memory(mem1).features(0n).cid('auto', { from: 0xffff_fffd }).queue(0, queueSpec(0)).queue(1, queueSpec(1)).start()) as Err;
    expect(err.code).toBe('EADDRINUSE');
    expect(fake.args['SET_GUEST_CID']).toEqual([0xffff_fffe]);
  });

  test('any other error ends the walk at once', () => {
    const { b, fake } = vsockBuilder();
    fake.failAt = 'SET_GUEST_CID';
    const err = thrown(() => b.memory(mem1).features(0n).cid('auto').queue(0, queueSpec(0)).queue(1, queueSpec(1)).start()) as Err;
    expect({ step: err.step, code: err.code }).toEqual({ step: 'SET_GUEST_CID', code: 'EIO' });
    expect(fake.calls.filter((c) => c === 'SET_GUEST_CID')).toHaveLength(1);
  });

  test('the shared search refuses a walk that would try no CID (it had nothing to throw)', () => {
    const never = () => { throw new Error('setCid must not be called'); };
    for (const [from, attempts] of [[0xffff_ffff, 10], [3, 0], [3, -1]]) {
      expect(thrown(() => allocateCid(never, from, attempts))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE', argument: 'attempts' });
    }
  });
});

describe('running device lifecycle (fake device)', () => {
  function running(): { r: RunningVhostNet<FakeDevice>; fake: FakeDevice } {
    const { b, fake } = fullNet();
    const r = track(b.backend(9).start());
    fake.calls.length = 0;
    return { r, fake };
  }

  test('stop(): detach the backend on every queue, then GET_VRING_BASE; the state lists each base', () => {
    const { r, fake } = running();
    fake.bases.set(0, 17).set(1, 65535);
    expect(r.running).toBe(true);
    expect(r.stop()).toEqual({ queues: [{ index: 0, base: 17 }, { index: 1, base: 65535 }] });
    expect(fake.calls).toEqual(['NET_SET_BACKEND[0]', 'NET_SET_BACKEND[1]', 'GET_VRING_BASE[0]', 'GET_VRING_BASE[1]']);
    expect(fake.args['NET_SET_BACKEND[1]']).toEqual([null]);
    expect(r.running).toBe(false);
    expect(r.stop()).toEqual({ queues: [{ index: 0, base: 17 }, { index: 1, base: 65535 }] }); // again: same state, no ioctl
    expect(fake.calls).toHaveLength(4);
    expect(thrown(() => r.attachBackend(3)).code).toBe('ERR_VHOST_INVALID_ARG');
  });

  test('vsock stop(): SET_RUNNING(false) then GET_VRING_BASE', () => {
    const { b, fake } = fullVsock();
    const r = track(b.start());
    fake.calls.length = 0;
    r.stop();
    expect(fake.calls).toEqual(['SET_RUNNING', 'GET_VRING_BASE[0]', 'GET_VRING_BASE[1]']);
    expect(fake.args['SET_RUNNING']).toEqual([false]);
  });

  test('a stop failure names its step', () => {
    const { r, fake } = running();
    fake.failAt = 'GET_VRING_BASE[1]';
    const err = thrown(() => r.stop()) as Err;
    expect({ step: err.step, queue: err.queue, code: err.code }).toEqual({ step: 'GET_VRING_BASE', queue: 1, code: 'EIO' });
  });

  test('close() of a running device stops it first, then closes; idempotent; dispose works', () => {
    const { r, fake } = running();
    r.close();
    expect(fake.calls).toEqual(['NET_SET_BACKEND[0]', 'NET_SET_BACKEND[1]', 'GET_VRING_BASE[0]', 'GET_VRING_BASE[1]', 'close']);
    expect(r.closed).toBe(true);
    expect(fake.closed).toBe(true);
    r.close();
    const other = running();
    other.r[Symbol.dispose]();
    expect(other.fake.closed).toBe(true);
  });

  test('after close every method throws ERR_VHOST_CLOSED', () => {
    const { r } = running();
    r.close();
    for (const call of [() => r.stop(), () => r.attachBackend(3), () => r.detachBackend(), () => r.enableDirtyLog(), () => r.readDirtyLog(), () => r.disableDirtyLog(), () => r.fd]) {
      expect(thrown(call).code).toBe('ERR_VHOST_CLOSED');
    }
  });

  test('attachBackend / detachBackend set every queue; a backend with a different vnet header is refused', () => {
    const { r, fake } = running();
    r.detachBackend();
    r.attachBackend(11);
    expect(fake.calls).toEqual(['NET_SET_BACKEND[0]', 'NET_SET_BACKEND[1]', 'NET_SET_BACKEND[0]', 'NET_SET_BACKEND[1]']);
    expect(fake.args['NET_SET_BACKEND[1]']).toEqual([11]);
    expectInvalid(() => r.attachBackend(12, { vnetHdr: false }), 'backend');
  });

  test('enableDirtyLog: SET_LOG_BASE, SET_FEATURES | LOG_ALL, SET_VRING_ADDR with the log flag and the used ring gpa; disable reverses it', () => {
    const { r, fake } = running();
    r.enableDirtyLog();
    expect(r.dirtyLogging).toBe(true);
    expect(fake.calls).toEqual(['SET_LOG_BASE', 'SET_FEATURES', 'SET_VRING_ADDR[0]', 'SET_VRING_ADDR[1]']);
    const logBase = (fake.args['SET_LOG_BASE'][0] as { hva: bigint }).hva;
    expect(logBase).toBeGreaterThan(0n);
    expect(fake.args['SET_FEATURES']).toEqual([r.features | vhost.LOG_ALL]);
    expect(fake.args['SET_VRING_ADDR[0]']).toEqual([{ desc: 0x7f00_0001_0000n, avail: 0x7f00_0001_1000n, used: 0x7f00_0001_2000n, log: 0x12000n, flags: 1 }]);
    expect(fake.args['SET_VRING_ADDR[1]']).toEqual([{ desc: 0x7f00_0002_0000n, avail: 0x7f00_0002_1000n, used: 0x7f00_0002_2000n, log: 0x22000n, flags: 1 }]);
    r.enableDirtyLog(); // already on: no ioctl
    expect(fake.calls).toHaveLength(4);
    expect(r.readDirtyLog()).toEqual([]);
    fake.calls.length = 0;
    r.disableDirtyLog();
    expect(fake.calls).toEqual(['SET_FEATURES', 'SET_VRING_ADDR[0]', 'SET_VRING_ADDR[1]', 'SET_LOG_BASE']);
    expect(fake.args['SET_FEATURES']).toEqual([r.features]);
    expect(fake.args['SET_VRING_ADDR[0]']).toEqual([{ desc: 0x7f00_0001_0000n, avail: 0x7f00_0001_1000n, used: 0x7f00_0001_2000n }]);
    expect(fake.args['SET_LOG_BASE']).toEqual([0n]);
    expect(r.dirtyLogging).toBe(false);
  });

  test('close() with dirty logging on turns it off before closing', () => {
    const { r, fake } = running();
    r.enableDirtyLog();
    fake.calls.length = 0;
    r.close();
    expect(fake.calls.slice(-5)).toEqual(['SET_FEATURES', 'SET_VRING_ADDR[0]', 'SET_VRING_ADDR[1]', 'SET_LOG_BASE', 'close']);
  });

  test('an enableDirtyLog failure names its step', () => {
    const { r, fake } = running();
    fake.failAt = 'SET_FEATURES';
    expect(thrown(() => r.enableDirtyLog()).step).toBe('SET_FEATURES');
    expect(r.dirtyLogging).toBe(false);
  });
});

describe('dirty log bitmap', () => {
  test('one bit per 4 KiB page up to the highest region end, in whole 64-bit words', () => {
    expect(dirtyLogSize([{ gpa: 0n, size: 256n * MiB }])).toBe(8192n); // 65536 pages
    expect(dirtyLogSize([{ gpa: 0n, size: 4096n }])).toBe(8n);
    expect(dirtyLogSize([{ gpa: 0n, size: 4096n * 65n }])).toBe(16n);
    expect(dirtyLogSize([{ gpa: 0x1_0000_0000n, size: MiB }, { gpa: 0n, size: MiB }])).toBe(((0x1_0000_0000n + MiB) / 4096n / 64n) * 8n);
  });

  test('bit b of word w is page w * 64 + b (the kernel sets bit page % 8 of byte page / 8)', () => {
    expect(pagesOfWord(0, 0b1011n, true)).toEqual([0, 1, 3]);
    expect(pagesOfWord(2, 1n << 63n, true)).toEqual([191]);
    // big-endian host: byte 0 of the word is its most significant byte
    expect(pagesOfWord(0, 0x0100_0000_0000_0000n, false)).toEqual([0]);
    expect(pagesOfWord(0, 0x01n, false)).toEqual([56]);
  });

  test('readAndClear returns pages set byte-wise as the kernel does, then nothing', () => {
    const log = track(DirtyLog.create([{ gpa: 0n, size: 64n * MiB }]));
    expect(log.address % 4096n).toBe(0n);
    // write bits the way the kernel does (bit page % 8 of byte page / 8), through a byte view of the log
    const pages = [0, 7, 8, 63, 64, 1000, 16383];
    const view = log.bytes();
    expect(view.byteLength).toBe(Number(log.size));
    for (const p of pages) view[p >> 3] |= 1 << (p & 7);
    expect(log.readAndClear()).toEqual(pages);
    expect(log.readAndClear()).toEqual([]);
    expect(view.every((b) => b === 0)).toBe(true);
    log.close();
    expect(log.readAndClear()).toEqual([]);
  });

  test('readAndClear returns every page of a random set exactly once, in order', () => {
    const log = track(DirtyLog.create([{ gpa: 0n, size: 64n * MiB }]));
    const view = log.bytes();
    let seed = 12345;
    const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % 16384;
    for (let round = 0; round < 20; round++) {
      const pages = new Set<number>();
      for (let i = 0; i < 200; i++) pages.add(rand());
      for (const p of pages) view[p >> 3] |= 1 << (p & 7);
      expect(log.readAndClear()).toEqual([...pages].sort((a, b) => a - b));
    }
  });
});
