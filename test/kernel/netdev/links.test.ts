// rtnetlink links on the real kernel (root, inside the test VM): bridges, veth
// pairs, macvtaps in every mode and taps are created, read back through
// netlink and /sys/class/net, changed, moved between namespaces and deleted;
// every kernel error keeps its code and names the link. Only links and
// namespaces these tests create are touched, and none outlives the suite.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Rtnl, setActiveQueuePairs, type Link } from '../../../lib/netdev/links';
import { NetNs } from '../../../lib/netdev/netns';
import { linkFlags, Tap } from '../../../lib/netdev/tap';
import { describeKernel, disposeAfterEach, thrown } from '../../support/helpers';
import { inSysNet, linkNamer, sysNet, txQueues } from '../../support/net-helpers';

const root = path.resolve(__dirname, '../../..');
const prefix = `lvl${process.pid % 1000}`;
/** A link or namespace name unique to this run (≤ 15 bytes), recognisable by its prefix. */
const fresh = linkNamer(prefix);

describeKernel('rtnetlink links (real kernel)', ['/dev/net/tun'], () => {
  let rtnl: Rtnl;
  const keep = disposeAfterEach();

  beforeAll(() => {
    rtnl = Rtnl.open();
  });
  afterAll(() => {
    // Nothing this suite created remains: no link, no namespace.
    expect(rtnl.listLinks().map((l) => l.name).filter((n) => n.startsWith(prefix))).toEqual([]);
    expect(fs.readdirSync('/sys/class/net').filter((n) => n.startsWith(prefix))).toEqual([]);
    expect(NetNs.list().filter((n) => n.startsWith(prefix))).toEqual([]);
    rtnl.close();
  });

  describe('create, list, look up, delete', () => {
    test('a bridge: kind bridge in the dump and by name, /sys shows its bridge dir; delete removes it', () => {
      const name = fresh();
      const link = rtnl.createBridge(name);
      const info = rtnl.getLink(name);
      expect(info).toMatchObject({ name, kind: 'bridge' });
      expect(rtnl.getLink(info.index).name).toBe(name);
      expect(rtnl.listLinks().find((l) => l.name === name)).toEqual(info);
      expect(fs.existsSync(`/sys/class/net/${name}/bridge`)).toBe(true);
      expect(Number(sysNet(name, 'ifindex'))).toBe(info.index);
      link.delete();
      expect(inSysNet(name)).toBe(false);
      expect(rtnl.findLink(name)).toBeUndefined();
    });

    test('a veth pair: each end is kind veth with the other as its IFLA_LINK; deleting one end removes both', () => {
      const [a, b] = [fresh(), fresh()];
      const link = keep(rtnl.createVeth(a, b));
      const ia = rtnl.getLink(a);
      const ib = rtnl.getLink(b);
      expect([ia.kind, ib.kind]).toEqual(['veth', 'veth']);
      expect([ia.parent, ib.parent]).toEqual([ib.index, ia.index]);
      expect(Number(sysNet(a, 'iflink'))).toBe(ib.index);
      link.delete();
      expect([inSysNet(a), inSysNet(b)]).toEqual([false, false]);
    });

    test.each(['bridge', 'vepa', 'private', 'passthru'] as const)('a macvtap in %s mode on a veth end: mode read back, /dev/tapN exists', (mode) => {
      const [a, b, m] = [fresh(), fresh(), fresh()];
      keep(rtnl.createVeth(a, b));
      keep(rtnl.createMacvtap(m, a, mode));
      const info = rtnl.getLink(m);
      expect(info).toMatchObject({ kind: 'macvtap', macvlanMode: mode, parent: rtnl.getLink(a).index });
      expect(fs.existsSync(`/sys/class/net/${m}/macvtap/tap${info.index}`)).toBe(true);
      expect(fs.existsSync(`/dev/tap${info.index}`)).toBe(true);
    });

    test('a tap made by Tap.create is listed with kind tun', () => {
      const name = fresh();
      using tap = Tap.create({ name });
      expect(rtnl.getLink(tap.name)).toMatchObject({ name, kind: 'tun', index: tap.ifindex });
    });

    test('create options mtu and mac are applied at creation', () => {
      const [a, b] = [fresh(), fresh()];
      keep(rtnl.createVeth(a, b, { mtu: 4000, mac: '02:11:22:33:44:55' }));
      expect(rtnl.getLink(a)).toMatchObject({ mtu: 4000, mac: '02:11:22:33:44:55' });
      expect(rtnl.getLink(b).mtu).toBe(4000);
      expect(sysNet(a, 'address')).toBe('02:11:22:33:44:55');
    });
  });

  describe('set master, MTU, MAC, up', () => {
    test('each setting reads back through netlink and /sys/class/net', () => {
      const [br, a, b] = [fresh(), fresh(), fresh()];
      keep(rtnl.createBridge(br));
      keep(rtnl.createVeth(a, b));
      rtnl.setMtu(a, 2000);
      rtnl.setMac(a, '02:00:00:aa:bb:cc');
      rtnl.setUp(a, true);
      rtnl.setMaster(a, br);
      const info = rtnl.getLink(a);
      expect(info).toMatchObject({ mtu: 2000, mac: '02:00:00:aa:bb:cc', up: true, master: rtnl.getLink(br).index });
      expect(sysNet(a, 'mtu')).toBe('2000');
      expect(sysNet(a, 'address')).toBe('02:00:00:aa:bb:cc');
      expect(Number(sysNet(a, 'flags')) & linkFlags.IFF_UP).toBe(linkFlags.IFF_UP);
      expect(path.basename(fs.readlinkSync(`/sys/class/net/${a}/master`))).toBe(br);
      expect(fs.existsSync(`/sys/class/net/${br}/brif/${a}`)).toBe(true);

      rtnl.setMaster(a, null);
      rtnl.setUp(a, false);
      const after = rtnl.getLink(a);
      expect(after.master).toBeUndefined();
      expect(after.up).toBe(false);
      expect(fs.existsSync(`/sys/class/net/${a}/master`)).toBe(false);
    });
  });

  describe('errors keep the kernel code and name the link', () => {
    test('a duplicate name: EEXIST', () => {
      const name = fresh();
      keep(rtnl.createBridge(name));
      const err = thrown(() => rtnl.createBridge(name));
      expect(err).toMatchObject({ code: 'EEXIST', errno: -os.constants.errno.EEXIST, syscall: 'netlink(RTM_NEWLINK)', path: name });
      expect(err.message).toContain(`'${name}'`);
    });

    test('a missing link: ENODEV on set, delete and lookup', () => {
      const name = fresh();
      expect(thrown(() => rtnl.setMtu(name, 1500))).toMatchObject({ code: 'ENODEV', syscall: 'netlink(RTM_SETLINK)', path: name });
      expect(thrown(() => rtnl.deleteLink(name))).toMatchObject({ code: 'ENODEV', syscall: 'netlink(RTM_DELLINK)', path: name });
      expect(thrown(() => rtnl.getLink(name))).toMatchObject({ code: 'ENODEV', syscall: 'netlink(RTM_GETLINK)', path: name });
    });

    test('a port for a master that is not a bridge: EOPNOTSUPP (libuv names errno 95 ENOTSUP)', () => {
      const [a, b, c, d] = [fresh(), fresh(), fresh(), fresh()];
      keep(rtnl.createVeth(a, b));
      keep(rtnl.createVeth(c, d));
      const err = thrown(() => rtnl.setMaster(c, a));
      expect(err).toMatchObject({ errno: -os.constants.errno.EOPNOTSUPP, code: 'ENOTSUP', syscall: 'netlink(RTM_SETLINK)', path: c });
    });

    test('a bridge port cannot also carry a macvtap, nor a macvtap lower join a bridge: EBUSY', () => {
      const [br, a, b, m] = [fresh(), fresh(), fresh(), fresh()];
      keep(rtnl.createBridge(br));
      keep(rtnl.createVeth(a, b));
      rtnl.setMaster(a, br);
      expect(thrown(() => rtnl.createMacvtap(m, a, 'vepa'))).toMatchObject({ code: 'EBUSY', syscall: 'netlink(RTM_NEWLINK)', path: m });
      expect(rtnl.findLink(m)).toBeUndefined();
      keep(rtnl.createMacvtap(m, b, 'bridge'));
      expect(thrown(() => rtnl.setMaster(b, br))).toMatchObject({ code: 'EBUSY', syscall: 'netlink(RTM_SETLINK)', path: b });
    });

    test('without CAP_NET_ADMIN (setpriv in a child): EPERM naming the link', () => {
      const dist = path.join(root, 'dist', 'index.js');
      if (!fs.existsSync(dist)) throw new Error(`${dist} is missing: run npm run build:ts first`);
      const name = fresh();
      const script = `
        const { Rtnl } = require(process.argv[1]);
        const r = Rtnl.open();
        try { r.createBridge(process.argv[2]); console.log(JSON.stringify({ created: true })); }
        catch (e) { console.log(JSON.stringify({ code: e.code, syscall: e.syscall, path: e.path })); }`;
      const res = spawnSync('setpriv', ['--inh-caps=-net_admin', '--bounding-set=-net_admin', process.execPath, '-e', script, dist, name], { encoding: 'utf8', timeout: 60_000 });
      expect(res.status).toBe(0);
      expect(JSON.parse(res.stdout)).toEqual({ code: 'EPERM', syscall: 'netlink(RTM_NEWLINK)', path: name });
      expect(inSysNet(name)).toBe(false);
    });

    test('validation errors come before any syscall', () => {
      expect(thrown(() => rtnl.createBridge('a'.repeat(16)))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(thrown(() => rtnl.setMtu('lo', 67))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
      expect(thrown(() => rtnl.setMac('lo', '01:00:00:00:00:00'))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(thrown(() => rtnl.createMacvtap(fresh(), 'lo', 'loud' as never))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
    });
  });

  describe('network namespaces', () => {
    test('create: listed under /run/netns, a second create is EEXIST, dispose deletes it', () => {
      const name = fresh();
      {
        using ns = NetNs.create(name);
        expect(NetNs.list()).toContain(name);
        expect(thrown(() => NetNs.create(name))).toMatchObject({ code: 'EEXIST', path: `/run/netns/${name}` });
        // A fresh namespace holds only lo.
        using inside = ns.rtnl();
        expect(inside.listLinks().map((l) => l.name)).toEqual(['lo']);
        // It is a different namespace from ours.
        expect(fs.statSync(`/run/netns/${name}`).ino).not.toBe(fs.statSync('/proc/self/ns/net').ino);
      }
      expect(NetNs.list()).not.toContain(name);
      expect(fs.existsSync(`/run/netns/${name}`)).toBe(false);
    });

    test('iproute2 alongside: `ip netns add` after create, and dispose still deletes ours (/run/netns is a shared mount point, as ip makes it)', () => {
      const [mine, theirs] = [fresh(), fresh()];
      const ns = NetNs.create(mine);
      const mountinfo = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
      expect(mountinfo.find((l) => l.split(' ')[4] === '/run/netns')).toMatch(/ shared:\d+/);
      expect(spawnSync('ip', ['netns', 'add', theirs]).status).toBe(0);
      try {
        ns.close(); // EBUSY on unlink when ip's bind of /run/netns carried a copy of our mount
        expect(NetNs.list()).not.toContain(mine);
        expect(fs.existsSync(`/run/netns/${mine}`)).toBe(false);
      } finally {
        spawnSync('ip', ['netns', 'delete', theirs]);
      }
    });

    test('a veth end moved into a namespace is there and no longer here; deleting it there removes the pair', () => {
      const [nsName, a, b] = [fresh(), fresh(), fresh()];
      using ns = NetNs.create(nsName);
      using inside = ns.rtnl();
      const link = keep(rtnl.createVeth(a, b));
      rtnl.moveToNetns(b, ns);
      expect(rtnl.findLink(b)).toBeUndefined();
      expect(inSysNet(b)).toBe(false);
      expect(inside.getLink(b)).toMatchObject({ name: b, kind: 'veth' });
      expect(inside.listLinks().map((l) => l.name).sort()).toEqual([b, 'lo'].sort());
      inside.setUp(b, true);
      expect(inside.getLink(b).up).toBe(true);
      link.delete(); // deleting our end takes the peer in the namespace with it
      expect(inside.findLink(b)).toBeUndefined();
    });

    test('a veth peer can be created directly inside a namespace', () => {
      const [nsName, a, b] = [fresh(), fresh(), fresh()];
      using ns = NetNs.create(nsName);
      using inside = ns.rtnl();
      keep(rtnl.createVeth(a, b, { peerNetns: ns }));
      expect(rtnl.findLink(b)).toBeUndefined();
      expect(inside.getLink(b).kind).toBe('veth');
    });

    test('links created inside a namespace stay there; closing the NetNs deletes the namespace', () => {
      const [nsName, br] = [fresh(), fresh()];
      const ns = NetNs.create(nsName);
      const inside = ns.rtnl();
      inside.createBridge(br);
      expect(inside.getLink(br).kind).toBe('bridge');
      expect(rtnl.findLink(br)).toBeUndefined();
      inside.close();
      ns.close();
      expect(NetNs.list()).not.toContain(nsName);
    });
  });

  describe('disposal', () => {
    test('a thrown error inside a using block leaves no link behind', () => {
      const [br, a, b] = [fresh(), fresh(), fresh()];
      expect(() => {
        using bridgeLink: Link = rtnl.createBridge(br);
        using veth: Link = rtnl.createVeth(a, b);
        void bridgeLink;
        void veth;
        rtnl.setMaster(a, br);
        throw new Error('boom');
      }).toThrow('boom');
      expect([inSysNet(br), inSysNet(a), inSysNet(b)]).toEqual([false, false, false]);
    });

    test('delete is idempotent and quiet for a link the kernel already removed', () => {
      const [a, b] = [fresh(), fresh()];
      const ends = [rtnl.createVeth(a, b)];
      rtnl.deleteLink(b); // takes a with it
      expect(() => ends[0].delete()).not.toThrow();
      expect(() => ends[0].delete()).not.toThrow();
    });
  });

  describe('multiqueue', () => {
    test('setActiveQueuePairs detaches and re-attaches tap queues (TUNSETQUEUE): 4 → 2 → 4 in /sys', () => {
      using tap = Tap.create({ name: fresh(), multiQueue: true, queues: 4 });
      expect(txQueues(tap.name)).toBe(4);
      setActiveQueuePairs(tap, 2);
      expect(txQueues(tap.name)).toBe(2);
      setActiveQueuePairs(tap, 2); // already so: no error
      expect(txQueues(tap.name)).toBe(2);
      setActiveQueuePairs(tap, 4);
      expect(txQueues(tap.name)).toBe(4);
      expect(thrown(() => setActiveQueuePairs(tap, 5))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
    });
  });
});
