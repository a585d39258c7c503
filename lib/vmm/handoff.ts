// fd handoff to an external VMM, as libvirt does for QEMU: this process opens
// and checks the tap and the vhost devices (it has the privileges), then the
// VMM inherits them by number and takes ownership (VHOST_SET_OWNER) itself.
// Nothing here calls SET_OWNER: a device has one owner, and a second
// SET_OWNER fails EBUSY.
import { spawn, type ChildProcess, type SpawnOptions, type StdioNull, type StdioPipe } from 'node:child_process';
import '../core/dispose';
import { invalidArg, VhostError } from '../core/errors';
import { plain } from '../core/check';
import { formatMac, parseMac, Tap, tunFlags, validateLinkName, validateMtu } from '../netdev/tap';
import { VhostNet } from '../vhost/net';
import { VhostVsock } from '../vhost/vsock';
import { allocateCid, VSOCK_AUTO_CID_ATTEMPTS, VSOCK_CID_MAX, VSOCK_CID_MIN } from '../vhost/vsock';

/** VHOST_NET_F_VIRTIO_NET_HDR: every vhost-net device offers it; its absence means the fd is not vhost-net. */
const VHOST_NET_F_VIRTIO_NET_HDR = 1n << 27n;
const MAX_QUEUE_PAIRS = 256;
const CID_FIRST = VSOCK_CID_MIN;
const CID_LAST = VSOCK_CID_MAX;
/** How many CIDs an auto-CID walk tries before it gives up with the last EADDRINUSE: VSOCK_AUTO_CID_ATTEMPTS. */
export const AUTO_CID_ATTEMPTS = VSOCK_AUTO_CID_ATTEMPTS;

const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v);

function closeAll(owners: readonly { close(): void }[]): void {
  for (const o of owners) {
    try {
      o.close();
    } catch {
      // best effort: the caller needs the original error
    }
  }
}

// ---- vhost-net + tap ---------------------------------------------------------

/** Options of prepareNetForVmm. */
export interface NetHandoffOptions {
  /** Tap link name (≤ 15 bytes, may hold '%d'); default: the kernel picks 'tapN'. */
  tapName?: string;
  /** Queue pairs, 1..256 (default 1): one tap queue fd and one /dev/vhost-net fd each; above 1 the tap is multi-queue. */
  queuePairs?: number;
  /** MTU of the tap link, also offered to the guest (QEMU `host_mtu`, the virtio-net MTU feature). */
  mtu?: number;
  /** The guest's MAC ('aa:bb:cc:dd:ee:ff'), passed to QEMU's virtio-net device; the tap's own MAC is left to the kernel. */
  mac?: string;
  /** Bring the tap link up (default true). */
  up?: boolean;
}

/**
 * A tap and its vhost-net devices, opened and checked but not owned by any
 * process yet: hand them to a VMM with qemuArgs() and spawnVmm(). Closing it
 * closes this process's copies only (a spawned VMM keeps its own).
 */
export class NetHandoff implements Disposable {
  /** The tap; `tap.queues[i]` goes with `vhost[i]`. */
  readonly tap: Tap;
  /** One /dev/vhost-net per queue pair, without owner. */
  readonly vhost: readonly VhostNet[];
  /** The features every vhost-net fd offered (VHOST_GET_FEATURES). */
  readonly features: bigint;
  /** The MTU set on the tap, if one was asked for. */
  readonly mtu: number | undefined;
  /** The guest MAC, normalized to lower case, if one was given. */
  readonly mac: string | undefined;

  /** @internal Built by prepareNetForVmm. */
  constructor(tap: Tap, vhost: VhostNet[], features: bigint, mtu: number | undefined, mac: string | undefined) {
    this.tap = tap;
    this.vhost = vhost;
    this.features = features;
    this.mtu = mtu;
    this.mac = mac;
  }

  /** Number of queue pairs. */
  get queuePairs(): number {
    return this.vhost.length;
  }

  /** This process's tap queue fds, in queue order. */
  get tapFds(): number[] {
    return this.tap.queues.map((q) => q.fd);
  }

  /** This process's vhost-net fds, in queue-pair order. */
  get vhostFds(): number[] {
    return this.vhost.map((v) => v.fd);
  }

  /** Closes this process's fds (the tap link disappears once no process holds a queue). Idempotent. */
  close(): void {
    closeAll([...this.vhost, this.tap]);
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

function checkNetOptions(opts: NetHandoffOptions): { queuePairs: number; mac: string | undefined } {
  if (typeof opts !== 'object' || opts === null) throw invalidArg('options', 'must be an object');
  const queuePairs = opts.queuePairs ?? 1;
  if (!isInt(queuePairs)) throw invalidArg('queuePairs', 'must be an integer');
  if (queuePairs < 1 || queuePairs > MAX_QUEUE_PAIRS) {
    throw invalidArg('queuePairs', `must be in 1..${MAX_QUEUE_PAIRS} (got ${queuePairs})`, 'ERR_VHOST_OUT_OF_RANGE');
  }
  if (opts.tapName !== undefined) validateLinkName(opts.tapName, 'tapName');
  if (opts.up !== undefined && typeof opts.up !== 'boolean') throw invalidArg('up', 'must be a boolean');
  const mac = opts.mac === undefined ? undefined : formatMac(parseMac(opts.mac));
  return { queuePairs, mac };
}

/**
 * Opens a tap (multi-queue when `queuePairs` > 1, with IFF_VNET_HDR) and one
 * /dev/vhost-net per queue pair, and checks them: each tap queue reports the
 * flags a VMM needs (TUNGETIFF) and each vhost fd answers VHOST_GET_FEATURES
 * with VHOST_NET_F_VIRTIO_NET_HDR. No VHOST_SET_OWNER: the VMM does it. On any
 * failure everything opened so far is closed.
 */
export function prepareNetForVmm(options: NetHandoffOptions = {}): NetHandoff {
  const { queuePairs, mac } = checkNetOptions(options);
  const tap = Tap.create({
    name: options.tapName,
    multiQueue: queuePairs > 1,
    queues: queuePairs,
    mtu: options.mtu,
    up: options.up ?? true,
  });
  const vhost: VhostNet[] = [];
  try {
    const want = tunFlags.IFF_TAP | tunFlags.IFF_NO_PI | tunFlags.IFF_VNET_HDR | (queuePairs > 1 ? tunFlags.IFF_MULTI_QUEUE : 0);
    for (const q of tap.queues) {
      const { flags } = q.iff;
      if ((flags & want) !== want) {
        throw new VhostError(`tap queue ${q.index} of ${tap.name} has flags 0x${flags.toString(16)}, needs 0x${want.toString(16)}`, {
          code: 'ERR_VHOST_UNSUPPORTED', path: tap.name,
        });
      }
    }
    let features = -1n;
    for (let i = 0; i < queuePairs; i++) {
      const dev = VhostNet.open();
      vhost.push(dev);
      const f = dev.getFeatures();
      if ((f & VHOST_NET_F_VIRTIO_NET_HDR) === 0n) {
        throw new VhostError(`${dev.path} offers no VHOST_NET_F_VIRTIO_NET_HDR (features 0x${f.toString(16)})`, {
          code: 'ERR_VHOST_UNSUPPORTED', path: dev.path,
        });
      }
      features &= f;
    }
    return new NetHandoff(tap, vhost, features, options.mtu, mac);
  } catch (err) {
    closeAll([...vhost, tap]);
    throw err;
  }
}

// ---- vhost-vsock -------------------------------------------------------------

/** Options of prepareVsockForVmm. */
export interface VsockHandoffOptions {
  /** The guest CID (3..0xfffffffe), or 'auto': the first free one from 3 up. */
  cid: number | 'auto';
}

/** A /dev/vhost-vsock with its guest CID set, without owner. Closing it releases the CID (once the VMM's copy is closed too). */
export class VsockHandoff implements Disposable {
  readonly vhost: VhostVsock;
  /** The CID the kernel accepted. */
  readonly cid: number;

  /** @internal Built by prepareVsockForVmm. */
  constructor(vhost: VhostVsock, cid: number) {
    this.vhost = vhost;
    this.cid = cid;
  }

  /** This process's vhost-vsock fd. */
  get vhostFd(): number {
    return this.vhost.fd;
  }

  /** Closes this process's fd. Idempotent. */
  close(): void {
    this.vhost.close();
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Opens /dev/vhost-vsock and sets the guest CID (VHOST_VSOCK_SET_GUEST_CID,
 * which the kernel accepts before SET_OWNER). With `cid: 'auto'` it walks from
 * 3 up past CIDs other devices hold (EADDRINUSE), at most AUTO_CID_ATTEMPTS
 * of them. No VHOST_SET_OWNER: the VMM does it.
 */
export function prepareVsockForVmm(options: VsockHandoffOptions): VsockHandoff {
  if (typeof options !== 'object' || options === null) throw invalidArg('options', 'must be an object');
  const { cid } = options;
  if (cid !== 'auto') {
    if (!isInt(cid)) throw invalidArg('cid', "must be an integer or 'auto'");
    if (cid < CID_FIRST || cid > CID_LAST) throw invalidArg('cid', `must be in ${CID_FIRST}..${CID_LAST} (got ${cid})`, 'ERR_VHOST_OUT_OF_RANGE');
  }
  const dev = VhostVsock.open();
  try {
    if (cid !== 'auto') {
      dev.setGuestCid(cid);
      return new VsockHandoff(dev, cid);
    }
    return new VsockHandoff(dev, allocateCid((c) => dev.setGuestCid(c)));
  } catch (err) {
    dev.close();
    throw err;
  }
}

// ---- QEMU arguments -----------------------------------------------------------

/** One virtio-net device as qemuArgs needs it: fd numbers in this process (a NetHandoff fits). */
export interface NetFds {
  /** QEMU id of the netdev (the device gets `<id>-dev`); default 'net0', 'net1', ... */
  id?: string;
  readonly tapFds: readonly number[];
  readonly vhostFds: readonly number[];
  readonly mtu?: number;
  readonly mac?: string;
}

/** One vhost-vsock device as qemuArgs needs it (a VsockHandoff fits). */
export interface VsockFds {
  readonly cid: number;
  readonly vhostFd: number;
}

/** What to hand to the VMM. */
export interface VmmHandoffInput {
  net?: NetFds | readonly NetFds[];
  vsock?: VsockFds;
  /** First fd number in the child (default 3, right after stdio). */
  firstFd?: number;
}

/** One inherited fd: `parentFd` in this process becomes `childFd` in the VMM. */
export interface FdPassing {
  childFd: number;
  parentFd: number;
}

/** QEMU arguments naming fds by their numbers in the child, and the fds to pass at those numbers. */
export interface VmmHandoff {
  args: string[];
  fds: FdPassing[];
}

const QEMU_ID = /^[A-Za-z][A-Za-z0-9_.-]{0,127}$/;

function checkFdNumber(v: unknown, arg: string): number {
  if (!isInt(v) || v < 0 || v > 0x7fff_ffff) throw invalidArg(arg, `must be an fd number (integer in 0..2147483647), got ${plain(v)}`);
  return v;
}

/** A NetFds whose fields were checked: what both qemuArgs() and hotplugNet() build a virtio-net device from. */
export interface CheckedNetFds {
  id: string;
  tapFds: number[];
  vhostFds: number[];
  mtu: number | undefined;
  mac: string | undefined;
}

/**
 * @internal Checks one NetFds (`where` names it in errors): a QEMU id, 1..256
 * tap fds, vhost fds (checked for count by the caller: spawn wants one per
 * tap fd, hotplug also takes none), MTU and MAC.
 */
export function checkNetFds(net: NetFds, where: string, defaultId: string): CheckedNetFds {
  if (typeof net !== 'object' || net === null) throw invalidArg(where, 'must be an object');
  const id = net.id ?? defaultId;
  if (typeof id !== 'string' || !QEMU_ID.test(id)) throw invalidArg(`${where}.id`, 'must be a QEMU id (a letter, then letters, digits, _ . -)');
  if (!Array.isArray(net.tapFds) || !Array.isArray(net.vhostFds)) throw invalidArg(where, 'needs tapFds and vhostFds arrays');
  const pairs = net.tapFds.length;
  if (pairs < 1 || pairs > MAX_QUEUE_PAIRS) throw invalidArg(`${where}.tapFds`, `must hold 1..${MAX_QUEUE_PAIRS} fds (got ${pairs})`);
  const tapFds = net.tapFds.map((fd, i) => checkFdNumber(fd, `${where}.tapFds[${i}]`));
  const vhostFds = net.vhostFds.map((fd, i) => checkFdNumber(fd, `${where}.vhostFds[${i}]`));
  if (net.mtu !== undefined) validateMtu(net.mtu, `${where}.mtu`, 'config');
  const mac = net.mac === undefined ? undefined : formatMac(parseMac(net.mac, `${where}.mac`));
  return { id, tapFds, vhostFds, mtu: net.mtu, mac };
}

/** A QEMU property value: strings as they are, booleans as on/off on a command line, numbers in decimal. */
export type QemuProp = string | number | boolean;

/** @internal `-netdev tap` properties naming fds (numbers at spawn, getfd names at hotplug); vhost=on with vhost fds, off without. */
export function tapNetdevProps(id: string, tapFds: readonly string[], vhostFds: readonly string[]): Record<string, QemuProp> {
  const props: Record<string, QemuProp> = { id, fds: tapFds.join(':'), vhost: vhostFds.length > 0 };
  if (vhostFds.length > 0) props.vhostfds = vhostFds.join(':');
  return props;
}

/** @internal The virtio-net-pci properties of a netdev: id `<id>-dev`, mq and vectors with more than one queue pair, host_mtu, mac. */
export function virtioNetProps(net: Pick<CheckedNetFds, 'id' | 'tapFds' | 'mtu' | 'mac'>): Record<string, QemuProp> {
  const props: Record<string, QemuProp> = { netdev: net.id, id: `${net.id}-dev` };
  const pairs = net.tapFds.length;
  // Multi-queue needs mq=on and one MSI-X vector per queue, plus config and control
  // (QEMU 7.2 derives the same 2N+2 itself with mq=on; said here so older ones agree).
  if (pairs > 1) Object.assign(props, { mq: true, vectors: 2 * pairs + 2 });
  if (net.mtu !== undefined) props.host_mtu = net.mtu;
  if (net.mac !== undefined) props.mac = net.mac;
  return props;
}

/** @internal The vhost-vsock-pci properties: the guest CID and the vhost fd (a number at spawn, a getfd name at hotplug). */
export function vhostVsockProps(cid: number, vhostfd: string): Record<string, QemuProp> {
  return { 'guest-cid': cid, vhostfd };
}

/** @internal `driver,key=value,...` as a QEMU command line takes it (booleans as on/off). */
export function formatProps(driver: string, props: Record<string, QemuProp>): string {
  const parts = Object.entries(props).map(([k, v]) => `${k}=${typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v)}`);
  return [driver, ...parts].join(',');
}

/**
 * Builds the QEMU arguments for prepared devices, with every fd named by the
 * number the child will see (allocated from `firstFd` up, tap fds then vhost
 * fds per netdev, then vsock):
 * `-netdev tap,id=net0,fds=3:4,vhost=on,vhostfds=5:6`,
 * `-device virtio-net-pci,netdev=net0,id=net0-dev[,mq=on,vectors=2N+2][,host_mtu=M][,mac=…]`,
 * `-device vhost-vsock-pci,guest-cid=C,vhostfd=F`. Pass `fds` to spawnVmm.
 */
export function qemuArgs(input: VmmHandoffInput): VmmHandoff {
  if (typeof input !== 'object' || input === null) throw invalidArg('input', 'must be an object');
  const firstFd = input.firstFd ?? 3;
  if (!isInt(firstFd) || firstFd < 3 || firstFd > 0xffff) throw invalidArg('firstFd', 'must be an integer in 3..65535 (0..2 are stdio)');
  const nets: readonly NetFds[] = input.net === undefined ? [] : Array.isArray(input.net) ? input.net : [input.net as NetFds];
  const args: string[] = [];
  const fds: FdPassing[] = [];
  let next = firstFd;
  const pass = (parentFd: number): number => {
    fds.push({ childFd: next, parentFd });
    return next++;
  };
  const ids = new Set<string>();
  nets.forEach((net, n) => {
    const where = `net[${n}]`;
    const checked = checkNetFds(net, where, `net${n}`);
    if (ids.has(checked.id)) throw invalidArg(`${where}.id`, `'${checked.id}' is used twice`);
    ids.add(checked.id);
    if (checked.vhostFds.length !== checked.tapFds.length) {
      throw invalidArg(`${where}.vhostFds`, `must hold one fd per tap fd (${checked.tapFds.length}), got ${checked.vhostFds.length}`);
    }
    const tapChild = checked.tapFds.map(pass);
    const vhostChild = checked.vhostFds.map(pass);
    args.push('-netdev', formatProps('tap', tapNetdevProps(checked.id, tapChild.map(String), vhostChild.map(String))));
    args.push('-device', formatProps('virtio-net-pci', virtioNetProps(checked)));
  });
  if (input.vsock !== undefined) {
    const v = input.vsock;
    if (typeof v !== 'object' || v === null) throw invalidArg('vsock', 'must be an object');
    if (!isInt(v.cid) || v.cid < CID_FIRST || v.cid > CID_LAST) {
      throw invalidArg('vsock.cid', `must be in ${CID_FIRST}..${CID_LAST} (got ${plain(v.cid)})`, 'ERR_VHOST_OUT_OF_RANGE');
    }
    const child = pass(checkFdNumber(v.vhostFd, 'vsock.vhostFd'));
    args.push('-device', formatProps('vhost-vsock-pci', vhostVsockProps(v.cid, String(child))));
  }
  const parents = new Set(fds.map((f) => f.parentFd));
  if (parents.size !== fds.length) throw invalidArg('input', 'names the same fd twice');
  return { args, fds };
}

// ---- spawning -------------------------------------------------------------------

/** One of the child's stdio entries as spawn() takes it: 'inherit', 'ignore', 'pipe' and the like, or an fd number. */
export type StdioEntry = StdioNull | StdioPipe | number;

/** spawn() options of spawnVmm: everything but `stdio`, which is built from the handoff. */
export interface SpawnVmmOptions extends Omit<SpawnOptions, 'stdio'> {
  /** The child's fds 0, 1, 2 (default 'inherit' each). */
  stdio?: readonly [StdioEntry, StdioEntry, StdioEntry];
}

/** The spawn() stdio array for a handoff: index = child fd; fds not named stay closed in the child. */
export function stdioFor(fds: readonly FdPassing[], stdio: readonly [StdioEntry, StdioEntry, StdioEntry] = ['inherit', 'inherit', 'inherit']): StdioEntry[] {
  if (!Array.isArray(fds)) throw invalidArg('handoff.fds', 'must be an array');
  const out: StdioEntry[] = [...stdio];
  const seen = new Set<number>();
  for (const [i, f] of fds.entries()) {
    if (typeof f !== 'object' || f === null) throw invalidArg(`handoff.fds[${i}]`, 'must be { childFd, parentFd }');
    const child = checkFdNumber(f.childFd, `handoff.fds[${i}].childFd`);
    const parent = checkFdNumber(f.parentFd, `handoff.fds[${i}].parentFd`);
    if (child < 3) throw invalidArg(`handoff.fds[${i}].childFd`, 'must be 3 or more (0..2 are stdio)');
    if (child > 0xffff) throw invalidArg(`handoff.fds[${i}].childFd`, 'must be at most 65535', 'ERR_VHOST_OUT_OF_RANGE');
    if (seen.has(child)) throw invalidArg(`handoff.fds[${i}].childFd`, `${child} is named twice`);
    seen.add(child);
    // 'ignore' above fd 2 leaves the child's fd closed (libuv opens /dev/null only for 0..2).
    while (out.length <= child) out.push('ignore');
    out[child] = parent;
  }
  return out;
}

/**
 * Spawns the VMM with the handoff's fds inherited at exactly the numbers its
 * arguments name. Every fd this library opens is O_CLOEXEC, so nothing else
 * of ours leaks into the child. `args` should include `handoff.args`.
 */
export function spawnVmm(command: string, args: readonly string[], handoff: Pick<VmmHandoff, 'fds'>, options: SpawnVmmOptions = {}): ChildProcess {
  if (typeof command !== 'string' || command.length === 0) throw invalidArg('command', 'must be a non-empty string');
  if (!Array.isArray(args) || !args.every((a) => typeof a === 'string')) throw invalidArg('args', 'must be an array of strings');
  if (typeof handoff !== 'object' || handoff === null) throw invalidArg('handoff', 'must be the result of qemuArgs() (or { fds })');
  const { stdio, ...rest } = options;
  return spawn(command, [...args], { ...rest, stdio: stdioFor(handoff.fds, stdio) });
}
