#!/usr/bin/env node
// `npm run bench`: bring-up + teardown of a vhost-net and a vhost-vsock
// device, from Node (low-level API and builders) against bench/bringup.c
// issuing the same ioctls, in one run, in interleaved blocks; then 1000
// cycles per Node variant with fd count and RSS before and after.
//
//   node bench/run.js [--iterations N] [--block N] [--cycles N] [--device net|vsock] [--smp N]
//
//   --iterations  timed cycles per variant (default: net 60, vsock 300)
//   --block       cycles per interleaved block (default 5)
//   --cycles      leak-check cycles per Node variant and device (default 1000; 0 skips)
//   --smp         vCPUs of the test VM (default 1; see bench/README.md)
//
// Runs directly when this host has the vhost devices (as root), otherwise
// re-runs itself inside the test VM (scripts/vm.sh). The C program is built
// on the host first (build/bench/bringup). Exit 1 when something fails
// functionally; a missed target only prints MISSED.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const v8 = require('node:v8');
const vm = require('node:vm');
const { buildC } = require('./here-or-vm');

const root = path.resolve(__dirname, '..');
const cBin = path.join(root, 'build', 'bench', 'bringup');
const cSrc = path.join(__dirname, 'bringup.c');
const TARGET = { 'low-level': 1.3, builder: 1.5 };
// Default timed cycles per variant: a net cycle is ~25 ms in a TCG VM (tap
// unregister waits for RCU), a vsock cycle ~1-2 ms.
const DEFAULT_ITERATIONS = { net: 60, vsock: 300 };
// After a full GC the JS heap is nearly exact; RSS moves with heap layout and
// allocator caches (±1 MiB seen over 1000 cycles), so it gets more slack.
const HEAP_SLACK_BYTES = 256 * 1024;
const RSS_SLACK_BYTES = 4 * 1024 * 1024;

function usage(msg) {
  if (msg) console.error(`bench: ${msg}`);
  console.error('usage: node bench/run.js [--iterations N] [--block N] [--cycles N] [--device net|vsock] [--smp N]');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { iterations: null, block: 5, cycles: 1000, devices: ['net', 'vsock'], smp: 1 };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) usage(`${flag} needs a value`);
    const n = Number(value);
    if (flag === '--device') {
      if (value !== 'net' && value !== 'vsock') usage('--device must be net or vsock');
      opts.devices = [value];
    } else if (['--iterations', '--block', '--cycles', '--smp'].includes(flag)) {
      if (!Number.isInteger(n) || n < (flag === '--cycles' ? 0 : 1)) usage(`${flag} must be a positive integer`);
      opts[flag.slice(2)] = n;
    } else usage(`unknown option ${flag}`);
  }
  return opts;
}

/** Re-runs this script inside the test VM; returns its exit status. */
function runInVm(testVm, argv, smp) {
  const env = { ...process.env };
  // In a VM, and above all under TCG, RCU grace periods last tens of ms; the
  // kernel's synchronize_rcu() calls (vhost-vsock release, tap unregister)
  // would dominate every cycle and hide the library's overhead. Expedited
  // grace periods keep the kernel's part short, which makes the ratio stricter.
  if (!('LINUX_VHOST_VM_APPEND' in env)) env.LINUX_VHOST_VM_APPEND = 'rcupdate.rcu_expedited=1';
  // One vCPU by default: with two, an emulated guest on a busy host stalls on
  // cross-CPU IPIs and wake-ups, and the kernel's time per cycle swings 10x between runs.
  console.error(`[bench] no usable /dev/vhost-net + /dev/vhost-vsock here: running inside the test VM ` +
    `(${smp} vCPU, kernel args: ${env.LINUX_VHOST_VM_APPEND || 'none'})`);
  return testVm.runInTestVm(process.execPath, [__filename, ...argv], { label: 'bench', vmArgs: ['--smp', String(smp)], cwd: root, env });
}

/** Lets require() load lib/*.ts and bench/*.ts from source (transpile only, no type check). */
function registerTs() {
  const ts = require('typescript');
  const compilerOptions = { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.CommonJS, esModuleInterop: true };
  require.extensions['.ts'] = (module, filename) => {
    const { outputText } = ts.transpileModule(fs.readFileSync(filename, 'utf8'), { compilerOptions, fileName: filename });
    module._compile(outputText, filename);
  };
}

// ---- statistics ----------------------------------------------------------

function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
}

function summarize(samples) {
  const s = [...samples].sort((a, b) => a - b);
  return { n: s.length, median: quantile(s, 0.5), p90: quantile(s, 0.9) };
}

const fmt = (us) => us.toFixed(1).padStart(10);

// ---- timing ----------------------------------------------------------------

function timeC(device, n, tapName, cid) {
  const args = [device, String(n), '--warmup', '2', '--tap', tapName, '--cid', String(cid)];
  const res = spawnSync(cBin, args, { encoding: 'utf8' });
  if (res.status !== 0) throw new Error(`C ${device} failed (exit ${res.status ?? res.signal}): ${res.stderr.trim()}`);
  const samples = res.stdout.trim().split('\n').map((line) => JSON.parse(line).us);
  if (samples.length !== n) throw new Error(`C ${device} printed ${samples.length} samples, expected ${n}`);
  return samples;
}

function timeNode(cycle, rig, n) {
  for (let i = 0; i < 2; i++) cycle(rig); // warm-up, as the C side does per block
  const samples = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    cycle(rig);
    samples.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return samples;
}

/** fds, RSS and JS heap after a full GC. */
function footprint(bench, gc) {
  gc();
  gc();
  const { rss, heapUsed } = process.memoryUsage();
  return { fds: bench.fdCount(), rss, heap: heapUsed };
}

/** An emulated (TCG) guest runs JIT-compiled JS far slower relative to syscalls than hardware does. */
function emulatedCpu() {
  try {
    return /QEMU TCG CPU/.test(fs.readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return false;
  }
}

function main() {
  const argv = process.argv.slice(2);
  const opts = parseArgs(argv);
  registerTs();
  const testVm = require('../lib/cli/test-vm.ts');
  const inVm = testVm.insideTestVm();
  const { place } = testVm.whereToRun({ devices: ['/dev/vhost-net', '/dev/vhost-vsock', '/dev/net/tun'] });
  if (place === 'nowhere') {
    console.error('bench: inside the test VM but /dev/vhost-net, /dev/vhost-vsock or /dev/net/tun is missing');
    process.exit(1);
  }
  if (place === 'test-vm') {
    buildC('bench', cSrc, cBin);
    process.exit(runInVm(testVm, argv, opts.smp));
  }
  buildC('bench', cSrc, cBin);
  if (!fs.existsSync(path.join(root, 'build', 'Release'))) {
    console.error('bench: the addon is not built (build/Release missing): run `npm run build:native` first');
    process.exit(1);
  }
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc');
  const bench = require('./bringup.ts');

  const pid = process.pid;
  const cidBase = 100000 + (pid % 1000000) * 4; // far above the CIDs VMs get (3 upward)
  const tapOf = (suffix) => `lvb${pid}${suffix}`;
  const rigs = { 'low-level': bench.createRig(tapOf('l'), cidBase + 1) };
  const builderCycles = bench.builderCycles?.();
  if (builderCycles) rigs.builder = bench.createRig(tapOf('b'), cidBase + 2);
  const cycles = {
    net: { 'low-level': bench.netLowLevel, builder: builderCycles?.net },
    vsock: { 'low-level': bench.vsockLowLevel, builder: builderCycles?.vsock },
  };
  const variants = Object.keys(rigs); // Node variants available

  const cmdline = fs.existsSync('/proc/cmdline') ? fs.readFileSync('/proc/cmdline', 'utf8') : '';
  const tcg = emulatedCpu();
  console.log(`linux-vhost bring-up benchmark: kernel ${os.release()}, node ${process.version}, ${inVm ? 'test VM' : 'host'}` +
    `${tcg ? ' (TCG, emulated CPU)' : ''}, ${os.cpus().length} CPU${/rcu_expedited=1/.test(cmdline) ? ', rcupdate.rcu_expedited=1' : ''}, pid ${pid}`);
  const iterationsOf = (device) => opts.iterations ?? DEFAULT_ITERATIONS[device];
  console.log(`timed cycles per variant: ${opts.devices.map((d) => `${d} ${iterationsOf(d)}`).join(', ')}, ` +
    `in interleaved blocks of ${opts.block} (C, Node, Node, then the reverse order)`);
  if (!builderCycles) console.log('builders: not available in lib/ yet, builder rows skipped');

  // -- interleaved blocks: C, low-level, builder, then the reverse order next round
  const results = {};
  for (const device of opts.devices) {
    const order = ['c', ...variants];
    const samples = Object.fromEntries(order.map((v) => [v, []]));
    const total = iterationsOf(device);
    for (let r = 0, done = 0; done < total; r++, done += opts.block) {
      const n = Math.min(opts.block, total - done);
      for (const v of r % 2 === 0 ? order : [...order].reverse()) {
        if (v === 'c') samples.c.push(...timeC(device, n, tapOf('c'), cidBase));
        else samples[v].push(...timeNode(cycles[device][v], rigs[v], n));
      }
    }
    results[device] = Object.fromEntries(order.map((v) => [v, summarize(samples[v])]));
  }

  console.log('\ndevice  variant      n   median µs      p90 µs  Node-C µs  Node/C  target');
  for (const device of opts.devices) {
    const c = results[device].c;
    for (const [v, s] of Object.entries(results[device])) {
      let tail = '';
      if (v !== 'c') {
        const ratio = s.median / c.median;
        tail = ` ${fmt(s.median - c.median)}   ${ratio.toFixed(2).padStart(5)}  ≤ ${TARGET[v]}  ${ratio <= TARGET[v] ? 'ok' : 'MISSED'}`;
      }
      const name = v === 'c' ? 'C' : v;
      console.log(`${device.padEnd(7)} ${name.padEnd(10)} ${String(s.n).padStart(4)}  ${fmt(s.median)}  ${fmt(s.p90)}${tail}`);
    }
  }
  if (tcg) console.log('note: under TCG, JS and N-API code is slowed ~3x more than syscalls are, so Node/C overstates the overhead (bench/README.md)');

  // -- leak check: N cycles per Node variant, fds and RSS before and after
  let leaked = false;
  if (opts.cycles > 0) {
    console.log(`\n${opts.cycles} bring-up/teardown cycles per Node variant (after 50 warm-up cycles; measured after a full GC):`);
    for (const device of opts.devices) {
      for (const v of variants) {
        const cycle = cycles[device][v];
        for (let i = 0; i < 50; i++) cycle(rigs[v]);
        const before = footprint(bench, gc);
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < opts.cycles; i++) cycle(rigs[v]);
        const secs = Number(process.hrtime.bigint() - t0) / 1e9;
        const after = footprint(bench, gc);
        const dFds = after.fds - before.fds;
        const dRss = after.rss - before.rss;
        const dHeap = after.heap - before.heap;
        const flat = dFds === 0 && dRss <= RSS_SLACK_BYTES && dHeap <= HEAP_SLACK_BYTES;
        if (!flat) leaked = true;
        const mib = (b) => (b / 1048576).toFixed(1);
        const kib = (b) => `${b >= 0 ? '+' : ''}${(b / 1024).toFixed(0)} KiB`;
        console.log(`${device.padEnd(7)} ${v.padEnd(10)} fds ${before.fds} → ${after.fds} (Δ ${dFds}), ` +
          `RSS ${mib(before.rss)} → ${mib(after.rss)} MiB (Δ ${kib(dRss)}), heap Δ ${kib(dHeap)}, ` +
          `${secs.toFixed(1)} s: ${flat ? 'flat' : 'NOT FLAT'}`);
      }
    }
  }

  for (const rig of Object.values(rigs)) rig.mem.close();
  if (leaked) {
    console.error(`bench: fds, RSS or heap grew over the cycles (slack: RSS ${RSS_SLACK_BYTES / 1048576} MiB, heap ${HEAP_SLACK_BYTES / 1024} KiB)`);
    process.exit(1);
  }
}

try {
  main();
} catch (err) {
  console.error(`bench: FAILED: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
}
