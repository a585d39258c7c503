// Networks for VMs with real traffic (root, inside the test VM): userspace
// virtio-net guests (VirtioNetGuest over vhost-net) on the links the library
// builds. Two guests on one bridge find and ping each other while a guest on
// another bridge stays unreachable; a veth end stands for a NIC dedicated to
// one guest by macvtap passthru; 9000-byte frames cross a 9000 bridge (and
// are dropped by a 1500 one); a 4-queue tap carries one guest per queue pair
// and shrinks to 2 pairs and grows back without losing a frame.
// Every link has a per-run prefix and is deleted after each test.
import { randomBytes } from 'node:crypto';
import { bridge, type Bridge } from '../../../lib/netdev/bridge';
import { features } from '../../../lib/core/features';
import { Rtnl, setActiveQueuePairs } from '../../../lib/netdev/links';
import { Macvtap } from '../../../lib/netdev/macvtap';
import { buildArpRequest, buildIcmpEcho, buildUdp, parseIpv4 } from '../../../lib/guest/responder';
import { NetNs } from '../../../lib/netdev/netns';
import { parseMac, Tap, tunFlags } from '../../../lib/netdev/tap';
import { VirtioNetGuest, type VirtioNetGuestOptions } from '../../../lib/guest/net';
import { virtioNetConfig, virtioNetConfigLayout } from '../../../lib/virtio/net-config';
import { closeAfterEach, describeKernel, sleep, thrown } from '../../support/helpers';
import { capture, FrameLog, inject, isIpv4, linkNamer, TEST_ETHERTYPE } from '../../support/net-helpers';

jest.setTimeout(120_000);

const prefix = `lvn${process.pid % 1000}`;
const fresh = linkNamer(prefix);
/** How long "never arrives" is watched; bridge forwarding takes well under this even under TCG. */
const QUIET_MS = 1500;

const ETHERTYPE_ARP = 0x0806;
const BROADCAST = new Uint8Array(6).fill(0xff);

/** An Ethernet frame of TEST_ETHERTYPE: `payload` random bytes after the header, a sequence number first. */
function testFrame(dst: Uint8Array, src: Uint8Array, payload: number, n: number): Buffer {
  const f = randomBytes(14 + payload);
  f.set(dst, 0);
  f.set(src, 6);
  f.writeUInt16BE(TEST_ETHERTYPE, 12);
  f.writeUInt32BE(n, 14);
  return f;
}

const isArpReply = (f: Buffer): boolean => f.length >= 42 && f.readUInt16BE(12) === ETHERTYPE_ARP && f.readUInt16BE(20) === 2;
const isEchoReply = (f: Buffer): boolean => isIpv4(f, 1) && f[34] === 0;
const srcMacIs = (f: Buffer, mac: Uint8Array): boolean => f.subarray(6, 12).equals(mac);

describeKernel('networks for VMs: traffic between userspace guests (real kernel)', ['/dev/net/tun', '/dev/vhost-net'], () => {
  let rtnl: Rtnl;
  const keep = closeAfterEach();

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

  interface Vm {
    tap: Tap;
    guest: VirtioNetGuest;
    mac: Uint8Array;
    ip: Uint8Array;
  }

  /** A guest with responder on `ip`, on a fresh tap attached to `br` (tap MAC = guest MAC with 0xFE first). */
  function vmOn(br: Bridge, ip: string, mac: string, opts: Partial<VirtioNetGuestOptions> = {}): Vm {
    const tap = keep(Tap.create({ name: fresh() }));
    br.attach(tap, { guestMac: mac });
    const guest = keep(VirtioNetGuest.create({ tap, queueSize: 64, mac, responder: { ipv4: ip }, ...opts }));
    return { tap, guest, mac: parseMac(mac), ip: parseIpv4(ip) };
  }

  /** `from` ARPs for `to`'s IP, then pings it at the MAC the ARP reply gave. */
  async function arpAndPing(from: Vm, to: Vm, id: number, payloadSize = 56): Promise<void> {
    const log = keep(new FrameLog(from.guest, (f) => isArpReply(f) || isEchoReply(f)));
    const answeredBefore = to.guest.stats.rxAnswered;
    expect(from.guest.send(buildArpRequest({ srcMac: from.mac, srcIp: from.ip, targetIp: to.ip }))).toBe(true);
    const [arp] = await log.waitFor(1);
    expect(isArpReply(arp)).toBe(true);
    expect(arp.subarray(0, 6)).toEqual(Buffer.from(from.mac)); // to us
    expect(arp.subarray(22, 28)).toEqual(Buffer.from(to.mac)); // sender hardware address
    expect(arp.subarray(28, 32)).toEqual(Buffer.from(to.ip)); // sender protocol address

    const learned = new Uint8Array(arp.subarray(22, 28));
    const payload = randomBytes(payloadSize);
    expect(from.guest.send(buildIcmpEcho({ srcMac: from.mac, dstMac: learned, srcIp: from.ip, dstIp: to.ip, id, seq: 1, payload }))).toBe(true);
    const frames = await log.waitFor(2);
    const reply = frames[1];
    expect(isEchoReply(reply)).toBe(true);
    expect(reply.subarray(6, 12)).toEqual(Buffer.from(to.mac));
    expect(reply.subarray(26, 30)).toEqual(Buffer.from(to.ip)); // IPv4 source
    expect(reply.subarray(30, 34)).toEqual(Buffer.from(from.ip)); // IPv4 destination
    expect(reply.readUInt16BE(16)).toBe(20 + 8 + payloadSize); // IPv4 total length
    expect([reply.readUInt16BE(38), reply.readUInt16BE(40)]).toEqual([id, 1]);
    expect(reply.subarray(42, 42 + payloadSize)).toEqual(payload);
    expect(to.guest.stats.rxAnswered - answeredBefore).toBe(2);
  }

  test('inter-VM: two guests on one bridge ARP and ping each other; a guest on another bridge reaches neither, nor is reached', async () => {
    const net = keep(bridge(fresh()));
    const other = keep(bridge(fresh()));
    const a = vmOn(net, '10.88.0.2', '52:54:00:88:00:02');
    const b = vmOn(net, '10.88.0.3', '52:54:00:88:00:03');
    const c = vmOn(other, '10.88.0.4', '52:54:00:88:00:04');
    expect(net.ports.sort()).toEqual([a.tap.name, b.tap.name].sort());
    expect(other.ports).toEqual([c.tap.name]);

    await arpAndPing(a, b, 0x0a0b);
    await arpAndPing(b, a, 0x0b0a);

    // C (same subnet, other bridge) asks for A and pings A and B by MAC: nothing crosses.
    const fromC = [a, b].map((vm) => keep(new FrameLog(vm.guest, (f) => srcMacIs(f, c.mac))));
    const atC = keep(new FrameLog(c.guest, (f) => srcMacIs(f, a.mac) || srcMacIs(f, b.mac)));
    const answered = [a.guest.stats.rxAnswered, b.guest.stats.rxAnswered];
    for (const target of [a, b]) {
      c.guest.send(buildArpRequest({ srcMac: c.mac, srcIp: c.ip, targetIp: target.ip }));
      c.guest.send(buildIcmpEcho({ srcMac: c.mac, dstMac: target.mac, srcIp: c.ip, dstIp: target.ip, id: 7, seq: 1, payload: randomBytes(32) }));
      c.guest.send(testFrame(BROADCAST, c.mac, 64, 1));
    }
    // Control in the same window: A's broadcast still reaches B (and is answered).
    const control = keep(new FrameLog(a.guest, (f) => isArpReply(f) && srcMacIs(f, b.mac)));
    a.guest.send(buildArpRequest({ srcMac: a.mac, srcIp: a.ip, targetIp: b.ip }));
    await control.waitFor(1);
    await sleep(QUIET_MS);
    expect(fromC.map((l) => l.frames.length)).toEqual([0, 0]);
    expect(atC.frames).toEqual([]);
    expect([a.guest.stats.rxAnswered, b.guest.stats.rxAnswered]).toEqual([answered[0], answered[1] + 1]);
    expect(c.guest.stats.rxAnswered).toBe(0);
    expect(c.guest.stats.txFrames).toBe(6);
  });

  describe('a NIC dedicated to one guest (macvtap passthru on a veth end)', () => {
    test('frames go from the vhost-net guest to the far end of the NIC and back, byte-exact; a second claim fails; release restores the MAC', async () => {
      const [nic, peer] = [fresh(), fresh()];
      keep({ close: () => rtnl.findLink(nic) && rtnl.deleteLink(nic) });
      rtnl.createVeth(nic, peer);
      rtnl.setUp(peer, true);
      rtnl.setUp(nic, true);
      const original = rtnl.getLink(nic).mac;
      const guestMac = parseMac('52:54:00:99:00:01');
      const mvt = keep(Macvtap.passthrough(nic, { name: fresh(), mac: guestMac }));
      const guest = keep(VirtioNetGuest.create({ tap: mvt, queueSize: 64, mac: guestMac }));
      expect(rtnl.getLink(nic).mac).toBe('52:54:00:99:00:01');
      const peerMac = parseMac(rtnl.getLink(peer).mac);

      // Guest → NIC → peer.
      const out = [60, 200, 1514].map((size, i) => testFrame(peerMac, guestMac, size - 14, i));
      const cap = await capture(peer, out.length);
      for (const f of out) expect(guest.send(f)).toBe(true);
      const captured = await cap.frames;
      expect(captured).toEqual(out);

      // Peer → NIC → guest.
      const log = keep(new FrameLog(guest, (f) => f.readUInt16BE(12) === TEST_ETHERTYPE));
      const back = [60, 700, 1514].map((size, i) => testFrame(guestMac, peerMac, size - 14, 100 + i));
      await inject(peer, back);
      expect(await log.waitFor(back.length)).toEqual(back);
      expect(guest.stats.rxFrames).toBeGreaterThanOrEqual(back.length);

      // The NIC belongs to this guest: a second passthru is refused.
      const second = fresh();
      expect(thrown(() => Macvtap.passthrough(nic, { name: second }))).toMatchObject({ code: 'EBUSY', path: nic });
      expect(rtnl.findLink(second)).toBeUndefined();

      guest.close();
      mvt.close();
      expect(rtnl.getLink(nic).mac).toBe(original);
      expect(rtnl.listLinks().filter((l) => l.kind === 'macvtap')).toEqual([]);
    });
  });

  describe('MTU', () => {
    test('9000 end to end across a 9000 bridge: a 9014-byte frame and a 9000-byte ping; the config space advises 9000, 9001 is refused', async () => {
      const net = keep(bridge(fresh(), { mtu: 9000 }));
      const a = vmOn(net, '10.88.1.2', '52:54:00:88:01:02', { mtu: 9000 });
      const b = vmOn(net, '10.88.1.3', '52:54:00:88:01:03', { mtu: 9000 });
      expect([rtnl.getLink(a.tap.name).mtu, rtnl.getLink(b.tap.name).mtu, net.mtu]).toEqual([9000, 9000, 9000]);

      const cfg = virtioNetConfig({ mac: b.mac, mtu: 9000, pathMtu: net.mtu });
      expect(cfg.features & features.net.MTU).toBe(features.net.MTU);
      expect(cfg.bytes[virtioNetConfigLayout.mtu] | (cfg.bytes[virtioNetConfigLayout.mtu + 1] << 8)).toBe(9000);
      expect(thrown(() => net.checkAdvisedMtu(9001))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
      expect(thrown(() => virtioNetConfig({ mtu: 9001, pathMtu: net.mtu }))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });

      // A jumbo frame (9000 bytes of Ethernet payload) crosses the bridge intact.
      const log = keep(new FrameLog(b.guest, (f) => f.readUInt16BE(12) === TEST_ETHERTYPE));
      const jumbo = testFrame(b.mac, a.mac, 9000, 1);
      expect(a.guest.send(jumbo)).toBe(true);
      const [got] = await log.waitFor(1);
      expect(got.length).toBe(9014);
      expect(got.equals(jumbo)).toBe(true);

      // A ping whose IPv4 packet is exactly the MTU, answered from the other side.
      await arpAndPing(a, b, 0x9000, 9000 - 28);
    });

    test('the same jumbo frame is dropped by a 1500 bridge, which refuses an advised MTU of 9000', async () => {
      const net = keep(bridge(fresh(), { mtu: 1500 }));
      const a = vmOn(net, '10.88.2.2', '52:54:00:88:02:02', { mtu: 9000 });
      const b = vmOn(net, '10.88.2.3', '52:54:00:88:02:03', { mtu: 9000 });
      expect(thrown(() => net.checkAdvisedMtu(9000))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
      expect(thrown(() => virtioNetConfig({ mtu: 9000, pathMtu: net.mtu }))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });

      const log = keep(new FrameLog(b.guest, (f) => f.readUInt16BE(12) === TEST_ETHERTYPE));
      expect(a.guest.send(testFrame(b.mac, a.mac, 9000, 1))).toBe(true);
      const fits = testFrame(b.mac, a.mac, 1500, 2);
      expect(a.guest.send(fits)).toBe(true);
      await log.waitFor(1);
      await sleep(QUIET_MS);
      // Only the 1514-byte frame arrived: the bridge drops what exceeds its port MTU.
      expect(log.frames.map((f) => f.length)).toEqual([1514]);
      expect(log.frames[0].equals(fits)).toBe(true);
    });
  });

  describe('multiqueue', () => {
    const FLOWS = 64;
    const MARK_PORT = 9999;
    const hostMac = parseMac('02:88:00:00:00:01');

    /** FLOWS UDP frames, one per flow (source address and port vary), tagged round:index. */
    function flows(round: number): Uint8Array[] {
      return Array.from({ length: FLOWS }, (_, k) => {
        const payload = Buffer.alloc(16);
        payload.writeUInt32BE(round, 0);
        payload.writeUInt32BE(k, 4);
        return buildUdp({
          srcMac: hostMac, dstMac: BROADCAST, srcIp: parseIpv4(`10.89.${round}.${k + 1}`), dstIp: parseIpv4('10.89.255.1'),
          srcPort: 10_000 + round * 1000 + k, dstPort: MARK_PORT, payload,
        });
      });
    }

    test('4 queue pairs, one guest each: TX from every queue, RX hashed onto every queue; shrink to 2 and grow back to 4 without loss', async () => {
      const tap = keep(Tap.create({ name: fresh(), multiQueue: true, queues: 4, up: true }));
      const guests = tap.queues.map((q) => keep(VirtioNetGuest.create({ tap: q, queueSize: 64 })));
      const logs = guests.map((g) => keep(new FrameLog(g, (f) => isIpv4(f, 17) && f.readUInt16BE(36) === MARK_PORT)));
      const detached = (): boolean[] => tap.queues.map((q) => (q.iff.flags & tunFlags.IFF_DETACH_QUEUE) !== 0);
      expect(detached()).toEqual([false, false, false, false]);

      /** Every guest sends one frame; the tap receives exactly those. */
      async function txFrom(active: number[]): Promise<void> {
        const cap = await capture(tap.name, active.length, 20);
        for (const i of active) expect(guests[i].send(testFrame(BROADCAST, parseMac(guests[i].mac), 50, i))).toBe(true);
        const got = await cap.frames;
        expect(got.map((f) => f.readUInt32BE(14)).sort()).toEqual(active);
      }

      /** Injects one round of flows; returns how many each guest got, after checking none was lost or doubled. */
      async function rxRound(round: number): Promise<number[]> {
        const before = logs.map((l) => l.frames.length);
        await inject(tap.name, flows(round));
        const count = (): number => logs.reduce((n, l, i) => n + l.frames.length - before[i], 0);
        const end = Date.now() + 30_000;
        while (count() < FLOWS && Date.now() < end) await sleep(10);
        await sleep(300); // anything doubled would show up now
        const got = logs.map((l, i) => l.frames.slice(before[i]));
        const seen = got.flat().filter((f) => f.readUInt32BE(42) === round).map((f) => f.readUInt32BE(46)).sort((x, y) => x - y);
        expect(seen).toEqual(Array.from({ length: FLOWS }, (_, k) => k));
        return got.map((f) => f.length);
      }

      await txFrom([0, 1, 2, 3]);
      const all = await rxRound(1);
      expect(all.every((n) => n > 0)).toBe(true);

      setActiveQueuePairs(tap, 2);
      expect(detached()).toEqual([false, false, true, true]);
      const two = await rxRound(2);
      expect(two[0] > 0 && two[1] > 0).toBe(true);
      expect(two.slice(2)).toEqual([0, 0]);
      await txFrom([0, 1]);

      setActiveQueuePairs(tap, 4);
      expect(detached()).toEqual([false, false, false, false]);
      const again = await rxRound(3);
      expect(again.every((n) => n > 0)).toBe(true);
      await txFrom([0, 1, 2, 3]);
      expect(guests.every((g) => !g.closed)).toBe(true);
    });
  });
});
