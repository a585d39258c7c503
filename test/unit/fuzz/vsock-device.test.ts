// Fuzzing the device side of virtio-vsock (lib/device/vsock): a hostile guest
// sends random packets (headers biased towards the values that reach deep
// into the dispatcher: its own CID, the host, a sibling, listening ports,
// every op and type, lengths that lie) while the host side and a sibling guest
// behave. Checked after every packet: nothing throws, connections stay within
// maxConnections, queued receive data within buf_alloc; every packet the
// device hands a guest is well-formed (its CID as destination, len equal to
// the bytes written, a known op, a known type unless an RST echoes the refused one), and the RSTs waiting stay bounded.
// LINUX_VHOST_FUZZ_RUNS=N raises the runs; LINUX_VHOST_FUZZ_SEED=random varies the seed.
import fc from 'fast-check';
import { VsockDeviceBackend } from '../../../lib/device/vsock/backend';
import type { VirtioVsockConnection } from '../../../lib/guest/vsock-connection';
import { decodeVsockHeader, encodeVsockHeader, VSOCK_HDR_SIZE } from '../../../lib/virtio/vsock-packet';
import { fuzzParams } from '../../support/hostile';

const GUEST = 3;
const SIBLING = 4;
const BUF_ALLOC = 8192;
const MAX_CONNS = 16;

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const cid = fc.oneof(fc.constantFrom(GUEST, GUEST, GUEST, 2, SIBLING, 0, 1, 0xffff_ffff), u32);
const port = fc.oneof(fc.constantFrom(80, 81, 5000), fc.integer({ min: 1000, max: 1040 }), u32);
const packet = fc.record({
  srcCid: cid, dstCid: cid, srcPort: port, dstPort: port,
  type: fc.oneof(fc.constantFrom(1, 2), fc.integer({ min: 0, max: 0xffff })),
  op: fc.oneof(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 0xffff })),
  flags: fc.oneof(fc.constantFrom(0, 1, 2, 3), u32),
  bufAlloc: fc.oneof(fc.constantFrom(0, 4096, 65536), u32),
  fwdCnt: fc.oneof(fc.constant(0), u32),
  payload: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 3000 })),
  /** How len relates to the payload: truthful, a lie, or huge. */
  lenMode: fc.constantFrom('true', 'true', 'true', 'short', 'long', 'huge'),
  /** Bytes cut off the end (a descriptor shorter than the packet). */
  cut: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 60 })),
});

/** Packets of a guest that mostly keeps the rules (its CID, listening ports, truthful lengths): they open connections the hostile ones then hit. */
const friendly = fc.record({
  srcCid: fc.constant(GUEST), dstCid: fc.constantFrom(2, 2, SIBLING), srcPort: fc.integer({ min: 1000, max: 1003 }), dstPort: fc.constantFrom(80, 81, 5000),
  type: fc.constantFrom(1, 2), op: fc.constantFrom(1, 1, 5, 5, 5, 4, 6, 7, 3), flags: fc.constantFrom(0, 1, 2, 3),
  bufAlloc: fc.constantFrom(4096, 65536), fwdCnt: fc.constant(0), payload: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 3000 })),
  lenMode: fc.constant('true'), cut: fc.constant(0),
});
const anyPacket = fc.oneof(packet, friendly);

type Packet = typeof packet extends fc.Arbitrary<infer T> ? T : never;

function encode(p: Packet): Buffer {
  const len = p.lenMode === 'true' ? p.payload : p.lenMode === 'short' ? Math.max(0, p.payload - 1) : p.lenMode === 'long' ? p.payload + 1 : 0xffff_ffff;
  const h = encodeVsockHeader({ srcCid: BigInt(p.srcCid), dstCid: BigInt(p.dstCid), srcPort: p.srcPort, dstPort: p.dstPort, len, type: p.type, op: p.op, flags: p.flags, bufAlloc: p.bufAlloc, fwdCnt: p.fwdCnt });
  const b = Buffer.concat([h, Buffer.alloc(p.payload, 0xab)]);
  return b.subarray(0, Math.max(0, b.length - p.cut));
}

test('a hostile guest cannot break the device: bounded state, well-formed output, no throw', () => {
  let checked = 0;
  let accepted = 0; // the fuzz must reach established connections, not only the early checks
  fc.assert(
    fc.property(fc.array(anyPacket, { minLength: 1, maxLength: 60 }), fc.integer({ min: 0, max: 3 }), (pkts, drainEvery) => {
      const backend = new VsockDeviceBackend({ bufAlloc: BUF_ALLOC, maxConnections: MAX_CONNS, maxRefusals: 32 });
      const hostConns: VirtioVsockConnection[] = [];
      try {
        const guest = backend.attach(GUEST, { wake: () => {} });
        const sibling = backend.attach(SIBLING, { wake: () => {} });
        backend.allow({ from: GUEST, to: SIBLING, port: 5000 });
        backend.listen(80, {}, (c) => {
          hostConns.push(c);
          c.on('error', () => {});
          c.pause(); // a slow reader: data must stay within the credit
        });
        backend.listen(81, { type: 'seqpacket' }, (c) => {
          hostConns.push(c);
          c.on('error', () => {});
          c.pipe(c);
        });
        const out = Buffer.alloc(VSOCK_HDR_SIZE + 1024);
        const drain = (ch: typeof guest, want: number): void => {
          for (let i = 0; i < 200; i++) {
            const n = ch.nextPacket(out);
            if (n === 0) return;
            expect(n).toBeGreaterThanOrEqual(VSOCK_HDR_SIZE);
            expect(n).toBeLessThanOrEqual(out.length);
            const h = decodeVsockHeader(out);
            expect(h.dstCid).toBe(BigInt(want));
            expect(h.len).toBe(n - VSOCK_HDR_SIZE);
            expect(h.op).toBeGreaterThanOrEqual(1);
            expect(h.op).toBeLessThanOrEqual(7);
            // An RST echoes the refused packet's type, as the kernel's virtio_transport_reset_no_sock does; anything else is a real type.
            if (h.op !== 3) expect([1, 2]).toContain(h.type);
          }
        };
        pkts.forEach((p, i) => {
          guest.receive(encode(p));
          expect(guest.connections).toBeLessThanOrEqual(MAX_CONNS);
          expect(sibling.connections).toBeLessThanOrEqual(MAX_CONNS);
          for (const c of hostConns) expect(c.receiveQueued).toBeLessThanOrEqual(BUF_ALLOC);
          if (drainEvery > 0 && i % drainEvery === 0) drain(guest, GUEST);
          drain(sibling, SIBLING);
        });
        drain(guest, GUEST);
        accepted += hostConns.length;
        const s = guest.stats;
        expect(s.rxPackets).toBe(pkts.length);
        expect(s.spoofed).toBe(pkts.filter((p) => p.srcCid !== GUEST && encode(p).length >= VSOCK_HDR_SIZE).length);
        checked++;
      } finally {
        backend.close();
      }
      expect(backend.guests).toEqual([]);
    }),
    fuzzParams(300),
  );
  expect(checked).toBeGreaterThan(0);
  expect(accepted).toBeGreaterThan(0);
});
