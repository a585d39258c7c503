// A hostile driver: the test writes malformed descriptor tables, indirect
// tables, avail entries and indices into the shared memfd, and each must
// break the queue (ERR_VHOST_RING_BROKEN naming the ring field and the value)
// without the device reading or writing outside the mapped region, and
// without it touching memory again afterwards.
import * as fs from 'node:fs';
import { GuestMemory } from '../../../lib/core/memory';
import { DeviceMemory } from '../../../lib/virtio/device-memory';
import { BUFS, F_INDIRECT, F_NEXT, F_WRITE, pattern, RawRing, REGION_GPA, REGION_SIZE } from '../../support/device-ring';
import { thrown } from '../../support/helpers';

let raw: RawRing | undefined;
afterEach(() => {
  raw?.close();
  raw = undefined;
});
const open = (o?: ConstructorParameters<typeof RawRing>[0]): RawRing => (raw = new RawRing(o));
const END = REGION_GPA + REGION_SIZE;
const TABLE = BUFS + 0x40000n; // indirect tables go here

/** Pops once, expects the queue broken on `field` with `value`, and checks it stays broken and silent. */
function expectBroken(r: RawRing, field: string | RegExp, value: bigint | number): void {
  const usedBefore = r.usedIdx;
  expect(r.queue.pop()).toBeNull();
  const b = r.queue.broken;
  expect(b).not.toBeNull();
  expect(b!.code).toBe('ERR_VHOST_RING_BROKEN');
  if (typeof field === 'string') expect(b!.field).toBe(field);
  else expect(b!.field).toMatch(field);
  expect(b!.value).toBe(BigInt(value));
  expect(b!.message).toContain('test queue');
  expect(b!.message).toContain(b!.field);
  // Stays broken: same error, nothing popped or published, even with a good chain waiting.
  r.writeDesc(0, { addr: BUFS, len: 8, flags: 0, next: 0 });
  r.publish([0]);
  expect(r.queue.pop()).toBeNull();
  expect(r.queue.popBatch(4)).toEqual([]);
  expect(r.queue.flush()).toBe(false);
  expect(r.queue.enableNotify(true)).toBe(false);
  expect(r.queue.broken).toBe(b);
  expect(r.usedIdx).toBe(usedBefore);
}

describe('a malformed descriptor breaks the queue', () => {
  test('an address outside the mapped region', () => {
    const r = open();
    r.writeDesc(3, { addr: END, len: 1, flags: 0, next: 0 });
    r.publish([3]);
    expectBroken(r, 'desc[3].addr', END);
  });

  test('a length that runs past the region end (by one byte)', () => {
    const r = open();
    r.writeDesc(0, { addr: END - 100n, len: 101, flags: F_WRITE, next: 0 });
    r.publish([0]);
    expectBroken(r, 'desc[0].addr', END - 100n);
  });

  test('address + length wrapping past 2^64 onto mapped memory', () => {
    const r = open();
    // 2^64 - 16 + 0x100010 would wrap to REGION_GPA: an overflowing check would accept it.
    const addr = (1n << 64n) - 16n;
    r.writeDesc(0, { addr, len: Number(REGION_GPA + 16n), flags: 0, next: 0 });
    r.publish([0]);
    expectBroken(r, 'desc[0].addr', addr);
  });

  test('a next that is not a descriptor id', () => {
    const r = open();
    r.writeDesc(0, { addr: BUFS, len: 8, flags: F_NEXT, next: 16 });
    r.publish([0]);
    expectBroken(r, 'desc[0].next', 16);
  });

  test('a loop (0 → 1 → 2 → 0) is cut at the queue size', () => {
    const r = open();
    r.writeDesc(0, { addr: BUFS, len: 8, flags: F_NEXT, next: 1 });
    r.writeDesc(1, { addr: BUFS, len: 8, flags: F_NEXT, next: 2 });
    r.writeDesc(2, { addr: BUFS, len: 8, flags: F_NEXT, next: 0 });
    r.publish([0]);
    expectBroken(r, 'desc[0].next', 1); // the 16th descriptor visited is desc[0] again
    expect(r.queue.broken!.message).toMatch(/loop/);
  });

  test('a chain of exactly the queue size is fine, its readable bytes in order', () => {
    const r = open();
    for (let i = 0; i < 16; i++) {
      r.writeDesc(i, { addr: BUFS + BigInt(i) * 0x100n, len: 4, flags: i < 15 ? F_NEXT : 0, next: (i + 1) % 16 });
      r.mem.view(BUFS + BigInt(i) * 0x100n, 4).set(pattern(4, i));
    }
    r.publish([0]);
    const c = r.queue.pop()!;
    expect(c.readable.equals(Buffer.concat(Array.from({ length: 16 }, (_, i) => pattern(4, i))))).toBe(true);
    expect(r.queue.broken).toBeNull();
  });

  test('a device-readable buffer after a device-writable one', () => {
    const r = open();
    r.writeDesc(0, { addr: BUFS, len: 8, flags: F_WRITE | F_NEXT, next: 1 });
    r.writeDesc(1, { addr: BUFS, len: 8, flags: 0, next: 0 });
    r.publish([0]);
    expectBroken(r, 'desc[1].flags', 0);
  });

  test('more readable bytes than maxReadable', () => {
    const r = open({ maxReadable: 1000 });
    r.writeDesc(0, { addr: BUFS, len: 600, flags: F_NEXT, next: 1 });
    r.writeDesc(1, { addr: BUFS, len: 401, flags: 0, next: 0 });
    r.publish([0]);
    expectBroken(r, 'desc[1].len', 401);
  });

  test('an INDIRECT descriptor that is not the head of its chain', () => {
    const r = open();
    r.writeDesc(0, { addr: BUFS, len: 8, flags: F_NEXT, next: 1 });
    r.writeDesc(1, { addr: TABLE, len: 16, flags: F_INDIRECT, next: 0 });
    r.publish([0]);
    expectBroken(r, 'desc[1].flags', F_INDIRECT);
  });
});

describe('a malformed avail ring breaks the queue', () => {
  test('avail->idx more than the queue size ahead', () => {
    const r = open();
    r.publish([], 17);
    expectBroken(r, 'avail.idx', 17);
  });

  test('avail->idx more than the queue size ahead across the 16-bit wrap', () => {
    const r = open({ base: 65530 });
    r.publish([], 65530 + 17);
    expectBroken(r, 'avail.idx', (65530 + 17) & 0xffff);
  });

  test('a head id at or above the queue size', () => {
    const r = open();
    r.publish([16]);
    expectBroken(r, 'avail.ring[0]', 16);
  });

  test('a head that is already in flight', () => {
    const r = open();
    r.writeDesc(5, { addr: BUFS, len: 8, flags: F_WRITE, next: 0 });
    r.publish([5, 5]);
    const c = r.queue.pop()!;
    expect(c.head).toBe(5);
    expectBroken(r, 'avail.ring[1]', 5);
    // A chain in flight on a broken queue cannot be completed either.
    expect(thrown(() => r.queue.complete(5, pattern(8, 0))).code).toBe('ERR_VHOST_RING_BROKEN');
  });

  test('a full ring (idx exactly size ahead) is fine', () => {
    const r = open({ size: 4 });
    for (let i = 0; i < 4; i++) r.writeDesc(i, { addr: BUFS, len: 1, flags: 0, next: 0 });
    r.publish([3, 2, 1, 0]);
    expect(r.queue.popBatch(10).map((c) => c.head)).toEqual([3, 2, 1, 0]);
    expect(r.queue.broken).toBeNull();
  });
});

describe('a malformed indirect table breaks the queue', () => {
  const indirectHead = (r: RawRing, len: number, flags = F_INDIRECT, addr = TABLE) => {
    r.writeDesc(0, { addr, len, flags, next: 0 });
    r.publish([0]);
  };

  test('without VIRTIO_RING_F_INDIRECT_DESC negotiated', () => {
    const r = open({ indirect: false });
    r.writeDesc(0, { addr: BUFS, len: 8, flags: 0, next: 0 }, TABLE);
    indirectHead(r, 16);
    expectBroken(r, 'desc[0].flags', F_INDIRECT);
  });

  test.each([0, 8, 24])('a table length of %i bytes (not a non-zero multiple of 16)', (len) => {
    const r = open();
    indirectHead(r, len);
    expectBroken(r, 'desc[0].len', len);
  });

  test('more entries than the queue size', () => {
    const r = open();
    indirectHead(r, 16 * 17);
    expectBroken(r, 'desc[0].len', 16 * 17);
  });

  test('INDIRECT together with NEXT', () => {
    const r = open();
    r.writeDesc(0, { addr: BUFS, len: 8, flags: 0, next: 0 }, TABLE);
    indirectHead(r, 16, F_INDIRECT | F_NEXT);
    expectBroken(r, 'desc[0].flags', F_INDIRECT | F_NEXT);
  });

  test('a table outside memory, or wrapping past 2^64', () => {
    const r = open();
    indirectHead(r, 32, F_INDIRECT, END - 16n);
    expectBroken(r, 'desc[0].addr', END - 16n);
    const r2 = new RawRing();
    try {
      r2.writeDesc(0, { addr: (1n << 64n) - 16n, len: 32, flags: F_INDIRECT, next: 0 });
      r2.publish([0]);
      expectBroken(r2, 'desc[0].addr', (1n << 64n) - 16n);
    } finally {
      r2.close();
    }
  });

  test('a nested indirect descriptor', () => {
    const r = open();
    r.writeDesc(0, { addr: BUFS, len: 8, flags: F_NEXT, next: 1 }, TABLE);
    r.writeDesc(1, { addr: TABLE, len: 32, flags: F_INDIRECT, next: 0 }, TABLE);
    indirectHead(r, 32);
    expectBroken(r, 'desc[0] indirect[1].flags', F_INDIRECT);
  });

  test('a next outside the table', () => {
    const r = open();
    r.writeDesc(0, { addr: BUFS, len: 8, flags: F_NEXT, next: 2 }, TABLE);
    r.writeDesc(1, { addr: BUFS, len: 8, flags: 0, next: 0 }, TABLE);
    indirectHead(r, 32);
    expectBroken(r, 'desc[0] indirect[0].next', 2);
  });

  test('a loop inside the table', () => {
    const r = open();
    r.writeDesc(0, { addr: BUFS, len: 8, flags: F_NEXT, next: 1 }, TABLE);
    r.writeDesc(1, { addr: BUFS, len: 8, flags: F_NEXT, next: 0 }, TABLE);
    indirectHead(r, 32);
    expectBroken(r, 'desc[0] indirect[1].next', 0); // the 3rd entry visited in a 2-entry table
    expect(r.queue.broken!.message).toMatch(/loop/);
  });

  test('an entry outside memory', () => {
    const r = open();
    r.writeDesc(0, { addr: BUFS, len: 8, flags: F_NEXT, next: 1 }, TABLE);
    r.writeDesc(1, { addr: END, len: 8, flags: F_WRITE, next: 0 }, TABLE);
    indirectHead(r, 32);
    expectBroken(r, 'desc[0] indirect[1].addr', END);
  });

  test('the table is read once: changing it after pop() changes nothing the device holds', () => {
    const r = open();
    r.writeDesc(0, { addr: BUFS, len: 8, flags: F_NEXT, next: 1 }, TABLE);
    r.writeDesc(1, { addr: BUFS + 0x100n, len: 8, flags: F_WRITE, next: 0 }, TABLE);
    indirectHead(r, 32);
    const c = r.queue.pop()!;
    r.writeDesc(1, { addr: END, len: 0xffff_ffff, flags: F_WRITE, next: 0 }, TABLE); // too late
    expect(r.queue.complete(c.head, pattern(8, 4))).toBe(8);
    expect(Buffer.from(r.mem.view(BUFS + 0x100n, 8)).equals(pattern(8, 4))).toBe(true);
    expect(r.queue.flush()).toBe(true);
    expect(r.usedElem(0)).toEqual({ id: 0, len: 8 });
  });
});

describe('memory replaced or closed under a queue', () => {
  test('complete() writes through the new table after setMemory(), never through the old mapping', () => {
    const r = open();
    r.writeDesc(2, { addr: BUFS, len: 16, flags: F_WRITE, next: 0 });
    r.publish([2]);
    const c = r.queue.pop()!;
    const region = r.mem.regions[0];
    const next = DeviceMemory.map([{ fd: region.fd, gpa: region.gpa, size: region.size, userAddr: region.hva, mmapOffset: 0n }]);
    try {
      r.queue.setMemory(next);
      r.device.close(); // the old mapping is gone: a stale pointer would hit a guard or unmapped page
      expect(r.queue.complete(c.head, pattern(16, 7))).toBe(16);
      expect(Buffer.from(r.mem.view(BUFS, 16)).equals(pattern(16, 7))).toBe(true);
      expect(r.queue.flush()).toBe(true);
      expect(r.usedIdx).toBe(1);
    } finally {
      next.close();
    }
  });

  test('a chain whose buffers the new table no longer maps breaks the queue at complete(), writing nothing', () => {
    const r = open();
    r.writeDesc(2, { addr: BUFS, len: 16, flags: F_WRITE, next: 0 });
    r.publish([2]);
    const c = r.queue.pop()!;
    const region = r.mem.regions[0];
    // The new table keeps the rings (first half) but not the buffers (second half).
    const half = region.size / 2n;
    const next = DeviceMemory.map([{ fd: region.fd, gpa: region.gpa, size: half, userAddr: region.hva, mmapOffset: 0n }]);
    try {
      r.queue.setMemory(next);
      r.device.close();
      const e = thrown(() => r.queue.complete(c.head, pattern(16, 7)));
      expect(e.code).toBe('ERR_VHOST_RING_BROKEN');
      expect(r.queue.broken).toBe(e);
      expect(r.queue.broken!.field).toBe('in-flight chain 2 buffer');
      expect(r.queue.broken!.value).toBe(BUFS);
      expect(Buffer.from(r.mem.view(BUFS, 16)).equals(Buffer.alloc(16))).toBe(true);
      expect(r.usedIdx).toBe(0);
    } finally {
      next.close();
    }
  });

  test('setMemory() to a table without the rings fails with ERR_VHOST_GUEST_ADDRESS and keeps the old one', () => {
    const r = open();
    const region = r.mem.regions[0];
    const elsewhere = DeviceMemory.map([{ fd: region.fd, gpa: region.gpa, size: region.size, userAddr: region.hva + (1n << 40n), mmapOffset: 0n }]);
    try {
      expect(thrown(() => r.queue.setMemory(elsewhere)).code).toBe('ERR_VHOST_GUEST_ADDRESS');
      r.writeDesc(0, { addr: BUFS, len: 4, flags: 0, next: 0 });
      r.publish([0]);
      expect(r.queue.pop()!.head).toBe(0);
    } finally {
      elsewhere.close();
    }
  });

  test('DeviceMemory.close() unmaps at once, and the queues over it touch nothing afterwards', () => {
    const r = open();
    const maps = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('linux-vhost-guest')).length;
    const withBoth = maps();
    r.writeDesc(0, { addr: BUFS, len: 4, flags: F_WRITE, next: 0 });
    r.publish([0]);
    const c = r.queue.pop()!;
    r.publish([0]);
    r.device.close();
    expect(maps()).toBe(withBoth - 1); // only the GuestMemory's own mapping remains
    expect(r.queue.pop()).toBeNull();
    expect(thrown(() => r.queue.complete(c.head, pattern(4, 0))).code).toBe('ERR_VHOST_CLOSED');
    expect(r.queue.flush()).toBe(false);
    expect(r.queue.broken).toBeNull();
    expect(r.queue.nextAvail).toBe(1);
  });
});

test('a buffer across two regions (contiguous guest-physical, separate files) is read whole; a gap between regions is not memory', () => {
  const a = GuestMemory.create({ regions: [{ gpa: 0x100000n, size: 0x10000n }, { gpa: 0x110000n, size: 0x10000n }, { gpa: 0x130000n, size: 0x10000n }] });
  const [r0, r1, r2] = a.regions;
  const dev = DeviceMemory.map(a.regions.map((r) => ({ fd: r.fd, gpa: r.gpa, size: r.size, userAddr: r.hva, mmapOffset: 0n })));
  try {
    a.view(0x10fff0n, 16).set(pattern(16, 1));
    a.view(0x110000n, 16).set(pattern(16, 2));
    expect(dev.read(0x10fff0n, 32).equals(Buffer.concat([pattern(16, 1), pattern(16, 2)]))).toBe(true);
    dev.write(0x10fff8n, pattern(16, 3));
    expect(Buffer.from(a.view(0x110000n, 8)).equals(pattern(16, 3).subarray(8))).toBe(true);
    expect(thrown(() => dev.read(r1.gpa + r1.size - 8n, 16)).code).toBe('ERR_VHOST_GUEST_ADDRESS'); // the gap
    expect(dev.read(r2.gpa, 4)).toHaveLength(4);
    expect(r0.size).toBe(0x10000n);
  } finally {
    dev.close();
    a.close();
  }
});
