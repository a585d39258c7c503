#!/usr/bin/env node
// vsock device back-end benchmark (issue 16's figures): the SAME guest kernel
// and initramfs under the SAME QEMU, booted twice side by side:
//   (a) node:   -device vhost-user-vsock-pci on this library's VhostUserVsock +
//               VsockDeviceBackend, host side in-process backend.connect({ cid, port });
//   (b) kernel: -device vhost-vsock-pci,guest-cid=N (the kernel's vhost-vsock),
//               host side this library's AF_VSOCK vsock.connect({ cid, port }).
// Both guests have the same memory (memory-backend-memfd, share=on), 1 vCPU,
// and run the same python3 agent (AF_VSOCK in the guest):
//   - throughput host → guest with 64 B, 4 KiB and 64 KiB writes (each a
//     write() on the Duplex), timed from the first write until the guest's
//     "done <bytes>" (it counted every byte after our end());
//   - throughput guest → host (python3 sendall of 64 KiB), until our 'end';
//   - request/response latency: one 64 B message, echoed, per round trip.
// The two modes are interleaved in rounds (node first, then kernel first in
// the next round, ...) so that the machine's drift hits both alike. Printed:
// medians with min–max, Gbit/s, the Node/kernel ratio per size beside the
// published ratio vhost-device-vsock / vhost-vsock (0.2/0.7, 10/36, 41/94
// Gbit/s host → guest at 64 B / 4 KiB / 64 KiB), and MET/MISSED (the goal:
// Node/kernel at least that ratio; a miss does not change the exit status).
//
//   node bench/vsock-backend.js [--rounds N] [--mib N] [--small-kib N] [--pings N] [--profile]
//
//   --rounds     rounds, each one transfer per mode and test (default 3)
//   --mib        MiB per transfer at 4 KiB and 64 KiB writes, and guest → host (default 8)
//   --small-kib  KiB per transfer at 64 B writes (default 512)
//   --pings      round trips per latency run (default 300, after 20 untimed)
//   --profile    then one more node transfer per size under the V8 CPU profiler:
//                build/bench/vsock-backend-node-<size>.cpuprofile and where the time went
//
// Kernel vhost-vsock exists only inside the test VM: as root with
// /dev/vhost-vsock the bench runs here, else it re-runs itself in the test VM
// (scripts/vm.sh). AF_VSOCK is opened only there. The nested guests use KVM
// when it is usable there, else TCG (printed). Needs dist/ (npm run build:ts).
// Exit 1 on a functional failure: a byte count or echo that does not match, a
// wait that timed out (each names what it waited for), fds left open.
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { runHereOrInVm } = require('./here-or-vm');
const { summarize } = require('./profile-summary');
const { parseOptions } = require('./options');
const ng = require('../scripts/nested-guest');

const root = path.resolve(__dirname, '..');
const QEMU = process.env.QEMU_SYSTEM ?? 'qemu-system-x86_64';
const SINK_PORT = 7000;
const ECHO_PORT = 7001;
const SOURCE_PORT = 7002;
const NODE_CID = 3; // the back-end's own CID space: no other guest sees it
const KERNEL_CID = 100_000 + (process.pid % 100_000); // unique among the VM's vhost-vsock guests
const MODES = ['node', 'kernel'];
const SIZES = [64, 4096, 65536];
const PING_SIZE = 64;
const PING_WARMUP = 20;
const G2H_WRITE = 65536;
// Published host → guest Gbit/s on real hardware: [vhost-device-vsock, kernel vhost-vsock].
const PUBLISHED = { 64: [0.2, 0.7], 4096: [10, 36], 65536: [41, 94] };
const BOOT_MS = 3 * 60_000;
const CONNECT_MS = 60_000;
const TRANSFER_MS = 4 * 60_000;
const PING_MS = 4 * 60_000;

function parseArgs(argv) {
  return parseOptions(argv, {
    name: 'bench/vsock-backend',
    usageLine: 'node bench/vsock-backend.js [--rounds N] [--mib N] [--small-kib N] [--pings N] [--profile]',
    defaults: { rounds: 3, mib: 8, 'small-kib': 512, pings: 300 },
    flags: ['profile'],
    max: 65536,
  });
}

// The guest agent: one thread per connection on three ports.
//   sink:   counts bytes until EOF, answers "done <bytes>\n", closes;
//   echo:   sends back what it reads until EOF;
//   source: reads "<write size> <bytes>\n", sends that many zeros in writes of that size, closes.
const AGENT_PY = String.raw`
import os, socket, sys, threading, time
sink_port, echo_port, source_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def sink(c):
    buf = bytearray(1 << 20); n = 0
    while True:
        k = c.recv_into(buf)
        if not k: break
        n += k
    c.sendall(b"done %d\n" % n)
    c.close()

def echo(c):
    while True:
        d = c.recv(1 << 16)
        if not d: break
        c.sendall(d)
    c.close()

def source(c):
    line = b""
    while not line.endswith(b"\n"):
        d = c.recv(64)
        if not d: c.close(); return
        line += d
    size, total = map(int, line.split())
    buf = memoryview(bytes(size)); sent = 0
    while sent < total:
        k = min(size, total - sent); c.sendall(buf[:k]); sent += k
    c.close()

def serve(port, fn):
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.bind((socket.VMADDR_CID_ANY, port)); s.listen(8)
    while True:
        c, _ = s.accept()
        threading.Thread(target=fn, args=(c,), daemon=True).start()

for port, fn in ((sink_port, sink), (echo_port, echo), (source_port, source)):
    threading.Thread(target=serve, args=(port, fn), daemon=True).start()
time.sleep(0.3)
print("LISTENING", flush=True)
threading.Event().wait()  # no polling: an idle guest stays idle; the host kills QEMU at the end
`;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sorted = (xs) => [...xs].sort((a, b) => a - b);
const median = (xs) => sorted(xs)[Math.floor(xs.length / 2)];
const quantile = (xs, q) => sorted(xs)[Math.min(xs.length - 1, Math.floor(q * xs.length))];
/** This process's open fds: number → what it points at. */
function openFds() {
  const fds = new Map();
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      fds.set(fd, fs.readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // the fd readdir itself used
    }
  }
  return fds;
}

/** CPU seconds (user + system, all threads) of process `pid` so far. */
function cpuSeconds(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
  return (Number(f[11]) + Number(f[12])) / 100; // USER_HZ
}

/** `promise`, or a rejection naming `what` after `ms` (or when the guest's QEMU exits first). */
function bounded(guest, promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms / 1000} s`)), ms);
  });
  return guest.whileUp(Promise.race([promise, timeout]), what).finally(() => clearTimeout(timer));
}

/** Resolves once `sock` emitted 'connect'; rejects on 'error'. */
function connected(sock) {
  return new Promise((resolve, reject) => {
    sock.once('error', reject);
    sock.once('connect', () => {
      sock.off('error', reject);
      resolve(sock);
    });
  });
}

/** Collects what `sock` reads until its 'end': resolves with the text (utf8) or byte count. */
function readAll(sock, { count = false } = {}) {
  return new Promise((resolve, reject) => {
    let n = 0;
    const parts = [];
    sock.on('data', (d) => {
      n += d.length;
      if (!count) parts.push(d);
    });
    sock.once('end', () => resolve(count ? n : Buffer.concat(parts).toString('utf8')));
    sock.once('error', reject);
  });
}

/** Writes `total` bytes in writes of `size` (each a write() call), honouring backpressure, then end(). */
async function writeAll(sock, pattern, size, total) {
  let failed = null;
  const onError = (err) => (failed = err);
  sock.on('error', onError);
  for (let off = 0; off < total; ) {
    const k = Math.min(size, total - off);
    const ok = sock.write(pattern.subarray(0, k));
    off += k;
    if (!ok) {
      await new Promise((resolve) => {
        const done = () => {
          sock.off('drain', done);
          sock.off('close', done);
          resolve();
        };
        sock.on('drain', done);
        sock.on('close', done);
      });
    }
    if (failed) throw failed;
  }
  sock.end();
  sock.off('error', onError);
}

async function main(opts) {
  const lib = require(path.join(root, 'dist', 'index.js'));
  const kvm = ng.kvmUsable();
  const accel = kvm ? 'kvm' : 'tcg';
  const { kernel, initrd } = ng.buildInitramfs();
  // Node keeps a /dev/null open after its first child with an 'ignore' stdio (once per process):
  // spawn one before counting, so that fd is not taken for a leak.
  await new Promise((resolve, reject) => spawn('true', [], { stdio: ['ignore', 'pipe', 'pipe'] }).on('error', reject).on('close', resolve));
  const fdsBefore = openFds();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lv-vsock-bench-'));
  const backend = new lib.VsockDeviceBackend();
  const dev = lib.VhostUserVsock.listen(backend, path.join(dir, 'vsock.sock'), { cid: NODE_CID });
  const big = opts.mib << 20;
  const small = opts['small-kib'] << 10;
  const pattern = Buffer.alloc(65536, 0x5a);
  const guests = {};
  const open = {
    node: (port) => backend.connect({ cid: NODE_CID, port, timeout: CONNECT_MS }),
    kernel: (port) => lib.vsock.connect({ cid: KERNEL_CID, port, timeout: CONNECT_MS }),
  };
  const h2g = Object.fromEntries(MODES.map((m) => [m, Object.fromEntries(SIZES.map((s) => [s, []]))]));
  const cpuShare = Object.fromEntries(MODES.map((m) => [m, Object.fromEntries(SIZES.map((s) => [s, { node: [], qemu: [] }]))]));
  const g2h = Object.fromEntries(MODES.map((m) => [m, []]));
  const rtts = Object.fromEntries(MODES.map((m) => [m, []]));
  console.log(
    `vsock back-ends under one QEMU (guest kernel ${path.basename(kernel)}, ${QEMU}), nested guests with -accel ${accel}` +
      `${kvm ? '' : ' (no usable KVM here)'}, 1 vCPU, 256 MiB memfd each; ${opts.rounds} rounds, modes interleaved`,
  );
  console.log(`  host → guest: ${opts['small-kib']} KiB at 64 B writes, ${opts.mib} MiB at 4 KiB and 64 KiB; guest → host: ${opts.mib} MiB in 64 KiB sendall; latency: ${opts.pings} × ${PING_SIZE} B round trips`);
  try {
    const common = { kernel, initrd, smp: 1, mem: 256, qemu: QEMU, accel, script: `python3 /run/guest/agent.py ${SINK_PORT} ${ECHO_PORT} ${SOURCE_PORT}`, files: { 'agent.py': AGENT_PY } };
    const memArgs = ['-object', 'memory-backend-memfd,id=mem,size=256M,share=on', '-machine', 'memory-backend=mem'];
    const device = {
      node: ['-chardev', `socket,id=c0,path=${path.join(dir, 'vsock.sock')}`, '-device', 'vhost-user-vsock-pci,chardev=c0'],
      kernel: ['-device', `vhost-vsock-pci,guest-cid=${KERNEL_CID}`],
    };
    // One after the other: two nested boots at once on the test VM's 2 vCPUs only take longer.
    for (const m of MODES) {
      const t0 = Date.now();
      guests[m] = ng.bootGuest({ ...common, qemuArgs: [...memArgs, ...device[m]] });
      await guests[m].waitFor(/^LISTENING/, BOOT_MS).catch((err) => {
        throw new Error(`${m}: the guest agent did not listen: ${err.message}\n${guests[m].why()}`);
      });
      console.log(`  ${m}: guest booted, agent listening after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }

    /**
     * One host → guest transfer: seconds from the first write to the guest's "done <bytes>",
     * and the CPU this process and the guest's QEMU used meanwhile (shares of that time).
     */
    const sendTo = async (mode, size, total) => {
      const g = guests[mode];
      const sock = await bounded(g, connected(open[mode](SINK_PORT)), CONNECT_MS, `${mode}: connect to the guest's sink`);
      try {
        const answer = readAll(sock);
        const cpu0 = [cpuSeconds(process.pid), cpuSeconds(g.child.pid)];
        const start = process.hrtime.bigint();
        await bounded(g, writeAll(sock, pattern, size, total), TRANSFER_MS, `${mode}: writing ${total} B in ${size} B writes`);
        const text = await bounded(g, answer, TRANSFER_MS, `${mode}: the guest's "done" after ${total} B in ${size} B writes`);
        const seconds = Number(process.hrtime.bigint() - start) / 1e9;
        const cpu = { node: (cpuSeconds(process.pid) - cpu0[0]) / seconds, qemu: (cpuSeconds(g.child.pid) - cpu0[1]) / seconds };
        if (text.trim() !== `done ${total}`) throw new Error(`${mode}: the guest counted ${JSON.stringify(text.trim())}, expected "done ${total}" (${size} B writes)`);
        return { seconds, cpu };
      } finally {
        sock.destroy();
      }
    };

    /** One guest → host transfer: seconds from the request to our 'end', bytes checked. */
    const receiveFrom = async (mode, total) => {
      const g = guests[mode];
      const sock = await bounded(g, connected(open[mode](SOURCE_PORT)), CONNECT_MS, `${mode}: connect to the guest's source`);
      try {
        const got = readAll(sock, { count: true });
        const start = process.hrtime.bigint();
        sock.write(`${G2H_WRITE} ${total}\n`);
        const n = await bounded(g, got, TRANSFER_MS, `${mode}: ${total} B from the guest`);
        const seconds = Number(process.hrtime.bigint() - start) / 1e9;
        if (n !== total) throw new Error(`${mode}: got ${n} B from the guest, expected ${total}`);
        return seconds;
      } finally {
        sock.destroy();
      }
    };

    /** Round trips of one PING_SIZE message each; resolves with the timed ones in µs. */
    const pingPong = async (mode, count) => {
      const g = guests[mode];
      const sock = await bounded(g, connected(open[mode](ECHO_PORT)), CONNECT_MS, `${mode}: connect to the guest's echo`);
      try {
        const out = [];
        const msg = Buffer.alloc(PING_SIZE);
        let got = [];
        let have = 0;
        let wake = null;
        let failed = null;
        sock.on('data', (d) => {
          got.push(d);
          have += d.length;
          if (have >= PING_SIZE && wake) wake();
        });
        sock.on('error', (err) => {
          failed = err;
          wake?.();
        });
        const run = async () => {
          for (let i = 0; i < PING_WARMUP + count; i++) {
            msg.writeUInt32LE(i, 0);
            const start = process.hrtime.bigint();
            const back = new Promise((resolve) => (wake = resolve));
            sock.write(msg);
            if (have < PING_SIZE) await back;
            wake = null;
            if (failed) throw failed;
            const us = Number(process.hrtime.bigint() - start) / 1e3;
            const reply = Buffer.concat(got);
            if (reply.length !== PING_SIZE || !reply.equals(msg)) throw new Error(`${mode}: echo ${i} came back as ${reply.length} B${reply.length === PING_SIZE ? ' that differ' : ''}`);
            got = [];
            have = 0;
            if (i >= PING_WARMUP) out.push(us);
          }
        };
        await bounded(g, run(), PING_MS, `${mode}: ${count} echo round trips`);
        return out;
      } finally {
        sock.destroy();
      }
    };

    // Untimed: the first transfers of a mode run colder code (JIT) on both sides.
    for (const mode of MODES) {
      for (const size of SIZES) await sendTo(mode, size, Math.max(size, (size === 64 ? small : big) >> 2));
      await receiveFrom(mode, Math.max(G2H_WRITE, big >> 2));
    }
    console.log('  warm-up: one untimed quarter-size transfer per mode, size and direction');
    for (let r = 1; r <= opts.rounds; r++) {
      const order = r % 2 === 1 ? MODES : [...MODES].reverse();
      const row = [];
      for (const size of SIZES) {
        const total = size === 64 ? small : big;
        for (const mode of order) {
          const { seconds, cpu } = await sendTo(mode, size, total);
          h2g[mode][size].push((total * 8) / seconds / 1e9);
          cpuShare[mode][size].node.push(cpu.node);
          cpuShare[mode][size].qemu.push(cpu.qemu);
        }
        row.push(`${fmtSize(size)} ${order.map((m) => `${m} ${fmtG(h2g[m][size].at(-1))}`).join(' ')}`);
      }
      for (const mode of order) g2h[mode].push((big * 8) / (await receiveFrom(mode, big)) / 1e9);
      row.push(`g→h ${order.map((m) => `${m} ${fmtG(g2h[m].at(-1))}`).join(' ')}`);
      for (const mode of order) rtts[mode].push(...(await pingPong(mode, opts.pings)));
      console.log(`  round ${r}: ${row.join(' | ')} Gbit/s`);
    }
    if (opts.profile) {
      console.log('  CPU profiles of one more node transfer per size (self time; N-API calls = the ring / eventfd wrappers whose time is native):');
      for (const size of SIZES) await profiled(`node-${size}`, () => sendTo('node', size, size === 64 ? small : big));
    }
  } finally {
    await Promise.all(Object.values(guests).map((g) => g.stop()));
    dev.close();
    backend.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }

  report(h2g, cpuShare, g2h, rtts, dev);
  await sleep(200); // closes that complete on the next turns of the loop
  const fdsAfter = openFds();
  const leaked = [...fdsAfter].filter(([fd, target]) => fdsBefore.get(fd) !== target);
  if (leaked.length > 0) {
    console.error(`bench/vsock-backend: fds left open: ${leaked.map(([fd, target]) => `${fd} → ${target}`).join(', ')}`);
    return 1;
  }
  console.log(`  fds: ${fdsAfter.size} before and after (no leak)`);
  return 0;
}

/** `fn()` under the V8 CPU profiler; writes the profile and prints where the time went. */
async function profiled(name, fn) {
  const inspector = require('node:inspector');
  const session = new inspector.Session();
  session.connect();
  const post = (method, params) => new Promise((resolve, reject) => session.post(method, params, (err, r) => (err ? reject(err) : resolve(r))));
  try {
    await post('Profiler.enable');
    await post('Profiler.setSamplingInterval', { interval: 200 });
    await post('Profiler.start');
    await fn();
    const { profile } = await post('Profiler.stop');
    const file = path.join(root, 'build', 'bench', `vsock-backend-${name}.cpuprofile`);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, JSON.stringify(profile));
    console.log(`  profile ${name} (${path.relative(root, file)}):`);
    for (const line of summarize(profile, 12)) console.log(`    ${line}`);
  } finally {
    session.disconnect();
  }
}

function fmtSize(size) {
  return size >= 1024 ? `${size / 1024} KiB` : `${size} B`;
}

function fmtG(g) {
  return g >= 1 ? g.toFixed(2) : g.toFixed(3);
}

function spread(xs) {
  return `${fmtG(median(xs))} (${fmtG(Math.min(...xs))}–${fmtG(Math.max(...xs))})`;
}

function report(h2g, cpuShare, g2h, rtts, dev) {
  console.log('\n  host → guest, Gbit/s: median (min–max)');
  console.log(`  ${'write'.padEnd(8)} ${'node'.padEnd(24)} ${'kernel'.padEnd(24)} node/kernel  published vhost-device-vsock/vhost-vsock  goal`);
  for (const size of SIZES) {
    const ratio = median(h2g.node[size]) / median(h2g.kernel[size]);
    const [dv, kv] = PUBLISHED[size];
    const goal = dv / kv;
    console.log(
      `  ${fmtSize(size).padEnd(8)} ${spread(h2g.node[size]).padEnd(24)} ${spread(h2g.kernel[size]).padEnd(24)} ${ratio.toFixed(2).padStart(11)}  ` +
        `${`${dv}/${kv} = ${goal.toFixed(2)}`.padEnd(39)} ${ratio >= goal ? 'MET' : 'MISSED'}`,
    );
  }
  console.log('  CPU during host → guest transfers, median share of one CPU: this process (device + host client) / the guest\'s QEMU (vCPU + I/O threads)');
  for (const size of SIZES) {
    const pct = (m, who) => `${(median(cpuShare[m][size][who]) * 100).toFixed(0)}%`;
    console.log(`  ${fmtSize(size).padEnd(8)} node: ${pct('node', 'node')} / ${pct('node', 'qemu')}   kernel: ${pct('kernel', 'node')} / ${pct('kernel', 'qemu')}`);
  }
  const gr = median(g2h.node) / median(g2h.kernel);
  console.log(`  guest → host (64 KiB sendall): node ${spread(g2h.node)}, kernel ${spread(g2h.kernel)} Gbit/s, node/kernel ${gr.toFixed(2)}`);
  const lat = (m) => `median ${median(rtts[m]).toFixed(0)} µs, p99 ${quantile(rtts[m], 0.99).toFixed(0)} µs`;
  console.log(`  ${PING_SIZE} B round trip (${rtts.node.length} per mode): node ${lat('node')}; kernel ${lat('kernel')}; node/kernel (median) ${(median(rtts.node) / median(rtts.kernel)).toFixed(2)}`);
  const st = dev.channel.stats;
  console.log(`  node back-end: ${st.rxPackets} packets from the guest, ${st.txPackets} to it; malformed ${st.malformed}, credit violations ${st.creditViolations}, resets sent ${st.resetsSent}`);
}

const opts = parseArgs(process.argv.slice(2));
runHereOrInVm('bench/vsock-backend', __filename, () => main(opts), { devices: ['/dev/vhost-vsock'], lacking: '/dev/vhost-vsock' });
