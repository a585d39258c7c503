// The device side of a split ring against a driver it did not write: this
// library's driver-side Virtqueue posts chains into a memfd, the DeviceQueue
// maps the same memfd a second time (as a vhost-user back-end does) and pops,
// completes and flushes them. Bytes and used lengths are checked both ways,
// kick and interrupt suppression (EVENT_IDX and flags) both ways, and 16-bit
// index wrap-around from a base near 65535.
import { GuestMemory } from '../../../lib/core/memory';
import { DeviceMemory } from '../../../lib/virtio/device-memory';
import { DeviceQueue } from '../../../lib/virtio/device-queue';
import { BUFS, pattern, REGION_GPA, ringPair, type RingPair } from '../../support/device-ring';
import { thrown } from '../../support/helpers';

let pair: RingPair | undefined;
afterEach(() => {
  pair?.close();
  pair = undefined;
});
const open = (o?: Parameters<typeof ringPair>[0]): RingPair => (pair = ringPair(o));

describe('DeviceQueue against the driver-side Virtqueue', () => {
  for (const indirect of [false, true]) {
    const kind = indirect ? 'indirect' : 'direct';
    test(`${kind} chains: the device reads the readable bytes in order and writes its reply into the writable buffers`, () => {
      const p = open({ indirect });
      const out = [pattern(100, 1), pattern(37, 2), pattern(1500, 3)];
      p.mem.view(BUFS, 100).set(out[0]);
      p.mem.view(BUFS + 0x1000n, 37).set(out[1]);
      p.mem.view(BUFS + 0x2000n, 1500).set(out[2]);
      const [head] = p.driver.post([[
        { gpa: BUFS, len: 100 }, { gpa: BUFS + 0x1000n, len: 37 }, { gpa: BUFS + 0x2000n, len: 1500 },
        { gpa: BUFS + 0x3000n, len: 10, writable: true }, { gpa: BUFS + 0x4000n, len: 2000, writable: true },
      ]]);
      const chain = p.queue.pop()!;
      expect(chain.head).toBe(head);
      expect(chain.readable.equals(Buffer.concat(out))).toBe(true);
      expect(chain.writable).toBe(2010);
      expect(p.queue.inflight).toBe(1);
      expect(p.queue.pop()).toBeNull();
      // Two parts across both writable buffers: 4 + 1000 bytes.
      const reply = [pattern(4, 9), pattern(1000, 10)];
      expect(p.queue.complete(chain.head, reply)).toBe(1004);
      expect(p.driver.collect()).toEqual([]); // not visible before flush()
      expect(p.queue.flush()).toBe(true);
      expect(p.driver.collect()).toEqual([{ head, len: 1004 }]);
      const joined = Buffer.concat(reply);
      expect(Buffer.from(p.mem.view(BUFS + 0x3000n, 10)).equals(joined.subarray(0, 10))).toBe(true);
      expect(Buffer.from(p.mem.view(BUFS + 0x4000n, 994)).equals(joined.subarray(10))).toBe(true);
      expect(p.mem.view(BUFS + 0x4000n + 994n, 1)[0]).toBe(0); // nothing past the data
      expect(p.queue.inflight).toBe(0);
    });
  }

  test('a full ring of chains, popped in a batch and completed out of order, comes back with each length', () => {
    const p = open({ size: 64, indirect: true });
    const chains = Array.from({ length: 64 }, (_, i) => [
      { gpa: BUFS + BigInt(i) * 0x100n, len: 16 + i },
      { gpa: BUFS + 0x10000n + BigInt(i) * 0x100n, len: 64, writable: true },
    ]);
    for (let i = 0; i < 64; i++) p.mem.view(BUFS + BigInt(i) * 0x100n, 16 + i).set(pattern(16 + i, i));
    const heads = p.driver.post(chains);
    expect(heads).toHaveLength(64);
    const popped = p.queue.popBatch(100);
    expect(popped.map((c) => c.head)).toEqual(heads);
    popped.forEach((c, i) => expect(c.readable.equals(pattern(16 + i, i))).toBe(true));
    expect(p.queue.nextAvail).toBe(64);
    expect(p.queue.inflight).toBe(64);
    const order = [...popped].reverse();
    for (const c of order) p.queue.complete(c.head, pattern(c.head % 64, 99));
    p.queue.flush();
    expect(p.driver.collect()).toEqual(order.map((c) => ({ head: c.head, len: c.head % 64 })));
    expect(p.driver.numFree).toBe(64);
  });

  test('complete() without data returns a zero-length used entry', () => {
    const p = open();
    const [head] = p.driver.post([[{ gpa: BUFS, len: 8 }]]);
    expect(p.queue.pop()!.writable).toBe(0);
    expect(p.queue.complete(head)).toBe(0);
    p.queue.flush();
    expect(p.driver.collect()).toEqual([{ head, len: 0 }]);
  });

  test('complete() refuses a head not in flight and data larger than the writable space, completing nothing', () => {
    const p = open();
    const [head] = p.driver.post([[{ gpa: BUFS, len: 8, writable: true }]]);
    const chain = p.queue.pop()!;
    expect(thrown(() => p.queue.complete(head + 1, pattern(1, 0))).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => p.queue.complete(chain.head, pattern(9, 0))).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => p.queue.complete(chain.head, [pattern(8, 0), 'x' as unknown as Uint8Array])).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(p.queue.usedIdx).toBe(0);
    expect(p.queue.flush()).toBe(false);
    expect(p.driver.collect()).toEqual([]);
    expect(p.queue.complete(chain.head, pattern(8, 0))).toBe(8);
    expect(thrown(() => p.queue.complete(chain.head, pattern(1, 0))).code).toBe('ERR_VHOST_INVALID_ARG'); // twice
  });

  describe('interrupt suppression (device → driver)', () => {
    for (const eventIdx of [true, false]) {
      test(`${eventIdx ? 'EVENT_IDX used_event' : 'VRING_AVAIL_F_NO_INTERRUPT'}: flush() says whether the driver wants an interrupt`, () => {
        const p = open({ eventIdx });
        const post = () => p.driver.post([[{ gpa: BUFS, len: 8, writable: true }]]);
        const serve = () => {
          const c = p.queue.pop()!;
          p.queue.complete(c.head, pattern(4, 0));
        };
        post();
        serve();
        expect(p.queue.flush()).toBe(true);
        expect(p.driver.collect()).toHaveLength(1);
        p.driver.disableCallbacks();
        post();
        serve();
        expect(p.queue.flush()).toBe(false);
        expect(p.queue.flush()).toBe(false); // nothing new
        expect(p.driver.enableCallbacks()).toBe(true); // the entry waits: the driver collects
        expect(p.driver.collect()).toHaveLength(1);
        expect(p.driver.enableCallbacks()).toBe(false);
        post();
        serve();
        expect(p.queue.flush()).toBe(true);
        p.driver.collect();
        if (eventIdx) {
          // Delayed: used_event = first + 3 (3/4 of 4 in flight); the spec's
          // interrupt comes when the used index moves past it, at the 4th.
          p.driver.post(Array.from({ length: 4 }, (_, i) => [{ gpa: BUFS + BigInt(i) * 64n, len: 8, writable: true }]));
          p.driver.enableCallbacks(true);
          const chains = p.queue.popBatch(4);
          const results = chains.map((c) => {
            p.queue.complete(c.head);
            return p.queue.flush();
          });
          expect(results).toEqual([false, false, false, true]);
        }
      });
    }
  });

  describe('kick suppression (driver → device)', () => {
    for (const eventIdx of [true, false]) {
      test(`${eventIdx ? 'EVENT_IDX avail_event' : 'VRING_USED_F_NO_NOTIFY'}: enableNotify() decides whether the driver kicks`, () => {
        const p = open({ eventIdx });
        const post = () => p.driver.post([[{ gpa: BUFS, len: 8 }]]);
        post();
        expect(p.kick.read()).toBe(1n); // notifications start enabled
        expect(p.queue.enableNotify(false)).toBe(false);
        const c = p.queue.pop()!;
        post();
        post();
        expect(p.kick.read()).toBeNull();
        expect(p.driver.kickStats.suppressed).toBe(2);
        // Re-enabling finds the two chains that came meanwhile.
        expect(p.queue.enableNotify(true)).toBe(true);
        expect(p.queue.popBatch(8)).toHaveLength(2);
        expect(p.queue.enableNotify(true)).toBe(false);
        post();
        expect(p.kick.read()).toBe(1n);
        p.queue.complete(c.head);
      });
    }
  });

  test('16-bit indices wrap: a queue resumed at base 65531 serves chains across 65535 → 0', () => {
    const size = 8;
    const p = open({ size, eventIdx: true, indirect: true });
    // Bring the driver's indices to 65531 (both avail and used), in batches.
    let served = 0;
    while (served < 65531) {
      const n = Math.min(size, 65531 - served);
      p.driver.post(Array.from({ length: n }, () => [{ gpa: BUFS, len: 4 }]), false);
      for (const c of p.queue.popBatch(n)) p.queue.complete(c.head);
      p.queue.flush();
      expect(p.driver.collect()).toHaveLength(n);
      served += n;
    }
    expect(p.driver.availIdx).toBe(65531);
    // A new device queue resumes there (GET_VRING_BASE → SET_VRING_BASE), used index read from the ring.
    const base = p.queue.nextAvail;
    p.queue.close();
    const q = p.reopen({ base });
    expect(q.usedIdx).toBe(65531);
    try {
      for (let round = 0; round < 4; round++) {
        const chains = Array.from({ length: size }, (_, i) => [
          { gpa: BUFS + BigInt(i) * 0x100n, len: 3 + i },
          { gpa: BUFS + 0x8000n + BigInt(i) * 0x100n, len: 32, writable: true },
          { gpa: BUFS + 0x9000n + BigInt(i) * 0x100n, len: 32, writable: true },
        ]);
        chains.forEach((_, i) => p.mem.view(BUFS + BigInt(i) * 0x100n, 3 + i).set(pattern(3 + i, round * 16 + i)));
        const heads = p.driver.post(chains);
        const got = q.popBatch(size);
        expect(got.map((c) => c.head)).toEqual(heads);
        got.forEach((c, i) => {
          expect(c.readable.equals(pattern(3 + i, round * 16 + i))).toBe(true);
          q.complete(c.head, pattern(40 + i, round));
        });
        q.flush();
        expect(p.driver.collect()).toEqual(heads.map((head, i) => ({ head, len: 40 + i })));
        got.forEach((_, i) => {
          const written = Buffer.concat([Buffer.from(p.mem.view(BUFS + 0x8000n + BigInt(i) * 0x100n, 32)), Buffer.from(p.mem.view(BUFS + 0x9000n + BigInt(i) * 0x100n, 8 + i))]);
          expect(written.equals(pattern(40 + i, round))).toBe(true);
        });
      }
      expect(q.nextAvail).toBe((65531 + 32) & 0xffff);
      expect(q.usedIdx).toBe((65531 + 32) & 0xffff);
    } finally {
      q.close();
    }
  });
});

describe('DeviceQueue lifetime and options', () => {
  test('closing the memory stops the queue: pop() gives null, complete() throws ERR_VHOST_CLOSED, nextAvail stays readable', () => {
    const p = open();
    p.driver.post([[{ gpa: BUFS, len: 8, writable: true }], [{ gpa: BUFS, len: 8 }]]);
    const c = p.queue.pop()!;
    p.device.close();
    expect(p.device.closed).toBe(true);
    expect(p.queue.pop()).toBeNull();
    expect(p.queue.popBatch(4)).toEqual([]);
    expect(thrown(() => p.queue.complete(c.head, pattern(8, 0))).code).toBe('ERR_VHOST_CLOSED');
    expect(p.queue.flush()).toBe(false);
    expect(p.queue.enableNotify(true)).toBe(false);
    expect(p.queue.nextAvail).toBe(1);
    expect(thrown(() => p.device.read(BUFS, 1)).code).toBe('ERR_VHOST_CLOSED');
    expect(thrown(() => new DeviceQueue(p.device, { size: 256, desc: 0n, avail: 0n, used: 0n })).code).toBe('ERR_VHOST_CLOSED');
  });

  test('a closed queue throws ERR_VHOST_CLOSED but still answers nextAvail and inflight', () => {
    const p = open();
    p.driver.post([[{ gpa: BUFS, len: 8 }]]);
    p.queue.pop();
    p.queue.close();
    p.queue.close();
    for (const call of [() => p.queue.pop(), () => p.queue.popBatch(1), () => p.queue.flush(), () => p.queue.complete(0), () => p.queue.enableNotify(true)]) {
      expect(thrown(call).code).toBe('ERR_VHOST_CLOSED');
    }
    expect(p.queue.nextAvail).toBe(1);
    expect(p.queue.closed).toBe(true);
  });

  test('rings outside the mapped regions give ERR_VHOST_GUEST_ADDRESS naming the ring; bad options are typed errors', () => {
    const p = open();
    const base = { size: 256, desc: p.userAddr(p.ring.desc), avail: p.userAddr(p.ring.avail), used: p.userAddr(p.ring.used) };
    const end = p.userAddr(REGION_GPA) + (1n << 20n);
    let e = thrown(() => new DeviceQueue(p.device, { ...base, used: end - 16n }));
    expect(e.code).toBe('ERR_VHOST_GUEST_ADDRESS');
    expect(e.message).toMatch(/used ring/);
    e = thrown(() => new DeviceQueue(p.device, { ...base, desc: p.ring.desc })); // a GPA is not a front-end address
    expect(e.code).toBe('ERR_VHOST_GUEST_ADDRESS');
    expect(e.message).toMatch(/descriptor table/);
    expect(thrown(() => new DeviceQueue(p.device, { ...base, avail: base.avail + 1n })).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => new DeviceQueue(p.device, { ...base, size: 300 })).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => new DeviceQueue(p.device, { ...base, size: 65536 })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => new DeviceQueue(p.device, { ...base, base: 65536 })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => new DeviceQueue({} as DeviceMemory, base)).code).toBe('ERR_VHOST_INVALID_ARG');
  });

  test('DeviceMemory read/write go by guest-physical address and refuse bytes outside the regions', () => {
    const p = open();
    p.device.write(BUFS, pattern(64, 5));
    expect(Buffer.from(p.mem.view(BUFS, 64)).equals(pattern(64, 5))).toBe(true);
    p.mem.view(BUFS + 0x100n, 3).set([1, 2, 3]);
    expect([...p.device.read(BUFS + 0x100n, 3)]).toEqual([1, 2, 3]);
    const end = REGION_GPA + (1n << 20n);
    expect(thrown(() => p.device.read(end - 2n, 3)).code).toBe('ERR_VHOST_GUEST_ADDRESS');
    expect(thrown(() => p.device.write(REGION_GPA - 1n, new Uint8Array(2))).code).toBe('ERR_VHOST_GUEST_ADDRESS');
    expect(thrown(() => p.device.read((1n << 64n) - 1n, 2)).code).toBe('ERR_VHOST_GUEST_ADDRESS');
    expect(p.device.read(end - 2n, 2)).toHaveLength(2);
  });
});

test('a second GuestMemory is not confused with the first: the device sees only its own mapping', () => {
  const p = open();
  const other = GuestMemory.create({ regions: [{ gpa: REGION_GPA, size: 1n << 20n }] });
  try {
    other.view(BUFS, 4).set([9, 9, 9, 9]);
    expect([...p.device.read(BUFS, 4)]).toEqual([0, 0, 0, 0]);
  } finally {
    other.close();
  }
});
