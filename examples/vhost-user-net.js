// Serve a NIC to a real QEMU guest from Node: VhostUserNet listens on a unix
// socket, QEMU connects to it with -netdev vhost-user, and the guest's own
// virtio-net driver talks to this process. The responder answers ARP and ping
// for 10.0.2.1; every other frame from the guest is printed. No KVM and no
// kernel vhost needed (QEMU under TCG is fine).
//   node examples/vhost-user-net.js [/tmp/vu-net.sock]
// then, in another shell (any kernel + initrd; scripts/guest-initramfs.sh prints one):
//   qemu-system-x86_64 -machine q35 -m 256 \
//     -object memory-backend-memfd,id=mem,size=256M,share=on -machine memory-backend=mem \
//     -chardev socket,id=c0,path=/tmp/vu-net.sock -netdev vhost-user,id=n0,chardev=c0 \
//     -device virtio-net-pci,netdev=n0,vectors=0 -kernel ... -initrd ... -append 'console=ttyS0 lvg.ip=10.0.2.2/24' -nographic
// and in the guest: ping 10.0.2.1
// (vectors=0: QEMU 7.2 without KVM segfaults when a vhost-user NIC uses MSI-X, a QEMU bug; see the README.)
'use strict';
const { VhostUserNet } = require('linux-vhost');

const sock = process.argv[2] ?? '/tmp/vu-net.sock';
const nic = VhostUserNet.listen(sock, { responder: { ipv4: '10.0.2.1' } }); // socket mode 0600
console.log(`listening on ${sock} as ${nic.mac} (10.0.2.1); start QEMU now`);
nic.backend.on('connect', () => console.log('QEMU connected'));
nic.backend.on('disconnect', (reason) => console.log('QEMU left', reason ? reason.message : ''));
nic.backend.on('queue-broken', (index, err) => console.error(`ring ${index} broken: ${err.message}`));
nic.on('ready', async () => {
  console.log('guest driver up');
  try {
    console.log(`ping 10.0.2.2: ${(await nic.ping('10.0.2.2', { timeoutMs: 10_000 })).toFixed(1)} ms`);
  } catch (err) {
    console.log(`ping 10.0.2.2: ${err.message} (give the guest lvg.ip=10.0.2.2/24)`);
  }
});
nic.on('frame', (frame) => console.log(`frame from the guest: ${frame.length} bytes, type 0x${frame.readUInt16BE(12).toString(16)}`));
process.on('SIGINT', () => {
  console.log('stats', nic.stats);
  nic.close(); // removes the socket file
});
