// VirtioVsockGuest SEQPACKET against the real vhost-vsock (test VM only): the
// feature is negotiated from the device's offer; host Node seqpacket sockets
// (lib/vsock/socket.ts) and guest seqpacket connections exchange messages both ways
// with boundaries kept (1 B, 4 KiB, bufferSize + 1 and larger, which travel
// as several packets with EOM on the last); type mismatches are refused as
// the kernel decides; a message above the peer's buf_alloc fails on both sides
// (EMSGSIZE at the guest, ENOMEM from the 6.1 host kernel); a guest without
// the feature is refused by the host kernel and by the API.
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { VirtioVsockGuest, type VirtioVsockConnection } from '../../../lib/guest/vsock';
import * as vsock from '../../../lib/vsock/socket';
import type { VsockServer, VsockSocket, VsockType } from '../../../lib/vsock/socket';
import { describeKernel, errorOf, thrown, vsockAfterEach, waitFor } from '../../support/helpers';

jest.setTimeout(60_000);

const BUFFER_SIZE = 4096;
const BUF_ALLOC = 65536;
/** 1 B, one buffer, one buffer + 1 (two packets), several packets; 21 KiB in all, within BUF_ALLOC. */
const SIZES = [1, 4096, BUFFER_SIZE + 1, 100, 3 * BUFFER_SIZE + 17];

/** The next `n` chunks (messages) a stream yields. */
function messages(stream: NodeJS.EventEmitter, n: number): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    const onData = (m: Buffer) => {
      got.push(m);
      if (got.length === n) {
        stream.off('data', onData);
        resolve(got);
      }
    };
    stream.on('data', onData);
    stream.once('error', reject);
  });
}

describeKernel('VirtioVsockGuest SEQPACKET over vhost-vsock', ['/dev/vhost-vsock', '/dev/vsock'], () => {
  const { guests, servers, sockets } = vsockAfterEach();
  const guest = (options: { seqpacket?: boolean } = {}): VirtioVsockGuest => {
    const g = VirtioVsockGuest.create({ cid: 'auto', queueSize: 64, bufferSize: BUFFER_SIZE, bufAlloc: BUF_ALLOC, ...options });
    guests.push(g);
    return g;
  };

  async function hostServer(type: VsockType): Promise<{ server: VsockServer; port: number }> {
    const server = vsock.createServer({ type });
    servers.push(server);
    server.on('connection', (s: VsockSocket) => sockets.push(s));
    server.listen({ cid: vsock.VMADDR_CID_ANY });
    await once(server, 'listening');
    return { server, port: server.address()!.port };
  }

  function hostConnect(cid: number, port: number, type: VsockType): VsockSocket {
    const s = vsock.connect({ cid, port, type, timeout: 20_000 });
    sockets.push(s);
    return s;
  }

  test('the device offers SEQPACKET and the guest negotiates it', () => {
    const g = guest();
    expect(g.seqpacket).toBe(true);
  });

  test('host seqpacket connect → guest seqpacket listener: messages keep their boundaries both ways', async () => {
    const g = guest();
    const accepted: VirtioVsockConnection[] = [];
    g.listen(5100, (conn) => {
      accepted.push(conn);
      conn.on('data', (m: Buffer) => conn.write(m)); // echo each message as one message
    }, { type: 'seqpacket' });
    const h = hostConnect(g.cid, 5100, 'seqpacket');
    await once(h, 'connect');
    const sent = SIZES.map((n) => randomBytes(n));
    const atGuest = (async () => {
      await waitFor('accept', () => accepted.length === 1);
      return messages(accepted[0], sent.length);
    })();
    const echoed = messages(h, sent.length);
    for (const m of sent) h.write(m); // back to back
    const got = await atGuest;
    expect(accepted[0].type).toBe('seqpacket');
    expect(got.map((m) => m.length)).toEqual(SIZES);
    got.forEach((m, i) => expect(m.equals(sent[i])).toBe(true));
    const back = await echoed;
    expect(back.map((m) => m.length)).toEqual(SIZES); // 4097 B left the guest as two packets, arrived as one message
    back.forEach((m, i) => expect(m.equals(sent[i])).toBe(true));
  });

  test('guest seqpacket connect → host seqpacket server: messages keep their boundaries both ways', async () => {
    const g = guest();
    const { server, port } = await hostServer('seqpacket');
    server.on('connection', (s: VsockSocket) => s.on('data', (m: Buffer) => s.write(m)));
    const c = g.connect({ port, type: 'seqpacket' });
    await once(c, 'connect');
    const sent = SIZES.map((n) => randomBytes(n));
    const txBefore = g.stats.txPackets;
    const echoed = messages(c, sent.length);
    for (const m of sent) c.write(m);
    const back = await echoed;
    expect(back.map((m) => m.length)).toEqual(SIZES);
    back.forEach((m, i) => expect(m.equals(sent[i])).toBe(true));
    // One packet per BUFFER_SIZE piece of each message, plus credit updates at most.
    const pieces = SIZES.reduce((n, s) => n + Math.ceil(s / BUFFER_SIZE), 0);
    expect(g.stats.txPackets - txBefore).toBeGreaterThanOrEqual(pieces);
    c.destroy();
  });

  test('type mismatches are refused: stream ↔ seqpacket listeners, both directions', async () => {
    const g = guest();
    g.listen(5101, () => undefined, { type: 'seqpacket' });
    g.listen(5102, () => undefined); // stream
    const toSeq = hostConnect(g.cid, 5101, 'stream');
    expect((await errorOf(toSeq)).code).toBe('ECONNRESET'); // the guest's RST, as the kernel reports it
    const toStream = hostConnect(g.cid, 5102, 'seqpacket');
    expect((await errorOf(toStream)).code).toBe('ECONNRESET');
    const { port } = await hostServer('stream');
    const c = g.connect({ port, type: 'seqpacket' });
    expect((await errorOf(c)).code).toBe('ECONNREFUSED'); // the host kernel's RST for a socket of another type
    await waitFor('connection table empty', () => g.connections === 0);
  });

  test('a message larger than the peer buf_alloc fails: EMSGSIZE at the guest (host 256 KiB), ENOMEM from the 6.1 host kernel (guest bufAlloc)', async () => {
    const g = guest();
    const { server, port } = await hostServer('seqpacket');
    const acceptedAtHost = once(server, 'connection');
    const c = g.connect({ port, type: 'seqpacket' });
    await once(c, 'connect');
    await acceptedAtHost;
    const cErr = errorOf(c);
    c.write(Buffer.alloc(256 * 1024 + 1));
    const err = await cErr;
    expect(err.code).toBe('EMSGSIZE');
    expect(c.bytesWritten).toBe(0); // refused before any packet
    await waitFor('connection table empty', () => g.connections === 0);

    g.listen(5103, (conn) => conn.resume(), { type: 'seqpacket' });
    const h = hostConnect(g.cid, 5103, 'seqpacket');
    await once(h, 'connect');
    const hErr = errorOf(h);
    h.write(Buffer.alloc(BUF_ALLOC + 1));
    // virtio_transport_seqpacket_enqueue says -EMSGSIZE, but 6.1's vsock_connectible_sendmsg turns
    // every transport error into ENOMEM (kernels from 6.2 pass EMSGSIZE through).
    expect((await hErr).code).toBe('ENOMEM');
  });

  test('a guest created with seqpacket: false: the host kernel refuses seqpacket connects, the API refuses the type', async () => {
    const g = guest({ seqpacket: false });
    expect(g.seqpacket).toBe(false);
    expect(thrown(() => g.connect({ port: 1, type: 'seqpacket' })).code).toBe('ERR_VHOST_UNSUPPORTED');
    expect(thrown(() => g.listen(5104, () => undefined, { type: 'seqpacket' })).code).toBe('ERR_VHOST_UNSUPPORTED');
    g.listen(5104, () => undefined);
    const h = hostConnect(g.cid, 5104, 'seqpacket');
    expect((await errorOf(h)).code).toBe('ESOCKTNOSUPPORT'); // vhost_transport_seqpacket_allow: not acked
    expect(g.stats.rxPackets).toBe(0); // refused in the host kernel, nothing reached the guest
  });
});
