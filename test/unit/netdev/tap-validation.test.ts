// Tap.create validates every option before any syscall: each reason has its
// code and names the argument. (Creating real taps is in test/kernel/netdev/tap.test.ts.)
import * as fc from 'fast-check';
import { formatMac, parseMac, planTap, Tap, type TapOptions, tunFlags, validateLinkName } from '../../../lib/netdev/tap';

// A tun path that does not exist: if validation let an option through, the
// create would fail with ENOENT instead of the validation code.
const NO_TUN = '/nonexistent/net/tun';

function rejection(opts: unknown): { code?: string; argument?: string; message: string } {
  try {
    Tap.create({ path: NO_TUN, ...(opts as TapOptions) });
  } catch (err) {
    return err as { code?: string; argument?: string; message: string };
  }
  throw new Error('expected Tap.create to throw');
}

describe('Tap.create validation (before any syscall)', () => {
  const cases: [string, unknown, string, string][] = [
    ['name longer than 15 bytes', { name: 'a'.repeat(16) }, 'name', 'ERR_VHOST_INVALID_ARG'],
    ['name of 8 characters but 16 bytes', { name: 'é'.repeat(8) }, 'name', 'ERR_VHOST_INVALID_ARG'],
    ['empty name', { name: '' }, 'name', 'ERR_VHOST_INVALID_ARG'],
    ["name '.'", { name: '.' }, 'name', 'ERR_VHOST_INVALID_ARG'],
    ["name '..'", { name: '..' }, 'name', 'ERR_VHOST_INVALID_ARG'],
    ["name with '/'", { name: 'a/b' }, 'name', 'ERR_VHOST_INVALID_ARG'],
    ['name with a space', { name: 'vm 0' }, 'name', 'ERR_VHOST_INVALID_ARG'],
    ['name with a tab', { name: 'vm\t0' }, 'name', 'ERR_VHOST_INVALID_ARG'],
    ["name with ':'", { name: 'vm:0' }, 'name', 'ERR_VHOST_INVALID_ARG'],
    ['name with two templates', { name: 'a%d%d' }, 'name', 'ERR_VHOST_INVALID_ARG'],
    ['name that is not a string', { name: 7 }, 'name', 'ERR_VHOST_INVALID_ARG'],
    ['mtu 67', { mtu: 67 }, 'mtu', 'ERR_VHOST_OUT_OF_RANGE'],
    ['mtu 65536', { mtu: 65536 }, 'mtu', 'ERR_VHOST_OUT_OF_RANGE'],
    ['mtu 70000', { mtu: 70000 }, 'mtu', 'ERR_VHOST_OUT_OF_RANGE'],
    ['mtu 1500.5', { mtu: 1500.5 }, 'mtu', 'ERR_VHOST_INVALID_ARG'],
    ["mtu '1500'", { mtu: '1500' }, 'mtu', 'ERR_VHOST_INVALID_ARG'],
    ['queues 0', { queues: 0, multiQueue: true }, 'queues', 'ERR_VHOST_OUT_OF_RANGE'],
    ['queues 257', { queues: 257, multiQueue: true }, 'queues', 'ERR_VHOST_OUT_OF_RANGE'],
    ['queues 2.5', { queues: 2.5, multiQueue: true }, 'queues', 'ERR_VHOST_INVALID_ARG'],
    ['queues 2 without multiQueue', { queues: 2 }, 'queues', 'ERR_VHOST_INVALID_ARG'],
    ['mac with 5 bytes', { mac: new Uint8Array(5) }, 'mac', 'ERR_VHOST_INVALID_ARG'],
    ['mac string with 5 bytes', { mac: '02:00:00:00:01' }, 'mac', 'ERR_VHOST_INVALID_ARG'],
    ['mac string with bad hex', { mac: '02:00:00:00:01:zz' }, 'mac', 'ERR_VHOST_INVALID_ARG'],
    ['multicast mac', { mac: '03:00:00:00:00:01' }, 'mac', 'ERR_VHOST_INVALID_ARG'],
    ['multicast mac bytes', { mac: Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff) }, 'mac', 'ERR_VHOST_INVALID_ARG'],
    ['all-zero mac', { mac: '00:00:00:00:00:00' }, 'mac', 'ERR_VHOST_INVALID_ARG'],
    ['mac as a number', { mac: 42 }, 'mac', 'ERR_VHOST_INVALID_ARG'],
    ['vnetHdrSize 9', { vnetHdrSize: 9 }, 'vnetHdrSize', 'ERR_VHOST_OUT_OF_RANGE'],
    ['vnetHdrSize 11.5', { vnetHdrSize: 11.5 }, 'vnetHdrSize', 'ERR_VHOST_INVALID_ARG'],
    ['vnetHdrSize without vnetHdr', { vnetHdr: false, vnetHdrSize: 12 }, 'vnetHdrSize', 'ERR_VHOST_INVALID_ARG'],
    ['sndbuf 0', { sndbuf: 0 }, 'sndbuf', 'ERR_VHOST_OUT_OF_RANGE'],
    ['sndbuf above INT_MAX', { sndbuf: 2 ** 31 }, 'sndbuf', 'ERR_VHOST_OUT_OF_RANGE'],
    ['offload -1', { offload: -1 }, 'offload', 'ERR_VHOST_OUT_OF_RANGE'],
    ["up 'yes'", { up: 'yes' }, 'up', 'ERR_VHOST_INVALID_ARG'],
    ['persist 1', { persist: 1 }, 'persist', 'ERR_VHOST_INVALID_ARG'],
    ['multiQueue 1', { multiQueue: 1 }, 'multiQueue', 'ERR_VHOST_INVALID_ARG'],
    ['an unknown option (typo)', { vnetHdrsize: 12 }, 'vnetHdrsize', 'ERR_VHOST_INVALID_ARG'],
    ['an empty path', { path: '' }, 'path', 'ERR_VHOST_INVALID_ARG'],
  ];

  test.each(cases)('rejects %s', (_label, opts, argument, code) => {
    const err = rejection(opts);
    expect(err.code).toBe(code);
    expect(err.argument).toBe(argument);
    expect(err.message).toContain(argument);
  });

  test('rejects options that are not an object', () => {
    expect(() => planTap(null as unknown as TapOptions)).toThrow(expect.objectContaining({ code: 'ERR_VHOST_INVALID_ARG', argument: 'options' }));
  });

  test('valid options reach the syscalls (a missing tun path then fails with ENOENT at open)', () => {
    const err = rejection({ name: 'vm0', mtu: 1500, mac: '02:00:00:00:00:01', queues: 4, multiQueue: true, vnetHdrSize: 10 }) as { code?: string; syscall?: string; path?: string; step?: string };
    expect(err.code).toBe('ENOENT');
    expect(err.syscall).toBe('open');
    expect(err.path).toBe(NO_TUN);
    expect(err.step).toBe('TUNSETIFF');
  });
});

describe('planTap', () => {
  test('defaults: tap, no packet info, vnet header of 12 bytes, one queue, sndbuf INT_MAX, kernel-chosen name', () => {
    const plan = planTap({});
    expect(plan.flags).toBe(tunFlags.IFF_TAP | tunFlags.IFF_NO_PI | tunFlags.IFF_VNET_HDR);
    expect(plan.vnetHdrSize).toBe(12);
    expect(plan.queues).toBe(1);
    expect(plan.sndbuf).toBe(0x7fffffff);
    expect(plan.name).toBe('');
    expect(plan.persist).toBe(false);
    expect(plan.path).toBe('/dev/net/tun');
    expect(plan.mtu).toBeUndefined();
    expect(plan.up).toBeUndefined();
  });

  test('multiQueue adds IFF_MULTI_QUEUE; vnetHdr: false drops IFF_VNET_HDR and the size', () => {
    expect(planTap({ multiQueue: true, queues: 256 }).flags & tunFlags.IFF_MULTI_QUEUE).toBe(tunFlags.IFF_MULTI_QUEUE);
    const plain = planTap({ vnetHdr: false });
    expect(plain.flags & tunFlags.IFF_VNET_HDR).toBe(0);
    expect(plain.vnetHdrSize).toBeUndefined();
  });

  test('accepts the boundaries: mtu 68 and 65535, 15-byte name, one %d template, vnetHdrSize 10', () => {
    expect(planTap({ mtu: 68 }).mtu).toBe(68);
    expect(planTap({ mtu: 65535 }).mtu).toBe(65535);
    expect(planTap({ name: 'a'.repeat(15) }).name).toBe('a'.repeat(15));
    expect(planTap({ name: 'vm%d' }).name).toBe('vm%d');
    expect(planTap({ vnetHdrSize: 10 }).vnetHdrSize).toBe(10);
  });

  test('validateLinkName names the argument it is given', () => {
    expect(() => validateLinkName('a/b', 'link')).toThrow(expect.objectContaining({ argument: 'link' }));
  });
});

describe('MAC parsing', () => {
  test('parses strings in either case and copies byte arrays', () => {
    expect(Array.from(parseMac('02:AB:cd:00:11:ff'))).toEqual([0x02, 0xab, 0xcd, 0x00, 0x11, 0xff]);
    const bytes = Uint8Array.of(2, 0, 0, 0, 0, 1);
    const parsed = parseMac(bytes);
    bytes[5] = 9;
    expect(parsed[5]).toBe(1);
  });

  test('format and parse round-trip for every unicast, non-zero MAC', () => {
    const unicast = fc.uint8Array({ minLength: 6, maxLength: 6 }).filter((b) => (b[0] & 1) === 0 && b.some((x) => x !== 0));
    fc.assert(
      fc.property(unicast, (b) => {
        const s = formatMac(b);
        expect(s).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
        expect(Array.from(parseMac(s))).toEqual(Array.from(b));
      }),
    );
  });
});
