// `linux-vhost probe` on a host with the real devices (the test VM): it finds
// every device, reads the feature bits the kernel offers and the vhost module
// parameters, and the bin's --json output parses.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../../lib/core/native';
import { probe, type ProbeReport } from '../../../lib/vhost/probe';
import { describeKernel } from '../../support/helpers';

const root = path.resolve(__dirname, '../../..');
const bin = path.join(root, 'dist', 'cli', 'main.js');

const VIRTIO_NET_F_MRG_RXBUF = 1n << 15n;
const VHOST_NET_F_VIRTIO_NET_HDR = 1n << 27n;
const VIRTIO_F_VERSION_1 = 1n << 32n;
const VHOST_BACKEND_F_IOTLB_MSG_V2 = 1n << 1n;

function readFeatures(devPath: string): { features: bigint; backend: bigint } {
  const fd = native.openPath(devPath);
  try {
    return { features: native.vhostGetFeatures(fd), backend: native.vhostGetBackendFeatures(fd) };
  } finally {
    fd.close();
  }
}

function runBin(wrap: string[], ...args: string[]): { status: number | null; stdout: string; stderr: string } {
  if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: run npm run build:ts first`);
  const argv = [...wrap, process.execPath, bin, ...args];
  const res = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', cwd: root });
  return { status: res.status, stdout: res.stdout, stderr: res.stderr };
}

describeKernel('probe (real devices)', ['/dev/vhost-net', '/dev/vhost-vsock', '/dev/net/tun'], () => {
  let report: ProbeReport;
  beforeAll(() => {
    report = probe();
  });

  test('finds vhost-net, vhost-vsock and tun present and usable, with no error-level problem', () => {
    for (const dev of [report.devices.vhostNet, report.devices.vhostVsock, report.devices.tun]) {
      expect(dev).toMatchObject({ present: true, charDevice: true, readable: true, writable: true });
      expect(dev.openError).toBeUndefined();
    }
    expect(report.devices.kvm.present).toBe(fs.existsSync('/dev/kvm'));
    expect(report.problems.filter((p) => p.level === 'error')).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.process.capNetAdmin).toBe(true);
    expect(report.kernel.release).toBe(os.release());
  });

  test('vhost-net features are what the device offers, with the bits vhost-net always has, decoded', () => {
    const { features, backend } = readFeatures('/dev/vhost-net');
    expect(report.devices.vhostNet.features).toBe(features);
    expect(report.devices.vhostNet.backendFeatures).toBe(backend);
    for (const bit of [VIRTIO_NET_F_MRG_RXBUF, VHOST_NET_F_VIRTIO_NET_HDR, VIRTIO_F_VERSION_1]) expect(features & bit).toBe(bit);
    expect(backend & VHOST_BACKEND_F_IOTLB_MSG_V2).toBe(VHOST_BACKEND_F_IOTLB_MSG_V2);
    // one name per set bit, device-specific bits named for vhost-net
    const setBits = features.toString(2).split('').filter((b) => b === '1').length;
    expect(report.devices.vhostNet.featureNames).toHaveLength(setBits);
    expect(report.devices.vhostNet.featureNames).toEqual(expect.arrayContaining(['VIRTIO_NET_F_MRG_RXBUF', 'VHOST_NET_F_VIRTIO_NET_HDR', 'VIRTIO_F_VERSION_1']));
    expect(report.devices.vhostNet.backendFeatureNames).toContain('VHOST_BACKEND_F_IOTLB_MSG_V2');
  });

  test('vhost-vsock features are what the device offers', () => {
    const { features, backend } = readFeatures('/dev/vhost-vsock');
    expect(report.devices.vhostVsock.features).toBe(features);
    expect(report.devices.vhostVsock.backendFeatures).toBe(backend);
    expect(features & VIRTIO_F_VERSION_1).toBe(VIRTIO_F_VERSION_1);
    expect(report.devices.vhostVsock.featureNames).toContain('VIRTIO_F_VERSION_1');
    expect(report.devices.vhostVsock.featureNames).not.toContain('VHOST_NET_F_VIRTIO_NET_HDR');
  });

  test('reads max_mem_regions (64 by default) and max_iotlb_entries from the vhost module', () => {
    const param = (n: string): number => Number(fs.readFileSync(`/sys/module/vhost/parameters/${n}`, 'utf8'));
    expect(report.vhostParams.maxMemRegions).toBe(param('max_mem_regions'));
    expect(report.vhostParams.maxMemRegions).toBe(64);
    expect(report.vhostParams.maxIotlbEntries).toBe(param('max_iotlb_entries'));
  });

  test('tun features come from TUNGETFEATURES on an unattached fd and are named', () => {
    expect(report.devices.tun.featureNames).toEqual(expect.arrayContaining(['IFF_TAP', 'IFF_NO_PI', 'IFF_VNET_HDR', 'IFF_MULTI_QUEUE']));
  });

  test('the vhost, vhost_net, vhost_vsock and tun modules are loaded', () => {
    for (const m of ['vhost', 'vhost_net', 'vhost_vsock', 'tun'] as const) expect(['loaded', 'builtin']).toContain(report.modules[m]);
  });

  test('probing leaves no fd open', () => {
    const count = (): number => fs.readdirSync('/proc/self/fd').length;
    const before = count();
    probe();
    expect(count()).toBe(before);
  });

  test('`linux-vhost probe --json` prints JSON with bigints as hex strings', () => {
    const r = runBin([], 'probe', '--json');
    expect(r.status).toBe(0);
    const json = JSON.parse(r.stdout) as Record<string, any>;
    expect(json.devices.vhostNet.features).toBe(`0x${readFeatures('/dev/vhost-net').features.toString(16)}`);
    expect(json.vhostParams.maxMemRegions).toBe(64);
    expect(json.ok).toBe(true);
  });

  test('`linux-vhost probe` prints the decoded report for humans', () => {
    const r = runBin([], 'probe');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/vhost-net\s+\/dev\/vhost-net: present, read\/write/);
    expect(r.stdout).toMatch(/max_mem_regions\s+64/);
    expect(r.stdout).toContain(`0x${readFeatures('/dev/vhost-net').features.toString(16)}: VIRTIO_NET_F_MRG_RXBUF`);
  });

  test('without CAP_NET_ADMIN the probe says taps are not usable and how to fix it', () => {
    const r = runBin(['setpriv', '--inh-caps=-net_admin', '--bounding-set=-net_admin'], 'probe', '--json');
    expect(r.status).toBe(0);
    const json = JSON.parse(r.stdout) as ProbeReport;
    expect(json.process.capNetAdmin).toBe(false);
    expect(json.ok).toBe(false);
    expect(json.problems).toContainEqual(expect.objectContaining({ level: 'error', what: expect.stringContaining('CAP_NET_ADMIN') }));
  });
});
