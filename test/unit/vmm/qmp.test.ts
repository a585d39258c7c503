// The QMP client against scripted fake monitors (unix socket servers in this
// test): greeting and capabilities, ids, one command in flight, QMP errors,
// commands that get no answer, a monitor that vanishes, oversized or
// malformed lines, events, fds passed with a command, use after close.
// test/host/vmm/qmp-qemu.test.ts judges the same client against real QEMU.
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { EventFd } from '../../../lib/core/eventfd';
import { UnixServer, type UnixSocket } from '../../../lib/core/unix-socket';
import { Qmp, QmpError, type QmpEvent } from '../../../lib/vmm/qmp';
import { openFdCount, sleep, thrown, tsPrelude, waitFor, type KernelError } from '../../support/helpers';

const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake' }, capabilities: ['oob'] } };

interface Cmd { execute: string; arguments?: Record<string, unknown>; id: number }
interface Conn {
  socket: net.Socket;
  commands: Cmd[];
  send(obj: unknown): void;
  answer(cmd: Cmd, value?: unknown): void;
}

/** A fake monitor: greets (unless told not to), answers qmp_capabilities, and hands every later command to `script`. */
async function fakeMonitor(file: string, script: (cmd: Cmd, conn: Conn) => void, { greet = true, capabilities = true } = {}): Promise<{ server: net.Server; conns: Conn[] }> {
  const conns: Conn[] = [];
  const server = net.createServer((socket) => {
    const conn: Conn = {
      socket,
      commands: [],
      send: (obj) => socket.write(`${typeof obj === 'string' ? obj : JSON.stringify(obj)}\r\n`),
      answer: (cmd, value = {}) => conn.send({ return: value, id: cmd.id }),
    };
    conns.push(conn);
    let buf = '';
    socket.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const cmd = JSON.parse(buf.slice(0, nl)) as Cmd;
        buf = buf.slice(nl + 1);
        conn.commands.push(cmd);
        if (cmd.execute === 'qmp_capabilities' && capabilities) conn.answer(cmd);
        else script(cmd, conn);
      }
    });
    socket.on('error', () => {});
    if (greet) conn.send(GREETING);
  });
  await new Promise<void>((r) => server.listen(file, r));
  return { server, conns };
}

describe('Qmp against a scripted monitor', () => {
  let dir: string;
  let sock: string;
  const servers: net.Server[] = [];
  const clients: Qmp[] = [];
  let n = 0;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmp-test-'));
  });
  beforeEach(() => {
    sock = path.join(dir, `qmp${n++}.sock`);
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const s of servers.splice(0)) s.close();
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const monitor = async (script: (cmd: Cmd, conn: Conn) => void, opts?: { greet?: boolean; capabilities?: boolean }): Promise<Conn[]> => {
    const m = await fakeMonitor(sock, script, opts);
    servers.push(m.server);
    return m.conns;
  };
  const connect = async (options = {}): Promise<Qmp> => {
    const q = await Qmp.connect(sock, options);
    clients.push(q);
    return q;
  };
  const rejection = async (p: Promise<unknown>): Promise<KernelError & Partial<QmpError>> => {
    try {
      await p;
    } catch (err) {
      return err as KernelError & Partial<QmpError>;
    }
    throw new Error('expected a rejection');
  };

  test('reads the greeting and sends qmp_capabilities before anything else', async () => {
    const conns = await monitor((cmd, c) => c.answer(cmd, { running: false, status: 'prelaunch' }));
    const q = await connect();
    expect(q.greeting.version.qemu).toEqual({ major: 7, minor: 2, micro: 22 });
    expect(q.greeting.capabilities).toEqual(['oob']);
    expect(await q.execute('query-status')).toEqual({ running: false, status: 'prelaunch' });
    expect(conns[0].commands.map((c) => c.execute)).toEqual(['qmp_capabilities', 'query-status']);
  });

  test('each command carries its own id and arguments; answers resolve the right promise', async () => {
    const conns = await monitor((cmd, c) => c.answer(cmd, { echo: cmd.arguments }));
    const q = await connect();
    const results = await Promise.all([1, 2, 3].map((i) => q.execute('echo', { i })));
    expect(results).toEqual([{ echo: { i: 1 } }, { echo: { i: 2 } }, { echo: { i: 3 } }]);
    const ids = conns[0].commands.map((c) => c.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(conns[0].commands.find((c) => c.execute === 'qmp_capabilities')!.arguments).toBeUndefined();
  });

  test('one command in flight: the next is sent only after the answer', async () => {
    const held: Array<[Cmd, Conn]> = [];
    const conns = await monitor((cmd, c) => held.push([cmd, c]));
    const q = await connect();
    const a = q.execute('first');
    const b = q.execute('second');
    await waitFor('first command', () => held.length === 1);
    await sleep(50);
    expect(conns[0].commands.map((c) => c.execute)).toEqual(['qmp_capabilities', 'first']);
    held[0][1].answer(held[0][0], 1);
    await waitFor('second command', () => held.length === 2);
    held[1][1].answer(held[1][0], 2);
    expect([await a, await b]).toEqual([1, 2]);
  });

  test('a QMP error rejects with ERR_VHOST_QMP, its class and desc, the command named', async () => {
    await monitor((cmd, c) => c.send({ error: { class: 'DeviceNotFound', desc: "Device 'nic9' not found" }, id: cmd.id }));
    const q = await connect();
    const err = await rejection(q.execute('device_del', { id: 'nic9' }));
    expect(err).toBeInstanceOf(QmpError);
    expect(err.code).toBe('ERR_VHOST_QMP');
    expect(err.qmpClass).toBe('DeviceNotFound');
    expect(err.desc).toBe("Device 'nic9' not found");
    expect(err.command).toBe('device_del');
    expect(err.message).toContain('device_del');
    expect(err.message).toContain("Device 'nic9' not found");
  });

  test('a command with no answer fails after its bound (ETIMEDOUT); a late answer is dropped and the next command works', async () => {
    const held: Array<[Cmd, Conn]> = [];
    await monitor((cmd, c) => (cmd.execute === 'slow' ? held.push([cmd, c]) : c.answer(cmd, 'ok')));
    const q = await connect();
    const t0 = Date.now();
    const err = await rejection(q.execute('slow', undefined, { timeoutMs: 150 }));
    expect(err.code).toBe('ETIMEDOUT');
    expect(err.message).toContain('slow');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
    held[0][1].answer(held[0][0], 'late');
    expect(await q.execute('quick')).toBe('ok');
    expect(q.closed).toBe(false);
  });

  test('the connection-wide timeout applies when a command names none', async () => {
    await monitor(() => {});
    const q = await connect({ timeoutMs: 100 });
    expect((await rejection(q.execute('never'))).code).toBe('ETIMEDOUT');
  });

  test('a monitor that goes away rejects every pending command and emits close once', async () => {
    let conn: Conn | null = null;
    await monitor((_cmd, c) => (conn = c));
    const q = await connect();
    const closes: unknown[] = [];
    q.on('close', (r) => closes.push(r));
    const pending = [q.execute('a'), q.execute('b'), q.execute('c')];
    await waitFor('a command', () => conn !== null);
    conn!.socket.destroy();
    for (const p of pending) {
      const err = await rejection(p);
      expect(err.code).toBe('ERR_VHOST_QMP_DISCONNECTED');
      expect(err.message).toContain('ECONNRESET');
    }
    expect(closes).toHaveLength(1);
    expect((closes[0] as KernelError).code).toBe('ECONNRESET');
    expect(q.closed).toBe(true);
    expect((await rejection(q.execute('after'))).code).toBe('ERR_VHOST_QMP_DISCONNECTED');
  });

  test('a line longer than maxLineBytes without newline ends the connection, not memory', async () => {
    let conn: Conn | null = null;
    await monitor((_cmd, c) => (conn = c));
    const q = await connect({ maxLineBytes: 4096 });
    const p = q.execute('query-qmp-schema');
    await waitFor('the command', () => conn !== null);
    const chunk = 'x'.repeat(64 * 1024);
    for (let i = 0; i < 16 && !conn!.socket.destroyed; i++) conn!.socket.write(chunk); // 1 MiB, never a newline
    const err = await rejection(p);
    expect(err.code).toBe('ERR_VHOST_QMP_DISCONNECTED');
    expect(err.message).toContain('exceeds 4096 bytes');
    expect(q.closed).toBe(true);
  });

  test('a long line split across many reads is put back together', async () => {
    const big = 'y'.repeat(300_000);
    await monitor((cmd, c) => {
      const text = JSON.stringify({ return: { big }, id: cmd.id });
      for (let i = 0; i < text.length; i += 1000) c.socket.write(text.slice(i, i + 1000));
      c.socket.write('\n');
    });
    const q = await connect();
    expect(await q.execute('big')).toEqual({ big });
  });

  test.each([
    ['not JSON', '{"return": {}, "id": '],
    ['JSON that is not an object', '[1,2,3]'],
    ['neither answer nor event', '{"hello": 1}'],
    ['an answer to a command never sent', '{"return": {}, "id": 999}'],
  ])('%s ends the connection with ERR_VHOST_QMP_PROTOCOL', async (_what, line) => {
    await monitor((_cmd, c) => c.send(line));
    const q = await connect();
    const reason = new Promise<KernelError>((r) => q.once('close', r));
    const err = await rejection(q.execute('query-status'));
    expect(err.code).toBe('ERR_VHOST_QMP_DISCONNECTED');
    expect((await reason).code).toBe('ERR_VHOST_QMP_PROTOCOL');
  });

  test('events are emitted by name with their data and as "event"; waitForEvent matches data', async () => {
    await monitor((cmd, c) => {
      c.send({ event: 'DEVICE_DELETED', data: { path: '/machine/peripheral/a', device: 'a' }, timestamp: { seconds: 1, microseconds: 2 } });
      c.send({ event: 'DEVICE_DELETED', data: { path: '/machine/peripheral/b', device: 'b' }, timestamp: { seconds: 3, microseconds: 4 } });
      c.answer(cmd);
    });
    const q = await connect();
    const named: unknown[] = [];
    const all: QmpEvent[] = [];
    q.on('DEVICE_DELETED', (data) => named.push(data));
    q.on('event', (e) => all.push(e));
    const b = q.waitForEvent('DEVICE_DELETED', (d) => d.device === 'b', 1000);
    await q.execute('device_del', { id: 'b' });
    expect((await b).data).toEqual({ path: '/machine/peripheral/b', device: 'b' });
    expect(named).toEqual([{ path: '/machine/peripheral/a', device: 'a' }, { path: '/machine/peripheral/b', device: 'b' }]);
    expect(all.map((e) => e.timestamp)).toEqual([{ seconds: 1, microseconds: 2 }, { seconds: 3, microseconds: 4 }]);
  });

  test('an event that never comes: waitForEvent fails after its bound, naming the event', async () => {
    await monitor((cmd, c) => c.answer(cmd));
    const q = await connect();
    const err = await rejection(q.waitForEvent('SHUTDOWN', undefined, 100));
    expect(err.code).toBe('ETIMEDOUT');
    expect(err.message).toContain('SHUTDOWN');
    expect(q.listenerCount('event')).toBe(0);
  });

  test('an event named like an EventEmitter special ("error") is only emitted as "event"', async () => {
    await monitor((cmd, c) => {
      c.send({ event: 'error', data: {} });
      c.send({ event: '__proto__', data: {} });
      c.answer(cmd);
    });
    const q = await connect();
    const all: string[] = [];
    q.on('event', (e: QmpEvent) => all.push(e.event));
    await q.execute('x');
    expect(all).toEqual(['error', '__proto__']);
    expect(q.closed).toBe(false);
  });

  test('close() rejects what is pending; use after close throws ERR_VHOST_CLOSED; Symbol.dispose closes', async () => {
    await monitor(() => {});
    const q = await connect();
    const p = q.execute('never');
    q.close();
    expect((await rejection(p)).code).toBe('ERR_VHOST_QMP_DISCONNECTED');
    expect(thrown(() => q.execute('query-status')).code).toBe('ERR_VHOST_CLOSED');
    expect(thrown(() => q.waitForEvent('SHUTDOWN')).code).toBe('ERR_VHOST_CLOSED');
    q.close(); // idempotent
    const r = await connect();
    r[Symbol.dispose]();
    expect(r.closed).toBe(true);
  });

  test('connect: no greeting within the bound is ETIMEDOUT; nothing listening is ENOENT; nothing leaks', async () => {
    const before = openFdCount();
    expect((await rejection(Qmp.connect(path.join(dir, 'nobody.sock')))).code).toBe('ENOENT');
    await monitor(() => {}, { greet: false });
    const err = await rejection(Qmp.connect(sock, { timeoutMs: 100 }));
    expect(err.code).toBe('ETIMEDOUT');
    expect(err.message).toContain('greeting');
    await waitFor('fds closed', () => openFdCount() === before + 1); // the fake server's listening socket
  });

  test('connect: a first line that is no greeting, or refused capabilities, fail connect', async () => {
    await monitor(() => {}, { greet: false });
    servers[0].on('connection', (s) => s.write('{"return": {}}\n'));
    expect((await rejection(Qmp.connect(sock))).code).toBe('ERR_VHOST_QMP_PROTOCOL');
    sock = path.join(dir, 'refuse.sock');
    await monitor((cmd, c) => c.send({ error: { class: 'CommandNotFound', desc: 'nope' }, id: cmd.id }), { capabilities: false });
    const err = await rejection(Qmp.connect(sock));
    expect(err.code).toBe('ERR_VHOST_QMP');
    expect(err.command).toBe('qmp_capabilities');
  });

  test('bad arguments are named before anything is sent', async () => {
    await monitor((cmd, c) => c.answer(cmd));
    const q = await connect();
    expect(thrown(() => q.execute('bad name!')).argument).toBe('command');
    expect(thrown(() => q.execute('x', 5 as never)).argument).toBe('args');
    expect(thrown(() => q.execute('x', {}, { timeoutMs: 0 })).argument).toBe('options.timeoutMs');
    expect(thrown(() => q.execute('x', {}, { fds: 3 as never })).argument).toBe('options.fds');
    expect((await rejection(Qmp.connect(sock, { maxLineBytes: 1 }))).argument).toBe('options.maxLineBytes');
  });
});

describe('Qmp passes fds with a command (SCM_RIGHTS)', () => {
  test('the fd arrives with the bytes of its command, the same open file', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmp-fd-test-'));
    const file = path.join(dir, 'qmp.sock');
    const server = UnixServer.listen(file);
    const efd = EventFd.create();
    let peer: UnixSocket | null = null;
    const got: Array<{ text: string; fds: number }> = [];
    const buf = Buffer.alloc(4096);
    server.watch(() => {
      peer = server.accept();
      if (!peer) return;
      peer.send(Buffer.from(`${JSON.stringify(GREETING)}\n`));
      peer.watch(() => {
        const m = peer!.receive(buf, 4);
        if (m === null || m.bytes === 0) return peer!.unwatch();
        for (const line of buf.subarray(0, m.bytes).toString().trim().split('\n')) {
          const cmd = JSON.parse(line) as Cmd;
          got.push({ text: cmd.execute, fds: m.fds.length });
          if (m.fds.length > 0) {
            // The same eventfd: writing to the received copy is readable on ours.
            fs.writeSync(m.fds[0].fd, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]));
          }
          peer!.send(Buffer.from(`${JSON.stringify({ return: {}, id: cmd.id })}\n`));
        }
        m.fds.forEach((f) => f.close());
      });
    });
    try {
      const q = await Qmp.connect(file);
      await q.execute('getfd', { fdname: 'e' }, { fds: [efd] });
      await q.execute('query-status');
      expect(got).toEqual([{ text: 'qmp_capabilities', fds: 0 }, { text: 'getfd', fds: 1 }, { text: 'query-status', fds: 0 }]);
      expect(efd.read()).toBe(1n);
      // An fd closed before sending: only that command fails, with the owner's error.
      const closed = EventFd.create();
      closed.close();
      await expect(q.execute('getfd', { fdname: 'c' }, { fds: [closed] })).rejects.toMatchObject({ code: 'ERR_VHOST_CLOSED' });
      expect(await q.execute('query-status')).toEqual({});
      q.close();
    } finally {
      (peer as UnixSocket | null)?.close();
      server.close();
      efd.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('Qmp reader, property-based (fast-check)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmp-fuzz-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  let n = 0;

  /** A monitor that sends `bytes` (cut at `cuts`) in answer to the first command after capabilities. */
  async function withMonitor(bytes: Buffer, cuts: number[], fn: (q: Qmp) => Promise<void>, maxLineBytes = 4096): Promise<void> {
    const file = path.join(dir, `f${n++}.sock`);
    const server = net.createServer((s) => {
      s.on('error', () => {});
      s.write(`${JSON.stringify(GREETING)}\n`);
      let seen = '';
      s.on('data', (d) => {
        seen += d.toString();
        const lines = seen.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Cmd);
        if (lines.length === 1 && seen.endsWith('\n')) s.write(`${JSON.stringify({ return: {}, id: lines[0].id })}\n`);
        if (lines.length === 2 && seen.endsWith('\n')) {
          let at = 0;
          for (const c of [...cuts.filter((x) => x > 0 && x < bytes.length).sort((a, b) => a - b), bytes.length]) {
            if (c > at) s.write(bytes.subarray(at, c));
            at = c;
          }
        }
      });
    });
    await new Promise<void>((r) => server.listen(file, r));
    const q = await Qmp.connect(file, { maxLineBytes, timeoutMs: 2000 });
    try {
      await fn(q);
    } finally {
      q.close();
      server.close();
    }
  }

  test('however the bytes are cut, events and the answer arrive whole and in order', async () => {
    const event = fc.record({ event: fc.constantFrom('SHUTDOWN', 'DEVICE_DELETED', 'NIC_RX_FILTER_CHANGED'), data: fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 40 }), { maxKeys: 3 }) });
    await fc.assert(fc.asyncProperty(fc.array(event, { maxLength: 5 }), fc.string({ maxLength: 200 }), fc.array(fc.nat({ max: 2000 }), { maxLength: 12 }), async (events, value, cuts) => {
      const text = [...events.map((e) => JSON.stringify(e)), JSON.stringify({ return: { value }, id: 2 })].join('\r\n') + '\n';
      await withMonitor(Buffer.from(text), cuts, async (q) => {
        const got: unknown[] = [];
        q.on('event', (e: QmpEvent) => got.push({ event: e.event, data: e.data }));
        expect(await q.execute('x')).toEqual({ value });
        expect(got).toEqual(events);
      });
    }), { numRuns: 40 });
  });

  test('arbitrary bytes from the monitor: the command settles, the process never throws', async () => {
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 6000 }), fc.array(fc.nat({ max: 6000 }), { maxLength: 8 }), async (bytes, cuts) => {
      await withMonitor(Buffer.from(bytes), cuts, async (q) => {
        // Answered (unlikely), refused as a protocol error, or timed out: never anything else.
        try {
          await q.execute('x', undefined, { timeoutMs: 150 });
        } catch (err) {
          expect(['ERR_VHOST_QMP_DISCONNECTED', 'ETIMEDOUT', 'ERR_VHOST_QMP']).toContain((err as KernelError).code);
        }
      }, 1024);
    }), { numRuns: 30 });
  });
});

describe('Qmp.unref', () => {
  test('an unref()ed connection does not keep a process alive; a ref()ed one does', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmp-ref-'));
    try {
      const lib = path.resolve(__dirname, '../../../lib/vmm/qmp.ts');
      const prelude = tsPrelude(dir);
      const script = (unref: boolean): string => `${prelude}
        const net = require('node:net');
        const { Qmp } = require(${JSON.stringify(lib)});
        const file = ${JSON.stringify(path.join(dir, 'm.sock'))} + process.pid;
        const server = net.createServer((s) => { s.unref(); s.write('${JSON.stringify(GREETING)}\\n'); s.on('data', (d) => s.write(JSON.stringify({ return: {}, id: JSON.parse(d).id }) + '\\n')); });
        server.listen(file, async () => {
          server.unref();
          const q = await Qmp.connect(file);
          ${unref ? 'q.unref();' : ''}
          console.log('connected');
        });`;
      const run = (unref: boolean) => spawnSync(process.execPath, ['-e', script(unref)], { encoding: 'utf8', timeout: 5000 });
      const free = run(true);
      expect(free.stdout.trim()).toBe('connected');
      expect(free.status).toBe(0);
      const held = run(false);
      expect(held.stdout.trim()).toBe('connected');
      expect(held.signal).toBe('SIGTERM'); // still running when the 5 s ran out
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
