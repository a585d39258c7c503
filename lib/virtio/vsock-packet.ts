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

/** Byte offset of each field: the one place the layout is written down. */
const AT = { srcCid: 0, dstCid: 8, srcPort: 16, dstPort: 20, len: 24, type: 28, op: 30, flags: 32, bufAlloc: 36, fwdCnt: 40 } as const;

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
  dv.setBigUint64(AT.srcCid, c.srcCid, true);
  dv.setBigUint64(AT.dstCid, c.dstCid, true);
  putFields(dv, 0, c.srcPort, c.dstPort, c.len, c.type, c.op, c.flags, c.bufAlloc, c.fwdCnt);
}

/**
 * @internal The guest's per-packet path: writes a header at byte `at` of
 * `dv` (one DataView kept per buffer pool), no checks, no allocation. CIDs
 * are numbers (the kernel's are u32; any integer below 2^64 gives the bytes
 * writeVsockHeader writes for BigInt(cid)).
 */
export function putVsockHeader(dv: DataView, at: number, srcCid: number, dstCid: number, srcPort: number, dstPort: number, len: number, type: number, op: number, flags: number, bufAlloc: number, fwdCnt: number): void {
  setCid(dv, at + AT.srcCid, srcCid);
  setCid(dv, at + AT.dstCid, dstCid);
  putFields(dv, at, srcPort, dstPort, len, type, op, flags, bufAlloc, fwdCnt);
}

/** The header after the two CIDs. */
function putFields(dv: DataView, at: number, srcPort: number, dstPort: number, len: number, type: number, op: number, flags: number, bufAlloc: number, fwdCnt: number): void {
  dv.setUint32(at + AT.srcPort, srcPort, true);
  dv.setUint32(at + AT.dstPort, dstPort, true);
  dv.setUint32(at + AT.len, len, true);
  dv.setUint16(at + AT.type, type, true);
  dv.setUint16(at + AT.op, op, true);
  dv.setUint32(at + AT.flags, flags, true);
  dv.setUint32(at + AT.bufAlloc, bufAlloc, true);
  dv.setUint32(at + AT.fwdCnt, fwdCnt, true);
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

/**
 * @internal Allocation-free access to the packets in one buffer (every slot
 * of a buffer pool, say): at() points it at one packet, then the getters read
 * the header, payloadLength / copyPayload() the payload, and writeHeader() /
 * writePayload() fill the packet in. One view serves the whole buffer; no
 * object is made per packet. CIDs are numbers, as in putVsockHeader.
 */
export class VsockPacketView {
  readonly #dv: DataView;
  readonly #bytes: Uint8Array;
  #at = 0;
  #size = VSOCK_HDR_SIZE;

  constructor(buf: Uint8Array) {
    if (!(buf instanceof Uint8Array) || buf.length < VSOCK_HDR_SIZE) throw invalidArg('buf', `must be a Uint8Array of at least ${VSOCK_HDR_SIZE} bytes`);
    this.#bytes = buf;
    this.#dv = new DataView(buf.buffer, buf.byteOffset, buf.length);
  }

  /**
   * Points the view at the packet in bytes [offset, offset + size): the
   * bytes a descriptor holds (received) or may hold (to send). Throws
   * ERR_VHOST_OUT_OF_RANGE when that is outside the buffer or shorter than a header.
   */
  at(offset: number, size: number): this {
    if (!(offset >= 0 && size >= VSOCK_HDR_SIZE && offset + size <= this.#bytes.length)) {
      throw invalidArg('offset', `${offset} with size ${size} is not a packet inside the ${this.#bytes.length}-byte buffer`, 'ERR_VHOST_OUT_OF_RANGE');
    }
    this.#at = offset;
    this.#size = size;
    return this;
  }

  get srcCid(): number {
    return getVsockCid(this.#dv, this.#at + AT.srcCid);
  }

  get dstCid(): number {
    return getVsockCid(this.#dv, this.#at + AT.dstCid);
  }

  get srcPort(): number {
    return this.#dv.getUint32(this.#at + AT.srcPort, true);
  }

  get dstPort(): number {
    return this.#dv.getUint32(this.#at + AT.dstPort, true);
  }

  /** The header's len field, as the sender claims it (see payloadLength). */
  get len(): number {
    return this.#dv.getUint32(this.#at + AT.len, true);
  }

  get type(): number {
    return this.#dv.getUint16(this.#at + AT.type, true);
  }

  get op(): number {
    return this.#dv.getUint16(this.#at + AT.op, true);
  }

  get flags(): number {
    return this.#dv.getUint32(this.#at + AT.flags, true);
  }

  get bufAlloc(): number {
    return this.#dv.getUint32(this.#at + AT.bufAlloc, true);
  }

  get fwdCnt(): number {
    return this.#dv.getUint32(this.#at + AT.fwdCnt, true);
  }

  /** Payload bytes present: len, bounded by what the buffer holds after the header (a peer may claim more). */
  get payloadLength(): number {
    return Math.min(this.len, this.#size - VSOCK_HDR_SIZE);
  }

  /** The payload (payloadLength bytes) copied out: the buffer is reused once the packet is handled. */
  copyPayload(): Buffer {
    const start = this.#at + VSOCK_HDR_SIZE;
    return Buffer.from(this.#bytes.subarray(start, start + this.payloadLength));
  }

  /** Payload bytes the packet can hold: its size less the header. */
  get payloadRoom(): number {
    return this.#size - VSOCK_HDR_SIZE;
  }

  /** Writes the header (fields not range-checked, as putVsockHeader). */
  writeHeader(srcCid: number, dstCid: number, srcPort: number, dstPort: number, len: number, type: number, op: number, flags: number, bufAlloc: number, fwdCnt: number): void {
    putVsockHeader(this.#dv, this.#at, srcCid, dstCid, srcPort, dstPort, len, type, op, flags, bufAlloc, fwdCnt);
  }

  /** Copies src[start, end) in as the payload; the caller keeps it within payloadRoom. */
  writePayload(src: Uint8Array, start: number, end: number): void {
    this.#bytes.set(src.subarray(start, end), this.#at + VSOCK_HDR_SIZE);
  }
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
    srcCid: dv.getBigUint64(AT.srcCid, true),
    dstCid: dv.getBigUint64(AT.dstCid, true),
    srcPort: dv.getUint32(AT.srcPort, true),
    dstPort: dv.getUint32(AT.dstPort, true),
    len: dv.getUint32(AT.len, true),
    type: dv.getUint16(AT.type, true),
    op: dv.getUint16(AT.op, true),
    flags: dv.getUint32(AT.flags, true),
    bufAlloc: dv.getUint32(AT.bufAlloc, true),
    fwdCnt: dv.getUint32(AT.fwdCnt, true),
  };
}
