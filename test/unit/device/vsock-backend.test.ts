// The device-side vsock engine (VsockDeviceBackend) against the library's own
// guest protocol engine (VirtioVsockConnection) through an in-memory packet
// pipe: no rings, no AF_VSOCK. Hostile guests are played with raw headers.
import { randomBytes } from 'node:crypto';
import { VsockDeviceBackend } from '../../../lib/device/vsock/backend';
import type { VirtioVsockConnection } from '../../../lib/guest/vsock-connection';
import { encodeVsockHeader, VSOCK_HDR_SIZE, VSOCK_OP, VSOCK_SEQ, VSOCK_TYPE } from '../../../lib/virtio/vsock-packet';
import { collect, errorOf, sha256, thrown, waitFor } from '../../support/helpers';
import { PipeGuest } from '../../support/vsock-pipe';

let backend: VsockDeviceBackend;
beforeEach(() => {
  backend = new VsockDeviceBackend({ bufAlloc: 65536 });
});
afterEach(() => backend.close());

const connected = (c: VirtioVsockConnection): Promise<void> => new Promise((r, j) => {
  c.once('connect', r);
  c.once('error', j);
});

/** A raw packet from guest `src` as a hostile guest writes it. */
function raw(h: Partial<{ srcCid: number; dstCid: number; srcPort: number; dstPort: number; len: number; type: number; op: number; flags: number; bufAlloc: number; fwdCnt: number }>, payload = Buffer.alloc(0)): Buffer {
  const hdr = encodeVsockHeader({
    srcCid: BigInt(h.srcCid ?? 3), dstCid: BigInt(h.dstCid ?? 2), srcPort: h.srcPort ?? 5000, dstPort: h.dstPort ?? 1234,
    len: h.len ?? payload.length, type: h.type ?? VSOCK_TYPE.STREAM, op: h.op ?? VSOCK_OP.REQUEST, flags: h.flags ?? 0, bufAlloc: h.bufAlloc ?? 65536, fwdCnt: h.fwdCnt ?? 0,
  });
  return Buffer.concat([hdr, payload]);
}

describe('host ↔ guest streams', () => {
  test('backend.connect() reaches a guest listener; 4 MiB each way arrive intact through the credit window', async () => {
    const guest = new PipeGuest(backend, 3, { bufAlloc: 65536 });
    const up = randomBytes(4 << 20);
    const down = randomBytes(4 << 20);
    let guestGot: Promise<Buffer> = Promise.resolve(Buffer.alloc(0));
    guest.listen(1234, (c) => {
      guestGot = collect(c);
      c.end(down);
    });
    const h = backend.connect({ cid: 3, port: 1234 });
    await connected(h);
    expect(h.remoteAddress).toEqual({ cid: 3, port: 1234 });
    expect(h.localAddress.cid).toBe(2);
    const hostGot = collect(h);
    h.end(up);
    expect(sha256(await hostGot)).toBe(sha256(down));
    expect(sha256(await guestGot)).toBe(sha256(up));
    expect(guest.channel.stats.creditViolations).toBe(0);
  });

  test('a guest connects to a host listener (backend.listen) and half-closes', async () => {
    const guest = new PipeGuest(backend, 3);
    const l = backend.listen(7000, { allowHalfOpen: true });
    const accepted = new Promise<VirtioVsockConnection>((r) => l.once('connection', r));
    const g = guest.connect(2, 7000);
    await connected(g);
    const h = await accepted;
    expect(h.remoteAddress).toEqual({ cid: 3, port: g.localAddress.port });
    const got = collect(h);
    g.end('from the guest');
    expect((await got).toString()).toBe('from the guest');
    h.end('and back');
    expect((await collect(g)).toString()).toBe('and back');
  });

  test('SEQPACKET: message boundaries survive both ways (messages larger than one packet too)', async () => {
    const guest = new PipeGuest(backend, 3, { packetSize: 1024 });
    const l = backend.listen(7001, { type: 'seqpacket' });
    const accepted = new Promise<VirtioVsockConnection>((r) => l.once('connection', r));
    const g = guest.connect(2, 7001, 'seqpacket');
    await connected(g);
    const h = await accepted;
    const msgs = [Buffer.from('a'), randomBytes(5000), Buffer.from('bc'), randomBytes(1024)];
    const hostMsgs: Buffer[] = [];
    h.on('data', (m: Buffer) => hostMsgs.push(m));
    for (const m of msgs) g.write(m);
    await waitFor('4 messages at the host', () => hostMsgs.length === 4);
    expect(hostMsgs.map(sha256)).toEqual(msgs.map(sha256));
    const guestMsgs: Buffer[] = [];
    g.on('data', (m: Buffer) => guestMsgs.push(m));
    for (const m of msgs.slice().reverse()) h.write(m);
    await waitFor('4 messages in the guest', () => guestMsgs.length === 4);
    expect(guestMsgs.map(sha256)).toEqual(msgs.slice().reverse().map(sha256));
  });

  test('nothing listens: the guest connect is refused (RST), and the host connect gets ECONNREFUSED', async () => {
    const guest = new PipeGuest(backend, 3);
    expect((await errorOf(guest.connect(2, 9))).code).toBe('ECONNREFUSED');
    expect((await errorOf(backend.connect({ cid: 3, port: 9 }))).code).toBe('ECONNREFUSED');
    expect(backend.guest(3)!.stats.resetsSent).toBeGreaterThan(0);
  });

  test('a listener of the other type refuses; a back-end without SEQPACKET refuses seqpacket packets', async () => {
    const guest = new PipeGuest(backend, 3);
    backend.listen(7002, { type: 'stream' });
    expect((await errorOf(guest.connect(2, 7002, 'seqpacket'))).code).toBe('ECONNREFUSED');
    const plain = new VsockDeviceBackend({ seqpacket: false });
    try {
      const g2 = new PipeGuest(plain, 4);
      expect((await errorOf(g2.connect(2, 7002, 'seqpacket'))).code).toBe('ECONNREFUSED');
      expect(thrown(() => plain.listen(1, { type: 'seqpacket' })).code).toBe('ERR_VHOST_UNSUPPORTED');
    } finally {
      plain.close();
    }
  });

  test('CIDs are unique per back-end; connect to an unknown CID throws ENODEV; use after close throws', () => {
    new PipeGuest(backend, 3);
    expect(thrown(() => new PipeGuest(backend, 3)).code).toBe('EADDRINUSE');
    expect(thrown(() => backend.attach(2, { wake: () => {} })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => backend.connect({ cid: 9, port: 1 })).code).toBe('ENODEV');
    backend.listen(5);
    expect(thrown(() => backend.listen(5)).code).toBe('EADDRINUSE');
    backend.close();
    expect(thrown(() => backend.listen(6)).code).toBe('ERR_VHOST_CLOSED');
  });

  test('transport reset (guest detached, e.g. its QEMU died): host streams fail with ECONNRESET and the reason; other guests keep working', async () => {
    const a = new PipeGuest(backend, 3);
    const b = new PipeGuest(backend, 4);
    a.listen(1, (c) => c.resume());
    b.listen(1, (c) => c.pipe(c));
    const ha = backend.connect({ cid: 3, port: 1 });
    const hb = backend.connect({ cid: 4, port: 1 });
    await Promise.all([connected(ha), connected(hb)]);
    const err = errorOf(ha);
    backend.detach(3, "guest 3's front-end disconnected");
    const e = await err;
    expect(e.code).toBe('ECONNRESET');
    expect(e.message).toContain("guest 3's front-end disconnected");
    hb.write('still here');
    const got = await new Promise<Buffer>((r) => hb.once('data', r));
    expect(got.toString()).toBe('still here');
    expect(backend.guests).toEqual([4]);
  });
});

describe('a hostile guest', () => {
  test('packets shorter than a header, or whose len runs past the buffer or 64 KiB: dropped and counted', () => {
    const g = new PipeGuest(backend, 3);
    g.sendRaw(Buffer.alloc(10));
    g.sendRaw(raw({ op: VSOCK_OP.RW, len: 100 }, Buffer.alloc(10)));
    g.sendRaw(raw({ op: VSOCK_OP.RW, len: 0x1_0001 }, Buffer.alloc(0x1_0001)));
    g.sendRaw(raw({ op: VSOCK_OP.RW, len: 0xffff_ffff }));
    expect(g.channel.stats.malformed).toBe(4);
  });

  test('a malformed packet on an established connection resets it: host side ECONNRESET, RST to the guest', async () => {
    const g = new PipeGuest(backend, 3);
    const l = backend.listen(80);
    const accepted = new Promise<VirtioVsockConnection>((r) => l.once('connection', r));
    const c = g.connect(2, 80);
    await connected(c);
    const h = await accepted;
    const hostErr = errorOf(h);
    const guestErr = errorOf(c);
    g.sendRaw(raw({ srcPort: c.localAddress.port, dstPort: 80, op: VSOCK_OP.RW, len: 500 }, Buffer.alloc(10)));
    expect((await hostErr).message).toMatch(/malformed/);
    expect((await guestErr).code).toBe('ECONNRESET');
  });

  test('src_cid of another guest (spoofing): dropped, counted, never answered, never reaches the spoofed guest', async () => {
    const g = new PipeGuest(backend, 3);
    const victim = new PipeGuest(backend, 4);
    backend.listen(80).on('connection', () => {
      throw new Error('a spoofed REQUEST was accepted');
    });
    g.sendRaw(raw({ srcCid: 4, op: VSOCK_OP.REQUEST, dstPort: 80 }));
    g.sendRaw(raw({ srcCid: 4, dstCid: 4, op: VSOCK_OP.RW }, Buffer.from('x')));
    await new Promise((r) => setImmediate(r));
    expect(g.channel.stats.spoofed).toBe(2);
    expect(g.channel.hasPackets).toBe(false);
    expect(victim.received).toEqual([]);
  });

  test('a guest sending past the credit granted: the connection is reset and counted; memory held stays within buf_alloc', async () => {
    const g = new PipeGuest(backend, 3);
    const l = backend.listen(81);
    const accepted = new Promise<VirtioVsockConnection>((r) => l.once('connection', r));
    const c = g.connect(2, 81);
    await connected(c);
    const h = await accepted;
    h.pause(); // the host reads nothing: the guest must stop at buf_alloc
    const hostErr = errorOf(h);
    const chunk = Buffer.alloc(4096);
    for (let i = 0; i < 17; i++) g.sendRaw(raw({ srcPort: c.localAddress.port, dstPort: 81, op: VSOCK_OP.RW }, chunk)); // 68 KiB > 64 KiB
    expect(g.channel.stats.creditViolations).toBe(1);
    expect((await hostErr).code).toBe('ECONNRESET');
    expect(h.receiveQueued).toBe(0);
  });

  test('a flood of REQUESTs: at most maxConnections are held, the rest get RST and are counted', async () => {
    const small = new VsockDeviceBackend({ maxConnections: 8, maxRefusals: 4 });
    try {
      const g = new PipeGuest(small, 3);
      g.receiving = false; // the guest posts no RX buffers: RSTs must not pile up either
      small.listen(80, {}, (c) => c.resume());
      for (let p = 0; p < 1000; p++) g.sendRaw(raw({ srcPort: 10_000 + p, dstPort: 80 }));
      expect(g.channel.connections).toBe(8);
      expect(g.channel.stats.connectionLimit).toBe(992);
      expect(g.channel.stats.refusalsDropped).toBe(992 - 4);
    } finally {
      small.close();
    }
  });

  test('unknown ops and types, packets for nobody: RST (never to an RST)', () => {
    const g = new PipeGuest(backend, 3);
    g.receiving = false;
    g.sendRaw(raw({ op: 99 }));
    g.sendRaw(raw({ type: 7 }));
    g.sendRaw(raw({ op: VSOCK_OP.RW }, Buffer.from('x')));
    g.sendRaw(raw({ op: VSOCK_OP.RST }));
    g.sendRaw(raw({ op: VSOCK_OP.REQUEST, dstCid: 77 }));
    const out = Buffer.alloc(VSOCK_HDR_SIZE + 64);
    const ops: number[] = [];
    while (g.channel.nextPacket(out) > 0) ops.push(out.readUInt16LE(30));
    expect(ops).toEqual([VSOCK_OP.RST, VSOCK_OP.RST, VSOCK_OP.RST, VSOCK_OP.RST]);
  });

  test('EOM framing from a raw guest: a message split over packets arrives whole at the host', async () => {
    const g = new PipeGuest(backend, 3);
    const l = backend.listen(82, { type: 'seqpacket' });
    const accepted = new Promise<VirtioVsockConnection>((r) => l.once('connection', r));
    const c = g.connect(2, 82, 'seqpacket');
    await connected(c);
    const h = await accepted;
    const got: Buffer[] = [];
    h.on('data', (m: Buffer) => got.push(m));
    const base = { srcPort: c.localAddress.port, dstPort: 82, op: VSOCK_OP.RW, type: VSOCK_TYPE.SEQPACKET };
    g.sendRaw(raw(base, Buffer.from('hel')));
    g.sendRaw(raw({ ...base, flags: VSOCK_SEQ.EOM | VSOCK_SEQ.EOR }, Buffer.from('lo')));
    g.sendRaw(raw({ ...base, flags: VSOCK_SEQ.EOM }, Buffer.from('!')));
    await waitFor('two messages', () => got.length === 2);
    expect(got.map(String)).toEqual(['hello', '!']);
  });
});

describe('routing between guests', () => {
  test('denied by default (RST, counted); allowed per CID and port: a stream both ways', async () => {
    const a = new PipeGuest(backend, 3);
    const b = new PipeGuest(backend, 4);
    b.listen(5000, (c) => c.pipe(c));
    b.listen(5001, (c) => c.pipe(c));
    expect((await errorOf(a.connect(4, 5000))).code).toBe('ECONNREFUSED');
    expect(a.channel.stats.routeDenied).toBe(1);
    backend.allow({ from: 3, to: 4, port: 5000 });
    expect((await errorOf(a.connect(4, 5001))).code).toBe('ECONNREFUSED');
    expect((await errorOf(b.connect(3, 5000))).code).toBe('ECONNREFUSED'); // the rule has a direction
    const c = a.connect(4, 5000);
    await connected(c);
    const data = randomBytes(1 << 20);
    const back = collect(c);
    c.end(data);
    expect(sha256(await back)).toBe(sha256(data));
    backend.disallow(3, 4);
    expect((await errorOf(a.connect(4, 5000))).code).toBe('ECONNREFUSED');
  });

  test('a routed request to a guest port nobody listens on is refused; SEQPACKET is routed message by message', async () => {
    const a = new PipeGuest(backend, 3);
    const b = new PipeGuest(backend, 4);
    backend.allow({ from: 3, to: 4 });
    expect((await errorOf(a.connect(4, 1))).code).toBe('ECONNREFUSED');
    b.listen(2, (c) => c.pipe(c), 'seqpacket');
    const c = a.connect(4, 2, 'seqpacket');
    await connected(c);
    const got: Buffer[] = [];
    c.on('data', (m: Buffer) => got.push(m));
    c.write('one');
    c.write('two');
    await waitFor('two echoed messages', () => got.length === 2);
    expect(got.map(String)).toEqual(['one', 'two']);
  });

  test('a guest cannot route to itself or to an unknown CID', async () => {
    const a = new PipeGuest(backend, 3);
    a.listen(1, () => {});
    backend.allow({ from: 3, to: 3 });
    expect((await errorOf(a.connect(3, 1))).code).toBe('ECONNREFUSED');
    expect((await errorOf(a.connect(99, 1))).code).toBe('ECONNREFUSED');
  });
});
