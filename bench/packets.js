#!/usr/bin/env node
// Packet I/O benchmark (issues 4 and 18), frames/s and Gbit/s at 64 B and
// 1500 B through vhost-net from the Node guest:
// - TX (guest -> host): VirtioNetGuest.sendBatch, 64 frames per call (one ring
//   publish and at most one kick each), and reserve()/commit() (frames written
//   straight into the ring slots, 64 per commit), against (a) bench/packets.c
//   running the same ring loop in C (target Node/C >= 0.8) and (b) Node writing
//   the same frames straight to a tap fd, one write(2) per frame (target vhost
//   >= 2x). A frame counts once the tap's rx_packets counter has it (the host
//   stack then drops it: local experimental EtherType).
// - RX (host -> guest): `packets send` (C, sendmmsg() on an AF_PACKET socket
//   bound to the tap, 64 frames per call) blasts frames into the tap; the
//   Node guest takes them as 'frames' batches (copies) and as 'loans' (views
//   into the ring slots, given back at once), bench/packets.c counts the
//   frames its RX ring takes (same ring loop, 256 buffers refilled after each
//   collect). The source can outrun the guest under emulation, so the tap
//   drops the excess: the figure is frames received / time from the first to
//   the last, with the share of sent frames taken (target >= 95% where C does).
// Runs interleave (every path once per round, for --runs rounds, default 5)
// per size; prints the median of each path with its spread (min-max), the
// ratios as medians of the per-round ratios (min-max), the JS heap and GC
// counts per frame of each Node path (perf_hooks 'gc' entries; heap deltas
// across a forced GC with --expose-gc), and RSS / fd count before and after.
// --profile adds one more round of the Node paths under the V8 CPU profiler
// (node:inspector), writes build/bench/packets-<path>-<size>.cpuprofile and
// prints where the time went (JS vs N-API calls vs the rest).
//
//   node [--expose-gc] bench/packets.js [--frames N] [--runs N] [--profile]
//
// Runs directly when this host has /dev/vhost-net and /dev/net/tun (as root),
// otherwise re-runs itself inside the test VM (scripts/vm.sh), Node's flags
// included. The C program is built on the host first (build/bench/packets).
// Needs dist/ (npm run build:ts). Exit 1 when TX frames go missing or fds leak;
// a missed target only prints MISSED.
'use strict';
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { PerformanceObserver } = require('node:perf_hooks');
const v8 = require('node:v8');
const { buildC, runHereOrInVm } = require('./here-or-vm');
const { summarize } = require('./profile-summary');
const { parseOptions } = require('./options');

const root = path.resolve(__dirname, '..');
const cBin = path.join(root, 'build', 'bench', 'packets');
const cSrc = path.join(__dirname, 'packets.c');
const ETHERTYPE = 0x88b5;
const BATCH = 64;
const SIZES = [64, 1500];
const TARGET_RATIO = 2;
const TARGET_C_RATIO = 0.8;
const TARGET_TAKEN = 95;

function parseArgs(argv) {
  return parseOptions(argv, {
    name: 'bench/packets',
    usageLine: 'node [--expose-gc] bench/packets.js [--frames N] [--runs N] [--profile]',
    defaults: { frames: 50_000, runs: 5 },
    flags: ['profile'],
  });
}

/** Parses the C program's "key=value ..." line. */
function parseC(out) {
  const fields = Object.fromEntries(out.trim().split(/\s+/).map((kv) => kv.split('=')));
  return { arrived: Number(fields.frames), seconds: Number(fields.seconds), sent: Number(fields.sent ?? fields.frames) };
}

/** Runs `packets <mode> <size> <frames>` (the C ring loop); nothing else runs meanwhile. */
function cRun(mode, size, frames) {
  const res = spawnSync(cBin, [mode, String(size), String(frames)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (res.status !== 0) throw new Error(`build/bench/packets ${mode} ${size} ${frames} exited with ${res.status ?? res.signal}`);
  return parseC(res.stdout);
}

const rxPackets = (tap) => Number(fs.readFileSync(`/sys/class/net/${tap.name}/statistics/rx_packets`, 'utf8'));
const sorted = (xs) => [...xs].sort((a, b) => a - b);
/** Median (the mean of the middle two for an even count). */
const median = (xs) => {
  const s = sorted(xs);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const spread = (xs, digits = 0) => {
  const s = sorted(xs);
  const f = (x) => (digits === 0 ? Math.round(x).toLocaleString('en-US') : x.toFixed(digits));
  return `${f(s[0])}-${f(s[s.length - 1])}`;
};
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

/** TX copy-free: each frame is written into its ring slot through reserve(); one commit() per BATCH. */
async function reserveTx(lib, size, frames) {
  const tap = lib.Tap.create({ name: 'lvbench%d', up: true });
  const guest = lib.VirtioNetGuest.create({ tap, queueSize: 256 });
  try {
    const frame = frameOf(size);
    const base = rxPackets(tap);
    const t0 = process.hrtime.bigint();
    let sent = 0;
    while (sent < frames) {
      const want = Math.min(BATCH, frames - sent);
      let k = 0;
      for (; k < want; k++) {
        const slot = guest.reserve(size);
        if (slot === null) break;
        slot.set(frame);
      }
      sent += guest.commit();
      if (k < want) await new Promise((r) => guest.once('drain', r));
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

const cTx = async (lib, size, frames) => cRun('tx', size, frames);
const cRx = async (lib, size, frames) => cRun('rx', size, frames);

const isOurs = (f) => f.length >= 14 && f[12] === ETHERTYPE >> 8 && f[13] === (ETHERTYPE & 0xff);

/**
 * Host -> guest: the C source blasts `frames` frames into the tap; the Node
 * guest takes them as 'frames' batches (copies) or, with `loans`, as views
 * into the ring slots given back at once.
 */
async function vhostRx(lib, size, frames, loans = false) {
  const tap = lib.Tap.create({ name: 'lvbench%d', up: true });
  const guest = lib.VirtioNetGuest.create({ tap, queueSize: 256 });
  try {
    let received = 0;
    let first = 0n;
    let last = 0n;
    const count = (batch) => {
      let n = 0;
      for (let i = 0; i < batch.length; i++) if (isOurs(batch[i])) n++;
      if (n === 0) return;
      last = process.hrtime.bigint();
      if (received === 0) first = last;
      received += n;
    };
    if (loans) {
      guest.on('loans', (batch) => {
        count(batch);
        guest.giveBack(batch);
      });
    } else {
      guest.on('frames', count);
    }
    const sender = spawn(cBin, ['send', tap.name, String(size), String(frames)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    sender.stdout.on('data', (d) => (out += d));
    const code = await new Promise((resolve, reject) => {
      sender.on('error', reject);
      sender.on('close', resolve);
    });
    if (code !== 0) throw new Error(`build/bench/packets send exited with ${code}`);
    // Let the ring drain: done once nothing arrived for 500 ms (or all did).
    let seen = -1;
    while (received < frames && received !== seen) {
      seen = received;
      await new Promise((r) => setTimeout(r, 500));
    }
    // Timed from the first frame to the last (the sender's start-up is not the guest's).
    return { arrived: received, seconds: Number(last - first) / 1e9, sent: parseC(out).sent };
  } finally {
    guest.close();
    tap.close();
  }
}
const loansRx = (lib, size, frames) => vhostRx(lib, size, frames, true);

// GC events (perf_hooks) counted while a Node path runs.
const gcSeen = { minor: 0, major: 0, ms: 0 };
const { constants: perf } = require('node:perf_hooks');
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const kind = e.detail?.kind ?? e.kind;
    if (kind === perf.NODE_PERFORMANCE_GC_MINOR) gcSeen.minor++;
    else gcSeen.major++;
    gcSeen.ms += e.duration;
  }
}).observe({ entryTypes: ['gc'] });
// perf_hooks delivers 'gc' entries a little later: wait for them.
const tick = () => new Promise((r) => setTimeout(r, 20));

/** Runs one path, with GC counts and (with --expose-gc) the heap left behind, per frame. */
async function measured(fn, lib, size, frames) {
  global.gc?.();
  await tick();
  const heap0 = v8.getHeapStatistics().used_heap_size;
  const gc0 = { ...gcSeen };
  const res = await fn(lib, size, frames);
  await tick();
  const gcs = { minor: gcSeen.minor - gc0.minor, major: gcSeen.major - gc0.major, ms: gcSeen.ms - gc0.ms };
  global.gc?.();
  const kept = v8.getHeapStatistics().used_heap_size - heap0;
  return { ...res, gcs, kept };
}

/** One more round of `fn` under the CPU profiler; writes the profile and prints where the time went. */
async function profiled(name, fn, lib, size, frames) {
  const inspector = require('node:inspector');
  const session = new inspector.Session();
  session.connect();
  const post = (method, params) => new Promise((resolve, reject) => session.post(method, params, (err, r) => (err ? reject(err) : resolve(r))));
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 200 });
  await post('Profiler.start');
  await fn(lib, size, frames);
  const { profile } = await post('Profiler.stop');
  session.disconnect();
  const file = path.join(root, 'build', 'bench', `packets-${name}-${size}.cpuprofile`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(profile));
  console.log(`  profile ${name} ${size} B (${path.relative(root, file)}):`);
  for (const line of summarize(profile, 8)) console.log(`    ${line}`);
}

const fmt = (p) => Math.round(p).toLocaleString('en-US').padStart(9);
const gbps = (p, size) => ((p * size * 8) / 1e9).toFixed(3);
const verdict = (ok) => (ok ? 'ok' : 'MISSED');

/** Runs the paths interleaved for opts.runs rounds; returns per path: frames/s, % of sent taken, GC and heap per run. */
async function rounds(paths, lib, size, opts, check) {
  const r = Object.fromEntries(paths.map(([name]) => [name, { pps: [], taken: [], gcs: [], kept: [], frames: 0 }]));
  for (let round = 0; round < opts.runs; round++) {
    for (const [name, fn, node] of paths) {
      const res = node ? await measured(fn, lib, size, opts.frames) : { ...(await fn(lib, size, opts.frames)), gcs: null, kept: 0 };
      check(name, res);
      r[name].pps.push(res.arrived / res.seconds);
      r[name].taken.push((100 * res.arrived) / (res.sent ?? opts.frames));
      r[name].frames += res.arrived;
      if (res.gcs) r[name].gcs.push(res.gcs);
      r[name].kept.push(res.kept);
    }
  }
  return r;
}

const row = (label, x, size, extra = '') => `    ${label.padEnd(26)} ${fmt(median(x.pps))} frames/s (${spread(x.pps)}) ${gbps(median(x.pps), size)} Gbit/s${extra}`;
const ratios = (a, b) => a.pps.map((v, i) => v / b.pps[i]);
const ratioRow = (label, rs, target) => `    ${label.padEnd(26)} ${median(rs).toFixed(2)} (${spread(rs, 2)}) target >= ${target} ${verdict(median(rs) >= target)}`;
function heapRow(label, x) {
  const minor = x.gcs.reduce((a, g) => a + g.minor, 0);
  const major = x.gcs.reduce((a, g) => a + g.major, 0);
  const ms = x.gcs.reduce((a, g) => a + g.ms, 0);
  const per = (v) => ((1000 * v) / x.frames).toFixed(2);
  const kept = global.gc ? `, heap kept ${(median(x.kept) / (x.frames / x.kept.length)).toFixed(1)} B/frame` : '';
  return `    ${label.padEnd(26)} per 1000 frames: ${per(minor)} minor GCs, ${per(major)} major GCs, ${per(ms)} ms in GC${kept}`;
}

/** The responder alone (no rings): ICMP echo requests answered with respondInto() into one reply buffer, GCs counted. */
async function responderLoop() {
  const { NetResponder, buildIcmpEcho } = require(path.join(root, 'dist', 'guest', 'responder'));
  const r = new NetResponder({ mac: '02:00:00:00:00:02', ipv4: '10.77.0.2' });
  const req = buildIcmpEcho({ srcMac: Uint8Array.of(2, 0, 0, 0, 0, 1), dstMac: r.mac, srcIp: Uint8Array.of(10, 77, 0, 1), dstIp: r.ipv4, id: 1, seq: 1, payload: new Uint8Array(56) });
  const out = new Uint8Array(1514);
  const n = 200_000;
  for (let i = 0; i < 20_000; i++) r.respondInto(req, 0, req.length, out, 12);
  global.gc?.();
  await tick();
  const gc0 = { ...gcSeen };
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) if (r.respondInto(req, 0, req.length, out, 12) === 0) throw new Error('the responder did not answer');
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  await tick();
  console.log(`responder: ${fmt(n / s)} ICMP echo replies/s (respondInto into a slot), ${gcSeen.minor - gc0.minor} minor / ${gcSeen.major - gc0.major} major GCs in ${n} replies`);
}

async function main(opts) {
  const lib = { Tap: require(path.join(root, 'dist', 'netdev', 'tap')).Tap, VirtioNetGuest: require(path.join(root, 'dist', 'guest', 'net')).VirtioNetGuest };
  const load = os.loadavg().map((l) => l.toFixed(2)).join(' ');
  console.log(`bench/packets ${new Date().toISOString()} node ${process.version}, ${os.cpus().length} CPU(s), load ${load}, ${opts.frames} frames per run, ${opts.runs} interleaved rounds; median (min-max)`); // first: stdout's setup opens an fd
  // Warm up every path (JIT, lazily opened libuv fds: child process signal pipe) before the fd / RSS baseline.
  for (const size of SIZES) {
    for (const fn of [vhostTx, reserveTx, cTx, tapFdTx, vhostRx, loansRx]) await fn(lib, size, 1000);
  }
  global.gc?.();
  const before = { rss: process.memoryUsage().rss, fds: fdCount() };
  let failed = false;
  let missed = false;
  const check = (name, { arrived }) => {
    if (arrived !== opts.frames) {
      console.log(`    ${name}: only ${arrived} of ${opts.frames} frames arrived`);
      failed = true;
    }
  };
  await responderLoop();
  const heap = [];
  console.log('TX guest -> host (64 frames per sendBatch / per commit)');
  for (const size of SIZES) {
    const paths = [
      ['Node sendBatch', vhostTx, true],
      ['Node reserve/commit', reserveTx, true],
      ['C ring loop', cTx, false],
      ['Node tap-fd writes', tapFdTx, true],
    ];
    const r = await rounds(paths, lib, size, opts, check);
    console.log(`  ${size} B`);
    for (const [name] of paths) console.log(row(name, r[name], size));
    const lines = [
      ['sendBatch / C', ratios(r['Node sendBatch'], r['C ring loop']), TARGET_C_RATIO],
      ['reserve/commit / C', ratios(r['Node reserve/commit'], r['C ring loop']), TARGET_C_RATIO],
      ['sendBatch / tap-fd writes', ratios(r['Node sendBatch'], r['Node tap-fd writes']), TARGET_RATIO],
      ['reserve/commit / tap-fd', ratios(r['Node reserve/commit'], r['Node tap-fd writes']), TARGET_RATIO],
    ];
    for (const [label, rs, target] of lines) {
      if (median(rs) < target) missed = true;
      console.log(ratioRow(label, rs, target));
    }
    for (const name of ['Node sendBatch', 'Node reserve/commit', 'Node tap-fd writes']) heap.push(heapRow(`TX ${size} B ${name}`, r[name]));
  }
  console.log(`RX host -> guest (C sendmmsg() on AF_PACKET, 64 per call); taken = share of the sent frames the guest received`);
  for (const size of SIZES) {
    const paths = [
      ["Node 'frames' (copies)", vhostRx, true],
      ["Node 'loans' (in place)", loansRx, true],
      ['C ring loop', cRx, false],
    ];
    const r = await rounds(paths, lib, size, opts, () => {});
    console.log(`  ${size} B`);
    const cTook = median(r['C ring loop'].taken);
    for (const [name] of paths) {
      const took = median(r[name].taken);
      const target = name === 'C ring loop' ? '' : ` target >= ${TARGET_TAKEN}% where C takes it: ${verdict(took >= TARGET_TAKEN || cTook < TARGET_TAKEN)}`;
      if (target.endsWith('MISSED')) missed = true;
      console.log(row(name, r[name], size, `, taken ${took.toFixed(0)}% (${spread(r[name].taken)}%)${target}`));
    }
    for (const name of ["Node 'frames' (copies)", "Node 'loans' (in place)"]) {
      const rs = ratios(r[name], r['C ring loop']);
      if (median(rs) < TARGET_C_RATIO) missed = true;
      console.log(ratioRow(`${name.split(' (')[0]} / C`, rs, TARGET_C_RATIO));
      heap.push(heapRow(`RX ${size} B ${name}`, r[name]));
    }
  }
  console.log(`JS heap and GC while each Node path ran${global.gc ? '' : ' (run node --expose-gc for the heap kept)'}`);
  for (const line of heap) console.log(line);
  if (opts.profile) {
    console.log('CPU profiles (one more run of each Node guest path; self time, N-API calls = the ring / eventfd wrappers whose time is native)');
    for (const size of SIZES) {
      for (const [name, fn] of [['sendBatch', vhostTx], ['reserve', reserveTx], ['rx-frames', vhostRx], ['rx-loans', loansRx]]) await profiled(name, fn, lib, size, opts.frames);
    }
  }
  global.gc?.();
  const after = { rss: process.memoryUsage().rss, fds: fdCount() };
  console.log(`  fds ${before.fds} -> ${after.fds}, RSS ${(before.rss / 2 ** 20).toFixed(1)} -> ${(after.rss / 2 ** 20).toFixed(1)} MiB`);
  if (after.fds !== before.fds) failed = true;
  if (missed) console.log('  (a missed target is reported, not a failure)');
  return failed ? 1 : 0;
}

const opts = parseArgs(process.argv.slice(2));
if (process.env.LINUX_VHOST_IN_VM !== '1') buildC('bench/packets', cSrc, cBin);
else if (!fs.existsSync(cBin)) {
  console.error(`bench/packets: ${path.relative(root, cBin)} is missing (it is built on the host before entering the VM)`);
  process.exit(1);
}
runHereOrInVm('bench/packets', __filename, () => main(opts));
