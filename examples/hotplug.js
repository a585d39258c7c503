// Hot-plug a vhost-net NIC and a vhost-vsock device into a QEMU that is
// already running, over its QMP socket, then take them away again. The tap
// and vhost fds are opened and checked here and passed to QEMU with
// SCM_RIGHTS (QMP getfd); QEMU takes ownership (VHOST_SET_OWNER).
//   sudo node examples/hotplug.js <qmp-socket> [--queues N] [--mtu M] [--cid N|auto] [--hold SECONDS]
// QEMU needs free hotplug slots, e.g. on q35:
//   -qmp unix:/tmp/qmp.sock,server=on,wait=off
//   -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1
//   -device pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2
// The unplug waits (bounded) for the guest to release the devices: a booted
// guest kernel must answer the eject request.
'use strict';
const { Qmp, prepareNetForVmm, prepareVsockForVmm, hotplugNet, unplugNet, hotplugVsock, unplugVsock } = require('linux-vhost');

function usage(msg) {
  if (msg) console.error(`hotplug: ${msg}`);
  console.error('usage: node examples/hotplug.js <qmp-socket> [--queues N] [--mtu M] [--cid N|auto] [--hold SECONDS]');
  process.exit(2);
}

const argv = process.argv.slice(2);
const opts = { queues: 2, mtu: 9000, cid: 'auto', hold: 10 };
let socket;
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const value = () => argv[++i] ?? usage(`${a} needs a value`);
  if (a === '--queues') opts.queues = Number(value());
  else if (a === '--mtu') opts.mtu = Number(value());
  else if (a === '--cid') { const v = value(); opts.cid = v === 'auto' ? 'auto' : Number(v); }
  else if (a === '--hold') opts.hold = Number(value());
  else if (a.startsWith('-') || socket) usage(`unexpected ${a}`);
  else socket = a;
}
if (!socket) usage('need the QMP socket path');

async function main() {
  const qmp = await Qmp.connect(socket);
  const { qemu } = qmp.greeting.version;
  console.log(`QEMU ${qemu.major}.${qemu.minor}.${qemu.micro} on ${socket}`);
  qmp.on('DEVICE_DELETED', (data) => data.device && console.log(`DEVICE_DELETED ${data.device}`));
  qmp.on('NIC_RX_FILTER_CHANGED', (data) => console.log(`NIC_RX_FILTER_CHANGED ${data.name ?? ''}`));

  const net = prepareNetForVmm({ tapName: 'hptap%d', queuePairs: opts.queues, mtu: opts.mtu });
  const vsock = prepareVsockForVmm({ cid: opts.cid });
  try {
    const nic = await hotplugNet(qmp, net, { id: 'hpnet0', queuePairs: opts.queues, mtu: opts.mtu, bus: 'rp1' });
    console.log(`plugged ${nic.device}: tap ${net.tap.name}, ${nic.queuePairs} queue pair(s), MTU ${opts.mtu}`);
    const dev = await hotplugVsock(qmp, vsock, { id: 'hpvsock0', bus: 'rp2' });
    console.log(`plugged ${dev.device}: guest CID ${dev.cid}`);
    net.close(); // QEMU holds its own copies now: the tap lives as long as the netdev
    vsock.close();
    console.log(`holding them for ${opts.hold} s`);
    await new Promise((r) => setTimeout(r, opts.hold * 1000));
    await unplugVsock(qmp, dev);
    await unplugNet(qmp, nic);
    console.log('unplugged both; QEMU closed its fds');
  } finally {
    net.close();
    vsock.close();
    qmp.close();
  }
}

main().catch((err) => {
  console.error(`hotplug: ${err.message}`);
  process.exit(1);
});
