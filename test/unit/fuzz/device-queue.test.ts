// Property-based fuzzing of the device side of a split ring (issue 15): a
// hostile driver (the test) writes random and malformed descriptor tables,
// indirect tables, flags, avail entries and indices into shared memory, and
// interleaves them with pop / popBatch / complete / flush / enableNotify and
// memory replacement or closing. A reference walker written from the virtio
// spec, reading the same memory through the test's own mapping, says what
// each pop must give: the same head, readable bytes and writable size, or a
// broken queue. So every chain the device yields lies inside the regions
// (the model only reads there) and everything else breaks the queue.
// The device maps its regions between PROT_NONE guard pages: a stray access
// kills the jest worker, failing the run loudly; `npm run test:asan` runs this
// under ASan + UBSan too.
// LINUX_VHOST_FUZZ_RUNS=N raises the runs; LINUX_VHOST_FUZZ_SEED=random varies the seed.
import fc from 'fast-check';
import { GuestMemory } from '../../../lib/core/memory';
import { DeviceMemory, type DeviceMemoryRegion } from '../../../lib/virtio/device-memory';
import { DeviceQueue } from '../../../lib/virtio/device-queue';
import { placeVirtqueue } from '../../../lib/virtio/virtqueue';
import { fuzzParams } from '../../support/hostile';

const U64 = 1n << 64n;
// Two contiguous regions (a buffer may run across them), a gap, a third.
const REGIONS = [{ gpa: 0n, size: 0x10000n }, { gpa: 0x10000n, size: 0x10000n }, { gpa: 0x40000n, size: 0x4000n }];
const RING_BASE = 0x1000n;
const TABLES = [0x8000n, 0x9000n, 0xfff0n]; // the last runs across regions 0 and 1
const F_NEXT = 1;
const F_WRITE = 2;
const F_INDIRECT = 4;

interface Desc { addr: bigint; len: number; flags: number; next: number }
interface Seg { gpa: bigint; len: number }

const mem = GuestMemory.create({ regions: REGIONS, name: 'devqueue-fuzz' });
const hvaOf = (gpa: bigint): bigint => {
  const r = mem.regions.find((x) => gpa >= x.gpa && gpa < x.gpa + x.size)!;
  return r.hva + (gpa - r.gpa);
};
const deviceRegions = (): DeviceMemoryRegion[] => mem.regions.map((r) => ({ fd: r.fd, gpa: r.gpa, size: r.size, userAddr: r.hva, mmapOffset: 0n }));
afterAll(() => mem.close());

function covered(gpa: bigint, len: number): boolean {
  if (len === 0) return true;
  const end = gpa + BigInt(len);
  if (end > U64) return false;
  for (let g = gpa; g < end;) {
    const r = REGIONS.find((x) => g >= x.gpa && g < x.gpa + x.size);
    if (!r) return false;
    g = r.gpa + r.size;
  }
  return true;
}

/** Bytes at [gpa, gpa + len) through the test's own mapping (covered() first). */
function readGpa(gpa: bigint, len: number): Buffer {
  const parts: Buffer[] = [];
  for (let g = gpa, left = BigInt(len); left > 0n;) {
    const r = REGIONS.find((x) => g >= x.gpa && g < x.gpa + x.size)!;
    const n = left < r.gpa + r.size - g ? left : r.gpa + r.size - g;
    parts.push(Buffer.from(mem.view(g, n)));
    g += n;
    left -= n;
  }
  return Buffer.concat(parts);
}
const dv = (gpa: bigint, len: number): DataView => {
  const v = mem.view(gpa, len);
  return new DataView(v.buffer, v.byteOffset, len);
};
const parseDesc = (b: Buffer, off: number): Desc => ({ addr: b.readBigUInt64LE(off), len: b.readUInt32LE(off + 8), flags: b.readUInt16LE(off + 12), next: b.readUInt16LE(off + 14) });
function writeDesc(at: bigint, d: Desc): void {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(d.addr, 0);
  b.writeUInt32LE(d.len >>> 0, 8);
  b.writeUInt16LE(d.flags, 12);
  b.writeUInt16LE(d.next, 14);
  // Through the device regions' bytes only: a table may run across regions.
  for (let k = 0; k < 16; k++) if (covered(at + BigInt(k), 1)) mem.view(at + BigInt(k), 1)[0] = b[k];
}

/** The spec's reading of one chain, as the reference: the chain, or 'broken'. */
class Model {
  nextAvail: number;
  usedIdx: number;
  published: number;
  signalled = 0;
  signalledValid = false;
  notifyOn = true;
  broken = false;
  closed = false;
  inflight = new Map<number, Seg[]>();
  constructor(readonly size: number, readonly ring: { desc: bigint; avail: bigint; used: bigint }, readonly o: { eventIdx: boolean; indirect: boolean; maxReadable: number }, base: number) {
    this.nextAvail = base;
    this.usedIdx = this.published = dv(ring.used + 2n, 2).getUint16(0, true);
  }
  get availEvent(): bigint {
    return this.ring.used + 4n + 8n * BigInt(this.size);
  }

  /** One pop as the spec reads it. */
  pop(): { head: number; readable: Buffer; writable: number; segs: Seg[] } | 'broken' | null {
    if (this.broken || this.closed) return null;
    const availIdx = dv(this.ring.avail + 2n, 2).getUint16(0, true);
    const pending = (availIdx - this.nextAvail) & 0xffff;
    if (pending === 0) return null;
    if (pending > this.size) return this.fail();
    const head = dv(this.ring.avail + 4n + 2n * BigInt(this.nextAvail % this.size), 2).getUint16(0, true);
    if (head >= this.size || this.inflight.has(head)) return this.fail();
    const walked = this.walk(head);
    if (walked === 'broken') return this.fail();
    this.inflight.set(head, walked.segs);
    this.nextAvail = (this.nextAvail + 1) & 0xffff;
    return { head, ...walked };
  }

  private fail(): 'broken' {
    this.broken = true;
    return 'broken';
  }

  private walk(head: number): { readable: Buffer; writable: number; segs: Seg[] } | 'broken' {
    const readable: Buffer[] = [];
    const segs: Seg[] = [];
    let readBytes = 0;
    let writable = 0;
    let sawWritable = false;
    const add = (d: Desc): boolean => {
      if (d.flags & F_WRITE) {
        sawWritable = true;
        writable += d.len;
        if (d.len > 0) segs.push({ gpa: d.addr, len: d.len });
      } else {
        if (sawWritable) return false;
        readBytes += d.len;
        if (readBytes > this.o.maxReadable) return false;
      }
      if (!covered(d.addr, d.len)) return false;
      if (!(d.flags & F_WRITE) && d.len > 0) readable.push(readGpa(d.addr, d.len));
      return true;
    };
    const table = readGpa(this.ring.desc, 16 * this.size);
    let d = parseDesc(table, 16 * head);
    if (d.flags & F_INDIRECT) {
      if (!this.o.indirect || d.flags & F_NEXT || d.len === 0 || d.len % 16 !== 0 || d.len / 16 > this.size || !covered(d.addr, d.len)) return 'broken';
      const n = d.len / 16;
      const ind = readGpa(d.addr, d.len);
      for (let i = 0, visited = 1; ; visited++) {
        const e = parseDesc(ind, 16 * i);
        if (e.flags & F_INDIRECT || !add(e)) return 'broken';
        if (!(e.flags & F_NEXT)) break;
        if (e.next >= n || visited >= n) return 'broken';
        i = e.next;
      }
    } else {
      for (let i = head, visited = 1; ; visited++) {
        if (visited > 1) {
          d = parseDesc(table, 16 * i);
          if (d.flags & F_INDIRECT) return 'broken';
        }
        if (!add(d)) return 'broken';
        if (!(d.flags & F_NEXT)) break;
        if (d.next >= this.size || visited >= this.size) return 'broken';
        i = d.next;
      }
    }
    return { readable: Buffer.concat(readable), writable, segs };
  }
}

// ---- what the hostile driver writes ----
const interestingAddr = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0x10000, max: 0x1ffff }).map(BigInt) }, // the buffer area
  { weight: 2, arbitrary: fc.constantFrom(...TABLES) },
  { weight: 2, arbitrary: fc.constantFrom(0n, 0xfff8n, 0xffffn, 0x10000n, 0x1fff0n, 0x1ffffn, 0x20000n, 0x3fffen, 0x40000n, 0x43ff0n, 0x44000n, U64 - 1n, U64 - 16n, 1n << 63n, RING_BASE) },
  { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: U64 - 1n }) },
);
const interestingLen = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 2048 }) },
  { weight: 1, arbitrary: fc.constantFrom(0, 1, 15, 16, 17, 32, 48, 256, 4096, 0x10000, 0x20000, 0xffff_ffff, 0x8000_0000) },
  { weight: 1, arbitrary: fc.nat({ max: 0xffff_ffff }) },
);
const flags = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(0, F_NEXT, F_WRITE, F_NEXT | F_WRITE) },
  { weight: 2, arbitrary: fc.constantFrom(F_INDIRECT, F_INDIRECT | F_NEXT, F_INDIRECT | F_WRITE) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
);
const next = fc.oneof({ weight: 8, arbitrary: fc.nat(17) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) });
/** Just inside or outside a region's edge: where an off-by-one or an overflowing check would show. */
const EDGES = [0n, 0x20000n, 0x40000n, 0x44000n, U64];
const nearEdge = fc.tuple(fc.constantFrom(...EDGES), fc.integer({ min: -64, max: 64 }), fc.nat(96))
  .map(([edge, delta, len]) => ({ addr: (edge + BigInt(delta) + U64) % U64, len }));
const segPlace = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(fc.integer({ min: 0x10000, max: 0x1f000 }), fc.nat(600)).map(([a, len]) => ({ addr: BigInt(a), len })) },
  { weight: 1, arbitrary: nearEdge },
);
/** A chain in the right order (readable buffers, then writable ones); its buffers may sit at a region's edge. */
const goodSegs = fc.tuple(fc.array(segPlace, { maxLength: 4 }), fc.array(segPlace, { maxLength: 4 }))
  .filter(([r, w]) => r.length + w.length > 0)
  .map(([r, w]) => [...r.map((x) => ({ ...x, write: false })), ...w.map((x) => ({ ...x, write: true }))]);

const hostileDesc: fc.Arbitrary<Desc> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ addr: interestingAddr, len: interestingLen, flags, next }) },
  { weight: 1, arbitrary: fc.record({ place: nearEdge, flags, next }).map(({ place, ...rest }) => ({ ...place, ...rest })) },
);
/** A plausible descriptor: a small buffer in the buffer area, no NEXT. */
const goodDesc: fc.Arbitrary<Desc> = fc.record({ addr: fc.integer({ min: 0x10000, max: 0x1f000 }).map(BigInt), len: fc.nat(512), flags: fc.constantFrom(0, F_WRITE), next: fc.constant(0) });
const desc = fc.oneof({ weight: 3, arbitrary: goodDesc }, { weight: 2, arbitrary: hostileDesc });

type Op =
  | { t: 'chain'; start: number; segs: { len: number; write: boolean; addr: bigint }[] }
  | { t: 'indirectChain'; slot: number; k: number; segs: { len: number; write: boolean; addr: bigint }[] }
  | { t: 'desc'; i: number; d: Desc }
  | { t: 'table'; k: number; i: number; d: Desc }
  | { t: 'publish'; heads: number[] }
  | { t: 'idx'; delta: number }
  | { t: 'pop' }
  | { t: 'batch'; n: number }
  | { t: 'complete'; pick: number; len: number; parts: number; known: boolean; fit: boolean }
  | { t: 'flush' }
  | { t: 'notify'; on: boolean }
  | { t: 'usedEvent'; v: number }
  | { t: 'availFlags'; v: number }
  | { t: 'replace' }
  | { t: 'closeMemory' };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 40, arbitrary: fc.record({ t: fc.constant('chain' as const), start: fc.nat(63), segs: goodSegs }) },
  { weight: 15, arbitrary: fc.record({ t: fc.constant('indirectChain' as const), slot: fc.nat(63), k: fc.nat(TABLES.length - 1), segs: goodSegs }) },
  { weight: 15, arbitrary: fc.record({ t: fc.constant('desc' as const), i: fc.nat(63), d: desc }) },
  { weight: 10, arbitrary: fc.record({ t: fc.constant('table' as const), k: fc.nat(TABLES.length - 1), i: fc.nat(17), d: desc }) },
  { weight: 20, arbitrary: fc.record({ t: fc.constant('publish' as const), heads: fc.array(fc.oneof({ weight: 9, arbitrary: fc.nat(15) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }), { maxLength: 6 }) }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('idx' as const), delta: fc.oneof(fc.integer({ min: -3, max: 20 }), fc.integer({ min: 0, max: 0xffff })) }) },
  { weight: 20, arbitrary: fc.constant({ t: 'pop' as const }) },
  { weight: 10, arbitrary: fc.record({ t: fc.constant('batch' as const), n: fc.nat(20) }) },
  { weight: 20, arbitrary: fc.record({ t: fc.constant('complete' as const), pick: fc.nat(), len: fc.oneof(fc.nat(3000), fc.constant(0)), parts: fc.integer({ min: 0, max: 3 }), known: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }), fit: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }) }) },
  { weight: 10, arbitrary: fc.constant({ t: 'flush' as const }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('notify' as const), on: fc.boolean() }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('usedEvent' as const), v: fc.integer({ min: 0, max: 0xffff }) }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('availFlags' as const), v: fc.integer({ min: 0, max: 0xffff }) }) },
  { weight: 5, arbitrary: fc.constant({ t: 'replace' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'closeMemory' as const }) },
);

const scenario = fc.record({
  /** false: the driver keeps the protocol (its own free list), so the queue must never break. */
  hostile: fc.boolean(),
  size: fc.constantFrom(1, 2, 4, 8, 16, 16, 32, 64),
  eventIdx: fc.boolean(),
  indirect: fc.boolean(),
  base: fc.oneof(fc.integer({ min: 65520, max: 65535 }), fc.nat(0xffff), fc.constant(0)),
  maxReadable: fc.constantFrom(1 << 24, 1 << 24, 4096, 100),
  descs: fc.array(desc, { minLength: 16, maxLength: 16 }),
  ops: fc.array(op, { minLength: 1, maxLength: 80, size: 'large' }),
});

const sameChain = (got: { head: number; readable: Buffer; writable: number } | null, want: ReturnType<Model['pop']>): void => {
  if (want === null || want === 'broken') {
    expect(got).toBeNull();
  } else {
    expect(got).not.toBeNull();
    expect(got!.head).toBe(want.head);
    expect(got!.writable).toBe(want.writable);
    expect(got!.readable.equals(want.readable)).toBe(true);
  }
};

/** NeedEvent of the virtio spec (2.7.10), independently of the native one. */
const needEvent = (event: number, nw: number, old: number): boolean => ((nw - event - 1) & 0xffff) < ((nw - old) & 0xffff);

let runs = 0;
let chainsPopped = 0;
let broke = 0;

type Scenario = typeof scenario extends fc.Arbitrary<infer T> ? T : never;

function runScenario(s: Scenario): void {
  runs++;
  // A clean slate in the rings and tables; the buffers keep whatever was there.
  mem.view(0n, 0x10000n).fill(0);
  const ring = placeVirtqueue(s.size, RING_BASE);
  for (let i = 0; i < s.size; i++) writeDesc(ring.desc + 16n * BigInt(i), s.descs[i % s.descs.length]);
  dv(ring.avail + 2n, 2).setUint16(0, s.base, true);
  dv(ring.used + 2n, 2).setUint16(0, s.base, true);
  let driverIdx = s.base;
  let memory = DeviceMemory.map(deviceRegions());
  const maxReadable = s.hostile ? s.maxReadable : 1 << 24;
  const q = new DeviceQueue(memory, { size: s.size, desc: hvaOf(ring.desc), avail: hvaOf(ring.avail), used: hvaOf(ring.used), base: s.base, eventIdx: s.eventIdx, indirect: s.indirect, maxReadable, name: 'fuzz' });
  const m = new Model(s.size, ring, { ...s, maxReadable }, s.base);
  const dead = () => m.broken || m.closed;
  // A batch as the spec reads it; then the device's one avail_event write after a batch is checked.
  let availEventAfter: number | null = null;
  const modelPops = (n: number) => {
    const out: ReturnType<Model['pop']>[] = [];
    for (let k = 0; k < Math.min(n, s.size); k++) {
      const r = m.pop();
      out.push(r);
      if (r === null || r === 'broken') break;
    }
    const taken = out.filter((r) => r !== null && r !== 'broken').length;
    availEventAfter = taken > 0 && s.eventIdx && m.notifyOn && !m.broken ? m.nextAvail : null;
    return out;
  };
  const checkAvailEvent = () => {
    if (availEventAfter !== null) expect(dv(m.availEvent, 2).getUint16(0, true)).toBe(availEventAfter);
  };
  try {
    const publish = (heads: number[]) => {
      for (const h of heads) {
        dv(ring.avail + 4n + 2n * BigInt(driverIdx % s.size), 2).setUint16(0, h, true);
        driverIdx = (driverIdx + 1) & 0xffff;
      }
      dv(ring.avail + 2n, 2).setUint16(0, driverIdx, true);
    };
    // The protocol-keeping driver's free list: descriptors of chains published and not yet used.
    const busy = new Set<number>();
    const busyChains = new Map<number, number[]>();
    const tables = new Map<number, bigint>();
    const hostileOnly = new Set(['desc', 'table', 'publish', 'idx']);
    for (const o of s.ops) {
      if (!s.hostile && hostileOnly.has(o.t)) continue;
      switch (o.t) {
        case 'chain':
        case 'indirectChain': {
          const n = o.segs.length;
          const segDesc = (x: { len: number; write: boolean; addr: bigint }, k: number, nextId: number): Desc => ({ addr: x.addr, len: x.len, flags: (x.write ? F_WRITE : 0) | (k + 1 < n ? F_NEXT : 0), next: nextId });
          const slot = (o.t === 'chain' ? o.start : o.slot) % s.size;
          const asIndirect = o.t === 'indirectChain' && (s.hostile || s.indirect);
          if (!s.hostile) {
            // A driver that keeps the rules: free descriptors only, one table per chain in flight.
            if (!o.segs.every((x) => covered(x.addr, x.len))) break;
            const free = Array.from({ length: s.size }, (_, i) => (slot + i) % s.size).filter((i) => !busy.has(i));
            const need = asIndirect ? 1 : n;
            const table = asIndirect ? TABLES.find((tb) => ![...tables.values()].includes(tb)) : undefined;
            if (free.length < need || (asIndirect && table === undefined) || (asIndirect && n > s.size)) break;
            const ids = free.slice(0, need);
            if (asIndirect) {
              o.segs.forEach((x, k) => writeDesc(table! + 16n * BigInt(k), segDesc(x, k, k + 1)));
              writeDesc(ring.desc + 16n * BigInt(ids[0]), { addr: table!, len: 16 * n, flags: F_INDIRECT, next: 0 });
              tables.set(ids[0], table!);
            } else {
              o.segs.forEach((x, k) => writeDesc(ring.desc + 16n * BigInt(ids[k]), segDesc(x, k, ids[k + 1] ?? 0)));
            }
            busyChains.set(ids[0], ids);
            ids.forEach((i) => busy.add(i));
            publish([ids[0]]);
          } else if (asIndirect) {
            o.segs.forEach((x, k) => writeDesc(TABLES[(o as { k: number }).k] + 16n * BigInt(k), segDesc(x, k, k + 1)));
            writeDesc(ring.desc + 16n * BigInt(slot), { addr: TABLES[(o as { k: number }).k], len: 16 * n, flags: F_INDIRECT, next: 0 });
            publish([slot]);
          } else {
            // Descriptors slot, slot+1, ... (mod size): a ring too small for the chain makes a loop.
            o.segs.forEach((x, k) => writeDesc(ring.desc + 16n * BigInt((slot + k) % s.size), segDesc(x, k, (slot + k + 1) % s.size)));
            publish([slot]);
          }
          break;
        }
        case 'desc':
          writeDesc(ring.desc + 16n * BigInt(o.i % s.size), o.d);
          break;
        case 'table':
          writeDesc(TABLES[o.k] + 16n * BigInt(o.i), o.d);
          break;
        case 'publish':
          publish(o.heads);
          break;
        case 'idx':
          driverIdx = (driverIdx + o.delta) & 0xffff;
          dv(ring.avail + 2n, 2).setUint16(0, driverIdx, true);
          break;
        case 'pop': {
          const [want] = modelPops(1);
          const got = q.pop();
          sameChain(got, want);
          checkAvailEvent();
          if (got) chainsPopped++;
          break;
        }
        case 'batch': {
          const want = modelPops(o.n).filter((w) => w !== null && w !== 'broken');
          const got = q.popBatch(o.n);
          checkAvailEvent();
          expect(got.length).toBe(want.length);
          got.forEach((g, k) => sameChain(g, want[k]));
          chainsPopped += got.length;
          break;
        }
        case 'complete': {
          const heads = [...m.inflight.keys()];
          const head = o.known && heads.length > 0 ? heads[o.pick % heads.length] : o.pick % (s.size + 2);
          const space = m.inflight.get(head)?.reduce((a, x) => a + x.len, 0);
          const len = o.fit && space !== undefined ? o.len % (Math.min(space, 1 << 20) + 1) : o.len;
          const data = Buffer.alloc(len, 0x5a ^ (len & 0xff));
          const parts = o.parts === 0 ? data : Array.from({ length: o.parts }, (_, k) => data.subarray(Math.floor((k * len) / o.parts), Math.floor(((k + 1) * len) / o.parts)));
          let code: string | undefined;
          let written = -1;
          try {
            written = q.complete(head, parts);
          } catch (err) {
            code = (err as { code?: string }).code;
          }
          const segs = m.inflight.get(head);
          if (m.broken) expect(code).toBe('ERR_VHOST_RING_BROKEN');
          else if (m.closed) expect(code).toBe('ERR_VHOST_CLOSED');
          else if (!segs) expect(code).toBe('ERR_VHOST_INVALID_ARG');
          else if (len > segs.reduce((a, x) => a + x.len, 0)) expect(code).toBe('ERR_VHOST_OUT_OF_RANGE');
          else {
            expect(code).toBeUndefined();
            expect(written).toBe(len);
            const usedAt = ring.used + 4n + 8n * BigInt(m.usedIdx % s.size);
            expect(dv(usedAt, 8).getUint32(0, true)).toBe(head);
            expect(dv(usedAt, 8).getUint32(4, true)).toBe(len);
            // The bytes, where no segment overlaps another or the used entry written after them.
            const spans = segs.map((x) => [x.gpa, x.gpa + BigInt(x.len)] as const).concat([[usedAt, usedAt + 8n]]);
            const disjoint = spans.every(([a0, a1], i) => spans.every(([b0, b1], j) => i === j || a1 <= b0 || b1 <= a0));
            if (disjoint) {
              let off = 0;
              for (const x of segs) {
                const n = Math.min(x.len, len - off);
                if (n <= 0) break;
                expect(readGpa(x.gpa, n).equals(data.subarray(off, off + n))).toBe(true);
                off += n;
              }
            }
            m.inflight.delete(head);
            m.usedIdx = (m.usedIdx + 1) & 0xffff;
            busyChains.get(head)?.forEach((i) => busy.delete(i));
            busyChains.delete(head);
            tables.delete(head);
          }
          break;
        }
        case 'flush': {
          const got = q.flush();
          let want = false;
          if (!dead() && m.usedIdx !== m.published) {
            m.published = m.usedIdx;
            if (s.eventIdx) {
              const event = dv(ring.avail + 4n + 2n * BigInt(s.size), 2).getUint16(0, true);
              want = !m.signalledValid || needEvent(event, m.usedIdx, m.signalled);
              m.signalledValid = true;
              m.signalled = m.usedIdx;
            } else {
              want = (dv(ring.avail, 2).getUint16(0, true) & 1) === 0;
            }
            expect(dv(ring.used + 2n, 2).getUint16(0, true)).toBe(m.usedIdx);
          }
          expect(got).toBe(want);
          break;
        }
        case 'notify': {
          const got = q.enableNotify(o.on);
          if (!dead()) m.notifyOn = o.on;
          const pending = dv(ring.avail + 2n, 2).getUint16(0, true) !== m.nextAvail;
          expect(got).toBe(!dead() && o.on && pending);
          if (!dead() && o.on && s.eventIdx) expect(dv(m.availEvent, 2).getUint16(0, true)).toBe(m.nextAvail);
          if (!dead() && !s.eventIdx) expect(dv(ring.used, 2).getUint16(0, true)).toBe(o.on ? 0 : 1);
          break;
        }
        case 'usedEvent':
          dv(ring.avail + 4n + 2n * BigInt(s.size), 2).setUint16(0, o.v, true);
          break;
        case 'availFlags':
          dv(ring.avail, 2).setUint16(0, o.v, true);
          break;
        case 'replace': {
          if (m.closed) break;
          const fresh = DeviceMemory.map(deviceRegions());
          q.setMemory(fresh);
          memory.close(); // the old pages go at once: only the new table may be used now
          memory = fresh;
          break;
        }
        case 'closeMemory':
          memory.close();
          m.closed = true;
          break;
      }
      expect(q.nextAvail).toBe(m.nextAvail);
      expect(q.inflight).toBe(m.inflight.size);
      expect(q.broken !== null).toBe(m.broken);
    }
    if (m.broken) broke++;
    if (!s.hostile) expect(m.broken).toBe(false); // a driver that keeps the rules never breaks the queue
  } finally {
    q.close();
    memory.close();
  }
}

test('a hostile driver never makes the device touch memory outside the regions: each pop matches the spec walker or breaks the queue', () => {
  fc.assert(fc.property(scenario, (s) => runScenario(s)), fuzzParams(400));
  // The runs exercised both outcomes (seeded: the same every time unless asked otherwise).
  expect(chainsPopped).toBeGreaterThan(runs);
  expect(broke).toBeGreaterThan(runs / 10);
  expect(broke).toBeLessThan(runs);
  console.log(`device queue fuzz: ${runs} runs, ${chainsPopped} chains popped, ${broke} runs broke the queue`);
});
