// The device contract (lib/vhost/backend.ts) holds: a transport that is not
// the kernel (test/support/fake-transport.ts, written against VhostBackend
// and the devices' own interfaces only) is driven by the real net and vsock
// builders through a full bring-up, stop, restore and rollback, with no
// change to any base file. A vhost-user front-end is the same kind of object.
import { EventFd } from '../../../lib/core/eventfd';
import { features } from '../../../lib/core/features';
import type { MemoryLike } from '../../../lib/core/memory';
import { VhostNetBuilder } from '../../../lib/vhost/net';
import type { MemoryLimits, QueueSpec } from '../../../lib/vhost/plan';
import { VhostVsockBuilder } from '../../../lib/vhost/vsock';
import { FakeTransport } from '../../support/fake-transport';
import { thrown } from '../../support/helpers';

const { ring, net } = features;
const NET_OFFER = 0x33d008000n;
const VSOCK_OFFER = 0x33d000002n;
const MiB = 1n << 20n;

const open: EventFd[] = [];
afterEach(() => {
  for (const e of open.splice(0)) e.close();
});
const efd = (): EventFd => {
  const e = EventFd.create();
  open.push(e);
  return e;
};

/** Two regions of one memfd-like file, contiguous in every sense, and a third elsewhere. */
const memory: MemoryLike = {
  regions: [
    { gpa: 0n, size: MiB, hva: 0x7f00_0000_0000n, fd: 7, offset: 0n },
    { gpa: MiB, size: MiB, hva: 0x7f00_0010_0000n, fd: 7, offset: MiB },
    { gpa: 0x1000_0000n, size: MiB, hva: 0x7f10_0000_0000n, fd: 8, offset: 0n },
  ],
};

function queue(q: number, extra: Partial<QueueSpec> = {}): QueueSpec {
  const base = 0x10000n * BigInt(q + 1);
  return { size: 256, desc: base, avail: base + 0x1000n, used: base + 0x2000n, kick: efd(), call: efd(), ...extra };
}

/** How a transport that shares memory by file takes it: at most 8 regions (vhost-user's baseline). */
const byFile = (override?: number): MemoryLimits => ({ maxRegions: override ?? 8, limitName: 'the back-end limit', access: 'fd' });

const SETUP = (q: number): string[] => ['NUM', 'BASE', 'ADDR', 'KICK', 'CALL'].map((s) => `SET_VRING_${s}[${q}]`);

describe('a fake transport driven by the real builders', () => {
  test('vhost-net: full bring-up in the kernel order, the backend attached last, stop detaches and returns the bases', () => {
    const fake = new FakeTransport(NET_OFFER);
    const running = new VhostNetBuilder<FakeTransport>(() => fake)
      .memory(memory)
      .features(ring.VERSION_1 | net.MRG_RXBUF)
      .queue(0, queue(0, { base: 7 }))
      .queue(1, queue(1))
      .backend(11, { vnetHdr: true })
      .start();
    expect(fake.calls).toEqual(['SET_OWNER', 'GET_FEATURES', 'SET_FEATURES', 'SET_MEM_TABLE', ...SETUP(0), ...SETUP(1), 'NET_SET_BACKEND[0]', 'NET_SET_BACKEND[1]']);
    expect(running.trace).toEqual(['open', ...fake.calls]);
    expect(running.device).toBe(fake);
    expect(running.running).toBe(true);
    // An 'address' transport: the kernel ignores files, so all three regions merge where the addresses run on.
    expect(fake.args['SET_MEM_TABLE'][0]).toEqual([
      { gpa: 0n, size: 2n * MiB, hva: 0x7f00_0000_0000n },
      { gpa: 0x1000_0000n, size: MiB, hva: 0x7f10_0000_0000n },
    ]);
    fake.calls.length = 0;
    expect(running.stop()).toEqual({ queues: [{ index: 0, base: 7 }, { index: 1, base: 0 }] });
    expect(fake.calls).toEqual(['NET_SET_BACKEND[0]', 'NET_SET_BACKEND[1]', 'GET_VRING_BASE[0]', 'GET_VRING_BASE[1]']);
    running.close();
    expect(fake.closed).toBe(true);
    expect(thrown(() => running.stop()).code).toBe('ERR_VHOST_CLOSED');
  });

  test('vhost-vsock: CID then SET_RUNNING last; a taken CID under auto moves on; stop is SET_RUNNING(false)', () => {
    const fake = new FakeTransport(VSOCK_OFFER);
    fake.takenCids.add(3);
    const running = new VhostVsockBuilder<FakeTransport>(() => fake).memory(memory).features(ring.VERSION_1).cid('auto').queue(0, queue(0)).queue(1, queue(1)).start();
    expect(running.cid).toBe(4);
    expect(fake.calls.slice(-3)).toEqual(['SET_GUEST_CID', 'SET_GUEST_CID', 'SET_RUNNING']);
    expect(fake.args['SET_RUNNING']).toEqual([true]);
    running.stop();
    expect(fake.args['SET_RUNNING']).toEqual([false]);
    running.close();
  });

  test('a transport that shares memory by file gets each region with its fd and offset, merged only within one file', () => {
    const fake = new FakeTransport(NET_OFFER, { memoryAccess: 'fd', path: '/run/backend.sock' });
    new VhostNetBuilder<FakeTransport>(() => fake, byFile).memory(memory).features(ring.VERSION_1).queue(0, queue(0)).start().close();
    expect(fake.args['SET_MEM_TABLE'][0]).toEqual([
      { gpa: 0n, size: 2n * MiB, hva: 0x7f00_0000_0000n, fd: 7, offset: 0n },
      { gpa: 0x1000_0000n, size: MiB, hva: 0x7f10_0000_0000n, fd: 8, offset: 0n },
    ]);
  });

  test('...and a region without a file is refused before the first call', () => {
    const fake = new FakeTransport(NET_OFFER, { memoryAccess: 'fd' });
    const anonymous: MemoryLike = { regions: [{ gpa: 0n, size: MiB, hva: 0x7f00_0000_0000n, fd: -1 }] };
    const err = thrown(() => new VhostNetBuilder<FakeTransport>(() => fake).device(fake).memory(anonymous).features(ring.VERSION_1).queue(0, queue(0)).start());
    expect({ code: err.code, argument: (err as { argument?: string }).argument }).toEqual({ code: 'ERR_VHOST_INVALID_ARG', argument: 'memory.regions[0].fd' });
    expect(fake.calls).toEqual([]);
  });

  test('rollback: a failure at any call closes what the builder opened and names the step; restore resumes from saved bases', () => {
    for (const failAt of ['SET_OWNER', 'SET_MEM_TABLE', 'SET_VRING_ADDR[1]', 'NET_SET_BACKEND[1]']) {
      const fake = new FakeTransport(NET_OFFER);
      fake.failAt = failAt;
      const err = thrown(() => new VhostNetBuilder<FakeTransport>(() => fake).memory(memory).features(ring.VERSION_1).queue(0, queue(0)).queue(1, queue(1)).backend(3).start()) as Error & {
        step?: string;
        queue?: number;
        trace?: string[];
      };
      expect(err.message).toContain(`[step ${failAt.replace(/\[(\d)\]/, ' queue $1')}]`);
      expect(err.trace?.at(-1)).toBe(failAt);
      expect(fake.closed).toBe(true);
    }
    const fake = new FakeTransport(NET_OFFER);
    const restored = new VhostNetBuilder<FakeTransport>(() => fake).memory(memory).features(ring.VERSION_1).queue(0, queue(0, { base: 41 })).queue(1, queue(1, { base: 9 })).start();
    expect(fake.args['SET_VRING_BASE[0]']).toEqual([41]);
    expect(restored.stop().queues.map((q) => q.base)).toEqual([41, 9]);
    restored.close();
  });
});
