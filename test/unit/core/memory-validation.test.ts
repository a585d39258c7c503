// GuestMemory.create validates every option before any syscall: each reason
// has its own message naming the argument, and the native layer is never called.
import { GuestMemory, validateGuestMemoryOptions, type GuestMemoryOptions } from '../../../lib/core/memory';
import { native } from '../../../lib/core/native';
import { thrown } from '../../support/helpers';

const MiB = 1 << 20;
const nativeCalls = ['memfdCreate', 'ftruncate', 'addSeals', 'mmapShared'] as const;

function rejects(options: unknown, code: string, message: RegExp, argument: string): void {
  const spies = nativeCalls.map((name) => jest.spyOn(native, name));
  try {
    const err = thrown(() => GuestMemory.create(options as GuestMemoryOptions));
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
    expect((err as { argument?: string }).argument).toBe(argument);
    for (const spy of spies) expect(spy).not.toHaveBeenCalled();
  } finally {
    for (const spy of spies) spy.mockRestore();
  }
}

describe('GuestMemory.create validation (no syscall on bad input)', () => {
  test('options must be an object', () => {
    rejects(null, 'ERR_VHOST_INVALID_ARG', /options must be an object/, 'options');
    rejects(42, 'ERR_VHOST_INVALID_ARG', /options must be an object/, 'options');
  });

  test('regions must be a non-empty array', () => {
    rejects({}, 'ERR_VHOST_INVALID_ARG', /options\.regions must be a non-empty array/, 'options.regions');
    rejects({ regions: [] }, 'ERR_VHOST_INVALID_ARG', /options\.regions must be a non-empty array/, 'options.regions');
    rejects({ regions: { gpa: 0n, size: 4096 } }, 'ERR_VHOST_INVALID_ARG', /non-empty array/, 'options.regions');
  });

  test('each region must be an object', () => {
    rejects({ regions: [null] }, 'ERR_VHOST_INVALID_ARG', /options\.regions\[0\] must be an object/, 'options.regions[0]');
  });

  test('gpa must be a bigint or a safe integer', () => {
    for (const gpa of ['0', 1.5, 2 ** 53, undefined]) {
      rejects({ regions: [{ gpa, size: MiB }] }, 'ERR_VHOST_INVALID_ARG', /options\.regions\[0\]\.gpa must be a bigint or a safe integer/, 'options.regions[0].gpa');
    }
  });

  test('gpa must be in 0..2^64-1', () => {
    rejects({ regions: [{ gpa: -4096n, size: MiB }] }, 'ERR_VHOST_OUT_OF_RANGE', /gpa must be in 0\.\.2\^64-1/, 'options.regions[0].gpa');
    rejects({ regions: [{ gpa: 1n << 64n, size: MiB }] }, 'ERR_VHOST_OUT_OF_RANGE', /gpa must be in 0\.\.2\^64-1/, 'options.regions[0].gpa');
  });

  test('gpa must be 4096-aligned', () => {
    rejects({ regions: [{ gpa: 0x1800n, size: MiB }] }, 'ERR_VHOST_INVALID_ARG', /gpa must be 4096-aligned, got 0x1800/, 'options.regions[0].gpa');
  });

  test('size must be a bigint or safe integer, greater than 0', () => {
    rejects({ regions: [{ gpa: 0n, size: '4096' }] }, 'ERR_VHOST_INVALID_ARG', /size must be a bigint or a safe integer/, 'options.regions[0].size');
    rejects({ regions: [{ gpa: 0n, size: 0 }] }, 'ERR_VHOST_OUT_OF_RANGE', /size must be greater than 0/, 'options.regions[0].size');
    rejects({ regions: [{ gpa: 0n, size: -4096 }] }, 'ERR_VHOST_OUT_OF_RANGE', /size must be in 0\.\.2\^64-1/, 'options.regions[0].size');
  });

  test('size must be a multiple of 4096', () => {
    rejects({ regions: [{ gpa: 0n, size: 4097 }] }, 'ERR_VHOST_INVALID_ARG', /size must be a multiple of the page size 4096, got 4097/, 'options.regions[0].size');
  });

  test('with hugetlb, size must be a multiple of the huge page size (2 MiB by default)', () => {
    rejects({ regions: [{ gpa: 0n, size: MiB }], hugetlb: true }, 'ERR_VHOST_INVALID_ARG', /multiple of the page size 2097152/, 'options.regions[0].size');
    rejects(
      { regions: [{ gpa: 0n, size: 2 * MiB }], hugetlb: true, hugePageSize: 1n << 30n },
      'ERR_VHOST_INVALID_ARG',
      /multiple of the page size 1073741824/,
      'options.regions[0].size',
    );
  });

  test('hugePageSize must be a power of two above 4096, and only with hugetlb', () => {
    rejects({ regions: [{ gpa: 0n, size: 2 * MiB }], hugetlb: true, hugePageSize: 3 * MiB }, 'ERR_VHOST_INVALID_ARG', /hugePageSize must be a power of two above 4096/, 'options.hugePageSize');
    rejects({ regions: [{ gpa: 0n, size: 2 * MiB }], hugetlb: true, hugePageSize: 4096 }, 'ERR_VHOST_INVALID_ARG', /power of two above 4096/, 'options.hugePageSize');
    rejects({ regions: [{ gpa: 0n, size: 2 * MiB }], hugePageSize: 2 * MiB }, 'ERR_VHOST_INVALID_ARG', /hugePageSize is only meaningful with hugetlb/, 'options.hugePageSize');
  });

  test('gpa + size must not pass 2^64', () => {
    rejects({ regions: [{ gpa: (1n << 64n) - 4096n, size: 8192 }] }, 'ERR_VHOST_OUT_OF_RANGE', /options\.regions\[0\] ends beyond 2\^64/, 'options.regions[0]');
  });

  test('a region ending exactly at 2^64 is valid', () => {
    const plan = validateGuestMemoryOptions({ regions: [{ gpa: (1n << 64n) - 4096n, size: 4096 }] });
    expect(plan.regions).toEqual([{ gpa: (1n << 64n) - 4096n, size: 4096n }]);
  });

  test('regions must not overlap (in any order), and the message names both', () => {
    rejects(
      { regions: [{ gpa: 0n, size: 2 * MiB }, { gpa: BigInt(MiB), size: MiB }] },
      'ERR_VHOST_INVALID_ARG',
      /options\.regions\[1\] overlaps options\.regions\[0\]/,
      'options.regions[1]',
    );
    rejects(
      { regions: [{ gpa: 0x100000n, size: MiB }, { gpa: 0x200000n, size: MiB }, { gpa: 0n, size: 0x101000 }] },
      'ERR_VHOST_INVALID_ARG',
      /options\.regions\[0\] overlaps options\.regions\[2\]/,
      'options.regions[0]',
    );
    rejects({ regions: [{ gpa: 0n, size: 4096 }, { gpa: 0n, size: 4096 }] }, 'ERR_VHOST_INVALID_ARG', /overlaps/, 'options.regions[1]');
  });

  test('adjacent regions do not overlap', () => {
    const plan = validateGuestMemoryOptions({ regions: [{ gpa: 0x1000n, size: 0x1000 }, { gpa: 0n, size: 0x1000 }] });
    expect(plan.regions.map((r) => r.gpa)).toEqual([0x1000n, 0n]);
  });

  test('backing must be memfd or anonymous', () => {
    rejects({ regions: [{ gpa: 0n, size: MiB }], backing: 'file' }, 'ERR_VHOST_INVALID_ARG', /options\.backing must be 'memfd' or 'anonymous', got file/, 'options.backing');
  });

  test('seal needs memfd backing and must be boolean', () => {
    rejects({ regions: [{ gpa: 0n, size: MiB }], backing: 'anonymous', seal: true }, 'ERR_VHOST_INVALID_ARG', /options\.seal needs backing 'memfd'/, 'options.seal');
    rejects({ regions: [{ gpa: 0n, size: MiB }], seal: 'yes' }, 'ERR_VHOST_INVALID_ARG', /options\.seal must be a boolean/, 'options.seal');
  });

  test('hugetlb must be boolean', () => {
    rejects({ regions: [{ gpa: 0n, size: MiB }], hugetlb: 1 }, 'ERR_VHOST_INVALID_ARG', /options\.hugetlb must be a boolean/, 'options.hugetlb');
  });

  test('name must be a string without NUL, at most 200 bytes', () => {
    rejects({ regions: [{ gpa: 0n, size: MiB }], name: 5 }, 'ERR_VHOST_INVALID_ARG', /options\.name must be a string/, 'options.name');
    rejects({ regions: [{ gpa: 0n, size: MiB }], name: 'a\0b' }, 'ERR_VHOST_INVALID_ARG', /must not contain NUL/, 'options.name');
    rejects({ regions: [{ gpa: 0n, size: MiB }], name: 'é'.repeat(101) }, 'ERR_VHOST_INVALID_ARG', /at most 200 bytes/, 'options.name');
  });

  test('valid options normalise to bigints with defaults', () => {
    expect(validateGuestMemoryOptions({ regions: [{ gpa: 0, size: 64 * MiB }] })).toEqual({
      regions: [{ gpa: 0n, size: 64n * BigInt(MiB) }],
      backing: 'memfd',
      hugetlb: false,
      pageSize: 4096n,
      seal: false,
      name: 'linux-vhost-guest',
    });
    expect(validateGuestMemoryOptions({ regions: [{ gpa: 0n, size: 2 * MiB }], hugetlb: true }).pageSize).toBe(2n * BigInt(MiB));
  });
});
