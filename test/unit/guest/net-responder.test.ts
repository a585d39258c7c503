// The guest's tiny IPv4 host: ARP replies, ICMP echo replies and UDP echo,
// checked field by field and with fast-check properties (checksums verify,
// replies mirror requests, frames not for us are ignored).
import fc from 'fast-check';
import { buildArpRequest, buildIcmpEcho, buildUdp, internetChecksum, NetResponder, parseIpv4 } from '../../../lib/guest/responder';
import { thrown } from '../../support/helpers';

const MAC = Uint8Array.from([0x02, 0, 0, 0, 0, 0x02]);
const IP = Uint8Array.from([10, 77, 0, 2]);
const HOST_MAC = Uint8Array.from([0x02, 0, 0, 0, 0, 0x01]);
const HOST_IP = Uint8Array.from([10, 77, 0, 1]);
const u16 = (b: Uint8Array, o: number) => (b[o] << 8) | b[o + 1];

const responder = () => new NetResponder({ mac: '02:00:00:00:00:02', ipv4: '10.77.0.2', udpEchoPort: 7 });
const bytes = (max: number) => fc.uint8Array({ minLength: 0, maxLength: max });
const ip4 = fc.uint8Array({ minLength: 4, maxLength: 4 });
const mac = fc.uint8Array({ minLength: 6, maxLength: 6 }).map((m) => ((m[0] &= 0xfe), m));

describe('internetChecksum', () => {
  test('the RFC 1071 example sums to 0xddf2 (checksum 0x220d)', () => {
    expect(internetChecksum(Uint8Array.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]))).toBe(0x220d);
  });

  test('data followed by its checksum verifies to zero (even lengths)', () => {
    fc.assert(
      fc.property(bytes(200).filter((b) => b.length % 2 === 0), (data) => {
        const c = internetChecksum(data);
        const all = new Uint8Array(data.length + 2);
        all.set(data);
        all[data.length] = c >> 8;
        all[data.length + 1] = c & 0xff;
        expect(internetChecksum(all)).toBe(0);
      }),
    );
  });
});

describe('NetResponder', () => {
  test('answers an ARP request for its address with a reply naming its MAC', () => {
    fc.assert(
      fc.property(mac, ip4, (srcMac, srcIp) => {
        const reply = responder().respond(buildArpRequest({ srcMac, srcIp, targetIp: IP }))!;
        expect(reply).not.toBeNull();
        expect(reply.length).toBe(60);
        expect(reply.subarray(0, 6)).toEqual(srcMac); // to the asker
        expect(reply.subarray(6, 12)).toEqual(MAC);
        expect(u16(reply, 12)).toBe(0x0806);
        expect(Array.from(reply.subarray(14, 22))).toEqual([0, 1, 8, 0, 6, 4, 0, 2]); // op 2 = reply
        expect(reply.subarray(22, 28)).toEqual(MAC); // sender hardware address
        expect(reply.subarray(28, 32)).toEqual(IP);
        expect(reply.subarray(32, 38)).toEqual(srcMac); // target = the asker
        expect(reply.subarray(38, 42)).toEqual(srcIp);
      }),
    );
  });

  test('ignores ARP for other addresses and ARP replies', () => {
    fc.assert(
      fc.property(mac, ip4, ip4.filter((t) => t.join('.') !== '10.77.0.2'), (srcMac, srcIp, targetIp) => {
        expect(responder().respond(buildArpRequest({ srcMac, srcIp, targetIp }))).toBeNull();
      }),
    );
    const req = buildArpRequest({ srcMac: HOST_MAC, srcIp: HOST_IP, targetIp: IP });
    req[21] = 2;
    expect(responder().respond(req)).toBeNull();
  });

  test('answers ICMP echo with the same id, sequence and payload and valid checksums', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }), bytes(1400), (id, seq, payload) => {
        const r = responder();
        const req = buildIcmpEcho({ srcMac: HOST_MAC, dstMac: MAC, srcIp: HOST_IP, dstIp: IP, id, seq, payload });
        const reply = r.respond(req)!;
        expect(reply).not.toBeNull();
        expect(reply.subarray(0, 6)).toEqual(HOST_MAC);
        expect(reply.subarray(6, 12)).toEqual(MAC);
        expect(internetChecksum(reply, 14, 34)).toBe(0); // IPv4 header
        expect(reply.subarray(26, 30)).toEqual(IP);
        expect(reply.subarray(30, 34)).toEqual(HOST_IP);
        const icmpLen = u16(reply, 16) - 20;
        expect(icmpLen).toBe(8 + payload.length);
        expect(reply[34]).toBe(0); // echo reply
        expect(internetChecksum(reply, 34, 34 + icmpLen)).toBe(0);
        expect([u16(reply, 38), u16(reply, 40)]).toEqual([id, seq]);
        expect(reply.subarray(42, 42 + payload.length)).toEqual(payload);
        expect(r.counts.icmp).toBe(1);
      }),
    );
  });

  test('echoes UDP on its port back to the sender’s port with a verifying checksum', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 0xffff }), bytes(1400), (srcPort, payload) => {
        const req = buildUdp({ srcMac: HOST_MAC, dstMac: MAC, srcIp: HOST_IP, dstIp: IP, srcPort, dstPort: 7, payload });
        const reply = responder().respond(req)!;
        expect(reply).not.toBeNull();
        const udpLen = u16(reply, 38);
        expect(udpLen).toBe(8 + payload.length);
        expect([u16(reply, 34), u16(reply, 36)]).toEqual([7, srcPort]);
        expect(reply.subarray(42, 42 + payload.length)).toEqual(payload);
        // checksum over the pseudo-header + UDP verifies to zero
        let pseudo = 0;
        for (let i = 26; i < 34; i += 2) pseudo += u16(reply, i);
        expect(internetChecksum(reply, 34, 34 + udpLen, pseudo + 17 + udpLen)).toBe(0);
      }),
    );
  });

  test('ignores other ports, other addresses, corrupted checksums and fragments', () => {
    const r = responder();
    const udp = (o: Partial<Parameters<typeof buildUdp>[0]> = {}) => buildUdp({ srcMac: HOST_MAC, dstMac: MAC, srcIp: HOST_IP, dstIp: IP, srcPort: 999, dstPort: 7, payload: Uint8Array.of(1, 2, 3), ...o });
    expect(r.respond(udp({ dstPort: 8 }))).toBeNull();
    expect(r.respond(udp({ dstIp: Uint8Array.of(10, 77, 0, 3) }))).toBeNull();
    const badIp = udp();
    badIp[24] ^= 0xff; // IPv4 header checksum
    expect(r.respond(badIp)).toBeNull();
    const badUdp = udp();
    badUdp[42] ^= 0xff; // payload under the UDP checksum
    expect(r.respond(badUdp)).toBeNull();
    const frag = buildIcmpEcho({ srcMac: HOST_MAC, dstMac: MAC, srcIp: HOST_IP, dstIp: IP, id: 1, seq: 1, payload: new Uint8Array(8) });
    frag[20] |= 0x20; // more fragments
    frag[24] = frag[25] = 0;
    const c = internetChecksum(frag, 14, 34);
    frag[24] = c >> 8;
    frag[25] = c & 0xff;
    expect(r.respond(frag)).toBeNull();
    expect(r.respond(new Uint8Array(10))).toBeNull();
    const none = new NetResponder({ mac: MAC, ipv4: '10.77.0.2', udpEchoPort: null });
    expect(none.respond(udp())).toBeNull();
  });

  test('never throws on arbitrary bytes', () => {
    fc.assert(fc.property(bytes(200), (junk) => void responder().respond(junk)));
  });

  test('respondInto() writes exactly what respond() returns, at any offsets, and nothing outside the reply', () => {
    const requests = fc.oneof(
      fc.record({ srcMac: mac, srcIp: ip4 }).map((o) => buildArpRequest({ ...o, targetIp: IP })),
      fc.record({ srcMac: mac, srcIp: ip4, id: fc.integer({ min: 0, max: 0xffff }), seq: fc.integer({ min: 0, max: 0xffff }), payload: bytes(1400) }).map((o) => buildIcmpEcho({ ...o, dstMac: MAC, dstIp: IP })),
      fc.record({ srcMac: mac, srcIp: ip4, srcPort: fc.integer({ min: 1, max: 0xffff }), payload: bytes(1400) }).map((o) => buildUdp({ ...o, dstMac: MAC, dstIp: IP, dstPort: 7 })),
      bytes(200), // mostly not for us: nothing written
    );
    fc.assert(
      fc.property(requests, fc.nat(40), fc.nat(40), fc.integer({ min: 0, max: 255 }), (req, inAt, outAt, fill) => {
        const expected = responder().respond(req);
        const frame = new Uint8Array(inAt + req.length + 7).fill(fill);
        frame.set(req, inAt);
        const out = new Uint8Array(outAt + Math.max(60, req.length) + 9).fill(fill ^ 0x55);
        const r = responder();
        const n = r.respondInto(frame, inAt, inAt + req.length, out, outAt);
        if (expected === null) {
          expect(n).toBe(0);
          expect(out.every((b) => b === (fill ^ 0x55))).toBe(true);
        } else {
          expect(n).toBe(expected.length);
          expect(out.subarray(outAt, outAt + n)).toEqual(expected);
          expect(out.subarray(0, outAt).every((b) => b === (fill ^ 0x55))).toBe(true);
          expect(out.subarray(outAt + n).every((b) => b === (fill ^ 0x55))).toBe(true);
          expect(r.counts.arp + r.counts.icmp + r.counts.udp).toBe(1);
        }
      }),
    );
  });

  test('validates its options with ERR_VHOST_* naming the option', () => {
    expect(thrown(() => new NetResponder({ mac: MAC, ipv4: '10.77.0' })).message).toMatch(/responder\.ipv4/);
    expect(thrown(() => new NetResponder({ mac: MAC, ipv4: '10.77.0.256' })).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => new NetResponder({ mac: 'zz', ipv4: '10.77.0.2' })).message).toMatch(/responder\.mac/);
    expect(thrown(() => new NetResponder({ mac: MAC, ipv4: '10.77.0.2', udpEchoPort: 70000 })).message).toMatch(/udpEchoPort/);
    expect(Array.from(parseIpv4('1.2.3.4'))).toEqual([1, 2, 3, 4]);
  });
});
