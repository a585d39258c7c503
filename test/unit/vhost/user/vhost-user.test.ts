// The vhost-user front-end against a scripted back-end in another process
// (test/support/fake-vhost-user.js, written on Node's net without the
// library's codec): what goes on the wire, replies checked strictly, failures
// typed and naming the message, nothing left open, disconnect and reconnect.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { EventFd } from '../../../../lib/core/eventfd';
import { GuestMemory } from '../../../../lib/core/memory';
import { UnixSocket } from '../../../../lib/core/unix-socket';
import { VhostUser } from '../../../../lib/vhost/user/vhost-user';
import { closeAfterEach, openFdCount, thrown, tsPrelude, waitFor, type KernelError } from '../../../support/helpers';

const FAKE = path.join(__dirname, '..', '..', '..', 'support', 'fake-vhost-user.js');

interface Seen {
  request: number;
  flags: number;
  payload: string;
}

interface Fake {
  child: ChildProcess;
  seen: Seen[];
  stop(): Promise<void>;
}

function startFake(sock: string, mode: string, opts: object = {}): Promise<Fake> {
  const child = spawn(process.execPath, [FAKE, sock, mode, JSON.stringify(opts)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const seen: Seen[] = [];
  let rest = '';
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.stdout.on('data', (chunk: Buffer) => {
      const lines = (rest + chunk.toString()).split('\n');
      rest = lines.pop()!;
      for (const line of lines) {
        if (line === 'listening') {
          resolve({
            child,
            seen,
            stop: () =>
              new Promise<void>((done) => {
                if (child.exitCode !== null || child.signalCode !== null) return done();
                child.once('exit', () => done());
                child.kill('SIGKILL');
              }),
          });
        } else if (line) seen.push(JSON.parse(line) as Seen);
      }
    });
  });
}

describe('VhostUser front-end against a scripted back-end', () => {
  const track = closeAfterEach({ ignoreCloseErrors: true });
  let dir: string;
  let sock: string;
  const fakes: Fake[] = [];
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-user-test-'));
    sock = path.join(dir, 'backend.sock');
  });
  afterEach(async () => {
    for (const f of fakes.splice(0)) await f.stop();
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const fake = async (mode: string, opts: object = {}): Promise<Fake> => {
    const f = await startFake(sock, mode, opts);
    fakes.push(f);
    return f;
  };
  // What the fake received so far (its stdout is read on the loop, after a blocking call returns).
  const settle = async (f: Fake, n: number): Promise<Seen[]> => {
    await waitFor(`${n} messages at the fake back-end`, () => f.seen.length >= n, 5000);
    return f.seen;
  };

  test('connect negotiates: GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES with the common bits', async () => {
    const f = await fake('ok', { protocol: '0xffff' });
    const dev = track(VhostUser.connect(sock));
    expect(dev.offeredFeatures).toBe(0x140000000n);
    expect(dev.offeredProtocolFeatures).toBe(0xffffn);
    // MQ | LOG_SHMFD | REPLY_ACK | CONFIG | RESET_DEVICE: only what this front-end implements.
    expect(dev.protocolFeatures).toBe(0x220bn);
    const seen = await settle(f, 3);
    expect(seen.map((m) => [m.request, m.flags])).toEqual([[1, 1], [15, 1], [16, 1]]);
    expect(Buffer.from(seen[2].payload, 'hex').readBigUInt64LE()).toBe(0x220bn);
    // Offered but not implemented here (INBAND_NOTIFICATIONS): refused before sending.
    expect(thrown(() => dev.setProtocolFeatures(1n << 14n)).message).toMatch(/does not implement/);
  });

  test('with REPLY_ACK every message that can fail carries NEED_REPLY; the wire layouts are the spec\'s', async () => {
    const f = await fake('ok');
    const dev = track(VhostUser.connect(sock));
    const mem = track(GuestMemory.create({ regions: [{ gpa: 0, size: 1 << 16 }, { gpa: 1 << 20, size: 4096 }] }));
    const kick = track(EventFd.create());
    dev.setOwner();
    dev.setFeatures(1n << 32n);
    dev.setMemTable(mem.regions);
    dev.setVringNum(1, 256);
    dev.setVringBase(1, 7);
    dev.setVringAddr(1, { desc: 0x1000n, avail: 0x2000n, used: 0x3000n });
    dev.setVringKick(1, kick);
    dev.setVringCall(1, null);
    dev.setVringEnable(1, true);
    expect(dev.getVringBase(1)).toBe(42);
    expect(dev.getQueueNum()).toBe(2);
    const seen = (await settle(f, 14)).slice(3);
    expect(seen.map((m) => m.request)).toEqual([3, 2, 5, 8, 10, 9, 12, 13, 18, 11, 17]);
    for (const m of seen.filter((x) => ![11, 17].includes(x.request))) expect(m.flags).toBe(0x9); // version 1 | NEED_REPLY
    for (const m of seen.filter((x) => [11, 17].includes(x.request))) expect(m.flags).toBe(0x1); // has its own reply
    const p = (i: number) => Buffer.from(seen[i].payload, 'hex');
    // SET_FEATURES adds VHOST_USER_F_PROTOCOL_FEATURES (bit 30), as QEMU does.
    expect(p(1).readBigUInt64LE()).toBe((1n << 32n) | (1n << 30n));
    // SET_MEM_TABLE: 2 regions, each gpa, size, user address (this process's mapping), mmap offset.
    const table = p(2);
    expect(table.length).toBe(8 + 2 * 32);
    expect(table.readUInt32LE(0)).toBe(2);
    expect([table.readBigUInt64LE(8), table.readBigUInt64LE(16), table.readBigUInt64LE(24), table.readBigUInt64LE(32)]).toEqual([0n, 65536n, mem.regions[0].hva, 0n]);
    expect(table.readBigUInt64LE(40)).toBe(1n << 20n);
    expect([p(3).readUInt32LE(0), p(3).readUInt32LE(4)]).toEqual([1, 256]);
    // SET_VRING_ADDR: index, flags, desc, used, avail, log.
    expect([p(5).readUInt32LE(0), p(5).readBigUInt64LE(8), p(5).readBigUInt64LE(16), p(5).readBigUInt64LE(24)]).toEqual([1, 0x1000n, 0x3000n, 0x2000n]);
    expect(p(6).readBigUInt64LE()).toBe(1n); // kick with an fd: index only
    expect(p(7).readBigUInt64LE()).toBe(0x101n); // call without: NOFD
    expect([p(8).readUInt32LE(0), p(8).readUInt32LE(4)]).toEqual([1, 1]);
  });

  test('without REPLY_ACK nothing asks for a reply', async () => {
    const f = await fake('ok', { protocol: '0x200' });
    const dev = track(VhostUser.connect(sock));
    dev.setOwner();
    dev.setVringNum(0, 8);
    const seen = (await settle(f, 5)).slice(3);
    expect(seen.map((m) => m.flags)).toEqual([1, 1]);
  });

  test('GET_CONFIG returns the bytes asked for; an empty reply is the back-end refusing (ERR_VHOST_USER_NACK)', async () => {
    await fake('ok');
    const dev = track(VhostUser.connect(sock));
    expect([...dev.getConfig(4, 6)]).toEqual([4, 5, 6, 7, 8, 9]);
    dev.close();
    const f2 = fakes.pop()!;
    await f2.stop();
    await fake('empty-config');
    const dev2 = track(VhostUser.connect(sock));
    const err = thrown(() => dev2.getConfig(0, 8));
    expect({ code: err.code, step: err.step }).toEqual({ code: 'ERR_VHOST_USER_NACK', step: 'GET_CONFIG' });
    expect(dev2.connected).toBe(true); // a refusal is not a broken stream
  });

  test('a NACK names the message and keeps the connection', async () => {
    await fake('nack', { nack: 8 });
    const dev = track(VhostUser.connect(sock));
    const err = thrown(() => dev.setVringNum(0, 3));
    expect({ code: err.code, step: err.step }).toEqual({ code: 'ERR_VHOST_USER_NACK', step: 'SET_VRING_NUM' });
    expect(err.message).toMatch(/refused SET_VRING_NUM \(REPLY_ACK status 1\)/);
    dev.setVringBase(0, 0); // still usable
  });

  test.each([
    ['garbage', /version 3/],
    ['wrong-type', /answered with GET_PROTOCOL_FEATURES instead/],
    ['wrong-size', /reply payload of 4 bytes/],
    ['bad-flags', /reply flags 0x1/],
  ])('a back-end that sends %s: ERR_VHOST_USER_PROTOCOL naming GET_FEATURES, nothing left open', async (mode, message) => {
    await fake(mode);
    const before = openFdCount();
    const err = thrown(() => VhostUser.connect(sock, { timeoutMs: 2000 }));
    expect({ code: err.code, step: err.step }).toEqual({ code: 'ERR_VHOST_USER_PROTOCOL', step: 'GET_FEATURES' });
    expect(err.message).toMatch(message);
    expect(openFdCount()).toBe(before);
  });

  test.each([
    ['wrong-index', 'GET_VRING_BASE', (d: VhostUser) => d.getVringBase(2), /reply is for ring 3, asked for 2/],
    ['config-offset', 'GET_CONFIG', (d: VhostUser) => d.getConfig(8, 4), /reply is for offset 12, asked for 8/],
  ])('a reply for the wrong thing (%s): ERR_VHOST_USER_PROTOCOL naming %s, then \'disconnect\'', async (mode, step, call, message) => {
    await fake(mode);
    const dev = track(VhostUser.connect(sock));
    const gone = new Promise<KernelError>((resolve) => dev.once('disconnect', resolve));
    const err = thrown(() => call(dev));
    expect({ code: err.code, step: err.step }).toEqual({ code: 'ERR_VHOST_USER_PROTOCOL', step });
    expect(err.message).toMatch(message);
    expect(await gone).toBe(err);
    expect(thrown(() => dev.getFeatures()).code).toBe('ERR_VHOST_USER_DISCONNECTED');
  });

  test('a back-end that never answers: ETIMEDOUT naming the message, within the bound', async () => {
    await fake('silent');
    const before = openFdCount();
    const t0 = Date.now();
    const err = thrown(() => VhostUser.connect(sock, { timeoutMs: 300 }));
    expect({ code: err.code, syscall: err.syscall, step: err.step, path: err.path }).toEqual({ code: 'ETIMEDOUT', syscall: 'vhost-user(GET_FEATURES)', step: 'GET_FEATURES', path: sock });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(openFdCount()).toBe(before);
  });

  test('a back-end that hangs up mid-call: ECONNRESET naming the message', async () => {
    await fake('hangup');
    const err = thrown(() => VhostUser.connect(sock));
    expect({ code: err.code, step: err.step }).toEqual({ code: 'ECONNRESET', step: 'GET_FEATURES' });
  });

  test('a back-end that sends fds with a reply: ERR_VHOST_USER_PROTOCOL, the fds closed (python3 sends them with SCM_RIGHTS)', async () => {
    const py = [
      'import os, socket, struct, sys',
      's = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
      's.bind(sys.argv[1]); s.listen(1); print("listening", flush=True)',
      'c, _ = s.accept(); c.recv(12)',
      'fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]',
      'socket.send_fds(c, [struct.pack("<IIIQ", 1, 5, 8, 1 << 32)], fds)',
      'try: c.recv(1)',
      'except OSError: pass', // the front-end closes with the reply unread: ECONNRESET here
    ].join('\n');
    fs.rmSync(sock, { force: true });
    const child = spawn('python3', ['-c', py, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        child.once('error', reject);
        child.once('exit', (code) => reject(new Error(`python3 exited ${code}`)));
        child.stdout.once('data', () => resolve());
      });
      const before = openFdCount();
      const err = thrown(() => VhostUser.connect(sock));
      expect({ code: err.code, step: err.step }).toEqual({ code: 'ERR_VHOST_USER_PROTOCOL', step: 'GET_FEATURES' });
      expect(err.message).toMatch(/file descriptors with its reply/);
      expect(openFdCount()).toBe(before);
    } finally {
      child.kill('SIGKILL');
    }
  });

  test('a path that is no socket: ECONNREFUSED; nothing there: ENOENT; no fd left', () => {
    const file = path.join(dir, 'plain');
    fs.writeFileSync(file, '');
    const before = openFdCount();
    expect(thrown(() => VhostUser.connect(file))).toMatchObject({ code: 'ECONNREFUSED', syscall: 'connect', path: file });
    expect(thrown(() => VhostUser.connect(path.join(dir, 'none'))).code).toBe('ENOENT');
    expect(thrown(() => VhostUser.connect('')).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(openFdCount()).toBe(before);
  });

  test('memory without a file cannot be shared: ERR_VHOST_USER_NO_FD before anything is sent', async () => {
    const f = await fake('ok');
    const dev = track(VhostUser.connect(sock));
    const anon = track(GuestMemory.create({ regions: [{ gpa: 0, size: 4096 }], backing: 'anonymous' }));
    const err = thrown(() => dev.setMemTable(anon.regions));
    expect(err.code).toBe('ERR_VHOST_USER_NO_FD');
    expect(err.message).toMatch(/cannot be shared with a vhost-user back-end: use memfd backing/);
    const nine = Array.from({ length: 9 }, (_, i) => ({ gpa: BigInt(i) << 20n, size: 4096n, hva: 0n, fd: 0 }));
    expect(thrown(() => dev.setMemTable(nine)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    dev.getFeatures(); // a round trip: anything sent before it would be seen first
    const seen = await settle(f, 4);
    expect(seen.map((m) => m.request)).toEqual([1, 15, 16, 1]);
  });

  test('features and protocol gates: a bit not offered, GET_CONFIG without CONFIG, ring index past 255', async () => {
    await fake('ok', { protocol: '0x8' });
    const dev = track(VhostUser.connect(sock));
    expect(thrown(() => dev.setFeatures(1n << 33n)).code).toBe('ERR_VHOST_UNSUPPORTED');
    expect(thrown(() => dev.setProtocolFeatures(1n << 9n)).code).toBe('ERR_VHOST_UNSUPPORTED'); // CONFIG: not offered here
    expect(thrown(() => dev.getConfig(0, 4))).toMatchObject({ code: 'ERR_VHOST_UNSUPPORTED', step: 'GET_CONFIG' });
    expect(thrown(() => dev.setLogBase(0n))).toMatchObject({ code: 'ERR_VHOST_UNSUPPORTED', step: 'SET_LOG_BASE' });
    expect(thrown(() => dev.setVringNum(256, 8)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
  });

  test('SET_LOG_BASE sends the log description and reads the back-end\'s answer', async () => {
    const f = await fake('ok');
    const dev = track(VhostUser.connect(sock));
    const log = track(GuestMemory.create({ regions: [{ gpa: 0, size: 4096 }] }));
    dev.setLogBase({ hva: log.regions[0].hva, size: 4096n, fd: log.regions[0].fd, offset: 0n });
    const seen = await settle(f, 4);
    expect(seen[3].request).toBe(6);
    expect(seen[3].flags).toBe(1);
    const p = Buffer.from(seen[3].payload, 'hex');
    expect([p.readBigUInt64LE(0), p.readBigUInt64LE(8)]).toEqual([4096n, 0n]);
  });

  test('a message nobody asked for while idle: \'disconnect\' with ERR_VHOST_USER_PROTOCOL; later calls fail clearly', async () => {
    await fake('unsolicited');
    const dev = track(VhostUser.connect(sock));
    const reason = await new Promise<KernelError>((resolve) => dev.once('disconnect', resolve));
    expect(reason.code).toBe('ERR_VHOST_USER_PROTOCOL');
    expect(dev.connected).toBe(false);
    const err = thrown(() => dev.setOwner());
    expect(err.code).toBe('ERR_VHOST_USER_DISCONNECTED');
    expect(err.message).toMatch(/nobody asked for/);
  });

  test('the back-end dies: \'disconnect\'; reconnect() replays the configuration with the saved ring base', async () => {
    const f = await fake('ok');
    const dev = track(VhostUser.connect(sock));
    const mem = track(GuestMemory.create({ regions: [{ gpa: 0, size: 1 << 16 }] }));
    const kick = track(EventFd.create());
    const call = track(EventFd.create());
    dev.setOwner();
    dev.setFeatures(1n << 32n);
    dev.setMemTable(mem);
    dev.setVringNum(0, 64);
    dev.setVringBase(0, 0);
    dev.setVringAddr(0, { desc: 0x100n, avail: 0x200n, used: 0x300n });
    dev.setVringKick(0, kick);
    dev.setVringCall(0, call);
    dev.setVringEnable(0, true);
    expect(dev.getVringBase(0)).toBe(42); // the fake says 42
    const gone = new Promise<KernelError>((resolve) => dev.once('disconnect', resolve));
    await f.stop();
    expect((await gone).code).toBe('ECONNRESET');
    expect(thrown(() => dev.getFeatures()).code).toBe('ERR_VHOST_USER_DISCONNECTED');
    const f2 = await fake('ok');
    dev.reconnect();
    expect(dev.connected).toBe(true);
    const seen = await settle(f2, 12);
    expect(seen.map((m) => m.request)).toEqual([1, 15, 16, 3, 2, 5, 8, 10, 9, 12, 13, 18]);
    const base = Buffer.from(seen[7].payload, 'hex');
    expect([base.readUInt32LE(0), base.readUInt32LE(4)]).toEqual([0, 42]);
    // An explicit base wins (a driver that knows what completed).
    dev.reconnect({ bases: { 0: 5 } });
    const again = await settle(f2, 24);
    expect(Buffer.from(again[19].payload, 'hex').readUInt32LE(4)).toBe(5);
  });

  test('fromSocket(): speaks over a socket connected elsewhere; it cannot reconnect; fromFd() refuses an fd that has an owner', async () => {
    const f = await fake('ok');
    const sockObj = UnixSocket.connect(sock);
    const dev = track(VhostUser.fromSocket(sockObj));
    dev.setOwner();
    expect((await settle(f, 4)).map((m) => m.request)).toEqual([1, 15, 16, 3]);
    expect(thrown(() => dev.reconnect()).code).toBe('ERR_VHOST_UNSUPPORTED');
    expect(dev.connected).toBe(true); // refused before touching the connection
    expect(thrown(() => VhostUser.fromSocket({} as UnixSocket)).code).toBe('ERR_VHOST_INVALID_ARG');
    const other = track(UnixSocket.connect(sock));
    expect(thrown(() => VhostUser.fromFd(other.fd)).code).toBe('ERR_VHOST_INVALID_ARG'); // one owner per fd
    // A failed handshake closes the socket it was given.
    const [mine, peer] = UnixSocket.pair();
    peer.close();
    expect(thrown(() => VhostUser.fromSocket(mine)).code).toBe('EPIPE');
    expect(mine.closed).toBe(true);
  });

  test('fromFd(): a child process speaks vhost-user over a connection it inherited as fd 3', async () => {
    const f = await fake('ok');
    const conn = track(UnixSocket.connect(sock));
    const lib = path.resolve(__dirname, '../../../../lib/vhost/user/vhost-user.ts');
    const script = `${tsPrelude(dir)}
const { VhostUser } = require(${JSON.stringify(lib)});
const dev = VhostUser.fromFd(3);
dev.setOwner();
console.log(JSON.stringify({ features: String(dev.offeredFeatures), protocol: String(dev.protocolFeatures) }));
dev.close();`;
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit', conn.fd] });
      let text = '';
      child.stdout!.on('data', (c: Buffer) => (text += c.toString()));
      child.once('error', reject);
      child.once('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(`child exited ${code}`))));
    });
    expect(JSON.parse(out)).toEqual({ features: String(0x140000000n), protocol: String(0x20bn) });
    expect((await settle(f, 4)).map((m) => m.request)).toEqual([1, 15, 16, 3]);
  });

  test('close() is idempotent, sends end of stream, and use after close throws ERR_VHOST_CLOSED', async () => {
    await fake('ok');
    const before = openFdCount();
    const dev = VhostUser.connect(sock);
    let disconnected = false;
    dev.on('disconnect', () => (disconnected = true));
    dev.close();
    dev.close();
    expect(openFdCount()).toBe(before);
    expect(thrown(() => dev.setOwner()).code).toBe('ERR_VHOST_CLOSED');
    expect(thrown(() => dev.reconnect()).code).toBe('ERR_VHOST_CLOSED');
    await new Promise((r) => setTimeout(r, 20));
    expect(disconnected).toBe(false);
  });
});
