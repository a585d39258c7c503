// QEMU argument building and fd passing plans of the VMM handoff (no devices needed).
import { qemuArgs, stdioFor, spawnVmm, prepareNetForVmm, prepareVsockForVmm } from '../../../lib/vmm/handoff';
import { VhostNet } from '../../../lib/vhost/net';
import { VhostVsock } from '../../../lib/vhost/vsock';
import { thrown } from '../../support/helpers';

describe('qemuArgs', () => {
  test('one queue pair: fds numbered from 3 in the child, no mq', () => {
    const h = qemuArgs({ net: { tapFds: [40], vhostFds: [41], mtu: 9000, mac: '52:54:00:AB:CD:EF' } });
    expect(h.args).toEqual([
      '-netdev', 'tap,id=net0,fds=3,vhost=on,vhostfds=4',
      '-device', 'virtio-net-pci,netdev=net0,id=net0-dev,host_mtu=9000,mac=52:54:00:ab:cd:ef',
    ]);
    expect(h.fds).toEqual([{ childFd: 3, parentFd: 40 }, { childFd: 4, parentFd: 41 }]);
  });

  test('two queue pairs and vsock: mq=on, vectors=2N+2, vsock fd after the net fds', () => {
    const h = qemuArgs({
      net: { id: 'hn', tapFds: [20, 21], vhostFds: [22, 23] },
      vsock: { cid: 42, vhostFd: 30 },
    });
    expect(h.args).toEqual([
      '-netdev', 'tap,id=hn,fds=3:4,vhost=on,vhostfds=5:6',
      '-device', 'virtio-net-pci,netdev=hn,id=hn-dev,mq=on,vectors=6',
      '-device', 'vhost-vsock-pci,guest-cid=42,vhostfd=7',
    ]);
    expect(h.fds.map((f) => [f.childFd, f.parentFd])).toEqual([[3, 20], [4, 21], [5, 22], [6, 23], [7, 30]]);
  });

  test('four pairs give 10 vectors; several netdevs get net0, net1; firstFd moves the numbers', () => {
    const h = qemuArgs({
      net: [{ tapFds: [10, 11, 12, 13], vhostFds: [14, 15, 16, 17] }, { tapFds: [18], vhostFds: [19] }],
      firstFd: 100,
    });
    expect(h.args[1]).toBe('tap,id=net0,fds=100:101:102:103,vhost=on,vhostfds=104:105:106:107');
    expect(h.args[3]).toBe('virtio-net-pci,netdev=net0,id=net0-dev,mq=on,vectors=10');
    expect(h.args[5]).toBe('tap,id=net1,fds=108,vhost=on,vhostfds=109');
    expect(h.fds).toHaveLength(10);
  });

  test('vsock alone', () => {
    expect(qemuArgs({ vsock: { cid: 3, vhostFd: 9 } })).toEqual({
      args: ['-device', 'vhost-vsock-pci,guest-cid=3,vhostfd=3'],
      fds: [{ childFd: 3, parentFd: 9 }],
    });
  });

  test.each([
    ['mismatched fd counts', { net: { tapFds: [3, 4], vhostFds: [5] } }, 'ERR_VHOST_INVALID_ARG'],
    ['no tap fds', { net: { tapFds: [], vhostFds: [] } }, 'ERR_VHOST_INVALID_ARG'],
    ['negative fd', { net: { tapFds: [-1], vhostFds: [5] } }, 'ERR_VHOST_INVALID_ARG'],
    ['fractional fd', { vsock: { cid: 3, vhostFd: 1.5 } }, 'ERR_VHOST_INVALID_ARG'],
    ['bad id', { net: { id: '0net', tapFds: [3], vhostFds: [4] } }, 'ERR_VHOST_INVALID_ARG'],
    ['id with a comma', { net: { id: 'a,b', tapFds: [3], vhostFds: [4] } }, 'ERR_VHOST_INVALID_ARG'],
    ['duplicate id', { net: [{ id: 'a', tapFds: [3], vhostFds: [4] }, { id: 'a', tapFds: [5], vhostFds: [6] }] }, 'ERR_VHOST_INVALID_ARG'],
    ['same fd twice', { net: { tapFds: [3], vhostFds: [3] } }, 'ERR_VHOST_INVALID_ARG'],
    ['mtu too small', { net: { tapFds: [3], vhostFds: [4], mtu: 67 } }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['bad mac', { net: { tapFds: [3], vhostFds: [4], mac: 'zz' } }, 'ERR_VHOST_INVALID_ARG'],
    ['cid 2', { vsock: { cid: 2, vhostFd: 3 } }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['cid -1 as u32', { vsock: { cid: 0xffffffff, vhostFd: 3 } }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['firstFd 2', { firstFd: 2 }, 'ERR_VHOST_INVALID_ARG'],
  ])('rejects %s', (_name, input, code) => {
    expect(thrown(() => qemuArgs(input as never)).code).toBe(code);
  });

  test('the error names the argument', () => {
    expect(() => qemuArgs({ net: { tapFds: [3, 4], vhostFds: [5] } })).toThrow(/net\[0\]\.vhostFds/);
  });
});

describe('stdioFor', () => {
  test('index = child fd, gaps ignored, stdio inherited by default', () => {
    expect(stdioFor([{ childFd: 5, parentFd: 30 }, { childFd: 3, parentFd: 31 }])).toEqual(['inherit', 'inherit', 'inherit', 31, 'ignore', 30]);
  });

  test('custom stdio for 0..2', () => {
    expect(stdioFor([{ childFd: 3, parentFd: 8 }], ['ignore', 'pipe', 'inherit'])).toEqual(['ignore', 'pipe', 'inherit', 8]);
  });

  test.each([
    ['a stdio fd', [{ childFd: 2, parentFd: 9 }], 'ERR_VHOST_INVALID_ARG'],
    ['a child fd twice', [{ childFd: 3, parentFd: 9 }, { childFd: 3, parentFd: 10 }], 'ERR_VHOST_INVALID_ARG'],
    ['a huge child fd', [{ childFd: 70000, parentFd: 9 }], 'ERR_VHOST_OUT_OF_RANGE'],
    ['a non-object', [7], 'ERR_VHOST_INVALID_ARG'],
  ])('rejects %s', (_name, fds, code) => {
    expect(thrown(() => stdioFor(fds as never)).code).toBe(code);
  });
});

describe('validation before any syscall', () => {
  test('spawnVmm checks command, args and handoff', () => {
    expect(thrown(() => spawnVmm('', [], { fds: [] })).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => spawnVmm('true', [1] as never, { fds: [] })).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => spawnVmm('true', [], null as never)).code).toBe('ERR_VHOST_INVALID_ARG');
  });

  test('prepareNetForVmm checks queuePairs, tapName, mac', () => {
    expect(thrown(() => prepareNetForVmm({ queuePairs: 0 })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => prepareNetForVmm({ queuePairs: 1.5 })).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => prepareNetForVmm({ tapName: 'x'.repeat(16) })).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => prepareNetForVmm({ mac: '01:00:00:00:00:01' })).code).toBe('ERR_VHOST_INVALID_ARG');
  });

  test('prepareVsockForVmm checks the cid', () => {
    expect(thrown(() => prepareVsockForVmm({ cid: 2 })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => prepareVsockForVmm({ cid: 'any' as never })).code).toBe('ERR_VHOST_INVALID_ARG');
  });

  test('fromFd checks the fd number', () => {
    expect(thrown(() => VhostNet.fromFd(-1)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => VhostVsock.fromFd(1.5)).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => VhostNet.fromFd(0x8000_0000)).code).toBe('ERR_VHOST_INVALID_ARG');
  });
});
