// A failed bring-up, traced: run with NODE_DEBUG=linux-vhost (README, "Tracing kernel calls").
// The backend given is an eventfd, not a tap: vhost-net refuses it at
// VHOST_NET_SET_BACKEND (ENOTSOCK), and the builder closes what it opened.
//   npx linux-vhost vm -- env NODE_DEBUG=linux-vhost node examples/trace-failed-bring-up.js
const { VhostNet, GuestMemory, EventFd, features } = require('..');

const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 1n << 20n }] });
const [kick, call, notATap] = [EventFd.create(), EventFd.create(), EventFd.create()];
try {
  VhostNet.builder()
    .memory(mem)
    .backend(notATap.fd)
    .features(features.ring.VERSION_1)
    .queue(0, { size: 64, desc: 0x10000n, avail: 0x10400n, used: 0x11000n, kick, call })
    .queue(1, { size: 64, desc: 0x20000n, avail: 0x20400n, used: 0x21000n, kick, call })
    .start();
} catch (err) {
  console.error(`${err.step}: ${err.message}`);
} finally {
  for (const o of [kick, call, notATap, mem]) o.close();
}
