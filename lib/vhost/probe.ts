// `linux-vhost probe`: what this host offers for vhost, and how to fix what is
// missing. Reads device nodes, sysfs and procfs, opens the vhost devices just
// long enough to read their feature bits, and never creates a link.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describeFeatures } from '../core/features';
import type { NativeBinding } from '../core/native';
import type * as tapModule from '../netdev/tap';

/** A device node and what this process may do with it. */
export interface DeviceProbe {
  path: string;
  present: boolean;
  /** A character device (false for a regular file or anything else at that path). */
  charDevice: boolean;
  readable: boolean;
  writable: boolean;
  /** Why open() failed ('EACCES: ...'), when it was tried and failed. */
  openError?: string;
}

/** A vhost device (/dev/vhost-net, /dev/vhost-vsock) and the features it offers. */
export interface VhostDeviceProbe extends DeviceProbe {
  /** VHOST_GET_FEATURES, when the device could be opened. */
  features?: bigint;
  featureNames?: string[];
  /** VHOST_GET_BACKEND_FEATURES. */
  backendFeatures?: bigint;
  backendFeatureNames?: string[];
}

/** /dev/net/tun and the IFF_* flags TUNGETFEATURES reports. */
export interface TunDeviceProbe extends DeviceProbe {
  features?: number;
  featureNames?: string[];
}

/** A kernel module's state: loaded, built into the kernel, installed but not loaded, or not installed. */
export type ModuleState = 'loaded' | 'builtin' | 'available' | 'missing';

/** Something that keeps part of linux-vhost from working, and the command that fixes it. */
export interface ProbeProblem {
  /** 'error': vhost-net use is blocked; 'warning': a feature is unavailable; 'note': optional. */
  level: 'error' | 'warning' | 'note';
  what: string;
  fix: string;
}

/** What probe() found: each device node, the vhost modules, and the problems with a hint each. */
export interface ProbeReport {
  kernel: { release: string; version: string; arch: string };
  process: { uid: number; capNetAdmin: boolean; inTestVm: boolean };
  /** The native addon loaded (needed to read features). */
  addon: { loaded: boolean; error?: string };
  devices: {
    vhostNet: VhostDeviceProbe;
    vhostVsock: VhostDeviceProbe;
    tun: TunDeviceProbe;
    kvm: DeviceProbe;
  };
  /** /sys/module/vhost/parameters/*, when the vhost module is present. */
  vhostParams: { maxMemRegions?: number; maxIotlbEntries?: number };
  modules: Record<'vhost' | 'vhost_net' | 'vhost_vsock' | 'tun' | 'kvm', ModuleState>;
  problems: ProbeProblem[];
  /** vhost-net and taps are usable by this process. */
  ok: boolean;
}

const VM_HINT = 'npx linux-vhost vm -- npx linux-vhost probe';
const CAP_NET_ADMIN = 12;
const O_NONBLOCK = 0o4000;

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function probeNode(p: string): DeviceProbe {
  const probe: DeviceProbe = { path: p, present: false, charDevice: false, readable: false, writable: false };
  try {
    probe.charDevice = fs.statSync(p).isCharacterDevice();
    probe.present = true;
  } catch {
    return probe;
  }
  const can = (mode: number): boolean => {
    try {
      fs.accessSync(p, mode);
      return true;
    } catch {
      return false;
    }
  };
  probe.readable = can(fs.constants.R_OK);
  probe.writable = can(fs.constants.W_OK);
  return probe;
}

function loadNative(): { native?: NativeBinding; error?: string } {
  try {
    // Loaded lazily so the rest of the probe works when the addon is not built.
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return { native: (require('../core/native') as { native: NativeBinding }).native };
  } catch (err) {
    return { error: errorText(err) };
  }
}

/** Names of the set bits, from a table of flag values; unknown bits as hex. */
function bitNames(bits: number, table: Record<string, number>): string[] {
  const names: string[] = [];
  let rest = bits;
  for (const [name, value] of Object.entries(table)) {
    if ((bits & value) === value && value !== 0) {
      names.push(name);
      rest &= ~value;
    }
  }
  if (rest !== 0) names.push(`0x${rest.toString(16)}`);
  return names;
}

function probeVhost(p: string, kind: 'net' | 'vsock', native: NativeBinding | undefined): VhostDeviceProbe {
  const probe: VhostDeviceProbe = probeNode(p);
  if (!probe.present || !native) return probe;
  try {
    const fd = native.openPath(p, O_NONBLOCK);
    try {
      // Both GETs work before SET_OWNER: no vhost worker is created.
      probe.features = native.vhostGetFeatures(fd);
      probe.featureNames = describeFeatures(probe.features, kind);
      probe.backendFeatures = native.vhostGetBackendFeatures(fd);
      probe.backendFeatureNames = describeFeatures(probe.backendFeatures, 'backend');
    } finally {
      fd.close();
    }
  } catch (err) {
    probe.openError = errorText(err);
  }
  return probe;
}

function probeTun(native: NativeBinding | undefined): TunDeviceProbe {
  const probe: TunDeviceProbe = probeNode('/dev/net/tun');
  if (!probe.present || !native) return probe;
  try {
    // TUNGETFEATURES answers on a fresh fd before TUNSETIFF: no link is created.
    const fd = native.openPath(probe.path, O_NONBLOCK);
    try {
      probe.features = native.tapGetFeatures(fd);
      // lib/tap loads the addon, which is known to load by now.
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      const { tunFlags } = require('../netdev/tap') as typeof tapModule;
      probe.featureNames = bitNames(probe.features, tunFlags);
    } finally {
      fd.close();
    }
  } catch (err) {
    probe.openError = errorText(err);
  }
  return probe;
}

function readNumber(file: string): number | undefined {
  try {
    const n = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/**
 * Where each module stands. A module that is neither in /proc/modules nor in
 * the module lists may still be built in (not every built-in module shows in
 * /sys/module), so a present device node counts as built in.
 */
function probeModules(release: string, devicePresent: Record<keyof ProbeReport['modules'], boolean>): ProbeReport['modules'] {
  const loaded = new Set(readText('/proc/modules').split('\n').map((l) => l.split(' ')[0]));
  const dir = path.join('/lib/modules', release);
  const builtin = readText(path.join(dir, 'modules.builtin'));
  const available = readText(path.join(dir, 'modules.dep'));
  const state = (name: keyof ProbeReport['modules']): ModuleState => {
    if (loaded.has(name)) return 'loaded';
    const file = new RegExp(`/${name}\\.ko\\b`);
    if (file.test(builtin)) return 'builtin';
    if (file.test(available)) return 'available';
    return devicePresent[name] || fs.existsSync(path.join('/sys/module', name)) ? 'builtin' : 'missing';
  };
  return { vhost: state('vhost'), vhost_net: state('vhost_net'), vhost_vsock: state('vhost_vsock'), tun: state('tun'), kvm: state('kvm') };
}

function capNetAdmin(): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)/m.exec(readText('/proc/self/status'));
  return m !== null && (BigInt(`0x${m[1]}`) & (1n << BigInt(CAP_NET_ADMIN))) !== 0n;
}

function moduleFix(module: string, state: ModuleState): string {
  return state === 'missing'
    ? `this kernel ships no ${module} module: boot a kernel built with it, or use the test VM (linux-vhost vm)`
    : `modprobe ${module}`;
}

function accessFix(p: string): string {
  const dev = path.basename(p);
  return `run as root, or add a udev rule (KERNEL=="${dev}", GROUP="kvm", MODE="0660") and add your user to that group`;
}

function deviceProblems(dev: DeviceProbe, module: string, state: ModuleState, level: ProbeProblem['level'], purpose: string): ProbeProblem[] {
  if (!dev.present) return [{ level, what: `${dev.path} is missing (${purpose})`, fix: moduleFix(module, state) }];
  if (!dev.readable || !dev.writable) return [{ level, what: `${dev.path} is not readable and writable by uid ${process.getuid?.()}`, fix: accessFix(dev.path) }];
  if (dev.openError) return [{ level, what: `${dev.path} could not be opened: ${dev.openError}`, fix: accessFix(dev.path) }];
  return [];
}

/** The problems a report shows, each with its fix (exported for tests). */
export function findProblems(r: Omit<ProbeReport, 'problems' | 'ok'>): ProbeProblem[] {
  const problems: ProbeProblem[] = [];
  if (!r.addon.loaded)
    problems.push({ level: 'error', what: `the native addon did not load: ${r.addon.error}`, fix: 'npm rebuild linux-vhost (needs a C++ toolchain and python3)' });
  problems.push(...deviceProblems(r.devices.vhostNet, 'vhost_net', r.modules.vhost_net, 'error', 'vhost-net'));
  problems.push(...deviceProblems(r.devices.tun, 'tun', r.modules.tun, 'error', 'taps'));
  if (!r.process.capNetAdmin)
    problems.push({ level: 'error', what: 'this process lacks CAP_NET_ADMIN, which creating and configuring taps needs', fix: 'run as root (sudo), or have an admin create the tap for you: ip tuntap add dev vm0 mode tap vnet_hdr user $USER' });
  problems.push(...deviceProblems(r.devices.vhostVsock, 'vhost_vsock', r.modules.vhost_vsock, 'warning', 'vhost-vsock'));
  problems.push(...deviceProblems(r.devices.kvm, r.kernel.arch === 'x64' ? 'kvm_intel or kvm_amd' : 'kvm', r.modules.kvm, 'note', 'only needed to run VMs with KVM'));
  if (!r.devices.vhostNet.present && !r.process.inTestVm)
    problems.push({ level: 'note', what: 'this host has no vhost-net', fix: `see it all working inside the test VM: ${VM_HINT}` });
  return problems;
}

/** Probes this host for vhost-net, vhost-vsock, tun and KVM. Opens no link and changes nothing. */
export function probe(): ProbeReport {
  const release = os.release();
  const { native, error } = loadNative();
  const devices: ProbeReport['devices'] = {
    vhostNet: probeVhost('/dev/vhost-net', 'net', native),
    vhostVsock: probeVhost('/dev/vhost-vsock', 'vsock', native),
    tun: probeTun(native),
    kvm: probeNode('/dev/kvm'),
  };
  const report: Omit<ProbeReport, 'problems' | 'ok'> = {
    kernel: { release, version: os.version(), arch: os.arch() },
    process: { uid: process.getuid?.() ?? -1, capNetAdmin: capNetAdmin(), inTestVm: process.env.LINUX_VHOST_IN_VM === '1' },
    addon: native ? { loaded: true } : { loaded: false, error },
    devices,
    vhostParams: {
      maxMemRegions: readNumber('/sys/module/vhost/parameters/max_mem_regions'),
      maxIotlbEntries: readNumber('/sys/module/vhost/parameters/max_iotlb_entries'),
    },
    modules: probeModules(release, {
      vhost: devices.vhostNet.present || devices.vhostVsock.present,
      vhost_net: devices.vhostNet.present,
      vhost_vsock: devices.vhostVsock.present,
      tun: devices.tun.present,
      kvm: devices.kvm.present,
    }),
  };
  const problems = findProblems(report);
  return { ...report, problems, ok: !problems.some((p) => p.level === 'error') };
}

/** JSON for machines: bigints become '0x…' strings. */
export function probeToJson(report: ProbeReport): string {
  return JSON.stringify(report, (_key, value: unknown) => (typeof value === 'bigint' ? `0x${value.toString(16)}` : value), 2);
}

function hex(v: bigint | number): string {
  return `0x${v.toString(16)}`;
}

function formatDevice(label: string, d: DeviceProbe): string {
  if (!d.present) return `${label.padEnd(18)}${d.path}: missing`;
  const access = d.readable && d.writable ? 'read/write' : d.readable ? 'read only' : d.writable ? 'write only' : 'no access';
  const kind = d.charDevice ? '' : ' (not a character device)';
  return `${label.padEnd(18)}${d.path}: present, ${access}${kind}${d.openError ? `, open failed: ${d.openError}` : ''}`;
}

function formatFeatures(label: string, bits: bigint | number | undefined, names: string[] | undefined): string[] {
  if (bits === undefined) return [];
  return [`  ${label} ${hex(bits)}${names && names.length ? `: ${names.join(' ')}` : ''}`];
}

/** The report for humans: one line per fact, problems with their fixes last. */
export function formatProbe(r: ProbeReport): string {
  const lines: string[] = [];
  lines.push(`kernel            ${r.kernel.release} (${r.kernel.arch})${r.process.inTestVm ? ' [test VM]' : ''}`);
  lines.push(`process           uid ${r.process.uid}, CAP_NET_ADMIN ${r.process.capNetAdmin ? 'yes' : 'no'}`);
  lines.push(`native addon      ${r.addon.loaded ? 'loaded' : `not loaded: ${r.addon.error}`}`);
  lines.push(formatDevice('vhost-net', r.devices.vhostNet));
  lines.push(...formatFeatures('features        ', r.devices.vhostNet.features, r.devices.vhostNet.featureNames));
  lines.push(...formatFeatures('backend features', r.devices.vhostNet.backendFeatures, r.devices.vhostNet.backendFeatureNames));
  lines.push(formatDevice('vhost-vsock', r.devices.vhostVsock));
  lines.push(...formatFeatures('features        ', r.devices.vhostVsock.features, r.devices.vhostVsock.featureNames));
  lines.push(...formatFeatures('backend features', r.devices.vhostVsock.backendFeatures, r.devices.vhostVsock.backendFeatureNames));
  lines.push(formatDevice('tun', r.devices.tun));
  lines.push(...formatFeatures('features        ', r.devices.tun.features, r.devices.tun.featureNames));
  lines.push(formatDevice('kvm', r.devices.kvm));
  const param = (v: number | undefined): string => (v === undefined ? 'unknown (vhost module not loaded)' : String(v));
  lines.push(`max_mem_regions   ${param(r.vhostParams.maxMemRegions)}`);
  lines.push(`max_iotlb_entries ${param(r.vhostParams.maxIotlbEntries)}`);
  lines.push(`modules           ${Object.entries(r.modules).map(([m, s]) => `${m} ${s}`).join(', ')}`);
  lines.push('');
  if (r.problems.length === 0) {
    lines.push('ok: vhost-net, vhost-vsock and taps are usable by this process');
  } else {
    lines.push(r.ok ? 'ok: vhost-net and taps are usable; some extras are not:' : 'not usable yet:');
    for (const p of r.problems) lines.push(`  ${p.level.padEnd(7)} ${p.what}\n          fix: ${p.fix}`);
  }
  return lines.join('\n') + '\n';
}
