// Drive a vhost-user back-end nobody here wrote: qemu-storage-daemon exports a
// disk image as vhost-user-blk, and a virtio-blk driver in this process reads,
// writes and flushes sectors through it (guest memory and eventfds go to the
// daemon over the unix socket with SCM_RIGHTS). No VM, no kernel vhost.
//   node examples/vhost-user-blk.js        (needs /usr/bin/qemu-storage-daemon)
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { VirtioBlkGuest } = require('linux-vhost');

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-user-blk-'));
  const image = path.join(dir, 'disk.img');
  const sock = path.join(dir, 'blk.sock');
  fs.writeFileSync(image, Buffer.alloc(8 << 20)); // an 8 MiB disk
  const daemon = spawn('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=f,filename=${image}`,
    '--export', `type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=${sock},writable=on`,
  ], { stdio: 'inherit' });
  while (!fs.existsSync(sock)) await new Promise((r) => setTimeout(r, 20));

  const disk = VirtioBlkGuest.connect(sock);
  try {
    disk.on('disconnect', (reason) => console.error('back-end gone:', reason.message));
    console.log(`capacity ${disk.capacity} sectors (${disk.size} bytes), protocol features 0x${disk.device.protocolFeatures.toString(16)}`);
    await disk.write(8, Buffer.from('hello from Node through vhost-user-blk'.padEnd(512, '.')));
    await disk.flush();
    console.log('read back:', (await disk.read(8, 512)).toString().replace(/\.+$/, ''));
    const fd = fs.openSync(image, 'r');
    const b = Buffer.alloc(38);
    fs.readSync(fd, b, 0, b.length, 8 * 512);
    fs.closeSync(fd);
    console.log('in the image file:', b.toString());
  } finally {
    disk.close();
    daemon.kill();
    await new Promise((r) => daemon.once('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
