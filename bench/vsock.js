#!/usr/bin/env node
// vsock benchmark, part of issue 5's: a host AF_VSOCK client against a
// userspace virtio-vsock guest (bench/vsock-guest.js, VirtioVsockGuest over
// vhost-vsock, in its own process), Node's lib/vsock/socket.ts socket against
// bench/vsock-client.c (plain blocking AF_VSOCK), both talking to the SAME
// guest process in the same run, interleaved (Node, C, then C, Node, ...):
// - throughput host -> guest at 4 KiB and 64 KiB writes: MiB of a fixed
//   pattern sent to the guest's sink, timed from the first write until the
//   guest's answer (byte count and CRC-32 of all it read, checked);
// - requests/s for 64-byte request/response against the guest's echo port
//   (every answer compared with its request).
// Prints medians and Node/C ratios; the throughput target is Node/C >= 0.8.
//
//   node bench/vsock.js [--mib N] [--requests N] [--runs N]
//
//   --mib       MiB per throughput run (default 16)
//   --requests  round trips per request/response run (default 500)
//   --runs      runs per variant and test, the median is shown (default 5)
//
// AF_VSOCK sockets are opened only as root with /dev/vhost-vsock usable;
// elsewhere the bench builds the C client on the host (build/bench/vsock-client)
// and re-runs itself inside the test VM (scripts/vm.sh). Needs dist/ (npm run
// build:ts). Exit 1 on a functional failure (wrong count or CRC, a socket
// error); a missed target only prints MISSED.
'use strict';
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const zlib = require('node:zlib');
const { buildC, runHereOrInVm } = require('./here-or-vm');

const root = path.resolve(__dirname, '..');
const cBin = path.join(root, 'build', 'bench', 'vsock-client');
const cSrc = path.join(__dirname, 'vsock-client.c');
const SINK_PORT = 6000;
const ECHO_PORT = 6001;
const WRITE_SIZES = [4096, 65536];
const REQUEST_SIZE = 64;
const TARGET = 0.8;

function usage(msg) {
  if (msg) console.error(`bench/vsock: ${msg}`);
  console.error('usage: node bench/vsock.js [--mib N] [--requests N] [--runs N]');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { mib: 16, requests: 500, runs: 5 };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag !== '--mib' && flag !== '--requests' && flag !== '--runs') usage(`unknown option ${flag}`);
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1 || n > 4096) usage(`${flag} must be an integer in 1..4096`);
    opts[flag.slice(2)] = n;
  }
  return opts;
}


/** The bench pattern, as bench/vsock-client.c builds it: LCG words, little-endian. */
function pattern(bytes) {
  const buf = Buffer.allocUnsafe(bytes);
  let x = 0x12345678;
  for (let i = 0; i < bytes; i += 4) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    buf.writeUInt32LE(x, i);
  }
  return buf;
}

/** Starts the guest process; resolves with its CID once it listens. */
function startGuest() {
  const child = spawn(process.execPath, [path.join(__dirname, 'vsock-guest.js'), String(SINK_PORT), String(ECHO_PORT)], { stdio: ['pipe', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`bench/vsock-guest.js exited with ${code} before it was ready`)));
    child.stdout.on('data', (d) => {
      out += d;
      const m = /ready cid=(\d+)/.exec(out);
      if (m) {
        child.removeAllListeners('exit');
        resolve({ child, cid: Number(m[1]) });
      }
    });
  });
}

/** Node client, sink: `data` in writes of `wsize` (write() until it says wait, then 'drain'). */
function nodeSink(vsock, cid, data, wsize) {
  return new Promise((resolve, reject) => {
    let t0 = 0n;
    let c0 = process.cpuUsage();
    let reply = '';
    const sock = vsock.connect({ cid, port: SINK_PORT }, () => {
      t0 = process.hrtime.bigint();
      c0 = process.cpuUsage();
      let off = 0;
      const pump = () => {
        while (off < data.length) {
          const chunk = data.subarray(off, Math.min(off + wsize, data.length));
          off += chunk.length;
          if (!sock.write(chunk)) {
            sock.once('drain', pump);
            return;
          }
        }
        sock.end();
      };
      pump();
    });
    sock.setEncoding('latin1');
    sock.on('data', (d) => (reply += d));
    sock.on('end', () => resolve({ seconds: Number(process.hrtime.bigint() - t0) / 1e9, cpu: cpuSince(c0), reply: reply.trim() }));
    sock.on('error', reject);
  });
}

/** Node client, echo: `count` request/responses of REQUEST_SIZE bytes, each answer checked. */
function nodeEcho(vsock, cid, count) {
  return new Promise((resolve, reject) => {
    const req = Buffer.alloc(REQUEST_SIZE, 'r');
    let t0 = 0n;
    let c0 = process.cpuUsage();
    let i = 0;
    let parts = [];
    let got = 0;
    const send = () => {
      req.writeBigUInt64LE(BigInt(i), 0);
      sock.write(req);
    };
    const sock = vsock.connect({ cid, port: ECHO_PORT }, () => {
      t0 = process.hrtime.bigint();
      c0 = process.cpuUsage();
      send();
    });
    sock.on('data', (d) => {
      parts.push(d);
      got += d.length;
      if (got < REQUEST_SIZE) return;
      const res = parts.length === 1 ? parts[0] : Buffer.concat(parts);
      parts = [];
      got = 0;
      if (res.length !== REQUEST_SIZE || !res.equals(req)) {
        sock.destroy();
        reject(new Error(`echo answer ${i} differs from its request`));
        return;
      }
      if (++i === count) {
        const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        sock.end();
        resolve({ seconds, cpu: cpuSince(c0) });
      } else send();
    });
    sock.on('error', reject);
  });
}

/** Runs the C client to completion (the driver idles meanwhile; the guest is another process). */
function cRun(args) {
  const res = spawnSync(cBin, args.map(String), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (res.status !== 0) throw new Error(`build/bench/vsock-client ${args.join(' ')} exited with ${res.status ?? res.signal}`);
  const line = res.stdout.trim();
  const seconds = Number(/seconds=([\d.]+)/.exec(line)?.[1]);
  const cpu = Number(/cpu=([\d.]+)/.exec(line)?.[1]);
  const reply = /reply=(.*)$/.exec(line)?.[1] ?? '';
  return { seconds, cpu, reply };
}

/** User + system CPU seconds of this process since `c0` (the driver runs only the client under test meanwhile). */
function cpuSince(c0) {
  const d = process.cpuUsage(c0);
  return (d.user + d.system) / 1e6;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (n, d = 1) => n.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });

async function main(opts) {
  const vsock = require(path.join(root, 'dist', 'vsock', 'socket'));
  const total = opts.mib * 2 ** 20;
  const data = pattern(total);
  const expected = `bytes=${total} crc32=${zlib.crc32(data).toString(16).padStart(8, '0')}`;
  const warm = data.subarray(0, 2 ** 20);
  const warmExpected = `bytes=${warm.length} crc32=${zlib.crc32(warm).toString(16).padStart(8, '0')}`;
  const { child, cid } = await startGuest();
  const failures = [];
  const check = (what, reply, want) => {
    if (reply !== want) failures.push(`${what}: the guest answered '${reply}', expected '${want}'`);
  };
  try {
    console.log(`vsock host -> userspace guest (CID ${cid}, its own process): ${opts.mib} MiB per throughput run, ${opts.requests} round trips of ${REQUEST_SIZE} B per request run, median of ${opts.runs} runs, interleaved Node (lib/vsock/socket.ts) / C (blocking AF_VSOCK)`);
    // Warm-up: JIT, the guest's rings and pools, the C binary's page cache.
    check('warm-up Node', (await nodeSink(vsock, cid, warm, 65536)).reply, warmExpected);
    check('warm-up C', cRun(['sink', cid, SINK_PORT, warm.length, 65536]).reply, warmExpected);
    await nodeEcho(vsock, cid, 100);
    cRun(['echo', cid, ECHO_PORT, 100, REQUEST_SIZE]);

    let missed = false;
    for (const wsize of WRITE_SIZES) {
      const mbps = { node: [], c: [] };
      const cpuPerMiB = { node: [], c: [] };
      for (let r = 0; r < opts.runs; r++) {
        for (const who of r % 2 === 0 ? ['node', 'c'] : ['c', 'node']) {
          const { seconds, cpu, reply } = who === 'node' ? await nodeSink(vsock, cid, data, wsize) : cRun(['sink', cid, SINK_PORT, total, wsize]);
          check(`${who} ${wsize} B writes`, reply, expected);
          mbps[who].push(total / 1e6 / seconds);
          cpuPerMiB[who].push((cpu * 1e3) / opts.mib);
        }
      }
      const n = median(mbps.node);
      const c = median(mbps.c);
      const ratio = n / c;
      if (ratio < TARGET) missed = true;
      console.log(`  throughput, ${String(wsize / 1024).padStart(2)} KiB writes   Node ${fmt(n).padStart(8)} MB/s | C ${fmt(c).padStart(8)} MB/s | Node/C ${ratio.toFixed(2)}  target ≥${TARGET}: ${ratio < TARGET ? 'MISSED' : 'met'}`);
      console.log(`                                client CPU: Node ${fmt(median(cpuPerMiB.node), 2)} ms/MiB | C ${fmt(median(cpuPerMiB.c), 2)} ms/MiB`);
    }
    const rps = { node: [], c: [] };
    const cpuPerReq = { node: [], c: [] };
    for (let r = 0; r < opts.runs; r++) {
      for (const who of r % 2 === 0 ? ['node', 'c'] : ['c', 'node']) {
        const { seconds, cpu } = who === 'node' ? await nodeEcho(vsock, cid, opts.requests) : cRun(['echo', cid, ECHO_PORT, opts.requests, REQUEST_SIZE]);
        rps[who].push(opts.requests / seconds);
        cpuPerReq[who].push((cpu * 1e6) / opts.requests);
      }
    }
    const n = median(rps.node);
    const c = median(rps.c);
    console.log(`  ${REQUEST_SIZE} B request/response     Node ${fmt(n, 0).padStart(8)} req/s | C ${fmt(c, 0).padStart(8)} req/s | Node/C ${(n / c).toFixed(2)}  (no target)`);
    console.log(`                                client CPU: Node ${fmt(median(cpuPerReq.node), 0)} µs/request | C ${fmt(median(cpuPerReq.c), 0)} µs/request`);
    console.log(`target ≥${TARGET} (throughput Node/C): ${missed ? 'MISSED' : 'met'}`);
  } catch (err) {
    failures.push(err.stack || err.message);
  } finally {
    child.stdin.end(); // the guest closes its device and exits
    await new Promise((r) => (child.exitCode !== null ? r() : child.on('exit', r)));
  }
  for (const f of failures) console.error(`bench/vsock: FAILED ${f}`);
  return failures.length > 0 ? 1 : 0;
}

const opts = parseArgs(process.argv.slice(2));
// AF_VSOCK sockets only here: root with a usable vhost-vsock (inside the test VM on a host without one).
runHereOrInVm('bench/vsock', __filename, () => {
  if (!fs.existsSync(cBin)) buildC('bench/vsock', cSrc, cBin);
  return main(opts);
}, {
  devices: ['/dev/vhost-vsock'],
  lacking: '/dev/vhost-vsock',
  unusableInVm: 'not root or /dev/vhost-vsock is not usable',
  beforeVm: () => buildC('bench/vsock', cSrc, cBin),
});
