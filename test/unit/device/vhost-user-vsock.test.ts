// VhostUserVsock on real split rings in shared memory, without QEMU: the
// driver side is this library's Virtqueue over a memfd (playing the guest's
// virtio-vsock driver with hand-written packets), the device side the native
// DeviceQueue over a second mapping, as the vhost-user back-end hands them to
// the device (VhostUserRing). Checked: config space gives the CID, a guest
// REQUEST on the TX ring reaches a host listener and the RESPONSE lands in a
// posted RX buffer, data flows both ways, a stopped ring resets the host side.
import { EventFd } from '../../../lib/core/eventfd';
import { features as F } from '../../../lib/core/features';
import { VsockDeviceBackend } from '../../../lib/device/vsock/backend';
import { VhostUserVsock, VHOST_USER_VSOCK_RX, VHOST_USER_VSOCK_TX } from '../../../lib/device/vsock/vhost-user-vsock';
import type { VirtioVsockConnection } from '../../../lib/guest/vsock-connection';
import { VhostUserRing } from '../../../lib/vhost/user/backend-ring';
import { decodeVsockHeader, encodeVsockHeader, VSOCK_HDR_SIZE, VSOCK_OP, VSOCK_TYPE } from '../../../lib/virtio/vsock-packet';
import { errorOf, waitFor } from '../../support/helpers';
import { BUFS, ringPair, type RingPair } from '../../support/device-ring';

const CID = 7;
const SLOT = 2048;

let vsock: VsockDeviceBackend;
let dev: VhostUserVsock;
let pairs: RingPair[];
let calls: EventFd[];
let rings: VhostUserRing[];

beforeEach(() => {
  vsock = new VsockDeviceBackend();
  dev = new VhostUserVsock(vsock, { cid: CID });
  pairs = [ringPair({ size: 64 }), ringPair({ size: 64 })];
  calls = [EventFd.create(), EventFd.create()];
  rings = pairs.map((p, i) => new VhostUserRing(i, p.queue, { call: calls[i], err: null, kick: null }, () => {}));
  dev.startQueue(rings[VHOST_USER_VSOCK_RX]);
  dev.startQueue(rings[VHOST_USER_VSOCK_TX]);
});
afterEach(() => {
  vsock.close();
  for (const p of pairs) p.close();
  for (const c of calls) c.close();
});

/** The guest driver posts `n` writable RX buffers. */
function postRx(n: number, base = 0): void {
  const rx = pairs[VHOST_USER_VSOCK_RX];
  rx.driver.post(Array.from({ length: n }, (_, i) => [{ gpa: BUFS + BigInt((base + i) * SLOT), len: SLOT, writable: true }]));
}

let txSlot = 0;
/** The guest driver sends one packet on the TX ring and kicks the device. */
function sendTx(h: { srcPort: number; dstPort: number; op: number; fwdCnt?: number }, payload = Buffer.alloc(0)): void {
  const tx = pairs[VHOST_USER_VSOCK_TX];
  const gpa = BUFS + BigInt((64 + (txSlot++ % 64)) * SLOT);
  const pkt = Buffer.concat([encodeVsockHeader({
    srcCid: BigInt(CID), dstCid: 2n, srcPort: h.srcPort, dstPort: h.dstPort, len: payload.length, type: VSOCK_TYPE.STREAM, op: h.op, flags: 0, bufAlloc: 65536, fwdCnt: h.fwdCnt ?? 0,
  }), payload]);
  tx.mem.view(gpa, pkt.length).set(pkt);
  tx.driver.post([[{ gpa, len: pkt.length }]]);
  dev.kick(rings[VHOST_USER_VSOCK_TX]);
}

test('config space holds the CID (le64 guest_cid); offered features include SEQPACKET and EVENT_IDX; two rings', () => {
  const cfg = Buffer.from(dev.readConfig(0, 8));
  expect(cfg.readBigUInt64LE(0)).toBe(BigInt(CID));
  expect(Buffer.from(dev.readConfig(4, 8))).toEqual(Buffer.from([0, 0, 0, 0, 0, 0, 0, 0]));
  expect(dev.features & F.vsock.SEQPACKET).toBe(F.vsock.SEQPACKET);
  expect(dev.features & F.ring.RING_EVENT_IDX).toBe(F.ring.RING_EVENT_IDX);
  expect(dev.queues).toBe(2);
  expect(() => new VhostUserVsock(vsock, { cid: CID })).toThrow(/EADDRINUSE/);
});

test('a guest REQUEST on the TX ring reaches a host listener; RESPONSE and data land in posted RX buffers; host data reaches the guest', async () => {
  const rx = pairs[VHOST_USER_VSOCK_RX];
  const heads = new Map<number, bigint>();
  rx.driver.post(Array.from({ length: 8 }, (_, i) => [{ gpa: BUFS + BigInt(i * SLOT), len: SLOT, writable: true }])).forEach((h, i) => heads.set(h, BUFS + BigInt(i * SLOT)));
  dev.kick(rings[VHOST_USER_VSOCK_RX]);
  const l = vsock.listen(80);
  const accepted = new Promise<VirtioVsockConnection>((r) => l.once('connection', r));
  sendTx({ srcPort: 5555, dstPort: 80, op: VSOCK_OP.REQUEST });
  const host = await accepted;
  expect(host.remoteAddress).toEqual({ cid: CID, port: 5555 });
  const got: { op: number; payload: string }[] = [];
  const pull = (): void => {
    for (const u of rx.driver.collect()) {
      const bytes = Buffer.from(rx.mem.view(heads.get(u.head)!, u.len));
      const h = decodeVsockHeader(bytes);
      expect(h.dstCid).toBe(BigInt(CID));
      got.push({ op: h.op, payload: bytes.subarray(VSOCK_HDR_SIZE, VSOCK_HDR_SIZE + h.len).toString() });
    }
  };
  await waitFor('the RESPONSE in an RX buffer', () => {
    pull();
    return got.some((p) => p.op === VSOCK_OP.RESPONSE);
  });
  const hostData = new Promise<Buffer>((r) => host.once('data', r));
  sendTx({ srcPort: 5555, dstPort: 80, op: VSOCK_OP.RW }, Buffer.from('from the guest driver'));
  expect((await hostData).toString()).toBe('from the guest driver');
  host.write('from the host');
  await waitFor('the host data in an RX buffer', () => {
    pull();
    return got.some((p) => p.op === VSOCK_OP.RW && p.payload === 'from the host');
  });
  expect(rings[VHOST_USER_VSOCK_RX].calls).toBeGreaterThan(0); // the driver was interrupted
});

test('a stopped ring (QEMU gone, guest reset) resets the host streams with the reason', async () => {
  postRx(4);
  dev.kick(rings[VHOST_USER_VSOCK_RX]);
  const l = vsock.listen(81);
  const accepted = new Promise<VirtioVsockConnection>((r) => l.once('connection', r));
  sendTx({ srcPort: 6000, dstPort: 81, op: VSOCK_OP.REQUEST });
  const host = await accepted;
  const err = errorOf(host);
  dev.stopQueue(rings[VHOST_USER_VSOCK_TX]);
  const e = await err;
  expect(e.code).toBe('ECONNRESET');
  expect(e.message).toMatch(/rings of guest 7 stopped/);
  expect(dev.ready).toBe(false);
});

test('a malformed chain from the guest (shorter than a header) is counted, the ring keeps running', () => {
  const tx = pairs[VHOST_USER_VSOCK_TX];
  const gpa = BUFS + BigInt(200 * SLOT);
  tx.mem.view(gpa, 10).fill(0);
  tx.driver.post([[{ gpa, len: 10 }]]);
  dev.kick(rings[VHOST_USER_VSOCK_TX]);
  expect(dev.channel.stats.malformed).toBe(1);
  expect(rings[VHOST_USER_VSOCK_TX].running).toBe(true);
  expect(tx.driver.collect().length).toBe(1); // the chain was given back
});
