// vhost-user-net served from Node to real QEMU 7.2 guests (TCG, on this host):
// the guest's own Linux virtio-net driver talks to VhostUserNet through
// QEMU's -netdev vhost-user. One guest gets an address, answers Node's ping
// and pings Node's responder; two guests on one NetSwitch in Node reach each
// other and move 64 MiB over TCP whose SHA-256 both sides compute. QEMU going
// away leaves the back-end with no mapping and no fd of it.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VhostUserNet } from '../../../lib/device/net';
import { NetSwitch } from '../../../lib/device/switch';
import { openFdCount, waitFor } from '../../support/helpers';
import { ng, type Guest } from '../../support/nested-guest';
import { describeWithQemuGuest, QEMU } from '../../support/qemu';

const TRANSFER = 64 << 20;
const NODE_IP = '10.77.0.1';

/**
 * QEMU arguments for one guest whose NIC is served at `sock`. Guest memory is
 * a shared memfd (the back-end maps it). vectors=0 (INTx) because of a QEMU 7.2
 * bug without KVM, whatever the back-end offers: vhost_net_start clears
 * use_guest_notifier_mask for vhost-user, virtio_pci_set_guest_notifiers still
 * installs the MSI-X vector notifiers (virtio-net has guest_notifier_mask), and
 * their unmask callback takes the irqfd path, kvm_virtio_pci_irqfd_use, which
 * reads proxy->vector_irqfd[vector] while vector_irqfd is NULL (no irqfds under
 * TCG): SIGSEGV in msix_set_vector_notifiers. QEMU 8.0 (commit 1680542862)
 * installs those notifiers only with irqfds or use_guest_notifier_mask.
 */
const netArgs = (sock: string, mac: string): string[] => [
  '-object', 'memory-backend-memfd,id=mem,size=256M,share=on', '-machine', 'memory-backend=mem',
  '-chardev', `socket,id=c0,path=${sock}`, '-netdev', 'vhost-user,id=n0,chardev=c0',
  '-device', `virtio-net-pci,netdev=n0,mac=${mac},vectors=0`,
];

const mapsOf = (pid: number, what: string): number => fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes(what)).length;

describeWithQemuGuest('vhost-user-net: QEMU guests on a Node back-end', () => {
  let dir: string;
  let kernel: string;
  let initrd: string;
  const guests: Guest[] = [];
  const nets: VhostUserNet[] = [];

  beforeAll(() => {
    ({ kernel, initrd } = ng.buildInitramfs());
  });
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vu-net-host-'));
  });
  afterEach(async () => {
    for (const g of guests.splice(0)) await g.stop();
    for (const n of nets.splice(0)) n.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const serve = (name: string, options = {}): { net: VhostUserNet; sock: string } => {
    const sock = path.join(dir, `${name}.sock`);
    const net = VhostUserNet.listen(sock, options);
    nets.push(net);
    return { net, sock };
  };
  const boot = (sock: string, mac: string, script: string, files?: Record<string, string>): Guest => {
    // With files, the host's root is the guest's (for python3); the files are in /run/guest.
    const g = ng.bootGuest({ kernel, initrd, script, files, hostShare: files !== undefined, smp: 1, accel: 'tcg', qemu: QEMU, qemuArgs: netArgs(sock, mac) });
    guests.push(g);
    return g;
  };

  test('the guest\'s virtio-net driver gets an address, answers Node\'s ping and pings Node\'s responder; QEMU leaving unmaps its memory', async () => {
    const { net, sock } = serve('one', { responder: { ipv4: NODE_IP } });
    const messages: string[] = [];
    net.backend!.on('message', (name: string, flags: number) => messages.push(`${name}${flags & 8 ? '+ack' : ''}`));
    const fdsBefore = openFdCount();
    const g = boot(sock, '52:54:00:77:00:02', [
      'ip link set eth0 up && ip addr add 10.77.0.2/24 dev eth0 || exit 1',
      'echo ADDR-UP',
      'lvg_wait pinged',
      `ping -c 3 -W 10 ${NODE_IP} && echo PING-OK`,
      'cat /sys/class/net/eth0/statistics/rx_packets /sys/class/net/eth0/statistics/tx_packets',
    ].join('\n'));
    await g.waitFor(/ADDR-UP/, 120_000);
    expect(net.ready).toBe(true);
    const rtt = await net.ping('10.77.0.2', { timeoutMs: 20_000 });
    expect(rtt).toBeGreaterThan(0);
    g.signal('pinged');
    await g.waitFor(/PING-OK/, 60_000);
    expect(await g.finished(60_000)).toBe(0);
    expect(net.responder!.counts.icmp).toBeGreaterThanOrEqual(3);
    // The guest learned Node's MAC from ping()'s ARP request, so it may send no ARP of its own.
    expect(net.stats.rxAnswered).toBeGreaterThanOrEqual(3);
    // What QEMU 7.2 sent: protocol features negotiated, memory acked, both rings set up and enabled.
    for (const m of ['GET_FEATURES', 'GET_PROTOCOL_FEATURES', 'SET_PROTOCOL_FEATURES', 'SET_OWNER', 'SET_FEATURES', 'SET_MEM_TABLE+ack', 'SET_VRING_NUM', 'SET_VRING_ADDR', 'SET_VRING_KICK', 'SET_VRING_CALL', 'SET_VRING_ENABLE', 'GET_VRING_BASE']) {
      expect(messages).toContain(m);
    }
    // QEMU powered off: the connection ends and nothing of it stays here.
    await waitFor('the back-end to see QEMU go', () => !net.backend!.connected, 30_000);
    expect(mapsOf(process.pid, 'memfd:mem')).toBe(0);
    expect(openFdCount()).toBe(fdsBefore);
  }, 300_000);

  test('two guests on one Node switch reach each other and move 64 MiB over TCP, SHA-256 equal on both sides', async () => {
    const sw = new NetSwitch();
    const a = serve('a');
    const b = serve('b');
    sw.attach(a.net);
    sw.attach(b.net);
    const receiver = String.raw`
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("10.77.0.12", 5000)); s.listen(1)
print("LISTENING", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
print("RECEIVED", n, h.hexdigest(), flush=True)
`;
    const sender = String.raw`
import hashlib, os, socket, sys, time
total = int(sys.argv[1]); h = hashlib.sha256(); sent = 0
for attempt in range(120):
    try:
        s = socket.create_connection(("10.77.0.12", 5000), timeout=5); break
    except OSError:
        time.sleep(1)
s.settimeout(None)
while sent < total:
    d = os.urandom(min(1 << 20, total - sent)); h.update(d); s.sendall(d); sent += len(d)
s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
print("SENT", sent, h.hexdigest(), flush=True)
`;
    const gb = boot(b.sock, '52:54:00:77:00:12', 'ip link set eth0 up; ip addr add 10.77.0.12/24 dev eth0; python3 /run/guest/recv.py', { 'recv.py': receiver });
    const ga = boot(a.sock, '52:54:00:77:00:11', `ip link set eth0 up; ip addr add 10.77.0.11/24 dev eth0; python3 /run/guest/send.py ${TRANSFER}`, { 'send.py': sender });
    const [sent, got] = await Promise.all([ga.waitFor(/^SENT (\d+) ([0-9a-f]{64})/, 600_000), gb.waitFor(/^RECEIVED (\d+) ([0-9a-f]{64})/, 600_000)]);
    expect(Number(sent[1])).toBe(TRANSFER);
    expect(Number(got[1])).toBe(TRANSFER);
    expect(got[2]).toBe(sent[2]);
    expect(a.net.stats.rxBytes).toBeGreaterThan(TRANSFER);
    expect(b.net.stats.txBytes).toBeGreaterThan(TRANSFER);
    expect(sw.stats.forwarded).toBeGreaterThan(TRANSFER / 1514);
    expect(a.net.stats.txTooBig + b.net.stats.txTooBig).toBe(0);
    sw.close();
  }, 900_000);
});
