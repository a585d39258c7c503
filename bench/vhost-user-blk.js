#!/usr/bin/env node
// `npm run bench:vhost-user-blk`: 4 KiB random reads and writes from Node through
// qemu-storage-daemon's vhost-user-blk export (VirtioBlkGuest: the split ring in
// a memfd shared with the daemon, kicks and calls on eventfds), against
// fs.read / fs.write on the same image file in the same run. Both go through
// the host page cache (the daemon opens the file without O_DIRECT, as fs does).
//
//   node bench/vhost-user-blk.js [--rounds N] [--seconds S] [--depth D] [--size MiB]
//
//   --rounds   interleaved rounds per variant (default 5); medians are printed
//   --seconds  length of one timed run (default 1)
//   --depth    requests in flight for the second table (default 16; the first is depth 1)
//   --size     image size in MiB (default 64)
//
// Needs dist/ (npm run build:ts) and qemu-storage-daemon (Debian: qemu-system-common).
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const QSD = process.env.QEMU_STORAGE_DAEMON || '/usr/bin/qemu-storage-daemon';
const BLOCK = 4096;

function parseArgs(argv) {
  const opts = { rounds: 5, seconds: 1, depth: 16, size: 64 };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    const n = Number(argv[i + 1]);
    if (!(key in opts) || !(n > 0)) {
      console.error('usage: node bench/vhost-user-blk.js [--rounds N] [--seconds S] [--depth D] [--size MiB]');
      process.exit(2);
    }
    opts[key] = n;
  }
  return opts;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function startQsd(image, sock) {
  const child = spawn(QSD, ['--blockdev', `driver=file,node-name=f,filename=${image}`, '--export', `type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=${sock},writable=on`], { stdio: ['ignore', 'ignore', 'inherit'] });
  const end = Date.now() + 15000;
  while (!fs.existsSync(sock)) {
    if (child.exitCode !== null || Date.now() > end) throw new Error('qemu-storage-daemon did not start');
    await new Promise((r) => setTimeout(r, 20));
  }
  return child;
}

// Runs `depth` loops of op(offset) for `seconds`; returns operations per second.
async function timed(op, depth, seconds, blocks) {
  let n = 0;
  let seed = 12345;
  const next = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff; // same offsets for every variant
    return seed % blocks;
  };
  const end = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  const t0 = process.hrtime.bigint();
  const worker = async () => {
    while (process.hrtime.bigint() < end) {
      await op(next());
      n++;
    }
  };
  await Promise.all(Array.from({ length: depth }, worker));
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(path.join(root, 'dist', 'index.js'))) throw new Error('dist/ is not built: run `npm run build:ts` first');
  if (!fs.existsSync(QSD)) throw new Error(`${QSD} not found (Debian: apt-get install qemu-system-common)`);
  const { VirtioBlkGuest } = require(path.join(root, 'dist', 'index.js'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-vhost-user-blk-'));
  const image = path.join(dir, 'disk.img');
  const sock = path.join(dir, 'blk.sock');
  const size = opts.size << 20;
  fs.writeFileSync(image, Buffer.alloc(0));
  fs.truncateSync(image, size);
  const qsd = await startQsd(image, sock);
  const blocks = size / BLOCK;
  const fd = fs.openSync(image, 'r+');
  const guest = VirtioBlkGuest.connect(sock, { queueSize: 256 });
  try {
    // Touch every block through both paths once so the page cache holds the image.
    await guest.read(0, Math.min(size, 1 << 20));
    fs.readSync(fd, Buffer.alloc(size), 0, size, 0);
    const wbuf = Buffer.alloc(BLOCK, 0x5a);
    const fsBufs = Array.from({ length: opts.depth }, () => Buffer.alloc(BLOCK));
    let k = 0;
    const variants = {
      'vhost-user read': (b) => guest.read(b * (BLOCK / 512), BLOCK),
      'fs.read': (b) => new Promise((res, rej) => fs.read(fd, fsBufs[k++ % fsBufs.length], 0, BLOCK, b * BLOCK, (e) => (e ? rej(e) : res()))),
      'vhost-user write': (b) => guest.write(b * (BLOCK / 512), wbuf),
      'fs.write': (b) => new Promise((res, rej) => fs.write(fd, wbuf, 0, BLOCK, b * BLOCK, (e) => (e ? rej(e) : res()))),
    };
    const names = Object.keys(variants);
    console.log(`vhost-user-blk bench: qemu-storage-daemon (${QSD}), ${opts.size} MiB image, 4 KiB random offsets, ${opts.rounds} rounds x ${opts.seconds} s per variant, interleaved, Node ${process.version}, ${os.cpus().length} CPUs`);
    for (const depth of [1, opts.depth]) {
      const results = Object.fromEntries(names.map((n) => [n, []]));
      for (let r = 0; r < opts.rounds; r++) {
        const order = r % 2 === 0 ? names : [...names].reverse(); // drift hits every variant alike
        for (const name of order) results[name].push(await timed(variants[name], depth, opts.seconds, blocks));
      }
      console.log(`\nqueue depth ${depth}:`);
      console.log('variant            median IOPS    MB/s   (min..max IOPS)');
      for (const name of names) {
        const m = median(results[name]);
        console.log(`${name.padEnd(18)} ${m.toFixed(0).padStart(11)} ${((m * BLOCK) / 1e6).toFixed(1).padStart(7)}   (${Math.min(...results[name]).toFixed(0)}..${Math.max(...results[name]).toFixed(0)})`);
      }
      const ratio = (a, b) => (median(results[a]) / median(results[b])).toFixed(2);
      console.log(`ratio vhost-user/fs: read ${ratio('vhost-user read', 'fs.read')}, write ${ratio('vhost-user write', 'fs.write')}`);
    }
  } finally {
    guest.close();
    fs.closeSync(fd);
    qsd.kill('SIGTERM');
    await new Promise((r) => qsd.once('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
