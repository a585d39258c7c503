// AF_VSOCK sockets against the real kernel, inside the test VM only (never
// on the development host): the ENODEV path before the loopback transport is
// loaded, then stream conformance over vsock_loopback (CID 1) in the style of
// Go's nettest.TestConn — ordering with a hash, half-close both ways,
// concurrent writers, close while reading, large writes, backpressure — plus
// the error paths (reset on a port nobody listens on, connect timeout,
// abort), server close, many connections, seqpacket boundaries, fd flags and
// leaks, use after destroy, ref/unref.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VhostVsock } from '../../../lib/vhost/vsock';
import * as vsock from '../../../lib/vsock/socket';
import type { VsockServer, VsockSocket } from '../../../lib/vsock/socket';
import { collect, describeKernel, errorOf, fdFlags, O_CLOEXEC, O_NONBLOCK, openFdCount, sha256, sleep, thrown, tsPrelude, vsockAfterEach, waitFor, type KernelError } from '../../support/helpers';

const ROOT = path.resolve(__dirname, '../../..');
const VM_MODULES = '/run/linux-vhost-vm-kernel';

/** modprobe (from the VM's module tree when there is one) or rmmod; throws with the tool's output. */
function modprobe(args: string[]): void {
  const dir = fs.existsSync(VM_MODULES) ? ['-d', VM_MODULES] : [];
  const res = spawnSync('modprobe', [...dir, ...args], { encoding: 'utf8' });
  if (res.status !== 0) throw new Error(`modprobe ${args.join(' ')}: ${res.stderr || res.error}`);
}
const loaded = (mod: string): boolean => fs.existsSync(`/sys/module/${mod}`);

describeKernel('AF_VSOCK sockets', ['/dev/vhost-vsock', '/dev/vsock'], () => {
  const { servers, sockets } = vsockAfterEach();
  const track = <T extends VsockSocket>(s: T): T => {
    sockets.push(s);
    return s;
  };

  async function listen(
    options: vsock.VsockListenOptions = {},
    serverOptions: vsock.VsockServerOptions = {},
  ): Promise<{ server: VsockServer; port: number }> {
    const server = vsock.createServer(serverOptions);
    servers.push(server);
    server.listen(options);
    await once(server, 'listening');
    return { server, port: server.address()!.port };
  }

  function connect(options: vsock.VsockConnectOptions): Promise<VsockSocket> {
    const socket = track(vsock.connect(options));
    return new Promise((resolve, reject) => {
      socket.once('connect', () => resolve(socket));
      socket.once('error', reject);
    });
  }

  /** A connected client and the server's side of the same connection. */
  async function pair(
    serverOptions: vsock.VsockServerOptions = {},
    clientOptions: Partial<vsock.VsockConnectOptions> = {},
  ): Promise<{ client: VsockSocket; conn: VsockSocket; server: VsockServer; port: number }> {
    const { server, port } = await listen({}, serverOptions);
    const accepted = once(server, 'connection');
    const client = await connect({ cid: vsock.VMADDR_CID_LOCAL, port, type: serverOptions.type, ...clientOptions });
    const [conn] = (await accepted) as [VsockSocket];
    track(conn);
    return { client, conn, server, port };
  }

  describe('before a transport reaches the CID', () => {
    beforeAll(() => {
      // Another suite in this VM may have loaded it; without open sockets it unloads.
      if (loaded('vsock_loopback')) modprobe(['-r', 'vsock_loopback']);
    });

    test('connect to CID 1 without vsock_loopback fails with ENODEV', async () => {
      const socket = track(vsock.connect({ cid: 1, port: 1234 }));
      const err = await errorOf(socket);
      expect(err.code).toBe('ENODEV');
      expect(err.errno).toBe(-os.constants.errno.ENODEV);
      expect(err.syscall).toBe('connect');
      expect(err.path).toBe('vsock:1:1234');
      expect(err.hint).toMatch(/vsock_loopback/);
      await waitFor('close', () => socket.closed);
    });
  });

  describe('over vsock_loopback (CID 1)', () => {
    beforeAll(() => {
      if (!loaded('vsock_loopback')) modprobe(['vsock_loopback']);
    });

    test('connect to a CID no guest holds fails with ENODEV (vhost_vsock finds no device)', async () => {
      const err = await errorOf(track(vsock.connect({ cid: 0x7ffffff0, port: 5 })));
      expect(err.code).toBe('ENODEV');
      expect(err.path).toBe(`vsock:${0x7ffffff0}:5`);
      expect(err.hint).toMatch(/running guest/);
    });

    test('localCid() reads the host CID (2) when only host-side transports are loaded', () => {
      expect(loaded('vmw_vsock_virtio_transport')).toBe(false);
      expect(vsock.localCid()).toBe(vsock.VMADDR_CID_HOST);
    });

    test('listen on VMADDR_PORT_ANY: the kernel picks a port, address() reads it back', async () => {
      const { server, port } = await listen();
      expect(server.listening).toBe(true);
      const addr = server.address()!;
      expect(addr.cid).toBe(vsock.VMADDR_CID_ANY);
      expect(port).not.toBe(vsock.VMADDR_PORT_ANY);
      expect(port).toBeGreaterThan(0);
    });

    test('sockets are O_CLOEXEC | O_NONBLOCK and both ends agree on their addresses', async () => {
      const { client, conn, server, port } = await pair();
      for (const fd of [client.fd, conn.fd]) {
        expect(fs.readlinkSync(`/proc/self/fd/${fd}`)).toMatch(/^socket:\[\d+\]$/);
        expect(fdFlags(fd) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
      }
      expect(client.remoteAddress).toEqual({ cid: 1, port });
      expect(conn.localAddress).toEqual({ cid: 1, port });
      // The client was bound implicitly: the kernel reports VMADDR_CID_ANY with the port it picked.
      expect(client.localAddress).toEqual({ cid: vsock.VMADDR_CID_ANY, port: conn.remoteAddress!.port });
      expect(conn.remoteAddress!.cid).toBe(1);
      expect(client.localAddress!.port).not.toBe(port);
      expect(server.connections).toBe(1);
      expect(client.connecting).toBe(false);
    });

    test('echo: the pipe(conn) server from the README answers', async () => {
      const { server, port } = await listen();
      server.on('connection', (c: VsockSocket) => c.pipe(c));
      const client = await connect({ cid: 1, port });
      client.end('hello vsock');
      expect((await collect(client)).toString()).toBe('hello vsock');
    });

    test('8 MiB each way arrive in order (sha256), written in chunks of varying size', async () => {
      // Half-open on both ends: without it the side whose reading ends first
      // end()s its writable at the peer's EOF (Node's default, as net does) and
      // never emits the 'drain' its own writer still awaits (a race this test lost).
      const { client, conn } = await pair({ allowHalfOpen: true }, { allowHalfOpen: true });
      const up = randomBytes(8 << 20);
      const down = randomBytes(8 << 20);
      const writeAll = async (s: VsockSocket, data: Buffer): Promise<void> => {
        for (let off = 0, i = 0; off < data.length; i++) {
          const size = [1, 100, 4096, 65536, 300_000][i % 5];
          if (!s.write(data.subarray(off, off + size))) await once(s, 'drain');
          off += size;
        }
        s.end();
      };
      const [gotUp, gotDown] = await Promise.all([collect(conn), collect(client), writeAll(client, up), writeAll(conn, down)]);
      expect(gotUp.length).toBe(up.length);
      expect(sha256(gotUp)).toBe(sha256(up));
      expect(sha256(gotDown)).toBe(sha256(down));
      expect(client.bytesWritten).toBe(up.length);
      expect(conn.bytesRead).toBe(up.length);
    }, 120_000); // ~2 s alone, ~20 s on a loaded TCG host

    test('one large write (16 MiB) goes through partial kernel writes intact', async () => {
      const { client, conn } = await pair();
      const data = randomBytes(16 << 20);
      const received = collect(conn);
      let done = false;
      client.write(data, () => {
        done = true;
      });
      client.end();
      const got = await received;
      expect(done).toBe(true);
      expect(sha256(got)).toBe(sha256(data));
    }, 60_000);

    test('half-close client → server: the server reads to the end, then still answers', async () => {
      const { client, conn } = await pair({ allowHalfOpen: true }, { allowHalfOpen: true });
      const closed = Promise.all([once(client, 'close'), once(conn, 'close')]);
      client.end('request');
      expect((await collect(conn)).toString()).toBe('request');
      expect(client.writableFinished).toBe(true);
      conn.end('reply after your end');
      expect((await collect(client)).toString()).toBe('reply after your end');
      await closed;
    });

    test('half-close server → client: the client reads to the end, then still sends', async () => {
      const { client, conn } = await pair({ allowHalfOpen: true }, { allowHalfOpen: true });
      conn.end('greeting');
      expect((await collect(client)).toString()).toBe('greeting');
      client.end('data after your end');
      expect((await collect(conn)).toString()).toBe('data after your end');
    });

    test('without allowHalfOpen the peer end() ends this side too and both close', async () => {
      const { client, conn } = await pair();
      conn.resume();
      client.resume();
      client.end();
      await Promise.all([once(client, 'close'), once(conn, 'close')]);
      expect(conn.writableFinished).toBe(true);
    });

    test('concurrent writers: each record arrives whole, and each writer in its order', async () => {
      const { client, conn } = await pair();
      const WRITERS = 4;
      const RECORDS = 150;
      const record = (w: number, seq: number): Buffer => {
        const len = 1 + ((w * 7919 + seq * 104_729) % 3000);
        const b = Buffer.alloc(7 + len);
        b.writeUInt8(w, 0);
        b.writeUInt32BE(seq, 1);
        b.writeUInt16BE(len, 5);
        for (let i = 0; i < len; i++) b[7 + i] = (w + seq + i) & 0xff;
        return b;
      };
      const writer = async (w: number): Promise<void> => {
        for (let seq = 0; seq < RECORDS; seq++) {
          if (!client.write(record(w, seq))) await once(client, 'drain');
          await new Promise(setImmediate);
        }
      };
      const received = collect(conn);
      await Promise.all(Array.from({ length: WRITERS }, (_, w) => writer(w)));
      client.end();
      const data = await received;
      const next = new Array<number>(WRITERS).fill(0);
      let off = 0;
      while (off < data.length) {
        const w = data.readUInt8(off);
        const seq = data.readUInt32BE(off + 1);
        expect(seq).toBe(next[w]);
        const expected = record(w, seq);
        expect(data.subarray(off, off + expected.length).equals(expected)).toBe(true);
        next[w]++;
        off += expected.length;
      }
      expect(next).toEqual(new Array(WRITERS).fill(RECORDS));
    }, 60_000);

    test('close while reading: the peer closing gives end then close, no error', async () => {
      const { client, conn } = await pair();
      const errors: Error[] = [];
      client.on('error', (e) => errors.push(e));
      const chunks: Buffer[] = [];
      client.on('data', (c: Buffer) => chunks.push(c));
      conn.write('last words');
      await waitFor('data', () => chunks.length > 0);
      const ended = once(client, 'end');
      const closed = once(client, 'close');
      conn.destroy();
      await ended;
      await closed;
      expect(Buffer.concat(chunks).toString()).toBe('last words');
      expect(errors).toEqual([]);
    });

    test('destroy() while a read is armed: close, fd released, the peer sees end', async () => {
      const { client, conn } = await pair();
      const fd = client.fd;
      const inode = fs.readlinkSync(`/proc/self/fd/${fd}`);
      client.on('data', () => undefined);
      await sleep(20);
      const peerEnd = once(conn, 'end');
      conn.resume();
      client.destroy();
      await once(client, 'close');
      expect(client.destroyed).toBe(true);
      expect(thrown(() => client.fd).code).toBe('ERR_VHOST_CLOSED');
      const now = fs.existsSync(`/proc/self/fd/${fd}`) ? fs.readlinkSync(`/proc/self/fd/${fd}`) : null;
      expect(now).not.toBe(inode);
      await peerEnd;
    });

    test('writing to a peer that closed fails with EPIPE', async () => {
      const { client, conn } = await pair({}, { allowHalfOpen: true });
      client.resume();
      conn.destroy();
      await once(client, 'end');
      const err = errorOf(client);
      client.write('anyone there?');
      const e = await err;
      expect(e.code).toBe('EPIPE');
      expect(e.syscall).toBe('write');
    });

    test('backpressure: a paused reader stalls the writer; write() returns false, memory stays bounded, nothing is lost', async () => {
      const { client, conn } = await pair();
      const chunk = randomBytes(64 * 1024);
      const sent: Buffer[] = [];
      let accepted = true;
      while (accepted && sent.length < 1024) {
        accepted = client.write(chunk);
        sent.push(chunk);
        await sleep(1);
      }
      expect(accepted).toBe(false);
      // The kernel holds what the peer's receive buffer (256 KiB by default) allows; the rest waits in JS.
      await sleep(200);
      const inKernel = client.bytesWritten;
      expect(inKernel).toBeGreaterThan(0);
      expect(inKernel).toBeLessThanOrEqual(1 << 20);
      expect(client.writableLength).toBeLessThanOrEqual(2 * chunk.length);
      await sleep(200);
      expect(client.bytesWritten).toBe(inKernel); // stalled, not spinning through data
      const drained = once(client, 'drain');
      const received = collect(conn);
      await drained;
      client.end();
      const got = await received;
      expect(got.length).toBe(sent.length * chunk.length);
      expect(sha256(got)).toBe(sha256(Buffer.concat(sent)));
    }, 60_000);

    test('connecting to a port nobody listens on fails with ECONNRESET (the virtio transports reset it)', async () => {
      const { server, port } = await listen();
      server.close();
      const err = await errorOf(track(vsock.connect({ cid: 1, port })));
      expect(err.code).toBe('ECONNRESET');
      expect(err.errno).toBe(-os.constants.errno.ECONNRESET);
      expect(err.syscall).toBe('connect');
      expect(err.path).toBe(`vsock:1:${port}`);
      expect(err.hint).toMatch(/nothing listens/);
    });

    test('seqpacket keeps message boundaries, even for messages queued back to back', async () => {
      const { client, conn } = await pair({ type: 'seqpacket' });
      expect(client.type).toBe('seqpacket');
      expect(conn.type).toBe('seqpacket');
      const sizes = [1, 7, 1000, 4096, 60_000, 3, 65_536, 2];
      const messages = sizes.map((n) => randomBytes(n));
      for (const m of messages) client.write(m);
      client.end();
      const got: Buffer[] = [];
      conn.on('data', (m: Buffer) => got.push(m));
      await once(conn, 'end');
      expect(got.map((m) => m.length)).toEqual(sizes);
      got.forEach((m, i) => expect(m.equals(messages[i])).toBe(true));
    });

    test('server close: no new connections, the listener fd is gone, close waits for open connections', async () => {
      const { server, conn, client, port } = await pair();
      let closed = false;
      server.on('close', () => {
        closed = true;
      });
      server.close();
      expect(server.listening).toBe(false);
      expect(server.address()).toBeNull();
      const err = await errorOf(track(vsock.connect({ cid: 1, port })));
      expect(err.code).toBe('ECONNRESET');
      // The accepted connection still works.
      conn.write('still here');
      const [data] = (await once(client, 'data')) as [Buffer];
      expect(data.toString()).toBe('still here');
      expect(closed).toBe(false);
      conn.destroy();
      await waitFor('server close', () => closed);
      expect(server.connections).toBe(0);
    });

    test('listening twice on one port fails with EADDRINUSE from bind', async () => {
      const { port } = await listen();
      const second = vsock.createServer();
      servers.push(second);
      second.listen({ port });
      const [err] = (await once(second, 'error')) as [KernelError];
      expect(err.code).toBe('EADDRINUSE');
      expect(err.syscall).toBe('bind');
      expect(err.path).toBe(`vsock:${vsock.VMADDR_CID_ANY}:${port}`);
      expect(second.listening).toBe(false);
    });

    test('100 concurrent connections each get their own echo', async () => {
      const { server, port } = await listen();
      server.on('connection', (c: VsockSocket) => c.pipe(c));
      const N = 100;
      const results = await Promise.all(
        Array.from({ length: N }, async (_, i) => {
          const client = await connect({ cid: 1, port });
          const payload = Buffer.from(`connection ${i} `.repeat(64));
          client.end(payload);
          return (await collect(client)).equals(payload);
        }),
      );
      expect(results.filter(Boolean).length).toBe(N);
    }, 120_000);

    test('no fd leak after 20 connections opened and closed', async () => {
      const { server, port } = await listen();
      server.on('connection', (c: VsockSocket) => c.pipe(c));
      const before = openFdCount();
      for (let i = 0; i < 20; i++) {
        const client = await connect({ cid: 1, port });
        const closed = once(client, 'close');
        client.end('x');
        await collect(client);
        await closed;
      }
      await waitFor('server side closed', () => server.connections === 0);
      expect(openFdCount()).toBe(before);
    }, 60_000);

    test('use after destroy: fd throws ERR_VHOST_CLOSED, write fails, addresses are kept', async () => {
      const { client, port } = await pair();
      client.destroy();
      await once(client, 'close');
      expect(thrown(() => client.fd).code).toBe('ERR_VHOST_CLOSED');
      const err = await new Promise<KernelError>((resolve) => client.write('late', (e) => resolve(e as KernelError)));
      expect(err.code).toBe('ERR_STREAM_DESTROYED');
      expect(client.remoteAddress).toEqual({ cid: 1, port });
      const server = vsock.createServer();
      const closeErr = await new Promise<KernelError>((resolve) => server.close((e) => resolve(e as KernelError)));
      expect(closeErr.code).toBe('ERR_VHOST_CLOSED');
    });

    test('abort after connect destroys the socket with ABORT_ERR', async () => {
      const ac = new AbortController();
      const { client } = await pair({}, { signal: ac.signal });
      const err = errorOf(client);
      ac.abort();
      expect((await err).code).toBe('ABORT_ERR');
      expect((await err).name).toBe('AbortError');
      expect(client.destroyed).toBe(true);
    });

    test('an already aborted signal fails without opening a socket', async () => {
      const before = openFdCount();
      const socket = track(vsock.connect({ cid: 1, port: 1, signal: AbortSignal.abort() }));
      expect(openFdCount()).toBe(before);
      expect((await errorOf(socket)).code).toBe('ABORT_ERR');
    });

    describe('a peer that never answers (a vhost-vsock device that is not running)', () => {
      let device: VhostVsock;
      const cid = 0x1000 + (process.pid % 0x1000);
      beforeAll(() => {
        device = VhostVsock.open();
        device.setOwner();
        device.setGuestCid(cid);
      });
      afterAll(() => device.close());

      test('timeout: the kernel fails the connect with ETIMEDOUT after it', async () => {
        const start = Date.now();
        const err = await errorOf(track(vsock.connect({ cid, port: 80, timeout: 300 })));
        const elapsed = Date.now() - start;
        expect(err.code).toBe('ETIMEDOUT');
        expect(err.syscall).toBe('connect');
        expect(err.hint).toMatch(/300 ms/);
        expect(elapsed).toBeGreaterThanOrEqual(250);
        expect(elapsed).toBeLessThan(1800); // well below the kernel's 2 s default
      });

      test('without a timeout the kernel default (2 s) applies', async () => {
        const start = Date.now();
        const err = await errorOf(track(vsock.connect({ cid, port: 81 })));
        expect(err.code).toBe('ETIMEDOUT');
        expect(Date.now() - start).toBeGreaterThanOrEqual(1900);
      });

      test('abort during connect: AbortError, close, fd released', async () => {
        const ac = new AbortController();
        const socket = track(vsock.connect({ cid, port: 82, signal: ac.signal }));
        await sleep(50);
        expect(socket.connecting).toBe(true);
        const fd = socket.fd;
        expect(fdFlags(fd) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
        const err = errorOf(socket);
        const closed = new Promise((resolve) => socket.once('close', resolve)); // events.once would reject on 'error'
        ac.abort(new Error('changed my mind'));
        const e = await err;
        expect(e.code).toBe('ABORT_ERR');
        expect((e.cause as Error).message).toBe('changed my mind');
        await closed;
        expect(thrown(() => socket.fd).code).toBe('ERR_VHOST_CLOSED');
      });
    });

    describe('ref() / unref() in a child process', () => {
      let dir: string;
      let prelude: string;
      beforeAll(() => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsock-ref-'));
        prelude = tsPrelude(dir);
      });
      afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

      const child = (unref: boolean): string => `${prelude}
const vsock = require(${JSON.stringify(path.join(ROOT, 'lib/vsock/socket.ts'))});
const server = vsock.createServer((c) => { ${unref ? 'c.unref();' : ''} c.on('data', () => {}); }).listen({}, () => {
  const client = vsock.connect({ cid: 1, port: server.address().port }, () => {
    client.on('data', () => {});
    ${unref ? 'server.unref(); client.unref();' : ''}
    console.log('ready');
  });
});`;

      test('unref() lets the process exit while a server listens and a socket waits for data', async () => {
        const res = spawnSync(process.execPath, ['-e', child(true)], { encoding: 'utf8', timeout: 60_000 });
        expect(res.stderr).toBe('');
        expect(res.stdout).toBe('ready\n');
        expect(res.status).toBe(0);
      }, 70_000);

      test('by default (ref) they keep it alive', async () => {
        const proc = spawn(process.execPath, ['-e', child(false)], { stdio: ['ignore', 'pipe', 'inherit'] });
        const [line] = (await once(proc.stdout, 'data')) as [Buffer];
        expect(line.toString()).toBe('ready\n');
        await sleep(1500);
        expect(proc.exitCode).toBeNull();
        proc.kill();
        await once(proc, 'exit');
      }, 70_000);
    });
  });
});
