// virtio_vsock_hdr codec: round trips for every field value, the layout of
// linux/virtio_vsock.h (offsets, little-endian), range errors; the
// allocation-free VsockPacketView against the codec (both ways, any offset,
// payload bounded by the buffer); and the
// VirtioVsockGuest option checks that run before any syscall (SEQPACKET
// feature choice, connect options: type, timeout, signal).
import fc from 'fast-check';
import { features } from '../../../lib/core/features';
import { decodeVsockHeader, encodeVsockHeader, getVsockCid, putVsockHeader, VSOCK_HDR_SIZE, VSOCK_OP, VSOCK_SEQ, VSOCK_SHUTDOWN, VSOCK_TYPE, VsockPacketView, writeVsockHeader, type VsockHeader } from '../../../lib/virtio/vsock-packet';
import { checkGuestConnectOptions, planVirtioVsockGuest, vsockGuestFeatures } from '../../../lib/guest/vsock';
import { thrown } from '../../support/helpers';

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const header: fc.Arbitrary<VsockHeader> = fc.record({
  srcCid: u64, dstCid: u64, srcPort: u32, dstPort: u32, len: u32, type: u16, op: u16, flags: u32, bufAlloc: u32, fwdCnt: u32,
});

describe('virtio_vsock_hdr codec', () => {
  test('decode(encode(h)) is h for every header', () => {
    fc.assert(fc.property(header, (h) => {
      const buf = encodeVsockHeader(h);
      expect(buf.length).toBe(VSOCK_HDR_SIZE);
      expect(decodeVsockHeader(buf)).toEqual(h);
    }));
  });

  test('encode(decode(bytes)) is bytes for every 44 bytes, at any offset', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 44, maxLength: 44 }), fc.nat(16), (bytes, pad) => {
      const framed = new Uint8Array(pad + 44 + 3);
      framed.set(bytes, pad);
      const h = decodeVsockHeader(framed, pad);
      expect(Buffer.from(encodeVsockHeader(h)).equals(Buffer.from(bytes))).toBe(true);
      const out = new Uint8Array(pad + 44);
      writeVsockHeader(out, pad, h);
      expect(Buffer.from(out.subarray(pad)).equals(Buffer.from(bytes))).toBe(true);
    }));
  });

  // The guest's path: one DataView over a pool, header at a slot's offset, CIDs as numbers.
  const putInPool = (h: VsockHeader, srcCid: number, dstCid: number, at: number): Buffer => {
    const pool = new Uint8Array(at + VSOCK_HDR_SIZE + 5).fill(0xa5);
    putVsockHeader(new DataView(pool.buffer, 3, pool.length - 3), at - 3, srcCid, dstCid, h.srcPort, h.dstPort, h.len, h.type, h.op, h.flags, h.bufAlloc, h.fwdCnt);
    expect(pool.subarray(0, at).every((b) => b === 0xa5) && pool.subarray(at + VSOCK_HDR_SIZE).every((b) => b === 0xa5)).toBe(true);
    return Buffer.from(pool.subarray(at, at + VSOCK_HDR_SIZE));
  };

  test('the fast path writes the bytes of encodeVsockHeader, CIDs as numbers', () => {
    const cid = fc.oneof(u32.map(BigInt), fc.bigInt({ min: 0n, max: BigInt(Number.MAX_SAFE_INTEGER) }));
    fc.assert(fc.property(header, cid, cid, fc.integer({ min: 3, max: 4096 }), (h, srcCid, dstCid, at) => {
      const exact = { ...h, srcCid, dstCid };
      expect(putInPool(exact, Number(srcCid), Number(dstCid), at).equals(encodeVsockHeader(exact))).toBe(true);
    }), { numRuns: 1000 });
    // Above 2^53 a number CID is what Number() made of the bigint: the bytes writeVsockHeader writes for BigInt(Number(cid)), 2^64 wrapping to 0.
    fc.assert(fc.property(header, (h) => {
      const rounded = Buffer.alloc(VSOCK_HDR_SIZE);
      writeVsockHeader(rounded, 0, { ...h, srcCid: BigInt.asUintN(64, BigInt(Number(h.srcCid))), dstCid: BigInt.asUintN(64, BigInt(Number(h.dstCid))) });
      expect(putInPool(h, Number(h.srcCid), Number(h.dstCid), 44).equals(rounded)).toBe(true);
    }), { numRuns: 1000 });
    const h0: VsockHeader = { srcCid: 0n, dstCid: 0n, srcPort: 1, dstPort: 2, len: 0, type: 1, op: 1, flags: 0, bufAlloc: 0, fwdCnt: 0 };
    expect(putInPool(h0, 2 ** 64, 2 ** 64 - 2 ** 11, 44).readBigUInt64LE(0)).toBe(0n);
    expect(putInPool(h0, 2 ** 64, 2 ** 64 - 2 ** 11, 44).readBigUInt64LE(8)).toBe(2n ** 64n - 2n ** 11n);
  });

  test('the fast path reads the CIDs decodeVsockHeader reads, as numbers', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 44, maxLength: 44 }), fc.nat(4096), (bytes, at) => {
      const pool = new Uint8Array(at + 44 + 3);
      pool.set(bytes, at);
      const dv = new DataView(pool.buffer);
      const h = decodeVsockHeader(pool, at);
      expect(getVsockCid(dv, at)).toBe(Number(h.srcCid));
      expect(getVsockCid(dv, at + 8)).toBe(Number(h.dstCid));
    }), { numRuns: 1000 });
    const le64 = (v: bigint) => new DataView(new BigUint64Array([v]).buffer);
    for (const v of [0n, 3n, 0xffff_ffffn, 1n << 32n, (1n << 53n) - 1n, (1n << 64n) - 1n]) expect(getVsockCid(le64(v), 0)).toBe(Number(v));
  });

  test('fields sit at the offsets of linux/virtio_vsock.h, little-endian', () => {
    const buf = encodeVsockHeader({
      srcCid: 0x0102030405060708n, dstCid: 2n, srcPort: 0x11223344, dstPort: 1234, len: 5, type: VSOCK_TYPE.STREAM,
      op: VSOCK_OP.SHUTDOWN, flags: VSOCK_SHUTDOWN.RCV | VSOCK_SHUTDOWN.SEND, bufAlloc: 262144, fwdCnt: 0xdeadbeef,
    });
    expect(buf.subarray(0, 8)).toEqual(Buffer.from([8, 7, 6, 5, 4, 3, 2, 1]));
    expect(buf.readBigUInt64LE(8)).toBe(2n);
    expect(buf.readUInt32LE(16)).toBe(0x11223344);
    expect(buf.readUInt32LE(20)).toBe(1234);
    expect(buf.readUInt32LE(24)).toBe(5);
    expect(buf.readUInt16LE(28)).toBe(1);
    expect(buf.readUInt16LE(30)).toBe(4);
    expect(buf.readUInt32LE(32)).toBe(3);
    expect(buf.readUInt32LE(36)).toBe(262144);
    expect(buf.readUInt32LE(40)).toBe(0xdeadbeef);
  });

  test('the enums match the kernel uapi values', () => {
    expect(VSOCK_TYPE).toEqual({ STREAM: 1, SEQPACKET: 2 });
    expect(VSOCK_OP).toEqual({ INVALID: 0, REQUEST: 1, RESPONSE: 2, RST: 3, SHUTDOWN: 4, RW: 5, CREDIT_UPDATE: 6, CREDIT_REQUEST: 7 });
    expect(VSOCK_SHUTDOWN).toEqual({ RCV: 1, SEND: 2 });
    expect(VSOCK_SEQ).toEqual({ EOM: 1, EOR: 2 }); // enum virtio_vsock_rw
  });

  test('a SEQPACKET RW header keeps EOM / EOR in the flags word at offset 32', () => {
    const h: VsockHeader = { srcCid: 3n, dstCid: 2n, srcPort: 49152, dstPort: 5000, len: 4097, type: VSOCK_TYPE.SEQPACKET, op: VSOCK_OP.RW, flags: VSOCK_SEQ.EOM | VSOCK_SEQ.EOR, bufAlloc: 65536, fwdCnt: 7 };
    const buf = encodeVsockHeader(h);
    expect(buf.readUInt16LE(28)).toBe(2);
    expect(buf.readUInt32LE(32)).toBe(3);
    expect(decodeVsockHeader(buf)).toEqual(h);
    const middle = decodeVsockHeader(encodeVsockHeader({ ...h, flags: 0 }));
    expect(middle.flags & VSOCK_SEQ.EOM).toBe(0);
    expect(decodeVsockHeader(encodeVsockHeader({ ...h, flags: VSOCK_SEQ.EOM })).flags).toBe(VSOCK_SEQ.EOM);
  });

  test('out-of-range fields and short buffers are refused with ERR_VHOST_OUT_OF_RANGE', () => {
    const ok: VsockHeader = { srcCid: 3n, dstCid: 2n, srcPort: 1, dstPort: 2, len: 0, type: 1, op: 1, flags: 0, bufAlloc: 0, fwdCnt: 0 };
    expect(thrown(() => encodeVsockHeader({ ...ok, srcPort: 2 ** 32 })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => encodeVsockHeader({ ...ok, op: -1 })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => encodeVsockHeader({ ...ok, dstCid: 1n << 64n })).message).toMatch(/header\.dstCid/);
    expect(thrown(() => decodeVsockHeader(new Uint8Array(43))).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => decodeVsockHeader(new Uint8Array(50), 7)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
  });
});

describe('VsockPacketView (the per-packet reader and writer)', () => {
  // The view's CIDs are numbers: exact up to 2^53 (the kernel's are u32).
  const safeCid = fc.oneof(u32.map(BigInt), fc.bigInt({ min: 0n, max: BigInt(Number.MAX_SAFE_INTEGER) }));
  const safeHeader = fc.record({ h: header, srcCid: safeCid, dstCid: safeCid }).map(({ h, srcCid, dstCid }) => ({ ...h, srcCid, dstCid }));
  const fields = (v: VsockPacketView) => ({
    srcCid: BigInt(v.srcCid), dstCid: BigInt(v.dstCid), srcPort: v.srcPort, dstPort: v.dstPort, len: v.len,
    type: v.type, op: v.op, flags: v.flags, bufAlloc: v.bufAlloc, fwdCnt: v.fwdCnt,
  });

  test('reads every field encodeVsockHeader wrote, at any offset of a larger buffer', () => {
    fc.assert(fc.property(safeHeader, fc.nat(300), fc.nat(64), (h, at, tail) => {
      const buf = new Uint8Array(at + VSOCK_HDR_SIZE + tail).fill(0x5a);
      buf.set(encodeVsockHeader(h), at);
      expect(fields(new VsockPacketView(buf).at(at, VSOCK_HDR_SIZE + tail))).toEqual(h);
    }), { numRuns: 1000 });
  });

  test('reads above 2^53 what getVsockCid reads: Number() of the wire value', () => {
    fc.assert(fc.property(header, (h) => {
      const v = new VsockPacketView(encodeVsockHeader(h)).at(0, VSOCK_HDR_SIZE);
      expect(v.srcCid).toBe(Number(h.srcCid));
      expect(v.dstCid).toBe(Number(h.dstCid));
    }));
  });

  test('writeHeader writes the bytes of encodeVsockHeader and nothing outside the header; the view reads them back', () => {
    fc.assert(fc.property(safeHeader, fc.nat(300), (h, at) => {
      const buf = new Uint8Array(at + VSOCK_HDR_SIZE + 9).fill(0xa5);
      const v = new VsockPacketView(buf).at(at, VSOCK_HDR_SIZE + 9);
      v.writeHeader(Number(h.srcCid), Number(h.dstCid), h.srcPort, h.dstPort, h.len, h.type, h.op, h.flags, h.bufAlloc, h.fwdCnt);
      expect(Buffer.from(buf.subarray(at, at + VSOCK_HDR_SIZE)).equals(encodeVsockHeader(h))).toBe(true);
      expect(buf.subarray(0, at).every((b) => b === 0xa5) && buf.subarray(at + VSOCK_HDR_SIZE).every((b) => b === 0xa5)).toBe(true);
      expect(decodeVsockHeader(buf, at)).toEqual(h);
      expect(fields(v)).toEqual(h);
    }), { numRuns: 1000 });
  });

  test('the payload is len bytes when the buffer holds them, else what it holds; copyPayload() is a copy', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), u32, fc.nat(40), (payload, len, at) => {
      const buf = new Uint8Array(at + VSOCK_HDR_SIZE + payload.length + 3);
      buf.set(payload, at + VSOCK_HDR_SIZE);
      const v = new VsockPacketView(buf).at(at, VSOCK_HDR_SIZE + payload.length);
      v.writeHeader(3, 2, 1, 2, len, VSOCK_TYPE.STREAM, VSOCK_OP.RW, 0, 0, 0);
      const n = Math.min(len, payload.length);
      expect(v.payloadLength).toBe(n);
      expect(v.payloadRoom).toBe(payload.length);
      const copy = v.copyPayload();
      expect(copy.equals(Buffer.from(payload.subarray(0, n)))).toBe(true);
      buf.fill(0xff, at + VSOCK_HDR_SIZE);
      expect(copy.equals(Buffer.from(payload.subarray(0, n)))).toBe(true);
    }));
  });

  test('writePayload copies a range of its source after the header', () => {
    const buf = new Uint8Array(100);
    const v = new VsockPacketView(buf).at(10, 60);
    v.writePayload(Buffer.from('0123456789'), 3, 7);
    expect(Buffer.from(buf.subarray(10 + VSOCK_HDR_SIZE, 10 + VSOCK_HDR_SIZE + 5)).toString('latin1')).toBe('3456\0');
  });

  test('at() refuses a packet outside the buffer or shorter than a header with ERR_VHOST_OUT_OF_RANGE', () => {
    const v = new VsockPacketView(new Uint8Array(100));
    expect(thrown(() => v.at(57, VSOCK_HDR_SIZE)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => v.at(0, VSOCK_HDR_SIZE - 1)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => v.at(-1, VSOCK_HDR_SIZE)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => v.at(Number.NaN, VSOCK_HDR_SIZE)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(v.at(56, VSOCK_HDR_SIZE).payloadRoom).toBe(0);
    expect(thrown(() => new VsockPacketView(new Uint8Array(43))).code).toBe('ERR_VHOST_INVALID_ARG');
  });
});

describe('planVirtioVsockGuest (validation before any syscall)', () => {
  test('defaults', () => {
    expect(planVirtioVsockGuest()).toEqual({ cid: 'auto', queueSize: 128, bufferSize: 32768, bufAlloc: 262144, seqpacket: 'offered' });
    expect(planVirtioVsockGuest({ cid: 42, queueSize: 64, bufferSize: 4096, bufAlloc: 65536, seqpacket: false })).toEqual({ cid: 42, queueSize: 64, bufferSize: 4096, bufAlloc: 65536, seqpacket: false });
  });

  test('refuses reserved CIDs, bad sizes and unknown options, naming the option', () => {
    for (const cid of [0, 1, 2, 0xffff_ffff]) expect(thrown(() => planVirtioVsockGuest({ cid })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => planVirtioVsockGuest({ queueSize: 100 })).message).toMatch(/options\.queueSize/);
    expect(thrown(() => planVirtioVsockGuest({ bufferSize: 65537 })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => planVirtioVsockGuest({ bufAlloc: 1.5 })).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => planVirtioVsockGuest({ port: 1 } as never)).message).toMatch(/options\.port is not a VirtioVsockGuest option/);
    expect(thrown(() => planVirtioVsockGuest({ seqpacket: 'yes' } as never)).message).toMatch(/options\.seqpacket/);
  });

  test('SEQPACKET is acked when offered unless refused; required and not offered is ERR_VHOST_UNSUPPORTED', () => {
    const base = features.ring.VERSION_1 | features.ring.RING_EVENT_IDX;
    const offer = base | features.vsock.SEQPACKET;
    expect(vsockGuestFeatures({ seqpacket: 'offered' }, offer)).toBe(offer);
    expect(vsockGuestFeatures({ seqpacket: 'offered' }, base)).toBe(base);
    expect(vsockGuestFeatures({ seqpacket: true }, offer)).toBe(offer);
    expect(vsockGuestFeatures({ seqpacket: false }, offer)).toBe(base);
    const err = thrown(() => vsockGuestFeatures({ seqpacket: true }, base));
    expect(err.code).toBe('ERR_VHOST_UNSUPPORTED');
    expect(err.message).toMatch(/options\.seqpacket/);
  });

  test('connect options: defaults, type, timeout and signal checked like lib/vsock/socket.ts', () => {
    expect(checkGuestConnectOptions({ port: 1 })).toEqual({ port: 1, cid: 2, allowHalfOpen: false, type: 'stream', timeout: undefined, signal: undefined });
    const signal = new AbortController().signal;
    expect(checkGuestConnectOptions({ port: 9, cid: 7, type: 'seqpacket', timeout: 50, signal })).toEqual({ port: 9, cid: 7, allowHalfOpen: false, type: 'seqpacket', timeout: 50, signal });
    expect(thrown(() => checkGuestConnectOptions({ port: 1, type: 'dgram' })).message).toMatch(/options\.type/);
    expect(thrown(() => checkGuestConnectOptions({ port: 1, timeout: 0 })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => checkGuestConnectOptions({ port: 1, timeout: 2 ** 31 })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => checkGuestConnectOptions({ port: 1, timeout: 1.5 })).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => checkGuestConnectOptions({ port: 1, signal: {} })).message).toMatch(/options\.signal must be an AbortSignal/);
    expect(thrown(() => checkGuestConnectOptions({ port: 1, allowHalfOpen: 1 })).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => checkGuestConnectOptions(null)).code).toBe('ERR_VHOST_INVALID_ARG');
  });
});
