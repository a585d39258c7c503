// `linux-vhost demo`: the library end to end in one command. This process
// plays a virtio-net guest (VirtioNetGuest) over vhost-net and a tap of its
// own, answers the host's ping, pushes a burst of frames through the kernel
// and prints what it measured. Everything it creates (tap, address, device,
// memory) goes away when it ends, also on an error or Ctrl-C.
// Then the vsock step: the same process also plays a virtio-vsock guest
// (VirtioVsockGuest over vhost-vsock) running a small agent, and a host
// AF_VSOCK socket (lib/vsock/socket.ts) sends it requests and a bulk upload; every
// answer is checked, a wrong one fails the demo.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import type { VirtioNetGuest as Guest } from '../guest/net';
import type { VirtioVsockConnection, VirtioVsockGuest as VsockGuest } from '../guest/vsock';
import type { VsockSocket } from '../vsock/socket';

/** Host side of the demo's tap (the address exists only on that tap). */
export const DEMO_HOST_IP = '10.77.7.1';
/** The guest's address, answered by its responder. */
export const DEMO_GUEST_IP = '10.77.7.2';
const PREFIX_LEN = 24;
const PING_COUNT = 5;
/** Without --frames the burst stops at this many frames or after BURST_BUDGET_MS, whichever comes first. */
const DEFAULT_FRAMES = 1_000_000;
const BURST_BUDGET_MS = 8_000;
const ETHERTYPE = 0x88b5; // IEEE local experimental: the host stack drops it after counting it
const BATCH = 64;
/** The agent's port in the demo's vsock guest. */
export const DEMO_VSOCK_PORT = 5000;
/** Without vsock.requests the step stops at this many requests or after VSOCK_BUDGET_MS, whichever comes first. */
const DEFAULT_VSOCK_REQUESTS = 1000;
const VSOCK_BUDGET_MS = 3_000;
const DEFAULT_VSOCK_BULK = 8 << 20;
/** Bytes per request line ("echo " + 58 characters + newline); the answer is those 58 characters and a newline. */
export const DEMO_VSOCK_REQUEST_SIZE = 64;
const BULK_WRITE = 65536;

export interface DemoOptions {
  /** Burst size; default: up to 1M frames within 8 s (adapts to slow hosts such as TCG). */
  frames?: number;
  /** Frame size in bytes (60..1514). Default 1514. */
  frameSize?: number;
  /** Where progress lines go. Default: stderr. */
  progress?: (line: string, final: boolean) => void;
  /** Aborts the demo (cleaning up) when signalled. */
  signal?: AbortSignal;
  /** The vsock step: request/response count (default: up to 1000 within 3 s) and bulk upload size in bytes (default 8 MiB). */
  vsock?: { requests?: number; bulkBytes?: number };
}

/** Figures of the vsock step (host AF_VSOCK socket ↔ the agent in the userspace vsock guest). */
export interface DemoVsockReport {
  guestCid: number;
  port: number;
  /** connect() to 'connect' on the host socket. */
  connectMs: number;
  /** The agent's answers to `uptime` (seconds since it listened) and `stats` (the guest's counters, JSON). */
  agentUptimeS: number;
  agentStats: { rxPackets: number; txPackets: number; creditUpdatesSent: number; creditStalls: number; txRingFull: number; connections: number };
  /** Request/response round trips (`requestSize`-byte requests, 59-byte answers), every answer checked; p50/p99 per round trip. */
  requests: number;
  requestSize: number;
  seconds: number;
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  /** Host → guest upload, timed from the first byte until the agent's SHA-256 answer, which matched. */
  bulk: { bytes: number; seconds: number; mbPerSec: number; sha256: string };
}

export interface DemoReport {
  tap: string;
  hostIp: string;
  guestIp: string;
  guestMac: string;
  queueSize: number;
  mergeableRx: boolean;
  ping: { command: string; transmitted: number; received: number; rttMinMs: number | null; rttAvgMs: number | null; rttMaxMs: number | null };
  /** Frames sent by the guest, how many the tap counted in (rx_packets), and the rate over the whole burst. */
  burst: { frames: number; frameSize: number; arrived: number; seconds: number; pps: number; gbps: number };
  /** Where it ran: kernel release, and whether inside the test VM. */
  host: { kernel: string; inVm: boolean };
  guest: { txKicks: number; kicksSuppressed: number; txRingFull: number; rxAnswered: number };
  vsock: DemoVsockReport;
}

/** Parsed `demo` arguments, or a usage error message. */
export type DemoArgs = { help: true } | { help: false; frames?: number; frameSize?: number };

export function demoUsage(): string {
  return [
    'usage: linux-vhost demo [--frames N] [--size BYTES]',
    '',
    'Brings up a tap (host 10.77.7.1/24), vhost-net and a virtio-net guest in this',
    'process (10.77.7.2), pings the guest from the host stack, pushes a burst of',
    'frames guest -> host through the kernel, then runs a vsock agent in a userspace',
    'virtio-vsock guest (port 5000) and times up to 1000 requests (3 s) and an 8 MiB',
    'upload from a host AF_VSOCK socket. Prints the figures. Needs root, /dev/vhost-net,',
    '/dev/net/tun and /dev/vhost-vsock; otherwise it runs itself in the test VM.',
    '',
    '  --frames N     burst size (default: up to 1000000 frames within 8 s)',
    '  --size BYTES   frame size, 60..1514 (default 1514)',
    '',
  ].join('\n');
}

function positiveInt(flag: string, value: string | undefined, min: number, max: number): number | string {
  if (value === undefined) return `${flag} needs a value`;
  if (!/^[0-9]+$/.test(value)) return `${flag}: '${value}' is not a whole number`;
  const n = Number(value);
  if (n < min || n > max) return `${flag}: ${n} is not in ${min}..${max}`;
  return n;
}

/** Parses `demo` arguments without touching the system. */
export function parseDemoArgs(args: string[]): DemoArgs | string {
  const out: { help: false; frames?: number; frameSize?: number } = { help: false };
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i].startsWith('--') && args[i].includes('=') ? args[i].split(/=(.*)/s, 2) : [args[i], undefined];
    if (flag === '--help' || flag === '-h') return { help: true };
    if (flag !== '--frames' && flag !== '--size') return `demo: unknown argument '${args[i]}'`;
    const value = inline ?? args[++i];
    const n = flag === '--frames' ? positiveInt(flag, value, 1, 100_000_000) : positiveInt(flag, value, 60, 1514);
    if (typeof n === 'string') return `demo: ${n}`;
    if (flag === '--frames') out.frames = n;
    else out.frameSize = n;
  }
  return out;
}


function abortError(): Error {
  const err = new Error('demo interrupted');
  err.name = 'AbortError';
  return err;
}

/** Runs a command; resolves with its output, calling onLine for each stdout line. */
function runCommand(cmd: string, args: string[], signal: AbortSignal | undefined, onLine?: (line: string) => void): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError());
      return;
    }
    let child: ChildProcess;
    try {
      child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      reject(err);
      return;
    }
    let stdout = '';
    let stderr = '';
    let pending = '';
    const onAbort = () => child.kill('SIGTERM');
    signal?.addEventListener('abort', onAbort, { once: true });
    // Decoded as text by the streams, so a UTF-8 character split across two chunks stays whole.
    child.stdout!.setEncoding('utf8');
    child.stderr!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      stdout += d;
      pending += d;
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        onLine?.(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
    });
    child.stderr!.on('data', (d: string) => (stderr += d));
    child.on('error', (err) => {
      signal?.removeEventListener('abort', onAbort);
      reject(err);
    });
    child.on('close', (code) => {
      signal?.removeEventListener('abort', onAbort);
      if (signal?.aborted) reject(abortError());
      else resolve({ code, stdout, stderr });
    });
  });
}

function onPath(name: string): boolean {
  return (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').some((dir) => dir !== '' && fs.existsSync(`${dir}/${name}`));
}

/** `ping`, else `busybox ping`. */
export function pingCommand(): string[] {
  if (onPath('ping')) return ['ping'];
  if (onPath('busybox')) return ['busybox', 'ping'];
  throw new Error('demo: neither ping nor busybox is installed (needed for the ping step)');
}

/** Reads counts and RTTs from the summary of iputils or busybox ping. */
export function parsePingSummary(out: string): { transmitted: number; received: number; rttMinMs: number | null; rttAvgMs: number | null; rttMaxMs: number | null } {
  const counts = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(out);
  const rtt = /(?:rtt|round-trip) min\/avg\/max(?:\/mdev)? = ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(out);
  return {
    transmitted: counts ? Number(counts[1]) : 0,
    received: counts ? Number(counts[2]) : 0,
    rttMinMs: rtt ? Number(rtt[1]) : null,
    rttAvgMs: rtt ? Number(rtt[2]) : null,
    rttMaxMs: rtt ? Number(rtt[3]) : null,
  };
}

function readStat(tap: string, name: string): number {
  return Number(fs.readFileSync(`/sys/class/net/${tap}/statistics/${name}`, 'utf8'));
}

/** Resolves on the guest's next 'drain' (or 'close'), removing both listeners. */
function drainOrClose(g: import('node:events').EventEmitter): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      g.off('drain', done);
      g.off('close', done);
      resolve();
    };
    g.on('drain', done);
    g.on('close', done);
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

let lastProgressLine = 0;

/** On a terminal one line rewritten in place; otherwise a line at most every 1.5 s, and each step's last one. */
function defaultProgress(line: string, final: boolean): void {
  if (process.stderr.isTTY) {
    process.stderr.write(`\r\x1b[K${line}${final ? '\n' : ''}`);
    return;
  }
  const now = Date.now();
  if (!final && now - lastProgressLine < 1500) return;
  lastProgressLine = now;
  process.stderr.write(`${line}\n`);
}

/**
 * Runs the demo in this process (root, vhost-net and tun needed) and returns
 * its figures. The tap, its address, the device and the guest memory are
 * released before it returns or throws.
 */
export async function runDemo(options: DemoOptions = {}): Promise<DemoReport> {
  // The addon is loaded only here, so `demo --help` works without a build.
  const { Tap, parseMac } = require('../netdev/tap') as typeof import('../netdev/tap');
  const { VirtioNetGuest } = require('../guest/net') as typeof import('../guest/net');
  const frameSize = options.frameSize ?? 1514;
  if (!Number.isInteger(frameSize) || frameSize < 60 || frameSize > 1514) throw new RangeError(`demo: frameSize must be in 60..1514, got ${frameSize}`);
  if (options.frames !== undefined && (!Number.isInteger(options.frames) || options.frames < 1)) throw new RangeError(`demo: frames must be a positive integer, got ${options.frames}`);
  const vsockRequests = options.vsock?.requests ?? DEFAULT_VSOCK_REQUESTS;
  const vsockBulk = options.vsock?.bulkBytes ?? DEFAULT_VSOCK_BULK;
  if (!Number.isInteger(vsockRequests) || vsockRequests < 1) throw new RangeError(`demo: vsock.requests must be a positive integer, got ${vsockRequests}`);
  if (!Number.isInteger(vsockBulk) || vsockBulk < 1) throw new RangeError(`demo: vsock.bulkBytes must be a positive integer, got ${vsockBulk}`);
  const progress = options.progress ?? defaultProgress;
  const signal = options.signal;
  const check = () => {
    if (signal?.aborted) throw abortError();
  };
  const ping = pingCommand();
  check();

  const tap = Tap.create({ name: 'lvdemo%d', up: true });
  let guest: Guest | null = null;
  try {
    progress(`setting up: tap ${tap.name}, ${DEMO_HOST_IP}/${PREFIX_LEN} on the host side`, false);
    const ip = await runCommand('ip', ['addr', 'add', `${DEMO_HOST_IP}/${PREFIX_LEN}`, 'dev', tap.name], signal);
    if (ip.code !== 0) throw new Error(`demo: ip addr add ${DEMO_HOST_IP}/${PREFIX_LEN} dev ${tap.name} failed: ${ip.stderr.trim()}`);
    guest = VirtioNetGuest.create({ tap, queueSize: 256, mergeableRx: true, responder: { ipv4: DEMO_GUEST_IP } });
    const g = guest;
    g.on('error', () => {
      // the guest closes itself; the step in progress reports it
    });
    check();

    // 1. The host's ping against the guest's responder.
    let replies = 0;
    const pingArgs = [...ping.slice(1), '-c', String(PING_COUNT), '-W', '2', DEMO_GUEST_IP];
    progress(`ping: ${[ping[0], ...pingArgs].join(' ')}`, false);
    const pr = await runCommand(ping[0], pingArgs, signal, (line) => {
      const t = /time[=<]([\d.]+) ?ms/.exec(line);
      if (t) progress(`ping: reply ${++replies}/${PING_COUNT} from ${DEMO_GUEST_IP}, ${t[1]} ms`, false);
    });
    const pingSummary = { command: [ping[0], ...pingArgs].join(' '), ...parsePingSummary(pr.stdout) };
    progress(`ping: ${pingSummary.received}/${pingSummary.transmitted} replies`, true);
    check();

    // 2. A burst guest → host: TX ring → vhost worker → tap → host stack, counted by the tap's rx counters.
    const limit = options.frames ?? DEFAULT_FRAMES;
    const budgetMs = options.frames === undefined ? BURST_BUDGET_MS : Infinity;
    const batch: Buffer[] = [];
    const guestMac = parseMac(g.mac);
    for (let i = 0; i < BATCH; i++) {
      const f = Buffer.alloc(frameSize, 0xa5);
      f.fill(0xff, 0, 6); // broadcast
      f.set(guestMac, 6);
      f.writeUInt16BE(ETHERTYPE, 12);
      batch.push(f);
    }
    const rx0 = readStat(tap.name, 'rx_packets');
    const start = process.hrtime.bigint();
    const elapsedMs = () => Number(process.hrtime.bigint() - start) / 1e6;
    let sent = 0;
    let lastReport = 0;
    const report = (final: boolean) => {
      const arrived = readStat(tap.name, 'rx_packets') - rx0;
      const s = elapsedMs() / 1000;
      progress(`burst: ${sent}${options.frames ? `/${limit}` : ''} sent, ${arrived} arrived, ${s.toFixed(1)} s`, final);
    };
    while (sent < limit && elapsedMs() < budgetMs) {
      check();
      if (g.closed) throw new Error('demo: the guest closed during the burst');
      const want = Math.min(BATCH, limit - sent);
      for (let i = 0; i < want; i++) batch[i].writeUInt32BE(sent + i, 14);
      const n = g.sendBatch(want === BATCH ? batch : batch.slice(0, want));
      sent += n;
      if (n < want) await drainOrClose(g);
      if (elapsedMs() - lastReport > 250) {
        lastReport = elapsedMs();
        report(false);
        await new Promise<void>((r) => setImmediate(r)); // let Ctrl-C and the call watchers in
      }
    }
    // Wait for the tail: the device may still be moving the last ring's worth.
    let arrived = readStat(tap.name, 'rx_packets') - rx0;
    let idleSince = Date.now();
    while (arrived < sent && Date.now() - idleSince < 3000) {
      check();
      await sleep(5);
      const a = readStat(tap.name, 'rx_packets') - rx0;
      if (a !== arrived) idleSince = Date.now();
      arrived = a;
    }
    const seconds = elapsedMs() / 1000;
    report(true);
    const stats = g.stats;
    const pps = arrived / seconds;
    check();

    // 3. vsock: the agent in a userspace virtio-vsock guest, asked by a host AF_VSOCK socket.
    const vsockBudgetMs = options.vsock?.requests === undefined ? VSOCK_BUDGET_MS : Infinity;
    const vsockReport = await runVsockStep(vsockRequests, vsockBudgetMs, vsockBulk, progress, check);
    return {
      tap: tap.name,
      hostIp: DEMO_HOST_IP,
      guestIp: DEMO_GUEST_IP,
      guestMac: g.mac,
      queueSize: g.queueSize,
      mergeableRx: g.mergeableRx,
      ping: pingSummary,
      burst: { frames: sent, frameSize, arrived, seconds, pps, gbps: (pps * frameSize * 8) / 1e9 },
      host: { kernel: os.release(), inVm: process.env.LINUX_VHOST_IN_VM === '1' },
      guest: { txKicks: stats.kicks.tx, kicksSuppressed: stats.kicks.suppressed, txRingFull: stats.txRingFull, rxAnswered: stats.rxAnswered },
      vsock: vsockReport,
    };
  } finally {
    try {
      guest?.close();
    } finally {
      tap.close(); // a non-persistent tap (and its address) disappears with its last fd
    }
  }
}

/**
 * The agent: one text line per request, one line per answer.
 *   echo TEXT    -> TEXT
 *   uptime       -> seconds since it started listening
 *   stats        -> the guest's counters as JSON
 *   put N        -> reads the next N bytes, answers "sha256 HEX N"
 *   anything else -> "error unknown request"
 */
function serveAgent(guest: VsockGuest, conn: VirtioVsockConnection, startedAt: bigint): void {
  let pending: Buffer = Buffer.alloc(0);
  let put: { left: number; bytes: number; hash: ReturnType<typeof createHash> } | null = null;
  const answer = (line: string): void => {
    const cmd = line.startsWith('echo ') ? 'echo' : line.split(' ', 1)[0];
    if (cmd === 'echo') conn.write(`${line.slice(5)}\n`);
    else if (cmd === 'uptime') conn.write(`${(Number(process.hrtime.bigint() - startedAt) / 1e9).toFixed(3)}\n`);
    else if (cmd === 'stats') conn.write(`${JSON.stringify({ ...guest.stats, connections: guest.connections })}\n`);
    else if (cmd === 'put' && /^put [0-9]+$/.test(line)) {
      const n = Number(line.slice(4));
      put = { left: n, bytes: n, hash: createHash('sha256') };
    } else conn.write('error unknown request\n');
  };
  conn.on('data', (chunk: Buffer) => {
    let data = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk;
    pending = Buffer.alloc(0);
    while (data.length > 0) {
      if (put) {
        const take = Math.min(put.left, data.length);
        put.hash.update(data.subarray(0, take));
        put.left -= take;
        data = data.subarray(take);
        if (put.left === 0) {
          conn.write(`sha256 ${put.hash.digest('hex')} ${put.bytes}\n`);
          put = null;
        }
        continue;
      }
      const nl = data.indexOf(0x0a);
      if (nl < 0) {
        pending = Buffer.from(data);
        break;
      }
      answer(data.toString('latin1', 0, nl));
      data = data.subarray(nl + 1);
    }
  });
  conn.on('end', () => conn.end());
  conn.on('error', () => conn.destroy());
}

/** A host socket that sends request lines and collects the answer lines in order. */
class LineClient {
  readonly #sock: VsockSocket;
  #buffered = '';
  readonly #waiting: Array<{ resolve: (line: string) => void; reject: (err: Error) => void }> = [];
  #failed: Error | null = null;

  constructor(sock: VsockSocket) {
    this.#sock = sock;
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      this.#buffered += d;
      let nl: number;
      while ((nl = this.#buffered.indexOf('\n')) >= 0) {
        const line = this.#buffered.slice(0, nl);
        this.#buffered = this.#buffered.slice(nl + 1);
        const w = this.#waiting.shift();
        if (w) w.resolve(line);
        else this.#fail(new Error(`demo: the vsock agent sent an unrequested line '${line.slice(0, 80)}'`));
      }
    });
    sock.on('error', (err: Error) => this.#fail(err));
    sock.on('close', () => this.#fail(new Error('demo: the vsock agent closed the connection')));
  }

  #fail(err: Error): void {
    this.#failed ??= err;
    for (const w of this.#waiting.splice(0)) w.reject(err);
  }

  /** Writes `data` and resolves with the next answer line. */
  ask(data: string | Buffer): Promise<string> {
    if (this.#failed) return Promise.reject(this.#failed);
    return new Promise((resolve, reject) => {
      this.#waiting.push({ resolve, reject });
      this.#sock.write(data);
    });
  }

  /** Writes `data` in `chunk`-byte writes, honouring backpressure. */
  async upload(data: Buffer, chunk: number): Promise<void> {
    for (let off = 0; off < data.length; off += chunk) {
      if (this.#failed) throw this.#failed;
      if (!this.#sock.write(data.subarray(off, off + chunk))) {
        await new Promise<void>((resolve) => {
          const done = () => {
            this.#sock.off('drain', done);
            this.#sock.off('close', done);
            resolve();
          };
          this.#sock.on('drain', done);
          this.#sock.on('close', done);
        });
      }
    }
  }
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

function wrongAnswer(what: string, got: string, want: string): Error {
  return new Error(`demo: the vsock agent answered ${what} with '${got.slice(0, 100)}', expected '${want.slice(0, 100)}'`);
}

/** The vsock step; its guest and socket are closed before it returns or throws. */
async function runVsockStep(limit: number, budgetMs: number, bulkBytes: number, progress: (line: string, final: boolean) => void, check: () => void): Promise<DemoVsockReport> {
  const { VirtioVsockGuest } = require('../guest/vsock') as typeof import('../guest/vsock');
  const vsock = require('../vsock/socket') as typeof import('../vsock/socket');
  const guest = VirtioVsockGuest.create({ cid: 'auto' });
  let sock: VsockSocket | null = null;
  try {
    guest.on('error', () => {
      // the guest closes itself; the request in progress fails with the socket
    });
    const startedAt = process.hrtime.bigint();
    guest.listen(DEMO_VSOCK_PORT, (conn) => serveAgent(guest, conn, startedAt));
    progress(`vsock: guest CID ${guest.cid}, agent on port ${DEMO_VSOCK_PORT}; host connecting`, false);
    const t0 = process.hrtime.bigint();
    const s = vsock.connect({ cid: guest.cid, port: DEMO_VSOCK_PORT, timeout: 10_000 });
    sock = s;
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    const connectMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const client = new LineClient(s);
    check();

    const unknown = await client.ask('reboot\n');
    if (unknown !== 'error unknown request') throw wrongAnswer('an unknown request', unknown, 'error unknown request');

    // Request/response: 64-byte lines, each answer checked before the next request goes out.
    const pad = DEMO_VSOCK_REQUEST_SIZE - 'echo '.length - 1 - 8;
    const latencies: number[] = [];
    const r0 = process.hrtime.bigint();
    let lastReport = 0;
    let requests = 0;
    for (let i = 0; i < limit && (i === 0 || Number(process.hrtime.bigint() - r0) / 1e6 < budgetMs); i++) {
      const text = `${i.toString(16).padStart(8, '0')}${'x'.repeat(pad)}`;
      const t = process.hrtime.bigint();
      const got = await client.ask(`echo ${text}\n`);
      latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
      if (got !== text) throw wrongAnswer(`request ${i}`, got, text);
      requests++;
      const ms = Number(process.hrtime.bigint() - r0) / 1e6;
      if (ms - lastReport > 250) {
        lastReport = ms;
        progress(`vsock: ${requests}${budgetMs === Infinity ? `/${limit}` : ''} requests answered`, false);
        check();
      }
    }
    const seconds = Number(process.hrtime.bigint() - r0) / 1e9;
    latencies.sort((a, b) => a - b);
    progress(`vsock: ${requests}${budgetMs === Infinity ? `/${limit}` : ''} requests answered`, true);

    // Bulk: host -> guest, hashed on both ends.
    const data = randomBytes(bulkBytes);
    const sha256 = createHash('sha256').update(data).digest('hex');
    const b0 = process.hrtime.bigint();
    const answer = client.ask(`put ${bulkBytes}\n`);
    answer.catch(() => {}); // awaited below; the upload may fail first
    await client.upload(data, BULK_WRITE);
    const bulkAnswer = await answer;
    const bulkSeconds = Number(process.hrtime.bigint() - b0) / 1e9;
    if (bulkAnswer !== `sha256 ${sha256} ${bulkBytes}`) throw wrongAnswer(`the ${bulkBytes}-byte upload`, bulkAnswer, `sha256 ${sha256} ${bulkBytes}`);
    progress(`vsock: ${bulkBytes} bytes uploaded, SHA-256 matches`, true);

    const uptime = await client.ask('uptime\n');
    if (!/^[0-9]+\.[0-9]{3}$/.test(uptime)) throw wrongAnswer('uptime', uptime, 'seconds');
    const statsLine = await client.ask('stats\n');
    let agentStats: DemoVsockReport['agentStats'];
    try {
      agentStats = JSON.parse(statsLine) as DemoVsockReport['agentStats'];
    } catch {
      throw wrongAnswer('stats', statsLine, 'JSON');
    }
    if (typeof agentStats.rxPackets !== 'number' || agentStats.connections !== 1) throw wrongAnswer('stats', statsLine, 'counters of 1 connection');
    return {
      guestCid: guest.cid,
      port: DEMO_VSOCK_PORT,
      connectMs,
      agentUptimeS: Number(uptime),
      agentStats,
      requests,
      requestSize: DEMO_VSOCK_REQUEST_SIZE,
      seconds,
      requestsPerSec: requests / seconds,
      p50Ms: percentile(latencies, 50),
      p99Ms: percentile(latencies, 99),
      bulk: { bytes: bulkBytes, seconds: bulkSeconds, mbPerSec: bulkBytes / 1e6 / bulkSeconds, sha256 },
    };
  } finally {
    sock?.destroy();
    guest.close();
  }
}

const fmt = (n: number, digits = 0) => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

/** The report as a few readable lines. */
export function formatDemoReport(r: DemoReport): string {
  const p = r.ping;
  const rtt = p.rttAvgMs === null ? 'no RTT' : `RTT avg ${p.rttAvgMs.toFixed(3)} ms (min ${p.rttMinMs!.toFixed(3)}, max ${p.rttMaxMs!.toFixed(3)})`;
  const b = r.burst;
  const v = r.vsock;
  return [
    'linux-vhost demo: this Node process is a virtio-net guest, vhost-net moves its frames',
    `  host     Linux ${r.host.kernel}${r.host.inVm ? ', inside the test VM (scripts/vm.sh)' : ''}`,
    `  link     tap ${r.tap}: host ${r.hostIp}/${PREFIX_LEN} <-> guest ${r.guestIp} (${r.guestMac}), ${r.queueSize}-entry rings${r.mergeableRx ? ', mergeable RX' : ''}`,
    `  ping     ${p.received}/${p.transmitted} replies from the guest, ${rtt}`,
    `  burst    ${fmt(b.frames)} frames of ${b.frameSize} B guest -> host: ${fmt(b.arrived)} arrived on the tap in ${b.seconds.toFixed(2)} s`,
    `           ${fmt(b.pps)} frames/s, ${fmt(b.gbps, 3)} Gbit/s`,
    `  guest    ${fmt(r.guest.txKicks)} TX kicks (${fmt(r.guest.kicksSuppressed)} saved by EVENT_IDX), ring full ${fmt(r.guest.txRingFull)} times, ${r.guest.rxAnswered} frames answered`,
    `  vsock    agent in a userspace virtio-vsock guest, CID ${v.guestCid} port ${v.port}; host AF_VSOCK socket connected in ${v.connectMs.toFixed(2)} ms`,
    `           ${fmt(v.requests)} requests of ${v.requestSize} B answered in ${v.seconds.toFixed(2)} s: ${fmt(v.requestsPerSec)} requests/s, latency p50 ${v.p50Ms.toFixed(3)} ms, p99 ${v.p99Ms.toFixed(3)} ms`,
    `           ${fmt(v.bulk.bytes / 2 ** 20, 1)} MiB host -> guest in ${v.bulk.seconds.toFixed(2)} s: ${fmt(v.bulk.mbPerSec, 1)} MB/s, SHA-256 checked by the agent (${v.bulk.sha256.slice(0, 16)}…)`,
    `  agent    uptime ${v.agentUptimeS.toFixed(3)} s; guest ${fmt(v.agentStats.rxPackets)} packets in, ${fmt(v.agentStats.txPackets)} out, ${fmt(v.agentStats.creditUpdatesSent)} credit updates sent`,
    '',
  ].join('\n');
}
