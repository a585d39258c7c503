// Lifetime of vhost device fds on the real kernel, for both devices: open
// flags, ownership (SET_OWNER / RESET_OWNER), close and use-after-close, fd
// leaks over many cycles, and fds never leaking into child processes.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { EventFd } from '../../../lib/core/eventfd';
import { features } from '../../../lib/core/features';
import { GuestMemory } from '../../../lib/core/memory';
import { Tap } from '../../../lib/netdev/tap';
import type { VhostDevice } from '../../../lib/vhost/kernel/vhost-device';
import { VhostNet } from '../../../lib/vhost/net';
import { VhostVsock } from '../../../lib/vhost/vsock';
import { describeKernel, fdFlags, O_CLOEXEC, O_NONBLOCK, openFdCount, thrown, closeAfterEach } from '../../support/helpers';

const O_ACCMODE = 3;
const O_RDWR = 2;

const devices = [
  { name: 'vhost-net', path: '/dev/vhost-net', module: 'vhost_net', open: (p?: string): VhostDevice => VhostNet.open(p) },
  { name: 'vhost-vsock', path: '/dev/vhost-vsock', module: 'vhost_vsock', open: (p?: string): VhostDevice => VhostVsock.open(p) },
];

/** vhost worker threads of this process (kernel threads named vhost-<pid>). */
function vhostWorkers(): number {
  let n = 0;
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === `vhost-${process.pid}`) n++;
    } catch {
      // the thread exited while we looked
    }
  }
  return n;
}

describeKernel('vhost device lifecycle', ['/dev/vhost-net', '/dev/vhost-vsock', '/dev/net/tun'], () => {
  const track = closeAfterEach();

  describe.each(devices)('$name', ({ path, module, open }) => {
    test('opens O_RDWR | O_CLOEXEC, blocking, and knows its path', () => {
      const dev = track(open());
      expect(dev.path).toBe(path);
      expect(fs.readlinkSync(`/proc/self/fd/${dev.fd}`)).toBe(path);
      const flags = fdFlags(dev.fd);
      expect(flags & O_ACCMODE).toBe(O_RDWR);
      expect(flags & O_CLOEXEC).toBe(O_CLOEXEC);
      expect(flags & O_NONBLOCK).toBe(0);
    });

    test('a missing device path fails with ENOENT and a modprobe hint', () => {
      const missing = `${path}-missing-for-test`;
      const err = thrown(() => open(missing));
      expect(err).toMatchObject({ code: 'ENOENT', syscall: 'open', path: missing });
      expect(err.hint).toMatch(/modprobe vhost_/);
      if (path === '/dev/vhost-net') expect(err.hint).toContain(`modprobe ${module}`);
    });

    test('before SET_OWNER: features can be read, every other ioctl fails with EPERM', () => {
      const dev = track(open());
      expect(dev.getFeatures()).toBeGreaterThan(0n);
      const ev = track(EventFd.create());
      const calls: [string, () => unknown][] = [
        ['VHOST_SET_VRING_NUM', () => dev.setVringNum(0, 256)],
        ['VHOST_SET_VRING_BASE', () => dev.setVringBase(0, 0)],
        ['VHOST_GET_VRING_BASE', () => dev.getVringBase(0)],
        ['VHOST_SET_VRING_ADDR', () => dev.setVringAddr(0, { desc: 0x1000n, avail: 0x2000n, used: 0x3000n })],
        ['VHOST_SET_VRING_KICK', () => dev.setVringKick(0, ev)],
        ['VHOST_SET_VRING_CALL', () => dev.setVringCall(0, ev)],
        ['VHOST_SET_VRING_ERR', () => dev.setVringErr(0, ev)],
        ['VHOST_SET_VRING_BUSYLOOP_TIMEOUT', () => dev.setVringBusyloopTimeout(0, 1)],
        ['VHOST_SET_MEM_TABLE', () => dev.setMemTable([])],
        ['VHOST_SET_LOG_BASE', () => dev.setLogBase(0x1000n)],
        ['VHOST_SET_LOG_FD', () => dev.setLogFd(ev)],
        ['VHOST_RESET_OWNER', () => dev.resetOwner()],
      ];
      if (dev instanceof VhostNet) calls.push(['VHOST_NET_SET_BACKEND', () => dev.setBackend(0, null)]);
      if (dev instanceof VhostVsock) calls.push(['VHOST_VSOCK_SET_RUNNING', () => dev.setRunning(false)]);
      for (const [ioctl, call] of calls) {
        const err = thrown(call);
        expect({ ioctl, code: err.code, syscall: err.syscall, path: err.path }).toEqual({ ioctl, code: 'EPERM', syscall: `ioctl(${ioctl})`, path });
      }
    });

    test('a second SET_OWNER fails with EBUSY, shaped like a Node core error', () => {
      const dev = track(open());
      dev.setOwner();
      const err = thrown(() => dev.setOwner());
      expect(err).toMatchObject({ code: 'EBUSY', errno: -16, syscall: 'ioctl(VHOST_SET_OWNER)', path });
      expect(err.message).toBe(`EBUSY: resource busy or locked, ioctl(VHOST_SET_OWNER) '${path}'`);
      expect(err.name).toBe('VhostError');
    });

    test('after close: idempotent close, ERR_VHOST_CLOSED everywhere, the fd number is really closed', () => {
      const dev = open();
      const fd = dev.fd;
      dev.setOwner();
      dev.close();
      dev.close();
      dev[Symbol.dispose]();
      expect(dev.closed).toBe(true);
      expect(fs.existsSync(`/proc/self/fd/${fd}`) && fs.readlinkSync(`/proc/self/fd/${fd}`) === path).toBe(false);
      for (const call of [() => dev.fd, () => dev.setOwner(), () => dev.getFeatures(), () => dev.getVringBase(0), () => dev.readIotlbMsg()]) {
        const err = thrown(call);
        expect(err.code).toBe('ERR_VHOST_CLOSED');
        expect(err.path).toBe(path);
      }
    });
  });

  test('RESET_OWNER on vhost-net releases ownership and resets the rings', () => {
    const net = track(VhostNet.open());
    net.setOwner();
    net.setVringBase(0, 99);
    net.setVringBusyloopTimeout(0, 10);
    net.resetOwner();
    expect(thrown(() => net.getVringBase(0)).code).toBe('EPERM');
    net.setOwner(); // may own it again
    expect(net.getVringBase(0)).toBe(0);
    expect(net.getVringBusyloopTimeout(0)).toBe(0);
  });

  test('RESET_OWNER on vhost-vsock: ENOTTY where the kernel lacks it (6.1), and the device stays owned', () => {
    const vsock = track(VhostVsock.open());
    vsock.setOwner();
    vsock.setVringBase(0, 99);
    let err: ReturnType<typeof thrown> | undefined;
    try {
      vsock.resetOwner();
    } catch (e) {
      err = e as ReturnType<typeof thrown>;
    }
    if (err) {
      expect({ code: err.code, syscall: err.syscall }).toEqual({ code: 'ENOTTY', syscall: 'ioctl(VHOST_RESET_OWNER)' });
      expect(vsock.getVringBase(0)).toBe(99);
      expect(thrown(() => vsock.setOwner()).code).toBe('EBUSY');
    } else {
      expect(thrown(() => vsock.getVringBase(0)).code).toBe('EPERM');
      vsock.setOwner();
      expect(vsock.getVringBase(0)).toBe(0);
    }
  });

  test('1000 open/configure/close cycles leave the open fds and vhost workers unchanged', () => {
    const mem = track(GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] }));
    const kick = track(EventFd.create());
    const call = track(EventFd.create());
    const hva = mem.regions[0].hva;
    const fdsBefore = openFdCount();
    const workersBefore = vhostWorkers();
    for (let i = 0; i < 1000; i++) {
      const dev = i % 2 === 0 ? VhostNet.open() : VhostVsock.open();
      try {
        dev.setOwner();
        dev.setFeatures(features.ring.VERSION_1);
        dev.setMemTable(mem);
        for (const q of [0, 1]) {
          dev.setVringNum(q, 256);
          dev.setVringBase(q, i & 0xffff);
          dev.setVringAddr(q, { desc: hva + BigInt(q) * 0x10000n, avail: hva + BigInt(q) * 0x10000n + 0x1000n, used: hva + BigInt(q) * 0x10000n + 0x2000n });
          dev.setVringKick(q, kick);
          dev.setVringCall(q, call);
        }
        if (dev instanceof VhostVsock) dev.setGuestCid(100_000 + i);
      } finally {
        dev.close();
      }
    }
    expect(openFdCount()).toBe(fdsBefore);
    expect(vhostWorkers()).toBe(workersBefore);
  }, 300_000);

  test('a child process spawned while devices, eventfds, taps and guest memory are open inherits none of their fds', () => {
    const net = track(VhostNet.open());
    const vsock = track(VhostVsock.open());
    net.setOwner();
    vsock.setOwner();
    track(EventFd.create());
    track(Tap.create({ name: 'vhl%d' }));
    track(GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 16 }] }));
    const ours = fs.readdirSync('/proc/self/fd').map((fd) => {
      try {
        return fs.readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        return '';
      }
    });
    const leaky = /^(\/dev\/vhost-net|\/dev\/vhost-vsock|\/dev\/net\/tun|anon_inode:\[eventfd\]|\/memfd:)/;
    // the parent holds them (so the check below could fail)
    for (const target of ['/dev/vhost-net', '/dev/vhost-vsock', '/dev/net/tun', 'anon_inode:[eventfd]']) expect(ours).toContain(target);

    // ls runs in the shell's child and lists the shell's fds: what node's child inherited
    const child = spawnSync('sh', ['-c', 'ls -l /proc/$$/fd/'], { encoding: 'utf8' });
    expect(child.status).toBe(0);
    const inherited = [...child.stdout.matchAll(/ -> (.*)$/gm)].map((m) => m[1]);
    expect(inherited.length).toBeGreaterThanOrEqual(3); // its stdio
    expect(inherited.filter((t) => leaky.test(t))).toEqual([]);
  });
});
