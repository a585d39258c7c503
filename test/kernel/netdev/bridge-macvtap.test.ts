// The typed network helpers on the real kernel (root, inside the test VM):
// bridge() with its own address kept through attach/detach (iproute2 as the
// judge), attach/detach (MTU before join, libvirt's 0xFE MAC rule, the
// advised-MTU check) and macvtap devices, including passthru that dedicates a
// NIC (a veth end stands in for it) to one VM with a vhost-net backend fd.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { bridge, bridgeMacFor } from '../../../lib/netdev/bridge';
import { EventFd } from '../../../lib/core/eventfd';
import { Rtnl } from '../../../lib/netdev/links';
import { Macvtap } from '../../../lib/netdev/macvtap';
import { GuestMemory } from '../../../lib/core/memory';
import { NetNs } from '../../../lib/netdev/netns';
import { Tap, tunFlags } from '../../../lib/netdev/tap';
import { VhostNet } from '../../../lib/vhost/net';
import { virtioNetConfig } from '../../../lib/virtio/net-config';
import { layoutSplitRing } from '../../../lib/virtio/vring';
import { describeKernel, disposeAfterEach, fdFlags, O_CLOEXEC, openFdCount, thrown } from '../../support/helpers';
import { inSysNet, linkNamer, sysNet } from '../../support/net-helpers';

const prefix = `lvb${process.pid % 1000}`;
const fresh = linkNamer(prefix);
/** The link's address as iproute2 reports it. */
const ipLinkAddress = (name: string): string => (JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'dev', name], { encoding: 'utf8' })) as { address: string }[])[0].address;
const masterOf = (name: string): string | undefined => {
  try {
    return path.basename(fs.readlinkSync(`/sys/class/net/${name}/master`));
  } catch {
    return undefined;
  }
};

describeKernel('bridge and macvtap helpers (real kernel)', ['/dev/net/tun', '/dev/vhost-net'], () => {
  let rtnl: Rtnl;
  const keep = disposeAfterEach();

  beforeAll(() => {
    rtnl = Rtnl.open();
  });
  afterAll(() => {
    const left = rtnl.listLinks();
    expect(left.map((l) => l.name).filter((n) => n.startsWith(prefix))).toEqual([]);
    expect(left.filter((l) => l.kind === 'macvtap').map((l) => l.name)).toEqual([]);
    expect(NetNs.list().filter((n) => n.startsWith(prefix))).toEqual([]);
    rtnl.close();
  });

  describe('bridge()', () => {
    test('creates an up bridge with the MTU asked for (netlink and /sys)', () => {
      const name = fresh();
      const br = keep(bridge(name, { mtu: 9000 }));
      expect(br.mtu).toBe(9000);
      expect(rtnl.getLink(name)).toMatchObject({ kind: 'bridge', mtu: 9000, up: true });
      expect(sysNet(name, 'mtu')).toBe('9000');
    });

    test('attach: the tap gets the bridge MTU and the guest MAC with 0xFE first, joins, comes up; the bridge keeps 9000', () => {
      const br = keep(bridge(fresh(), { mtu: 9000 }));
      const tap = keep(Tap.create({ name: fresh() }));
      expect(tap.mtu).toBe(1500);
      br.attach(tap, { guestMac: '52:54:00:12:34:56' });
      expect(tap.mtu).toBe(9000);
      expect(sysNet(tap.name, 'mtu')).toBe('9000');
      expect(tap.mac).toBe('fe:54:00:12:34:56');
      expect(tap.isUp).toBe(true);
      expect(masterOf(tap.name)).toBe(br.name);
      expect(br.ports).toEqual([tap.name]);
      expect(br.mtu).toBe(9000);
    });

    test('a bridge with a real-MAC port keeps its own address too (not the lowest port address)', () => {
      const br = keep(bridge(fresh()));
      const [a, b] = [fresh(), fresh()];
      keep(rtnl.createVeth(a, b, { mac: '02:00:00:00:00:01' }));
      br.attach(a);
      const tap = keep(Tap.create({ name: fresh() }));
      br.attach(tap, { guestMac: '00:16:3e:00:00:01' });
      expect(tap.mac).toBe('fe:16:3e:00:00:01');
      expect(ipLinkAddress(br.name)).toBe(bridgeMacFor(br.name));
      expect(br.mac).toBe(bridgeMacFor(br.name));
    });

    test('the kernel alone: a bridge made without an address takes a tap port\'s and changes as taps come and go (ip -j link)', () => {
      // What bridge() avoids: `ip link add type bridge` leaves the address to the
      // kernel, which gives the bridge the lowest address among its ports.
      const name = fresh();
      execFileSync('ip', ['link', 'add', name, 'type', 'bridge']);
      try {
        const [t1, t2] = [keep(Tap.create({ name: fresh(), mac: 'fe:00:00:00:00:01' })), keep(Tap.create({ name: fresh(), mac: 'fe:00:00:00:00:02' }))];
        const own = ipLinkAddress(name);
        execFileSync('ip', ['link', 'set', t2.name, 'master', name]);
        expect(ipLinkAddress(name)).toBe('fe:00:00:00:00:02');
        execFileSync('ip', ['link', 'set', t1.name, 'master', name]);
        expect(ipLinkAddress(name)).toBe('fe:00:00:00:00:01');
        execFileSync('ip', ['link', 'set', t1.name, 'nomaster']);
        expect(ipLinkAddress(name)).toBe('fe:00:00:00:00:02');
        expect(own).not.toBe('fe:00:00:00:00:02');
        expect(sysNet(name, 'addr_assign_type')).not.toBe('3');
      } finally {
        execFileSync('ip', ['link', 'del', name]);
      }
    });

    test('bridge(): its own locally administered address, set at creation and kept through every attach and detach (ip -j link)', () => {
      const br = keep(bridge(fresh()));
      const mac = bridgeMacFor(br.name);
      const first = parseInt(mac.slice(0, 2), 16);
      expect(first & 0x03).toBe(0x02); // unicast, locally administered
      expect(sysNet(br.name, 'addr_assign_type')).toBe('3'); // NET_ADDR_SET: the kernel keeps it
      const seen = [ipLinkAddress(br.name)];
      const [t1, t2] = [keep(Tap.create({ name: fresh() })), keep(Tap.create({ name: fresh() }))];
      br.attach(t1, { guestMac: '00:00:00:00:00:02' }); // tap fe:00:00:00:00:02, below most addresses
      seen.push(ipLinkAddress(br.name));
      br.attach(t2, { guestMac: '00:00:00:00:00:01' });
      seen.push(ipLinkAddress(br.name));
      br.detach(t2);
      seen.push(ipLinkAddress(br.name));
      br.detach(t1);
      seen.push(ipLinkAddress(br.name));
      br.attach(t2);
      seen.push(ipLinkAddress(br.name));
      expect(seen).toEqual(Array(seen.length).fill(mac));
      expect(br.mac).toBe(mac);
    });

    test('the same name gets the same address when the bridge is made again; another name another; `mac` chooses one', () => {
      const name = fresh();
      const first = bridge(name);
      const mac = ipLinkAddress(name);
      first.close();
      const again = keep(bridge(name));
      expect(ipLinkAddress(name)).toBe(mac);
      const other = keep(bridge(fresh()));
      expect(ipLinkAddress(other.name)).not.toBe(mac);
      const chosen = keep(bridge(fresh(), { mac: '02:11:22:33:44:55' }));
      const tap = keep(Tap.create({ name: fresh() }));
      chosen.attach(tap, { guestMac: '00:00:00:00:00:01' });
      expect(ipLinkAddress(chosen.name)).toBe('02:11:22:33:44:55');
      expect(again.mac).toBe(mac);
    });

    test('a bad `mac` option is refused before anything is created', () => {
      const name = fresh();
      expect(thrown(() => bridge(name, { mac: '01:00:00:00:00:01' }))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(inSysNet(name)).toBe(false);
    });

    test('the tap MTU and MAC are set before it joins the bridge (call order), then it comes up', () => {
      const br = keep(bridge(fresh(), { mtu: 9000 }));
      const tap = keep(Tap.create({ name: fresh() }));
      const spies = (['setMtu', 'setMac', 'setMaster', 'setUp'] as const).map((m) => jest.spyOn(Rtnl.prototype, m));
      try {
        br.attach(tap, { guestMac: '52:54:00:00:00:07' });
        const order = spies.map((s) => s.mock.invocationCallOrder[0]);
        expect([...order].sort((x, y) => x - y)).toEqual(order);
        expect(spies[0].mock.calls[0]).toEqual([tap.name, 9000]);
      } finally {
        for (const s of spies) s.mockRestore();
      }
      expect([tap.mtu, br.mtu]).toEqual([9000, 9000]);
    });

    test('detach releases the tap; the bridge then has no ports; dispose deletes the bridge but not the tap', () => {
      const name = fresh();
      const br = bridge(name);
      const tap = keep(Tap.create({ name: fresh() }));
      br.attach(tap);
      br.detach(tap);
      expect(masterOf(tap.name)).toBeUndefined();
      expect(br.ports).toEqual([]);
      br.attach(tap);
      br.close();
      expect(inSysNet(name)).toBe(false);
      expect(inSysNet(tap.name)).toBe(true);
      expect(masterOf(tap.name)).toBeUndefined();
      expect(thrown(() => br.mtu)).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
    });

    test('an advised MTU above the bridge MTU is refused; equal passes and reaches the config space', () => {
      const br = keep(bridge(fresh(), { mtu: 1500 }));
      expect(thrown(() => br.checkAdvisedMtu(9000))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
      expect(thrown(() => virtioNetConfig({ mtu: 9000, pathMtu: br.mtu }))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
      expect(() => br.checkAdvisedMtu(1500)).not.toThrow();
      const cfg = virtioNetConfig({ mtu: 1500, pathMtu: br.mtu });
      expect(cfg.bytes[10] | (cfg.bytes[11] << 8)).toBe(1500);
    });

    test('a name already taken: EEXIST naming it, and nothing is left open or created', () => {
      const name = fresh();
      keep(bridge(name));
      const before = openFdCount();
      expect(thrown(() => bridge(name))).toMatchObject({ code: 'EEXIST', syscall: 'netlink(RTM_NEWLINK)', path: name });
      expect(openFdCount()).toBe(before);
    });

    test('attach of a missing tap: ENODEV naming it', () => {
      const br = keep(bridge(fresh()));
      const name = fresh();
      expect(thrown(() => br.attach(name))).toMatchObject({ code: 'ENODEV', path: name });
    });
  });

  describe('Macvtap', () => {
    /** A veth pair whose first end stands for a hardware NIC. */
    function nic(): { name: string; peer: string } {
      const [name, peer] = [fresh(), fresh()];
      keep(rtnl.createVeth(name, peer));
      rtnl.setUp(peer, true);
      rtnl.setUp(name, true);
      return { name, peer };
    }

    test.each(['bridge', 'vepa', 'private', 'passthru'] as const)('%s mode: /dev/tapN opens O_CLOEXEC with the vnet header (12 bytes)', (mode) => {
      const { name } = nic();
      const mvt = keep(Macvtap.create(name, mode, { name: fresh() }));
      expect(mvt.devicePath).toBe(`/dev/tap${mvt.ifindex}`);
      expect(fs.readlinkSync(`/proc/self/fd/${mvt.fd}`)).toBe(mvt.devicePath);
      expect(fdFlags(mvt.fd) & O_CLOEXEC).toBe(O_CLOEXEC);
      expect(mvt.iff.flags & (tunFlags.IFF_TAP | tunFlags.IFF_NO_PI | tunFlags.IFF_VNET_HDR)).toBe(tunFlags.IFF_TAP | tunFlags.IFF_NO_PI | tunFlags.IFF_VNET_HDR);
      expect(mvt.vnetHdrSize).toBe(12);
      expect(mvt.info).toMatchObject({ kind: 'macvtap', macvlanMode: mode, up: true, parent: rtnl.getLink(name).index });
    });

    test('passthrough without a name: the kernel picks macvtapN and it is found; dispose deletes it and closes the fd', () => {
      const { name } = nic();
      const mvt = Macvtap.passthrough(name);
      expect(mvt.name).toMatch(/^macvtap\d+$/);
      expect(mvt.mode).toBe('passthru');
      expect(rtnl.getLink(mvt.name).macvlanMode).toBe('passthru');
      const open = (): string[] => fs.readdirSync('/proc/self/fd').map((f) => { try { return fs.readlinkSync(`/proc/self/fd/${f}`); } catch { return ''; } });
      expect(open()).toContain(mvt.devicePath);
      mvt.close();
      expect(mvt.closed).toBe(true);
      expect(open()).not.toContain(mvt.devicePath);
      expect(thrown(() => mvt.fd)).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
      expect(inSysNet(mvt.name)).toBe(false);
      expect(() => mvt.close()).not.toThrow();
    });

    test('passthru fd is a vhost-net backend like a tap (memory table and ring set first)', () => {
      const { name } = nic();
      const mvt = keep(Macvtap.passthrough(name, { name: fresh() }));
      const net = keep(VhostNet.open());
      const mem = keep(GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] }));
      const kick = keep(EventFd.create());
      const call = keep(EventFd.create());
      net.setOwner();
      net.setMemTable(mem);
      const ring = layoutSplitRing(256, 0n);
      net.setVringNum(0, 256);
      net.setVringBase(0, 0);
      net.setVringAddr(0, { desc: mem.translate(ring.desc), avail: mem.translate(ring.avail), used: mem.translate(ring.used) });
      net.setVringKick(0, kick);
      net.setVringCall(0, call);
      expect(() => net.setBackend(0, mvt)).not.toThrow();
      expect(() => net.setBackend(0, null)).not.toThrow();
    });

    test('a second passthru on the same NIC fails with EBUSY naming the NIC and the holder; nothing is left behind', () => {
      const { name } = nic();
      const first = keep(Macvtap.passthrough(name, { name: fresh() }));
      const second = fresh();
      const err = thrown(() => Macvtap.passthrough(name, { name: second }));
      expect(err).toMatchObject({ code: 'EBUSY', path: name, syscall: 'netlink(RTM_NEWLINK)' });
      expect(err.message).toContain(`'${first.name}'`);
      expect(inSysNet(second)).toBe(false);
      // The first claim is untouched.
      expect(first.info.macvlanMode).toBe('passthru');
    });

    test('passthru next to another macvtap on the NIC fails with EBUSY saying the NIC is shared', () => {
      const { name } = nic();
      keep(Macvtap.create(name, 'bridge', { name: fresh() }));
      const err = thrown(() => Macvtap.passthrough(name, { name: fresh() }));
      expect(err).toMatchObject({ code: 'EBUSY', path: name });
      expect(err.message).toContain('passthru needs the NIC to itself');
    });

    test("the guest MAC becomes the NIC's while dedicated; release restores the original MAC", () => {
      const { name } = nic();
      const original = rtnl.getLink(name).mac;
      const mvt = Macvtap.passthrough(name, { name: fresh(), mac: '52:54:00:ab:cd:ef' });
      expect(rtnl.getLink(name).mac).toBe('52:54:00:ab:cd:ef');
      expect(sysNet(name, 'address')).toBe('52:54:00:ab:cd:ef');
      mvt.close();
      expect(rtnl.getLink(name).mac).toBe(original);
      expect(sysNet(name, 'address')).toBe(original);
    });

    test('a missing NIC: ENODEV naming it, and no macvtap is created', () => {
      const name = fresh();
      const before = rtnl.listLinks().length;
      expect(thrown(() => Macvtap.passthrough(name))).toMatchObject({ code: 'ENODEV', path: name });
      expect(rtnl.listLinks().length).toBe(before);
    });

    test('validation comes first', () => {
      expect(thrown(() => Macvtap.create('lo', 'loud' as never))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(thrown(() => Macvtap.passthrough('lo', { mac: '01:02:03:04:05:06' }))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      expect(thrown(() => Macvtap.passthrough('lo', { openTimeoutMs: -1 }))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
    });
  });
});
