// vhost-user-vsock served from Node to a real QEMU 7.2 guest (TCG, on this
// host): the guest's own Linux vsock driver (vmw_vsock_virtio_transport) on
// QEMU's -device vhost-user-vsock-pci, whose CID comes from VhostUserVsock's
// config space. A python3 agent in the guest is reached from the host through
// hybrid vsock (socat's UNIX-CONNECT and the library's vsock.connect({ path,
// port })), 32 MiB each way with SHA-256 on both sides; the guest reaches a
// Node listener on PATH_P; SEQPACKET boundaries survive both ways; a second
// guest reaches the first by CID where the allow-list says so and is refused
// elsewhere; killing one QEMU mid-transfer resets the host-side streams with a
// clear error while the other guest is still served, and a new QEMU on the
// same socket is served again.
// AF_VSOCK is used only inside the guest, never on this host.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import type { Duplex } from 'node:stream';
import { VsockDeviceBackend } from '../../../lib/device/vsock/backend';
import { HybridVsockServer } from '../../../lib/device/vsock/hybrid-server';
import { VhostUserVsock } from '../../../lib/device/vsock/vhost-user-vsock';
import * as vsock from '../../../lib/vsock/socket';
import { waitFor } from '../../support/helpers';
import { program } from '../../support/host-suite';
import { describeWithQemuGuest, QEMU } from '../../support/qemu';
import { ng, type Guest } from '../../support/nested-guest';

const TRANSFER = 32 << 20;
const CID = 7;
const CID_B = 8;
const AGENT_PORT = 1234;
const SEQ_PORT = 1235;
const HOST_PORT = 5000;
const HOST_SEQ_PORT = 5001;

const sha256 = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');

/** The guest agent: prints its CID, serves stream echo-sums on AGENT_PORT and SEQPACKET echo on SEQ_PORT; on `host-go`, connects to the host. */
const AGENT = String.raw`
import fcntl, hashlib, os, socket, struct, sys, threading, time
try:
    with open("/dev/vsock", "rb") as f:
        cid = struct.unpack("I", fcntl.ioctl(f, 0x7b9, b"\0" * 4))[0]
except OSError as e:
    cid = "?" + str(e)
print("LOCAL-CID", cid, flush=True)

def stream_client(c):
    h = hashlib.sha256(); n = 0
    while True:
        d = c.recv(1 << 16)
        if not d: break
        h.update(d); n += len(d)
    print("GOT", n, h.hexdigest(), flush=True)
    out = hashlib.sha256(); sent = 0
    while sent < n:
        d = os.urandom(min(1 << 16, n - sent)); out.update(d); c.sendall(d); sent += len(d)
    print("SENT", sent, out.hexdigest(), flush=True)
    c.close()

def seq_client(c):
    k = 0
    while True:
        m = c.recv(1 << 17)
        if not m: break
        c.send(m); k += 1
    print("SEQ-ECHOED", k, flush=True)
    c.close()

def serve(kind, port, fn):
    s = socket.socket(socket.AF_VSOCK, kind)
    s.bind((socket.VMADDR_CID_ANY, port)); s.listen(4)
    while True:
        c, peer = s.accept()
        threading.Thread(target=fn, args=(c,), daemon=True).start()

threading.Thread(target=serve, args=(socket.SOCK_STREAM, ${AGENT_PORT}, stream_client), daemon=True).start()
threading.Thread(target=serve, args=(socket.SOCK_SEQPACKET, ${SEQ_PORT}, seq_client), daemon=True).start()
time.sleep(0.5)
print("LISTENING", flush=True)

if sys.argv[1] == "route":
    # Guest to guest: stream to CID ${CID}:${AGENT_PORT} (allowed), SEQPACKET to ${CID}:${SEQ_PORT} (not allowed).
    while not os.path.exists("/run/guest/route-go"): time.sleep(0.05)
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.connect((${CID}, ${AGENT_PORT}))
    data = os.urandom(1 << 20); s.sendall(data); s.shutdown(socket.SHUT_WR)
    h = hashlib.sha256(); n = 0
    while True:
        d = s.recv(1 << 16)
        if not d: break
        h.update(d); n += len(d)
    print("ROUTE-STREAM", n, hashlib.sha256(data).hexdigest(), h.hexdigest(), flush=True)
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_SEQPACKET)
    try:
        s.connect((${CID}, ${SEQ_PORT})); print("ROUTE-DENIED none", flush=True)
    except OSError as e:
        print("ROUTE-DENIED", type(e).__name__, e.errno, flush=True)
    while not os.path.exists("/run/guest/done"): time.sleep(0.1)
    sys.exit(0)

while not os.path.exists("/run/guest/host-go"): time.sleep(0.05)

# Stream to host port ${HOST_PORT}: 1 MiB, then the host's SHA-256 answer.
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.connect((2, ${HOST_PORT}))
data = os.urandom(1 << 20); s.sendall(data); s.shutdown(socket.SHUT_WR)
answer = b""
while True:
    d = s.recv(4096)
    if not d: break
    answer += d
print("HOST-ANSWER", answer.decode().strip(), hashlib.sha256(data).hexdigest(), flush=True)
s.close()

# SEQPACKET to host port ${HOST_SEQ_PORT}: each message comes back whole, alone.
s = socket.socket(socket.AF_VSOCK, socket.SOCK_SEQPACKET)
s.connect((2, ${HOST_SEQ_PORT}))
ok = True
for size in (1, 700, 4096, 5000, 60000, 3):
    m = os.urandom(size); s.send(m)
    back = s.recv(1 << 17)
    if back != m: ok = False; print("SEQ-MISMATCH", size, len(back), flush=True)
s.close()
print("SEQ-GUEST", "OK" if ok else "BAD", flush=True)
while not os.path.exists("/run/guest/done"): time.sleep(0.1)
`;

/** Reads a Duplex to its end: the bytes' SHA-256 and count. */
function drain(s: NodeJS.ReadableStream): Promise<{ n: number; sha: string }> {
  return new Promise((resolve, reject) => {
    const h = crypto.createHash('sha256');
    let n = 0;
    s.on('data', (d: Buffer) => {
      h.update(d);
      n += d.length;
    });
    s.once('end', () => resolve({ n, sha: h.digest('hex') }));
    s.once('error', reject);
  });
}

describeWithQemuGuest('vhost-user-vsock: a QEMU guest on a Node back-end', () => {
  let dir: string;
  let g: Guest;
  let backend: VsockDeviceBackend;
  let dev: VhostUserVsock;
  let sockA: string;
  let devB: VhostUserVsock;
  let gB: Guest;
  let gA2: Guest | undefined;
  let boot: (vsockPath: string, mode: string) => Guest;
  let hybrid: HybridVsockServer;
  let hostListener: net.Server;
  const messages: string[] = [];
  const payload = crypto.randomBytes(TRANSFER);
  let bootMs = 0;

  beforeAll(async () => {
    const { kernel, initrd } = ng.buildInitramfs();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vu-vsock-host-'));
    backend = new VsockDeviceBackend();
    const sock = path.join(dir, 'vsock.sock');
    dev = VhostUserVsock.listen(backend, sock, { cid: CID });
    dev.backend!.on('message', (name: string) => messages.push(name));
    hybrid = await HybridVsockServer.listen(backend, path.join(dir, 'hybrid.sock'), { cid: CID });
    sockA = sock;
    const sockB = path.join(dir, 'vsock-b.sock');
    devB = VhostUserVsock.listen(backend, sockB, { cid: CID_B });
    const t0 = Date.now();
    // Default vectors (MSI-X): unlike vhost-user-net, QEMU 7.2 TCG runs vhost-user-vsock-pci with it.
    boot = (vsockPath: string, mode: string): Guest => ng.bootGuest({
      kernel, initrd, smp: 1, accel: 'tcg', qemu: QEMU, hostShare: true,
      script: `python3 /run/guest/agent.py ${mode}`, files: { 'agent.py': AGENT },
      qemuArgs: [
        '-object', 'memory-backend-memfd,id=mem,size=256M,share=on', '-machine', 'memory-backend=mem',
        '-chardev', `socket,id=c0,path=${vsockPath}`, '-device', 'vhost-user-vsock-pci,chardev=c0',
      ],
    });
    g = boot(sock, 'host');
    gB = boot(sockB, 'route');
    await Promise.all([g.waitFor(/^LISTENING/, 180_000), gB.waitFor(/^LISTENING/, 180_000)]);
    bootMs = Date.now() - t0;
    console.log(`guest booted, agent listening after ${bootMs} ms`);
  }, 240_000);

  afterAll(async () => {
    await g?.stop();
    await gB?.stop();
    await gA2?.stop();
    devB?.close();
    hostListener?.close();
    hybrid?.close();
    dev?.close();
    backend?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  test('the guest\'s vsock driver reads its CID from the back-end\'s config space (QEMU: GET_CONFIG)', async () => {
    const m = await g.waitFor(/^LOCAL-CID (\S+)/);
    expect(m[1]).toBe(String(CID));
    // What QEMU 7.2 sent: config read, memory, both rings (0 and 1; QEMU keeps the event queue).
    for (const m of ['GET_FEATURES', 'GET_PROTOCOL_FEATURES', 'SET_PROTOCOL_FEATURES', 'GET_CONFIG', 'SET_FEATURES', 'SET_MEM_TABLE', 'SET_VRING_KICK', 'SET_VRING_CALL']) expect(messages).toContain(m);
    console.log(`QEMU's vhost-user messages: ${[...new Set(messages)].join(' ')}`);
    expect(dev.ready).toBe(true);
  });

  test('socat UNIX-CONNECT through hybrid vsock: 32 MiB each way with the guest agent, SHA-256 equal', async () => {
    const from = g.lines.length;
    const t0 = Date.now();
    const socat = spawn('socat', ['-t', '600', '-', `UNIX-CONNECT:${hybrid.path}`], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    socat.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    // First line OK <port>, then the stream.
    const got = new Promise<{ ok: string; n: number; sha: string }>((resolve, reject) => {
      let head = Buffer.alloc(0);
      let ok: string | null = null;
      const h = crypto.createHash('sha256');
      let n = 0;
      socat.stdout.on('data', (d: Buffer) => {
        if (ok === null) {
          head = Buffer.concat([head, d]);
          const nl = head.indexOf(10);
          if (nl < 0) return;
          ok = head.subarray(0, nl).toString();
          d = head.subarray(nl + 1);
        }
        h.update(d);
        n += d.length;
      });
      socat.once('close', (code) => (ok === null ? reject(new Error(`socat exited ${code} without a line: ${stderr}`)) : resolve({ ok, n, sha: h.digest('hex') })));
    });
    socat.stdin.write(`CONNECT ${AGENT_PORT}\n`);
    socat.stdin.end(payload);
    const r = await got;
    const ms = Date.now() - t0;
    expect(r.ok).toMatch(/^OK \d+$/);
    const gotLine = await g.waitFor(/^GOT (\d+) ([0-9a-f]{64})/, 10_000, from);
    const sentLine = await g.waitFor(/^SENT (\d+) ([0-9a-f]{64})/, 10_000, from);
    expect(Number(gotLine[1])).toBe(TRANSFER);
    expect(gotLine[2]).toBe(sha256(payload));
    expect(Number(sentLine[1])).toBe(TRANSFER);
    expect(r.n).toBe(TRANSFER);
    expect(r.sha).toBe(sentLine[2]);
    console.log(`socat: 32 MiB each way in ${ms} ms`);
  }, 600_000);

  test('the library\'s vsock.connect({ path, port }) through hybrid vsock: 32 MiB each way, SHA-256 equal', async () => {
    const from = g.lines.length;
    const t0 = Date.now();
    const c = vsock.connect({ path: hybrid.path, port: AGENT_PORT });
    await new Promise<void>((resolve, reject) => {
      c.once('connect', resolve);
      c.once('error', reject);
    });
    const back = drain(c);
    c.end(payload);
    const r = await back;
    const ms = Date.now() - t0;
    const gotLine = await g.waitFor(/^GOT (\d+) ([0-9a-f]{64})/, 10_000, from);
    const sentLine = await g.waitFor(/^SENT (\d+) ([0-9a-f]{64})/, 10_000, from);
    expect(gotLine[2]).toBe(sha256(payload));
    expect(Number(sentLine[1])).toBe(TRANSFER);
    expect(r.n).toBe(TRANSFER);
    expect(r.sha).toBe(sentLine[2]);
    expect(hybrid.stats.connected).toBe(2);
    console.log(`vsock.connect (hybrid): 32 MiB each way in ${ms} ms`);
  }, 600_000);

  test('SEQPACKET from the host: backend.connect({ type: \'seqpacket\' }) to a python3 SOCK_SEQPACKET agent, every message comes back whole', async () => {
    const c = backend.connect({ cid: CID, port: SEQ_PORT, type: 'seqpacket', timeout: 20_000 });
    await new Promise<void>((resolve, reject) => {
      c.once('connect', resolve);
      c.once('error', reject);
    });
    const sizes = [1, 700, 4096, 4097, 5000, 60000, 2];
    const got: Buffer[] = [];
    c.on('data', (m: Buffer) => got.push(m));
    const sent = sizes.map((n) => crypto.randomBytes(n));
    for (const m of sent) {
      c.write(m);
      const k = got.length;
      await waitFor(`the echo of a ${m.length}-byte message`, () => got.length > k, 30_000);
    }
    expect(got.map((m) => m.length)).toEqual(sizes);
    expect(got.map(sha256)).toEqual(sent.map(sha256));
    c.end();
    await g.waitFor(/^SEQ-ECHOED 7$/, 20_000);
  }, 120_000);

  test('the guest reaches a Node listener on PATH_P (stream) and an in-process SEQPACKET listener; boundaries survive guest → host', async () => {
    const hostGot: Buffer[] = [];
    hostListener = net.createServer({ allowHalfOpen: true }, (s) => {
      void drain(s).then((r) => s.end(`${r.n} ${r.sha}\n`));
    });
    await new Promise<void>((resolve) => hostListener.listen(`${hybrid.path}_${HOST_PORT}`, resolve));
    const seq = backend.listen(HOST_SEQ_PORT, { type: 'seqpacket' }, (conn) => {
      expect(conn.remoteAddress).toEqual({ cid: CID, port: expect.any(Number) });
      conn.on('data', (m: Buffer) => {
        hostGot.push(m);
        conn.write(m);
      });
    });
    g.signal('host-go');
    const a = await g.waitFor(/^HOST-ANSWER (\d+) ([0-9a-f]{64}) ([0-9a-f]{64})/, 60_000);
    expect(Number(a[1])).toBe(1 << 20);
    expect(a[2]).toBe(a[3]);
    await g.waitFor(/^SEQ-GUEST (\w+)/, 60_000).then((m) => expect(m[1]).toBe('OK'));
    expect(hostGot.map((m) => m.length)).toEqual([1, 700, 4096, 5000, 60000, 3]);
    seq.close();
  }, 120_000);

  test('two guests: CID 8 reaches CID 7 when allowed (1 MiB each way, SHA-256 equal), and is refused where the allow-list says nothing', async () => {
    backend.allow({ from: CID_B, to: CID, port: AGENT_PORT });
    const from = g.lines.length;
    const denied0 = backend.guest(CID_B)!.stats.routeDenied;
    gB.signal('route-go');
    const r = await gB.waitFor(/^ROUTE-STREAM (\d+) ([0-9a-f]{64}) ([0-9a-f]{64})/, 60_000);
    const gotLine = await g.waitFor(/^GOT (\d+) ([0-9a-f]{64})/, 10_000, from);
    const sentLine = await g.waitFor(/^SENT (\d+) ([0-9a-f]{64})/, 10_000, from);
    expect(gotLine[2]).toBe(r[2]);
    expect(Number(r[1])).toBe(1 << 20);
    expect(r[3]).toBe(sentLine[2]);
    const d = await gB.waitFor(/^ROUTE-DENIED (.*)$/, 30_000);
    expect(d[1]).toBe('ConnectionResetError 104'); // Linux's answer to an RST while connecting
    expect(backend.guest(CID_B)!.stats.routeDenied).toBe(denied0 + 1);
  }, 120_000);

  test('killing QEMU mid-transfer resets the host-side streams with a clear error; the back-end keeps serving the other guest', async () => {
    const c = backend.connect({ cid: CID, port: AGENT_PORT, timeout: 20_000 });
    const h: Duplex = vsock.connect({ path: hybrid.path, port: AGENT_PORT });
    await new Promise<void>((resolve, reject) => {
      c.once('connect', resolve);
      c.once('error', reject);
    });
    const inProcErr = new Promise<Error>((resolve) => c.once('error', resolve));
    const hybridClosed = new Promise<Error | undefined>((resolve) => {
      h.once('error', resolve);
      h.once('close', () => resolve(undefined));
    });
    // Enough that neither ends before the kill.
    c.write(payload);
    h.write(payload);
    const tx0 = backend.guest(CID)!.stats.txPackets;
    await waitFor('packets to flow to the guest', () => backend.guest(CID)!.stats.txPackets > tx0 + 100, 60_000);
    g.child.kill('SIGKILL');
    const err = await inProcErr;
    console.log(`in-process stream after SIGKILL: ${(err as NodeJS.ErrnoException).code} ${err.message}; hybrid client: ${(await hybridClosed)?.message ?? 'closed without an error'}`);
    expect((err as NodeJS.ErrnoException).code).toBe('ECONNRESET');
    expect(err.message).toMatch(/guest 7|stopped|went away/);
    await hybridClosed;
    expect(h.destroyed).toBe(true);
    await waitFor('the back-end to see QEMU go', () => !dev.backend!.connected, 30_000);
    expect(dev.ready).toBe(false);
    expect(backend.guests.sort()).toEqual([CID, CID_B]); // the device stays attached, ready for QEMU to come back
    expect(dev.backend!.closed).toBe(false);
    // The other guest is still served.
    expect(devB.ready).toBe(true);
    const fromB = gB.lines.length;
    const cB = backend.connect({ cid: CID_B, port: AGENT_PORT, timeout: 20_000 });
    const small = crypto.randomBytes(1 << 16);
    const backB = drain(cB);
    cB.end(small);
    const rB = await backB;
    expect((await gB.waitFor(/^GOT (\d+) ([0-9a-f]{64})/, 20_000, fromB))[2]).toBe(sha256(small));
    expect(rB.sha).toBe((await gB.waitFor(/^SENT (\d+) ([0-9a-f]{64})/, 20_000, fromB))[2]);
  }, 120_000);

  test('a new QEMU on the same socket after the kill: the guest gets CID 7 again and is reached through hybrid vsock', async () => {
    const t0 = Date.now();
    gA2 = boot(sockA, 'host');
    await gA2.waitFor(/^LISTENING/, 180_000);
    expect((await gA2.waitFor(/^LOCAL-CID (\S+)/))[1]).toBe(String(CID));
    expect(dev.ready).toBe(true);
    const small = crypto.randomBytes(1 << 20);
    const c = vsock.connect({ path: hybrid.path, port: AGENT_PORT });
    const back = drain(c);
    c.end(small);
    const r = await back;
    expect((await gA2.waitFor(/^GOT (\d+) ([0-9a-f]{64})/, 20_000))[2]).toBe(sha256(small));
    expect(r.sha).toBe((await gA2.waitFor(/^SENT (\d+) ([0-9a-f]{64})/, 20_000))[2]);
    console.log(`second QEMU on the same socket: served after ${Date.now() - t0} ms`);
  }, 240_000);
}, { what: 'socat', needs: [program('socat', ['-V'], 'Debian: socat')] });
