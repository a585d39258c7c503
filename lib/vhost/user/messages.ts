// The vhost-user wire format (QEMU docs/interop/vhost-user.rst): a 12-byte
// header (request u32, flags u32, size u32) and a payload of `size` bytes, all
// in native byte order (little-endian on every host this library builds for),
// file descriptors in the ancillary data. Pure encoders and strict decoders;
// the back-end is another process and not trusted, so every decoder checks
// sizes and flags and throws ERR_VHOST_USER_PROTOCOL naming the message,
// never anything else, whatever the bytes.
import { VhostError } from '../../core/errors';

/** Front-end → back-end requests, by the spec's ids. */
export const VhostUserRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;
export type VhostUserRequestName = keyof typeof VhostUserRequest;

const NAMES = new Map<number, VhostUserRequestName>(Object.entries(VhostUserRequest).map(([k, v]) => [v, k as VhostUserRequestName]));

/** The name of a request id ('GET_FEATURES'), or 'request <n>' for one this library does not know. */
export function requestName(request: number): string {
  return NAMES.get(request) ?? `request ${request}`;
}

/** Protocol feature bits (VHOST_USER_PROTOCOL_F_*), as bit numbers. */
export const VhostUserProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

/** Feature bit 30 of GET_FEATURES: the back-end speaks GET/SET_PROTOCOL_FEATURES. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

export const HEADER_SIZE = 12;
/** Lower two flag bits: the protocol version, 1. */
export const VERSION = 0x1;
export const VERSION_MASK = 0x3;
/** Set on every reply from the back-end. */
export const FLAG_REPLY = 0x4;
/** Asks for a u64 acknowledgement (REPLY_ACK): 0 success, anything else failure. */
export const FLAG_NEED_REPLY = 0x8;
/** SET_VRING_KICK/CALL/ERR payload: bits 0-7 the ring index, bit 8 "no fd in the ancillary data". */
export const VRING_INDEX_MASK = 0xff;
export const VRING_NOFD = 0x100;
/** Regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS): fds travel in one message. */
export const MAX_MEM_REGIONS = 8;
/** Largest config space access (VHOST_USER_MAX_CONFIG_SIZE). */
export const MAX_CONFIG_SIZE = 256;
/** Largest payload this front-end reads: past it the stream cannot be trusted to resynchronise. */
export const MAX_PAYLOAD_SIZE = 4096;

export const U64_SIZE = 8;
export const VRING_STATE_SIZE = 8;
export const VRING_ADDR_SIZE = 40;
export const MEM_REGION_SIZE = 32;
export const MEM_TABLE_HEADER_SIZE = 8;
export const LOG_SIZE = 16;
export const CONFIG_HEADER_SIZE = 12;
export const INFLIGHT_SIZE = 20;

export interface VhostUserHeader {
  request: number;
  flags: number;
  size: number;
}

export interface VringState {
  index: number;
  num: number;
}

export interface VringAddrPayload {
  index: number;
  flags: number;
  /** Ring addresses in the front-end's (this process's) address space, as the spec says. */
  desc: bigint;
  used: bigint;
  avail: bigint;
  /** Guest-physical address of the used ring for dirty logging. */
  log: bigint;
}

export interface MemRegionPayload {
  gpa: bigint;
  size: bigint;
  /** Where the region is mapped in the front-end: ring addresses are translated by it. */
  userAddr: bigint;
  /** Offset of the region in the fd sent for it. */
  mmapOffset: bigint;
}

export interface LogPayload {
  size: bigint;
  offset: bigint;
}

export interface ConfigPayload {
  offset: number;
  flags: number;
  data: Uint8Array;
}

export interface InflightPayload {
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}

/** A protocol violation by the peer (or a caller handing the codec garbage): typed, naming the message. */
export function protocolError(request: string, what: string): VhostError {
  return new VhostError(`ERR_VHOST_USER_PROTOCOL: ${request}: ${what}`, { code: 'ERR_VHOST_USER_PROTOCOL', step: request });
}

const U32_MAX = 0xffff_ffff;
const U64_MAX = (1n << 64n) - 1n;

function u32(value: number, what: string, request: string): number {
  if (!Number.isInteger(value) || value < 0 || value > U32_MAX) throw protocolError(request, `${what} must be a u32, got ${value}`);
  return value;
}

function u64(value: bigint, what: string, request: string): bigint {
  if (typeof value !== 'bigint' || value < 0n || value > U64_MAX) throw protocolError(request, `${what} must be a u64, got ${String(value)}`);
  return value;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---- header ---------------------------------------------------------------

export function encodeHeader(h: VhostUserHeader): Buffer {
  const name = requestName(h.request);
  const out = Buffer.alloc(HEADER_SIZE);
  out.writeUInt32LE(u32(h.request, 'request', name), 0);
  out.writeUInt32LE(u32(h.flags, 'flags', name), 4);
  out.writeUInt32LE(u32(h.size, 'size', name), 8);
  return out;
}

/**
 * A header of any message; checks only what every message must satisfy
 * (version 1, a bounded size). `awaiting` names the request whose reply this
 * should be, so errors name the caller's message rather than whatever the
 * bytes claim.
 */
export function decodeHeader(bytes: Uint8Array, awaiting?: string): VhostUserHeader {
  if (bytes.length !== HEADER_SIZE) throw protocolError(awaiting ?? 'header', `a header must be ${HEADER_SIZE} bytes, got ${bytes.length}`);
  const v = view(bytes);
  const h = { request: v.getUint32(0, true), flags: v.getUint32(4, true), size: v.getUint32(8, true) };
  const name = awaiting ?? requestName(h.request);
  const of = awaiting ? ` (in a header claiming ${requestName(h.request)})` : '';
  if ((h.flags & VERSION_MASK) !== VERSION) throw protocolError(name, `version ${h.flags & VERSION_MASK} in flags 0x${h.flags.toString(16)}, expected 1${of}`);
  if (h.size > MAX_PAYLOAD_SIZE) throw protocolError(name, `payload size ${h.size} exceeds ${MAX_PAYLOAD_SIZE}${of}`);
  return h;
}

/**
 * Checks a header read as the reply to `expected`: same request, flags exactly
 * version 1 | REPLY (as QEMU insists), and a payload size `sizeOk` accepts.
 */
export function checkReplyHeader(h: VhostUserHeader, expected: number, sizeOk: (size: number) => boolean, sizeWords: string): void {
  const name = requestName(expected);
  if (h.request !== expected) throw protocolError(name, `the back-end answered with ${requestName(h.request)} instead`);
  if (h.flags !== (VERSION | FLAG_REPLY)) throw protocolError(name, `reply flags 0x${h.flags.toString(16)}, expected 0x${(VERSION | FLAG_REPLY).toString(16)} (version 1 | REPLY)`);
  if (!sizeOk(h.size)) throw protocolError(name, `reply payload of ${h.size} bytes, expected ${sizeWords}`);
}

/** Header + payload in one buffer (sent with one sendmsg, fds alongside). */
export function encodeMessage(request: number, flags: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  return Buffer.concat([encodeHeader({ request, flags, size: payload.length }), payload]);
}

function checkSize(payload: Uint8Array, size: number, request: string, what: string): DataView {
  if (payload.length !== size) throw protocolError(request, `${what} must be ${size} bytes, got ${payload.length}`);
  return view(payload);
}

// ---- u64 ------------------------------------------------------------------

export function encodeU64(value: bigint, request = 'u64'): Buffer {
  const out = Buffer.alloc(U64_SIZE);
  out.writeBigUInt64LE(u64(value, 'value', request));
  return out;
}

export function decodeU64(payload: Uint8Array, request = 'u64'): bigint {
  return checkSize(payload, U64_SIZE, request, 'a u64 payload').getBigUint64(0, true);
}

// ---- vring state ----------------------------------------------------------

export function encodeVringState(s: VringState, request = 'vring state'): Buffer {
  const out = Buffer.alloc(VRING_STATE_SIZE);
  out.writeUInt32LE(u32(s.index, 'index', request), 0);
  out.writeUInt32LE(u32(s.num, 'num', request), 4);
  return out;
}

export function decodeVringState(payload: Uint8Array, request = 'vring state'): VringState {
  const v = checkSize(payload, VRING_STATE_SIZE, request, 'a vring state');
  return { index: v.getUint32(0, true), num: v.getUint32(4, true) };
}

// ---- vring address --------------------------------------------------------

export function encodeVringAddr(a: VringAddrPayload, request = 'SET_VRING_ADDR'): Buffer {
  const out = Buffer.alloc(VRING_ADDR_SIZE);
  out.writeUInt32LE(u32(a.index, 'index', request), 0);
  out.writeUInt32LE(u32(a.flags, 'flags', request), 4);
  out.writeBigUInt64LE(u64(a.desc, 'desc', request), 8);
  out.writeBigUInt64LE(u64(a.used, 'used', request), 16);
  out.writeBigUInt64LE(u64(a.avail, 'avail', request), 24);
  out.writeBigUInt64LE(u64(a.log, 'log', request), 32);
  return out;
}

export function decodeVringAddr(payload: Uint8Array, request = 'SET_VRING_ADDR'): VringAddrPayload {
  const v = checkSize(payload, VRING_ADDR_SIZE, request, 'a vring address');
  return {
    index: v.getUint32(0, true),
    flags: v.getUint32(4, true),
    desc: v.getBigUint64(8, true),
    used: v.getBigUint64(16, true),
    avail: v.getBigUint64(24, true),
    log: v.getBigUint64(32, true),
  };
}

// ---- memory table ---------------------------------------------------------

export function encodeMemTable(regions: readonly MemRegionPayload[], request = 'SET_MEM_TABLE'): Buffer {
  if (regions.length > MAX_MEM_REGIONS) throw protocolError(request, `${regions.length} regions, at most ${MAX_MEM_REGIONS} fit in one message`);
  const out = Buffer.alloc(MEM_TABLE_HEADER_SIZE + MEM_REGION_SIZE * regions.length);
  out.writeUInt32LE(regions.length, 0); // then 4 bytes of padding
  regions.forEach((r, i) => {
    const at = MEM_TABLE_HEADER_SIZE + MEM_REGION_SIZE * i;
    out.writeBigUInt64LE(u64(r.gpa, `regions[${i}].gpa`, request), at);
    out.writeBigUInt64LE(u64(r.size, `regions[${i}].size`, request), at + 8);
    out.writeBigUInt64LE(u64(r.userAddr, `regions[${i}].userAddr`, request), at + 16);
    out.writeBigUInt64LE(u64(r.mmapOffset, `regions[${i}].mmapOffset`, request), at + 24);
  });
  return out;
}

export function decodeMemTable(payload: Uint8Array, request = 'SET_MEM_TABLE'): MemRegionPayload[] {
  if (payload.length < MEM_TABLE_HEADER_SIZE) throw protocolError(request, `a memory table needs at least ${MEM_TABLE_HEADER_SIZE} bytes, got ${payload.length}`);
  const v = view(payload);
  const n = v.getUint32(0, true);
  if (n > MAX_MEM_REGIONS) throw protocolError(request, `${n} regions, at most ${MAX_MEM_REGIONS}`);
  const size = MEM_TABLE_HEADER_SIZE + MEM_REGION_SIZE * n;
  if (payload.length !== size) throw protocolError(request, `a table of ${n} regions must be ${size} bytes, got ${payload.length}`);
  const out: MemRegionPayload[] = [];
  for (let i = 0; i < n; i++) {
    const at = MEM_TABLE_HEADER_SIZE + MEM_REGION_SIZE * i;
    out.push({ gpa: v.getBigUint64(at, true), size: v.getBigUint64(at + 8, true), userAddr: v.getBigUint64(at + 16, true), mmapOffset: v.getBigUint64(at + 24, true) });
  }
  return out;
}

// ---- log ------------------------------------------------------------------

export function encodeLog(l: LogPayload, request = 'SET_LOG_BASE'): Buffer {
  const out = Buffer.alloc(LOG_SIZE);
  out.writeBigUInt64LE(u64(l.size, 'size', request), 0);
  out.writeBigUInt64LE(u64(l.offset, 'offset', request), 8);
  return out;
}

export function decodeLog(payload: Uint8Array, request = 'SET_LOG_BASE'): LogPayload {
  const v = checkSize(payload, LOG_SIZE, request, 'a log description');
  return { size: v.getBigUint64(0, true), offset: v.getBigUint64(8, true) };
}

// ---- config space ---------------------------------------------------------

export function encodeConfig(c: ConfigPayload, request = 'GET_CONFIG'): Buffer {
  if (!(c.data instanceof Uint8Array) || c.data.length > MAX_CONFIG_SIZE) {
    throw protocolError(request, `config data must be a Uint8Array of at most ${MAX_CONFIG_SIZE} bytes`);
  }
  const out = Buffer.alloc(CONFIG_HEADER_SIZE + c.data.length);
  out.writeUInt32LE(u32(c.offset, 'offset', request), 0);
  out.writeUInt32LE(c.data.length, 4);
  out.writeUInt32LE(u32(c.flags, 'flags', request), 8);
  out.set(c.data, CONFIG_HEADER_SIZE);
  return out;
}

export function decodeConfig(payload: Uint8Array, request = 'GET_CONFIG'): ConfigPayload {
  if (payload.length < CONFIG_HEADER_SIZE) throw protocolError(request, `a config payload needs at least ${CONFIG_HEADER_SIZE} bytes, got ${payload.length}`);
  const v = view(payload);
  const size = v.getUint32(4, true);
  if (size > MAX_CONFIG_SIZE) throw protocolError(request, `config size ${size} exceeds ${MAX_CONFIG_SIZE}`);
  if (payload.length !== CONFIG_HEADER_SIZE + size) throw protocolError(request, `config of ${size} bytes must be a ${CONFIG_HEADER_SIZE + size}-byte payload, got ${payload.length}`);
  return { offset: v.getUint32(0, true), flags: v.getUint32(8, true), data: Uint8Array.prototype.slice.call(payload, CONFIG_HEADER_SIZE) };
}

// ---- inflight -------------------------------------------------------------

export function encodeInflight(f: InflightPayload, request = 'GET_INFLIGHT_FD'): Buffer {
  const out = Buffer.alloc(INFLIGHT_SIZE);
  out.writeBigUInt64LE(u64(f.mmapSize, 'mmapSize', request), 0);
  out.writeBigUInt64LE(u64(f.mmapOffset, 'mmapOffset', request), 8);
  if (!Number.isInteger(f.numQueues) || f.numQueues < 0 || f.numQueues > 0xffff) throw protocolError(request, `numQueues must be a u16, got ${f.numQueues}`);
  if (!Number.isInteger(f.queueSize) || f.queueSize < 0 || f.queueSize > 0xffff) throw protocolError(request, `queueSize must be a u16, got ${f.queueSize}`);
  out.writeUInt16LE(f.numQueues, 16);
  out.writeUInt16LE(f.queueSize, 18);
  return out;
}

export function decodeInflight(payload: Uint8Array, request = 'GET_INFLIGHT_FD'): InflightPayload {
  const v = checkSize(payload, INFLIGHT_SIZE, request, 'an inflight description');
  return { mmapSize: v.getBigUint64(0, true), mmapOffset: v.getBigUint64(8, true), numQueues: v.getUint16(16, true), queueSize: v.getUint16(18, true) };
}

// ---- vring fd messages (SET_VRING_KICK / CALL / ERR) -------------------------

/** The u64 of SET_VRING_KICK/CALL/ERR: the ring index, with NOFD when no fd travels with it. */
export function vringFdPayload(index: number, hasFd: boolean, request = 'SET_VRING_KICK'): Buffer {
  if (!Number.isInteger(index) || index < 0 || index > VRING_INDEX_MASK) throw protocolError(request, `ring index must be in 0..${VRING_INDEX_MASK}, got ${index}`);
  return encodeU64(BigInt(index | (hasFd ? 0 : VRING_NOFD)), request);
}

/** Reads the u64 of SET_VRING_KICK/CALL/ERR; bits other than the index and NOFD are a protocol error. */
export function decodeVringFdPayload(payload: Uint8Array, request = 'SET_VRING_KICK'): { index: number; noFd: boolean } {
  const v = decodeU64(payload, request);
  if ((v & ~BigInt(VRING_INDEX_MASK | VRING_NOFD)) !== 0n) throw protocolError(request, `unknown bits in 0x${v.toString(16)} (only the index 0..255 and NOFD 0x100)`);
  return { index: Number(v & BigInt(VRING_INDEX_MASK)), noFd: (v & BigInt(VRING_NOFD)) !== 0n };
}
