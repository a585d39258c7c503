#!/usr/bin/env node
// Device-side split ring micro-benchmark (issue 15): chains/s through
// DeviceQueue pop + complete + flush at 64 B and 1500 B, against this
// library's driver-side Virtqueue in the same process over one memfd (the
// device maps it a second time, as a vhost-user back-end does). No kernel,
// no VM: it runs anywhere.
//   TX: the driver posts one device-readable buffer per chain; the device pops
//       it (copying the bytes out) and completes it with no data.
//   RX: the driver posts one device-writable buffer per chain; the device pops
//       it and completes it with a frame of that size (written into guest memory).
// Batches of 64 chains: one post, popBatch(64), 64 complete(), one flush(),
// one collect. Device time (popBatch + complete + flush) and driver time (post
// + collect) are clocked apart in the same loop; the ratio says which side
// costs more per chain. Sizes and directions take turns, median of the runs.
//
//   node bench/device-queue.js [--chains N] [--runs N]
//
// Needs dist/ (npm run build:ts).
'use strict';
const path = require('node:path');

const dist = path.join(__dirname, '..', 'dist');
const { GuestMemory } = require(path.join(dist, 'core', 'memory.js'));
const { DeviceMemory } = require(path.join(dist, 'virtio', 'device-memory.js'));
const { DeviceQueue } = require(path.join(dist, 'virtio', 'device-queue.js'));
const { Virtqueue, placeVirtqueue } = require(path.join(dist, 'virtio', 'virtqueue.js'));

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const CHAINS = opt('--chains', 200_000);
const RUNS = opt('--runs', 5);
const SIZE = 256;
const BATCH = 64;
const GPA = 0x100000n;
const BUFS = GPA + 0x10000n;

function setup() {
  const mem = GuestMemory.create({ regions: [{ gpa: GPA, size: 1n << 20n }], name: 'bench-devqueue' });
  const r = mem.regions[0];
  const ring = placeVirtqueue(SIZE, GPA);
  const driver = Virtqueue.create({ memory: mem, size: SIZE, desc: ring.desc, avail: ring.avail, used: ring.used, kick: null, eventIdx: true });
  const device = DeviceMemory.map([{ fd: r.fd, gpa: r.gpa, size: r.size, userAddr: r.hva, mmapOffset: 0n }]);
  const at = (gpa) => r.hva + (gpa - r.gpa);
  const queue = new DeviceQueue(device, { size: SIZE, desc: at(ring.desc), avail: at(ring.avail), used: at(ring.used), eventIdx: true });
  return { mem, driver, device, queue };
}

/** One run: CHAINS chains of `bytes` in direction dir; returns device and driver nanoseconds. */
function run(s, bytes, dir) {
  // Encoded segments for a batch: one buffer per chain, each its own 2 KiB slot.
  const segs = new Uint32Array(3 * BATCH);
  const base = Number(BUFS - GPA);
  for (let i = 0; i < BATCH; i++) {
    segs[3 * i] = base + i * 2048;
    segs[3 * i + 1] = bytes;
    segs[3 * i + 2] = (dir === 'rx' ? 1 : 0) | 2; // SEG_WRITABLE, SEG_END
  }
  const heads = new Uint32Array(BATCH);
  const used = new Uint32Array(2 * BATCH);
  const frame = Buffer.alloc(bytes, 0xab);
  let deviceNs = 0n;
  let driverNs = 0n;
  let moved = 0;
  let checked = 0;
  while (moved < CHAINS) {
    let t0 = process.hrtime.bigint();
    const posted = s.driver.postEncoded(segs, BATCH, heads, false);
    let t1 = process.hrtime.bigint();
    driverNs += t1 - t0;
    t0 = t1;
    const chains = s.queue.popBatch(BATCH);
    for (let i = 0; i < chains.length; i++) {
      const c = chains[i];
      if (dir === 'rx') s.queue.complete(c.head, frame);
      else {
        checked += c.readable.length;
        s.queue.complete(c.head);
      }
    }
    s.queue.flush();
    t1 = process.hrtime.bigint();
    deviceNs += t1 - t0;
    t0 = t1;
    const n = s.driver.collectInto(used, BATCH);
    driverNs += process.hrtime.bigint() - t0;
    if (posted !== BATCH || chains.length !== BATCH || n !== BATCH) throw new Error(`lost chains: posted ${posted}, popped ${chains.length}, collected ${n}`);
    if (dir === 'rx' && used[1] !== bytes) throw new Error(`used len ${used[1]}, expected ${bytes}`);
    moved += n;
  }
  if (dir === 'tx' && checked !== moved * bytes) throw new Error('readable bytes missing');
  return { deviceNs: Number(deviceNs), driverNs: Number(driverNs), chains: moved };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function main() {
  const s = setup();
  const cases = [];
  for (const bytes of [64, 1500]) for (const dir of ['tx', 'rx']) cases.push({ bytes, dir, device: [], driver: [], loop: [] });
  run(s, 64, 'tx'); // warm-up
  for (let r = 0; r < RUNS; r++) {
    const order = r % 2 ? [...cases].reverse() : cases;
    for (const c of order) {
      const { deviceNs, driverNs, chains } = run(s, c.bytes, c.dir);
      c.device.push(chains / (deviceNs / 1e9));
      c.driver.push(chains / (driverNs / 1e9));
      c.loop.push(chains / ((deviceNs + driverNs) / 1e9));
    }
  }
  console.log(`device-queue bench: ${CHAINS} chains per run, ${RUNS} runs, queue size ${SIZE}, batches of ${BATCH}, node ${process.version}`);
  console.log('dir  bytes   device chains/s  (Gbit/s)   driver chains/s   loop chains/s   driver/device time');
  const fmt = (v) => String(Math.round(v)).padStart(14);
  for (const c of cases) {
    const dev = median(c.device);
    const drv = median(c.driver);
    const gbit = ((dev * c.bytes * 8) / 1e9).toFixed(2).padStart(7);
    console.log(`${c.dir.padEnd(4)} ${String(c.bytes).padStart(5)}  ${fmt(dev)}   ${gbit}    ${fmt(drv)}  ${fmt(median(c.loop))}   ${(dev / drv).toFixed(2).padStart(8)}`);
  }
  const by = (dir, bytes) => median(cases.find((c) => c.dir === dir && c.bytes === bytes).device);
  console.log(`device 1500 B / 64 B chains/s: tx ${(by('tx', 1500) / by('tx', 64)).toFixed(2)}, rx ${(by('rx', 1500) / by('rx', 64)).toFixed(2)}`);
  s.queue.close();
  s.device.close();
  s.driver.close();
  s.mem.close();
}

main();
