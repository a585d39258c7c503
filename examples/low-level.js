// The low-level API end to end: program /dev/vhost-net by hand, one ioctl per
// call, and let the kernel send one frame from "guest" memory to a tap.
//   npx linux-vhost vm -- node examples/low-level.js     (or as root on a host with vhost)
'use strict';
const fs = require('node:fs');
const { VhostNet, GuestMemory, EventFd, Tap, layoutSplitRing, features, describeFeatures } = require('linux-vhost');

const QUEUE = 256;
const TX = 1; // vhost-net queue 1 is guest TX
const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] });
const tap = Tap.create({ name: 'example0', vnetHdrSize: 12, up: true });
const net = VhostNet.open();
const kick = EventFd.create();
const call = EventFd.create();
try {
  net.setOwner();
  console.log('offered:', describeFeatures(net.getFeatures(), 'net').join(' '));
  net.setFeatures(features.ring.VERSION_1);
  net.setMemTable(mem);

  // A split ring at gpa 0x10000, one descriptor pointing at a frame at gpa 0x20000.
  const ring = layoutSplitRing(QUEUE, 0x10000n);
  const frame = Buffer.alloc(12 + 60); // 12-byte virtio_net_hdr, then the Ethernet frame
  frame.fill(0xff, 12, 18); // broadcast destination
  frame.set([0x02, 0, 0, 0, 0, 1], 18); // locally administered source
  frame.writeUInt16BE(0x88b5, 24); // local experimental EtherType
  mem.view(0x20000n, frame.length).set(frame);
  const view = (gpa, len) => {
    const bytes = mem.view(gpa, len); // zero-copy, detached when mem is closed
    return new DataView(bytes.buffer, bytes.byteOffset, len);
  };
  const desc = view(ring.desc, 16);
  desc.setBigUint64(0, 0x20000n, true); // addr (guest-physical)
  desc.setUint32(8, frame.length, true); // len
  desc.setUint16(12, 0, true); // flags: device-readable
  const avail = view(ring.avail, 6);
  avail.setUint16(4, 0, true); // ring[0] = descriptor 0
  avail.setUint16(2, 1, true); // idx = 1: publish it

  net.setVringNum(TX, QUEUE);
  net.setVringBase(TX, 0);
  net.setVringAddr(TX, { desc: mem.translate(ring.desc), avail: mem.translate(ring.avail), used: mem.translate(ring.used) });
  net.setVringKick(TX, kick);
  net.setVringCall(TX, call);
  net.setBackend(TX, tap);
  kick.write(1n); // the guest's notification: vhost's worker thread now moves the frame

  const used = view(ring.used, 4);
  const deadline = Date.now() + 5000;
  while (used.getUint16(2, true) === 0 && Date.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
  const received = fs.readFileSync(`/sys/class/net/${tap.name}/statistics/rx_packets`, 'utf8').trim();
  console.log(`used idx ${used.getUint16(2, true)}, ${tap.name} received ${received} frame(s), vring base ${net.getVringBase(TX)}`);
  net.setBackend(TX, null);
} finally {
  net.close();
  kick.close();
  call.close();
  tap.close();
  mem.close();
}
