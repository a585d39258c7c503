#!/usr/bin/env node
// Packet I/O benchmark, TX side (guest -> host), part of issue 4's benchmark:
// frames/s and Gbit/s at 64 B and 1500 B through vhost-net from the Node guest
// (VirtioNetGuest.sendBatch, 64 frames per call, one ring publish and at most
// one kick each) against Node writing the same frames straight to a tap fd,
// one write(2) per frame. A frame counts once the tap's rx_packets counter
// has it (the host stack then drops it: local experimental EtherType).
// Prints medians of several runs, the ratio (target vhost >= 2x), and RSS /
// fd count before and after. Not covered yet: RX, and the C ring loop.
//
//   node bench/packets.js [--frames N] [--runs N]
//
// Runs directly when this host has /dev/vhost-net and /dev/net/tun (as root),
// otherwise re-runs itself inside the test VM (scripts/vm.sh). Needs dist/
// (npm run build:ts). Exit 1 when frames go missing.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const ETHERTYPE = 0x88b5;
const BATCH = 64;
const SIZES = [64, 1500];
const TARGET_RATIO = 2;

function usage(msg) {
  if (msg) console.error(`bench/packets: ${msg}`);
  console.error('usage: node bench/packets.js [--frames N] [--runs N]');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { frames: 100_000, runs: 3 };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag !== '--frames' && flag !== '--runs') usage(`unknown option ${flag}`);
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) usage(`${flag} must be a positive integer`);
    opts[flag.slice(2)] = n;
  }
  return opts;
}

function usable(p) {
  try {
    fs.accessSync(p, fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

const rxPackets = (tap) => Number(fs.readFileSync(`/sys/class/net/${tap.name}/statistics/rx_packets`, 'utf8'));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fdCount = () => fs.readdirSync('/proc/self/fd').length;

function frameOf(size) {
  const f = Buffer.alloc(size, 0x5a);
  f.fill(0xff, 0, 6);
  f.writeUInt16BE(ETHERTYPE, 12);
  return f;
}

/** Waits until the tap counted `n` frames since `base` (or 3 s pass without progress). Returns the count. */
async function settle(tap, base, n) {
  let seen = rxPackets(tap) - base;
  let idle = Date.now();
  while (seen < n && Date.now() - idle < 3000) {
    await new Promise((r) => setTimeout(r, 1));
    const now = rxPackets(tap) - base;
    if (now !== seen) idle = Date.now();
    seen = now;
  }
  return seen;
}

async function vhostTx(lib, size, frames) {
  const tap = lib.Tap.create({ name: 'lvbench%d', up: true });
  const guest = lib.VirtioNetGuest.create({ tap, queueSize: 256 });
  try {
    const batch = Array.from({ length: BATCH }, () => frameOf(size));
    const base = rxPackets(tap);
    const t0 = process.hrtime.bigint();
    let sent = 0;
    while (sent < frames) {
      const want = Math.min(BATCH, frames - sent);
      const n = guest.sendBatch(want === BATCH ? batch : batch.slice(0, want));
      sent += n;
      if (n < want) await new Promise((r) => guest.once('drain', r));
    }
    const arrived = await settle(tap, base, frames);
    return { arrived, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
  } finally {
    guest.close();
    tap.close();
  }
}

async function tapFdTx(lib, size, frames) {
  const tap = lib.Tap.create({ name: 'lvbench%d', up: true, vnetHdr: false });
  try {
    const frame = frameOf(size);
    const fd = tap.fd;
    const base = rxPackets(tap);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < frames; i++) fs.writeSync(fd, frame);
    const arrived = await settle(tap, base, frames);
    return { arrived, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
  } finally {
    tap.close();
  }
}

async function main(opts) {
  const lib = { Tap: require(path.join(root, 'dist', 'tap')).Tap, VirtioNetGuest: require(path.join(root, 'dist', 'virtio-net-guest')).VirtioNetGuest };
  console.log(`TX guest -> host, ${opts.frames} frames per run, median of ${opts.runs} runs (interleaved)`); // first: stdout's setup opens an fd
  // Warm up both paths (JIT, lazily opened libuv fds) before the fd / RSS baseline.
  for (const size of SIZES) {
    await vhostTx(lib, size, 1000);
    await tapFdTx(lib, size, 1000);
  }
  global.gc?.();
  const before = { rss: process.memoryUsage().rss, fds: fdCount() };
  let failed = false;
  let missed = false;
  for (const size of SIZES) {
    const pps = { vhost: [], tapfd: [] };
    for (let r = 0; r < opts.runs; r++) {
      for (const [name, fn] of [['vhost', vhostTx], ['tapfd', tapFdTx]]) {
        const { arrived, seconds } = await fn(lib, size, opts.frames);
        if (arrived !== opts.frames) {
          console.log(`  ${name} ${size} B: only ${arrived} of ${opts.frames} frames arrived`);
          failed = true;
        }
        pps[name].push(arrived / seconds);
      }
    }
    const v = median(pps.vhost);
    const t = median(pps.tapfd);
    const gbps = (p) => ((p * size * 8) / 1e9).toFixed(3);
    const ratio = v / t;
    if (ratio < TARGET_RATIO) missed = true;
    console.log(`  ${String(size).padStart(4)} B  vhost-net guest ${Math.round(v).toLocaleString('en-US').padStart(10)} frames/s ${gbps(v)} Gbit/s | tap fd write ${Math.round(t).toLocaleString('en-US').padStart(10)} frames/s ${gbps(t)} Gbit/s | ratio ${ratio.toFixed(2)} (target >= ${TARGET_RATIO}) ${ratio < TARGET_RATIO ? 'MISSED' : 'ok'}`);
  }
  global.gc?.();
  const after = { rss: process.memoryUsage().rss, fds: fdCount() };
  console.log(`  fds ${before.fds} -> ${after.fds}, RSS ${(before.rss / 2 ** 20).toFixed(1)} -> ${(after.rss / 2 ** 20).toFixed(1)} MiB`);
  if (after.fds !== before.fds) failed = true;
  if (missed) console.log('  (a missed target is reported, not a failure)');
  return failed ? 1 : 0;
}

const opts = parseArgs(process.argv.slice(2));
if (process.getuid?.() === 0 && usable('/dev/vhost-net') && usable('/dev/net/tun')) {
  main(opts).then(
    (code) => (process.exitCode = code),
    (err) => {
      console.error(`bench/packets: ${err.stack || err.message}`);
      process.exitCode = 1;
    },
  );
} else if (process.env.LINUX_VHOST_IN_VM === '1') {
  console.error('bench/packets: inside the test VM but /dev/vhost-net or /dev/net/tun is not usable');
  process.exitCode = 1;
} else {
  console.error('bench/packets: this host lacks /dev/vhost-net or /dev/net/tun (or root): running inside the test VM');
  const res = spawnSync('bash', [path.join(root, 'scripts', 'vm.sh'), '--', process.execPath, __filename, ...process.argv.slice(2)], { stdio: 'inherit', cwd: root });
  process.exitCode = res.status ?? 1;
}
