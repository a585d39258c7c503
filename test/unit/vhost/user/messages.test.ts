// The vhost-user codec: every payload round-trips, the sizes match the spec's
// layouts, and no input (however hostile) makes a decoder throw anything but
// ERR_VHOST_USER_PROTOCOL naming the message.
import * as fc from 'fast-check';
import { VhostError } from '../../../../lib/core/errors';
import {
  checkReplyHeader, decodeConfig, decodeHeader, decodeInflight, decodeLog, decodeMemTable, decodeU64, decodeVringAddr, decodeVringFdPayload,
  decodeVringState, encodeConfig, encodeHeader, encodeInflight, encodeLog, encodeMemTable, encodeMessage, encodeU64, encodeVringAddr,
  encodeVringState, FLAG_NEED_REPLY, FLAG_REPLY, HEADER_SIZE, MAX_MEM_REGIONS, requestName, VERSION, vringFdPayload, VhostUserRequest,
} from '../../../../lib/vhost/user/messages';

const u32 = fc.nat({ max: 0xffff_ffff });
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const region = fc.record({ gpa: u64, size: u64, userAddr: u64, mmapOffset: u64 });

function protocolCode(fn: () => unknown): { code?: string; step?: string } | 'no throw' {
  try {
    fn();
    return 'no throw';
  } catch (err) {
    if (!(err instanceof VhostError)) throw err; // anything else fails the property
    return { code: err.code, step: err.step };
  }
}

describe('vhost-user messages: layouts', () => {
  test('header: request, flags, size as little-endian u32s', () => {
    const h = encodeHeader({ request: VhostUserRequest.GET_FEATURES, flags: VERSION | FLAG_NEED_REPLY, size: 8 });
    expect([...h]).toEqual([1, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0]);
  });

  test('SET_VRING_ADDR is index, flags, desc, used, avail, log (40 bytes)', () => {
    const b = encodeVringAddr({ index: 1, flags: 1, desc: 0x10n, used: 0x20n, avail: 0x30n, log: 0x40n });
    expect(b.length).toBe(40);
    expect([b.readUInt32LE(0), b.readUInt32LE(4), b.readBigUInt64LE(8), b.readBigUInt64LE(16), b.readBigUInt64LE(24), b.readBigUInt64LE(32)]).toEqual([1, 1, 0x10n, 0x20n, 0x30n, 0x40n]);
  });

  test('memory table: count, padding, then 32-byte regions; at most 8', () => {
    const b = encodeMemTable([{ gpa: 1n, size: 2n, userAddr: 3n, mmapOffset: 4n }]);
    expect(b.length).toBe(8 + 32);
    expect([b.readUInt32LE(0), b.readUInt32LE(4), b.readBigUInt64LE(8), b.readBigUInt64LE(32)]).toEqual([1, 0, 1n, 4n]);
    const nine = new Array(9).fill({ gpa: 0n, size: 0n, userAddr: 0n, mmapOffset: 0n });
    expect(protocolCode(() => encodeMemTable(nine))).toEqual({ code: 'ERR_VHOST_USER_PROTOCOL', step: 'SET_MEM_TABLE' });
  });

  test('SET_VRING_KICK payload: index in bits 0-7, NOFD is bit 8', () => {
    expect(decodeU64(vringFdPayload(3, true))).toBe(3n);
    expect(decodeU64(vringFdPayload(3, false))).toBe(0x103n);
    expect(decodeVringFdPayload(vringFdPayload(255, false))).toEqual({ index: 255, noFd: true });
    expect(protocolCode(() => vringFdPayload(256, true))).toMatchObject({ code: 'ERR_VHOST_USER_PROTOCOL' });
    expect(protocolCode(() => decodeVringFdPayload(encodeU64(0x200n)))).toMatchObject({ code: 'ERR_VHOST_USER_PROTOCOL' });
  });

  test('config: offset, size, flags, then size bytes', () => {
    const b = encodeConfig({ offset: 0, flags: 0, data: new Uint8Array(60) });
    expect(b.length).toBe(72);
    expect(b.readUInt32LE(4)).toBe(60);
  });

  test('message = header + payload with the payload size in the header', () => {
    const m = encodeMessage(VhostUserRequest.SET_FEATURES, VERSION, encodeU64(5n));
    expect(m.length).toBe(HEADER_SIZE + 8);
    expect(decodeHeader(m.subarray(0, HEADER_SIZE))).toEqual({ request: 2, flags: 1, size: 8 });
  });

  test('names: known requests by name, others by number', () => {
    expect(requestName(24)).toBe('GET_CONFIG');
    expect(requestName(999)).toBe('request 999');
  });
});

describe('vhost-user messages: strict reply checks', () => {
  const ok = (s: number) => s === 8;
  test.each([
    ['wrong request type', { request: VhostUserRequest.GET_PROTOCOL_FEATURES, flags: VERSION | FLAG_REPLY, size: 8 }, /answered with GET_PROTOCOL_FEATURES/],
    ['no REPLY flag', { request: VhostUserRequest.GET_FEATURES, flags: VERSION, size: 8 }, /reply flags 0x1/],
    ['extra flag bits', { request: VhostUserRequest.GET_FEATURES, flags: VERSION | FLAG_REPLY | FLAG_NEED_REPLY, size: 8 }, /reply flags 0xd/],
    ['wrong size', { request: VhostUserRequest.GET_FEATURES, flags: VERSION | FLAG_REPLY, size: 4 }, /payload of 4 bytes/],
  ])('%s → ERR_VHOST_USER_PROTOCOL naming GET_FEATURES', (_, header, message) => {
    let err: VhostError | undefined;
    try {
      checkReplyHeader(header, VhostUserRequest.GET_FEATURES, ok, '8 bytes');
    } catch (e) {
      err = e as VhostError;
    }
    expect(err).toBeInstanceOf(VhostError);
    expect({ code: err!.code, step: err!.step }).toEqual({ code: 'ERR_VHOST_USER_PROTOCOL', step: 'GET_FEATURES' });
    expect(err!.message).toMatch(message);
  });

  test('a header with a version other than 1, or a payload past the bound, is refused', () => {
    expect(protocolCode(() => decodeHeader(encodeHeader({ request: 1, flags: 2 | FLAG_REPLY, size: 8 })))).toMatchObject({ code: 'ERR_VHOST_USER_PROTOCOL' });
    expect(protocolCode(() => decodeHeader(encodeHeader({ request: 1, flags: 5, size: 1 << 20 })))).toMatchObject({ code: 'ERR_VHOST_USER_PROTOCOL' });
    expect(protocolCode(() => decodeHeader(new Uint8Array(11)))).toMatchObject({ code: 'ERR_VHOST_USER_PROTOCOL' });
  });
});

describe('vhost-user messages: properties', () => {
  test('every payload round-trips', () => {
    fc.assert(
      fc.property(
        u64,
        fc.record({ index: u32, num: u32 }),
        fc.record({ index: u32, flags: u32, desc: u64, used: u64, avail: u64, log: u64 }),
        fc.array(region, { maxLength: MAX_MEM_REGIONS }),
        fc.record({ size: u64, offset: u64 }),
        fc.record({ offset: u32, flags: u32, data: fc.uint8Array({ maxLength: 256 }) }),
        fc.record({ mmapSize: u64, mmapOffset: u64, numQueues: fc.nat({ max: 0xffff }), queueSize: fc.nat({ max: 0xffff }) }),
        (v, state, addr, regions, log, config, inflight) => {
          expect(decodeU64(encodeU64(v))).toBe(v);
          expect(decodeVringState(encodeVringState(state))).toEqual(state);
          expect(decodeVringAddr(encodeVringAddr(addr))).toEqual(addr);
          expect(decodeMemTable(encodeMemTable(regions))).toEqual(regions);
          expect(decodeLog(encodeLog(log))).toEqual(log);
          const back = decodeConfig(encodeConfig(config));
          expect({ ...back, data: [...back.data] }).toEqual({ ...config, data: [...config.data] });
          expect(decodeInflight(encodeInflight(inflight))).toEqual(inflight);
          const h = { request: state.index, flags: ((state.num & ~3) | VERSION) >>> 0, size: state.num % 4097 };
          expect(decodeHeader(encodeHeader(h))).toEqual(h);
        },
      ),
    );
  });

  test('garbage never makes a decoder throw anything but ERR_VHOST_USER_PROTOCOL', () => {
    const decoders = [decodeHeader, decodeU64, decodeVringState, decodeVringAddr, decodeMemTable, decodeLog, decodeConfig, decodeInflight, decodeVringFdPayload];
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), fc.nat({ max: decoders.length - 1 }), (bytes, k) => {
        const r = protocolCode(() => decoders[k](bytes));
        if (r !== 'no throw') expect(r.code).toBe('ERR_VHOST_USER_PROTOCOL');
      }),
      { numRuns: 5000 },
    );
    // Headers that claim any size and flags: checkReplyHeader too.
    fc.assert(
      fc.property(u32, u32, u32, (request, flags, size) => {
        const r = protocolCode(() => {
          const h = decodeHeader(encodeHeader({ request, flags, size }));
          checkReplyHeader(h, VhostUserRequest.GET_VRING_BASE, (s) => s === 8, '8 bytes');
        });
        if (r !== 'no throw') expect(r.code).toBe('ERR_VHOST_USER_PROTOCOL');
      }),
      { numRuns: 2000 },
    );
  });

  test('a memory table with a count that disagrees with its size is refused', () => {
    fc.assert(
      fc.property(fc.array(region, { minLength: 1, maxLength: MAX_MEM_REGIONS }), fc.integer({ min: 1, max: 31 }), (regions, cut) => {
        const b = encodeMemTable(regions);
        expect(protocolCode(() => decodeMemTable(b.subarray(0, b.length - cut)))).toMatchObject({ code: 'ERR_VHOST_USER_PROTOCOL' });
      }),
    );
  });
});
