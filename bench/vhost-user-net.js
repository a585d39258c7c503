#!/usr/bin/env node
// `npm run bench:vhost-user-net`: frames/s and Gbit/s from a QEMU guest to Node
// at 64 B and 1500 B Ethernet frames, through VhostUserNet (the guest's
// virtio-net driver on QEMU's -netdev vhost-user, frames counted in Node's
// 'frame' listener) beside the same guest on QEMU's -netdev user (slirp; the
// same UDP datagrams reach a Node dgram socket on 127.0.0.1) in the same run.
// The guest (python3 from the host share) sends UDP datagrams for --seconds;
// Node counts what arrived. Both guests run under the same accelerator (KVM
// when usable, else TCG), one after the other.
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
const { bootGuest, buildInitramfs } = require('../scripts/nested-guest.js');

const seconds = Number(process.argv[process.argv.indexOf('--seconds') + 1]) || 5;
const SIZES = [64, 1500]; // Ethernet frame bytes (no FCS): UDP payload = size - 42
const PORT = 5555;

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
print("DONE", flush=True)
`;

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
  let target;
  let cleanup;
  if (kind === 'vhost-user') {
    const sock = path.join(dir, 'net.sock');
    const net = VhostUserNet.listen(sock, { responder: { ipv4: '10.0.2.2', udpEchoPort: null } });
    net.on('frame', (f) => count(f.length));
    qemuArgs = ['-object', 'memory-backend-memfd,id=mem,size=256M,share=on', '-machine', 'memory-backend=mem',
      '-chardev', `socket,id=c0,path=${sock}`, '-netdev', 'vhost-user,id=n0,chardev=c0', '-device', 'virtio-net-pci,netdev=n0,vectors=0'];
    target = '10.0.2.2';
    cleanup = () => net.close();
  } else {
    const s = dgram.createSocket('udp4');
    s.on('message', (m) => count(m.length + 42));
    await new Promise((r) => s.bind(PORT, '127.0.0.1', r));
    qemuArgs = ['-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0,vectors=0'];
    target = '10.0.2.2'; // slirp's host address: 127.0.0.1 here
    cleanup = () => s.close();
  }
  const script = `ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0; python3 /run/guest/send.py ${target} ${PORT} ${seconds} ${SIZES.join(',')}`;
  const g = bootGuest({ kernel, initrd, script, files: { 'send.py': SENDER }, smp: 1, qemuArgs });
  const result = {};
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
      result[size] = { sent: Number(sent[1]), frames: c.frames, fps: c.frames / seconds, gbps: (c.bytes * 8) / seconds / 1e9 };
    }
    await g.waitFor(/^DONE$/, 30_000, from);
  } finally {
    await g.stop();
    cleanup();
  }
  return result;
}

async function main() {
  const { kernel, initrd } = buildInitramfs();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-vu-net-'));
  try {
    const vu = await run('vhost-user', { kernel, initrd, dir });
    const slirp = await run('user', { kernel, initrd, dir });
    console.log(`guest → Node, UDP, ${seconds} s per size (frames counted where they arrived)`);
    console.log('size   backend           sent/s      frames/s    Gbit/s');
    for (const size of SIZES) {
      for (const [name, r] of [['vhost-user (Node)', vu[size]], ['-netdev user', slirp[size]]]) {
        console.log(`${String(size).padStart(4)} B ${name.padEnd(18)}${(r.sent / seconds).toFixed(0).padStart(9)} ${r.fps.toFixed(0).padStart(12)} ${r.gbps.toFixed(3).padStart(9)}`);
      }
      console.log(`       ratio vhost-user / user: ${(vu[size].fps / slirp[size].fps).toFixed(2)}x frames/s`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
