// Bring up a vhost-net device with the typed builder, stop it, and restore it
// from the saved ring bases.
//   npx linux-vhost vm -- node examples/bring-up-net.js     (or as root on a host with vhost)
'use strict';
const { VhostNet, GuestMemory, EventFd, Tap, features } = require('linux-vhost');

const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 16 << 20 }] });
const tap = Tap.create({ name: 'vm0', mtu: 1500, up: true });
const [kick0, call0, kick1, call1] = [EventFd.create(), EventFd.create(), EventFd.create(), EventFd.create()];
// What a virtio-net guest driver acked; the builder sends vhost only what it should.
const acked = features.ring.VERSION_1 | features.ring.RING_EVENT_IDX | features.net.MRG_RXBUF | features.net.MAC | features.net.MTU;
const queues = (bases = [0, 0]) => [
  { size: 256, desc: 0x10000n, avail: 0x11000n, used: 0x12000n, kick: kick0, call: call0, base: bases[0] }, // RX
  { size: 256, desc: 0x20000n, avail: 0x21000n, used: 0x22000n, kick: kick1, call: call1, base: bases[1] }, // TX
];
const build = (bases) => {
  const [rx, tx] = queues(bases);
  return VhostNet.builder().memory(mem).backend(tap).features(acked).queue(0, rx).queue(1, tx).start();
};

try {
  const net = build();
  console.log(`running: tap ${tap.name}, vnet header ${net.vnetHdrSize} bytes, tap offload 0x${net.tapOffload.toString(16)}`);
  const state = net.stop(); // detach the backend, then GET_VRING_BASE per queue
  console.log('stopped at', JSON.stringify(state.queues));
  net.close();

  const restored = build(state.queues.map((q) => q.base));
  console.log('restored, queues', restored.queueIndexes.join(', '));
  restored.close(); // stops, then closes the vhost fd
} finally {
  for (const e of [kick0, call0, kick1, call1]) e.close();
  tap.close();
  mem.close();
}
