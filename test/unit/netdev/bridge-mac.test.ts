// bridgeMacFor: the address bridge() gives a bridge, derived from the host's
// machine id and the bridge name (the kernel side is in
// test/kernel/netdev/bridge-macvtap.test.ts).
import fc from 'fast-check';
import { bridgeMacFor } from '../../../lib/netdev/bridge';
import { parseMac } from '../../../lib/netdev/tap';

const names = fc.stringMatching(/^[a-z][a-z0-9_-]{0,14}$/);

describe('bridgeMacFor', () => {
  test('always a unicast, locally administered address outside the taps\' 0xFE space', () => {
    fc.assert(fc.property(names, fc.string(), (name, host) => {
      const mac = parseMac(bridgeMacFor(name, host)); // parseMac refuses multicast and all-zero
      expect(mac[0] & 0x03).toBe(0x02);
      expect(mac[0]).not.toBe(0xfe);
    }));
  });

  test('stable for one host and name; differs across names and across hosts', () => {
    expect(bridgeMacFor('vmbr0', 'host-a')).toBe(bridgeMacFor('vmbr0', 'host-a'));
    expect(bridgeMacFor('vmbr0', 'host-a')).not.toBe(bridgeMacFor('vmbr1', 'host-a'));
    expect(bridgeMacFor('vmbr0', 'host-a')).not.toBe(bridgeMacFor('vmbr0', 'host-b'));
  });

  test('the default host is this machine\'s id (same answer twice)', () => {
    expect(bridgeMacFor('vmbr0')).toBe(bridgeMacFor('vmbr0'));
  });

  test('a bad name is refused with ERR_VHOST_INVALID_ARG', () => {
    expect(() => bridgeMacFor('a/b')).toThrow(expect.objectContaining({ code: 'ERR_VHOST_INVALID_ARG' }));
    expect(() => bridgeMacFor(42 as unknown as string)).toThrow(expect.objectContaining({ code: 'ERR_VHOST_INVALID_ARG' }));
  });
});
