// Devices handed to a running QEMU over QMP, as libvirt does it: each fd is
// sent over the monitor socket (SCM_RIGHTS) with `getfd` under a name, the
// netdev / device names it, and QEMU takes the fd out of its list of names.
//
// Why getfd and not add-fd: QEMU 7.2 resolves tap `fds=`/`vhostfds=` and
// vhost-vsock `vhostfd=` by monitor_fd_param, which only knows getfd names
// (or fd numbers); `fds=/dev/fdset/N` is refused ("File descriptor named
// '/dev/fdset/0' has not been found"). fd sets serve what QEMU opens by path
// (disks, files). Names are per monitor connection: the same Qmp must add them.
//
// The device properties are the ones qemuArgs() gives at spawn (handoff.ts
// builds both), so a hotplugged NIC looks to the guest like a spawned one.
import * as fs from 'node:fs';
import '../core/dispose';
import { checkInt, checkObject, describe } from '../core/check';
import { invalidArg, VhostError } from '../core/errors';
import { checkNetFds, tapNetdevProps, vhostVsockProps, virtioNetProps, type NetFds, type VsockFds } from './handoff';
import { QmpError, type Qmp } from './qmp';
import { VSOCK_CID_MAX, VSOCK_CID_MIN } from '../vhost/vsock';

/** Default bound on the guest's answer to device_del. */
export const UNPLUG_DEFAULT_TIMEOUT_MS = 30_000;
const QEMU_ID = /^[A-Za-z][A-Za-z0-9_.-]{0,100}$/;

/** Options of hotplugNet(). */
export interface HotplugNetOptions {
  /** QEMU id of the netdev; the device is `<id>-dev`, the fds `<id>-tap<i>` / `<id>-vhost<i>`. */
  id: string;
  /** The guest MAC; default the prepared one, if any (else QEMU picks one). */
  mac?: string;
  /** MTU offered to the guest (host_mtu); default the prepared one. */
  mtu?: number;
  /** Queue pairs; must match the fds given (it is a check, not a choice). */
  queuePairs?: number;
  /** The bus to plug into: a free `pcie-root-port` on q35 (e.g. 'rp1'); default QEMU's choice. */
  bus?: string;
}

/** What hotplugNet() added: pass it (or its id) to unplugNet(). */
export interface PluggedNet {
  /** The netdev's id. */
  readonly id: string;
  /** The virtio-net-pci device's id. */
  readonly device: string;
  /** Queue pairs. */
  readonly queuePairs: number;
  /** True when vhost-net fds were passed (vhost=on). */
  readonly vhost: boolean;
}

/** Options of hotplugVsock(). */
export interface HotplugVsockOptions {
  /** QEMU id of the vhost-vsock-pci device; its fd is `<id>-vhost`. */
  id: string;
  /** The bus to plug into (a free `pcie-root-port` on q35). */
  bus?: string;
}

/** What hotplugVsock() added. */
export interface PluggedVsock {
  readonly device: string;
  readonly cid: number;
}

/** Options of unplugNet() / unplugVsock(). */
export interface UnplugOptions {
  /** Bound (ms) on the guest releasing the device (DEVICE_DELETED); default UNPLUG_DEFAULT_TIMEOUT_MS. */
  timeoutMs?: number;
}

function checkId(value: unknown, arg: string): string {
  if (typeof value !== 'string' || !QEMU_ID.test(value)) throw invalidArg(arg, `must be a QEMU id (a letter, then letters, digits, _ . -), got ${describe(value)}`);
  return value;
}

// Misc character devices (major 10) by their fixed minors (include/linux/miscdevice.h).
const TUN = { minor: 200, node: '/dev/net/tun' };
const VHOST_NET = { minor: 238, node: '/dev/vhost-net' };
const VHOST_VSOCK = { minor: 241, node: '/dev/vhost-vsock' };

/**
 * The fd must be open on `dev`: QEMU 7.2 aborts (net_client_init1: Assertion
 * `nc' failed) when netdev_add gets a vhostfd that is no vhost-net, so a
 * wrong fd is refused here, before QEMU sees it.
 */
function checkDeviceFd(fd: number, arg: string, dev: { minor: number; node: string }): void {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(fd);
  } catch {
    throw invalidArg(arg, `is not an open fd (${fd})`);
  }
  const rdev = Number(st.rdev);
  // Linux's dev_t: major in bits 8..19, minor in bits 0..7 and 20..31.
  const major = (rdev >>> 8) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  if (!st.isCharacterDevice() || major !== 10 || minor !== dev.minor) throw invalidArg(arg, `must be an fd open on ${dev.node} (fd ${fd} is not)`);
}

function checkBus(value: unknown): string | undefined {
  return value === undefined ? undefined : checkId(value, 'options.bus');
}

/** Runs the undo steps in reverse order, each on its own: the caller needs the first error, not an undo's. */
async function undo(steps: Array<() => Promise<unknown>>): Promise<void> {
  for (const step of steps.reverse()) {
    try {
      await step();
    } catch {
      // best effort (the monitor may be gone; QEMU may have consumed the name already)
    }
  }
}

/** getfd under `name`; the returned undo closes QEMU's copy if no netdev/device took it (closefd then answers "not found", ignored). */
async function passFd(qmp: Qmp, fd: number, name: string, undoSteps: Array<() => Promise<unknown>>): Promise<void> {
  await qmp.execute('getfd', { fdname: name }, { fds: [fd] });
  undoSteps.push(() => qmp.execute('closefd', { fdname: name }));
}

/**
 * device_add; when it fails without QEMU's word on it (no answer in time, the
 * monitor gone) the device may exist anyway, so the undo asks to delete it.
 */
async function addDevice(qmp: Qmp, args: Record<string, unknown>, device: string, undoSteps: Array<() => Promise<unknown>>): Promise<void> {
  try {
    await qmp.execute('device_add', args);
  } catch (err) {
    if (!(err instanceof QmpError)) undoSteps.push(() => qmp.execute('device_del', { id: device }));
    throw err;
  }
}

/**
 * Hot-plugs a virtio-net NIC into a running QEMU: passes each tap queue fd and
 * vhost-net fd with `getfd`, adds `netdev_add tap,fds=…,vhost=on,vhostfds=…`
 * (vhost=off when no vhost fds are given: QEMU's own datapath), then
 * `device_add virtio-net-pci` with the properties qemuArgs() uses (mq and
 * vectors = 2N+2 above one queue pair, host_mtu, mac) on `bus`. On any
 * failure it removes what it added (device_del, netdev_del, closefd) and
 * rethrows the first error. Each fd must be open on /dev/net/tun or
 * /dev/vhost-net (checked: QEMU 7.2 aborts on a vhostfd of another kind). `prepared` (a NetHandoff fits) stays the caller's:
 * close it once plugged unless this process needs the tap.
 */
export async function hotplugNet(qmp: Qmp, prepared: NetFds, options: HotplugNetOptions): Promise<PluggedNet> {
  checkObject(prepared, 'prepared');
  checkObject(options, 'options');
  const id = checkId(options.id, 'options.id');
  const bus = checkBus(options.bus);
  // Read field by field: a NetHandoff's tapFds/vhostFds are getters, which a spread would not copy.
  const fields: NetFds = { id, tapFds: prepared.tapFds, vhostFds: prepared.vhostFds, mac: options.mac ?? prepared.mac, mtu: options.mtu ?? prepared.mtu };
  const net = checkNetFds(fields, 'prepared', id);
  const pairs = net.tapFds.length;
  if (options.queuePairs !== undefined && checkInt(options.queuePairs, 'options.queuePairs', 1, 256) !== pairs) {
    throw invalidArg('options.queuePairs', `must match the ${pairs} tap fd(s) prepared, got ${options.queuePairs}`);
  }
  if (net.vhostFds.length !== 0 && net.vhostFds.length !== pairs) {
    throw invalidArg('prepared.vhostFds', `must hold one fd per tap fd (${pairs}) or none (vhost=off), got ${net.vhostFds.length}`);
  }
  net.tapFds.forEach((fd, i) => checkDeviceFd(fd, `prepared.tapFds[${i}]`, TUN));
  net.vhostFds.forEach((fd, i) => checkDeviceFd(fd, `prepared.vhostFds[${i}]`, VHOST_NET));
  const undoSteps: Array<() => Promise<unknown>> = [];
  try {
    const tapNames = net.tapFds.map((_, i) => `${id}-tap${i}`);
    const vhostNames = net.vhostFds.map((_, i) => `${id}-vhost${i}`);
    for (const [i, fd] of net.tapFds.entries()) await passFd(qmp, fd, tapNames[i], undoSteps);
    for (const [i, fd] of net.vhostFds.entries()) await passFd(qmp, fd, vhostNames[i], undoSteps);
    await qmp.execute('netdev_add', { type: 'tap', ...tapNetdevProps(id, tapNames, vhostNames) });
    undoSteps.push(() => qmp.execute('netdev_del', { id }));
    const device = `${id}-dev`;
    await addDevice(qmp, { driver: 'virtio-net-pci', ...virtioNetProps(net), ...(bus ? { bus } : {}) }, device, undoSteps);
    return { id, device, queuePairs: pairs, vhost: net.vhostFds.length > 0 };
  } catch (err) {
    if (!qmp.closed) await undo(undoSteps);
    throw err;
  }
}

/**
 * Asks the guest to release `device` (device_del) and waits for QEMU's
 * DEVICE_DELETED. A device already gone (DeviceNotFound) counts as released;
 * a second call while an unplug is pending just waits again.
 */
async function deleteDevice(qmp: Qmp, device: string, timeoutMs: number): Promise<void> {
  const deleted = qmp.waitForEvent('DEVICE_DELETED', (d) => d.device === device, timeoutMs);
  deleted.catch(() => {}); // awaited below, or abandoned when the device is already gone
  try {
    await qmp.execute('device_del', { id: device });
  } catch (err) {
    if (err instanceof QmpError && err.qmpClass === 'DeviceNotFound') return;
    if (!(err instanceof QmpError && /already in the process of unplug/.test(err.desc))) throw err;
  }
  try {
    await deleted;
  } catch (err) {
    if ((err as VhostError).code !== 'ETIMEDOUT') throw err;
    throw new VhostError(
      `ETIMEDOUT: the guest did not release device '${device}' within ${timeoutMs} ms (no DEVICE_DELETED after device_del) '${qmp.path}'`,
      {
        code: 'ETIMEDOUT', syscall: 'qmp(device_del)', path: qmp.path,
        hint: 'hot-unplug needs the guest to answer: a booted kernel with PCIe/ACPI hotplug (pciehp or acpiphp); the device stays until it does (call again to keep waiting)',
      },
    );
  }
}

/**
 * Unplugs a NIC hotplugNet() added: device_del, waits (bounded) for the
 * guest to release it (DEVICE_DELETED), then netdev_del, which closes
 * QEMU's tap and vhost fds. When the guest never answers it fails ETIMEDOUT
 * naming the device and leaves the netdev in place (the device still uses it).
 */
export async function unplugNet(qmp: Qmp, plugged: PluggedNet | string, options: UnplugOptions = {}): Promise<void> {
  const id = checkId(typeof plugged === 'string' ? plugged : (plugged as PluggedNet | null)?.id, 'plugged');
  checkObject(options, 'options');
  const timeoutMs = checkInt(options.timeoutMs ?? UNPLUG_DEFAULT_TIMEOUT_MS, 'options.timeoutMs', 1, 0x7fff_ffff);
  await deleteDevice(qmp, `${id}-dev`, timeoutMs);
  await qmp.execute('netdev_del', { id });
}

/**
 * Hot-plugs a vhost-vsock-pci device for a prepared /dev/vhost-vsock (its CID
 * set; a VsockHandoff fits): getfd `<id>-vhost`, then device_add with
 * guest-cid and vhostfd. On failure QEMU's copy of the fd is closed. QEMU
 * does SET_OWNER; the CID is free again once QEMU and this process closed their copies.
 */
export async function hotplugVsock(qmp: Qmp, prepared: VsockFds, options: HotplugVsockOptions): Promise<PluggedVsock> {
  checkObject(prepared, 'prepared');
  checkObject(options, 'options');
  const device = checkId(options.id, 'options.id');
  const bus = checkBus(options.bus);
  const cid = checkInt(prepared.cid, 'prepared.cid', VSOCK_CID_MIN, VSOCK_CID_MAX);
  const fd = checkInt(prepared.vhostFd, 'prepared.vhostFd', 0, 0x7fff_ffff);
  checkDeviceFd(fd, 'prepared.vhostFd', VHOST_VSOCK);
  const undoSteps: Array<() => Promise<unknown>> = [];
  try {
    const name = `${device}-vhost`;
    await passFd(qmp, fd, name, undoSteps);
    await addDevice(qmp, { driver: 'vhost-vsock-pci', id: device, ...vhostVsockProps(cid, name), ...(bus ? { bus } : {}) }, device, undoSteps);
    return { device, cid };
  } catch (err) {
    if (!qmp.closed) await undo(undoSteps);
    throw err;
  }
}

/** Unplugs a vhost-vsock device: device_del and a bounded wait for DEVICE_DELETED (QEMU closes its vhost fd then). */
export async function unplugVsock(qmp: Qmp, plugged: PluggedVsock | string, options: UnplugOptions = {}): Promise<void> {
  const device = checkId(typeof plugged === 'string' ? plugged : (plugged as PluggedVsock | null)?.device, 'plugged');
  checkObject(options, 'options');
  const timeoutMs = checkInt(options.timeoutMs ?? UNPLUG_DEFAULT_TIMEOUT_MS, 'options.timeoutMs', 1, 0x7fff_ffff);
  await deleteDevice(qmp, device, timeoutMs);
}
