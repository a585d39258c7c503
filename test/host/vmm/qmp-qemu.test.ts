// The QMP client and the hotplug helpers against a real QEMU 7.2 (TCG, no
// guest booted: `-machine q35 -S`), the judge of the protocol and of fd
// passing: getfd / closefd, add-fd / query-fdsets / remove-fd, netdev_add with
// a tap this test creates (vhost=off: this host has no /dev/vhost-net),
// device_add / device_del on pcie-root-ports, undo after each failure QEMU
// can be made to produce, and after unplug QEMU holds no fd of the device
// (/proc/<qemu>/fd, query-fdsets).
//
// What QEMU 7.2 does here, measured:
// - tap `fds=` takes getfd names only: `/dev/fdset/N` is "not found".
// - With the machine never started (-S) and native PCIe hotplug
//   (ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off), a slot no guest has
//   powered is unplugged at once: DEVICE_DELETED follows device_del. With the
//   q35 default (ACPI hotplug) device_del waits for a guest's _EJ0, which
//   without a guest never comes: the unplug-timeout test uses that.
// - remove-fd closes the fd only while the VM runs (fdset cleanup checks the
//   run state): with -S it stays listed.
// - netdev_add tap,vhost=on with a vhostfd that is no vhost-net aborts QEMU
//   (net_client_init1: Assertion `nc' failed): hotplugNet checks fds first.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Tap } from '../../../lib/netdev/tap';
import { type Qmp, QmpError } from '../../../lib/vmm/qmp';
import { hotplugNet, hotplugVsock, unplugNet, unplugVsock } from '../../../lib/vmm/hotplug';
import type { NetFds } from '../../../lib/vmm/handoff';
import { openFdCount, thrown, waitFor, type KernelError } from '../../support/helpers';
import { connectQmp, countFds, describeWithQemu, fdsOf, rootPorts, startQemu, type QemuProcess } from '../../support/qemu';

const TUN = '/dev/net/tun';
const BASE = ['-machine', 'q35', '-accel', 'tcg', '-display', 'none', '-nodefaults', '-m', '128'];
const NATIVE_HOTPLUG = ['-global', 'ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off'];
const linkExists = (name: string): boolean => spawnSync('ip', ['link', 'show', 'dev', name], { stdio: 'ignore' }).status === 0;

const rejection = async (p: Promise<unknown>): Promise<KernelError & Partial<QmpError>> => {
  try {
    await p;
  } catch (err) {
    return err as KernelError & Partial<QmpError>;
  }
  throw new Error('expected a rejection');
};

describeWithQemu('QMP and hotplug against QEMU (no guest)', () => {
  let dir: string;
  let n = 0;
  const running: QemuProcess[] = [];
  const clients: Qmp[] = [];
  const taps: Tap[] = [];

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmp-qemu-'));
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const q of running.splice(0)) await q.stop('SIGKILL');
    for (const t of taps.splice(0)) t.close();
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const qemu = async (extra: string[] = [], ports = 2): Promise<{ vm: QemuProcess; qmp: Qmp }> => {
    const vm = await startQemu(path.join(dir, `qmp${n++}.sock`), [...BASE, ...extra, ...rootPorts(ports)]);
    running.push(vm);
    const qmp = await connectQmp(vm.qmp, { timeoutMs: 20_000 });
    clients.push(qmp);
    return { vm, qmp };
  };
  const tap = (queues = 1): Tap => {
    const t = Tap.create({ name: 'lvqmp%d', multiQueue: queues > 1, queues, up: false });
    taps.push(t);
    return t;
  };

  test('greeting, capabilities and answers: QEMU 7.x, prelaunch, an unknown command is CommandNotFound', async () => {
    const { qmp } = await qemu(['-S']);
    expect(qmp.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
    expect(await qmp.execute('query-status')).toMatchObject({ status: 'prelaunch', running: false });
    const err = await rejection(qmp.execute('no-such-command'));
    expect(err).toBeInstanceOf(QmpError);
    expect(err.code).toBe('ERR_VHOST_QMP');
    expect(err.qmpClass).toBe('CommandNotFound');
    expect(err.command).toBe('no-such-command');
    const ids = await Promise.all([1, 2, 3, 4].map(() => qmp.execute<{ status: string }>('query-status')));
    expect(ids.map((s) => s.status)).toEqual(['prelaunch', 'prelaunch', 'prelaunch', 'prelaunch']);
  });

  test('getfd passes the same open file; closefd closes QEMU\'s copy; getfd without an fd is refused', async () => {
    const { vm, qmp } = await qemu(['-S']);
    const file = path.join(dir, 'passed-file');
    fs.writeFileSync(file, 'x');
    const fd = fs.openSync(file, 'r');
    try {
      await qmp.execute('getfd', { fdname: 'f1' }, { fds: [fd] });
      expect(countFds(vm.pid, file)).toBe(1);
      await qmp.execute('closefd', { fdname: 'f1' });
      expect(countFds(vm.pid, file)).toBe(0);
      const err = await rejection(qmp.execute('getfd', { fdname: 'f2' }));
      expect(err.qmpClass).toBe('GenericError');
      expect(err.desc).toMatch(/SCM_RIGHTS/);
      expect((await rejection(qmp.execute('closefd', { fdname: 'f1' }))).desc).toMatch(/not found/);
    } finally {
      fs.closeSync(fd);
    }
  });

  test('add-fd puts the fd in an fd set (query-fdsets); remove-fd closes it once the VM runs', async () => {
    const { vm, qmp } = await qemu(['-S']);
    const file = path.join(dir, 'fdset-file');
    fs.writeFileSync(file, 'x');
    const fd = fs.openSync(file, 'r');
    try {
      const added = await qmp.execute<{ 'fdset-id': number; fd: number }>('add-fd', { opaque: 'linux-vhost' }, { fds: [fd] });
      expect(fdsOf(vm.pid).get(added.fd)).toBe(file);
      expect(await qmp.execute('query-fdsets')).toEqual([{ 'fdset-id': added['fdset-id'], fds: [{ fd: added.fd, opaque: 'linux-vhost' }] }]);
      // tap fds= does not take an fd set in QEMU 7.2: why hotplugNet uses getfd.
      const err = await rejection(qmp.execute('netdev_add', { type: 'tap', id: 'viaset', fds: `/dev/fdset/${added['fdset-id']}` }));
      expect(err.desc).toMatch(/not been found|not found/);
      // QEMU 7.2 closes a removed fd only while the VM runs (fdset cleanup checks the run state).
      await qmp.execute('cont');
      await qmp.execute('remove-fd', { 'fdset-id': added['fdset-id'], fd: added.fd });
      await waitFor('the fd set emptied', () => countFds(vm.pid, file) === 0, 10_000);
      expect(await qmp.execute('query-fdsets')).toEqual([]);
      // remove-fd of a set that is gone names it.
      expect((await rejection(qmp.execute('remove-fd', { 'fdset-id': added['fdset-id'] }))).desc).toMatch(/not found/i);
    } finally {
      fs.closeSync(fd);
    }
  });

  test('hotplugNet: a 2-queue tap NIC with the spawn-time properties; unplugNet leaves QEMU no fd of it', async () => {
    const { vm, qmp } = await qemu(['-S', ...NATIVE_HOTPLUG]);
    const t = tap(2);
    const before = countFds(vm.pid, TUN);
    // Shaped like a NetHandoff: its fds are getters on the prototype.
    const prepared = Object.create({ get tapFds() { return t.queues.map((q) => q.fd); }, get vhostFds() { return []; }, mtu: 9000 }) as NetFds;
    const plugged = await hotplugNet(qmp, prepared, { id: 'hn', mac: '52:54:00:12:34:56', queuePairs: 2, bus: 'rp1' });
    expect(plugged).toEqual({ id: 'hn', device: 'hn-dev', queuePairs: 2, vhost: false });
    expect(countFds(vm.pid, TUN)).toBe(before + 2);
    const prop = (property: string): Promise<unknown> => qmp.execute('qom-get', { path: '/machine/peripheral/hn-dev', property });
    expect(await prop('mq')).toBe(true);
    expect(await prop('vectors')).toBe(6);
    expect(await prop('host_mtu')).toBe(9000);
    expect(await prop('mac')).toBe('52:54:00:12:34:56');
    expect(await qmp.execute('qom-get', { path: '/machine/peripheral/hn-dev', property: 'parent_bus' })).toMatch(/rp1/);
    const events: string[] = [];
    qmp.on('DEVICE_DELETED', (d: { device?: string }) => d.device && events.push(d.device));
    await unplugNet(qmp, plugged, { timeoutMs: 10_000 });
    expect(events).toEqual(['hn-dev']);
    expect(countFds(vm.pid, TUN)).toBe(before);
    expect(await qmp.execute('query-fdsets')).toEqual([]);
    expect((await rejection(qmp.execute('netdev_del', { id: 'hn' }))).desc).toMatch(/not found/i);
    t.close();
    expect(linkExists(t.name)).toBe(false);
  });

  test('hotplugNet undoes everything when device_add fails (no such bus): no netdev, no fd left in QEMU', async () => {
    const { vm, qmp } = await qemu(['-S', ...NATIVE_HOTPLUG]);
    const t = tap(2);
    const before = fdsOf(vm.pid).size;
    const err = await rejection(hotplugNet(qmp, { tapFds: t.queues.map((q) => q.fd), vhostFds: [] }, { id: 'bad', bus: 'no-such-port' }));
    expect(err.code).toBe('ERR_VHOST_QMP');
    expect(err.command).toBe('device_add');
    expect(fdsOf(vm.pid).size).toBe(before);
    // The id is free again: the netdev was deleted.
    await hotplugNet(qmp, { tapFds: t.queues.map((q) => q.fd), vhostFds: [] }, { id: 'bad', bus: 'rp1' });
    await unplugNet(qmp, 'bad');
    expect(fdsOf(vm.pid).size).toBe(before);
  });

  test('hotplugNet undoes the getfd names when netdev_add fails (the netdev id is taken): QEMU keeps no fd', async () => {
    const { vm, qmp } = await qemu(['-S', ...NATIVE_HOTPLUG]);
    const first = tap(1);
    await hotplugNet(qmp, { tapFds: [first.queues[0].fd], vhostFds: [] }, { id: 'dup', bus: 'rp1' });
    const t = tap(2);
    const before = fdsOf(vm.pid).size;
    const err = await rejection(hotplugNet(qmp, { tapFds: t.queues.map((q) => q.fd), vhostFds: [] }, { id: 'dup', bus: 'rp2' }));
    expect(err.code).toBe('ERR_VHOST_QMP');
    expect(err.command).toBe('netdev_add');
    expect(err.desc).toMatch(/dup/);
    expect(fdsOf(vm.pid).size).toBe(before);
    // The names are gone too: closefd finds none.
    expect((await rejection(qmp.execute('closefd', { fdname: 'dup-tap0' }))).desc).toMatch(/not found/);
    expect((await rejection(qmp.execute('closefd', { fdname: 'dup-tap1' }))).desc).toMatch(/not found/);
    await unplugNet(qmp, 'dup', { timeoutMs: 10_000 });
  });

  test('fds that are no tap / vhost-net / vhost-vsock are refused before QEMU sees them (QEMU 7.2 aborts on a bad vhostfd)', async () => {
    const { vm, qmp } = await qemu(['-S', ...NATIVE_HOTPLUG]);
    const t = tap(1);
    const file = path.join(dir, 'not-vhost');
    fs.writeFileSync(file, '');
    const fake = fs.openSync(file, 'r');
    try {
      const before = fdsOf(vm.pid).size;
      expect((await rejection(hotplugNet(qmp, { tapFds: [t.queues[0].fd], vhostFds: [fake] }, { id: 'vh' }))).argument).toBe('prepared.vhostFds[0]');
      expect((await rejection(hotplugNet(qmp, { tapFds: [fake], vhostFds: [] }, { id: 'vh' }))).argument).toBe('prepared.tapFds[0]');
      const err = await rejection(hotplugVsock(qmp, { cid: 42, vhostFd: fake }, { id: 'vs', bus: 'rp2' }));
      expect(err.argument).toBe('prepared.vhostFd');
      expect(err.message).toContain('/dev/vhost-vsock');
      expect(fdsOf(vm.pid).size).toBe(before);
      expect(await qmp.execute('query-status')).toMatchObject({ status: 'prelaunch' }); // QEMU still alive
      // Unplugging a device that is not there is not an error (DeviceNotFound counts as released).
      await unplugVsock(qmp, 'vs', { timeoutMs: 1000 });
    } finally {
      fs.closeSync(fake);
    }
  });

  test('arguments are checked before QEMU sees anything', async () => {
    const { qmp } = await qemu(['-S']);
    const t = tap(2);
    const fds = { tapFds: t.queues.map((q) => q.fd), vhostFds: [] };
    expect((await rejection(hotplugNet(qmp, fds, { id: 'x', queuePairs: 1 }))).argument).toBe('options.queuePairs');
    expect((await rejection(hotplugNet(qmp, fds, { id: '1bad' }))).argument).toBe('options.id');
    expect((await rejection(hotplugNet(qmp, { tapFds: fds.tapFds, vhostFds: [5] }, { id: 'x' }))).argument).toBe('prepared.vhostFds');
    expect((await rejection(hotplugNet(qmp, { tapFds: [999_999], vhostFds: [] }, { id: 'x' }))).argument).toBe('prepared.tapFds[0]');
    expect((await rejection(hotplugNet(qmp, fds, { id: 'x', bus: 'a,b=c' }))).argument).toBe('options.bus');
    expect((await rejection(hotplugVsock(qmp, { cid: 2, vhostFd: 5 }, { id: 'v' }))).argument).toBe('prepared.cid');
  });

  test('20 plug/unplug cycles: QEMU\'s fd count and this process\'s come back to where they were', async () => {
    const { vm, qmp } = await qemu(['-S', ...NATIVE_HOTPLUG]);
    const qemuBefore = fdsOf(vm.pid).size;
    const ownBefore = openFdCount();
    const plugMs: number[] = [];
    const unplugMs: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t = Tap.create({ name: 'lvqmp%d', multiQueue: true, queues: 2, up: false });
      try {
        let t0 = performance.now();
        await hotplugNet(qmp, { tapFds: t.queues.map((q) => q.fd), vhostFds: [] }, { id: `c${i}`, queuePairs: 2, mtu: 9000, bus: 'rp1' });
        plugMs.push(performance.now() - t0);
        expect(countFds(vm.pid, TUN)).toBe(2);
        t0 = performance.now();
        await unplugNet(qmp, `c${i}`, { timeoutMs: 10_000 });
        unplugMs.push(performance.now() - t0);
      } finally {
        t.close();
      }
      expect(linkExists(t.name)).toBe(false);
    }
    expect(fdsOf(vm.pid).size).toBe(qemuBefore);
    expect(openFdCount()).toBe(ownBefore);
    expect(await qmp.execute('query-fdsets')).toEqual([]);
    const median = (a: number[]): number => [...a].sort((x, y) => x - y)[a.length >> 1];
    process.stderr.write(`[qmp-qemu] hotplugNet median ${median(plugMs).toFixed(1)} ms, unplugNet median ${median(unplugMs).toFixed(1)} ms (TCG, no guest, 20 cycles)\n`);
  });

  test('a guest that never answers device_del: unplugNet fails ETIMEDOUT naming the device, the netdev stays', async () => {
    const { vm, qmp } = await qemu(['-S']); // q35's default ACPI hotplug: the eject waits for a guest
    const t = tap(1);
    await hotplugNet(qmp, { tapFds: [t.queues[0].fd], vhostFds: [] }, { id: 'stuck', bus: 'rp1' });
    const err = await rejection(unplugNet(qmp, 'stuck', { timeoutMs: 1500 }));
    expect(err.code).toBe('ETIMEDOUT');
    expect(err.message).toContain("'stuck-dev'");
    expect(err.hint).toMatch(/guest/);
    expect(countFds(vm.pid, TUN)).toBe(1); // still QEMU's: the device still uses the netdev
    // Asking again while the unplug is pending waits again (QEMU says "already in the process of unplug").
    expect((await rejection(unplugNet(qmp, 'stuck', { timeoutMs: 500 }))).code).toBe('ETIMEDOUT');
  });

  test('QEMU killed with commands pending: each rejects ERR_VHOST_QMP_DISCONNECTED, close says ECONNRESET or EPIPE, nothing leaks', async () => {
    const { vm, qmp } = await qemu(['-S', ...NATIVE_HOTPLUG]);
    const sockets = (): number => fs.readdirSync('/proc/self/fd').filter((f) => { try { return fs.readlinkSync(`/proc/self/fd/${f}`).startsWith('socket:'); } catch { return false; } }).length;
    const ownBefore = sockets();
    const reason = new Promise<KernelError | null>((r) => qmp.once('close', r));
    const deleted = qmp.waitForEvent('DEVICE_DELETED', () => true, 30_000);
    const pending = Promise.allSettled([qmp.execute('query-status'), qmp.execute('query-pci'), qmp.execute('query-fdsets')]);
    const deletedErr = rejection(deleted);
    await vm.stop('SIGKILL');
    const results = await pending;
    expect(results.some((r) => r.status === 'rejected')).toBe(true);
    for (const r of results) {
      if (r.status === 'rejected') expect((r.reason as KernelError).code).toBe('ERR_VHOST_QMP_DISCONNECTED');
    }
    // Read first: the reset; written first: the broken pipe.
    expect(['ECONNRESET', 'EPIPE']).toContain((await reason)?.code);
    expect((await deletedErr).code).toBe('ERR_VHOST_QMP_DISCONNECTED');
    expect((await rejection(qmp.execute('query-status'))).code).toBe('ERR_VHOST_QMP_DISCONNECTED');
    expect(qmp.closed).toBe(true);
    // The monitor connection (closed by the client itself) and QEMU's stderr pipe (a socketpair).
    await waitFor('both sockets closed', () => sockets() === ownBefore - 2, 5000);
    qmp.close();
    expect(thrown(() => qmp.execute('query-status')).code).toBe('ERR_VHOST_CLOSED');
  });
});
