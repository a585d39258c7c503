#!/usr/bin/env node
// Soak bench (issue 13, item 6): many create/use/close cycles of the things a
// control plane makes over and over, printing what the process holds after a
// forced GC at checkpoints through each phase:
//   builder: vhost-net builder cycles (build, start, stop, close) over one
//            guest memory, tap and set of eventfds;
//   net:     VirtioNetGuest create, send one frame and see it completed, close;
//   vsock:   VirtioVsockGuest create (CID auto), listen, a host AF_VSOCK
//            client's 64-byte echo round trip, close.
// Each checkpoint: open fds, RSS, RssAnon (/proc/self/status: heap memory,
// not file mappings), V8 heap committed (heapTotal) and used, external and
// ArrayBuffer memory. Then
// per phase the growth per 1,000 cycles over the first and the second half
// and the highest RssAnon of each half: a leak keeps raising it, a plateau
// (allocator caches, V8's young generation and code warming up) rises in the
// first cycles and then moves up and down under the same ceiling.
// Not a test: it prints figures and fails only when fds do not come back.
//
//   node bench/soak.js [--builder N] [--net N] [--vsock N] [--checkpoints N]
//
// Defaults 10000, 2000, 2000 cycles and 8 checkpoints per phase; 0 skips a
// phase. Needs root and /dev/vhost-net, /dev/vhost-vsock, /dev/net/tun; this
// host lacks them: it re-runs itself in the test VM (scripts/vm.sh). Needs
// dist/ (npm run build:ts).
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { once } = require('node:events');
const { runHereOrInVm } = require('./here-or-vm');

const root = path.resolve(__dirname, '..');

// Node gives gc() to scripts started with --expose-gc only; the VM re-run starts this
// script plainly, so switch the flag on here (before any context needs it).
if (typeof global.gc !== 'function') {
  require('node:v8').setFlagsFromString('--expose-gc');
  global.gc = require('node:vm').runInNewContext('gc');
}

function usage(msg) {
  if (msg) console.error(`bench/soak: ${msg}`);
  console.error('usage: node bench/soak.js [--builder N] [--net N] [--vsock N] [--checkpoints N]');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { builder: 10000, net: 2000, vsock: 2000, checkpoints: 8 };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in opts) || !argv[i].startsWith('--')) usage(`unknown option ${argv[i]}`);
    const n = Number(argv[i + 1]);
    if (!Number.isInteger(n) || n < 0 || n > 1e6) usage(`${argv[i]} must be an integer in 0..1000000`);
    opts[key] = n;
  }
  if (opts.checkpoints < 2) usage('--checkpoints must be at least 2');
  return opts;
}

const KiB = 1024;
const fdCount = () => fs.readdirSync('/proc/self/fd').length;
function statusKiB(field) {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** GC until nothing more is freed (finalizers run between rounds), then one sample. */
async function sample(cycle) {
  for (let i = 0; i < 4; i++) {
    global.gc();
    await new Promise((r) => setImmediate(r));
  }
  const m = process.memoryUsage();
  return { cycle, fds: fdCount(), rss: m.rss / KiB, rssAnon: statusKiB('RssAnon'), heapTotal: m.heapTotal / KiB, heap: m.heapUsed / KiB, external: m.external / KiB, arrayBuffers: m.arrayBuffers / KiB };
}

const col = (v, w = 9) => String(v).padStart(w);
function printSample(s) {
  console.log(`${col(s.cycle, 7)} ${col(s.fds, 5)} ${col(Math.round(s.rss))} ${col(Math.round(s.rssAnon))} ${col(Math.round(s.heapTotal))} ${col(Math.round(s.heap))} ${col(Math.round(s.external))} ${col(Math.round(s.arrayBuffers))}`);
}

/** Runs `cycles` of `one(i)`, sampling at evenly spaced checkpoints; returns the samples. */
async function phase(name, cycles, checkpoints, one) {
  console.log(`\n== ${name}: ${cycles} cycles`);
  console.log(' cycles   fds   rss KiB anon KiB hpTot KiB  heap KiB  ext KiB   ab KiB');
  const marks = new Set(Array.from({ length: checkpoints + 1 }, (_, k) => Math.round((cycles * k) / checkpoints)));
  const samples = [];
  const started = Date.now();
  for (let i = 0; i <= cycles; i++) {
    if (marks.has(i)) {
      const s = await sample(i);
      samples.push(s);
      printSample(s);
    }
    if (i < cycles) await one(i);
  }
  const secs = (Date.now() - started) / 1000;
  const [first, mid, last] = [samples[0], samples[Math.floor(samples.length / 2)], samples.at(-1)];
  const per1k = (a, b, key) => (((b[key] - a[key]) / Math.max(1, b.cycle - a.cycle)) * 1000).toFixed(0);
  console.log(`${name}: ${secs.toFixed(1)} s (${((secs / Math.max(1, cycles)) * 1000).toFixed(2)} ms/cycle); fds ${first.fds} -> ${last.fds}`);
  for (const key of ['rss', 'rssAnon', 'heapTotal', 'heap', 'external']) {
    console.log(`${name}: ${key.padEnd(8)} KiB per 1000 cycles: first half ${per1k(first, mid, key).padStart(6)}, second half ${per1k(mid, last, key).padStart(6)}`);
  }
  // Memory after GC moves up and down with the allocator's and V8's caches: a leak raises the
  // ceiling, so compare the highest RssAnon of each half (checkpoint 0 left out).
  const peak = (from, to) => Math.max(...samples.slice(from, to).map((s) => s.rssAnon));
  const half = Math.floor(samples.length / 2);
  console.log(`${name}: RssAnon peak KiB: first half ${peak(1, half + 1)}, second half ${peak(half + 1, samples.length)} (start ${first.rssAnon}, end ${last.rssAnon})`);
  return { name, cycles, secs, samples, fdsBack: last.fds === first.fds };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const lv = require(path.join(root, 'dist', 'index.js'));
  const { VhostNet, GuestMemory, EventFd, Tap, VirtioNetGuest, VirtioVsockGuest, vsock, features, buildArpRequest, parseIpv4, parseMac } = lv;
  console.log(`bench/soak: node ${process.version}, pid ${process.pid}, ${opts.builder} builder, ${opts.net} net guest, ${opts.vsock} vsock guest cycles`);
  const results = [];

  if (opts.builder > 0) {
    const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] });
    const tap = Tap.create({ name: `soak${process.pid % 10000}`, up: true });
    const fds = [EventFd.create(), EventFd.create(), EventFd.create(), EventFd.create()];
    const acked = features.ring.VERSION_1 | features.net.MRG_RXBUF;
    try {
      results.push(await phase('builder', opts.builder, opts.checkpoints, () => {
        const net = VhostNet.builder()
          .memory(mem)
          .backend(tap)
          .features(acked)
          .queue(0, { size: 256, desc: 0x10000n, avail: 0x11000n, used: 0x12000n, kick: fds[0], call: fds[1] })
          .queue(1, { size: 256, desc: 0x20000n, avail: 0x21000n, used: 0x22000n, kick: fds[2], call: fds[3] })
          .start();
        net.stop();
        net.close();
      }));
    } finally {
      for (const f of fds) f.close();
      tap.close();
      mem.close();
    }
  }

  if (opts.net > 0) {
    const tap = Tap.create({ name: `soakn${process.pid % 10000}`, up: true });
    const mac = '52:54:00:00:50:01';
    const frame = buildArpRequest({ srcMac: parseMac(mac), srcIp: parseIpv4('192.0.2.1'), targetIp: parseIpv4('192.0.2.2') });
    try {
      results.push(await phase('net guest', opts.net, opts.checkpoints, async () => {
        const guest = VirtioNetGuest.create({ tap, queueSize: 64, mac });
        try {
          if (!guest.send(frame)) throw new Error('the TX ring was full on the first frame');
          const deadline = Date.now() + 5000;
          while (guest.stats.txCompleted < 1) {
            if (Date.now() > deadline) throw new Error('vhost-net did not complete the TX frame in 5 s');
            await new Promise((r) => setTimeout(r, 1));
          }
        } finally {
          guest.close();
        }
      }));
    } finally {
      tap.close();
    }
  }

  if (opts.vsock > 0) {
    const PORT = 7000;
    const payload = Buffer.alloc(64, 0x5a);
    results.push(await phase('vsock guest', opts.vsock, opts.checkpoints, async () => {
      const guest = VirtioVsockGuest.create({ cid: 'auto' });
      try {
        guest.listen(PORT, (conn) => {
          conn.on('data', (d) => conn.write(d));
          conn.on('end', () => conn.end());
          conn.on('error', () => conn.destroy());
        });
        const host = vsock.connect({ cid: guest.cid, port: PORT, timeout: 5000 });
        try {
          await once(host, 'connect');
          host.write(payload);
          let got = 0;
          host.on('data', (d) => (got += d.length));
          const deadline = Date.now() + 5000;
          while (got < payload.length) {
            if (Date.now() > deadline) throw new Error(`echo: ${got} of ${payload.length} bytes in 5 s`);
            await new Promise((r) => setTimeout(r, 1));
          }
          host.end();
        } finally {
          host.destroy();
        }
      } finally {
        guest.close();
      }
    }));
  }

  console.log('\nsummary (KiB per 1000 cycles, second half of each phase):');
  for (const r of results) {
    const mid = r.samples[Math.floor(r.samples.length / 2)];
    const last = r.samples.at(-1);
    const g = (key) => (((last[key] - mid[key]) / Math.max(1, last.cycle - mid.cycle)) * 1000).toFixed(0);
    console.log(`  ${r.name.padEnd(12)} rss ${g('rss').padStart(6)}  anon ${g('rssAnon').padStart(6)}  heap ${g('heap').padStart(6)}  external ${g('external').padStart(6)}  fds ${r.fdsBack ? 'back to start' : 'NOT back to start'}`);
  }
  return results.every((r) => r.fdsBack) ? 0 : 1;
}

if (require.main === module) {
  runHereOrInVm('bench/soak', __filename, main, {
    devices: ['/dev/vhost-net', '/dev/vhost-vsock', '/dev/net/tun'],
    lacking: '/dev/vhost-net, /dev/vhost-vsock or /dev/net/tun',
  });
}

module.exports = { parseArgs };
