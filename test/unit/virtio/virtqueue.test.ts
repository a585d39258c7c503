// The native split-ring driver against a pure-TS reference device that reads
// the rings exactly as the virtio spec lays them out (no kernel needed: the
// memory is a memfd mapping of this process). Checks chain encoding, the
// free list, indirect tables, EVENT_IDX / NO_NOTIFY kick suppression,
// callback requests, and that closed memory gives ERR_VHOST_CLOSED.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { EventFd } from '../../../lib/core/eventfd';
import { GuestMemory } from '../../../lib/core/memory';
import { native } from '../../../lib/core/native';
import { encodeChains, INDIRECT_MAX, placeVirtqueue, Virtqueue, type VirtqueueSegment } from '../../../lib/virtio/virtqueue';
import { thrown } from '../../support/helpers';

const REGION_GPA = 0x100000n;
const REGION_SIZE = 1 << 20;
const BUFS = REGION_GPA + 0x80000n; // buffers live here
const DIST = path.join(__dirname, '../../../dist'); // built by `npm run build:ts`

interface Seen {
  gpa: bigint;
  len: number;
  writable: boolean;
}

/** A device that follows the spec: reads avail, walks descriptors (and indirect tables), writes used. */
class RefDevice {
  lastAvail = 0;
  usedIdx = 0;
  constructor(
    private mem: GuestMemory,
    private size: number,
    private ring: { desc: bigint; avail: bigint; used: bigint },
  ) {}

  dv(gpa: bigint, len: number): DataView {
    const v = this.mem.view(gpa, len);
    return new DataView(v.buffer, v.byteOffset, len);
  }
  get availIdx(): number {
    return this.dv(this.ring.avail + 2n, 2).getUint16(0, true);
  }
  get usedEvent(): number {
    return this.dv(this.ring.avail + 4n + 2n * BigInt(this.size), 2).getUint16(0, true);
  }
  get availFlags(): number {
    return this.dv(this.ring.avail, 2).getUint16(0, true);
  }
  setAvailEvent(v: number): void {
    this.dv(this.ring.used + 4n + 8n * BigInt(this.size), 2).setUint16(0, v, true);
  }
  setUsedFlags(v: number): void {
    this.dv(this.ring.used, 2).setUint16(0, v, true);
  }

  /** The next available chain: its head and segments; null when none. */
  pop(): { head: number; segs: Seen[]; indirect: boolean } | null {
    if (this.lastAvail === this.availIdx) return null;
    const head = this.dv(this.ring.avail + 4n + 2n * BigInt(this.lastAvail % this.size), 2).getUint16(0, true);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    const read = (table: bigint, i: number) => {
      const d = this.dv(table + 16n * BigInt(i), 16);
      return { addr: d.getBigUint64(0, true), len: d.getUint32(8, true), flags: d.getUint16(12, true), next: d.getUint16(14, true) };
    };
    let d = read(this.ring.desc, head);
    let table = this.ring.desc;
    let indirect = false;
    if (d.flags & 4) {
      indirect = true;
      table = d.addr;
      expect(d.len % 16).toBe(0);
      d = read(table, 0);
    }
    const segs: Seen[] = [];
    for (let guard = 0; guard <= this.size * INDIRECT_MAX; guard++) {
      segs.push({ gpa: d.addr, len: d.len, writable: (d.flags & 2) !== 0 });
      if (!(d.flags & 1)) return { head, segs, indirect };
      d = read(table, d.next);
    }
    throw new Error('descriptor loop');
  }

  /** Returns a chain to the driver as used. */
  push(head: number, len: number): void {
    const e = this.dv(this.ring.used + 4n + 8n * BigInt(this.usedIdx % this.size), 8);
    e.setUint32(0, head, true);
    e.setUint32(4, len, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.dv(this.ring.used + 2n, 2).setUint16(0, this.usedIdx, true);
  }
}

interface Rig {
  mem: GuestMemory;
  kick: EventFd;
  vq: Virtqueue;
  dev: RefDevice;
  close(): void;
}

function rig(size: number, opts: { eventIdx?: boolean; indirect?: boolean } = {}): Rig {
  const mem = GuestMemory.create({ regions: [{ gpa: REGION_GPA, size: REGION_SIZE }] });
  const kick = EventFd.create();
  const ring = placeVirtqueue(size, REGION_GPA, { indirect: opts.indirect });
  const vq = Virtqueue.create({ memory: mem, size, ...ring, kick, eventIdx: opts.eventIdx ?? true, indirect: opts.indirect ?? false });
  const dev = new RefDevice(mem, size, ring);
  return {
    mem, kick, vq, dev,
    close() {
      vq.close();
      kick.close();
      mem.close();
    },
  };
}

const chainArb = fc
  .tuple(fc.array(fc.integer({ min: 1, max: 4096 }), { maxLength: 3 }), fc.array(fc.integer({ min: 1, max: 4096 }), { maxLength: 3 }))
  .filter(([r, w]) => r.length + w.length > 0)
  .map(([r, w], ) => [...r.map((len) => ({ len, writable: false })), ...w.map((len) => ({ len, writable: true }))]);

/** Gives each segment a distinct buffer address. */
function place(chains: { len: number; writable: boolean }[][]): VirtqueueSegment[][] {
  let gpa = BUFS;
  return chains.map((c) => c.map((s) => {
    const seg = { gpa, len: s.len, writable: s.writable };
    gpa += 4096n;
    return seg;
  }));
}

describe('Virtqueue against a reference device', () => {
  test('the device sees every posted chain, in order, with its buffers and directions', () => {
    fc.assert(
      fc.property(fc.array(chainArb, { minLength: 1, maxLength: 20 }), fc.boolean(), (raw, indirect) => {
        const r = rig(64, { indirect });
        try {
          const chains = place(raw);
          const heads = r.vq.post(chains);
          expect(heads.length).toBe(chains.length);
          for (let i = 0; i < chains.length; i++) {
            const got = r.dev.pop()!;
            expect(got.head).toBe(heads[i]);
            expect(got.segs).toEqual(chains[i].map((s) => ({ gpa: s.gpa, len: s.len, writable: !!s.writable })));
            expect(got.indirect).toBe(indirect && chains[i].length > 1);
          }
          expect(r.dev.pop()).toBeNull();
        } finally {
          r.close();
        }
      }),
      { numRuns: 60 },
    );
  });

  test('free list: descriptors are conserved over any post / use / collect sequence', () => {
    const SIZE = 16;
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.array(chainArb, { maxLength: 6 }), fc.integer({ min: 0, max: 8 })), { maxLength: 30 }), (steps) => {
        const r = rig(SIZE, { eventIdx: false });
        const inFlight = new Map<number, number>(); // head -> descriptors
        try {
          for (const [raw, use] of steps) {
            const chains = place(raw);
            const heads = r.vq.post(chains);
            // a chain that does not fit stops the batch: all before it were posted
            let need = 0;
            let fits = 0;
            for (const c of chains) {
              if (need + c.length > SIZE - [...inFlight.values()].reduce((a, b) => a + b, 0)) break;
              need += c.length;
              fits++;
            }
            expect(heads.length).toBe(fits);
            heads.forEach((h, i) => {
              expect(inFlight.has(h)).toBe(false);
              inFlight.set(h, chains[i].length);
            });
            for (let k = 0; k < use; k++) {
              const c = r.dev.pop();
              if (!c) break;
              r.dev.push(c.head, 7);
            }
            for (const u of r.vq.collect()) {
              expect(u.len).toBe(7);
              expect(inFlight.delete(u.head)).toBe(true);
            }
            const held = [...inFlight.values()].reduce((a, b) => a + b, 0);
            expect(r.vq.numFree).toBe(SIZE - held);
          }
        } finally {
          r.close();
        }
      }),
      { numRuns: 80 },
    );
  });

  test('a full ring accepts nothing more until buffers are collected; indices wrap past 65535', () => {
    const r = rig(4);
    try {
      const one = (i: number) => [{ gpa: BUFS + BigInt(i) * 4096n, len: 100 }];
      for (let round = 0; round < 16400 * 4; round += 4) {
        expect(r.vq.post([one(0), one(1), one(2), one(3), one(4)]).length).toBe(4);
        expect(r.vq.post([one(5)])).toEqual([]);
        for (let k = 0; k < 4; k++) r.dev.push(r.dev.pop()!.head, 1);
        expect(r.vq.collect().length).toBe(4);
      }
      expect(r.vq.availIdx).toBe((16400 * 4) & 0xffff);
      expect(r.vq.lastUsedIdx).toBe(r.vq.availIdx);
      expect(r.vq.numFree).toBe(4);
    } finally {
      r.close();
    }
  });

  test('EVENT_IDX: kicks only when the new avail idx crosses avail_event', () => {
    const r = rig(64);
    try {
      const chain = [{ gpa: BUFS, len: 64 }];
      r.dev.setAvailEvent(0); // device wants a kick after entry 0
      r.vq.post([chain]);
      expect(r.kick.read()).toBe(1n);
      r.vq.post([chain, chain]); // avail_event still 0: already passed, no kick
      expect(r.kick.read()).toBeNull();
      r.dev.setAvailEvent(4); // wants a kick once entry 4 is added
      r.vq.post([chain]); // idx 3 -> 4: entry 3 added, not 4
      expect(r.kick.read()).toBeNull();
      r.vq.post([chain, chain]); // idx 4 -> 6 crosses 4
      expect(r.kick.read()).toBe(1n);
      expect(r.vq.kickStats).toEqual({ kicks: 2, suppressed: 2 });
      r.vq.post([chain], false); // no notify requested: no kick, the next notify() decides
      expect(r.kick.read()).toBeNull();
      r.dev.setAvailEvent(6);
      expect(r.vq.notify()).toBe(true);
      expect(r.kick.read()).toBe(1n);
    } finally {
      r.close();
    }
  });

  test('a failed kick is not forgotten: notify() retries it (kick fd whose write(2) fails for real)', () => {
    const mem = GuestMemory.create({ regions: [{ gpa: REGION_GPA, size: REGION_SIZE }] });
    // /dev/null opened read-only: write(2) on it fails EBADF, like a kick fd that broke.
    const broken = native.fdAdopt(fs.openSync('/dev/null', 'r'), 'kick-ro');
    const kick = { write: () => undefined, nativeHandle: broken } as unknown as EventFd;
    const ring = placeVirtqueue(8, REGION_GPA);
    const vq = Virtqueue.create({ memory: mem, size: 8, ...ring, kick, eventIdx: false, indirect: false });
    try {
      const chain = [{ gpa: BUFS, len: 64 }];
      vq.post([chain], false); // pending, no kick yet
      expect(vq.post([chain])).toHaveLength(1); // published even though its kick fails
      expect(thrown(() => vq.notify()).code).toBe('EBADF'); // both chains still owe the device a kick
      expect(thrown(() => vq.notify()).code).toBe('EBADF');
      expect(vq.kickStats.kicks).toBe(0);
    } finally {
      vq.close();
      broken.close();
      mem.close();
    }
  });

  test('without EVENT_IDX: VRING_USED_F_NO_NOTIFY suppresses kicks', () => {
    const r = rig(8, { eventIdx: false });
    try {
      const chain = [{ gpa: BUFS, len: 64 }];
      r.vq.post([chain]);
      expect(r.kick.read()).toBe(1n);
      r.dev.setUsedFlags(1);
      r.vq.post([chain]);
      expect(r.kick.read()).toBeNull();
      r.dev.setUsedFlags(0);
      r.vq.post([chain]);
      expect(r.kick.read()).toBe(1n);
    } finally {
      r.close();
    }
  });

  test('enableCallbacks sets used_event (or clears NO_INTERRUPT) and reports entries already waiting', () => {
    const r = rig(16);
    try {
      const chain = [{ gpa: BUFS, len: 64 }];
      r.vq.post(Array(8).fill(chain));
      expect(r.vq.enableCallbacks()).toBe(false);
      expect(r.dev.usedEvent).toBe(0);
      r.dev.push(r.dev.pop()!.head, 1);
      expect(r.vq.enableCallbacks()).toBe(true); // one waits already
      expect(r.vq.collect().length).toBe(1);
      expect(r.dev.usedEvent).toBe(1); // collect keeps used_event at the next entry
      expect(r.vq.enableCallbacks(true)).toBe(false);
      expect(r.dev.usedEvent).toBe(1 + Math.floor((7 * 3) / 4)); // 3/4 of the 7 in flight
      r.vq.disableCallbacks();
      expect(r.dev.usedEvent).toBe((1 + 0x8000) & 0xffff);
    } finally {
      r.close();
    }
    const s = rig(16, { eventIdx: false });
    try {
      s.vq.disableCallbacks();
      expect(s.dev.availFlags).toBe(1);
      s.vq.enableCallbacks();
      expect(s.dev.availFlags).toBe(0);
    } finally {
      s.close();
    }
  });

  test('a used id that is not in flight is a device error (ERR_VHOST_DEVICE), not a corrupted free list', () => {
    const r = rig(8);
    try {
      r.dev.push(3, 10);
      expect(thrown(() => r.vq.collect()).code).toBe('ERR_VHOST_DEVICE');
    } finally {
      r.close();
    }
  });

  test('closing the guest memory or the queue makes every call throw ERR_VHOST_CLOSED', () => {
    const r = rig(8);
    r.vq.post([[{ gpa: BUFS, len: 1 }]]);
    r.mem.close();
    for (const fn of [() => r.vq.post([[{ gpa: BUFS, len: 1 }]]), () => r.vq.collect(), () => r.vq.notify(), () => r.vq.enableCallbacks()]) {
      expect(thrown(fn).code).toBe('ERR_VHOST_CLOSED');
    }
    r.close();
    expect(thrown(() => r.vq.numFree).code).toBe('ERR_VHOST_CLOSED');
    r.close(); // idempotent
  });

  test('a closed kick eventfd fails the kick with ERR_VHOST_CLOSED', () => {
    const r = rig(8);
    try {
      r.kick.close();
      expect(thrown(() => r.vq.post([[{ gpa: BUFS, len: 1 }]])).code).toBe('ERR_VHOST_CLOSED');
    } finally {
      r.close();
    }
  });
});

describe('Virtqueue.lend / revoke: one buffer slot as an ArrayBuffer of its own', () => {
  test('a lent buffer is the memory itself (no copy), and revoke detaches it without touching the rest', () => {
    const r = rig(16);
    try {
      const off = Number(BUFS - REGION_GPA);
      const a = new Uint8Array(r.vq.lend(off, 100));
      const b = new Uint8Array(r.vq.lend(off + 100, 50));
      const mem = r.mem.view(BUFS, 150);
      a[0] = 0x11;
      a[99] = 0x22;
      b[0] = 0x33;
      expect([mem[0], mem[99], mem[100]]).toEqual([0x11, 0x22, 0x33]);
      mem[1] = 0x44;
      expect(a[1]).toBe(0x44);
      expect([a.length, b.length]).toEqual([100, 50]);
      r.vq.revoke(a.buffer);
      expect(a.byteLength).toBe(0);
      expect(a[0]).toBeUndefined();
      expect(b[0]).toBe(0x33); // the other loan and the memory are untouched
      expect(mem[0]).toBe(0x11);
      r.vq.revoke(a.buffer); // idempotent
      r.vq.revoke(b.buffer);
      expect(b.byteLength).toBe(0);
    } finally {
      r.close();
    }
  });

  test('out-of-region and empty loans throw ERR_VHOST_OUT_OF_RANGE; lend after close ERR_VHOST_CLOSED; revoke wants an ArrayBuffer', () => {
    const r = rig(16);
    try {
      expect(thrown(() => r.vq.lend(REGION_SIZE - 10, 11))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
      expect(thrown(() => r.vq.lend(0, 0))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
      expect(thrown(() => r.vq.lend(-1, 4))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(new Uint8Array(r.vq.lend(REGION_SIZE - 10, 10)).length).toBe(10);
      expect(thrown(() => r.vq.revoke(new Uint8Array(4) as never))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      const kept = r.vq.lend(0, 8);
      r.vq.close();
      expect(thrown(() => r.vq.lend(0, 8))).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
      r.vq.revoke(kept); // still possible after close: how a guest takes its loans back on the way down
      expect(kept.byteLength).toBe(0);
    } finally {
      r.close();
    }
  });
});

describe('Virtqueue.lendBatch / revokeAll: one addon call per batch', () => {
  test('lendBatch lends each (offset, len) pair as its own buffer over the memory; revokeAll detaches exactly those still lent', () => {
    const r = rig(16);
    try {
      const off = Number(BUFS - REGION_GPA);
      const ranges = Uint32Array.of(off, 100, off + 512, 60, off + 1024, 1, 0, 0); // the last pair is beyond n
      const buffers = r.vq.lendBatch(ranges, 3);
      expect(buffers.map((b) => b.byteLength)).toEqual([100, 60, 1]);
      expect(r.vq.lentCount).toBe(3);
      const views = buffers.map((b) => new Uint8Array(b));
      views[0][99] = 0x11;
      views[1][0] = 0x22;
      views[2][0] = 0x33;
      const mem = r.mem.view(BUFS, 1025);
      expect([mem[99], mem[512], mem[1024]]).toEqual([0x11, 0x22, 0x33]); // the memory itself, not a copy
      mem[513] = 0x44;
      expect(views[1][1]).toBe(0x44);
      const single = r.vq.lend(off + 2048, 8); // lend() and lendBatch() loans mix
      const foreign = new ArrayBuffer(8); // never lent: left alone
      expect(r.vq.revokeAll([buffers[0], buffers[2], foreign, buffers[0]])).toBe(2);
      expect([views[0].byteLength, views[2].byteLength, foreign.byteLength]).toEqual([0, 0, 8]);
      expect(views[1][0]).toBe(0x22); // untouched
      expect(r.vq.lentCount).toBe(2);
      expect(r.vq.revokeAll([buffers[0], buffers[2]])).toBe(0); // idempotent
      expect(r.vq.revokeAll([buffers[1], single], 1)).toBe(1); // only the first n
      expect(single.byteLength).toBe(8);
      r.vq.revoke(single);
      expect(single.byteLength).toBe(0);
      expect(r.vq.lentCount).toBe(0);
      expect(r.vq.lendBatch(ranges, 0)).toEqual([]);
    } finally {
      r.close();
    }
  });

  test('a bad pair anywhere lends nothing (ERR_VHOST_OUT_OF_RANGE); bad arguments are typed errors; after close lendBatch throws ERR_VHOST_CLOSED and revokeAll still works', () => {
    const r = rig(16);
    try {
      const off = Number(BUFS - REGION_GPA);
      for (const bad of [[REGION_SIZE - 10, 11], [off, 0], [REGION_SIZE, 1], [0xffff_ffff, 2]]) {
        const ranges = Uint32Array.of(off, 64, off + 64, 64, bad[0], bad[1]);
        expect(thrown(() => r.vq.lendBatch(ranges, 3))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
        expect(r.vq.lentCount).toBe(0); // the good pairs before it were not lent either
      }
      expect(thrown(() => r.vq.lendBatch(Uint32Array.of(off, 4), 2))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' }); // n beyond the pairs given
      expect(thrown(() => r.vq.lendBatch([off, 4] as never, 1))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(thrown(() => r.vq.lendBatch(Uint32Array.of(off, 4), 0.5))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      const [kept] = r.vq.lendBatch(Uint32Array.of(off, 8), 1);
      expect(thrown(() => r.vq.revokeAll([kept, new Uint8Array(4) as never]))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(kept.byteLength).toBe(8); // checked before anything was detached
      expect(thrown(() => r.vq.revokeAll([kept], 2))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
      expect(thrown(() => r.vq.revokeAll(kept as never))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(thrown(() => r.vq.revoke(new Uint8Array(4) as never))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      r.vq.close();
      expect(thrown(() => r.vq.lendBatch(Uint32Array.of(off, 8), 1))).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
      expect(r.vq.revokeAll([kept])).toBe(1); // how a guest takes its loans back on the way down
      expect(kept.byteLength).toBe(0);
      expect(r.vq.revokeAll([kept])).toBe(0);
    } finally {
      r.close();
    }
  });

  test('the addon door itself checks what lib/virtio already does: out and buffers arrays, n against them, ArrayBuffer entries', () => {
    const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 16 }] });
    try {
      const place = placeVirtqueue(8, 0n);
      const vq = native.virtqueueCreate(mem.view(0n, 1 << 16).buffer as ArrayBuffer, 0n, { size: 8, desc: Number(place.desc), avail: Number(place.avail), used: Number(place.used), eventIdx: true, indirect: false }, null);
      const ranges = Uint32Array.of(0x8000, 16, 0x9000, 16);
      expect(thrown(() => vq.lendBatch(ranges, 2, {} as never))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(thrown(() => vq.lendBatch(ranges, 2, [null]))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' }); // out shorter than n
      expect(thrown(() => vq.lendBatch(ranges, 3, [null, null, null]))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' }); // ranges shorter than n
      expect(thrown(() => vq.lendBatch(Int32Array.of(0x8000, 16) as never, 1, [null]))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      const out: unknown[] = [null, null, 'kept'];
      expect(vq.lendBatch(ranges, 2, out)).toBe(2);
      expect(out.map((b) => (b instanceof ArrayBuffer ? b.byteLength : b))).toEqual([16, 16, 'kept']);
      expect(thrown(() => vq.revokeAll(out, 3))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' }); // 'kept' is no ArrayBuffer: nothing detached
      expect((out[0] as ArrayBuffer).byteLength).toBe(16);
      expect(thrown(() => vq.revokeAll(out, 4))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
      expect(thrown(() => vq.revokeAll('x' as never, 0))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      vq.revokeAll(out, 2);
      expect([(out[0] as ArrayBuffer).byteLength, (out[1] as ArrayBuffer).byteLength]).toEqual([0, 0]);
      vq.close();
      expect(thrown(() => vq.lendBatch(ranges, 1, [null]))).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
    } finally {
      mem.close();
    }
  });

  test('revoke() leaves alone an ArrayBuffer the queue did not lend (it used to detach any)', () => {
    const r = rig(16);
    try {
      const mine = new ArrayBuffer(16);
      r.vq.revoke(mine);
      expect(mine.byteLength).toBe(16);
      const whole = r.mem.view(BUFS, 16);
      r.vq.revoke(whole.buffer as ArrayBuffer); // the mapping's own buffer: detaching it would cut every view
      expect(whole.byteLength).toBe(16);
    } finally {
      r.close();
    }
  });

  test('memory.close() detaches lendBatch loans too', () => {
    const r = rig(16);
    try {
      const off = Number(BUFS - REGION_GPA);
      const views = r.vq.lendBatch(Uint32Array.of(off, 32, off + 32, 32), 2).map((b) => new Uint8Array(b));
      r.mem.close();
      expect(views.map((v) => v.byteLength)).toEqual([0, 0]);
      expect(r.vq.lentCount).toBe(0);
    } finally {
      r.close();
    }
  });

  test('lendBatch and revokeAll under random pairs: the good batches lend exactly what was asked, a bad pair lends nothing', () => {
    const r = rig(16);
    try {
      fc.assert(
        fc.property(fc.array(fc.tuple(fc.nat(REGION_SIZE + 16), fc.nat(4096)), { maxLength: 20 }), (pairs) => {
          const ranges = Uint32Array.from(pairs.flat());
          const ok = pairs.every(([o, l]) => l > 0 && o + l <= REGION_SIZE);
          if (!ok) {
            expect(thrown(() => r.vq.lendBatch(ranges, pairs.length))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
            expect(r.vq.lentCount).toBe(0);
            return;
          }
          const buffers = r.vq.lendBatch(ranges, pairs.length);
          expect(buffers.map((b) => b.byteLength)).toEqual(pairs.map(([, l]) => l));
          expect(r.vq.revokeAll(buffers)).toBe(pairs.length);
          expect(buffers.every((b) => b.byteLength === 0)).toBe(true);
          expect(r.vq.lentCount).toBe(0);
        }),
        { numRuns: 200 },
      );
    } finally {
      r.close();
    }
  });
});

describe('Virtqueue.lend: closing the memory detaches every buffer still lent', () => {
  test('memory.close() by itself detaches the loans of an open queue and of a closed one, keeps revoked ones revoked', () => {
    const r = rig(16);
    const other = Virtqueue.create({ memory: r.mem, size: 8, ...placeVirtqueue(8, REGION_GPA + 0x8000n), kick: null });
    try {
      const off = Number(BUFS - REGION_GPA);
      const loans = [0, 1, 2, 3].map((i) => new Uint8Array(r.vq.lend(off + 256 * i, 200)));
      loans[0][0] = 0x42;
      r.vq.revoke(loans[1].buffer);
      expect(r.vq.lentCount).toBe(3);
      const fromClosed = new Uint8Array(other.lend(off + 4096, 64));
      other.close(); // closed with a loan out: the loan must still be taken back by the unmap
      const plain = r.mem.view(BUFS, 16);
      expect(plain[0]).toBe(0x42);
      r.mem.close(); // not the queue's owner, not revoke(): the memory itself
      for (const view of [...loans, fromClosed, plain]) {
        expect(view.byteLength).toBe(0);
        expect(view[0]).toBeUndefined(); // reads nothing rather than unmapped pages
      }
      expect(r.vq.lentCount).toBe(0);
      expect(other.lentCount).toBe(0);
      r.vq.revoke(loans[0].buffer); // still harmless afterwards
      expect(thrown(() => r.vq.lend(off, 8))).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
    } finally {
      other.close();
      r.close();
    }
  });

  test('a child process that writes through its loans after memory.close() exits normally (no fault): writes dropped, fill() a TypeError', () => {
    const script = `
      const { GuestMemory } = require(${JSON.stringify(path.join(DIST, 'core/memory.js'))});
      const { Virtqueue, placeVirtqueue } = require(${JSON.stringify(path.join(DIST, 'virtio/virtqueue.js'))});
      const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 16 }] });
      const vq = Virtqueue.create({ memory: mem, size: 8, ...placeVirtqueue(8, 0n), kick: null });
      const views = [];
      for (let i = 0; i < 8; i++) views.push(new Uint8Array(vq.lend(0x8000 + 1024 * i, 1000)));
      mem.close();
      let sum = 0;
      for (const v of views) {
        v[0] = 7; v[999] = 7; // indexed writes to a detached view are dropped
        sum += v.byteLength + (v[0] ?? 0);
        try { v.fill(7); } catch (err) { if (!(err instanceof TypeError)) throw err; sum += 1; } // fill() says 'detached'
      }
      process.stdout.write(String(sum));
    `;
    const out = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    expect({ status: out.status, signal: out.signal, stdout: out.stdout }).toEqual({ status: 0, signal: null, stdout: '8' });
  });
});

describe('Virtqueue.lend: nothing but the unmap hook keeps a loan from outliving the pages', () => {
  test('a child process that drops the memory and the queue while holding loans: the GC safety net detaches them before it unmaps (no fault), with its warning', () => {
    // The loans are the only thing the script keeps. Whether the collector unmaps (GuestMemory's GC
    // net) or not, a loan must never read unmapped pages: detached first, or still mapped.
    const script = `
      const { GuestMemory } = require(${JSON.stringify(path.join(DIST, 'core/memory.js'))});
      const { Virtqueue, placeVirtqueue } = require(${JSON.stringify(path.join(DIST, 'virtio/virtqueue.js'))});
      const warnings = [];
      process.on('warning', (w) => warnings.push(w.code));
      function lendAndDrop() {
        const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 16 }] });
        const vq = Virtqueue.create({ memory: mem, size: 8, ...placeVirtqueue(8, 0n), kick: null });
        const views = vq.lendBatch(Uint32Array.of(0x8000, 1000, 0x9000, 1000), 2).map((b) => new Uint8Array(b));
        views.push(new Uint8Array(vq.lend(0xa000, 1000)));
        for (const v of views) v.fill(7);
        return views;
      }
      const views = lendAndDrop();
      (async () => {
        for (let i = 0; i < 50 && !warnings.includes('LINUX_VHOST_GC_CLOSE'); i++) {
          global.gc();
          await new Promise((r) => setTimeout(r, 10));
        }
        let sum = 0;
        for (const v of views) { v[0] = 9; sum += v.byteLength + (v[0] ?? 0); }
        process.stdout.write(JSON.stringify({ sum, warned: warnings.includes('LINUX_VHOST_GC_CLOSE') }));
      })();
    `;
    const out = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8' });
    expect({ status: out.status, signal: out.signal, stderr: out.stderr.includes('Error') ? out.stderr : '' }).toEqual({ status: 0, signal: null, stderr: '' });
    expect(JSON.parse(out.stdout)).toEqual({ sum: 0, warned: true }); // collected, warned, every loan detached
  });
});

describe('encodeChains and Virtqueue.create validation', () => {
  test('encodes (offset, len, flags) triples with SEG_END on each chain’s last segment', () => {
    const segs = encodeChains([[{ gpa: 0x1010n, len: 5 }, { gpa: 0x2000n, len: 6, writable: true }], [{ gpa: 0x1000, len: 1 }]], 0x1000n, 0x2000n);
    expect(Array.from(segs)).toEqual([0x10, 5, 0, 0x1000, 6, 1 | 2, 0, 1, 2]);
  });

  test('rejects readable after writable, empty chains, zero lengths and segments outside the region', () => {
    const cases: [VirtqueueSegment[][], string][] = [
      [[[{ gpa: 0x1000n, len: 4, writable: true }, { gpa: 0x1000n, len: 4 }]], 'ERR_VHOST_INVALID_ARG'],
      [[[]], 'ERR_VHOST_INVALID_ARG'],
      [[[{ gpa: 0x1000n, len: 0 }]], 'ERR_VHOST_OUT_OF_RANGE'],
      [[[{ gpa: 0xfffn, len: 4 }]], 'ERR_VHOST_OUT_OF_RANGE'],
      [[[{ gpa: 0x2ffen, len: 4 }]], 'ERR_VHOST_OUT_OF_RANGE'],
    ];
    for (const [chains, code] of cases) expect(thrown(() => encodeChains(chains, 0x1000n, 0x2000n)).code).toBe(code);
  });

  test('Virtqueue.create checks size, alignment and placement before touching memory', () => {
    const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 16 }] });
    try {
      const ok = { memory: mem, size: 8, desc: 0n, avail: 0x100n, used: 0x200n, kick: null };
      expect(thrown(() => Virtqueue.create({ ...ok, size: 6 })).code).toBe('ERR_VHOST_INVALID_ARG');
      expect(thrown(() => Virtqueue.create({ ...ok, desc: 8n })).code).toBe('ERR_VHOST_INVALID_ARG');
      expect(thrown(() => Virtqueue.create({ ...ok, used: 0x202n })).code).toBe('ERR_VHOST_INVALID_ARG');
      expect(thrown(() => Virtqueue.create({ ...ok, used: 0xfff0n })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
      expect(thrown(() => Virtqueue.create({ ...ok, desc: 0x10000n })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
      const vq = Virtqueue.create(ok);
      expect(vq.numFree).toBe(8);
      vq.close();
    } finally {
      mem.close();
    }
    expect(thrown(() => Virtqueue.create({ memory: mem, size: 8, desc: 0n, avail: 0x100n, used: 0x200n, kick: null })).code).toBe('ERR_VHOST_CLOSED');
  });
});

describe('Virtqueue.copyOut: one addon call copies a batch of ranges', () => {
  test('copies each (offset, len) pair in order into dst from byte 0 and returns the bytes; only the first n pairs', () => {
    const r = rig(16);
    try {
      const off = Number(BUFS - REGION_GPA);
      const mem = r.mem.view(BUFS, 4096);
      for (let i = 0; i < 4096; i++) mem[i] = (i * 7 + 3) & 0xff;
      const ranges = Uint32Array.of(off + 100, 5, off + 4000, 96, off, 1, off + 7, 0, off + 9, 9);
      const dst = Buffer.alloc(120, 0xee);
      expect(r.vq.copyOut(ranges, 4, dst)).toBe(102);
      const want = Buffer.concat([mem.subarray(100, 105), mem.subarray(4000, 4096), mem.subarray(0, 1)]);
      expect(dst.subarray(0, 102).equals(want)).toBe(true);
      expect(dst.subarray(102).every((b) => b === 0xee)).toBe(true); // nothing past the total (pair 5 is beyond n)
      mem[100] ^= 0xff;
      expect(dst[0]).toBe(want[0]); // a copy, not a view
      expect(r.vq.copyOut(ranges, 0, new Uint8Array(0))).toBe(0);
    } finally {
      r.close();
    }
  });

  test('a pair outside the region or a total larger than dst copies nothing (ERR_VHOST_OUT_OF_RANGE); bad arguments are typed; after close ERR_VHOST_CLOSED', () => {
    const r = rig(16);
    try {
      const off = Number(BUFS - REGION_GPA);
      r.mem.view(BUFS, 64).fill(0x5a);
      const dst = new Uint8Array(64);
      for (const bad of [[REGION_SIZE - 10, 11], [REGION_SIZE, 1], [0xffff_ffff, 2]]) {
        expect(thrown(() => r.vq.copyOut(Uint32Array.of(off, 8, bad[0], bad[1]), 2, dst))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE', message: expect.stringContaining('range 1') });
        expect(dst.every((b) => b === 0)).toBe(true); // the good pair before it was not copied either
      }
      expect(thrown(() => r.vq.copyOut(Uint32Array.of(off, 40, off, 40), 2, dst))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE', message: expect.stringContaining('80 bytes, dst only 64') });
      expect(dst.every((b) => b === 0)).toBe(true);
      expect(thrown(() => r.vq.copyOut(Uint32Array.of(off, 4), 2, dst))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' }); // n beyond the pairs given
      expect(thrown(() => r.vq.copyOut([off, 4] as never, 1, dst))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(thrown(() => r.vq.copyOut(Uint32Array.of(off, 4), 1, new Uint16Array(4) as never))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      r.vq.close();
      expect(thrown(() => r.vq.copyOut(Uint32Array.of(off, 4), 1, dst))).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
    } finally {
      r.close();
    }
  });

  test('property: any ranges (in, across or beyond the region, any dst size) copy exactly what a byte-by-byte reference does, or fail with nothing copied', () => {
    const r = rig(16);
    try {
      const all = r.mem.view(REGION_GPA, REGION_SIZE);
      for (let i = 0; i < REGION_SIZE; i += 4096) all[i] = i >> 12; // some content to tell ranges apart
      const offset = fc.oneof(fc.integer({ min: 0, max: REGION_SIZE }), fc.integer({ min: REGION_SIZE - 64, max: 0xffff_ffff }));
      const pair = fc.tuple(offset, fc.integer({ min: 0, max: 9000 }));
      fc.assert(
        fc.property(fc.array(pair, { maxLength: 12 }), fc.integer({ min: 0, max: 40_000 }), (pairs, dstLen) => {
          const ranges = Uint32Array.from(pairs.flat());
          const dst = new Uint8Array(dstLen).fill(0xa5);
          const fits = pairs.every(([off, len]) => off <= REGION_SIZE && len <= REGION_SIZE - off);
          const total = pairs.reduce((a, [, len]) => a + len, 0);
          if (!fits || total > dstLen) {
            expect(thrown(() => r.vq.copyOut(ranges, pairs.length, dst))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
            expect(dst.every((b) => b === 0xa5)).toBe(true);
            return;
          }
          expect(r.vq.copyOut(ranges, pairs.length, dst)).toBe(total);
          const want = Buffer.concat(pairs.map(([off, len]) => all.subarray(off, off + len)));
          expect(Buffer.from(dst.subarray(0, total)).equals(want)).toBe(true);
          expect(dst.subarray(total).every((b) => b === 0xa5)).toBe(true);
        }),
        { numRuns: 300 },
      );
    } finally {
      r.close();
    }
  });

  test('the addon door itself checks dst, n against ranges and the total; dst may be a view of the mapping itself', () => {
    const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 16 }] });
    try {
      const place = placeVirtqueue(8, 0n);
      const all = mem.view(0n, 1 << 16);
      const vq = native.virtqueueCreate(all.buffer as ArrayBuffer, 0n, { size: 8, desc: Number(place.desc), avail: Number(place.avail), used: Number(place.used), eventIdx: true, indirect: false }, null);
      expect(thrown(() => vq.copyOut(Uint32Array.of(0x8000, 4), 1, new Int8Array(4) as never))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(thrown(() => vq.copyOut(Uint32Array.of(0x8000, 4), 2, new Uint8Array(8)))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
      expect(thrown(() => vq.copyOut(Int32Array.of(0x8000, 4) as never, 1, new Uint8Array(8)))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      for (let i = 0; i < 16; i++) all[0x8000 + i] = i;
      // Overlapping source and destination inside the mapping: a memmove, so the bytes arrive as they were.
      expect(vq.copyOut(Uint32Array.of(0x8000, 16), 1, all.subarray(0x8004, 0x8014))).toBe(16);
      expect([...all.subarray(0x8004, 0x8014)]).toEqual([...Array(16).keys()]);
      vq.close();
    } finally {
      mem.close();
    }
  });
});
