/**
 * rtnetlink message encoding and decoding (linux/netlink.h, linux/rtnetlink.h,
 * linux/if_link.h): nlmsghdr, ifinfomsg and rtattr trees, all in host byte
 * order (little-endian on every platform this library runs on) with 4-byte
 * alignment. Pure functions: no fds, no syscalls.
 * @module
 */
import { checkObject, checkUint, plain } from '../core/check';
import { invalidArg } from '../core/errors';

/** Message types (linux/netlink.h, linux/rtnetlink.h). */
export const nlmsgType = {
  NLMSG_NOOP: 1,
  NLMSG_ERROR: 2,
  NLMSG_DONE: 3,
  RTM_NEWLINK: 16,
  RTM_DELLINK: 17,
  RTM_GETLINK: 18,
  RTM_SETLINK: 19,
} as const satisfies Record<string, number>;

/** nlmsg_flags (linux/netlink.h). */
export const nlmsgFlags = {
  NLM_F_REQUEST: 0x01,
  NLM_F_MULTI: 0x02,
  NLM_F_ACK: 0x04,
  NLM_F_ROOT: 0x100,
  NLM_F_MATCH: 0x200,
  NLM_F_DUMP: 0x300,
  NLM_F_REPLACE: 0x100,
  NLM_F_EXCL: 0x200,
  NLM_F_CREATE: 0x400,
} as const satisfies Record<string, number>;

/** IFLA_* attributes of a link message (linux/if_link.h). */
export const ifla = {
  ADDRESS: 1,
  BROADCAST: 2,
  IFNAME: 3,
  MTU: 4,
  LINK: 5,
  MASTER: 10,
  OPERSTATE: 16,
  IFALIAS: 20,
  LINKINFO: 18,
  NET_NS_PID: 19,
  NET_NS_FD: 28,
  NUM_TX_QUEUES: 31,
  NUM_RX_QUEUES: 32,
  MIN_MTU: 50,
  MAX_MTU: 51,
} as const satisfies Record<string, number>;

/** IFLA_LINKINFO nested attributes. */
export const iflaInfo = { KIND: 1, DATA: 2, SLAVE_KIND: 4 } as const satisfies Record<string, number>;

/** IFLA_MACVLAN_* in IFLA_INFO_DATA of a macvlan/macvtap. */
export const iflaMacvlan = { MODE: 1, FLAGS: 2 } as const satisfies Record<string, number>;

/** VETH_INFO_PEER in IFLA_INFO_DATA of a veth: an ifinfomsg followed by the peer's IFLA_* attributes. */
export const VETH_INFO_PEER = 1;

/** enum macvlan_mode (linux/if_link.h). */
export const macvlanMode = { private: 1, vepa: 2, bridge: 4, passthru: 8, source: 16 } as const;

/** ifinfomsg family for link requests. */
export const AF_UNSPEC = 0;
const NLA_F_NESTED = 0x8000;
const NLA_F_NET_BYTEORDER = 0x4000;
const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;
/** Size of struct nlmsghdr. */
export const NLMSG_HDRLEN = 16;
const NLA_HDRLEN = 4;
/** Size of struct ifinfomsg. */
export const IFINFOMSG_LEN = 16;

const align4 = (n: number): number => (n + 3) & ~3;

/** One route attribute: raw bytes, or (encoding only) nested attributes. */
export type NlAttr = { type: number; data: Uint8Array; nested?: false } | { type: number; attrs: NlAttr[]; nested: true };

/** A decoded attribute: its type without the flag bits, whether NLA_F_NESTED was set, and its payload. */
export interface DecodedAttr {
  type: number;
  nestedFlag: boolean;
  data: Uint8Array;
}

/** struct ifinfomsg. */
export interface IfInfoMsg {
  family: number;
  /** ARPHRD_* of the link (1 = Ethernet). */
  type: number;
  index: number;
  flags: number;
  change: number;
}

/** One netlink message: header fields and the payload after the 16-byte header. */
export interface NlMessage {
  type: number;
  flags: number;
  seq: number;
  pid: number;
  payload: Uint8Array;
}

const checkU = (value: number, bits: 8 | 16 | 32, arg: string): number => checkUint(value, arg, 2 ** bits - 1, undefined, null);

// ---- attribute builders ----------------------------------------------------

/** A u8 attribute. */
export const attrU8 = (type: number, v: number): NlAttr => ({ type, data: Uint8Array.of(checkU(v, 8, 'value')) });
/** A u16 attribute (host order). */
export function attrU16(type: number, v: number): NlAttr {
  const data = new Uint8Array(2);
  new DataView(data.buffer).setUint16(0, checkU(v, 16, 'value'), true);
  return { type, data };
}
/** A u32 attribute (host order). */
export function attrU32(type: number, v: number): NlAttr {
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, checkU(v, 32, 'value'), true);
  return { type, data };
}
/** A NUL-terminated string attribute (IFLA_IFNAME, IFLA_INFO_KIND). */
export const attrString = (type: number, s: string): NlAttr => ({ type, data: Buffer.concat([Buffer.from(s, 'utf8'), Buffer.alloc(1)]) });
/** A raw bytes attribute (IFLA_ADDRESS). */
export const attrBytes = (type: number, b: Uint8Array): NlAttr => ({ type, data: Uint8Array.from(b) });
/** A nested attribute (NLA_F_NESTED set, as strict kernel policies want). */
export const attrNested = (type: number, attrs: NlAttr[]): NlAttr => ({ type, attrs, nested: true });

// ---- encoding --------------------------------------------------------------

/** Encoded length of one attribute, padding included. */
function attrSize(a: NlAttr): number {
  return align4(NLA_HDRLEN + (a.nested ? attrsSize(a.attrs) : a.data.length));
}

function attrsSize(attrs: readonly NlAttr[]): number {
  if (!Array.isArray(attrs)) throw invalidArg('attrs', `must be an array of attributes, got ${plain(attrs)}`);
  return attrs.reduce((n, a) => {
    if (a === null || typeof a !== 'object') throw invalidArg('attr', `must be an attribute { type, data } or { type, attrs, nested: true }, got ${plain(a)}`);
    if (!a.nested && !(a.data instanceof Uint8Array)) throw invalidArg('attr.data', 'must be a Uint8Array');
    return n + attrSize(a);
  }, 0);
}

function writeAttrs(attrs: readonly NlAttr[], out: Uint8Array, offset: number): number {
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (const a of attrs) {
    if (!Number.isInteger(a.type) || a.type < 0 || a.type > NLA_TYPE_MASK) throw invalidArg('attr.type', `must be an integer in 0..${NLA_TYPE_MASK}`);
    const start = offset;
    offset += NLA_HDRLEN;
    if (a.nested) {
      offset = writeAttrs(a.attrs, out, offset);
    } else {
      out.set(a.data, offset);
      offset += a.data.length;
    }
    const len = offset - start;
    if (len > 0xffff) throw invalidArg('attr', `type ${a.type} is longer than 65535 bytes`, 'ERR_VHOST_OUT_OF_RANGE');
    view.setUint16(start, len, true);
    view.setUint16(start + 2, a.type | (a.nested ? NLA_F_NESTED : 0), true);
    offset = align4(offset); // padding bytes stay zero
  }
  return offset;
}

/** Encodes attributes back to back (each padded to 4 bytes). */
export function encodeAttrs(attrs: readonly NlAttr[]): Uint8Array {
  const out = new Uint8Array(attrsSize(attrs));
  writeAttrs(attrs, out, 0);
  return out;
}

/** Encodes a struct ifinfomsg (16 bytes). */
export function encodeIfInfoMsg(m: Partial<IfInfoMsg> = {}): Uint8Array {
  checkObject(m, 'ifinfomsg');
  const out = new Uint8Array(IFINFOMSG_LEN);
  const view = new DataView(out.buffer);
  view.setUint8(0, checkU(m.family ?? AF_UNSPEC, 8, 'family'));
  view.setUint16(2, checkU(m.type ?? 0, 16, 'type'), true);
  const index = m.index ?? 0;
  if (typeof index !== 'number' || !Number.isInteger(index) || index < -(2 ** 31) || index >= 2 ** 31) throw invalidArg('index', 'must be a 32-bit integer', 'ERR_VHOST_OUT_OF_RANGE');
  view.setInt32(4, index, true);
  view.setUint32(8, checkU(m.flags ?? 0, 32, 'flags'), true);
  view.setUint32(12, checkU(m.change ?? 0, 32, 'change'), true);
  return out;
}

/** Encodes one message: nlmsghdr, then `body` (e.g. an ifinfomsg) padded to 4, then attributes. */
export function encodeMessage(m: { type: number; flags: number; seq: number; pid?: number; body: Uint8Array; attrs?: readonly NlAttr[] }): Uint8Array {
  checkObject(m, 'message');
  const { type, flags, seq, pid, body } = m;
  const attrs = m.attrs ?? [];
  if (!(body instanceof Uint8Array)) throw invalidArg('message.body', 'must be a Uint8Array');
  const bodyLen = align4(body.length);
  const out = new Uint8Array(NLMSG_HDRLEN + bodyLen + attrsSize(attrs));
  const view = new DataView(out.buffer);
  view.setUint32(0, out.length, true);
  view.setUint16(4, checkU(type, 16, 'type'), true);
  view.setUint16(6, checkU(flags, 16, 'flags'), true);
  view.setUint32(8, checkU(seq, 32, 'seq'), true);
  view.setUint32(12, checkU(pid ?? 0, 32, 'pid'), true);
  out.set(body, NLMSG_HDRLEN);
  writeAttrs(attrs, out, NLMSG_HDRLEN + bodyLen);
  return out;
}

// ---- decoding --------------------------------------------------------------

function checkBytes(bytes: unknown): void {
  if (!(bytes instanceof Uint8Array)) throw invalidArg('message', `must be a Uint8Array, got ${plain(bytes)}`);
}

function malformed(what: string): Error {
  return invalidArg('message', `is malformed: ${what}`);
}

/** Decodes back-to-back attributes. Throws ERR_VHOST_INVALID_ARG on a length that does not fit. */
export function decodeAttrs(bytes: Uint8Array): DecodedAttr[] {
  checkBytes(bytes);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: DecodedAttr[] = [];
  let off = 0;
  while (off + NLA_HDRLEN <= bytes.length) {
    const len = view.getUint16(off, true);
    const rawType = view.getUint16(off + 2, true);
    if (len < NLA_HDRLEN || off + len > bytes.length) throw malformed(`attribute at ${off} has length ${len}`);
    out.push({ type: rawType & NLA_TYPE_MASK, nestedFlag: (rawType & NLA_F_NESTED) !== 0, data: bytes.subarray(off + NLA_HDRLEN, off + len) });
    off += align4(len);
  }
  return out;
}

/** Decodes a struct ifinfomsg from the start of `bytes`. */
export function decodeIfInfoMsg(bytes: Uint8Array): IfInfoMsg {
  checkBytes(bytes);
  if (bytes.length < IFINFOMSG_LEN) throw malformed(`ifinfomsg needs ${IFINFOMSG_LEN} bytes, got ${bytes.length}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { family: view.getUint8(0), type: view.getUint16(2, true), index: view.getInt32(4, true), flags: view.getUint32(8, true), change: view.getUint32(12, true) };
}

/** Decodes every message in a buffer (one datagram may hold several). */
export function decodeMessages(bytes: Uint8Array): NlMessage[] {
  checkBytes(bytes);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: NlMessage[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= bytes.length) {
    const len = view.getUint32(off, true);
    if (len < NLMSG_HDRLEN || off + len > bytes.length) throw malformed(`message at ${off} has length ${len}`);
    out.push({
      type: view.getUint16(off + 4, true),
      flags: view.getUint16(off + 6, true),
      seq: view.getUint32(off + 8, true),
      pid: view.getUint32(off + 12, true),
      payload: bytes.subarray(off + NLMSG_HDRLEN, off + len),
    });
    off += align4(len);
  }
  return out;
}

/** A link message (RTM_NEWLINK reply): its ifinfomsg and top-level attributes. */
export interface LinkMessage {
  ifi: IfInfoMsg;
  attrs: DecodedAttr[];
}

/** Splits an RTM_NEWLINK payload into its ifinfomsg and attributes. */
export function decodeLinkMessage(payload: Uint8Array): LinkMessage {
  return { ifi: decodeIfInfoMsg(payload), attrs: decodeAttrs(payload.subarray(IFINFOMSG_LEN)) };
}

// ---- attribute readers -----------------------------------------------------

/** The first attribute of a type, if any. */
export const findAttr = (attrs: readonly DecodedAttr[], type: number): DecodedAttr | undefined => attrs.find((a) => a.type === type);

/** The attribute as a u8; a malformed-message error if it is empty. */
export function readU8(a: DecodedAttr): number {
  if (a.data.length < 1) throw malformed(`attribute ${a.type} is empty`);
  return a.data[0];
}
/** The attribute as a host-order (little-endian) u16; a malformed-message error if shorter. */
export function readU16(a: DecodedAttr): number {
  if (a.data.length < 2) throw malformed(`attribute ${a.type} is shorter than a u16`);
  return new DataView(a.data.buffer, a.data.byteOffset, 2).getUint16(0, true);
}
/** The attribute as a host-order (little-endian) u32; a malformed-message error if shorter. */
export function readU32(a: DecodedAttr): number {
  if (a.data.length < 4) throw malformed(`attribute ${a.type} is shorter than a u32`);
  return new DataView(a.data.buffer, a.data.byteOffset, 4).getUint32(0, true);
}
/** A string attribute up to its NUL. */
export function readString(a: DecodedAttr): string {
  const nul = a.data.indexOf(0);
  return Buffer.from(a.data.subarray(0, nul < 0 ? a.data.length : nul)).toString('utf8');
}
