// struct virtio_vsock_hdr (linux/virtio_vsock.h): the 44-byte little-endian
// header in front of every virtio-vsock packet, both directions.
import { checkObject, checkUint, plain } from '../core/check';
import { invalidArg } from '../core/errors';

/** sizeof(struct virtio_vsock_hdr). */
export const VSOCK_HDR_SIZE = 44;

/** enum virtio_vsock_type. */
export const VSOCK_TYPE = { STREAM: 1, SEQPACKET: 2 } as const;

/** enum virtio_vsock_op. */
export const VSOCK_OP = {
  INVALID: 0,
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;

/** enum virtio_vsock_shutdown: flags of OP_SHUTDOWN. */
export const VSOCK_SHUTDOWN = { RCV: 1, SEND: 2 } as const;

/**
 * enum virtio_vsock_rw: flags of OP_RW on SEQPACKET connections. EOM marks
 * the last packet of a message (a message larger than one buffer spans
 * several packets); EOR is set on it too when the sender passed MSG_EOR.
 */
export const VSOCK_SEQ = { EOM: 1, EOR: 2 } as const;

/** A decoded virtio_vsock_hdr; CIDs are bigint because the wire field is 64 bits. */
export interface VsockHeader {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  /** Payload bytes following the header. */
  len: number;
  type: number;
  op: number;
  flags: number;
  /** The sender's receive buffer size (credit it grants). */
  bufAlloc: number;
  /** Bytes the sender has consumed from its receive buffer so far (wraps at 2^32). */
  fwdCnt: number;
}

const U32 = 0xffff_ffff;
const U64 = (1n << 64n) - 1n;

const checkU32 = (v: unknown, arg: string): number => checkUint(v, arg, U32, '0..2^32-1');
const checkU16 = (v: unknown, arg: string): number => checkUint(v, arg, 0xffff);
const checkU64 = (v: unknown, arg: string): bigint => checkUint(v, arg, U64, '0..2^64-1');

/** Checks every field's range and returns a plain copy (each field of `h` read once). */
function checkedHeader(h: VsockHeader): VsockHeader {
  checkObject(h, 'header');
  const { srcCid, dstCid, srcPort, dstPort, len, type, op, flags, bufAlloc, fwdCnt } = h;
  return {
    srcCid: checkU64(srcCid, 'header.srcCid'),
    dstCid: checkU64(dstCid, 'header.dstCid'),
    srcPort: checkU32(srcPort, 'header.srcPort'),
    dstPort: checkU32(dstPort, 'header.dstPort'),
    len: checkU32(len, 'header.len'),
    type: checkU16(type, 'header.type'),
    op: checkU16(op, 'header.op'),
    flags: checkU32(flags, 'header.flags'),
    bufAlloc: checkU32(bufAlloc, 'header.bufAlloc'),
    fwdCnt: checkU32(fwdCnt, 'header.fwdCnt'),
  };
}

/** Checks every field's range (what a DataView would otherwise truncate). */
export function checkVsockHeader(h: VsockHeader): void {
  checkedHeader(h);
}

/** Writes `h` (checked like checkVsockHeader) into `out` at `offset` (44 bytes); `out` must have room. */
export function writeVsockHeader(out: Uint8Array, offset: number, h: VsockHeader): void {
  if (!(out instanceof Uint8Array)) throw invalidArg('out', 'must be a Uint8Array');
  if (typeof offset !== 'number' || !Number.isInteger(offset) || offset < 0 || offset + VSOCK_HDR_SIZE > out.length) {
    throw invalidArg('out', `has no room for a ${VSOCK_HDR_SIZE}-byte header at offset ${plain(offset)} (length ${out.length})`, 'ERR_VHOST_OUT_OF_RANGE');
  }
  const c = checkedHeader(h);
  const dv = new DataView(out.buffer, out.byteOffset + offset, VSOCK_HDR_SIZE);
  dv.setBigUint64(0, c.srcCid, true);
  dv.setBigUint64(8, c.dstCid, true);
  putFields(dv, 0, c.srcPort, c.dstPort, c.len, c.type, c.op, c.flags, c.bufAlloc, c.fwdCnt);
}

/**
 * @internal The guest's per-packet path: writes a header at byte `at` of
 * `dv` (one DataView kept per buffer pool), no checks, no allocation. CIDs
 * are numbers (the kernel's are u32; any integer below 2^64 gives the bytes
 * writeVsockHeader writes for BigInt(cid)).
 */
export function putVsockHeader(dv: DataView, at: number, srcCid: number, dstCid: number, srcPort: number, dstPort: number, len: number, type: number, op: number, flags: number, bufAlloc: number, fwdCnt: number): void {
  setCid(dv, at, srcCid);
  setCid(dv, at + 8, dstCid);
  putFields(dv, at, srcPort, dstPort, len, type, op, flags, bufAlloc, fwdCnt);
}

/** The header after the two CIDs. */
function putFields(dv: DataView, at: number, srcPort: number, dstPort: number, len: number, type: number, op: number, flags: number, bufAlloc: number, fwdCnt: number): void {
  dv.setUint32(at + 16, srcPort, true);
  dv.setUint32(at + 20, dstPort, true);
  dv.setUint32(at + 24, len, true);
  dv.setUint16(at + 28, type, true);
  dv.setUint16(at + 30, op, true);
  dv.setUint32(at + 32, flags, true);
  dv.setUint32(at + 36, bufAlloc, true);
  dv.setUint32(at + 40, fwdCnt, true);
}

const TWO_32 = 0x1_0000_0000;

function setCid(dv: DataView, at: number, cid: number): void {
  dv.setUint32(at, cid >>> 0, true);
  dv.setUint32(at + 4, (cid / TWO_32) >>> 0, true);
}

/**
 * @internal A le64 CID field at byte `at` of `dv` as a number, without a
 * bigint: equal to Number(decodeVsockHeader(...).srcCid / dstCid).
 */
export function getVsockCid(dv: DataView, at: number): number {
  return dv.getUint32(at, true) + dv.getUint32(at + 4, true) * TWO_32;
}

/** Encodes a header (validated) into a new 44-byte Buffer. */
export function encodeVsockHeader(h: VsockHeader): Buffer {
  const out = Buffer.alloc(VSOCK_HDR_SIZE);
  writeVsockHeader(out, 0, h);
  return out;
}

/** Decodes the header at `offset`; throws ERR_VHOST_OUT_OF_RANGE when fewer than 44 bytes remain. */
export function decodeVsockHeader(buf: Uint8Array, offset = 0): VsockHeader {
  if (!(buf instanceof Uint8Array)) throw invalidArg('buf', 'must be a Uint8Array');
  if (typeof offset !== 'number' || !Number.isInteger(offset) || offset < 0 || offset + VSOCK_HDR_SIZE > buf.length) {
    throw invalidArg('buf', `has no ${VSOCK_HDR_SIZE}-byte header at offset ${plain(offset)} (length ${buf.length})`, 'ERR_VHOST_OUT_OF_RANGE');
  }
  const dv = new DataView(buf.buffer, buf.byteOffset + offset, VSOCK_HDR_SIZE);
  return {
    srcCid: dv.getBigUint64(0, true),
    dstCid: dv.getBigUint64(8, true),
    srcPort: dv.getUint32(16, true),
    dstPort: dv.getUint32(20, true),
    len: dv.getUint32(24, true),
    type: dv.getUint16(28, true),
    op: dv.getUint16(30, true),
    flags: dv.getUint32(32, true),
    bufAlloc: dv.getUint32(36, true),
    fwdCnt: dv.getUint32(40, true),
  };
}
