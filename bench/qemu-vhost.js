#!/usr/bin/env node
// Real-guest benchmark (issue 6): guest→host TCP throughput of a QEMU/KVM
// guest whose virtio-net runs on
//   (a) the tap + vhost-net fds this library prepared (prepareNetForVmm, qemuArgs, spawnVmm),
//   (b) QEMU's own `-netdev tap,ifname=…,script=no,downscript=no,vhost=on`,
//   (c) the same with vhost=off (QEMU's userspace virtio-net datapath),
// each with 2 queue pairs and MTU 9000 (host_mtu), same kernel and initramfs
// (scripts/guest-initramfs.sh). The three guests are booted side by side and
// stream --mib MiB of zeros (guest python3 socket → python3 sink on the host)
// one transfer at a time, modes interleaved in rotating order, --transfers
// times each, so a host whose load drifts slows all modes alike; medians and
// ratios are printed.
// (a)/(b) should be ≈ 1.0: the library hands QEMU the same kind of fds QEMU
// would open; (a)/(c) > 1: vhost keeps the datapath in the kernel.
//
//   node bench/qemu-vhost.js [--transfers N] [--mib N]
//
// Needs /dev/kvm; runs directly as root on a host with /dev/vhost-net, else
// in the test VM (nested KVM). Loads dist/ (npm run build:ts).
'use strict';
const { execFileSync } = require('node:child_process');
const net = require('node:net');
const fs = require('node:fs');
const path = require('node:path');
const { runHereOrInVm } = require('./here-or-vm');
const ng = require('../scripts/nested-guest');

const root = path.resolve(__dirname, '..');
const PORT = 5011;
const CTL_PORT = 5012;
const BOOT_MS = 4 * 60_000; // boot to the sender's control connection
const TRANSFER_MS = 3 * 60_000; // per transfer: a transfer that takes longer is stuck
const MTU = 9000;
const QUEUE_PAIRS = 2;
const MODES = ['library', 'qemu-vhost', 'qemu-novhost'];
const LABEL = {
  library: "this library's fds (vhost=on)",
  'qemu-vhost': 'QEMU -netdev tap,vhost=on',
  'qemu-novhost': 'QEMU -netdev tap,vhost=off',
};
// One /24 per guest: 10.78.<n>.1 on the host's tap, 10.78.<n>.2 in the guest.
const hostIp = (i) => `10.78.${i + 1}.1`;
const guestIp = (i) => `10.78.${i + 1}.2`;

function parseArgs(argv) {
  const opts = { transfers: 5, mib: 128 };
  for (let i = 0; i < argv.length; i += 2) {
    const n = Number(argv[i + 1]);
    if (!['--transfers', '--mib'].includes(argv[i]) || !Number.isInteger(n) || n < 1) {
      console.error('usage: node bench/qemu-vhost.js [--transfers N] [--mib N]');
      process.exit(2);
    }
    opts[argv[i].slice(2)] = n;
  }
  return opts;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The guest's sender blocks on a control connection to the host (so an idle guest really
// idles) and streams one transfer per "go" line, answering "done", until the host closes it.
const LOOP_PY = String.raw`
import socket, sys
host, ctl_port, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
buf = memoryview(bytes(1 << 20))
ctl = socket.create_connection((host, ctl_port))
f = ctl.makefile("rb")
while f.readline().strip() == b"go":
    s = socket.create_connection((host, port))
    left = total
    while left > 0:
        k = min(left, len(buf))
        s.sendall(buf[:k])
        left -= k
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    ctl.sendall(b"done\n")
`;

function guestScript(i, bytes) {
  return `
ip addr add ${guestIp(i)}/24 dev eth0 && ip link set eth0 up || exit 10
lvg_wait ready
ping -c 1 -W 10 ${hostIp(i)} >/dev/null || exit 11
python3 /run/guest/loop.py ${hostIp(i)} ${CTL_PORT} ${PORT} ${bytes}
`;
}

/** Control connections from the guests' senders, by guest IP. */
function controlServer() {
  const conns = new Map();
  const waiting = new Map();
  const server = net.createServer((c) => {
    const ip = c.remoteAddress.replace(/^::ffff:/, '');
    c.setEncoding('utf8');
    c.on('error', () => {});
    conns.set(ip, c);
    waiting.get(ip)?.(c);
  });
  /** Resolves with guest `ip`'s control connection once it connected. */
  server.connection = (ip) => (conns.has(ip) ? Promise.resolve(conns.get(ip)) : new Promise((r) => waiting.set(ip, r)));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(CTL_PORT, '0.0.0.0', () => resolve(server));
  });
}

/** Waits until a link exists (QEMU creates its own tap while starting). */
async function linkAppears(name, ms = 120_000) {
  const end = Date.now() + ms;
  while (!fs.existsSync(`/sys/class/net/${name}`)) {
    if (Date.now() > end) throw new Error(`link ${name} did not appear within ${ms} ms`);
    await sleep(50);
  }
}

/** Boots guest i in `mode` and addresses its tap; resolves once the guest pinged the host. */
async function bootMode(lib, i, mode, boot, bytes) {
  const common = { ...boot, script: guestScript(i, bytes), files: { 'loop.py': LOOP_PY }, smp: 2, mem: 256 };
  let guest;
  let tapName;
  if (mode === 'library') {
    const net = lib.prepareNetForVmm({ tapName: 'lvbench%d', queuePairs: QUEUE_PAIRS, mtu: MTU });
    try {
      tapName = net.tap.name;
      const handoff = lib.qemuArgs({ net });
      guest = ng.bootGuest({ ...common, qemuArgs: handoff.args, spawn: (cmd, args, o) => lib.spawnVmm(cmd, args, handoff, o) });
    } finally {
      net.close(); // QEMU holds its own copies
    }
  } else {
    const vhost = mode === 'qemu-vhost' ? 'on' : 'off';
    tapName = `lvq${vhost}${process.pid % 10000}`;
    guest = ng.bootGuest({
      ...common,
      qemuArgs: [
        '-netdev', `tap,id=net0,ifname=${tapName},script=no,downscript=no,vhost=${vhost},queues=${QUEUE_PAIRS}`,
        '-device', `virtio-net-pci,netdev=net0,id=net0-dev,mq=on,vectors=${2 * QUEUE_PAIRS + 2},host_mtu=${MTU}`,
      ],
    });
    await linkAppears(tapName);
    execFileSync('ip', ['link', 'set', tapName, 'mtu', String(MTU), 'up']);
  }
  execFileSync('ip', ['addr', 'add', `${hostIp(i)}/24`, 'dev', tapName]);
  guest.signal('ready');
  return guest;
}

async function main(opts) {
  if (!ng.kvmUsable()) throw new Error('/dev/kvm is not usable here (in the test VM, kvm_amd/kvm_intel must load)');
  const lib = require(path.join(root, 'dist', 'index.js'));
  const kernelDir = fs.existsSync('/run/linux-vhost-vm-kernel/lib/modules') ? '/run/linux-vhost-vm-kernel' : undefined;
  const boot = ng.buildInitramfs({ kernelDir });
  const bytes = opts.mib << 20;
  const sink = await ng.startSink('0.0.0.0', PORT); // before boot: the taps get their addresses later
  const ctl = await controlServer();
  const guests = [];
  const controls = [];
  const results = Object.fromEntries(MODES.map((m) => [m, []]));
  console.log(
    `guest→host TCP (python3 sendall of 1 MiB zeros), three QEMU -accel kvm guests (2 vCPUs, ${QUEUE_PAIRS} queue pairs, MTU ${MTU}) ` +
      `booted side by side, one transfer at a time, modes interleaved in rotating order; ${opts.transfers} × ${opts.mib} MiB per mode`,
  );
  try {
    for (const [i, mode] of MODES.entries()) {
      const t0 = Date.now();
      guests.push(await bootMode(lib, i, mode, boot, bytes));
      let timer;
      const failed = new Promise((_, reject) => {
        guests[i].exited.then(() => reject(new Error(`${mode}: ${guests[i].why()}`)));
        timer = setTimeout(() => reject(new Error(`${mode}: the guest's sender did not connect within ${BOOT_MS / 1000} s: ${guests[i].why()}`)), BOOT_MS);
      });
      failed.catch(() => {}); // matters only if it wins the race
      try {
        controls.push(await Promise.race([ctl.connection(guestIp(i)), failed]));
      } finally {
        clearTimeout(timer);
      }
      console.log(`  ${LABEL[mode].padEnd(31)} booted in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }
    for (let n = 1; n <= opts.transfers; n++) {
      const row = [];
      // Rotate who goes first, so no mode always follows the same one (or an idle pause).
      for (let k = 0; k < MODES.length; k++) {
        const i = (n - 1 + k) % MODES.length;
        const mode = MODES[i];
        const done = new Promise((resolve) => controls[i].once('data', resolve));
        const started = sink.firsts.length;
        controls[i].write('go\n');
        const r = await sink.next(TRANSFER_MS).catch(() => {
          const where = sink.firsts.length > started ? 'it started but did not end' : 'no byte arrived';
          throw new Error(`${mode}: transfer ${n} did not finish within ${TRANSFER_MS / 1000} s (${where})`);
        });
        await done;
        if (!r.peer.startsWith(`${guestIp(i)}:`)) throw new Error(`${mode}: transfer came from ${r.peer}`);
        if (r.bytes !== bytes) throw new Error(`${mode}: sink got ${r.bytes} bytes, expected ${bytes}`);
        const mbs = r.bytes / r.seconds / 1e6;
        results[mode].push(mbs);
        row.push(`${mode} ${mbs.toFixed(1)}`);
      }
      console.log(`  transfer ${n}: ${row.join(' | ')} MB/s`);
    }
    for (const c of controls) c.end(); // the senders exit, the guests power off
    for (const [i, g] of guests.entries()) {
      const status = await g.finished(2 * 60_000);
      if (status !== 0) throw new Error(`${MODES[i]}: guest script exited ${status}`);
    }
  } finally {
    await Promise.all(guests.map((g) => g.stop()));
    for (const c of controls) c.destroy();
    ctl.close();
    sink.stop();
  }
  const med = Object.fromEntries(MODES.map((m) => [m, median(results[m])]));
  for (const m of MODES) console.log(`  ${LABEL[m].padEnd(31)} ${med[m].toFixed(1).padStart(7)} MB/s (median of ${results[m].length})`);
  console.log(`  library / QEMU vhost=on   ${(med.library / med['qemu-vhost']).toFixed(2)}  (expect ≈ 1.0)`);
  console.log(`  library / QEMU vhost=off  ${(med.library / med['qemu-novhost']).toFixed(2)}  (expect > 1)`);
  return 0;
}

const opts = parseArgs(process.argv.slice(2));
runHereOrInVm('bench/qemu-vhost', __filename, () => main(opts));
