// VirtioVsockGuest against the real vhost-vsock, inside the test VM only:
// host Node AF_VSOCK sockets (lib/vsock/socket.ts) talk to the userspace guest.
// Bulk transfer both ways with a hash, half-close both directions, close and
// reset as the host kernel sees them, 100 concurrent connections, credit
// flow control with slow readers on either side (no loss, bounded
// buffering), refused connections both ways, connect timeout and AbortSignal
// (RST sent, no entry left), and two guests with cid 'auto' in one process.
// Bulk is the 64 MiB each way (~10 s per test in the TCG VM);
// LINUX_VHOST_TEST_VSOCK_MB changes it.
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { VirtioVsockGuest, type VirtioVsockConnection } from '../../../lib/guest/vsock';
import * as vsock from '../../../lib/vsock/socket';
import type { VsockServer, VsockSocket } from '../../../lib/vsock/socket';
import { collect, describeKernel, errorOf, sha256, sleep, thrown, vsockAfterEach, waitFor } from '../../support/helpers';

jest.setTimeout(120_000);

const MB = Number(process.env.LINUX_VHOST_TEST_VSOCK_MB ?? 64);
const BULK = Math.max(1, Math.round(MB * 1024 * 1024));

/** Writes `data` in 64 KiB pieces honouring backpressure, then ends. */
async function writeAll(stream: NodeJS.WritableStream & NodeJS.EventEmitter, data: Buffer): Promise<void> {
  for (let off = 0; off < data.length; off += 65536) {
    if (!stream.write(data.subarray(off, off + 65536))) await once(stream, 'drain');
  }
  stream.end();
}

describeKernel('VirtioVsockGuest over vhost-vsock', ['/dev/vhost-vsock', '/dev/vsock'], () => {
  const { guests, servers, sockets } = vsockAfterEach();
  const guest = (): VirtioVsockGuest => {
    const g = VirtioVsockGuest.create({ cid: 'auto' });
    guests.push(g);
    return g;
  };

  async function hostServer(allowHalfOpen = false): Promise<{ server: VsockServer; port: number }> {
    const server = vsock.createServer({ allowHalfOpen });
    servers.push(server);
    server.on('connection', (s: VsockSocket) => sockets.push(s));
    server.listen({ cid: vsock.VMADDR_CID_ANY });
    await once(server, 'listening');
    return { server, port: server.address()!.port };
  }

  function hostConnect(cid: number, port: number, allowHalfOpen = false): VsockSocket {
    const s = vsock.connect({ cid, port, timeout: 20_000, allowHalfOpen });
    sockets.push(s);
    return s;
  }

  test('guest connect → host server: bulk both ways with sha256, half-close each direction', async () => {
    const g = guest();
    const { server, port } = await hostServer(true);
    const up = randomBytes(BULK);
    const down = randomBytes(BULK);
    const hostSide = (async () => {
      const [s] = (await once(server, 'connection')) as [VsockSocket];
      expect(s.remoteAddress).toEqual({ cid: g.cid, port: expect.any(Number) });
      const got = await collect(s); // 'end' = the guest's SHUTDOWN(SEND); the host may still write
      await writeAll(s, down);
      return got;
    })();
    const c = g.connect({ port, allowHalfOpen: true });
    await once(c, 'connect');
    expect(c.remoteAddress).toEqual({ cid: 2, port });
    expect(c.localAddress.cid).toBe(g.cid);
    const received = collect(c);
    const t0 = Date.now();
    await writeAll(c, up);
    const atHost = await hostSide;
    const atGuest = await received;
    const secs = (Date.now() - t0) / 1000;
    expect(sha256(atHost)).toBe(sha256(up));
    expect(sha256(atGuest)).toBe(sha256(down));
    expect(c.bytesWritten).toBe(BULK);
    expect(c.bytesRead).toBe(BULK);
    console.log(`guest→host→guest ${(2 * BULK) / 1048576} MiB in ${secs.toFixed(2)} s: ${((2 * BULK) / 1048576 / secs).toFixed(1)} MiB/s`);
    await waitFor('guest connection closed', () => c.destroyed, 20_000);
    await waitFor('connection table empty', () => g.connections === 0, 20_000);
  });

  test('host connect → guest listener: bulk both ways with sha256, half-close each direction', async () => {
    const g = guest();
    const up = randomBytes(BULK);
    const down = randomBytes(BULK);
    const guestSide = new Promise<Buffer>((resolve, reject) => {
      g.listen(5000, (conn) => {
        expect(conn.remoteAddress.cid).toBe(2);
        collect(conn).then(async (got) => {
          await writeAll(conn, down); // after the host's SHUTDOWN(SEND): the other direction still works
          resolve(got);
        }, reject);
      }, { allowHalfOpen: true });
    });
    const h = hostConnect(g.cid, 5000, true);
    await once(h, 'connect');
    expect(h.remoteAddress).toEqual({ cid: g.cid, port: 5000 });
    const received = collect(h);
    const t0 = Date.now();
    await writeAll(h, up);
    const atGuest = await guestSide;
    const atHost = await received;
    const secs = (Date.now() - t0) / 1000;
    expect(sha256(atGuest)).toBe(sha256(up));
    expect(sha256(atHost)).toBe(sha256(down));
    console.log(`host→guest→host ${(2 * BULK) / 1048576} MiB in ${secs.toFixed(2)} s: ${((2 * BULK) / 1048576 / secs).toFixed(1)} MiB/s`);
    await waitFor('host socket closed', () => h.destroyed, 20_000);
    await waitFor('connection table empty', () => g.connections === 0, 20_000);
  });

  test('guest end() → host sees end; guest destroy() → host sees end, no error; guest close() → host ECONNRESET from the kernel', async () => {
    const g = guest();
    const accepted: VirtioVsockConnection[] = [];
    g.listen(5001, (conn) => {
      accepted.push(conn);
      conn.on('error', () => undefined);
      conn.resume();
    });
    const a = hostConnect(g.cid, 5001);
    await once(a, 'connect');
    await waitFor('accept', () => accepted.length === 1, 20_000);
    accepted[0].end(Buffer.from('bye'));
    expect((await collect(a)).toString()).toBe('bye');
    await waitFor('both ends closed', () => a.destroyed && accepted[0].destroyed, 20_000);

    const b = hostConnect(g.cid, 5001);
    await once(b, 'connect');
    await waitFor('accept', () => accepted.length === 2, 20_000);
    const bData = collect(b);
    accepted[1].write('x', () => accepted[1].destroy()); // destroy() drops unsent data, as net does
    expect((await bData).toString()).toBe('x');
    await waitFor('host socket closed', () => b.destroyed, 20_000);

    const c = hostConnect(g.cid, 5001);
    c.on('data', () => undefined);
    await once(c, 'connect');
    await waitFor('accept', () => accepted.length === 3, 20_000);
    const cErr = errorOf(c);
    g.close();
    expect(g.closed).toBe(true);
    expect(accepted[2].destroyed).toBe(true);
    expect((await cErr).code).toBe('ECONNRESET');
  });

  test('slow guest reader stalls the host writer without loss; buffering stays within bufAlloc', async () => {
    const g = guest();
    let conn: VirtioVsockConnection | undefined;
    g.listen(5002, (c) => {
      conn = c;
      c.pause();
    });
    const h = hostConnect(g.cid, 5002);
    await once(h, 'connect');
    const data = randomBytes(Math.max(BULK, 2 * 1024 * 1024));
    const writing = writeAll(h, data);
    await waitFor('accept', () => conn !== undefined, 20_000);
    await waitFor('data queued at the guest', () => conn!.receiveQueued > 0, 20_000);
    await sleep(500);
    const queued = conn!.receiveQueued;
    expect(queued).toBeLessThanOrEqual(g.bufAlloc);
    expect(conn!.bytesRead + queued).toBeLessThan(data.length); // the host is stalled
    await sleep(300);
    expect(conn!.receiveQueued).toBe(queued); // and stays stalled: no credit, no data
    const got = collect(conn!);
    conn!.resume();
    await writing;
    expect(sha256(await got)).toBe(sha256(data));
    expect(g.stats.creditUpdatesSent).toBeGreaterThan(0);
  });

  test('slow host reader stalls the guest writer (credit exhausted) without loss', async () => {
    const g = guest();
    const { server, port } = await hostServer();
    const accepted = once(server, 'connection');
    const c = g.connect({ port });
    await once(c, 'connect');
    const [s] = (await accepted) as [VsockSocket];
    s.pause();
    const data = randomBytes(Math.max(BULK, 2 * 1024 * 1024));
    const writing = writeAll(c, data);
    await waitFor('guest out of credit', () => g.stats.creditStalls > 0, 20_000);
    await sleep(300);
    const sent = c.bytesWritten;
    expect(sent).toBeLessThan(data.length);
    expect(sent).toBeLessThanOrEqual(512 * 1024); // the host's buf_alloc bounds what is in flight
    await sleep(300);
    expect(c.bytesWritten).toBe(sent);
    const got = collect(s);
    s.resume();
    await writing;
    expect(sha256(await got)).toBe(sha256(data));
  });

  test('refused connections: guest → host port nobody listens on, host → guest port nobody listens on', async () => {
    const g = guest();
    const { server, port } = await hostServer();
    server.close(); // that port is free again: nothing listens
    const c = g.connect({ port });
    const err = await errorOf(c);
    expect(err.code).toBe('ECONNREFUSED');
    expect(c.destroyed).toBe(true);
    const h = hostConnect(g.cid, 6999);
    const herr = await errorOf(h);
    expect(herr.code).toBe('ECONNRESET'); // Linux reports the guest's RST this way
    expect(g.connections).toBe(0);
  });

  // vhost-vsock delivers guest packets only when addressed to the host (CID 2)
  // and silently drops the rest (vhost_vsock_handle_tx_kick), so a REQUEST to
  // any other CID is never answered: a deterministic way to wait forever.
  const SILENT_CID = 0x7fff_fff0;

  test('connect timeout: no answer → ETIMEDOUT, RST sent, no entry left', async () => {
    const g = guest();
    const before = g.stats;
    const t0 = Date.now();
    const c = g.connect({ cid: SILENT_CID, port: 1234, timeout: 300 });
    expect(g.connections).toBe(1);
    const err = await errorOf(c);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(err.code).toBe('ETIMEDOUT');
    expect(c.destroyed).toBe(true);
    expect(g.connections).toBe(0);
    await waitFor('RST after the REQUEST', () => g.stats.resetsSent === before.resetsSent + 1, 20_000);
    expect(g.stats.txPackets - before.txPackets).toBe(2); // REQUEST, RST
  });

  test('connect signal: abort while connecting, before connecting and once connected → AbortError (ABORT_ERR)', async () => {
    const g = guest();
    const before = g.stats;
    const ac = new AbortController();
    const c = g.connect({ cid: SILENT_CID, port: 1234, signal: ac.signal, timeout: 20_000 });
    const cErr = errorOf(c);
    await waitFor('REQUEST sent', () => g.stats.txPackets === before.txPackets + 1, 20_000);
    ac.abort();
    const err = await cErr;
    expect(err.name).toBe('AbortError');
    expect(err.code).toBe('ABORT_ERR');
    expect(g.connections).toBe(0);
    await waitFor('RST after the REQUEST', () => g.stats.resetsSent === before.resetsSent + 1, 20_000);

    const early = g.connect({ port: 1234, signal: AbortSignal.abort() });
    expect((await errorOf(early)).code).toBe('ABORT_ERR');
    await sleep(50);
    expect(g.stats.txPackets).toBe(before.txPackets + 2); // nothing sent for it
    expect(g.connections).toBe(0);

    const { server, port } = await hostServer();
    const accepted = once(server, 'connection');
    const ac2 = new AbortController();
    const live = g.connect({ port, signal: ac2.signal, timeout: 20_000 });
    await once(live, 'connect');
    const [s] = (await accepted) as [VsockSocket];
    const atHost = collect(s);
    const liveErr = errorOf(live);
    ac2.abort();
    expect((await liveErr).code).toBe('ABORT_ERR');
    expect((await atHost).length).toBe(0); // the guest's RST: Linux reports it as end of stream
    expect(g.connections).toBe(0);
  });

  test('100 concurrent host connections to one guest listener, each echoed intact', async () => {
    const g = guest();
    g.listen(5003, (conn) => conn.pipe(conn));
    const results = await Promise.all(Array.from({ length: 100 }, async (_, i) => {
      const payload = randomBytes(1024 + i);
      const h = hostConnect(g.cid, 5003);
      const echoed = collect(h);
      h.end(payload);
      return (await echoed).equals(payload);
    }));
    expect(results.filter((ok) => ok)).toHaveLength(100);
    await waitFor('every connection closed', () => g.connections === 0, 20_000);
  });

  test("two guests with cid 'auto' get different CIDs and are both reachable", async () => {
    const g1 = guest();
    const g2 = guest();
    expect(g1.cid).toBeGreaterThanOrEqual(3);
    expect(g2.cid).not.toBe(g1.cid);
    for (const g of [g1, g2]) g.listen(7000, (conn) => conn.end(`cid ${g.cid}`));
    for (const g of [g1, g2]) {
      const h = hostConnect(g.cid, 7000);
      expect((await collect(h)).toString()).toBe(`cid ${g.cid}`);
    }
  });

  test('validation and use after close', () => {
    const g = guest();
    g.listen(7001, () => undefined);
    expect(thrown(() => g.listen(7001, () => undefined)).code).toBe('EADDRINUSE');
    expect(thrown(() => g.connect({ port: 0x1_0000_0000 })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => VirtioVsockGuest.create({ queueSize: 3 })).code).toBe('ERR_VHOST_INVALID_ARG');
    g.close();
    g.close();
    expect(thrown(() => g.connect({ port: 1 })).code).toBe('ERR_VHOST_CLOSED');
    expect(thrown(() => g.listen(1, () => undefined)).code).toBe('ERR_VHOST_CLOSED');
  });
});
