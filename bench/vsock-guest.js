#!/usr/bin/env node
// The guest end of bench/vsock.js, in a process of its own so the host
// clients under test never share its event loop: a userspace virtio-vsock
// guest (VirtioVsockGuest over /dev/vhost-vsock, CID picked automatically)
// with two services, then "ready cid=<cid> sink=<port> echo=<port>" on stdout.
//   sink: reads until the peer shuts down its sending side, then answers
//         "bytes=<n> crc32=<hex>\n" (zlib.crc32 over everything read) and ends.
//   echo: writes back whatever it reads (request/response).
// It closes the guest and exits when stdin closes (its parent went away).
//
//   node bench/vsock-guest.js [SINK_PORT] [ECHO_PORT]   (root, /dev/vhost-vsock)
'use strict';
const path = require('node:path');
const zlib = require('node:zlib');

const root = path.resolve(__dirname, '..');
const { VirtioVsockGuest } = require(path.join(root, 'dist', 'guest', 'vsock'));

const sinkPort = Number(process.argv[2] ?? 6000);
const echoPort = Number(process.argv[3] ?? 6001);

// 64 KiB ring buffers (the device's largest packet) and a 1 MiB window per connection.
const guest = VirtioVsockGuest.create({ cid: 'auto', queueSize: 128, bufferSize: 65536, bufAlloc: 1 << 20 });
guest.on('error', (err) => {
  console.error(`bench/vsock-guest: ${err.code ?? ''} ${err.message}`);
  process.exit(1);
});

guest.listen(sinkPort, (conn) => {
  let bytes = 0;
  let crc = 0;
  conn.on('data', (chunk) => {
    bytes += chunk.length;
    crc = zlib.crc32(chunk, crc);
  });
  conn.on('end', () => conn.end(`bytes=${bytes} crc32=${crc.toString(16).padStart(8, '0')}\n`));
  conn.on('error', () => conn.destroy());
});

guest.listen(echoPort, (conn) => {
  conn.on('data', (chunk) => conn.write(chunk));
  conn.on('end', () => conn.end());
  conn.on('error', () => conn.destroy());
});

process.stdout.write(`ready cid=${guest.cid} sink=${sinkPort} echo=${echoPort}\n`);
process.stdin.resume();
process.stdin.on('end', () => {
  guest.close();
  process.exit(0);
});
