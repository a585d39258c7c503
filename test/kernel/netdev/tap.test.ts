// Taps on the real kernel (root, inside the test VM): what Tap.create asks
// for is read back through TUNGETIFF, the link ioctls and sysfs, and every
// error path is triggered for real. Only links these tests create are touched.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../../../lib/core/native';
import { linkFlags, Tap, tunFlags, tunOffload } from '../../../lib/netdev/tap';
import { describeKernel, fdFlags, O_CLOEXEC, O_NONBLOCK, openFdCount, sleep, thrown } from '../../support/helpers';
import { sysNet, txQueues } from '../../support/net-helpers';

const INT_MAX = 0x7fffffff;
const root = path.resolve(__dirname, '../../..');
let seq = 0;
/** A link name unique to this test run (≤ 15 bytes). */
const linkName = (): string => `lvt${process.pid % 10000}x${seq++}`;
const sysfs = (name: string, attr?: string): string => path.join('/sys/class/net', name, attr ?? '');

/** Links go away synchronously on the last close; allow the sysfs removal a moment anyway. */
async function gone(name: string): Promise<boolean> {
  for (let i = 0; i < 50 && fs.existsSync(sysfs(name)); i++) await sleep(20);
  return !fs.existsSync(sysfs(name));
}

/** Runs Tap.create(options) from the built library in a child, optionally wrapped (setpriv, unshare). */
function createInChild(wrap: string[], options: object): Record<string, unknown> {
  const dist = path.join(root, 'dist', 'index.js');
  if (!fs.existsSync(dist)) throw new Error(`${dist} is missing: run npm run build:ts first`);
  const script = `
    const { Tap } = require(process.argv[1]);
    try { Tap.create(JSON.parse(process.argv[2])).close(); console.log(JSON.stringify({ created: true })); }
    catch (e) { console.log(JSON.stringify({ code: e.code, syscall: e.syscall, path: e.path, hint: e.hint, step: e.step, message: e.message })); }`;
  const argv = [...wrap, process.execPath, '-e', script, dist, JSON.stringify(options)];
  const res = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8' });
  if (res.status !== 0) throw new Error(`child failed (${res.status}): ${res.stderr}`);
  return JSON.parse(res.stdout) as Record<string, unknown>;
}

describeKernel('Tap (real /dev/net/tun)', ['/dev/net/tun', '/dev/vhost-net'], () => {
  const open: Tap[] = [];
  const create = (opts: Parameters<typeof Tap.create>[0]): Tap => {
    const tap = Tap.create(opts);
    open.push(tap);
    return tap;
  };
  afterEach(() => {
    for (const tap of open.splice(0)) {
      try {
        if (!tap.closed) tap.setPersist(false);
      } catch {
        // already gone
      }
      tap.close();
    }
  });

  describe('create and read back', () => {
    test('the link gets the requested name; TUNGETIFF reads back IFF_TAP | IFF_NO_PI | IFF_VNET_HDR', () => {
      const name = linkName();
      const tap = create({ name });
      expect(tap.name).toBe(name);
      expect(fs.existsSync(sysfs(name))).toBe(true);
      const iff = tap.iff;
      expect(iff.name).toBe(name);
      const want = tunFlags.IFF_TAP | tunFlags.IFF_NO_PI | tunFlags.IFF_VNET_HDR;
      expect(iff.flags & want).toBe(want);
      expect(iff.flags & (tunFlags.IFF_MULTI_QUEUE | tunFlags.IFF_TUN | tunFlags.IFF_PERSIST)).toBe(0);
      // sysfs shows the same flags the tun driver holds
      expect(parseInt(sysNet(name, 'tun_flags'), 16)).toBe(iff.flags);
      expect(tap.ifindex).toBe(Number(sysNet(name, 'ifindex')));
    });

    test('without a name the kernel picks tapN; a %d template is resolved', () => {
      const auto = create({});
      expect(auto.name).toMatch(/^tap\d+$/);
      expect(fs.existsSync(sysfs(auto.name))).toBe(true);
      const prefix = `lvt${process.pid % 10000}t`;
      const templated = create({ name: `${prefix}%d` });
      expect(templated.name).toMatch(new RegExp(`^${prefix}\\d+$`));
      expect(templated.iff.name).toBe(templated.name);
    });

    test('the vnet header size reads back: 12 by default, 10 when asked', () => {
      expect(create({ name: linkName() }).vnetHdrSize).toBe(12);
      const tap = create({ name: linkName(), vnetHdrSize: 10 });
      expect(tap.vnetHdrSize).toBe(10);
      tap.setVnetHdrSize(12);
      expect(tap.vnetHdrSize).toBe(12);
    });

    test('vnetHdr: false leaves IFF_VNET_HDR off', () => {
      const tap = create({ name: linkName(), vnetHdr: false });
      expect(tap.iff.flags & tunFlags.IFF_VNET_HDR).toBe(0);
    });

    test('sndbuf reads back INT_MAX by default, or the size asked for', () => {
      expect(create({ name: linkName() }).sndbuf).toBe(INT_MAX);
      expect(create({ name: linkName(), sndbuf: 65536 }).sndbuf).toBe(65536);
    });

    test('MTU, MAC and up read back through the link ioctls and sysfs', () => {
      const name = linkName();
      const tap = create({ name, mtu: 9000, mac: '02:00:5e:10:20:30', up: true });
      expect(tap.mtu).toBe(9000);
      expect(sysNet(name, 'mtu')).toBe('9000');
      expect(tap.mac).toBe('02:00:5e:10:20:30');
      expect(sysNet(name, 'address')).toBe('02:00:5e:10:20:30');
      expect(tap.isUp).toBe(true);
      expect(parseInt(sysNet(name, 'flags'), 16) & linkFlags.IFF_UP).toBe(linkFlags.IFF_UP);
      expect(native.linkGetFlags(name)).toBe(tap.linkFlags);
    });

    test('MTU, MAC and up can be changed afterwards', () => {
      const name = linkName();
      const tap = create({ name, up: true });
      tap.mtu = 1280;
      expect(sysNet(name, 'mtu')).toBe('1280');
      tap.setMac(Uint8Array.of(0x02, 1, 2, 3, 4, 5));
      expect(sysNet(name, 'address')).toBe('02:01:02:03:04:05');
      tap.mac = '02:aa:bb:cc:dd:ee';
      expect(sysNet(name, 'address')).toBe('02:aa:bb:cc:dd:ee');
      tap.setUp(false);
      expect(parseInt(sysNet(name, 'flags'), 16) & linkFlags.IFF_UP).toBe(0);
      expect(tap.isUp).toBe(false);
    });

    test('a tap is created down unless up is asked for', () => {
      const name = linkName();
      create({ name });
      expect(parseInt(sysNet(name, 'flags'), 16) & linkFlags.IFF_UP).toBe(0);
    });

    test('TUNGETFEATURES offers tap, no-pi, vnet header and multi-queue', () => {
      const f = create({ name: linkName() }).features;
      for (const flag of [tunFlags.IFF_TAP, tunFlags.IFF_NO_PI, tunFlags.IFF_VNET_HDR, tunFlags.IFF_MULTI_QUEUE]) expect(f & flag).toBe(flag);
    });

    test('offloads the kernel knows are accepted (at create and later)', () => {
      const tap = create({ name: linkName(), offload: tunOffload.TUN_F_CSUM | tunOffload.TUN_F_TSO4 | tunOffload.TUN_F_TSO6 });
      expect(() => tap.setOffload(0)).not.toThrow();
    });

    test('fds are O_CLOEXEC and O_NONBLOCK, and a child process inherits none of them', () => {
      const tap = create({ name: linkName(), multiQueue: true, queues: 2 });
      for (const q of tap.queues) {
        expect(fdFlags(q.fd) & O_CLOEXEC).toBe(O_CLOEXEC);
        expect(fdFlags(q.fd) & O_NONBLOCK).toBe(O_NONBLOCK);
      }
      const child = spawnSync('sh', ['-c', 'ls -l /proc/$$/fd'], { encoding: 'utf8' });
      expect(child.status).toBe(0);
      expect(fs.readlinkSync(`/proc/self/fd/${tap.fd}`)).toBe('/dev/net/tun');
      expect(child.stdout).toMatch(/ 0 -> /); // the listing worked
      expect(child.stdout).not.toContain('/dev/net/tun');
    });
  });

  describe('multi-queue', () => {
    test('4 queues: 4 distinct fds on one link, each IFF_MULTI_QUEUE with sndbuf INT_MAX', () => {
      const name = linkName();
      const tap = create({ name, multiQueue: true, queues: 4 });
      expect(tap.queues).toHaveLength(4);
      expect(tap.queues[0].fd).toBe(tap.fd);
      expect(new Set(tap.queues.map((q) => q.fd)).size).toBe(4);
      for (const q of tap.queues) {
        expect(q.iff.name).toBe(name);
        expect(q.iff.flags & tunFlags.IFF_MULTI_QUEUE).toBe(tunFlags.IFF_MULTI_QUEUE);
        expect(q.sndbuf).toBe(INT_MAX);
      }
      expect(txQueues(name)).toBe(4);
    });

    test('a queue detaches and re-attaches with TUNSETQUEUE', () => {
      const name = linkName();
      const tap = create({ name, multiQueue: true, queues: 4 });
      tap.queues[2].detach();
      expect(txQueues(name)).toBe(3);
      // detaching twice, or attaching an attached queue, is refused
      expect(thrown(() => tap.queues[2].detach())).toMatchObject({ code: 'EINVAL', syscall: 'ioctl(TUNSETQUEUE)' });
      expect(thrown(() => tap.queues[1].attach())).toMatchObject({ code: 'EINVAL', syscall: 'ioctl(TUNSETQUEUE)' });
      tap.queues[2].attach();
      expect(txQueues(name)).toBe(4);
    });

    test('TUNSETQUEUE on a single-queue tap is refused (EINVAL)', () => {
      const tap = create({ name: linkName() });
      expect(thrown(() => tap.queues[0].detach())).toMatchObject({ code: 'EINVAL', syscall: 'ioctl(TUNSETQUEUE)', path: '/dev/net/tun' });
    });
  });

  describe('kernel errors', () => {
    test('a second single-queue tap with the same name: EBUSY from TUNSETIFF', () => {
      const name = linkName();
      create({ name });
      const err = thrown(() => create({ name }));
      expect(err).toMatchObject({ code: 'EBUSY', syscall: 'ioctl(TUNSETIFF)', path: '/dev/net/tun', step: 'TUNSETIFF' });
      expect(err.message).toBe("EBUSY: resource busy or locked, ioctl(TUNSETIFF) '/dev/net/tun'");
    });

    test('attaching a multi-queue open to a single-queue tap: EINVAL', () => {
      const name = linkName();
      create({ name });
      expect(thrown(() => create({ name, multiQueue: true }))).toMatchObject({ code: 'EINVAL', syscall: 'ioctl(TUNSETIFF)' });
    });

    test('the name of a link that is not a tap (lo): EINVAL', () => {
      expect(thrown(() => create({ name: 'lo' }))).toMatchObject({ code: 'EINVAL', syscall: 'ioctl(TUNSETIFF)' });
    });

    test('MTU above the tap maximum (65535 > 65521): EINVAL at SIOCSIFMTU; the half-made link is removed', async () => {
      const name = linkName();
      const err = thrown(() => create({ name, mtu: 65535 }));
      expect(err).toMatchObject({ code: 'EINVAL', syscall: 'ioctl(SIOCSIFMTU)', path: name, step: 'SIOCSIFMTU' });
      expect(await gone(name)).toBe(true);
      // the largest MTU the kernel does take for a tap
      expect(create({ name: linkName(), mtu: 65521 }).mtu).toBe(65521);
    });

    test('a persistent tap that fails midway is un-persisted and removed', async () => {
      const name = linkName();
      expect(thrown(() => create({ name, persist: true, mtu: 65535 }))).toMatchObject({ code: 'EINVAL', step: 'SIOCSIFMTU' });
      expect(await gone(name)).toBe(true);
    });

    test('a vnet header smaller than 10 bytes: EINVAL from TUNSETVNETHDRSZ', () => {
      const tap = create({ name: linkName() });
      expect(thrown(() => native.tapSetVnetHdrSize(tap.nativeHandle, 9))).toMatchObject({ code: 'EINVAL', syscall: 'ioctl(TUNSETVNETHDRSZ)', path: '/dev/net/tun' });
      expect(tap.vnetHdrSize).toBe(12);
    });

    test('offload bits the kernel does not know: EINVAL from TUNSETOFFLOAD (at create too, naming the step)', async () => {
      const tap = create({ name: linkName() });
      expect(thrown(() => tap.setOffload(0x80000000))).toMatchObject({ code: 'EINVAL', syscall: 'ioctl(TUNSETOFFLOAD)' });
      // TSO without checksum offload is refused as well
      expect(thrown(() => tap.setOffload(tunOffload.TUN_F_TSO4))).toMatchObject({ code: 'EINVAL' });
      const name = linkName();
      expect(thrown(() => create({ name, offload: 0x80000000 }))).toMatchObject({ code: 'EINVAL', step: 'TUNSETOFFLOAD' });
      expect(await gone(name)).toBe(true);
    });

    test('link ioctls on a link that does not exist: ENODEV naming the link', () => {
      const name = linkName();
      expect(thrown(() => native.linkSetMtu(name, 1500))).toMatchObject({ code: 'ENODEV', syscall: 'ioctl(SIOCSIFMTU)', path: name });
      expect(thrown(() => native.linkGetMtu(name))).toMatchObject({ code: 'ENODEV', syscall: 'ioctl(SIOCGIFMTU)', path: name });
      expect(thrown(() => native.linkIndex(name))).toMatchObject({ code: 'ENODEV', syscall: 'ioctl(SIOCGIFINDEX)', path: name });
      expect(thrown(() => native.linkSetUp(name, true))).toMatchObject({ code: 'ENODEV', syscall: 'ioctl(SIOCGIFFLAGS)', path: name });
      expect(thrown(() => native.linkGetMac(name))).toMatchObject({ code: 'ENODEV', syscall: 'ioctl(SIOCGIFHWADDR)', path: name });
    });

    test('a multicast MAC given straight to the kernel: EADDRNOTAVAIL', () => {
      const name = linkName();
      create({ name });
      const err = thrown(() => native.linkSetMac(name, Uint8Array.of(0x01, 0, 0x5e, 0, 0, 1)));
      expect(err).toMatchObject({ code: 'EADDRNOTAVAIL', syscall: 'ioctl(SIOCSIFHWADDR)', path: name });
    });

    test('without CAP_NET_ADMIN: EPERM from TUNSETIFF, with the CAP_NET_ADMIN hint', () => {
      const r = createInChild(['setpriv', '--inh-caps=-net_admin', '--bounding-set=-net_admin'], { name: linkName() });
      expect(r).toMatchObject({ code: 'EPERM', syscall: 'ioctl(TUNSETIFF)', path: '/dev/net/tun', step: 'TUNSETIFF' });
      expect(r.hint).toBe('ioctl(TUNSETIFF) needs CAP_NET_ADMIN: run as root or grant the process CAP_NET_ADMIN');
      expect(r.message).toContain('CAP_NET_ADMIN');
    });

    test('without /dev/net/tun: ENOENT from open, with the modprobe tun hint', () => {
      // A private mount namespace hides /dev/net under an empty tmpfs for the child only.
      const r = createInChild(['unshare', '--mount', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs none /dev/net && exec "$@"', 'sh'], {});
      expect(r).toMatchObject({ code: 'ENOENT', syscall: 'open', path: '/dev/net/tun' });
      expect(r.hint).toBe('/dev/net/tun is missing: the tun module is not loaded: modprobe tun');
    });
  });

  describe('lifetime', () => {
    test('close removes a non-persistent link', async () => {
      const name = linkName();
      const tap = Tap.create({ name, multiQueue: true, queues: 3 });
      expect(fs.existsSync(sysfs(name))).toBe(true);
      tap.close();
      expect(tap.closed).toBe(true);
      expect(tap.queues.every((q) => q.closed)).toBe(true);
      expect(await gone(name)).toBe(true);
      tap.close(); // idempotent
    });

    test('a persistent tap outlives its fds and can be re-opened, then removed', async () => {
      const name = linkName();
      const first = Tap.create({ name, persist: true });
      expect(first.iff.flags & tunFlags.IFF_PERSIST).toBe(tunFlags.IFF_PERSIST);
      first.close();
      await sleep(50);
      expect(fs.existsSync(sysfs(name))).toBe(true);
      const again = create({ name });
      expect(again.iff.flags & tunFlags.IFF_PERSIST).toBe(tunFlags.IFF_PERSIST);
      again.setPersist(false);
      again.close();
      expect(await gone(name)).toBe(true);
    });

    test('use after close throws ERR_VHOST_CLOSED, never a call on a recycled fd', () => {
      const tap = Tap.create({ name: linkName(), multiQueue: true, queues: 2 });
      const queue = tap.queues[1];
      tap.close();
      for (const use of [() => tap.fd, () => tap.mtu, () => tap.mac, () => tap.features, () => tap.iff, () => tap.vnetHdrSize,
        () => tap.sndbuf, () => tap.setUp(true), () => tap.setOffload(0), () => (tap.mtu = 1500), () => queue.detach(), () => queue.fd])
        expect(thrown(use).code).toBe('ERR_VHOST_CLOSED');
    });

    test('100 create/configure/close cycles leave the open fd count and the links unchanged', async () => {
      const before = openFdCount();
      const names: string[] = [];
      for (let i = 0; i < 100; i++) {
        const name = linkName();
        names.push(name);
        const tap = Tap.create({ name, multiQueue: true, queues: 2, mtu: 1400, mac: '02:00:00:00:00:01', up: true });
        tap.close();
      }
      // failing creates leak nothing either
      for (let i = 0; i < 20; i++) thrown(() => Tap.create({ name: linkName(), mtu: 65535 }));
      expect(openFdCount()).toBe(before);
      for (const name of names) expect(await gone(name)).toBe(true);
    });
  });
});
