// A tiny IPv4 host for the userspace guest: answers ARP requests and ICMP
// echo for one address, and echoes UDP datagrams on one port, so the host's
// own `ping` and a UDP client can talk to a VirtioNetGuest. Pure functions over
// Ethernet frames (no VLAN tags, no IP options beyond skipping them, no fragments).
import { invalidArg } from '../core/errors';
import { describe, plain } from '../core/check';
import { parseMac } from '../netdev/tap';

/** Ethernet type of IPv4 frames. */
export const ETHERTYPE_IPV4 = 0x0800;
/** Ethernet type of ARP frames. */
export const ETHERTYPE_ARP = 0x0806;
/** IPv4 protocol number of ICMP. */
export const IPPROTO_ICMP = 1;
/** IPv4 protocol number of UDP. */
export const IPPROTO_UDP = 17;
const ETH_HLEN = 14;

/** Options of NetResponder (VirtioNetGuestOptions.responder): the guest's addresses and what it answers. */
export interface NetResponderOptions {
  /** The guest's MAC ('02:..' or 6 bytes). */
  mac: string | Uint8Array;
  /** The guest's IPv4 address, dotted quad. */
  ipv4: string;
  /** UDP port to echo on (0..65535); null for none. Default 7 (echo). */
  udpEchoPort?: number | null;
}

/** Parses a dotted-quad IPv4 address into 4 bytes; throws ERR_VHOST_INVALID_ARG naming `arg`. */
export function parseIpv4(ip: unknown, arg = 'ipv4'): Uint8Array {
  if (typeof ip !== 'string') throw invalidArg(arg, 'must be a dotted-quad string');
  const parts = ip.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) throw invalidArg(arg, `must be a dotted-quad IPv4 address, got ${describe(ip)}`);
  return Uint8Array.from(parts.map(Number));
}

/** RFC 1071 checksum of bytes [start, end), folded, complemented; `initial` adds a pseudo-header sum. */
export function internetChecksum(data: Uint8Array, start = 0, end = data.length, initial = 0): number {
  let sum = initial;
  let i = start;
  for (; i + 1 < end; i += 2) sum += (data[i] << 8) | data[i + 1];
  if (i < end) sum += data[i] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

const u16 = (b: Uint8Array, o: number): number => (b[o] << 8) | b[o + 1];
const put16 = (b: Uint8Array, o: number, v: number): void => {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
};
const equal = (a: Uint8Array, ao: number, b: Uint8Array, bo: number, n: number): boolean => {
  for (let i = 0; i < n; i++) if (a[ao + i] !== b[bo + i]) return false;
  return true;
};

/** Sum of the UDP/TCP pseudo-header (src, dst, protocol, length), unfolded. */
function pseudoHeaderSum(ip: Uint8Array, ipOff: number, proto: number, len: number): number {
  let sum = 0;
  for (let i = 12; i < 20; i += 2) sum += u16(ip, ipOff + i);
  return sum + proto + len;
}

/** Copies n bytes without creating views (src and dst do not overlap). */
const copy = (dst: Uint8Array, dOff: number, src: Uint8Array, sOff: number, n: number): void => {
  for (let i = 0; i < n; i++) dst[dOff + i] = src[sOff + i];
};

/** Fills a 20-byte IPv4 header at `o` (no options, DF, TTL 64): src from this.ipv4-like `src`, dst read at dst[dOff..dOff+4). */
function writeIpv4HeaderAt(b: Uint8Array, o: number, proto: number, src: Uint8Array, dst: Uint8Array, dOff: number, payloadLen: number): void {
  b[o] = 0x45;
  b[o + 1] = 0;
  put16(b, o + 2, 20 + payloadLen);
  put16(b, o + 4, 0);
  put16(b, o + 6, 0x4000);
  b[o + 8] = 64;
  b[o + 9] = proto;
  put16(b, o + 10, 0);
  copy(b, o + 12, src, 0, 4);
  copy(b, o + 16, dst, dOff, 4);
  put16(b, o + 10, internetChecksum(b, o, o + 20));
}

/** Fills a 20-byte IPv4 header at `o` (no options, DF, TTL 64) with its checksum. */
function writeIpv4Header(b: Uint8Array, o: number, proto: number, src: Uint8Array, dst: Uint8Array, payloadLen: number, id = 0): void {
  b[o] = 0x45;
  b[o + 1] = 0;
  put16(b, o + 2, 20 + payloadLen);
  put16(b, o + 4, id);
  put16(b, o + 6, 0x4000);
  b[o + 8] = 64;
  b[o + 9] = proto;
  put16(b, o + 10, 0);
  b.set(src, o + 12);
  b.set(dst, o + 16);
  put16(b, o + 10, internetChecksum(b, o, o + 20));
}

function ethHeader(b: Uint8Array, dst: Uint8Array, src: Uint8Array, type: number): void {
  b.set(dst, 0);
  b.set(src, 6);
  put16(b, 12, type);
}

/** Pads a frame to the 60-byte Ethernet minimum (without FCS). */
function padded(len: number): Uint8Array {
  return new Uint8Array(Math.max(60, len));
}

/** An ARP request "who has targetIp? tell srcIp" (broadcast). */
export function buildArpRequest(o: { srcMac: Uint8Array; srcIp: Uint8Array; targetIp: Uint8Array }): Uint8Array {
  const f = padded(ETH_HLEN + 28);
  ethHeader(f, new Uint8Array(6).fill(0xff), o.srcMac, ETHERTYPE_ARP);
  f.set([0, 1, 0x08, 0x00, 6, 4, 0, 1], ETH_HLEN); // Ethernet/IPv4, request
  f.set(o.srcMac, ETH_HLEN + 8);
  f.set(o.srcIp, ETH_HLEN + 14);
  f.set(o.targetIp, ETH_HLEN + 24);
  return f;
}

/** An ICMP echo request (or reply with type 0) in an IPv4 packet. */
export function buildIcmpEcho(o: { srcMac: Uint8Array; dstMac: Uint8Array; srcIp: Uint8Array; dstIp: Uint8Array; id: number; seq: number; payload: Uint8Array; type?: 0 | 8 }): Uint8Array {
  const icmpLen = 8 + o.payload.length;
  const f = padded(ETH_HLEN + 20 + icmpLen);
  ethHeader(f, o.dstMac, o.srcMac, ETHERTYPE_IPV4);
  writeIpv4Header(f, ETH_HLEN, IPPROTO_ICMP, o.srcIp, o.dstIp, icmpLen);
  const i = ETH_HLEN + 20;
  f[i] = o.type ?? 8;
  f[i + 1] = 0;
  put16(f, i + 4, o.id);
  put16(f, i + 6, o.seq);
  f.set(o.payload, i + 8);
  put16(f, i + 2, internetChecksum(f, i, i + icmpLen));
  return f;
}

/** A UDP datagram in an IPv4 packet, with its checksum. */
export function buildUdp(o: { srcMac: Uint8Array; dstMac: Uint8Array; srcIp: Uint8Array; dstIp: Uint8Array; srcPort: number; dstPort: number; payload: Uint8Array }): Uint8Array {
  const udpLen = 8 + o.payload.length;
  const f = padded(ETH_HLEN + 20 + udpLen);
  ethHeader(f, o.dstMac, o.srcMac, ETHERTYPE_IPV4);
  writeIpv4Header(f, ETH_HLEN, IPPROTO_UDP, o.srcIp, o.dstIp, udpLen);
  const u = ETH_HLEN + 20;
  put16(f, u, o.srcPort);
  put16(f, u + 2, o.dstPort);
  put16(f, u + 4, udpLen);
  f.set(o.payload, u + 8);
  const c = internetChecksum(f, u, u + udpLen, pseudoHeaderSum(f, ETH_HLEN, IPPROTO_UDP, udpLen));
  put16(f, u + 6, c === 0 ? 0xffff : c);
  return f;
}

/** What the responder did with a frame. */
export type ResponderAction = 'arp' | 'icmp' | 'udp';

/**
 * Answers ARP requests and ICMP echo requests for one IPv4 address and MAC,
 * and echoes UDP datagrams sent to `udpEchoPort`. respond() returns the
 * reply frame, or null when the frame is not for it; respondInto() writes the
 * reply into a buffer the caller owns (e.g. a TX ring slot) and creates no
 * object at all, so a datapath can answer without allocating per frame.
 */
export class NetResponder {
  readonly mac: Uint8Array;
  readonly ipv4: Uint8Array;
  readonly udpEchoPort: number | null;
  /** Replies sent, by kind. */
  readonly counts: Record<ResponderAction, number> = { arp: 0, icmp: 0, udp: 0 };

  constructor(options: NetResponderOptions) {
    if (options === null || typeof options !== 'object') throw invalidArg('responder', 'must be an object { mac, ipv4, udpEchoPort }');
    this.mac = parseMac(options.mac, 'responder.mac');
    this.ipv4 = parseIpv4(options.ipv4, 'responder.ipv4');
    const port = options.udpEchoPort === undefined ? 7 : options.udpEchoPort;
    if (port !== null && (!Number.isInteger(port) || port < 0 || port > 65535)) throw invalidArg('responder.udpEchoPort', `must be a port 0..65535 or null, got ${plain(port)}`);
    this.udpEchoPort = port;
  }

  /** The reply to `frame`, or null if it is not an ARP request, ICMP echo or UDP echo for us. */
  respond(frame: Uint8Array): Uint8Array | null {
    // A reply is never longer than the request (or the 60-byte minimum).
    const out = new Uint8Array(Math.max(60, frame.length));
    const n = this.respondInto(frame, 0, frame.length, out, 0);
    return n === 0 ? null : out.slice(0, n);
  }

  /**
   * The reply to the frame in frame[start, end), written at out[outStart..];
   * returns its length (0: not for us, nothing counted). The reply is at most
   * max(60, end - start) bytes; `out` must hold that from outStart and must
   * not overlap the frame. Counts the reply in `counts`. No allocation.
   */
  respondInto(frame: Uint8Array, start: number, end: number, out: Uint8Array, outStart: number): number {
    const len = end - start;
    if (len < ETH_HLEN) return 0;
    const type = u16(frame, start + 12);
    if (type === ETHERTYPE_ARP) return this.#arp(frame, start, len, out, outStart);
    if (type !== ETHERTYPE_IPV4) return 0;
    // Addressed to our MAC or broadcast only.
    if (!equal(frame, start, this.mac, 0, 6) && !(frame[start] & 1)) return 0;
    return this.#ipv4(frame, start, len, out, outStart);
  }

  #arp(f: Uint8Array, s: number, len: number, r: Uint8Array, o: number): number {
    const a = s + ETH_HLEN;
    if (len < ETH_HLEN + 28) return 0;
    // htype 1, ptype IPv4, hlen 6, plen 4, op 1 (request), target = our address
    if (u16(f, a) !== 1 || u16(f, a + 2) !== ETHERTYPE_IPV4 || f[a + 4] !== 6 || f[a + 5] !== 4 || u16(f, a + 6) !== 1) return 0;
    if (!equal(f, a + 24, this.ipv4, 0, 4)) return 0;
    r.fill(0, o, o + 60);
    const ra = o + ETH_HLEN;
    copy(r, o, f, a + 8, 6); // to the sender's MAC
    copy(r, o + 6, this.mac, 0, 6);
    put16(r, o + 12, ETHERTYPE_ARP);
    put16(r, ra, 1); // Ethernet
    put16(r, ra + 2, ETHERTYPE_IPV4);
    r[ra + 4] = 6;
    r[ra + 5] = 4;
    put16(r, ra + 6, 2); // reply
    copy(r, ra + 8, this.mac, 0, 6);
    copy(r, ra + 14, this.ipv4, 0, 4);
    copy(r, ra + 18, f, a + 8, 6);
    copy(r, ra + 24, f, a + 14, 4);
    this.counts.arp++;
    return 60;
  }

  #ipv4(f: Uint8Array, s: number, len: number, r: Uint8Array, o: number): number {
    const ip = s + ETH_HLEN;
    if (len < ETH_HLEN + 20 || f[ip] >> 4 !== 4) return 0;
    const ihl = (f[ip] & 0x0f) * 4;
    const total = u16(f, ip + 2);
    if (ihl < 20 || total < ihl || ETH_HLEN + total > len) return 0;
    if ((u16(f, ip + 6) & 0x3fff) !== 0) return 0; // a fragment
    if (internetChecksum(f, ip, ip + ihl) !== 0) return 0;
    if (!equal(f, ip + 16, this.ipv4, 0, 4)) return 0;
    const proto = f[ip + 9];
    const l4 = ip + ihl;
    const l4Len = total - ihl;
    if (proto === IPPROTO_ICMP) {
      if (l4Len < 8 || f[l4] !== 8 || f[l4 + 1] !== 0) return 0;
      if (internetChecksum(f, l4, l4 + l4Len) !== 0) return 0;
      const n = this.#ipv4Reply(f, s, r, o, IPPROTO_ICMP, l4Len);
      const i = o + ETH_HLEN + 20;
      r[i] = 0; // echo reply
      r[i + 1] = 0;
      put16(r, i + 2, 0);
      copy(r, i + 4, f, l4 + 4, l4Len - 4); // id, seq, payload
      put16(r, i + 2, internetChecksum(r, i, i + l4Len));
      this.counts.icmp++;
      return n;
    }
    if (proto === IPPROTO_UDP && this.udpEchoPort !== null) {
      if (l4Len < 8 || u16(f, l4 + 2) !== this.udpEchoPort) return 0;
      const udpLen = u16(f, l4 + 4);
      if (udpLen < 8 || udpLen > l4Len) return 0;
      const sum = u16(f, l4 + 6);
      if (sum !== 0 && internetChecksum(f, l4, l4 + udpLen, pseudoHeaderSum(f, ip, IPPROTO_UDP, udpLen)) !== 0) return 0;
      const n = this.#ipv4Reply(f, s, r, o, IPPROTO_UDP, udpLen);
      const u = o + ETH_HLEN + 20;
      put16(r, u, this.udpEchoPort);
      put16(r, u + 2, u16(f, l4)); // back to the sender's port
      put16(r, u + 4, udpLen);
      put16(r, u + 6, 0);
      copy(r, u + 8, f, l4 + 8, udpLen - 8);
      const c = internetChecksum(r, u, u + udpLen, pseudoHeaderSum(r, o + ETH_HLEN, IPPROTO_UDP, udpLen));
      put16(r, u + 6, c === 0 ? 0xffff : c);
      this.counts.udp++;
      return n;
    }
    return 0;
  }

  /** Ethernet + IPv4 headers of a reply to the frame at f[s..] carrying l4Len bytes; returns the padded frame length. */
  #ipv4Reply(f: Uint8Array, s: number, r: Uint8Array, o: number, proto: number, l4Len: number): number {
    const n = Math.max(60, ETH_HLEN + 20 + l4Len);
    r.fill(0, o + ETH_HLEN + 20 + l4Len, o + n); // padding
    copy(r, o, f, s + 6, 6); // to the sender's MAC
    copy(r, o + 6, this.mac, 0, 6);
    put16(r, o + 12, ETHERTYPE_IPV4);
    writeIpv4HeaderAt(r, o + ETH_HLEN, proto, this.ipv4, f, s + ETH_HLEN + 12, l4Len);
    return n;
  }
}
