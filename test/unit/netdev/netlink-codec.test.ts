// The rtnetlink codec: encode → decode round trips over generated messages and
// attribute trees, byte layouts checked against the uapi structs, and
// malformed input refused with a code instead of a crash or a wrong parse.
import * as fc from 'fast-check';
import {
  attrBytes, attrNested, attrString, attrU16, attrU32, attrU8, decodeAttrs, decodeIfInfoMsg, decodeLinkMessage,
  decodeMessages, encodeAttrs, encodeIfInfoMsg, encodeMessage, ifla, iflaInfo, type DecodedAttr, type NlAttr,
} from '../../../lib/netdev/netlink';

const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const attrType = fc.integer({ min: 0, max: 0x3fff });

/** Attribute trees up to depth 3 with payloads of every alignment. */
const { attr } = fc.letrec<{ attr: NlAttr }>((tie) => ({
  attr: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.record({ type: attrType, data: fc.uint8Array({ maxLength: 23 }) }),
    fc.record({ type: attrType, attrs: fc.array(tie('attr'), { maxLength: 4 }), nested: fc.constant(true as const) }),
  ),
}));

/** Decodes an encoded tree back into the NlAttr shape, following NLA_F_NESTED. */
function toTree(decoded: DecodedAttr[]): NlAttr[] {
  return decoded.map((a) => (a.nestedFlag ? { type: a.type, attrs: toTree(decodeAttrs(a.data)), nested: true as const } : { type: a.type, data: Uint8Array.from(a.data) }));
}

const normalize = (attrs: NlAttr[]): unknown =>
  attrs.map((a) => (a.nested ? { type: a.type, attrs: normalize(a.attrs) } : { type: a.type, data: Array.from(a.data) }));

const ifinfo = fc.record({
  family: fc.integer({ min: 0, max: 255 }),
  type: u16,
  index: fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
  flags: u32,
  change: u32,
});

describe('attributes', () => {
  test('any attribute tree survives encode → decode', () => {
    fc.assert(fc.property(fc.array(attr, { maxLength: 6 }), (attrs) => {
      const bytes = encodeAttrs(attrs);
      expect(bytes.length % 4).toBe(0);
      expect(normalize(toTree(decodeAttrs(bytes)))).toEqual(normalize(attrs));
    }));
  });

  test('rta_len counts header + payload without padding; padding is zero; NLA_F_NESTED marks nests', () => {
    const bytes = encodeAttrs([attrString(ifla.IFNAME, 'br0'), attrNested(ifla.LINKINFO, [attrString(iflaInfo.KIND, 'bridge')])]);
    // IFNAME: len 4 + "br0\0" = 8; LINKINFO: 4 + (4 + "bridge\0" = 11 → padded 12) = 15 → 16
    expect(Array.from(bytes.subarray(0, 8))).toEqual([8, 0, 3, 0, 0x62, 0x72, 0x30, 0]);
    expect(Array.from(bytes.subarray(8, 12))).toEqual([16, 0, 18, 0x80]);
    expect(Array.from(bytes.subarray(12, 16))).toEqual([11, 0, 1, 0]);
    expect(bytes[23]).toBe(0);
    expect(bytes.length).toBe(24);
  });

  test('integer attributes are host (little-endian) order and range-checked', () => {
    expect(Array.from(encodeAttrs([attrU32(ifla.MTU, 9000)]))).toEqual([8, 0, 4, 0, 0x28, 0x23, 0, 0]);
    expect(Array.from(encodeAttrs([attrU16(7, 0x1234)]))).toEqual([6, 0, 7, 0, 0x34, 0x12, 0, 0]);
    expect(Array.from(encodeAttrs([attrU8(7, 0xff)]))).toEqual([5, 0, 7, 0, 0xff, 0, 0, 0]);
    expect(() => attrU32(1, 2 ** 32)).toThrow(expect.objectContaining({ code: 'ERR_VHOST_OUT_OF_RANGE' }));
    expect(() => attrU16(1, -1)).toThrow(expect.objectContaining({ code: 'ERR_VHOST_OUT_OF_RANGE' }));
    expect(() => attrU8(1, 1.5)).toThrow(expect.objectContaining({ code: 'ERR_VHOST_OUT_OF_RANGE' }));
  });

  test('an attribute longer than 65535 bytes or with a type beyond 14 bits is refused', () => {
    expect(() => encodeAttrs([attrBytes(1, new Uint8Array(65532))])).toThrow(expect.objectContaining({ code: 'ERR_VHOST_OUT_OF_RANGE' }));
    expect(() => encodeAttrs([{ type: 0x4000, data: new Uint8Array(0) }])).toThrow(expect.objectContaining({ code: 'ERR_VHOST_INVALID_ARG' }));
  });

  test('a length that runs past the buffer or below the header is refused', () => {
    fc.assert(fc.property(fc.array(attr, { minLength: 1, maxLength: 4 }), fc.nat(), (attrs, cut) => {
      const bytes = encodeAttrs(attrs);
      const view = new DataView(bytes.buffer);
      view.setUint16(0, bytes.length + 1 + (cut % 100), true);
      expect(() => decodeAttrs(bytes)).toThrow(expect.objectContaining({ code: 'ERR_VHOST_INVALID_ARG' }));
      view.setUint16(0, cut % 4, true);
      expect(() => decodeAttrs(bytes)).toThrow(expect.objectContaining({ code: 'ERR_VHOST_INVALID_ARG' }));
    }));
  });
});

describe('ifinfomsg', () => {
  test('round trips and matches struct ifinfomsg (family u8, pad, type u16, index s32, flags u32, change u32)', () => {
    fc.assert(fc.property(ifinfo, (m) => {
      const bytes = encodeIfInfoMsg(m);
      expect(bytes.length).toBe(16);
      expect(bytes[1]).toBe(0);
      expect(decodeIfInfoMsg(bytes)).toEqual(m);
    }));
    expect(Array.from(encodeIfInfoMsg({ index: 7, flags: 1, change: 1 }))).toEqual([0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
  });

  test('a short ifinfomsg is refused', () => {
    expect(() => decodeIfInfoMsg(new Uint8Array(15))).toThrow(expect.objectContaining({ code: 'ERR_VHOST_INVALID_ARG' }));
  });
});

describe('messages', () => {
  const message = fc.record({ type: u16, flags: u16, seq: u32, pid: u32, body: ifinfo, attrs: fc.array(attr, { maxLength: 5 }) });

  test('header, ifinfomsg and attributes survive encode → decode; nlmsg_len is the byte length', () => {
    fc.assert(fc.property(message, (m) => {
      const bytes = encodeMessage({ ...m, body: encodeIfInfoMsg(m.body) });
      expect(new DataView(bytes.buffer).getUint32(0, true)).toBe(bytes.length);
      const [d] = decodeMessages(bytes);
      expect({ type: d.type, flags: d.flags, seq: d.seq, pid: d.pid }).toEqual({ type: m.type, flags: m.flags, seq: m.seq, pid: m.pid });
      const link = decodeLinkMessage(d.payload);
      expect(link.ifi).toEqual(m.body);
      expect(normalize(toTree(link.attrs))).toEqual(normalize(m.attrs));
    }));
  });

  test('several messages in one datagram are split at their aligned lengths', () => {
    fc.assert(fc.property(fc.array(message, { minLength: 1, maxLength: 4 }), (ms) => {
      const parts = ms.map((m) => encodeMessage({ ...m, body: encodeIfInfoMsg(m.body) }));
      const all = Buffer.concat(parts);
      expect(decodeMessages(all).map((d) => d.seq)).toEqual(ms.map((m) => m.seq));
    }));
  });

  test('a body of odd length is padded to 4 before the attributes', () => {
    const bytes = encodeMessage({ type: 2, flags: 0, seq: 1, body: Uint8Array.of(1, 2, 3), attrs: [attrU8(1, 9)] });
    expect(bytes.length).toBe(16 + 4 + 8);
    expect(Array.from(bytes.subarray(16, 28))).toEqual([1, 2, 3, 0, 5, 0, 1, 0, 9, 0, 0, 0]);
  });

  test('a message whose nlmsg_len overruns the buffer is refused', () => {
    const bytes = encodeMessage({ type: 16, flags: 0, seq: 1, body: encodeIfInfoMsg() });
    new DataView(bytes.buffer).setUint32(0, bytes.length + 4, true);
    expect(() => decodeMessages(bytes)).toThrow(expect.objectContaining({ code: 'ERR_VHOST_INVALID_ARG' }));
  });
});
