// The `linux-vhost` CLI: usage, exit codes, and the probe report's formatting.
// The built bin (dist/cli/main.js, made by `npm run build:ts`) is spawned the way a
// user runs it; the probe formatter is checked on fabricated reports.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { main } from '../../../lib/cli/main';
import { findProblems, formatProbe, probeToJson, type ProbeReport } from '../../../lib/vhost/probe';

const root = path.resolve(__dirname, '../../..');
const bin = path.join(root, 'dist', 'cli', 'main.js');

function runBin(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const res = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd: root });
  return { status: res.status, stdout: res.stdout, stderr: res.stderr };
}

describe('linux-vhost bin (dist/cli/main.js)', () => {
  beforeAll(() => {
    if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: run npm run build:ts first`);
    if (fs.statSync(bin).mtimeMs < fs.statSync(path.join(root, 'lib', 'cli', 'main.ts')).mtimeMs)
      throw new Error(`${bin} is older than lib/cli/main.ts: run npm run build:ts first`);
  });

  test('starts with a node shebang so npm can link it as a bin', () => {
    expect(fs.readFileSync(bin, 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');
  });

  test('help prints every command on stdout and exits 0', () => {
    const r = runBin('help');
    expect(r.status).toBe(0);
    for (const cmd of ['probe [--json]', 'vm [options] -- <command...>', 'help']) expect(r.stdout).toContain(cmd);
    expect(r.stderr).toBe('');
  });

  test('an unknown command prints usage on stderr and exits 2', () => {
    const r = runBin('frobnicate');
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain("unknown command 'frobnicate'");
    expect(r.stderr).toContain('usage: linux-vhost <command>');
  });

  test('no command prints usage on stderr and exits 2', () => {
    const r = runBin();
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('missing command');
  });

  test('probe rejects an unknown flag with exit 2', () => {
    const r = runBin('probe', '--jsn');
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("unknown argument '--jsn'");
  });

  test('vm without a command exits 2', () => {
    const r = runBin('vm');
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('vm: missing command');
  });

  test('vm hands its arguments to scripts/vm.sh and returns its exit status', () => {
    // An unknown vm.sh option stops it at its usage (exit 125) before anything boots.
    const r = runBin('vm', '--no-such-option', '--', 'true');
    expect(r.stderr).toContain('[vm] unknown option --no-such-option');
    expect(r.stderr).toContain('usage: scripts/vm.sh');
    expect(r.status).toBe(125);
  });

  test('probe --json prints one JSON document that matches this host', () => {
    const r = runBin('probe', '--json');
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout) as ProbeReport;
    expect(report.kernel.release).toBe(os.release());
    expect(report.devices.tun.present).toBe(fs.existsSync('/dev/net/tun'));
    expect(report.devices.vhostNet.present).toBe(fs.existsSync('/dev/vhost-net'));
    expect(report.devices.kvm.present).toBe(fs.existsSync('/dev/kvm'));
    expect(typeof report.ok).toBe('boolean');
    expect(Array.isArray(report.problems)).toBe(true);
  });
});

describe('main() dispatch', () => {
  let out: jest.SpyInstance;
  let err: jest.SpyInstance;
  beforeEach(() => {
    out = jest.spyOn(process.stdout, 'write').mockImplementation(() => true);
    err = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
  });
  afterEach(() => jest.restoreAllMocks());

  test('-h and --help are help', () => {
    expect(main(['-h'])).toBe(0);
    expect(main(['--help'])).toBe(0);
    expect(out).toHaveBeenCalledTimes(2);
    expect(err).not.toHaveBeenCalled();
  });

  test('names inherited from Object.prototype are not commands', () => {
    expect(main(['constructor'])).toBe(2);
    expect(main(['toString'])).toBe(2);
  });
});

function fabricatedReport(overrides: Partial<ProbeReport> = {}): ProbeReport {
  const present = { present: true, charDevice: true, readable: true, writable: true };
  return {
    kernel: { release: '6.1.0-56-amd64', version: '#1 SMP', arch: 'x64' },
    process: { uid: 0, capNetAdmin: true, inTestVm: true },
    addon: { loaded: true },
    devices: {
      vhostNet: { path: '/dev/vhost-net', ...present, features: 0x33d008000n, featureNames: ['VIRTIO_NET_F_MRG_RXBUF'], backendFeatures: 0x3n, backendFeatureNames: [] },
      vhostVsock: { path: '/dev/vhost-vsock', ...present, features: 0x33d000002n, backendFeatures: 0x3n },
      tun: { path: '/dev/net/tun', ...present, features: 0x7173, featureNames: ['IFF_TUN', 'IFF_TAP'] },
      kvm: { path: '/dev/kvm', ...present },
    },
    vhostParams: { maxMemRegions: 64, maxIotlbEntries: 2048 },
    modules: { vhost: 'loaded', vhost_net: 'loaded', vhost_vsock: 'loaded', tun: 'loaded', kvm: 'loaded' },
    problems: [],
    ok: true,
    ...overrides,
  };
}

describe('formatProbe', () => {
  test('shows features in hex with their names, the vhost parameters and the modules', () => {
    const text = formatProbe(fabricatedReport());
    expect(text).toContain('6.1.0-56-amd64 (x64) [test VM]');
    expect(text).toMatch(/vhost-net\s+\/dev\/vhost-net: present, read\/write/);
    expect(text).toMatch(/features\s+0x33d008000: VIRTIO_NET_F_MRG_RXBUF/);
    expect(text).toMatch(/features\s+0x33d000002/);
    expect(text).toMatch(/features\s+0x7173: IFF_TUN IFF_TAP/);
    expect(text).toMatch(/max_mem_regions\s+64/);
    expect(text).toMatch(/max_iotlb_entries\s+2048/);
    expect(text).toContain('vhost_net loaded');
    expect(text).toContain('ok: vhost-net, vhost-vsock and taps are usable');
  });

  test('lists each problem with its fix and says when vhost-net is not usable', () => {
    const vhostNet = { path: '/dev/vhost-net', present: false, charDevice: false, readable: false, writable: false };
    const text = formatProbe(
      fabricatedReport({
        devices: { ...fabricatedReport().devices, vhostNet },
        vhostParams: {},
        problems: [
          { level: 'error', what: '/dev/vhost-net is missing (vhost-net)', fix: 'modprobe vhost_net' },
          { level: 'note', what: 'this host has no vhost-net', fix: 'see it all working inside the test VM: npx linux-vhost vm -- npx linux-vhost probe' },
        ],
        ok: false,
      }),
    );
    expect(text).toContain('/dev/vhost-net: missing');
    expect(text).toContain('not usable yet:');
    expect(text).toMatch(/error\s+\/dev\/vhost-net is missing \(vhost-net\)\n\s+fix: modprobe vhost_net/);
    expect(text).toContain('npx linux-vhost vm -- npx linux-vhost probe');
    expect(text).toContain('max_mem_regions   unknown');
  });

  test('JSON turns bigints into hex strings and keeps everything else', () => {
    const json = JSON.parse(probeToJson(fabricatedReport())) as Record<string, any>;
    expect(json.devices.vhostNet.features).toBe('0x33d008000');
    expect(json.devices.vhostVsock.backendFeatures).toBe('0x3');
    expect(json.devices.tun.features).toBe(0x7173);
    expect(json.vhostParams.maxMemRegions).toBe(64);
  });
});

describe('probe problems and fixes', () => {
  const base = (): Omit<ProbeReport, 'problems' | 'ok'> => {
    const { problems: _p, ok: _o, ...rest } = fabricatedReport();
    return rest;
  };
  const missing = { present: false, charDevice: false, readable: false, writable: false };

  test('a fully equipped report has no problems', () => {
    expect(findProblems(base())).toEqual([]);
  });

  test('missing vhost-net on a host without the module points to the test VM', () => {
    const r = base();
    r.process.inTestVm = false;
    r.devices.vhostNet = { path: '/dev/vhost-net', ...missing };
    r.modules.vhost_net = 'missing';
    const problems = findProblems(r);
    expect(problems).toContainEqual(expect.objectContaining({ level: 'error', what: '/dev/vhost-net is missing (vhost-net)', fix: expect.stringContaining('test VM') }));
    expect(problems).toContainEqual(expect.objectContaining({ level: 'note', fix: expect.stringContaining('npx linux-vhost vm -- npx linux-vhost probe') }));
  });

  test('a module that exists but is not loaded gets modprobe', () => {
    const r = base();
    r.devices.vhostVsock = { path: '/dev/vhost-vsock', ...missing };
    r.modules.vhost_vsock = 'available';
    expect(findProblems(r)).toEqual([{ level: 'warning', what: '/dev/vhost-vsock is missing (vhost-vsock)', fix: 'modprobe vhost_vsock' }]);
  });

  test('a device without read/write access gets the root-or-udev fix', () => {
    const r = base();
    r.devices.vhostNet = { ...r.devices.vhostNet, writable: false };
    const [p] = findProblems(r);
    expect(p.level).toBe('error');
    expect(p.what).toContain('not readable and writable');
    expect(p.fix).toContain('KERNEL=="vhost-net"');
  });

  test('no CAP_NET_ADMIN is an error with a fix', () => {
    const r = base();
    r.process.capNetAdmin = false;
    expect(findProblems(r)).toEqual([expect.objectContaining({ level: 'error', what: expect.stringContaining('CAP_NET_ADMIN'), fix: expect.stringContaining('ip tuntap add') })]);
  });

  test('missing /dev/kvm is only a note', () => {
    const r = base();
    r.devices.kvm = { path: '/dev/kvm', ...missing };
    r.modules.kvm = 'available';
    expect(findProblems(r)).toEqual([expect.objectContaining({ level: 'note', fix: 'modprobe kvm_intel or kvm_amd' })]);
  });
});
