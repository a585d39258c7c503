// AF_VSOCK from Node: an echo server and a client, both on this machine
// through the vsock_loopback transport (CID 1). Run it in the test VM, where
// the kernel modules exist (never on a machine whose vsock you don't own):
//   npx linux-vhost vm -- sh -c 'modprobe -d /run/linux-vhost-vm-kernel vsock_loopback && node examples/vsock-echo.js'
'use strict';
const { vsock } = require('linux-vhost');

const server = vsock.createServer((conn) => conn.pipe(conn)); // echo
server.listen({ port: 1234 }, () => {
  const conn = vsock.connect({ cid: 1, port: 1234, timeout: 2000 }, () => {
    console.log('connected to', conn.remoteAddress);
    conn.end('hello over vsock');
  });
  const chunks = [];
  conn.on('data', (c) => chunks.push(c));
  conn.on('end', () => {
    console.log('echoed:', Buffer.concat(chunks).toString());
    server.close();
  });
  conn.on('error', (err) => {
    console.error(err.code, err.message);
    server.close();
    process.exitCode = 1;
  });
});
