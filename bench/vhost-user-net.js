#!/usr/bin/env node
// `npm run bench:vhost-user-net`: frames/s and Gbit/s between a QEMU guest and
// Node at 64 B and 1500 B Ethernet frames, both ways, through VhostUserNet
// (the guest's virtio-net driver on QEMU's -netdev vhost-user) beside the same
// guest on QEMU's -netdev user (slirp: the same UDP datagrams through a Node
// dgram socket on 127.0.0.1 and a hostfwd) in the same run.
// - guest → Node: the guest (python3 from the host share) sends UDP datagrams
//   for --seconds; Node counts what arrived ('frame' listener / dgram socket).
// - Node → guest: Node sends for --seconds (VhostUserNet.sendBatch, 64 frames
//   a call, waiting for 'drain' when the guest has no RX buffer; dgram.send
//   through slirp), the guest counts the datagrams its socket took and says so
//   once none came for a second.
// Both guests run under the same accelerator (KVM when usable, else TCG), one
// after the other.
//
//   node bench/vhost-user-net.js [--seconds S]
//
// Needs dist/ (npm run build:ts), qemu-system-x86_64 and a guest kernel (scripts/guest-initramfs.sh).
'use strict';
const dgram = require('node:dgram');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { VhostUserNet } = require('../dist/index.js');
const { buildUdp, parseIpv4 } = require('../dist/guest/responder.js');
const { bootGuest, buildInitramfs } = require('../scripts/nested-guest.js');

const seconds = Number(process.argv[process.argv.indexOf('--seconds') + 1]) || 5;
const SIZES = [64, 1500]; // Ethernet frame bytes (no FCS): UDP payload = size - 42
const PORT = 5555; // guest → Node
const IN_PORT = 5556; // Node → guest
const GUEST_MAC = '52:54:00:12:34:56';
const GUEST_IP = '10.0.2.15';
const NODE_IP = '10.0.2.2';
const BATCH = 64;

const SENDER = String.raw`
import socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for size in [int(x) for x in sys.argv[4].split(",")]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = bytes(size - 42); n = 0
    print("GO", size, flush=True)
    end = time.monotonic() + secs
    while time.monotonic() < end:
        for _ in range(64):
            try:
                s.sendto(payload, (host, port)); n += 1
            except OSError:
                pass
    print("SENT", size, n, flush=True)
    time.sleep(1)
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
r.bind(("0.0.0.0", int(sys.argv[5])))
for size in [int(x) for x in sys.argv[4].split(",")]:
    n = 0
    r.settimeout(None)
    print("READY", size, flush=True)
    while True:
        try:
            d = r.recv(65536)
        except socket.timeout:
            break
        if len(d) == size - 42:
            n += 1
        r.settimeout(1.0)
    print("RECV", size, n, flush=True)
print("DONE", flush=True)
`;

/** A source of frames toward the guest for `secs` seconds; resolves with how many it sent. */
async function blastVhostUser(net, size, secs) {
  const frames = Array.from({ length: BATCH }, () =>
    buildUdp({ srcMac: net.responder.mac, dstMac: Buffer.from(GUEST_MAC.split(':').map((h) => parseInt(h, 16))), srcIp: parseIpv4(NODE_IP), dstIp: parseIpv4(GUEST_IP), srcPort: IN_PORT, dstPort: IN_PORT, payload: Buffer.alloc(size - 42) }),
  );
  const before = net.stats.txFrames;
  const end = Date.now() + secs * 1000;
  while (Date.now() < end) {
    const now = net.sendBatch(frames);
    // Whatever did not go at once waits in the queue: wait for the guest to post buffers (bounded).
    if (now < frames.length) await Promise.race([new Promise((r) => net.once('drain', r)), new Promise((r) => setTimeout(r, 50))]);
    else await new Promise((r) => setImmediate(r)); // let the kicks and calls run
  }
  await new Promise((r) => setTimeout(r, 200));
  return net.stats.txFrames - before;
}

async function blastSlirp(sock, size, secs) {
  const payload = Buffer.alloc(size - 42);
  let sent = 0;
  const end = Date.now() + secs * 1000;
  while (Date.now() < end) {
    await new Promise((resolve) => {
      let left = BATCH;
      for (let i = 0; i < BATCH; i++) {
        sock.send(payload, IN_PORT, '127.0.0.1', (err) => {
          if (!err) sent++;
          if (--left === 0) resolve();
        });
      }
    });
  }
  return sent;
}

async function run(kind, { kernel, initrd, dir }) {
  const counts = new Map();
  let current = null;
  const count = (bytes) => {
    if (current === null) return;
    const c = counts.get(current);
    c.frames++;
    c.bytes += bytes;
  };
  let qemuArgs;
  let blast;
  let cleanup;
  if (kind === 'vhost-user') {
    const sock = path.join(dir, 'net.sock');
    const net = VhostUserNet.listen(sock, { responder: { ipv4: NODE_IP, udpEchoPort: null }, queueLimit: 1024 });
    net.on('frame', (f) => count(f.length));
    qemuArgs = ['-object', 'memory-backend-memfd,id=mem,size=256M,share=on', '-machine', 'memory-backend=mem',
      '-chardev', `socket,id=c0,path=${sock}`, '-netdev', 'vhost-user,id=n0,chardev=c0', '-device', `virtio-net-pci,netdev=n0,mac=${GUEST_MAC},vectors=0`];
    blast = (size) => blastVhostUser(net, size, seconds);
    cleanup = () => net.close();
  } else {
    const s = dgram.createSocket('udp4');
    s.on('message', (m) => count(m.length + 42));
    await new Promise((r) => s.bind(PORT, '127.0.0.1', r));
    qemuArgs = ['-netdev', `user,id=n0,hostfwd=udp:127.0.0.1:${IN_PORT}-:${IN_PORT}`, '-device', `virtio-net-pci,netdev=n0,mac=${GUEST_MAC},vectors=0`];
    blast = (size) => blastSlirp(s, size, seconds);
    cleanup = () => s.close();
  }
  // slirp's host address is 10.0.2.2 too (127.0.0.1 here), so one script serves both.
  const script = `ip link set eth0 up; ip addr add ${GUEST_IP}/24 dev eth0; python3 /run/guest/send.py ${NODE_IP} ${PORT} ${seconds} ${SIZES.join(',')} ${IN_PORT}`;
  const g = bootGuest({ kernel, initrd, script, files: { 'send.py': SENDER }, smp: 1, qemuArgs });
  const out = {};
  const inb = {};
  try {
    let from = 0;
    for (const size of SIZES) {
      const go = await g.waitFor(new RegExp(`^GO ${size}$`), 180_000, from);
      counts.set(size, { frames: 0, bytes: 0 });
      current = size;
      const sent = await g.waitFor(new RegExp(`^SENT ${size} (\\d+)$`), seconds * 1000 + 60_000, go.lineIndex);
      await new Promise((r) => setTimeout(r, 300));
      current = null;
      from = sent.lineIndex;
      const c = counts.get(size);
      out[size] = { sent: Number(sent[1]), frames: c.frames, fps: c.frames / seconds, gbps: (c.bytes * 8) / seconds / 1e9 };
    }
    for (const size of SIZES) {
      const ready = await g.waitFor(new RegExp(`^READY ${size}$`), 60_000, from);
      const sent = await blast(size);
      const got = await g.waitFor(new RegExp(`^RECV ${size} (\\d+)$`), 60_000, ready.lineIndex);
      from = got.lineIndex;
      const frames = Number(got[1]);
      inb[size] = { sent, frames, fps: frames / seconds, gbps: (frames * size * 8) / seconds / 1e9 };
    }
    await g.waitFor(/^DONE$/, 30_000, from);
  } finally {
    await g.stop();
    cleanup();
  }
  return { out, inb };
}

function print(title, vu, slirp) {
  console.log(title);
  console.log('size   backend           sent/s      frames/s    Gbit/s');
  for (const size of SIZES) {
    for (const [name, r] of [['vhost-user (Node)', vu[size]], ['-netdev user', slirp[size]]]) {
      console.log(`${String(size).padStart(4)} B ${name.padEnd(18)}${(r.sent / seconds).toFixed(0).padStart(9)} ${r.fps.toFixed(0).padStart(12)} ${r.gbps.toFixed(3).padStart(9)}`);
    }
    console.log(`       ratio vhost-user / user: ${(vu[size].fps / slirp[size].fps).toFixed(2)}x frames/s`);
  }
}

async function main() {
  const { kernel, initrd } = buildInitramfs();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-vu-net-'));
  try {
    const vu = await run('vhost-user', { kernel, initrd, dir });
    const slirp = await run('user', { kernel, initrd, dir });
    print(`guest → Node, UDP, ${seconds} s per size (frames counted where they arrived)`, vu.out, slirp.out);
    print(`Node → guest, UDP, ${seconds} s per size (datagrams the guest's socket took)`, vu.inb, slirp.inb);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
