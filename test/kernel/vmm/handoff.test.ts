// fd handoff to a VMM on the real kernel: prepared devices without owner, a
// child that inherits exactly the named fds (of the right kinds) and takes
// ownership itself, auto-CID, adopting an inherited fd, and QEMU accepting
// the generated arguments.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { VhostNet } from '../../../lib/vhost/net';
import { VhostVsock } from '../../../lib/vhost/vsock';
import { prepareNetForVmm, prepareVsockForVmm, qemuArgs, spawnVmm } from '../../../lib/vmm/handoff';
import { describeKernel, thrown, closeAfterEach, fdFlags, O_CLOEXEC, waitFor } from '../../support/helpers';

const REPO = path.join(__dirname, '..', '..', '..');

/** Runs the child to completion and returns its stdout (stderr on failure). */
function collect(child: ReturnType<typeof spawn>): Promise<string> {
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`child exited ${code}: ${err}`))));
  });
}

// The shell's own fds as `ls -l` sees them (ls lists its parent shell's, not its own),
// and the tap fds' fdinfo 'iff:' line, which names the link each one is attached to.
// (The glob's own directory fd is listed but gone by the time grep reads it, hence -s.)
const LIST_FDS = 'ls -l /proc/$$/fd; grep -Hs ^iff: /proc/$$/fdinfo/*; true';

/** fd number → readlink target, and fd number → tap link, from LIST_FDS output. */
function parseFdList(out: string): { links: Map<number, string>; iff: Map<number, string> } {
  const links = new Map<number, string>();
  const iff = new Map<number, string>();
  for (const line of out.split('\n')) {
    const l = /\s(\d+) -> (.*)$/.exec(line);
    if (l) links.set(Number(l[1]), l[2]);
    const t = /fdinfo\/(\d+):iff:\s*(\S+)/.exec(line);
    if (t) iff.set(Number(t[1]), t[2]);
  }
  return { links, iff };
}

describeKernel('VMM fd handoff', ['/dev/vhost-net', '/dev/vhost-vsock', '/dev/net/tun'], () => {
  const track = closeAfterEach();

  test('prepareNetForVmm: a multi-queue tap and one vhost-net per pair, none owned', () => {
    const net = track(prepareNetForVmm({ tapName: 'hoff%d', queuePairs: 2, mtu: 9000, mac: '52:54:00:12:34:56' }));
    expect(net.tap.name).toMatch(/^hoff\d+$/);
    expect(net.tap.queues).toHaveLength(2);
    expect(net.tap.mtu).toBe(9000);
    expect(net.tap.queues[1].iff.flags & 0x0100).toBe(0x0100); // IFF_MULTI_QUEUE
    expect(net.vhost).toHaveLength(2);
    expect(net.features & (1n << 27n)).toBe(1n << 27n);
    expect(net.mac).toBe('52:54:00:12:34:56');
    for (const fd of [...net.tapFds, ...net.vhostFds]) expect(fdFlags(fd) & O_CLOEXEC).toBe(O_CLOEXEC);
    // No owner yet: taking ownership here works once (so prepare did not), then EBUSY.
    net.vhost[0].setOwner();
    const err = thrown(() => net.vhost[0].setOwner());
    expect({ code: err.code, syscall: err.syscall }).toEqual({ code: 'EBUSY', syscall: 'ioctl(VHOST_SET_OWNER)' });
  });

  test('a failed tap name leaves nothing open', () => {
    const before = fs.readdirSync('/proc/self/fd').length;
    const err = thrown(() => prepareNetForVmm({ tapName: 'bad name' }));
    expect(err.code).toBe('ERR_VHOST_INVALID_ARG');
    const busy = track(prepareNetForVmm({ tapName: 'hoffx' }));
    // The same name again with multi-queue flags the existing single-queue link refuses (EINVAL).
    const err2 = thrown(() => prepareNetForVmm({ tapName: busy.tap.name, queuePairs: 2 }));
    expect(err2.code).toBe('EINVAL');
    expect(fs.readdirSync('/proc/self/fd').length).toBe(before + 2); // only `busy`'s tap and vhost fds
  });

  test('prepareVsockForVmm: a fixed CID, auto CIDs walk past taken ones, EADDRINUSE for a taken one', () => {
    const fixed = track(prepareVsockForVmm({ cid: 3 }));
    expect(fixed.cid).toBe(3);
    const auto = track(prepareVsockForVmm({ cid: 'auto' }));
    expect(auto.cid).toBe(4);
    const err = thrown(() => prepareVsockForVmm({ cid: 4 }));
    expect({ code: err.code, syscall: err.syscall }).toEqual({ code: 'EADDRINUSE', syscall: 'ioctl(VHOST_VSOCK_SET_GUEST_CID)' });
    fixed.close();
    expect(track(prepareVsockForVmm({ cid: 'auto' })).cid).toBe(3);
    // The CID was set without an owner; the owner can still be taken once.
    auto.vhost.setOwner();
    expect(thrown(() => auto.vhost.setOwner()).code).toBe('EBUSY');
  });

  test('the child inherits exactly the named fds, of the right kinds, at the named numbers', async () => {
    const net = track(prepareNetForVmm({ tapName: 'hoffc%d', queuePairs: 2 }));
    const vsock = track(prepareVsockForVmm({ cid: 'auto' }));
    // Other fds of ours are open in this process too, and must not show up.
    const decoy = track(VhostNet.open());
    const h = qemuArgs({ net, vsock });
    expect(h.fds.map((f) => f.childFd)).toEqual([3, 4, 5, 6, 7]);
    const out = await collect(spawnVmm('sh', ['-c', LIST_FDS], h, { stdio: ['ignore', 'pipe', 'pipe'] }));
    const { links, iff } = parseFdList(out);
    expect([...links.keys()].sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect([3, 4, 5, 6, 7].map((fd) => links.get(fd))).toEqual(['/dev/net/tun', '/dev/net/tun', '/dev/vhost-net', '/dev/vhost-net', '/dev/vhost-vsock']);
    expect(Object.fromEntries(iff)).toEqual({ 3: net.tap.name, 4: net.tap.name });
    expect(fs.readdirSync('/proc/self/fd')).toContain(String(decoy.fd)); // open here, absent there
    expect(fs.readdirSync('/proc/self/fd').length).toBeGreaterThan(8);
  }, 60_000);

  test('the child takes ownership of the inherited vhost fds; ours then sees EBUSY', async () => {
    const net = track(prepareNetForVmm({ tapName: 'hoffo%d' }));
    const vsock = track(prepareVsockForVmm({ cid: 'auto' }));
    const h = qemuArgs({ net, vsock });
    // The child adopts fds 4 (vhost-net) and 5 (vhost-vsock) through the addon and calls
    // SET_OWNER on each twice: the first succeeds (nobody owned them), the second is EBUSY.
    const script = `
      const b = require('node-gyp-build')(${JSON.stringify(REPO)});
      const r = {};
      for (const [fd, p] of [[4, '/dev/vhost-net'], [5, '/dev/vhost-vsock']]) {
        const h = b.fdAdopt(fd, p);
        const flags = require('fs').readFileSync('/proc/self/fdinfo/' + fd, 'utf8');
        b.vhostSetOwner(h);
        let again; try { b.vhostSetOwner(h); again = 'ok'; } catch (e) { again = e.code; }
        r[p] = { first: 'ok', again, cloexec: (parseInt(/flags:\\s+(\\d+)/.exec(flags)[1], 8) & 0o2000000) !== 0 };
      }
      let bad; try { b.fdAdopt(900, 'nothing'); } catch (e) { bad = e.code + ' ' + e.syscall; }
      r.bad = bad;
      console.log(JSON.stringify(r));`;
    const out = await collect(spawnVmm(process.execPath, ['-e', script], h, { stdio: ['ignore', 'pipe', 'pipe'], cwd: REPO }));
    expect(JSON.parse(out)).toEqual({
      '/dev/vhost-net': { first: 'ok', again: 'EBUSY', cloexec: true },
      '/dev/vhost-vsock': { first: 'ok', again: 'EBUSY', cloexec: true },
      bad: 'EBADF fcntl(F_GETFD)',
    });
    // Same open file description: the child's owner holds after it exited.
    expect(thrown(() => net.vhost[0].setOwner()).code).toBe('EBUSY');
    expect(thrown(() => vsock.vhost.setOwner()).code).toBe('EBUSY');
  }, 60_000);

  test('fromFd adopts an fd opened elsewhere in this process; EBADF for a closed one', () => {
    const raw = fs.openSync('/dev/vhost-net', 'r+');
    const dev = track(VhostNet.fromFd(raw));
    expect(dev.fd).toBe(raw);
    expect(dev.path).toBe('/dev/vhost-net');
    expect(dev.getFeatures() & (1n << 27n)).toBe(1n << 27n);
    dev.setOwner();
    dev.close();
    expect(() => fs.fstatSync(raw)).toThrow(/EBADF/);
    const err = thrown(() => VhostVsock.fromFd(raw));
    expect({ code: err.code, syscall: err.syscall }).toEqual({ code: 'EBADF', syscall: 'fcntl(F_GETFD)' });
  });

  test('QEMU accepts the arguments and takes ownership of our fds', async () => {
    const qemu = spawnSync('sh', ['-c', 'command -v qemu-system-x86_64']).stdout.toString().trim();
    expect(qemu).not.toBe(''); // the test VM has QEMU (from the host root)
    const net = track(prepareNetForVmm({ tapName: 'hoffq%d', queuePairs: 2, mtu: 9000 }));
    const vsock = track(prepareVsockForVmm({ cid: 'auto' }));
    const h = qemuArgs({ net, vsock });
    expect(h.args[3]).toBe('virtio-net-pci,netdev=net0,id=net0-dev,mq=on,vectors=6,host_mtu=9000');
    const args = ['-S', '-M', 'q35', '-accel', 'tcg', '-m', '64', '-nodefaults', '-display', 'none', '-qmp', 'stdio', ...h.args];
    const child = spawnVmm(qemu, args, h, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let exited: number | null | undefined;
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => (exited = code));
    try {
      // Commands are answered from the main loop, after the devices were realized
      // (vhost_dev_init did SET_OWNER on each of our vhost fds).
      await waitFor('the QMP greeting', () => out.includes('"QMP"') || exited !== undefined, 60_000);
      child.stdin?.write('{"execute":"qmp_capabilities"}\n{"execute":"query-status"}\n');
      await waitFor('query-status', () => out.includes('"status"') || exited !== undefined, 60_000);
      expect({ exited, err }).toEqual({ exited: undefined, err: '' });
      expect(out).toContain('"prelaunch"');
      const codes = [...net.vhost, vsock.vhost].map((dev) => {
        try {
          dev.setOwner();
          return 'owned by nobody';
        } catch (e) {
          return (e as { code?: string }).code;
        }
      });
      expect(codes).toEqual(['EBUSY', 'EBUSY', 'EBUSY']);
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => (exited !== undefined ? r(null) : child.on('exit', r)));
    }
  }, 90_000);
});
