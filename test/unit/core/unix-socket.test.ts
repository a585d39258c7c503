// Passing fds over unix sockets (SCM_RIGHTS) with real sockets: the fd that
// arrives is the same open file (fstat dev/ino), close-on-exec, owned once;
// truncated messages close what came; nothing leaks.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { EventFd } from '../../../lib/core/eventfd';
import { GuestMemory } from '../../../lib/core/memory';
import { native } from '../../../lib/core/native';
import { ReceivedFd, UnixServer, UnixSocket } from '../../../lib/core/unix-socket';
import { Worker } from 'node:worker_threads';
import { closeAfterEach, fdFlags, O_CLOEXEC, openFdCount, thrown, transpiledLib, waitFor } from '../../support/helpers';

const sameFile = (a: number, b: number): boolean => {
  const x = fs.fstatSync(a);
  const y = fs.fstatSync(b);
  return x.dev === y.dev && x.ino === y.ino;
};

describe('UnixSocket fd passing', () => {
  const track = closeAfterEach({ ignoreCloseErrors: true });
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'unix-socket-test-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test.each(['stream', 'seqpacket'] as const)('%s: a memfd and an eventfd arrive as the same files, close-on-exec', (type) => {
    const [a, b] = UnixSocket.pair(type).map(track);
    const mem = track(GuestMemory.create({ regions: [{ gpa: 0, size: 4096 }] }));
    const efd = track(EventFd.create());
    expect(fdFlags(a.fd) & O_CLOEXEC).toBe(O_CLOEXEC);
    expect(a.send(Buffer.from('hello'), [mem.regions[0].fd, efd])).toBe(5);
    const buf = Buffer.alloc(16);
    const msg = b.receive(buf, 4)!;
    msg.fds.forEach(track);
    expect(msg.bytes).toBe(5);
    expect(buf.subarray(0, 5).toString()).toBe('hello');
    expect(msg.fds).toHaveLength(2);
    expect(msg.fds[0]).toBeInstanceOf(ReceivedFd);
    expect(sameFile(msg.fds[0].fd, mem.regions[0].fd)).toBe(true);
    expect(sameFile(msg.fds[1].fd, efd.fd)).toBe(true);
    expect(msg.fds[0].fd).not.toBe(mem.regions[0].fd); // a new fd number: the kernel duplicated it
    for (const f of msg.fds) expect(fdFlags(f.fd) & O_CLOEXEC).toBe(O_CLOEXEC);
    // Writes through the received memfd show in this process's mapping of the original.
    fs.writeSync(msg.fds[0].fd, Buffer.from('shared'), 0, 6, 100);
    expect(Buffer.from(mem.view(100, 6)).toString()).toBe('shared');
  });

  test('nothing pending: receive() returns null; a bounded wait returns false', () => {
    const [a, b] = UnixSocket.pair().map(track);
    expect(b.receive(Buffer.alloc(4))).toBeNull();
    const t0 = Date.now();
    expect(b.waitReadable(50)).toBe(false);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(45);
    a.send(Buffer.from('x'));
    expect(b.waitReadable(1000)).toBe(true);
  });

  test('more fds than accepted: ERR_VHOST_TRUNCATED and every fd that came is closed', () => {
    const [a, b] = UnixSocket.pair('seqpacket').map(track);
    const fds = [1, 2, 3].map(() => track(EventFd.create()));
    a.send(Buffer.from('m'), fds);
    const before = openFdCount();
    const err = thrown(() => b.receive(Buffer.alloc(8), 1));
    expect({ code: err.code, syscall: err.syscall }).toEqual({ code: 'ERR_VHOST_TRUNCATED', syscall: 'recvmsg' });
    expect(openFdCount()).toBe(before);
  });

  test('fds sent to a receiver accepting none are closed, not leaked', () => {
    const [a, b] = UnixSocket.pair('stream').map(track);
    a.send(Buffer.from('m'), [track(EventFd.create())]);
    const before = openFdCount();
    expect(thrown(() => b.receive(Buffer.alloc(8))).code).toBe('ERR_VHOST_TRUNCATED');
    expect(openFdCount()).toBe(before);
  });

  test('a seqpacket message longer than the buffer: ERR_VHOST_TRUNCATED, its fds closed', () => {
    const [a, b] = UnixSocket.pair('seqpacket').map(track);
    a.send(Buffer.alloc(64, 1), [track(EventFd.create())]);
    const before = openFdCount();
    expect(thrown(() => b.receive(Buffer.alloc(8), 4)).code).toBe('ERR_VHOST_TRUNCATED');
    expect(openFdCount()).toBe(before);
  });

  test('too many fds to send: ERR_VHOST_OUT_OF_RANGE before any syscall (SCM_MAX_FD is 253)', () => {
    const [a] = UnixSocket.pair().map(track);
    const efd = track(EventFd.create());
    const err = thrown(() => a.send(Buffer.from('x'), new Array(254).fill(efd)));
    expect(err.code).toBe('ERR_VHOST_OUT_OF_RANGE');
    // 253 copies of one fd are accepted by the kernel.
    expect(a.send(Buffer.from('x'), new Array(253).fill(efd))).toBe(1);
  });

  test('bad fd arguments: a closed owner, a negative number, fds without bytes', () => {
    const [a] = UnixSocket.pair().map(track);
    const efd = EventFd.create();
    efd.close();
    expect(thrown(() => a.send(Buffer.from('x'), [efd])).code).toBe('ERR_VHOST_CLOSED');
    expect(thrown(() => a.send(Buffer.from('x'), [-1])).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => a.send(Buffer.alloc(0), [track(EventFd.create())])).code).toBe('ERR_VHOST_INVALID_ARG');
    // A number that is not an open fd: the kernel says EBADF.
    expect(thrown(() => a.send(Buffer.from('x'), [1_000_000])).code).toBe('EBADF');
  });

  test('peer closed: receive() gives 0 bytes, send() fails with EPIPE (no SIGPIPE)', () => {
    const [a, b] = UnixSocket.pair();
    track(a);
    b.close();
    expect(a.receive(Buffer.alloc(4))).toEqual({ bytes: 0, fds: [] });
    const err = thrown(() => a.send(Buffer.from('x')));
    expect({ code: err.code, syscall: err.syscall }).toEqual({ code: 'EPIPE', syscall: 'sendmsg' });
  });

  test('sendAll: the whole message with its fds once; false when a full buffer outlasts the timeout; EPIPE from a closed peer', () => {
    const [a, b] = UnixSocket.pair().map(track);
    const efd = track(EventFd.create());
    expect(a.sendAll(Buffer.from('whole'), [efd], 1000)).toBe(true);
    const buf = Buffer.alloc(8);
    const msg = b.receive(buf, 1)!;
    msg.fds.forEach(track);
    expect([buf.subarray(0, msg.bytes).toString(), msg.fds.length]).toEqual(['whole', 1]);
    expect(sameFile(msg.fds[0].fd, efd.fd)).toBe(true);
    // Nobody reads b: the send buffer fills and stays full.
    const big = Buffer.alloc(8 << 20);
    const t0 = Date.now();
    expect(a.sendAll(big, [], 100)).toBe(false);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(95);
    expect(thrown(() => a.sendAll(big, [], -1)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    const [c, d] = UnixSocket.pair();
    track(c);
    d.close();
    expect(thrown(() => c.sendAll(Buffer.from('x'), [], 1000)).code).toBe('EPIPE');
  });

  test('use after close throws ERR_VHOST_CLOSED', () => {
    const [a, b] = UnixSocket.pair();
    track(b);
    a.close();
    a.close(); // idempotent
    expect(thrown(() => a.send(Buffer.from('x'))).code).toBe('ERR_VHOST_CLOSED');
    expect(thrown(() => a.receive(Buffer.alloc(1))).code).toBe('ERR_VHOST_CLOSED');
  });

  test('connect to a path that is not a socket: ECONNREFUSED; to nothing: ENOENT; no fd left', () => {
    const file = path.join(dir, 'plain-file');
    fs.writeFileSync(file, 'not a socket');
    const before = openFdCount();
    const refused = thrown(() => UnixSocket.connect(file));
    expect({ code: refused.code, syscall: refused.syscall, path: refused.path }).toEqual({ code: 'ECONNREFUSED', syscall: 'connect', path: file });
    expect(thrown(() => UnixSocket.connect(path.join(dir, 'missing'))).code).toBe('ENOENT');
    expect(thrown(() => UnixSocket.connect('x'.repeat(200))).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(openFdCount()).toBe(before);
  });

  test('socket calls on an fd that is not a socket: ENOTSOCK', () => {
    const mem = track(GuestMemory.create({ regions: [{ gpa: 0, size: 4096 }] }));
    const dup = fs.openSync(`/proc/self/fd/${mem.regions[0].fd}`, 'r+');
    const notSocket = track(UnixSocket.fromFd(dup));
    expect(thrown(() => notSocket.send(Buffer.from('x'))).code).toBe('ENOTSOCK');
    expect(thrown(() => notSocket.receive(Buffer.alloc(1))).code).toBe('ENOTSOCK');
  });

  test('listen/accept at a path: the server watches on the loop, fds cross, close removes the file', async () => {
    const sockPath = path.join(dir, 'server.sock');
    const server = track(UnixServer.listen(sockPath, { type: 'seqpacket' }));
    expect(fs.statSync(sockPath).mode & 0o777).toBe(0o600);
    expect(thrown(() => UnixServer.listen(sockPath)).code).toBe('EADDRINUSE');
    let conn: UnixSocket | null = null;
    server.watch(() => {
      conn = server.accept();
      if (conn) track(conn);
    });
    const client = track(UnixSocket.connect(sockPath, { type: 'seqpacket' }));
    await waitFor('accept', () => conn !== null);
    server.unwatch();
    expect(client.peerCredentials().pid).toBe(process.pid);
    const efd = track(EventFd.create());
    client.send(Buffer.from('fd'), [efd]);
    const got: ReceivedFd[] = [];
    conn!.watch(() => {
      const m = conn!.receive(Buffer.alloc(8), 1);
      if (m) got.push(...m.fds.map(track));
    });
    await waitFor('message', () => got.length === 1);
    conn!.unwatch();
    expect(sameFile(got[0].fd, efd.fd)).toBe(true);
    // The received eventfd is the same counter: a write through it is read here.
    fs.writeSync(got[0].fd, Buffer.from(new BigUint64Array([7n]).buffer));
    expect(efd.read()).toBe(7n);
    server.close();
    expect(fs.existsSync(sockPath)).toBe(false);
  });

  test('nothing leaks: 200 fds sent and received and closed leave the fd count where it was', () => {
    const before = openFdCount();
    const [a, b] = UnixSocket.pair('seqpacket');
    const efd = EventFd.create();
    for (let i = 0; i < 50; i++) {
      a.send(Buffer.from('x'), [efd, efd, efd, efd]);
      for (const f of b.receive(Buffer.alloc(4), 4)!.fds) f.close();
    }
    a.close();
    b.close();
    efd.close();
    expect(openFdCount()).toBe(before);
  });

  test('in a worker thread: fds cross a socketpair, and the worker\'s exit closes what it left open', async () => {
    const root = path.resolve(__dirname, '../../..');
    const before = openFdCount();
    const body = `
const { parentPort, workerData } = require('worker_threads');
require.extensions['.ts'] = (m, f) => m._compile(workerData.compiled[f], f);
const { UnixSocket } = require(${JSON.stringify(path.join(root, 'lib/core/unix-socket.ts'))});
const { EventFd } = require(${JSON.stringify(path.join(root, 'lib/core/eventfd.ts'))});
const [a, b] = UnixSocket.pair('seqpacket');
const ev = EventFd.create();
a.send(Buffer.from('x'), [ev, ev]);
b.watch(() => {
  const m = b.receive(Buffer.alloc(4), 2);
  b.unwatch();
  parentPort.postMessage({ bytes: m.bytes, fds: m.fds.length, open: m.fds.every((f) => !f.closed) });
  // a, b, ev and both received fds are left open: the env teardown closes them
});`;
    const result = await new Promise<{ code: number; msg: unknown }>((resolve, reject) => {
      const w = new Worker(body, { eval: true, workerData: { compiled: transpiledLib() } });
      let msg: unknown;
      w.on('message', (m) => (msg = m));
      w.on('error', reject);
      w.on('exit', (code) => resolve({ code, msg }));
    });
    expect(result).toEqual({ code: 0, msg: { bytes: 1, fds: 2, open: true } });
    await waitFor('the worker\'s fds to close', () => openFdCount() <= before, 5000);
  });

  test('the native door rejects bad arguments with typed errors', () => {
    expect(thrown(() => native.unixSocket(2, 'x')).code).toBe('ERR_VHOST_INVALID_ARG');
    const [a] = UnixSocket.pair().map(track);
    expect(thrown(() => native.unixRecvMsg(a.nativeHandle, Buffer.alloc(1), 254)).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => native.unixPoll(a.nativeHandle, 2, 0)).code).toBe('ERR_VHOST_INVALID_ARG');
  });
});
