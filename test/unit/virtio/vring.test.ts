// Split-ring layout: sizes per the virtio 1.x formulas, and placement that is
// aligned, non-overlapping and inside [base, end) for every valid size and base.
import fc from 'fast-check';
import { layoutSplitRing, MAX_QUEUE_SIZE, splitRingLayout, validateQueueSize } from '../../../lib/virtio/vring';
import { thrown } from '../../support/helpers';

const validSize = fc.integer({ min: 0, max: 15 }).map((k) => 2 ** k);
const base = fc.bigInt({ min: 0n, max: (1n << 64n) - (1n << 20n) });
const opts = fc.record({ eventIdx: fc.boolean(), legacy: fc.boolean() });

describe('validateQueueSize', () => {
  test('accepts every power of two from 1 to 32768, as number or bigint', () => {
    for (let k = 0; k <= 15; k++) {
      expect(validateQueueSize(2 ** k)).toBe(2 ** k);
      expect(validateQueueSize(BigInt(2 ** k))).toBe(2 ** k);
    }
  });

  test('rejects sizes that are not powers of two with ERR_VHOST_INVALID_ARG', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: MAX_QUEUE_SIZE }).filter((n) => (n & (n - 1)) !== 0), (n) => {
        const err = thrown(() => validateQueueSize(n));
        expect(err.code).toBe('ERR_VHOST_INVALID_ARG');
        expect(err.message).toMatch(/size must be a power of two/);
      }),
    );
  });

  test('rejects 0, negatives and sizes above 32768 with ERR_VHOST_OUT_OF_RANGE', () => {
    for (const n of [0, -1, -2, 65536, 2 ** 20, 0n, 65536n, -4n]) {
      const err = thrown(() => validateQueueSize(n));
      expect(err.code).toBe('ERR_VHOST_OUT_OF_RANGE');
      expect(err.message).toMatch(/size must be in 1\.\.32768/);
    }
  });

  test('rejects non-integers and non-numbers with ERR_VHOST_INVALID_ARG', () => {
    for (const n of [1.5, NaN, Infinity, '8', null, undefined]) {
      const err = thrown(() => validateQueueSize(n as unknown as number));
      expect(err.code).toBe('ERR_VHOST_INVALID_ARG');
      expect(err.message).toMatch(/size must be an integer/);
    }
  });

  test('names the argument it is given', () => {
    expect(thrown(() => validateQueueSize(3, 'num')).message).toMatch(/num must be a power of two/);
  });
});

describe('splitRingLayout', () => {
  test('sizes follow virtio 1.x: desc 16n, avail 4+2n(+2), used 4+8n(+2)', () => {
    fc.assert(
      fc.property(validSize, fc.boolean(), (n, eventIdx) => {
        const s = splitRingLayout(n, { eventIdx });
        const N = BigInt(n);
        const ev = eventIdx ? 2n : 0n;
        expect(s.descSize).toBe(16n * N);
        expect(s.availSize).toBe(4n + 2n * N + ev);
        expect(s.usedSize).toBe(4n + 8n * N + ev);
        expect([s.descAlign, s.availAlign, s.usedAlign]).toEqual([16n, 2n, 4n]);
      }),
    );
  });

  test('defaults to the event-index layout: 6+2n and 6+8n', () => {
    expect(splitRingLayout(256)).toEqual({
      descSize: 4096n,
      availSize: 518n,
      usedSize: 2054n,
      descAlign: 16n,
      availAlign: 2n,
      usedAlign: 4n,
    });
  });

  test('rejects invalid sizes', () => {
    fc.assert(
      fc.property(fc.integer().filter((n) => n < 1 || n > MAX_QUEUE_SIZE || (n & (n - 1)) !== 0), (n) => {
        expect(thrown(() => splitRingLayout(n)).code).toMatch(/^ERR_VHOST_(INVALID_ARG|OUT_OF_RANGE)$/);
      }),
    );
  });

  test('rejects a non-boolean eventIdx', () => {
    const err = thrown(() => splitRingLayout(8, { eventIdx: 1 as unknown as boolean }));
    expect(err.code).toBe('ERR_VHOST_INVALID_ARG');
    expect(err.message).toMatch(/options\.eventIdx/);
  });
});

describe('layoutSplitRing', () => {
  test('parts are aligned, in order, non-overlapping, sized per the formulas and inside [base, end)', () => {
    fc.assert(
      fc.property(validSize, base, opts, (n, b, o) => {
        const s = splitRingLayout(n, o);
        const l = layoutSplitRing(n, b, o);
        const descAlign = o.legacy ? 4096n : 16n;
        const usedAlign = o.legacy ? 4096n : 4n;
        expect(l.desc % descAlign).toBe(0n);
        expect(l.avail % 2n).toBe(0n);
        expect(l.used % usedAlign).toBe(0n);
        expect(l.desc).toBeGreaterThanOrEqual(b);
        expect(l.desc - b).toBeLessThan(descAlign); // packed: the first aligned address
        expect(l.avail).toBeGreaterThanOrEqual(l.desc + s.descSize);
        expect(l.avail - (l.desc + s.descSize)).toBeLessThan(2n);
        expect(l.used).toBeGreaterThanOrEqual(l.avail + s.availSize);
        expect(l.used - (l.avail + s.availSize)).toBeLessThan(usedAlign);
        expect(l.end).toBe(l.used + s.usedSize);
        expect(l.end).toBeLessThanOrEqual(1n << 64n);
      }),
    );
  });

  test('consecutive rings placed end-to-base never overlap', () => {
    fc.assert(
      fc.property(fc.array(validSize, { minLength: 2, maxLength: 6 }), fc.bigInt({ min: 0n, max: 1n << 40n }), (sizes, b) => {
        let cursor = b;
        let prevEnd = b;
        for (const n of sizes) {
          const l = layoutSplitRing(n, cursor);
          expect(l.desc).toBeGreaterThanOrEqual(prevEnd);
          prevEnd = l.end;
          cursor = l.end;
        }
      }),
    );
  });

  test('a legacy ring of 256 entries matches the classic vring_size (10246 bytes, used at 0x1000 + 4096n)', () => {
    const l = layoutSplitRing(256, 0x10000n, { legacy: true });
    expect(l).toEqual({ desc: 0x10000n, avail: 0x11000n, used: 0x12000n, end: 0x12000n + 2054n });
  });

  test('rejects a negative or non-bigint base, and a ring that would pass 2^64', () => {
    expect(thrown(() => layoutSplitRing(8, -16n)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    const notBig = thrown(() => layoutSplitRing(8, 16 as unknown as bigint));
    expect(notBig.code).toBe('ERR_VHOST_INVALID_ARG');
    expect(notBig.message).toMatch(/base must be a bigint/);
    const over = thrown(() => layoutSplitRing(8, (1n << 64n) - 16n));
    expect(over.code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(over.message).toMatch(/base leaves no room/);
  });

  test('rejects invalid sizes before placing anything', () => {
    expect(thrown(() => layoutSplitRing(3, 0n)).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => layoutSplitRing(65536, 0n)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
  });
});
