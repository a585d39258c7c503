// `linux-vhost demo` without the kernel: argument parsing and usage errors
// (exit 2, nothing set up and never the VM path), where it runs when the
// devices are missing, the ping summary parser on real iputils and busybox
// output, and the report's formatting.
import childProcess = require('node:child_process');
import fs = require('node:fs');
import * as path from 'node:path';
import { main } from '../../../lib/cli/main';
import { formatDemoReport, parseDemoArgs, parsePingSummary, type DemoReport } from '../../../lib/cli/demo';

describe('demo arguments', () => {
  test('defaults, --frames and --size (also as --flag=value)', () => {
    expect(parseDemoArgs([])).toEqual({ help: false });
    expect(parseDemoArgs(['--frames', '2000', '--size=64'])).toEqual({ help: false, frames: 2000, frameSize: 64 });
    expect(parseDemoArgs(['--frames=1'])).toEqual({ help: false, frames: 1 });
    expect(parseDemoArgs(['--size', '60', '--help'])).toEqual({ help: true });
  });

  test.each([
    [['--bogus'], "unknown argument '--bogus'"],
    [['extra'], "unknown argument 'extra'"],
    [['--frames'], '--frames needs a value'],
    [['--frames', '0'], '--frames: 0 is not in 1..'],
    [['--frames', '-5'], "--frames: '-5' is not a whole number"],
    [['--frames', '1e3'], "--frames: '1e3' is not a whole number"],
    [['--size', '59'], '--size: 59 is not in 60..1514'],
    [['--size=1515'], '--size: 1515 is not in 60..1514'],
  ])('%j is refused: %s', (args, message) => {
    const r = parseDemoArgs(args);
    expect(typeof r).toBe('string');
    expect(r).toContain(message);
  });
});

describe('main(["demo", ...]) usage paths', () => {
  let out: jest.SpyInstance;
  let err: jest.SpyInstance;
  beforeEach(() => {
    out = jest.spyOn(process.stdout, 'write').mockImplementation(() => true);
    err = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
  });
  afterEach(() => jest.restoreAllMocks());

  test('demo --help prints the demo usage on stdout and exits 0', () => {
    expect(main(['demo', '--help'])).toBe(0);
    expect(String(out.mock.calls[0][0])).toContain('usage: linux-vhost demo [--frames N] [--size BYTES]');
    expect(err).not.toHaveBeenCalled();
  });

  test('a bad option exits 2 with the reason on stderr, before any VM or device', () => {
    expect(main(['demo', '--frames', 'many'])).toBe(2);
    expect(String(err.mock.calls[0][0])).toContain("demo: --frames: 'many' is not a whole number");
    expect(err).toHaveBeenCalledTimes(1); // no 'running the demo inside the test VM' line
    expect(String(err.mock.calls[0][0])).not.toContain('running the demo inside');
    expect(out).not.toHaveBeenCalled();
  });

  test('help lists demo', () => {
    expect(main(['help'])).toBe(0);
    expect(String(out.mock.calls[0][0])).toContain('demo [--frames N] [--size BYTES]');
  });
});

describe('main(["demo", ...]) without the vhost devices', () => {
  const savedInVm = process.env.LINUX_VHOST_IN_VM;
  let err: jest.SpyInstance;
  beforeEach(() => {
    err = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    // This process sees no vhost device, whatever the machine has.
    const accessSync = fs.accessSync;
    jest.spyOn(fs, 'accessSync').mockImplementation((p, mode) => {
      if (String(p).startsWith('/dev/vhost-')) throw Object.assign(new Error(`ENOENT: no such file or directory, access '${p}'`), { code: 'ENOENT' });
      accessSync(p, mode);
    });
  });
  afterEach(() => {
    jest.restoreAllMocks();
    if (savedInVm === undefined) delete process.env.LINUX_VHOST_IN_VM;
    else process.env.LINUX_VHOST_IN_VM = savedInVm;
  });

  test('re-runs itself with its arguments inside the test VM and returns the VM\'s status', () => {
    delete process.env.LINUX_VHOST_IN_VM;
    const spawn = jest.spyOn(childProcess, 'spawnSync').mockReturnValue({ pid: 0, output: [], stdout: '', stderr: '', status: 3, signal: null });
    expect(main(['demo', '--frames', '5'])).toBe(3);
    expect(String(err.mock.calls[0][0])).toBe(
      'linux-vhost: demo: this host lacks root, /dev/vhost-net, /dev/vhost-vsock or /dev/net/tun: running the demo inside the test VM (scripts/vm.sh)\n',
    );
    const cli = path.resolve(__dirname, '../../../lib/cli/main.ts');
    expect(spawn).toHaveBeenCalledTimes(1);
    expect(spawn.mock.calls[0][0]).toBe('bash');
    expect(spawn.mock.calls[0][1]).toEqual([path.resolve(__dirname, '../../../scripts/vm.sh'), '--', process.execPath, cli, 'demo', '--frames', '5']);
    expect(fs.accessSync).toHaveBeenCalledWith('/dev/vhost-net', fs.constants.R_OK | fs.constants.W_OK);
  });

  test('inside the test VM it exits 1 and says what is missing, without re-running itself', () => {
    process.env.LINUX_VHOST_IN_VM = '1';
    const spawn = jest.spyOn(childProcess, 'spawnSync');
    expect(main(['demo'])).toBe(1);
    expect(err).toHaveBeenCalledWith('linux-vhost: demo: inside the test VM but not root or /dev/vhost-net, /dev/vhost-vsock or /dev/net/tun is missing\n');
    expect(spawn).not.toHaveBeenCalled();
  });
});

describe('parsePingSummary', () => {
  test('iputils ping', () => {
    const out = [
      'PING 10.77.7.2 (10.77.7.2) 56(84) bytes of data.',
      '64 bytes from 10.77.7.2: icmp_seq=1 ttl=64 time=0.512 ms',
      '',
      '--- 10.77.7.2 ping statistics ---',
      '5 packets transmitted, 4 received, 20% packet loss, time 4005ms',
      'rtt min/avg/max/mdev = 0.101/0.250/0.512/0.150 ms',
    ].join('\n');
    expect(parsePingSummary(out)).toEqual({ transmitted: 5, received: 4, rttMinMs: 0.101, rttAvgMs: 0.25, rttMaxMs: 0.512 });
  });

  test('busybox ping', () => {
    const out = [
      'PING 10.77.7.2 (10.77.7.2): 56 data bytes',
      '64 bytes from 10.77.7.2: seq=0 ttl=64 time=7.569 ms',
      '',
      '--- 10.77.7.2 ping statistics ---',
      '5 packets transmitted, 5 packets received, 0% packet loss',
      'round-trip min/avg/max = 7.569/24.644/63.796 ms',
    ].join('\n');
    expect(parsePingSummary(out)).toEqual({ transmitted: 5, received: 5, rttMinMs: 7.569, rttAvgMs: 24.644, rttMaxMs: 63.796 });
  });

  test('no replies: zero received and no RTT', () => {
    const out = '--- 10.77.7.2 ping statistics ---\n5 packets transmitted, 0 packets received, 100% packet loss\n';
    expect(parsePingSummary(out)).toEqual({ transmitted: 5, received: 0, rttMinMs: null, rttAvgMs: null, rttMaxMs: null });
  });
});

test('formatDemoReport shows the link, ping RTT, burst and vsock figures', () => {
  const report: DemoReport = {
    tap: 'lvdemo0',
    hostIp: '10.77.7.1',
    guestIp: '10.77.7.2',
    guestMac: '02:00:00:00:00:01',
    queueSize: 256,
    mergeableRx: true,
    ping: { command: 'ping -c 5 -W 2 10.77.7.2', transmitted: 5, received: 5, rttMinMs: 0.1, rttAvgMs: 0.2, rttMaxMs: 0.3 },
    burst: { frames: 20000, frameSize: 1514, arrived: 20000, seconds: 2, pps: 10000, gbps: 0.121 },
    host: { kernel: '6.1.0-56-amd64', inVm: true },
    guest: { txKicks: 100, kicksSuppressed: 50, txRingFull: 3, rxAnswered: 6 },
    vsock: {
      guestCid: 3,
      port: 5000,
      connectMs: 1.234,
      agentUptimeS: 0.5,
      agentStats: { rxPackets: 2285, txPackets: 1225, creditUpdatesSent: 221, creditStalls: 0, txRingFull: 0, connections: 1 },
      requests: 1000,
      requestSize: 64,
      seconds: 2,
      requestsPerSec: 500,
      p50Ms: 1.5,
      p99Ms: 4.25,
      bulk: { bytes: 8 << 20, seconds: 0.5, mbPerSec: 16.777216, sha256: 'ab'.repeat(32) },
    },
  };
  const text = formatDemoReport(report);
  expect(text).toContain('tap lvdemo0: host 10.77.7.1/24 <-> guest 10.77.7.2 (02:00:00:00:00:01)');
  expect(text).toContain('5/5 replies from the guest, RTT avg 0.200 ms (min 0.100, max 0.300)');
  expect(text).toContain('20,000 frames of 1514 B guest -> host: 20,000 arrived on the tap in 2.00 s');
  expect(text).toContain('10,000 frames/s, 0.121 Gbit/s');
  expect(text).toContain('inside the test VM');
  expect(text).toContain('agent in a userspace virtio-vsock guest, CID 3 port 5000; host AF_VSOCK socket connected in 1.23 ms');
  expect(text).toContain('1,000 requests of 64 B answered in 2.00 s: 500 requests/s, latency p50 1.500 ms, p99 4.250 ms');
  expect(text).toContain('8.0 MiB host -> guest in 0.50 s: 16.8 MB/s, SHA-256 checked by the agent (abababababababab…)');
  expect(text).toContain('uptime 0.500 s; guest 2,285 packets in, 1,225 out, 221 credit updates sent');
});
