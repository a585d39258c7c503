// A real guest on this library's fds, end to end: inside the test VM, QEMU
// (-accel kvm, nested) boots the same kernel with scripts/guest-initramfs.sh,
// virtio-net on a 2-queue tap + vhost-net fds from prepareNetForVmm() and
// vhost-vsock on a CID from prepareVsockForVmm(). The guest checks its MTU,
// pings, talks vsock both ways with a python3 agent, drives both queue pairs
// and streams ≥ 200 MB to the host while this process stays (nearly) idle.
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { constants, PerformanceObserver, performance, type PerformanceEntry } from 'node:perf_hooks';
import { promisify } from 'node:util';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { prepareNetForVmm, prepareVsockForVmm, qemuArgs, spawnVmm } from '../../../lib/vmm/handoff';
import * as vsock from '../../../lib/vsock/socket';
import { describeKernel, sleep } from '../../support/helpers';
import { ng, vmBroken, type Guest, type Sink } from '../../support/nested-guest';

const run = promisify(execFile);
const HOST_IP = '10.79.0.1';
const GUEST_IP = '10.79.0.2';
const SINK_PORT = 5001;
const VSOCK_HOST_PORT = 5200;
const VSOCK_GUEST_PORT = 5300;
const MTU = 9000;
const FLOW_BYTES = 16 << 20; // per flow of the two-queue step
const BULK_BYTES = 256 << 20; // ≥ 200 MB (268 MB)
const BULK_MIN_SECONDS = 8; // and at least this long: /proc counts CPU in 10 ms ticks
const BULK_ATTEMPTS = 4; // room for a stalled transfer and windows with V8's background work in them
// A transfer takes ~8 s. Nested guests under TCG rarely stall one mid-way (seen
// in about 1 of 10 runs): the guest kills its sender after this long and the host
// tries again (within BULK_ATTEMPTS). Nested SVM under QEMU 7.2's TCG loses a guest's
// wakeups now and then (a booted test guest sat in `sleep 1` for 90 s, 3 of 47 boots).
const BULK_STALL_SECONDS = 60;
const MINUTE = 60_000;

// Guest agent (python3 from the host root: busybox has no AF_VSOCK).
//   agent.py request PORT N: connects to the host (CID 2), sends N requests, prints the replies.
//   agent.py listen PORT: accepts one host connection and answers its line.
const AGENT_PY = String.raw`
import fcntl, os, socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
def line(f):
    return f.readline().decode().rstrip("\n")
if mode == "request":
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.connect((socket.VMADDR_CID_HOST, port))
    # getsockname() says VMADDR_CID_ANY for an autobound socket: ask /dev/vsock for our CID.
    cid = bytearray(4)
    fcntl.ioctl(os.open("/dev/vsock", os.O_RDONLY), 0x7B9, cid, True)  # IOCTL_VM_SOCKETS_GET_LOCAL_CID
    print("VSOCK_LOCAL", int.from_bytes(cid, "little"), flush=True)
    f = s.makefile("rb")
    for i in range(int(sys.argv[3])):
        s.sendall(b"req %d\n" % i)
        print("VSOCK_REPLY", line(f), flush=True)
    s.close()
else:
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.bind((socket.VMADDR_CID_ANY, port))
    s.listen(1)
    print("VSOCK_LISTENING", port, flush=True)
    c, peer = s.accept()
    got = line(c.makefile("rb"))
    c.sendall(b"guest got: " + got.encode() + b"\n")
    print("VSOCK_ACCEPTED", peer[0], got, flush=True)
    c.close()
`;

// Runs as the guest's /run/guest/cmd (POSIX sh). Each step prints a marker the test waits for.
const GUEST_SCRIPT = String.raw`
H=${HOST_IP}
dev=$(basename "$(readlink /sys/class/net/eth0/device)")
# Before anything touches eth0: what the device offered (host_mtu = VIRTIO_NET_F_MTU, bit 3).
echo "MTU $(cat /sys/class/net/eth0/mtu) FEATURES $(cat /sys/class/net/eth0/device/features)"
echo "QUEUES rx=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l) tx=$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l) cpus=$(nproc)"
ip addr add ${GUEST_IP}/24 dev eth0 && ip link set eth0 up || exit 10
echo "MTU_UP $(cat /sys/class/net/eth0/mtu)"
if ping -c 3 -W 10 $H >/tmp/ping 2>&1; then echo "GUEST_PING ok $(grep -c 'bytes from' /tmp/ping)"; else echo "GUEST_PING fail: $(cat /tmp/ping)"; fi
echo NET_UP
lvg_wait pinged

python3 /run/guest/agent.py listen ${VSOCK_GUEST_PORT} & lp=$!
python3 /run/guest/agent.py request ${VSOCK_HOST_PORT} 3 || echo "VSOCK_REQUEST_FAILED $?"
wait $lp || echo "VSOCK_LISTEN_FAILED $?"
echo VSOCK_DONE

# Interrupt counts per virtqueue of eth0's device, summed over CPUs: "virtio0-input.0 123".
irqs() { awk -v d="$dev-" -v n="$(nproc)" 'index($NF, d) == 1 { s = 0; for (i = 2; i <= n + 1; i++) s += $i; print $NF, s }' /proc/interrupts | tr '\n' ' '; }
echo "IRQ_BEFORE $(irqs)"
taskset -c 0 python3 /run/guest/send.py $H ${SINK_PORT} ${FLOW_BYTES} & a=$!
taskset -c 1 python3 /run/guest/send.py $H ${SINK_PORT} ${FLOW_BYTES} & b=$!
wait $a; ra=$?; wait $b; rb=$?
echo "IRQ_AFTER $(irqs)"
echo "FLOWS_DONE $ra $rb"

# Bulk transfers, each on the host's request (bulk1, bulk2, ...) until it says "end".
n=1
while :; do
	while [ ! -e /run/guest/bulk$n ] && [ ! -e /run/guest/end ]; do sleep 0.05; done
	[ -e /run/guest/bulk$n ] || break
	echo "BULK_START $n"
	timeout ${BULK_STALL_SECONDS} python3 /run/guest/send.py $H ${SINK_PORT} ${BULK_BYTES} ${BULK_MIN_SECONDS}
	echo "BULK_DONE $n $?"
	n=$((n + 1))
done
`;

/** A full-GC function (V8's gc(), exposed at runtime), or undefined where V8 refuses. */
function forcedGc(): (() => void) | undefined {
  try {
    v8.setFlagsFromString('--expose-gc');
    return vm.runInNewContext('gc') as () => void;
  } catch {
    return undefined;
  }
}

function parseIrqs(line: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of line.matchAll(/(\S+?-(?:input|output)\.\d+) (\d+)/g)) out.set(m[1].replace(/^.*?-/, ''), Number(m[2]));
  return out;
}

/** What one guest run showed, step by step (a step missing: the run stopped before it). */
interface Observed {
  tapName: string;
  guestCid: number;
  mtu?: { mtu: number; features: string; tapMtu: string; up: number };
  queues?: number[];
  ping?: { guest: string; host: string };
  vsock?: { local: number; listening: number; reply: string; accepted: string[]; replies: string[]; serverLines: string[]; serverPeers: number[]; failedLines: boolean };
  flows?: { bytes: number[]; done: string; delta: Record<string, number> };
  bulk?: { transfers: { bytes: number; sent: number; share: number }[] };
  end?: { status: number; code: number | null; tapGone: boolean };
}

// Nested KVM under TCG (QEMU 7.2's SVM emulation) now and then hangs or panics the guest (5 of
// 115 boots in a loop here; a CI run saw one stop mid-way for good). That is the emulator, not
// the library: when the guest stops answering (a wait on it times out, or it dies), the whole
// run is done again in a fresh guest, and said so. Wrong answers are never retried: they are
// recorded and fail the tests below. A QEMU that outlives SIGKILL has broken this VM's kernel:
// no fresh guest here can help, so the run stops and says so in $LINUX_VHOST_VM_BROKEN, and
// scripts/test.js boots a fresh test VM for this file; likewise when every run stopped answering.
const GUEST_RUNS = 3;
function guestTrouble(err: unknown): boolean {
  const e = err as NodeJS.ErrnoException;
  return e?.code === 'ETIMEDOUT' || /timed out after \d+ ms waiting for|guest exited while waiting|sink: (nothing in|no report from)|guest still running after/.test(String(e?.message));
}

describeKernel('nested guest on prepared fds (QEMU + KVM)', ['/dev/vhost-net', '/dev/vhost-vsock', '/dev/net/tun'], () => {
  jest.setTimeout(MINUTE);
  let server: vsock.VsockServer | undefined;
  let observed: Observed | undefined;
  let stoppedBy: unknown; // why the last run stopped early, if it did
  const times: string[] = [];

  /** One guest from boot to power-off; fills `o` as it goes. */
  async function runGuest(o: Observed, guest: Guest, sink: Sink, handleServer: (fn: (line: string, peer: number) => void) => void): Promise<void> {
    const t0 = Date.now();
    const mark = (what: string) => times.push(`${what} ${((Date.now() - t0) / 1000).toFixed(1)}s`);
    const serverLines: string[] = [];
    const serverPeers: number[] = [];
    // The host server reports each accepted peer (peer ≥ 0) and each request line (peer -1).
    handleServer((l, p) => (p >= 0 ? serverPeers.push(p) : serverLines.push(l)));

    const m = await guest.waitFor(/^MTU (\d+) FEATURES ([01]+)$/, 75_000);
    mark(`script started (boot ${guest.bootSeconds?.toFixed(1)}s)`);
    const tapMtu = fs.readFileSync(`/sys/class/net/${o.tapName}/mtu`, 'utf8').trim();
    const up = await guest.waitFor(/^MTU_UP (\d+)$/);
    o.mtu = { mtu: Number(m[1]), features: m[2], tapMtu, up: Number(up[1]) };

    const q = await guest.waitFor(/^QUEUES rx=(\d+) tx=(\d+) cpus=(\d+)$/);
    o.queues = [Number(q[1]), Number(q[2]), Number(q[3])];

    const gp = await guest.waitFor(/^GUEST_PING (.*)$/);
    await guest.waitFor(/^NET_UP$/);
    const hostPing = await run('busybox', ['ping', '-c', '3', '-W', '10', GUEST_IP]).then((r) => r.stdout, (e: { stdout?: string }) => e.stdout ?? String(e));
    o.ping = { guest: gp[1], host: hostPing };
    guest.signal('pinged');
    mark('pings');

    const local = await guest.waitFor(/^VSOCK_LOCAL (\d+)$/);
    const listening = await guest.waitFor(/^VSOCK_LISTENING (\d+)$/);
    const reply = await new Promise<string>((resolve, reject) => {
      const conn = vsock.connect({ cid: o.guestCid, port: VSOCK_GUEST_PORT, timeout: 20_000 });
      let got = '';
      conn.setEncoding('utf8');
      conn.on('connect', () => conn.write('hello from the host\n'));
      conn.on('data', (d: string) => (got += d));
      conn.on('end', () => resolve(got));
      conn.on('error', reject);
    });
    const accepted = await guest.waitFor(/^VSOCK_ACCEPTED (\d+) (.*)$/);
    await guest.waitFor(/^VSOCK_DONE$/);
    o.vsock = {
      local: Number(local[1]),
      listening: Number(listening[1]),
      reply,
      accepted: accepted.slice(1),
      replies: guest.lines.filter((l) => l.startsWith('VSOCK_REPLY ')).map((l) => l.slice(12)),
      serverLines,
      serverPeers,
      failedLines: guest.lines.some((l) => /VSOCK_(REQUEST|LISTEN)_FAILED/.test(l)),
    };
    mark('vsock');

    const before = parseIrqs((await guest.waitFor(/^IRQ_BEFORE (.*)$/))[1]);
    const [a, b] = [await guest.whileUp(sink.next(MINUTE), 'the sink'), await guest.whileUp(sink.next(MINUTE), 'the sink')];
    await guest.whileUp(Promise.all([sink.nextFirst(), sink.nextFirst()]), 'the sink');
    const after = parseIrqs((await guest.waitFor(/^IRQ_AFTER (.*)$/))[1]);
    const done = (await guest.waitFor(/^FLOWS_DONE (.*)$/))[1];
    const delta = Object.fromEntries([...after].map(([name, n]) => [name, n - (before.get(name) ?? 0)]));
    process.stdout.write(`per-virtqueue interrupts during the two flows: ${JSON.stringify(delta)}\n`);
    o.flows = { bytes: [a.bytes, b.bytes], done, delta };
    mark('two flows');

    o.bulk = { transfers: await bulkTransfers(guest, sink) };
    mark(`bulk (${o.bulk.transfers.length} transfer(s))`);

    const status = await guest.finished(MINUTE);
    const { code } = await guest.exited;
    o.end = { status, code, tapGone: !fs.existsSync(path.join('/sys/class/net', o.tapName)) };
    mark('poweroff');
  }

  // The window counts every thread of this jest process, which also holds jest's and ts-jest's
  // heaps. V8 works on them in the background whenever it likes: its idle-time "memory reducer"
  // GC landed in the first window in 3 of 4 runs of this file alone (620-690 ms of CPU in 7.8 s;
  // scripts/test.js now turns it off for the kernel suite), and a CI run saw 80 ms on one V8
  // worker thread with no GC reported. That work has nothing to do with the datapath and only
  // ever adds CPU, so a window over 1% is repeated (up to BULK_ATTEMPTS transfers, which also
  // cover a stalled one) and the quietest window is asserted: a datapath in Node, ~125 MB/s
  // through JS, would be far over 1% in every window. Each window is printed with the GCs in it.
  async function bulkTransfers(guest: Guest, sink: Sink): Promise<{ bytes: number; sent: number; share: number }[]> {
    const collect = forcedGc();
    const gcs: { at: number; kind: string }[] = [];
    const kinds: Record<number, string> = { [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major', [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental marking' };
    const observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries() as (PerformanceEntry & { detail?: { kind?: number } })[]) {
        const kind = kinds[e.detail?.kind ?? -1];
        if (kind) gcs.push({ at: e.startTime, kind });
      }
    });
    observer.observe({ entryTypes: ['gc'] });
    const transfers: { bytes: number; sent: number; share: number }[] = [];
    try {
      for (let n = 1; n <= BULK_ATTEMPTS; n++) {
        collect?.(); // start each window with little garbage: no allocation-driven major GC in it
        await sleep(1000);
        const from = guest.lines.length;
        guest.signal(`bulk${n}`);
        await guest.waitFor(new RegExp(`^BULK_START ${n}$`), MINUTE, from);
        const peer = await guest.whileUp(sink.nextFirst(MINUTE), 'the sink'); // from the first byte to EOF: the transfer itself
        const threads0 = ng.selfThreadsCpu();
        const cpu0 = ng.selfCpuSeconds();
        const wall0 = performance.now();
        // The window ends when the sink reports EOF; whether the transfer counts is
        // decided by the guest's exit status (a stalled sender killed by timeout also
        // closes its connection, and the sink reports what had arrived).
        let window: { cpu: number; wall: number; threads: string } | undefined;
        const reported = sink.reportOf(peer, (BULK_STALL_SECONDS + 60) * 1000).then((r) => {
          window = { cpu: ng.selfCpuSeconds() - cpu0, wall: (performance.now() - wall0) / 1000, threads: ng.threadsCpuDelta(threads0, ng.selfThreadsCpu()) };
          return r;
        });
        reported.catch(() => {}); // a stalled transfer may leave no report: the status below says why
        const status = (await guest.waitFor(new RegExp(`^BULK_DONE ${n} (\\d+)$`), (BULK_STALL_SECONDS + 60) * 1000, from))[1];
        if (status !== '0') {
          process.stdout.write(`bulk guest→host #${n}: stalled, the guest's sender gave up (exit ${status}); trying again\n`);
          continue;
        }
        const report = await reported;
        const { cpu, wall, threads } = window!;
        const share = (100 * cpu) / wall;
        const sent = await guest.waitFor(/^SENT (\d+)$/, MINUTE, from);
        transfers.push({ bytes: report.bytes, sent: Number(sent[1]), share });
        if (share > 1) await sleep(2000); // a GC whose marking began in the window may finish later
        const seen = gcs.filter((g) => g.at >= wall0 - 1000).map((g) => g.kind);
        process.stdout.write(
          `bulk guest→host #${n}: ${(report.bytes / 1e6).toFixed(0)} MB in ${report.seconds.toFixed(2)} s = ` +
            `${(report.bytes / report.seconds / 1e6).toFixed(1)} MB/s; Node CPU ${(cpu * 1000).toFixed(0)} ms over ${wall.toFixed(2)} s = ${share.toFixed(2)}%` +
            `; V8 GCs in the window: ${seen.join(', ') || 'none'}; by thread: ${threads || 'none'}` +
            `${share > 1 && n < BULK_ATTEMPTS ? '; over 1%: trying again' : ''}\n`,
        );
        if (share <= 1) break;
      }
    } finally {
      observer.disconnect();
      guest.signal('end');
    }
    return transfers;
  }

  beforeAll(async () => {
    // Inside the test VM kvm_amd/kvm_intel gives a nested /dev/kvm; without it this test cannot run.
    if (!ng.kvmUsable()) {
      throw new Error('/dev/kvm is not usable: the nested-guest test needs KVM (in the test VM, kvm_amd/kvm_intel must load: nested virtualization)');
    }
    const kernelDir = fs.existsSync('/run/linux-vhost-vm-kernel/lib/modules') ? '/run/linux-vhost-vm-kernel' : undefined;
    const boot = ng.buildInitramfs({ kernelDir });
    let onServer: (line: string, peer: number) => void = () => {};
    server = vsock.createServer((conn) => {
      onServer('', conn.remoteAddress?.cid ?? -1);
      let buf = '';
      conn.setEncoding('utf8');
      conn.on('data', (d: string) => {
        buf += d;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const req = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          onServer(req, -1);
          conn.write(`ans ${req.split(' ')[1]} from host\n`);
        }
      });
      conn.on('error', () => {});
    });
    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen({ port: VSOCK_HOST_PORT }, resolve);
    });

    for (let n = 1; n <= GUEST_RUNS; n++) {
      const net = prepareNetForVmm({ tapName: 'nested%d', queuePairs: 2, mtu: MTU });
      const vs = prepareVsockForVmm({ cid: 'auto' });
      const o: Observed = { tapName: net.tap.name, guestCid: vs.cid };
      let guest: Guest | undefined;
      let sink: Sink | undefined;
      let again = false;
      try {
        sink = await ng.startSink('0.0.0.0', SINK_PORT);
        execFileSync('ip', ['addr', 'add', `${HOST_IP}/24`, 'dev', o.tapName]);
        const handoff = qemuArgs({ net, vsock: vs });
        guest = ng.bootGuest({
          ...boot,
          script: GUEST_SCRIPT,
          files: { 'agent.py': AGENT_PY, 'send.py': ng.SEND_PY },
          qemuArgs: handoff.args,
          smp: 2,
          mem: 256,
          spawn: (cmd: string, args: string[], opts: { stdio: ['ignore', 'pipe', 'pipe'] }) => spawnVmm(cmd, args, handoff, opts),
        });
        // QEMU holds its own copies now: the tap lives exactly as long as QEMU.
        net.close();
        vs.close();
        times.push(`run ${n}`);
        await runGuest(o, guest, sink, (fn) => (onServer = fn));
        observed = o;
        stoppedBy = undefined;
      } catch (err) {
        observed = o;
        stoppedBy = err;
        again = guestTrouble(err) && n < GUEST_RUNS;
        if (again) process.stdout.write(`nested guest run ${n} stopped answering (${(err as Error).message.split('\n')[0]}): ${guest?.why() ?? ''}\nrunning it again in a fresh guest\n`);
      } finally {
        sink?.stop();
        net.close();
        vs.close();
        onServer = () => {};
      }
      try {
        await guest?.stop();
      } catch (err) {
        // QEMU survived SIGKILL: this VM's kernel is stuck with it, and a fresh guest here would
        // only hang too. Say so to scripts/test.js, which may boot a fresh test VM.
        const before = stoppedBy ? `${(stoppedBy as Error).message.split('\n')[0]}; then ` : '';
        stoppedBy = new Error(`nested guest run ${n}: ${before}${(err as Error).message}`);
        process.stdout.write(`${(stoppedBy as Error).message}\n`);
        vmBroken((stoppedBy as Error).message);
        return;
      }
      if (!again) break;
    }
    // Every run stopped answering (none gave a wrong answer): this VM's nested KVM is not
    // keeping guests alive; scripts/test.js may try a fresh test VM.
    if (guestTrouble(stoppedBy)) vmBroken(`all ${GUEST_RUNS} nested guest runs stopped answering, the last: ${(stoppedBy as Error).message.split('\n')[0]}`);
  }, GUEST_RUNS * 4 * MINUTE);

  afterAll(() => {
    server?.close();
    process.stdout.write(`nested guest timings: ${times.join(', ')}\n`);
  });

  /** The observed step `key`, or the reason the run stopped before it. */
  function seen<K extends keyof Observed>(key: K): NonNullable<Observed[K]> {
    const value = observed?.[key];
    if (value === undefined) throw stoppedBy ?? new Error(`the guest run did not get to ${String(key)}`);
    return value;
  }

  test("eth0's MTU is the host's 9000, offered through host_mtu (VIRTIO_NET_F_MTU), not set by the guest", () => {
    const m = seen('mtu');
    expect(m.mtu).toBe(MTU);
    expect(m.features[3]).toBe('1'); // feature bit 3 negotiated: the MTU came from the device
    expect(m.tapMtu).toBe(String(MTU));
    expect(m.up).toBe(MTU);
  });

  test('two queue pairs and two vCPUs in the guest', () => {
    expect(seen('queues')).toEqual([2, 2, 2]);
  });

  test('the guest pings the host tap address and the host pings the guest', () => {
    const p = seen('ping');
    expect(p.guest).toBe('ok 3');
    expect(p.host).toMatch(/3 packets transmitted, 3 packets received/);
  });

  test('vsock: the guest agent talks to a host AF_VSOCK server, the host connects back to a guest listener', () => {
    const v = seen('vsock');
    const cid = observed!.guestCid;
    expect(v.local).toBe(cid);
    expect(v.listening).toBe(VSOCK_GUEST_PORT);
    expect(v.reply).toBe('guest got: hello from the host\n');
    expect(v.accepted).toEqual(['2', 'hello from the host']); // the host is CID 2 to the guest
    expect(v.replies).toEqual(['ans 0 from host', 'ans 1 from host', 'ans 2 from host']);
    expect(v.serverLines).toEqual(['req 0', 'req 1', 'req 2']);
    expect(v.serverPeers).toEqual([cid]);
    expect(v.failedLines).toBe(false);
  });

  test('flows from both guest CPUs use both queue pairs (per-virtqueue interrupts all rise)', () => {
    const f = seen('flows');
    expect(f.done).toBe('0 0');
    expect(f.bytes).toEqual([FLOW_BYTES, FLOW_BYTES]);
    for (const q of ['input.0', 'input.1', 'output.0', 'output.1']) expect(f.delta[q]).toBeGreaterThan(0);
  });

  test('a ≥ 200 MB guest→host transfer rides the kernel datapath: this process uses ≤ 1% CPU of its wall time', () => {
    const { transfers } = seen('bulk');
    expect(transfers.length).toBeGreaterThan(0); // not every attempt stalled
    for (const t of transfers) {
      expect(t.bytes).toBe(t.sent);
      expect(t.bytes).toBeGreaterThanOrEqual(BULK_BYTES);
    }
    expect(Math.min(...transfers.map((t) => t.share))).toBeLessThanOrEqual(1);
  });

  test('the guest script ends cleanly, QEMU powers off and the tap goes with it', () => {
    const e = seen('end');
    expect(e.status).toBe(0);
    expect(e.code).toBe(0);
    expect(e.tapGone).toBe(true);
  });
});
