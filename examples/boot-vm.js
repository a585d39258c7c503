// Boot a VM with QEMU on devices this process prepared, as libvirt does: a tap
// and one /dev/vhost-net per queue pair, and a /dev/vhost-vsock with its CID
// set, handed to QEMU by fd number. QEMU takes ownership (VHOST_SET_OWNER);
// this process only opens and checks the devices, then waits for QEMU.
//   sudo node examples/boot-vm.js <kernel> <initrd> [--queues N] [--mtu M] [--cid N|auto]
//                                 [--append 'kernel command line'] [-- extra QEMU args]
// The guest sees a virtio-net NIC (MTU offered through host_mtu) and a vsock
// device; its console is on this terminal. Uses KVM when /dev/kvm is usable.
'use strict';
const fs = require('node:fs');
const { prepareNetForVmm, prepareVsockForVmm, qemuArgs, spawnVmm } = require('linux-vhost');

function usage(msg) {
  if (msg) console.error(`boot-vm: ${msg}`);
  console.error("usage: node examples/boot-vm.js <kernel> <initrd> [--queues N] [--mtu M] [--cid N|auto] [--append '...'] [-- QEMU args]");
  process.exit(2);
}

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const extra = dash >= 0 ? argv.splice(dash).slice(1) : [];
const opts = { queues: 1, mtu: undefined, cid: 'auto', append: 'console=ttyS0 panic=-1', qemu: 'qemu-system-x86_64' };
const files = [];
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const value = () => argv[++i] ?? usage(`${a} needs a value`);
  if (a === '--queues') opts.queues = Number(value());
  else if (a === '--mtu') opts.mtu = Number(value());
  else if (a === '--cid') { const v = value(); opts.cid = v === 'auto' ? 'auto' : Number(v); }
  else if (a === '--append') opts.append = value();
  else if (a === '--qemu') opts.qemu = value();
  else if (a.startsWith('-')) usage(`unknown option ${a}`);
  else files.push(a);
}
if (files.length !== 2) usage('need a kernel and an initrd');
const [kernel, initrd] = files;
for (const f of files) if (!fs.existsSync(f)) usage(`${f}: no such file`);

// Open and check everything first: errors here carry a hint (modprobe vhost_net, run as root, ...).
const net = prepareNetForVmm({ tapName: 'vmtap%d', queuePairs: opts.queues, mtu: opts.mtu });
const vsock = prepareVsockForVmm({ cid: opts.cid });
console.log(`tap ${net.tap.name} (${net.queuePairs} queue pair(s), MTU ${net.tap.mtu}), guest CID ${vsock.cid}`);

let kvm = false;
try {
  fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
  kvm = true;
} catch {
  // no KVM here: QEMU emulates (slow, but it boots)
}

const handoff = qemuArgs({ net, vsock });
const args = [
  '-M', 'q35', '-accel', kvm ? 'kvm' : 'tcg', '-cpu', kvm ? 'host' : 'max', '-m', '256', '-smp', String(Math.max(1, Math.min(opts.queues, 4))),
  '-nodefaults', '-no-reboot', '-nographic', '-serial', 'stdio',
  '-kernel', kernel, '-initrd', initrd, '-append', opts.append,
  ...handoff.args, ...extra,
];
console.log(`${opts.qemu} ${args.map((a) => (/[\s']/.test(a) ? `'${a}'` : a)).join(' ')}`);
console.log(`fds passed (child <- parent): ${handoff.fds.map((f) => `${f.childFd}<-${f.parentFd}`).join(' ')}`);

const child = spawnVmm(opts.qemu, args, handoff);
// QEMU holds its own copies now; the link stays as long as QEMU runs.
net.close();
vsock.close();
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));
child.on('error', (err) => {
  console.error(`boot-vm: ${err.message}`);
  process.exitCode = 1;
});
child.on('exit', (code, signal) => {
  console.log(`QEMU exited ${signal ?? code}`);
  process.exitCode = code ?? 1;
});
