// Be the guest: a virtio-net driver in this process posts buffers into rings in
// its own memory and the kernel's vhost-net moves them to and from a tap. The
// host's own ping reaches the guest's responder, with no VM anywhere.
//   npx linux-vhost vm -- node examples/userspace-guest.js
'use strict';
const { execFileSync, execFile } = require('node:child_process');
const { promisify } = require('node:util');
const { Tap, VirtioNetGuest } = require('linux-vhost');

async function main() {
  const tap = Tap.create({ name: 'guest0', mtu: 1500, up: true });
  const guest = VirtioNetGuest.create({ tap, responder: { ipv4: '10.77.9.2' } });
  try {
    execFileSync('ip', ['addr', 'add', '10.77.9.1/24', 'dev', tap.name]); // the host side of the link
    // Asynchronously: the guest answers from this process's event loop.
    const { stdout } = await promisify(execFile)('busybox', ['ping', '-c', '3', '-W', '2', '10.77.9.2']);
    console.log(stdout.trim().split('\n').slice(-2).join('\n'));
    console.log('guest stats', guest.stats);
  } finally {
    guest.close();
    tap.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
