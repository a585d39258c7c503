// Hotplug into a running guest, end to end, inside the test VM: QEMU boots the
// small guest (scripts/guest-initramfs.sh) with no NIC, a QMP socket and two
// pcie-root-ports; this process prepares a 2-queue vhost-net NIC (MTU 9000)
// and a vhost-vsock device (a fixed CID) and hot-plugs them over QMP. The
// guest sees eth0 appear with MTU 9000 and two rx queues, pings the host over
// it and reaches this process's vsock server; unplug removes both in the
// guest. 20 plug/unplug cycles leak nothing: QEMU's /proc fd list and
// query-fdsets come back to where they were, so do this process's fds, each
// tap is gone, and the same CID is free again for the next cycle.
//
// Accelerator: nested KVM (as nested-guest.test.ts), the HOTPLUG part of scripts/test.js:
// it runs in a test VM of its own that is booted again when nested SVM under TCG breaks it.
// Why not plain TCG inside the TCG test VM: the hot-unplug needs a booted guest that answers
// ACPI eject requests, and a guest kernel under TCG-in-TCG takes minutes to boot and seconds
// per ACPI event, which 20 cycles multiply; under nested KVM a cycle takes about 3 s.
// LINUX_VHOST_HOTPLUG_ACCEL=tcg runs it under TCG anyway (generous timeouts).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { prepareNetForVmm, prepareVsockForVmm } from '../../../lib/vmm/handoff';
import { hotplugNet, hotplugVsock, unplugNet, unplugVsock } from '../../../lib/vmm/hotplug';
import type { Qmp } from '../../../lib/vmm/qmp';
import * as vsock from '../../../lib/vsock/socket';
import { describeKernel, openFdCount, sleep, waitFor } from '../../support/helpers';
import { connectQmp, fdsOf, rootPorts } from '../../support/qemu';
import { ng, vmBroken, type Guest } from '../../support/nested-guest';

/** QEMU's fds on a tap or a vhost device. */
const deviceFds = (pid: number): string[] => [...fdsOf(pid)].filter(([, t]) => /^\/dev\/(net\/tun|vhost-net|vhost-vsock)$/.test(t)).map(([fd, t]) => `${fd}=${t}`);

const CYCLES = 20;
const HOST_IP = '10.81.0.1';
const GUEST_IP = '10.81.0.2';
const MTU = 9000;
const CID = 4711;
const VSOCK_PORT = 5400;
const MAC = '52:54:00:00:81:02';
const accel = process.env.LINUX_VHOST_HOTPLUG_ACCEL === 'tcg' ? 'tcg' : 'kvm';
const SLOW = accel === 'tcg' ? 10 : 1;
const MINUTE = 60_000;
// The guest gives a plugged device this long to appear, then reports what it has (a wrong
// answer); the host waits longer for that report, and a guest silent past SILENT_MS (its
// heartbeat comes every 2 s) has stopped running: see the retry at the end of the test.
const GUEST_PLUG_WAIT_S = 60 * SLOW;
// Both devices normally show up ~1.5 s after the plug. Nested SVM under TCG loses guest
// interrupts now and then (see the re-asked device_del below), and a lost ACPI hotplug event
// leaves a plugged device unseen although QEMU has it: after this long the guest rescans its
// PCI buses, once per cycle and at most MAX_RESCANS times per run, each one printed.
const RESCAN_AFTER_S = 15 * SLOW;
const MAX_RESCANS = 2;
const PLUGGED_WAIT_MS = 90_000 * SLOW;
const SILENT_MS = 20_000 * SLOW;

const AGENT_PY = String.raw`
import socket, sys
s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.settimeout(20)
s.connect((socket.VMADDR_CID_HOST, int(sys.argv[1])))
s.sendall(b"hello %s\n" % sys.argv[2].encode())
print("VSOCK", sys.argv[2], s.makefile("rb").readline().decode().strip(), flush=True)
`;

// The guest's /run/guest/cmd: for each cycle, waits for the host's plug<i>, for eth0 and the vsock
// device to appear, reports them (and on the first and last cycle pings and talks vsock), then
// waits for unplug<i> and for both to be gone. Its waits poll every 0.2 s with shell builtins
// and one sleep(1) each. The guests that broke (panics in error_entry, guests that stopped, the
// test VM's kernel with them) polled every 50 ms with ~80 new processes a second, each one page
// faults that nested paging under TCG emulates; fewer of them is less exposure (a guess; what
// a loop measured after the change is in scripts/test.js, by HOTPLUG).
const GUEST_SCRIPT = String.raw`
vsockdevs() { ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/ 2>/dev/null | grep -c '^virtio'; }
vsock_up() { for d in /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio*; do [ -e "$d" ] && return 0; done; return 1; }
both_up() { [ -e /sys/class/net/eth0 ] && vsock_up; }
both_gone() { [ ! -e /sys/class/net/eth0 ] && ! vsock_up; }
waitgone() { n=0; while ! both_gone && [ $n -lt 300 ]; do sleep 0.2; n=$((n+1)); done; }
lvg_heartbeat
echo READY
i=0
while :; do
	while [ ! -e /run/guest/plug$i ] && [ ! -e /run/guest/end ]; do sleep 0.2; done
	[ -e /run/guest/plug$i ] || break
	n=0
	while ! both_up && [ $n -lt $((${GUEST_PLUG_WAIT_S} * 5)) ]; do
		if [ $n = $((${RESCAN_AFTER_S} * 5)) ]; then echo 1 >/sys/bus/pci/rescan; echo "RESCAN $i"; fi
		sleep 0.2; n=$((n+1))
	done
	echo "PLUGGED $i mtu=$(cat /sys/class/net/eth0/mtu 2>/dev/null) rx=$(ls -d /sys/class/net/eth0/queues/rx-* 2>/dev/null | wc -l) mac=$(cat /sys/class/net/eth0/address 2>/dev/null) vsock=$(vsockdevs)"
	if [ ! -e /sys/class/net/eth0 ] || [ "$(vsockdevs)" = 0 ]; then
		echo "MISSING $i net: $(ls /sys/class/net | tr '\n' ' ')pci: $(cd /sys/bus/pci/devices && for d in *; do printf '%s=%s:%s ' $d $(cat $d/vendor) $(cat $d/device); done)virtio: $(ls /sys/bus/virtio/devices | tr '\n' ' ')"
		dmesg | tail -n 25 | sed "s/^/MISSING $i dmesg /"
	fi
	if [ -e /run/guest/talk$i ]; then
		ip addr add ${GUEST_IP}/24 dev eth0; ip link set eth0 up
		if ping -c 2 -W 10 ${HOST_IP} >/tmp/ping 2>&1; then echo "PING $i ok"; else echo "PING $i fail $(tr '\n' ' ' </tmp/ping)"; fi
		python3 /run/guest/agent.py ${VSOCK_PORT} $i || echo "VSOCK $i failed"
	fi
	echo "CHECKED $i"
	while [ ! -e /run/guest/unplug$i ]; do sleep 0.2; done
	waitgone
	echo "GONE $i eth0=$([ -e /sys/class/net/eth0 ] && echo yes || echo no) vsock=$(vsockdevs)"
	i=$((i+1))
done
`;

describeKernel('hotplug of vhost-net and vhost-vsock into a running guest over QMP', ['/dev/vhost-net', '/dev/vhost-vsock', '/dev/net/tun'], () => {
  jest.setTimeout(20 * MINUTE);
  let guest: Guest | undefined;
  let qmp: Qmp | undefined;
  let server: vsock.VsockServer | undefined;
  let dir: string;

  afterAll(async () => {
    qmp?.close();
    await guest?.stop();
    server?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test(`${CYCLES} cycles: the guest sees eth0 (MTU ${MTU}, 2 queues) and vsock appear and go; nothing leaks on either side`, async () => {
    if (accel === 'kvm' && !ng.kvmUsable()) throw new Error('/dev/kvm is not usable (kvm_amd/kvm_intel must load in the test VM); LINUX_VHOST_HOTPLUG_ACCEL=tcg runs without it');
    const served: string[] = [];
    server = vsock.createServer((conn) => {
      conn.setEncoding('utf8');
      conn.on('data', (d: string) => {
        served.push(`${conn.remoteAddress?.cid}:${d.trim()}`);
        conn.end(`host got ${d.trim()} from cid ${conn.remoteAddress?.cid}\n`);
      });
      conn.on('error', () => {});
    });
    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen({ port: VSOCK_PORT }, resolve);
    });
    // One run of the cycles in one guest. Nested SVM under QEMU 7.2's TCG sometimes kills the
    // nested guest's kernel outright (a panic in its interrupt path, seen in a clean CI run at
    // boot; another clean run lost QEMU mid-cycle, QMP reset during getfd); such a run is done
    // again in a fresh guest, at most twice, and said so, as nested-guest.test.ts does. A wrong
    // answer, a leak or a QEMU that crashed is never retried.
    const oneRun = async (): Promise<void> => {
      served.length = 0;
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hotplug-guest-'));
      const kernelDir = fs.existsSync('/run/linux-vhost-vm-kernel/lib/modules') ? '/run/linux-vhost-vm-kernel' : undefined;
      const boot = ng.buildInitramfs({ kernelDir });
      const sock = path.join(dir, 'qmp.sock');
      const t0 = Date.now();
      guest = ng.bootGuest({
        ...boot,
        accel,
        script: GUEST_SCRIPT,
        files: { 'agent.py': AGENT_PY },
        qemuArgs: ['-qmp', `unix:${sock},server=on,wait=off`, ...rootPorts(2)],
        smp: 2,
        mem: 256,
      });
      await waitFor('the QMP socket', () => fs.existsSync(sock), MINUTE);
      qmp = await connectQmp(sock, { timeoutMs: 30_000 * SLOW });
      await guest.waitFor(/^READY$/, 3 * MINUTE * SLOW);
      const bootSeconds = (Date.now() - t0) / 1000;
      const qemuPid = guest.child.pid;
      const qemuBefore = fdsOf(qemuPid);
      let afterFirst = new Map<number, string>();
      let lateFds = 0;
      let firstCycleAdded: string[] = [];
      const ownBefore = openFdCount();
      const plugMs: number[] = [];
      const unplugMs: number[] = [];
      const cidFreeMs: number[] = [];
      const seenMs: number[] = []; // from hotplugNet's start until the guest reported both devices
      const cycleMs: number[] = []; // a whole cycle, plug to the guest reporting both gone

      // Nested SVM under QEMU 7.2's TCG loses a guest's wakeups now and then (see nested-guest.test.ts):
      // a guest that saw the ACPI eject request late or never answers the next device_del, which
      // sends the request again. Once per device at most, and each one is printed; a second miss fails.
      const reasked: string[] = [];
      const rescans: number[] = []; // cycles in which the guest rescanned its PCI buses
      const unplugged = async (unplug: () => Promise<void>, what: string): Promise<void> => {
        try {
          await unplug();
        } catch (err) {
          if ((err as { code?: string }).code !== 'ETIMEDOUT') throw err;
          reasked.push(what);
          process.stdout.write(`[hotplug-guest] ${what}: no DEVICE_DELETED within 30 s; asking the guest again\n`);
          await unplug();
        }
      };
      for (let i = 0; i < CYCLES; i++) {
        const talk = i === 0 || i === CYCLES - 1;
        const net = prepareNetForVmm({ tapName: 'hp%d', queuePairs: 2, mtu: MTU, mac: MAC });
        // The same CID every cycle: EADDRINUSE here would mean the last cycle's device still holds it.
        const waitCid = Date.now();
        let vs: ReturnType<typeof prepareVsockForVmm> | undefined;
        while (vs === undefined) {
          try {
            vs = prepareVsockForVmm({ cid: CID });
          } catch (err) {
            if ((err as { code?: string }).code !== 'EADDRINUSE' || Date.now() - waitCid > 5000) throw err;
            await new Promise((r) => setTimeout(r, 10));
          }
        }
        if (i > 0) cidFreeMs.push(Date.now() - waitCid);
        const tapName = net.tap.name;
        try {
          if (talk) execFileSync('ip', ['addr', 'add', `${HOST_IP}/24`, 'dev', tapName]);
          const p0 = performance.now();
          const nic = await hotplugNet(qmp, net, { id: `n${i}`, queuePairs: 2, mtu: MTU, bus: 'rp1' });
          const dev = await hotplugVsock(qmp, vs, { id: `v${i}`, bus: 'rp2' });
          plugMs.push(performance.now() - p0);
          // QEMU has its own copies now.
          net.close();
          vs.close();
          if (talk) guest.signal(`talk${i}`);
          guest.signal(`plug${i}`);
          const from = guest.lines.length;
          const plugged = await guest.waitFor(new RegExp(`^PLUGGED ${i} (.*)$`), PLUGGED_WAIT_MS, from);
          seenMs.push(performance.now() - p0);
          if (guest.lines.slice(from, plugged.lineIndex).includes(`RESCAN ${i}`)) rescans.push(i);
          if (rescans.length > MAX_RESCANS) throw new Error(`cycle ${i}: the guest needed a PCI rescan to see a plugged device in cycles ${rescans.join(', ')}: more than ${MAX_RESCANS} lost hotplug events in one run`);
          if (plugged[1] !== `mtu=${MTU} rx=2 mac=${MAC} vsock=1`) {
            // What the guest and QEMU have instead: the guest prints its devices and kernel log.
            await sleep(3000);
            const pci = await qmp.execute('query-pci').catch((e: Error) => e.message);
            throw new Error(
              `cycle ${i}: the guest saw "${plugged[1]}" instead of "mtu=${MTU} rx=2 mac=${MAC} vsock=1"\n` +
                `${guest.lines.slice(from).filter((l) => l.startsWith(`MISSING ${i} `)).join('\n')}\nQEMU's query-pci: ${JSON.stringify(pci)}`,
            );
          }
          if (talk) {
            expect((await guest.waitFor(new RegExp(`^PING ${i} (.*)$`), MINUTE * SLOW, from))[1]).toBe('ok');
            const v = await guest.waitFor(new RegExp(`^VSOCK ${i} (.*)$`), MINUTE * SLOW, from);
            expect(v[1]).toBe(`host got hello ${i} from cid ${CID}`);
          }
          await guest.waitFor(new RegExp(`^CHECKED ${i}$`), MINUTE * SLOW, from);
          const u0 = performance.now();
          await unplugged(() => unplugVsock(qmp!, dev, { timeoutMs: 30_000 * SLOW }), `v${i}`);
          await unplugged(() => unplugNet(qmp!, nic, { timeoutMs: 30_000 * SLOW }), `n${i}`);
          unplugMs.push(performance.now() - u0);
          guest.signal(`unplug${i}`);
          expect((await guest.waitFor(new RegExp(`^GONE ${i} (.*)$`), MINUTE * SLOW, from))[1]).toBe('eth0=no vsock=0');
          cycleMs.push(performance.now() - p0);
        } finally {
          net.close();
          vs.close();
        }
        expect(fs.existsSync(`/sys/class/net/${tapName}`)).toBe(false);
        // No fd of the devices is left in QEMU (tap queues, vhost-net, vhost-vsock).
        await waitFor('QEMU to close the devices\' fds', () => deviceFds(qemuPid).length === 0, 5000).catch(() => {
          throw new Error(`cycle ${i}: QEMU still holds ${deviceFds(qemuPid).join(', ')}`);
        });
        expect(await qmp.execute('query-fdsets')).toEqual([]);
        // Nothing else grows either: after the first cycle (which may open what QEMU keeps for good), the
        // count comes back. QEMU frees an unplugged device's objects from its RCU thread, a little later.
        if (i === 0) {
          await new Promise((r) => setTimeout(r, 2000));
          const now = fdsOf(qemuPid);
          firstCycleAdded = [...now].filter(([fd, target]) => qemuBefore.get(fd) !== target).map(([fd, target]) => `${fd}=${target}`);
          afterFirst = now;
        } else {
          const added = (): string[] => [...fdsOf(qemuPid)].filter(([fd, target]) => afterFirst.get(fd) !== target).map(([fd, target]) => `${fd}=${target}`);
          await waitFor('QEMU\'s fd count to come back', () => fdsOf(qemuPid).size <= afterFirst.size, 5000).catch(() => {
            throw new Error(`cycle ${i}: QEMU holds ${fdsOf(qemuPid).size} fds, ${afterFirst.size} after the first cycle; new: ${added().join(', ')}`);
          });
          lateFds = Math.max(lateFds, fdsOf(qemuPid).size);
        }
      }
      expect(openFdCount()).toBe(ownBefore);
      expect(served).toEqual([`${CID}:hello 0`, `${CID}:hello ${CYCLES - 1}`]);
      guest.signal('end');
      expect(await guest.finished(MINUTE * SLOW)).toBe(0);
      const median = (a: number[]): number => [...a].sort((x, y) => x - y)[a.length >> 1];
      process.stdout.write(
        `[hotplug-guest] ${accel}: guest ready after ${bootSeconds.toFixed(1)} s; hotplug NIC+vsock median ${median(plugMs).toFixed(0)} ms, ` +
          `seen by the guest after ${median(seenMs).toFixed(0)} ms (median), a whole cycle ${median(cycleMs).toFixed(0)} ms (median), ` +
          `unplug (device_del until DEVICE_DELETED, both) median ${median(unplugMs).toFixed(0)} ms, max ${Math.max(...unplugMs).toFixed(0)} ms; ` +
          `CID free again after ${Math.max(...cidFreeMs)} ms at most; QEMU fds ${qemuBefore.size} before the first plug, ` +
          `${afterFirst.size} after the first cycle, device_del asked twice for: ${reasked.join(', ') || 'none'}, guest PCI rescans in cycles: ${rescans.join(', ') || 'none'}, back to at most that after each other one (read once more: ${lateFds}) (the first cycle added: ${firstCycleAdded.join(', ') || 'nothing'})\n`,
      );
    };
    for (let attempt = 1; ; attempt++) {
      try {
        await oneRun();
        return;
      } catch (err) {
        // Two kinds of run are the emulator's doing and go again in a fresh guest (at most three
        // runs, each one printed): a guest that panicked or reset, which makes QEMU exit 0
        // (panic=-1, -no-reboot) and shows here as whatever was waiting at that moment (seen:
        // QMP's ECONNRESET during getfd), and a guest that stopped running: a wait timed out and
        // the guest's 2 s heartbeat had been silent for SILENT_MS (seen in CI: the guest went
        // quiet after cycle 7, or right after READY). QEMU ending any other way (a signal such as
        // SIGABRT, an error exit) may be this library's doing, and a wrong answer, a leak or a
        // guest that is alive but did not see a device is never retried.
        const exit = guest === undefined ? null : await Promise.race([guest.exited, sleep(3000).then(() => null)]);
        const guestReset = exit !== null && exit.code === 0 && exit.signal === null;
        const message = `${(err as Error).message ?? ''}${exit !== null ? `\nQEMU exited (code ${exit.code}, signal ${exit.signal}): ${guest!.why()}` : ''}`;
        const silentMs = guest === undefined || exit !== null ? 0 : Date.now() - guest.lastLineAt;
        const timedOut = (err as { code?: string }).code === 'ETIMEDOUT' || /timed out after \d+ ms waiting for/.test(message);
        const stopped = timedOut && silentMs >= SILENT_MS;
        const emulator = guestReset || /Kernel panic/.test(message) || stopped;
        if (exit !== null && err instanceof Error) err.message = message;
        if (stopped && err instanceof Error) err.message += `\n(the guest has been silent for ${(silentMs / 1000).toFixed(0)} s: it stopped running)`;
        if (attempt < 3 && emulator) {
          const what = stopped ? 'stopped running' : 'panicked or reset';
          process.stdout.write(`[hotplug-guest] run ${attempt}: the nested guest ${what} (${message.replace(/\s+/g, ' ').slice(0, 600)}); running the cycles again in a fresh guest\n`);
        }
        qmp?.close();
        qmp = undefined;
        try {
          await guest?.stop();
        } catch (stopErr) {
          // QEMU outlived SIGKILL: this VM's kernel is stuck with it and a fresh guest here would
          // hang too. scripts/test.js boots a fresh test VM when told so.
          vmBroken(`hotplug-guest run ${attempt}: ${(stopErr as Error).message}`);
          guest = undefined; // afterAll would only fail on it again
          throw err;
        }
        guest = undefined;
        fs.rmSync(dir, { recursive: true, force: true });
        if (attempt >= 3 || !emulator) {
          // Every run stopped running: this VM's nested KVM is not keeping guests alive.
          if (emulator) vmBroken(`all 3 hotplug-guest runs: the nested guest panicked, reset or stopped running; the last: ${message.split('\n')[0]}`);
          throw err;
        }
      }
    }
  });
});
