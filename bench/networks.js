#!/usr/bin/env node
// Host networking benchmark (issue 7), measured in one run:
// - bridge forwarding between two userspace guests: guest A sends frames to
//   guest B's MAC through tap A -> bridge -> tap B; frames/s that reach B, at
//   64 B and 1500 B, median of several runs;
// - multiqueue scaling: 1, 2 and 4 queue pairs on one multi-queue tap, one
//   vhost-net device + guest per pair, all sending at once; aggregate frames/s
//   counted by the tap, printed as ratios to 1 pair.
// Under emulation on 2 cores, scaling says more about the machine than about
// vhost; compare the ratios only within one run.
//
//   node bench/networks.js [--frames N] [--runs N]
//
// Runs directly as root on a host with /dev/vhost-net, else in the test VM.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { runHereOrInVm } = require('./here-or-vm');

const root = path.resolve(__dirname, '..');
const ETHERTYPE = 0x88b5;
const BATCH = 64;

function parseArgs(argv) {
  const opts = { frames: 20_000, runs: 3 };
  for (let i = 0; i < argv.length; i += 2) {
    const n = Number(argv[i + 1]);
    if (!['--frames', '--runs'].includes(argv[i]) || !Number.isInteger(n) || n < 1) {
      console.error('usage: node bench/networks.js [--frames N] [--runs N]');
      process.exit(2);
    }
    opts[argv[i].slice(2)] = n;
  }
  return opts;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rxPackets = (name) => Number(fs.readFileSync(`/sys/class/net/${name}/statistics/rx_packets`, 'utf8'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function frame(size, dst, src) {
  const f = Buffer.alloc(size, 0x5a);
  f.set(dst, 0);
  f.set(src, 6);
  f.writeUInt16BE(ETHERTYPE, 12);
  return f;
}

/** Sends `frames` copies of f from guest in batches, waiting for 'drain' when the ring is full. */
async function blast(guest, f, frames) {
  const batch = Array.from({ length: BATCH }, () => f);
  for (let sent = 0; sent < frames; ) {
    const want = Math.min(BATCH, frames - sent);
    const n = guest.sendBatch(want === BATCH ? batch : batch.slice(0, want));
    sent += n;
    if (n < want) await new Promise((r) => guest.once('drain', r));
  }
}

/**
 * Waits until count() reaches n or stops moving for 2 s. Returns the count and
 * when it last moved, so a loss does not add the idle wait to the time.
 */
async function settle(count, n) {
  let seen = count();
  let last = process.hrtime.bigint();
  while (seen < n && Number(process.hrtime.bigint() - last) / 1e6 < 2000) {
    await sleep(1);
    const now = count();
    if (now !== seen) last = process.hrtime.bigint();
    seen = now;
  }
  return { arrived: seen, at: last };
}

async function bridgeRun(lib, size, frames) {
  const tag = process.pid % 10000;
  const made = [];
  try {
    const br = lib.bridge(`lvbr${tag}`, { mtu: 1500 });
    made.push(br);
    const guestOn = (name, mac) => {
      const tap = lib.Tap.create({ name });
      made.push(tap);
      br.attach(tap, { guestMac: mac });
      const guest = lib.VirtioNetGuest.create({ tap, mac, queueSize: 256 });
      made.push(guest);
      return guest;
    };
    const macA = Uint8Array.from([0x52, 0x54, 0, 0, 0, 0x0a]);
    const macB = Uint8Array.from([0x52, 0x54, 0, 0, 0, 0x0b]);
    const a = guestOn(`lvba${tag}`, macA);
    const b = guestOn(`lvbb${tag}`, macB);
    let received = 0;
    b.on('frame', (f) => {
      if (f.length >= 14 && f.readUInt16BE(12) === ETHERTYPE) received++;
    });
    // Teach the bridge where B is, so A's frames are forwarded, not flooded.
    b.send(frame(64, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], macB));
    await sleep(50);
    received = 0;
    const t0 = process.hrtime.bigint();
    await blast(a, frame(size, macB, macA), frames);
    const { arrived, at } = await settle(() => received, frames);
    return { arrived, seconds: Number(at - t0) / 1e9 };
  } finally {
    for (const r of made.reverse()) r.close();
  }
}

async function multiqueueRun(lib, pairs, frames) {
  const name = `lvmq${process.pid % 10000}`;
  const tap = lib.Tap.create({ name, multiQueue: true, queues: pairs, up: true });
  const guests = [];
  try {
    for (const q of tap.queues) guests.push(lib.VirtioNetGuest.create({ tap: q, queueSize: 256 }));
    const f = frame(64, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], [0x02, 0, 0, 0, 0, 1]);
    const per = Math.floor(frames / pairs);
    const base = rxPackets(name);
    const t0 = process.hrtime.bigint();
    await Promise.all(guests.map((g) => blast(g, f, per)));
    const { arrived, at } = await settle(() => rxPackets(name) - base, per * pairs);
    return { arrived, expected: per * pairs, seconds: Number(at - t0) / 1e9 };
  } finally {
    for (const g of guests) g.close();
    tap.close();
  }
}

async function main(opts) {
  const lib = require(path.join(root, 'dist', 'index.js'));
  let failed = false;
  const fmt = (pps) => Math.round(pps).toLocaleString('en-US').padStart(9);
  console.log(`bridge forwarding, guest A -> tap -> bridge -> tap -> guest B, ${opts.frames} frames, median of ${opts.runs}`);
  for (const size of [64, 1500]) {
    const pps = [];
    const delivered = [];
    for (let r = 0; r < opts.runs; r++) {
      const { arrived, seconds } = await bridgeRun(lib, size, opts.frames);
      pps.push(arrived / seconds);
      delivered.push(arrived / opts.frames);
    }
    const m = median(pps);
    // A bridge drops what the receiving tap's queue cannot hold while guest B
    // (JavaScript) refills its ring: reported, not a failure.
    console.log(`  ${String(size).padStart(4)} B  ${fmt(m)} frames/s  ${((m * size * 8) / 1e9).toFixed(3)} Gbit/s  delivered ${(100 * median(delivered)).toFixed(1)}%`);
  }
  console.log(`multiqueue TX scaling, 64 B, ${opts.frames} frames split over the pairs, median of ${opts.runs}`);
  const byPairs = {};
  for (let r = 0; r < opts.runs; r++) {
    for (const pairs of [1, 2, 4]) {
      const { arrived, expected, seconds } = await multiqueueRun(lib, pairs, opts.frames);
      if (arrived !== expected) {
        console.log(`  ${pairs} pairs: ${arrived} of ${expected} frames arrived`);
        failed = true;
      }
      (byPairs[pairs] ??= []).push(arrived / seconds);
    }
  }
  const one = median(byPairs[1]);
  for (const pairs of [1, 2, 4]) {
    const m = median(byPairs[pairs]);
    console.log(`  ${pairs} pair${pairs > 1 ? 's' : ' '}  ${fmt(m)} frames/s  ratio to 1 pair ${(m / one).toFixed(2)}`);
  }
  return failed ? 1 : 0;
}

const opts = parseArgs(process.argv.slice(2));
runHereOrInVm('bench/networks', __filename, () => main(opts));
