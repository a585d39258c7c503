// Both ends of vsock in one Node process, with no VM: a userspace virtio-vsock
// guest (this library's driver over /dev/vhost-vsock, CID picked automatically)
// runs an "agent" that answers requests, and a host-side AF_VSOCK client asks.
// Run it in the test VM (AF_VSOCK belongs to the host you run it on):
//   npx linux-vhost vm -- node examples/vsock-agent.js
'use strict';
const { vsock, VirtioVsockGuest } = require('linux-vhost');

const guest = VirtioVsockGuest.create({ cid: 'auto' });
guest.listen(5000, (conn) => {
  // The agent: one line in, one line out.
  let buf = '';
  conn.on('data', (chunk) => {
    buf += chunk;
    for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) conn.write(`agent ${guest.cid}: ${buf.slice(0, i).toUpperCase()}\n`);
  });
  conn.on('end', () => conn.end());
});

const host = vsock.connect({ cid: guest.cid, port: 5000 }, () => {
  console.log(`host connected to guest CID ${guest.cid}`);
  host.end('hello\nstatus\n');
});
let answers = '';
host.on('data', (chunk) => (answers += chunk));
host.on('close', () => {
  process.stdout.write(answers);
  guest.close();
});
host.on('error', (err) => {
  console.error(err.code, err.message);
  process.exitCode = 1;
  guest.close();
});
