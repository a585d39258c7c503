// The back-end's hybrid vsock server: socat UNIX-CONNECT (a client we did not
// write) and the library's own client reach a guest (the guest protocol engine
// over an in-memory pipe); the guest reaches unix listeners at PATH_P; the
// front door (mode, stale/live socket) and every handshake error path.
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { VsockDeviceBackend } from '../../../lib/device/vsock/backend';
import { HybridVsockServer } from '../../../lib/device/vsock/hybrid-server';
import type { VirtioVsockConnection } from '../../../lib/guest/vsock-connection';
import * as vsock from '../../../lib/vsock/socket';
import { collect, errorOf, sha256, waitFor } from '../../support/helpers';
import { PipeGuest } from '../../support/vsock-pipe';

let dir: string;
let backend: VsockDeviceBackend;
let guest: PipeGuest;
const cleanup: (() => void)[] = [];
let n = 0;
const sockPath = (): string => path.join(dir, `h${n++}.sock`);

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hybrid-server-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
beforeEach(() => {
  backend = new VsockDeviceBackend();
  guest = new PipeGuest(backend, 3);
  guest.listen(1234, (c) => c.pipe(c)); // the guest agent: echo
});
afterEach(() => {
  for (const f of cleanup.splice(0).reverse()) f();
  backend.close();
});

async function serve(p = sockPath(), options: Partial<{ mode: number; handshakeTimeout: number }> = {}): Promise<HybridVsockServer> {
  const s = await HybridVsockServer.listen(backend, p, { cid: 3, ...options });
  cleanup.push(() => s.close());
  return s;
}

/** Sends `input` to the server raw and resolves with everything it answers until it closes. */
function rawClient(p: string, input: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ path: p });
    const chunks: Buffer[] = [];
    c.on('data', (d) => chunks.push(d));
    c.on('error', reject);
    c.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    c.write(input);
  });
}

describe('host → guest through PATH', () => {
  test('socat UNIX-CONNECT: CONNECT 1234 gets OK <host port>, then 1 MiB echoed intact', async () => {
    const s = await serve();
    const data = randomBytes(1 << 20).toString('base64');
    const child = spawn('socat', ['-t', '5', '-', `UNIX-CONNECT:${s.path}`]);
    cleanup.push(() => child.kill());
    const out: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stdin.end(`CONNECT 1234\n${data}`);
    await waitFor('the whole echo', () => Buffer.concat(out).length >= 'OK 1073741824\n'.length + data.length, 30_000);
    const text = Buffer.concat(out).toString();
    const m = /^OK (\d+)\n/.exec(text)!;
    expect(Number(m[1])).toBeGreaterThanOrEqual(0x4000_0000);
    expect(sha256(Buffer.from(text.slice(m[0].length)))).toBe(sha256(Buffer.from(data)));
    expect(s.stats.connected).toBe(1);
  });

  test('the library client: assigned port, 2 MiB each way with checksums', async () => {
    const s = await serve();
    const c = vsock.connect({ path: s.path, port: 1234 });
    cleanup.push(() => c.destroy());
    await new Promise<void>((r) => c.once('connect', r));
    expect(c.assignedPort).toBeGreaterThanOrEqual(0x4000_0000);
    const data = randomBytes(2 << 20);
    const back = collect(c);
    c.end(data);
    expect(sha256(await back)).toBe(sha256(data));
  });

  test('a guest port nobody listens on: closed without OK (the client says ECONNRESET), counted', async () => {
    const s = await serve();
    const err = await errorOf(vsock.connect({ path: s.path, port: 4321 }));
    expect(err.code).toBe('ECONNRESET');
    expect(s.stats.refused).toBe(1);
  });

  test.each([
    ['a malformed line', 'HELLO 1234\n', /^ERR expected "CONNECT <port>"\n$/],
    ['a port past the range', 'CONNECT 4294967295\n', /^ERR expected/],
    ['a port with a sign', 'CONNECT +1\n', /^ERR expected/],
    ['an oversized line', `CONNECT ${'1'.repeat(100)}`, /^ERR handshake line too long\n$/],
  ])('%s: ERR <reason> and a close', async (_what, input, answer) => {
    const s = await serve();
    expect(await rawClient(s.path, input)).toMatch(answer);
    expect(s.stats.handshakeErrors).toBe(1);
  });

  test('a client that never finishes its line: ERR after handshakeTimeout, never a hang', async () => {
    const s = await serve(sockPath(), { handshakeTimeout: 100 });
    const t0 = Date.now();
    expect(await rawClient(s.path, 'CONN')).toBe('ERR no CONNECT line within 100 ms\n');
    expect(Date.now() - t0).toBeLessThan(3000);
  });
});

describe('guest → host PATH_P', () => {
  test('a guest connecting to host port 52 reaches the unix listener at PATH_52; both ways', async () => {
    const s = await serve();
    const listener = net.createServer({ allowHalfOpen: true }, (c) => {
      c.write('hello guest');
      c.on('data', (d) => c.end(`got ${d.toString()}`));
    });
    await new Promise<void>((r) => listener.listen(`${s.path}_52`, r));
    cleanup.push(() => listener.close());
    const g = guest.connect(2, 52);
    await new Promise<void>((r, j) => {
      g.once('connect', r);
      g.once('error', j);
    });
    const got = collect(g);
    g.write('ping');
    expect((await got).toString()).toBe('hello guestgot ping');
  });

  test('nobody at PATH_P: the guest is refused', async () => {
    await serve();
    expect((await errorOf(guest.connect(2, 53))).code).toBe('ECONNREFUSED');
  });

  test('an in-process listener on the port wins over PATH_P', async () => {
    await serve();
    const l = backend.listen(54);
    const accepted = new Promise<VirtioVsockConnection>((r) => l.once('connection', r));
    guest.connect(2, 54);
    expect((await accepted).remoteAddress.cid).toBe(3);
  });
});

describe('the front door', () => {
  test('owner-only (0600) by default, or options.mode; close() removes the file', async () => {
    const s = await serve();
    expect(fs.statSync(s.path).mode & 0o777).toBe(0o600);
    s.close();
    expect(fs.existsSync(s.path)).toBe(false);
    const t = await serve(sockPath(), { mode: 0o660 });
    expect(fs.statSync(t.path).mode & 0o777).toBe(0o660);
  });

  test('a stale socket file is replaced; a live one is refused with EADDRINUSE; a regular file is never removed', async () => {
    const stale = sockPath();
    execFileSync('python3', ['-c', `import socket; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(stale)})`]);
    const s = await serve(stale);
    expect(s.listening).toBe(true);
    const other = new VsockDeviceBackend();
    cleanup.push(() => other.close());
    new PipeGuest(other, 3);
    const live = await HybridVsockServer.listen(other, stale, { cid: 3 }).catch((e: Error & { code?: string }) => e);
    expect((live as Error & { code?: string }).code).toBe('EADDRINUSE');
    const file = sockPath();
    fs.writeFileSync(file, 'precious');
    const notSock = await HybridVsockServer.listen(other, file, { cid: 3 }).catch((e: Error & { code?: string }) => e);
    expect((notSock as Error & { code?: string }).code).toBe('EADDRINUSE');
    expect(fs.readFileSync(file, 'utf8')).toBe('precious');
  });

  test('a CID that is not attached: ENODEV', async () => {
    const err = await HybridVsockServer.listen(backend, sockPath(), { cid: 9 }).catch((e: Error & { code?: string }) => e);
    expect((err as Error & { code?: string }).code).toBe('ENODEV');
  });
});
