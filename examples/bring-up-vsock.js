// Bring up a vhost-vsock device with an automatically chosen guest CID.
//   npx linux-vhost vm -- node examples/bring-up-vsock.js     (or as root on a host with vhost)
'use strict';
const { VhostVsock, GuestMemory, EventFd, features } = require('linux-vhost');

const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 16 << 20 }] });
const fds = [EventFd.create(), EventFd.create(), EventFd.create(), EventFd.create()];
try {
  const vs = VhostVsock.builder()
    .memory(mem)
    .features(features.ring.VERSION_1 | features.ring.RING_EVENT_IDX)
    .cid('auto') // walks up from 3 while the kernel answers EADDRINUSE
    .queue(0, { size: 128, desc: 0x10000n, avail: 0x11000n, used: 0x12000n, kick: fds[0], call: fds[1] })
    .queue(1, { size: 128, desc: 0x20000n, avail: 0x21000n, used: 0x22000n, kick: fds[2], call: fds[3] })
    .start(); // ... SET_GUEST_CID, then SET_RUNNING(1) last
  console.log(`vsock device running as guest CID ${vs.cid}`);
  console.log('stopped at', JSON.stringify(vs.stop().queues));
  vs.close();
} finally {
  for (const e of fds) e.close();
  mem.close();
}
