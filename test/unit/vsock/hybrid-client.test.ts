// vsock.connect({ path, port }): the hybrid vsock client (Firecracker / Cloud
// Hypervisor protocol) against scripted unix servers, and against socat as a
// judge we did not write. Plain unix sockets only: no AF_VSOCK on this host.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as vsock from '../../../lib/vsock/socket';
import { collect, errorOf, sha256, thrown, waitFor } from '../../support/helpers';

let dir: string;
const servers: net.Server[] = [];
const accepted: net.Socket[] = [];
const sockets: { destroy(): void }[] = [];
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hybrid-client-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const c of accepted.splice(0)) c.destroy(); // server.close() waits for them
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

let n = 0;
/** A unix server at a fresh path running `onConn` per connection; resolves with the path once listening. */
async function scripted(onConn: (c: net.Socket) => void): Promise<string> {
  const p = path.join(dir, `v${n++}.sock`);
  const server = net.createServer({ allowHalfOpen: true }, (c) => {
    accepted.push(c);
    onConn(c);
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(p, r));
  return p;
}

/** Reads the first line a client sends; calls back with it and the bytes after it. */
function onLine(c: net.Socket, cb: (line: string, rest: Buffer) => void): void {
  let buf = Buffer.alloc(0);
  const onData = (d: Buffer): void => {
    buf = Buffer.concat([buf, d]);
    const nl = buf.indexOf(10);
    if (nl < 0) return;
    c.off('data', onData);
    cb(buf.subarray(0, nl).toString(), buf.subarray(nl + 1));
  };
  c.on('data', onData);
}

const track = <T extends { destroy(): void }>(s: T): T => {
  sockets.push(s);
  return s;
};

describe('vsock.connect({ path, port }): the handshake', () => {
  test('sends "CONNECT <port>\\n", takes "OK <port>\\n", then is a byte stream both ways with half-close', async () => {
    let seenLine = '';
    const p = await scripted((c) => onLine(c, (line) => {
      seenLine = line;
      c.write('OK 1073741824\nhello'); // data right behind the OK, in the same segment
      c.on('data', (d) => c.write(d)); // echo
      c.on('end', () => c.end());
    }));
    const s = track(vsock.connect({ path: p, port: 52 }));
    expect(s.connecting).toBe(true);
    await new Promise<void>((r) => s.once('connect', r));
    expect(seenLine).toBe('CONNECT 52');
    expect(s.assignedPort).toBe(1073741824);
    expect(s.connecting).toBe(false);
    expect(s.remoteAddress).toEqual({ path: p, port: 52 });
    const got = collect(s);
    s.end(Buffer.from(' world'));
    expect((await got).toString()).toBe('hello world');
    expect(s.bytesRead).toBe(11);
  });

  test('writes made before OK wait for it and arrive after the CONNECT line, in order', async () => {
    const received: Buffer[] = [];
    const p = await scripted((c) => onLine(c, (line, rest) => {
      expect(line).toBe('CONNECT 7');
      received.push(rest);
      setTimeout(() => c.write('OK 5\n'), 20);
      c.on('data', (d) => received.push(d));
      c.on('end', () => c.end());
    }));
    const s = track(vsock.connect({ path: p, port: 7 }));
    s.write('early-1 ');
    s.end('early-2');
    await collect(s);
    expect(Buffer.concat(received).toString()).toBe('early-1 early-2');
  });
});

describe('vsock.connect({ path, port }): every error path', () => {
  test('no socket at path: ENOENT naming the path, with a hint', async () => {
    const p = path.join(dir, 'missing.sock');
    const err = await errorOf(track(vsock.connect({ path: p, port: 1 })));
    expect({ code: err.code, syscall: err.syscall, path: err.path }).toEqual({ code: 'ENOENT', syscall: 'connect', path: p });
    expect(err.message).toContain(p);
    expect(err.hint).toMatch(/VMM/);
  });

  test('a stale socket file nobody listens on: ECONNREFUSED naming the path', async () => {
    const p = path.join(dir, 'stale.sock');
    // A socket bound by a process that exited without listening: what a crashed VMM leaves.
    execFileSync('python3', ['-c', `import socket; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(p)})`]);
    const err = await errorOf(track(vsock.connect({ path: p, port: 1 })));
    expect({ code: err.code, path: err.path }).toEqual({ code: 'ECONNREFUSED', path: p });
    expect(err.hint).toMatch(/stale/);
  });

  test.each([
    ['not OK', 'NOPE 12\n', /expected "OK <port>".*"NOPE 12"/],
    ['OK without a port', 'OK\n', /"OK"/],
    ['a port that is no number', 'OK 12a\n', /"OK 12a"/],
    ['a port past u32', 'OK 4294967296\n', /"OK 4294967296"/],
    ['a signed port', 'OK -1\n', /"OK -1"/],
    ['control bytes, shown escaped', 'OK \x1b[2J\n', /\\x1b/],
  ])('a malformed answer (%s): ERR_VHOST_VSOCK_HANDSHAKE, the line shown safely', async (_what, answer, message) => {
    const p = await scripted((c) => onLine(c, () => c.write(answer)));
    const err = await errorOf(track(vsock.connect({ path: p, port: 3 })));
    expect({ code: err.code, path: err.path }).toEqual({ code: 'ERR_VHOST_VSOCK_HANDSHAKE', path: p });
    expect(err.message).toMatch(message);
  });

  test('an oversized answer (no newline within HYBRID_LINE_MAX bytes) fails at once, without waiting for more', async () => {
    const p = await scripted((c) => onLine(c, () => c.write('O'.repeat(vsock.HYBRID_LINE_MAX)))); // and then silence
    const s = track(vsock.connect({ path: p, port: 3 }));
    const err = await errorOf(s);
    expect(err.code).toBe('ERR_VHOST_VSOCK_HANDSHAKE');
    expect(err.message).toMatch(/oversized/);
  });

  test('the peer closes before OK (nothing listens on the guest port): ECONNRESET with a hint', async () => {
    const p = await scripted((c) => onLine(c, () => c.end()));
    const err = await errorOf(track(vsock.connect({ path: p, port: 99 })));
    expect({ code: err.code, syscall: err.syscall, path: err.path }).toEqual({ code: 'ECONNRESET', syscall: 'connect', path: p });
    expect(err.hint).toMatch(/nothing listens on port 99/);
  });

  test('no answer within timeout: ETIMEDOUT, and the unix connection is closed', async () => {
    let serverSide: net.Socket | undefined;
    const p = await scripted((c) => {
      serverSide = c;
      c.resume();
    });
    const err = await errorOf(track(vsock.connect({ path: p, port: 3, timeout: 50 })));
    expect({ code: err.code, path: err.path }).toEqual({ code: 'ETIMEDOUT', path: p });
    await waitFor('the server side to see the close', () => serverSide?.readableEnded === true || serverSide?.destroyed === true);
  });

  test('the signal aborts a pending handshake, and an aborted signal fails before connecting', async () => {
    let accepted = 0;
    const p = await scripted((c) => {
      accepted++;
      c.resume();
    });
    const ac = new AbortController();
    const s = track(vsock.connect({ path: p, port: 3, signal: ac.signal }));
    await waitFor('the accept', () => accepted === 1);
    ac.abort();
    expect((await errorOf(s)).code).toBe('ABORT_ERR');
    const err = await errorOf(track(vsock.connect({ path: p, port: 3, signal: AbortSignal.abort() })));
    expect(err.code).toBe('ABORT_ERR');
    expect(accepted).toBe(1);
  });

  test('validation: path with cid, seqpacket, a missing port, a bad path are refused before any connect', () => {
    const cases: [unknown, string, string][] = [
      [{ path: '/x', cid: 3, port: 1 }, 'options.cid', 'ERR_VHOST_INVALID_ARG'],
      [{ path: '/x', port: 1, type: 'seqpacket' }, 'options.type', 'ERR_VHOST_UNSUPPORTED'],
      [{ path: '/x' }, 'options.port', 'ERR_VHOST_INVALID_ARG'],
      [{ path: '/x', port: 2 ** 32 - 1 }, 'options.port', 'ERR_VHOST_OUT_OF_RANGE'],
      [{ path: '', port: 1 }, 'options.path', 'ERR_VHOST_INVALID_ARG'],
      [{ path: 42, port: 1 }, 'options.path', 'ERR_VHOST_INVALID_ARG'],
      [{ path: 'a\0b', port: 1 }, 'options.path', 'ERR_VHOST_INVALID_ARG'],
      [{ path: '/x', port: 1, timeout: 0 }, 'options.timeout', 'ERR_VHOST_OUT_OF_RANGE'],
    ];
    for (const [options, argument, code] of cases) {
      const err = thrown(() => vsock.connect(options as vsock.HybridVsockConnectOptions));
      expect({ argument: err.argument, code: err.code }).toEqual({ argument, code });
    }
  });

  test('each option is read once', () => {
    let reads = 0;
    const options = { port: 1, get path() {
      reads++;
      return path.join(dir, 'nowhere.sock');
    } };
    track(vsock.connect(options)).on('error', () => {});
    expect(reads).toBe(1);
  });
});

describe('socat as the judge', () => {
  let child: ChildProcess | undefined;
  afterEach(() => child?.kill());

  test('a socat hybrid server (shell-scripted CONNECT/OK) echoes 1 MiB back intact', async () => {
    const p = path.join(dir, 'socat.sock');
    // The server side is socat + sh: it checks the exact line the client sent and answers OK, then echoes.
    child = spawn('socat', [`UNIX-LISTEN:${p}`, 'SYSTEM:read l; [ "$l" = "CONNECT 1234" ] || exit 1; echo "OK 1073741825"; exec cat'], { stdio: 'ignore' });
    await waitFor('socat to listen', () => fs.existsSync(p));
    const s = track(vsock.connect({ path: p, port: 1234 }));
    await new Promise<void>((r) => s.once('connect', r));
    expect(s.assignedPort).toBe(1073741825);
    const data = randomBytes(1 << 20);
    const got = collect(s);
    s.end(data);
    const back = await got;
    expect(back.length).toBe(data.length);
    expect(sha256(back)).toBe(sha256(data));
  });
});
