// Argument validation of VhostDevice / VhostNet / VhostVsock, on any host.
// The devices are opened on /dev/null: every ioctl or read/write there fails
// with ENOTTY/EINVAL from the kernel, so a validation error (ERR_VHOST_*)
// proves the check ran before any syscall, and a kernel errno proves a valid
// argument got through.
import { EventFd } from '../../../lib/core/eventfd';
import { VhostNet } from '../../../lib/vhost/net';
import { VhostVsock } from '../../../lib/vhost/vsock';
import { thrown } from '../../support/helpers';

type Err = ReturnType<typeof thrown> & { argument?: string };

function expectInvalid(fn: () => unknown, argument: string, code = 'ERR_VHOST_INVALID_ARG'): Err {
  const err = thrown(fn);
  expect({ code: err.code, argument: err.argument }).toEqual({ code, argument });
  expect(err.message).toContain(argument);
  expect(err.syscall).toBeUndefined();
  return err;
}

function expectReachedKernel(fn: () => unknown, syscall: string): void {
  const err = thrown(fn);
  expect(err.code).toBe('ENOTTY');
  expect(err.syscall).toBe(syscall);
  expect(err.path).toBe('/dev/null');
}

let net: VhostNet;
let vsock: VhostVsock;
beforeEach(() => {
  net = VhostNet.open('/dev/null');
  vsock = VhostVsock.open('/dev/null');
});
afterEach(() => {
  net.close();
  vsock.close();
});

describe('queue index', () => {
  test.each([-1, 1.5, NaN, 2 ** 32])('rejects %p', (index) => {
    const code = Number.isInteger(index) ? 'ERR_VHOST_OUT_OF_RANGE' : 'ERR_VHOST_INVALID_ARG';
    expectInvalid(() => net.setVringNum(index, 256), 'index', code);
    expectInvalid(() => net.getVringBase(index), 'index', code);
    expectInvalid(() => net.setBackend(index, null), 'index', code);
  });

  test('rejects a non-number', () => {
    expectInvalid(() => net.setVringBase('0' as never, 0), 'index');
    expectInvalid(() => net.setVringKick(1n as never, null), 'index');
  });

  test('leaves index >= the queue count to the kernel (ENOBUFS there)', () => {
    expectReachedKernel(() => net.setVringNum(2, 256), 'ioctl(VHOST_SET_VRING_NUM)');
    expectReachedKernel(() => net.setBackend(7, null), 'ioctl(VHOST_NET_SET_BACKEND)');
  });
});

describe('ring size, base and busyloop timeout', () => {
  test('reject non-integers and values outside u32', () => {
    expectInvalid(() => net.setVringNum(0, 2.5), 'num');
    expectInvalid(() => net.setVringNum(0, -1), 'num', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => net.setVringBase(0, 2 ** 32), 'base', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => net.setVringBase(0, 1n as never), 'base');
    expectInvalid(() => net.setVringBusyloopTimeout(0, -5), 'usec', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => net.setVringBusyloopTimeout(0, '50' as never), 'usec');
  });

  test('leave kernel-checked ranges to the kernel (num 3, base 0x10000)', () => {
    expectReachedKernel(() => net.setVringNum(0, 3), 'ioctl(VHOST_SET_VRING_NUM)');
    expectReachedKernel(() => net.setVringBase(0, 0x10000), 'ioctl(VHOST_SET_VRING_BASE)');
    expectReachedKernel(() => net.setVringBusyloopTimeout(1, 0xffff_ffff), 'ioctl(VHOST_SET_VRING_BUSYLOOP_TIMEOUT)');
  });
});

describe('feature words', () => {
  test('must be bigints within 64 bits', () => {
    expectInvalid(() => net.setFeatures(1 as never), 'bits');
    expectInvalid(() => net.setFeatures(-1n), 'bits', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => net.setBackendFeatures(1n << 64n), 'bits', 'ERR_VHOST_OUT_OF_RANGE');
    expectReachedKernel(() => net.setFeatures((1n << 64n) - 1n), 'ioctl(VHOST_SET_FEATURES)');
  });
});

describe('addresses', () => {
  test('setVringAddr checks each address and the flags', () => {
    const ok = { desc: 0x1000n, avail: 0x2000n, used: 0x3000n };
    expectInvalid(() => net.setVringAddr(0, null as never), 'addr');
    expectInvalid(() => net.setVringAddr(0, { ...ok, desc: -1n }), 'addr.desc', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => net.setVringAddr(0, { ...ok, avail: '0x2000' as never }), 'addr.avail');
    expectInvalid(() => net.setVringAddr(0, { ...ok, used: 2 ** 60 }), 'addr.used');
    expectInvalid(() => net.setVringAddr(0, { ...ok, log: 1n << 64n }), 'addr.log', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => net.setVringAddr(0, { ...ok, flags: 0.5 }), 'addr.flags');
    // numbers that are safe integers are accepted, misalignment is the kernel's to judge
    expectReachedKernel(() => net.setVringAddr(0, { desc: 0x1000, avail: 0x2001, used: 0x3000 }), 'ioctl(VHOST_SET_VRING_ADDR)');
  });

  test('setLogBase takes a bigint or safe integer >= 0', () => {
    expectInvalid(() => net.setLogBase(-4096), 'addr', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => net.setLogBase(null as never), 'addr');
    expectReachedKernel(() => net.setLogBase(4096), 'ioctl(VHOST_SET_LOG_BASE)');
  });
});

describe('memory table', () => {
  test('accepts explicit regions and anything shaped like GuestMemory', () => {
    expectReachedKernel(() => net.setMemTable([{ gpa: 0n, size: 0x1000n, hva: 0x10000n }]), 'ioctl(VHOST_SET_MEM_TABLE)');
    expectReachedKernel(() => net.setMemTable({ regions: [{ gpa: 0n, size: 0x1000n, hva: 0x10000n }] }), 'ioctl(VHOST_SET_MEM_TABLE)');
    expectReachedKernel(() => net.setMemTable([]), 'ioctl(VHOST_SET_MEM_TABLE)');
  });

  test('names the bad region field', () => {
    expectInvalid(() => net.setMemTable([{ gpa: 0n, size: 0x1000n, hva: 0x10000n }, null as never]), 'mem[1]');
    expectInvalid(() => net.setMemTable([{ gpa: 0n, size: -1n, hva: 0n }]), 'mem[0].size', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => net.setMemTable([{ gpa: 0n, length: 1n, hva: 0n } as never]), 'mem[0].size');
    expectInvalid(() => net.setMemTable({ regions: [{ gpa: 0n, size: 4096n, hva: 'x' as never }] }), 'mem.regions[0].hva');
    expectInvalid(() => net.setMemTable(42 as never), 'mem');
  });

  test('does not pre-judge the region count (the kernel answers E2BIG)', () => {
    const regions = Array.from({ length: 1000 }, (_, i) => ({ gpa: BigInt(i) << 12n, size: 4096n, hva: BigInt(i + 16) << 12n }));
    expectReachedKernel(() => net.setMemTable(regions), 'ioctl(VHOST_SET_MEM_TABLE)');
  });
});

describe('fd arguments', () => {
  test('accept an FdOwner, an fd number, -1 or null', () => {
    const ev = EventFd.create();
    try {
      expectReachedKernel(() => net.setVringKick(0, ev), 'ioctl(VHOST_SET_VRING_KICK)');
      expectReachedKernel(() => net.setVringCall(0, 0), 'ioctl(VHOST_SET_VRING_CALL)');
      expectReachedKernel(() => net.setVringErr(0, -1), 'ioctl(VHOST_SET_VRING_ERR)');
      expectReachedKernel(() => net.setLogFd(null), 'ioctl(VHOST_SET_LOG_FD)');
      expectReachedKernel(() => net.setBackend(0, null), 'ioctl(VHOST_NET_SET_BACKEND)');
    } finally {
      ev.close();
    }
  });

  test('reject other values', () => {
    expectInvalid(() => net.setVringKick(0, -2), 'fd', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => net.setVringCall(0, 1.5), 'fd');
    expectInvalid(() => net.setVringErr(0, {} as never), 'fd');
    expectInvalid(() => net.setLogFd('3' as never), 'fd');
    expectInvalid(() => net.setBackend(0, 2 ** 31), 'backend', 'ERR_VHOST_OUT_OF_RANGE');
  });

  test('a closed EventFd is refused with ERR_VHOST_CLOSED before the ioctl', () => {
    const ev = EventFd.create();
    ev.close();
    const err = thrown(() => net.setVringKick(0, ev));
    expect(err.code).toBe('ERR_VHOST_CLOSED');
    expect(err.syscall).toBeUndefined();
  });
});

describe('vring endian', () => {
  test("takes 'little' or 'big' only", () => {
    expectInvalid(() => net.setVringEndian(0, 'LE' as never), 'endian');
    expectInvalid(() => net.setVringEndian(0, 1 as never), 'endian');
    expectReachedKernel(() => net.setVringEndian(0, 'big'), 'ioctl(VHOST_SET_VRING_ENDIAN)');
  });
});

describe('IOTLB messages', () => {
  test('type and perm are named; numbers are checked', () => {
    expectInvalid(() => net.sendIotlbMsg(null as never), 'msg');
    expectInvalid(() => net.sendIotlbMsg({ type: 2 as never }), 'msg.type');
    expectInvalid(() => net.sendIotlbMsg({ type: 'update', perm: 'rwx' as never }), 'msg.perm');
    expectInvalid(() => net.sendIotlbMsg({ type: 'update', iova: -1n }), 'msg.iova', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => net.sendIotlbMsg({ type: 'update', size: 1.5 }), 'msg.size');
    expectInvalid(() => net.sendIotlbMsg({ type: 'update', asid: -1 }), 'msg.asid', 'ERR_VHOST_OUT_OF_RANGE');
    // a valid message is written: /dev/null swallows it whole
    expect(() => net.sendIotlbMsg({ type: 'update', iova: 0x1000n, size: 0x1000n, uaddr: 0x7000n, perm: 'rw' })).not.toThrow();
  });
});

describe('vsock arguments', () => {
  test('setGuestCid takes a number or bigint and leaves reserved CIDs to the kernel', () => {
    expectInvalid(() => vsock.setGuestCid('3' as never), 'cid');
    expectInvalid(() => vsock.setGuestCid(3.5), 'cid');
    expectInvalid(() => vsock.setGuestCid(-3), 'cid', 'ERR_VHOST_OUT_OF_RANGE');
    expectInvalid(() => vsock.setGuestCid(1n << 64n), 'cid', 'ERR_VHOST_OUT_OF_RANGE');
    for (const cid of [0, 2, 0xffff_ffff, 1n << 32n]) {
      expectReachedKernel(() => vsock.setGuestCid(cid), 'ioctl(VHOST_VSOCK_SET_GUEST_CID)');
    }
  });

  test('setRunning takes a boolean', () => {
    expectInvalid(() => vsock.setRunning(1 as never), 'on');
    expectReachedKernel(() => vsock.setRunning(false), 'ioctl(VHOST_VSOCK_SET_RUNNING)');
  });
});

describe('open', () => {
  test('rejects an empty or non-string path', () => {
    expectInvalid(() => VhostNet.open(''), 'path');
    expectInvalid(() => VhostVsock.open(3 as never), 'path');
  });

  test('a missing vhost device path fails with ENOENT and says which module to load', () => {
    const err = thrown(() => VhostNet.open('/dev/vhost-net-missing-for-test'));
    expect(err).toMatchObject({ code: 'ENOENT', syscall: 'open', path: '/dev/vhost-net-missing-for-test' });
    expect(err.hint).toMatch(/modprobe vhost_net/);
    expect(err.message).toContain(err.hint);
  });

  test('defaults to the kernel device paths', () => {
    expect(VhostNet.defaultPath).toBe('/dev/vhost-net');
    expect(VhostVsock.defaultPath).toBe('/dev/vhost-vsock');
  });
});

describe('after close', () => {
  test('every method throws ERR_VHOST_CLOSED, and close is idempotent', () => {
    net.close();
    net.close();
    expect(net.closed).toBe(true);
    const calls: (() => unknown)[] = [
      () => net.fd,
      () => net.setOwner(),
      () => net.getFeatures(),
      () => net.setVringNum(0, 256),
      () => net.setVringKick(0, null),
      () => net.setBackend(0, null),
      () => net.readIotlbMsg(),
    ];
    for (const call of calls) expect(thrown(call).code).toBe('ERR_VHOST_CLOSED');
    expect(net.path).toBe('/dev/null');
  });
});
