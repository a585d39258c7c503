// Tap devices for vhost-net backends: /dev/net/tun with TUNSETIFF, the
// vnet header, sndbuf and offloads, then MTU / MAC / up through the link
// ioctls. Validation happens here, before any syscall; the addon only
// mirrors the ioctls.
import { FdOwner } from '../core/fd';
import { invalidArg, VhostError, withDeviceHint } from '../core/errors';
import { plain } from '../core/check';
import { native, type OwnedFd } from '../core/native';
import { markLink } from './creator';

/** TUNSETIFF / TUNGETIFF / TUNSETQUEUE flags (linux/if_tun.h). */
export const tunFlags = {
  IFF_TUN: 0x0001,
  IFF_TAP: 0x0002,
  IFF_NAPI: 0x0010,
  IFF_NAPI_FRAGS: 0x0020,
  IFF_NO_CARRIER: 0x0040,
  IFF_MULTI_QUEUE: 0x0100,
  IFF_ATTACH_QUEUE: 0x0200,
  IFF_DETACH_QUEUE: 0x0400,
  IFF_PERSIST: 0x0800,
  IFF_NO_PI: 0x1000,
  IFF_ONE_QUEUE: 0x2000,
  IFF_VNET_HDR: 0x4000,
  IFF_TUN_EXCL: 0x8000,
} as const satisfies Record<string, number>;

/** TUNSETOFFLOAD flags: what the tap may hand to the reader unfinished (linux/if_tun.h). */
export const tunOffload = {
  TUN_F_CSUM: 0x01,
  TUN_F_TSO4: 0x02,
  TUN_F_TSO6: 0x04,
  TUN_F_TSO_ECN: 0x08,
  TUN_F_UFO: 0x10,
} as const satisfies Record<string, number>;

/** Link flags as SIOCGIFFLAGS reports them (linux/if.h). */
export const linkFlags = {
  IFF_UP: 0x1,
  IFF_BROADCAST: 0x2,
  IFF_LOOPBACK: 0x8,
  IFF_POINTOPOINT: 0x10,
  IFF_RUNNING: 0x40,
  IFF_NOARP: 0x80,
  IFF_PROMISC: 0x100,
  IFF_MULTICAST: 0x1000,
} as const satisfies Record<string, number>;

const DEFAULT_TUN_PATH = '/dev/net/tun';
const IFNAMSIZ = 16;
const INT_MAX = 0x7fffffff;
/** sizeof(struct virtio_net_hdr); the kernel refuses a smaller TUNSETVNETHDRSZ. */
const VNET_HDR_MIN = 10;
/** sizeof(struct virtio_net_hdr_mrg_rxbuf), what vhost-net with MRG_RXBUF or VERSION_1 expects. */
const VNET_HDR_DEFAULT = 12;
/** MAX_TAP_QUEUES in drivers/net/tun.c. */
const MAX_QUEUES = 256;

/** Options of Tap.create(). */
export interface TapOptions {
  /** Link name (≤ 15 bytes, may hold one '%d' template); default: the kernel picks 'tapN'. */
  name?: string;
  /** Prepend a virtio_net_hdr to every packet (IFF_VNET_HDR), as vhost-net needs. Default true. */
  vnetHdr?: boolean;
  /** TUNSETVNETHDRSZ: 10, 12 (default) or any integer ≥ 10. Needs vnetHdr. */
  vnetHdrSize?: number;
  /** IFF_MULTI_QUEUE: one fd per queue, all on the same link. Default false. */
  multiQueue?: boolean;
  /** Number of queue fds, 1..256 (default 1); more than 1 needs multiQueue. */
  queues?: number;
  /** Link MTU, 68..65535 (the kernel may refuse more than its max, 65521 for a tap). */
  mtu?: number;
  /** Link MAC, 'aa:bb:cc:dd:ee:ff' or 6 bytes; unicast and not all zero. */
  mac?: string | Uint8Array;
  /** Bring the link up (true) or leave it down (default). */
  up?: boolean;
  /** TUNSETPERSIST: keep the link after every fd is closed. Default false. */
  persist?: boolean;
  /** TUNSETOFFLOAD flags (tunOffload.*). Default: leave the kernel's (none). */
  offload?: number;
  /** TUNSETSNDBUF bytes, 1..INT_MAX. Default INT_MAX (see Tap.create). */
  sndbuf?: number;
  /** The tun clone device; default '/dev/net/tun'. */
  path?: string;
}

interface TapPlan {
  name: string;
  flags: number;
  vnetHdrSize: number | undefined;
  queues: number;
  mtu: number | undefined;
  mac: Uint8Array | undefined;
  up: boolean | undefined;
  persist: boolean;
  offload: number | undefined;
  sndbuf: number;
  path: string;
}

const OPTION_KEYS = new Set<string>([
  'name', 'vnetHdr', 'vnetHdrSize', 'multiQueue', 'queues', 'mtu', 'mac', 'up', 'persist', 'offload', 'sndbuf', 'path',
]);

function isInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v);
}

function optBool(opts: TapOptions, key: keyof TapOptions): boolean | undefined {
  const v = opts[key];
  if (v !== undefined && typeof v !== 'boolean') throw invalidArg(key, 'must be a boolean');
  return v;
}

function optInt(opts: TapOptions, key: keyof TapOptions, min: number, max: number): number | undefined {
  const v = opts[key];
  if (v === undefined) return undefined;
  if (!isInt(v)) throw invalidArg(key, 'must be an integer');
  if (v < min || v > max) throw invalidArg(key, `must be in ${min}..${max} (got ${v})`, 'ERR_VHOST_OUT_OF_RANGE');
  return v;
}

/** Checks a link name the way the kernel's dev_valid_name does, plus the '%d' template. */
export function validateLinkName(name: unknown, arg = 'name'): string {
  if (typeof name !== 'string') throw invalidArg(arg, 'must be a string');
  if (name.length === 0) throw invalidArg(arg, 'must not be empty');
  if (Buffer.byteLength(name) > IFNAMSIZ - 1) throw invalidArg(arg, `must be at most ${IFNAMSIZ - 1} bytes (IFNAMSIZ - 1)`);
  if (name === '.' || name === '..') throw invalidArg(arg, `must not be '${name}'`);
  if (/[/:\s\0]/.test(name)) throw invalidArg(arg, "must not contain '/', ':', NUL or whitespace");
  const templates = name.split('%').length - 1;
  if (templates > 0 && (templates > 1 || !name.includes('%d'))) throw invalidArg(arg, "may hold only one '%d' template");
  return name;
}

/** Parses and checks a MAC: 6 bytes, unicast (bit 0 of the first byte clear), not all zero. */
export function parseMac(mac: unknown, arg = 'mac'): Uint8Array {
  let bytes: Uint8Array;
  if (typeof mac === 'string') {
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) throw invalidArg(arg, "must look like 'aa:bb:cc:dd:ee:ff'");
    bytes = Uint8Array.from(mac.split(':'), (h) => parseInt(h, 16));
  } else if (mac instanceof Uint8Array) {
    if (mac.length !== 6) throw invalidArg(arg, `must be 6 bytes (got ${mac.length})`);
    bytes = Uint8Array.from(mac);
  } else {
    throw invalidArg(arg, 'must be a string or a Uint8Array');
  }
  if (bytes[0] & 1) throw invalidArg(arg, 'must be unicast (bit 0 of the first byte is the multicast bit)');
  if (bytes.every((b) => b === 0)) throw invalidArg(arg, 'must not be all zero');
  return bytes;
}

/** Formats 6 bytes as 'aa:bb:cc:dd:ee:ff'. */
export function formatMac(bytes: Uint8Array): string {
  if (!(bytes instanceof Uint8Array)) throw invalidArg('bytes', `must be a Uint8Array, got ${plain(bytes)}`);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** 68: the IPv4 minimum (and tun's MIN_MTU). */
const MTU_MIN = 68;
/** 65535: the largest any link takes (the kernel then applies each link's own max, 65521 for a tap). */
const MTU_MAX = 65535;

/**
 * Checks an MTU in 68..65535, naming `arg` in the error. `wording` keeps each
 * caller's messages: 'link' (links and taps) says 'must be an integer'
 * (ERR_VHOST_INVALID_ARG) apart from 'must be in 68..65535 (got N)';
 * 'config' (virtio-net config space, QEMU host_mtu) says 'must be an integer
 * in 68..65535 (got V)' for both. Out of range is ERR_VHOST_OUT_OF_RANGE.
 */
export function validateMtu(mtu: unknown, arg = 'mtu', wording: 'link' | 'config' = 'link'): number {
  if (isInt(mtu) && mtu >= MTU_MIN && mtu <= MTU_MAX) return mtu;
  if (wording === 'config') throw invalidArg(arg, `must be an integer in ${MTU_MIN}..${MTU_MAX} (got ${plain(mtu)})`, 'ERR_VHOST_OUT_OF_RANGE');
  if (!isInt(mtu)) throw invalidArg(arg, 'must be an integer');
  throw invalidArg(arg, `must be in ${MTU_MIN}..${MTU_MAX} (got ${mtu})`, 'ERR_VHOST_OUT_OF_RANGE');
}

/** Refuses an advised MTU above the path MTU: the guest would send frames the path drops. */
export function checkAdvisedMtu(mtu: number, pathMtu: number): void {
  validateMtu(mtu, 'mtu', 'config');
  validateMtu(pathMtu, 'pathMtu', 'config');
  if (mtu > pathMtu) throw invalidArg('mtu', `${mtu} is above the path MTU ${pathMtu}: frames that large would be dropped`, 'ERR_VHOST_OUT_OF_RANGE');
}

/** Validates Tap.create options and turns them into the syscalls to make. Throws before any syscall. */
export function planTap(opts: TapOptions = {}): TapPlan {
  if (typeof opts !== 'object' || opts === null) throw invalidArg('options', 'must be an object');
  for (const key of Object.keys(opts)) if (!OPTION_KEYS.has(key)) throw invalidArg(key, 'is not a Tap.create option');

  const name = opts.name === undefined ? '' : validateLinkName(opts.name);
  const vnetHdr = optBool(opts, 'vnetHdr') ?? true;
  const multiQueue = optBool(opts, 'multiQueue') ?? false;
  const vnetHdrSize = optInt(opts, 'vnetHdrSize', VNET_HDR_MIN, INT_MAX);
  if (vnetHdrSize !== undefined && !vnetHdr) throw invalidArg('vnetHdrSize', 'needs vnetHdr: true');
  const queues = optInt(opts, 'queues', 1, MAX_QUEUES) ?? 1;
  if (queues > 1 && !multiQueue) throw invalidArg('queues', 'above 1 needs multiQueue: true');
  const mtu = opts.mtu === undefined ? undefined : validateMtu(opts.mtu);
  const mac = opts.mac === undefined ? undefined : parseMac(opts.mac);
  const up = optBool(opts, 'up');
  const persist = optBool(opts, 'persist') ?? false;
  const offload = optInt(opts, 'offload', 0, 0xffffffff);
  const sndbuf = optInt(opts, 'sndbuf', 1, INT_MAX) ?? INT_MAX;
  const path = opts.path ?? DEFAULT_TUN_PATH;
  if (typeof path !== 'string' || path.length === 0) throw invalidArg('path', 'must be a non-empty string');

  let flags = tunFlags.IFF_TAP | tunFlags.IFF_NO_PI;
  if (vnetHdr) flags |= tunFlags.IFF_VNET_HDR;
  if (multiQueue) flags |= tunFlags.IFF_MULTI_QUEUE;
  return {
    name, flags, queues, mtu, mac, up, persist, offload, sndbuf, path,
    vnetHdrSize: vnetHdr ? (vnetHdrSize ?? VNET_HDR_DEFAULT) : undefined,
  };
}

/** /dev/net/tun: the tun module's node; creating or configuring a tap needs CAP_NET_ADMIN. */
const TUN_NODE = { module: 'tun', node: '/dev/net/tun', capability: 'CAP_NET_ADMIN' } as const;


/** Marks an error with the Tap.create step that failed and adds a device hint. */
function atStep(err: unknown, step: string): unknown {
  if (err instanceof VhostError) {
    err.step ??= step;
    withDeviceHint(err, TUN_NODE);
  }
  return err;
}

/** One queue fd of a tap. With multiQueue each queue can be detached and re-attached. */
export class TapQueue extends FdOwner {
  /** Position of this queue in Tap.queues. */
  readonly index: number;

  /** @internal Created by Tap.create. */
  constructor(handle: OwnedFd, index: number) {
    super(handle);
    this.index = index;
  }

  /** TUNSETQUEUE IFF_ATTACH_QUEUE: the link sends and receives on this fd again. */
  attach(): void {
    native.tapSetQueue(this.handle, true);
  }

  /** TUNSETQUEUE IFF_DETACH_QUEUE: the link stops using this fd (needs multiQueue). */
  detach(): void {
    native.tapSetQueue(this.handle, false);
  }

  /** TUNGETIFF of this fd: the link name and its IFF_* flags. */
  get iff(): { name: string; flags: number } {
    return native.tapGetIff(this.handle);
  }

  /** TUNGETSNDBUF of this fd's socket. */
  get sndbuf(): number {
    return native.tapGetSndbuf(this.handle);
  }
}

/**
 * A tap link whose fds vhost-net can use as backends (one per queue).
 * The Tap owns the first queue's fd; `queues` lists every queue, the first
 * one sharing the Tap's fd. Closing the Tap closes every queue; a tap that is
 * not persistent then disappears from the system.
 */
export class Tap extends FdOwner {
  /** The link name the kernel assigned. */
  readonly name: string;
  /** One fd owner per queue; queues[0] is this Tap's own fd. */
  readonly queues: readonly TapQueue[];

  private constructor(queues: TapQueue[], name: string) {
    super(queues[0].nativeHandle);
    this.queues = queues;
    this.name = name;
  }

  /**
   * Opens a tap: TUNSETIFF (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, plus IFF_MULTI_QUEUE)
   * for each queue, then TUNSETVNETHDRSZ, TUNSETSNDBUF, TUNSETOFFLOAD, TUNSETPERSIST,
   * MTU, MAC and up. If a step fails, every fd opened so far is closed (a tap made
   * persistent is un-persisted first) and the error's `.step` names the step.
   */
  static create(options: TapOptions = {}): Tap {
    const plan = planTap(options);
    const handles: OwnedFd[] = [];
    let persisted = false;
    let step = 'TUNSETIFF';
    try {
      const first = native.tapOpen(plan.path, plan.name, plan.flags);
      handles.push(first.fd);
      const name = first.name;
      // Further queues attach to the same link by its resolved name.
      for (let i = 1; i < plan.queues; i++) {
        step = `TUNSETIFF (queue ${i})`;
        handles.push(native.tapOpen(plan.path, name, plan.flags).fd);
      }
      const fd = handles[0];
      // The vnet header size, sndbuf and offloads belong to the link, so
      // setting them once on the first queue covers every queue.
      if (plan.vnetHdrSize !== undefined) {
        step = 'TUNSETVNETHDRSZ';
        native.tapSetVnetHdrSize(fd, plan.vnetHdrSize);
      }
      // vhost-net batches TX packets into the tap only when the socket's
      // sndbuf is unlimited (INT_MAX); any other value sends one at a time.
      step = 'TUNSETSNDBUF';
      native.tapSetSndbuf(fd, plan.sndbuf);
      if (plan.offload !== undefined) {
        step = 'TUNSETOFFLOAD';
        native.tapSetOffload(fd, plan.offload);
      }
      if (plan.persist) {
        step = 'TUNSETPERSIST';
        native.tapSetPersist(fd, true);
        persisted = true;
        step = 'IFLA_IFALIAS';
        markLink(name); // a persistent tap outlives this process: cleanupOrphans() finds it after a crash
      }
      if (plan.mtu !== undefined) {
        step = 'SIOCSIFMTU';
        native.linkSetMtu(name, plan.mtu);
      }
      if (plan.mac !== undefined) {
        step = 'SIOCSIFHWADDR';
        native.linkSetMac(name, plan.mac);
      }
      if (plan.up !== undefined) {
        step = 'SIOCSIFFLAGS';
        native.linkSetUp(name, plan.up);
      }
      return new Tap(handles.map((h, i) => new TapQueue(h, i)), name);
    } catch (err) {
      if (persisted) {
        try {
          native.tapSetPersist(handles[0], false);
        } catch {
          // best effort: the original error is what the caller needs
        }
      }
      for (const h of handles) h.close();
      throw atStep(err, step);
    }
  }

  /** The link name, after checking this Tap is still open (ERR_VHOST_CLOSED otherwise). */
  private get linkName(): string {
    void this.handle;
    return this.name;
  }

  /** The link's interface index (SIOCGIFINDEX). */
  get ifindex(): number {
    return native.linkIndex(this.linkName);
  }

  /** The link MTU (SIOCGIFMTU / SIOCSIFMTU); set validates 68..65535 first. */
  get mtu(): number {
    return native.linkGetMtu(this.linkName);
  }

  /** Sets the link MTU (SIOCSIFMTU), 68..65535. */
  set mtu(mtu: number) {
    validateMtu(mtu);
    native.linkSetMtu(this.linkName, mtu);
  }

  /** The link MAC as 'aa:bb:cc:dd:ee:ff' (SIOCGIFHWADDR / SIOCSIFHWADDR). */
  get mac(): string {
    return formatMac(native.linkGetMac(this.linkName));
  }

  /** Sets the link MAC, as setMac(). */
  set mac(mac: string) {
    this.setMac(mac);
  }

  /** Sets the link MAC; a string or 6 bytes, unicast and not all zero. */
  setMac(mac: string | Uint8Array): void {
    const bytes = parseMac(mac);
    native.linkSetMac(this.linkName, bytes);
  }

  /** The link flags (SIOCGIFFLAGS): linkFlags.IFF_UP, IFF_RUNNING, ... */
  get linkFlags(): number {
    return native.linkGetFlags(this.linkName);
  }

  /** Whether the link is administratively up. */
  get isUp(): boolean {
    return (this.linkFlags & linkFlags.IFF_UP) !== 0;
  }

  /** Brings the link up or down (IFF_UP through SIOCSIFFLAGS). */
  setUp(up: boolean): void {
    if (typeof up !== 'boolean') throw invalidArg('up', 'must be a boolean');
    native.linkSetUp(this.linkName, up);
  }

  /** TUNGETFEATURES: the IFF_* flags this kernel's tun driver supports. */
  get features(): number {
    return native.tapGetFeatures(this.handle);
  }

  /** TUNGETIFF: the link name and IFF_* flags as the kernel holds them. */
  get iff(): { name: string; flags: number } {
    return native.tapGetIff(this.handle);
  }

  /** TUNGETVNETHDRSZ: the vnet header size in bytes. */
  get vnetHdrSize(): number {
    return native.tapGetVnetHdrSize(this.handle);
  }

  /** TUNSETVNETHDRSZ: an integer ≥ 10. */
  setVnetHdrSize(size: number): void {
    if (!isInt(size) || size < VNET_HDR_MIN || size > INT_MAX)
      throw invalidArg('vnetHdrSize', `must be an integer in ${VNET_HDR_MIN}..${INT_MAX}`, 'ERR_VHOST_OUT_OF_RANGE');
    native.tapSetVnetHdrSize(this.handle, size);
  }

  /** TUNGETSNDBUF of the first queue. */
  get sndbuf(): number {
    return native.tapGetSndbuf(this.handle);
  }

  /** TUNSETOFFLOAD: tunOffload flags; the kernel refuses bits it does not know (EINVAL). */
  setOffload(flags: number): void {
    if (!isInt(flags) || flags < 0 || flags > 0xffffffff) throw invalidArg('flags', 'must be an integer in 0..0xffffffff');
    native.tapSetOffload(this.handle, flags);
  }

  /** TUNSETPERSIST: keep (true) or drop (false) the link once every fd is closed. */
  setPersist(persist: boolean): void {
    if (typeof persist !== 'boolean') throw invalidArg('persist', 'must be a boolean');
    native.tapSetPersist(this.handle, persist);
    if (persist) markLink(this.name);
  }

  /** Closes every queue fd. Idempotent. */
  override close(): void {
    for (const q of this.queues) q.close();
    super.close();
  }
}
