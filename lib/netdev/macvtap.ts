// macvtap: a tap-like character device (/dev/tap<ifindex>) on top of another
// link. Its fd takes the vnet header and serves as a vhost-net backend just
// like a tap's. In passthru mode one macvtap owns its lower NIC outright: the
// way to dedicate a NIC to exactly one VM.
import '../core/dispose';
import { checkBool, checkObject, checkOneOf, oneOfList } from '../core/check';
import { deviceNodeHints, invalidArg, VhostError, withHint } from '../core/errors';
import { FdOwner } from '../core/fd';
import { Rtnl, type LinkInfo, type LinkRef, type MacvtapMode } from './links';
import { native, type OwnedFd } from '../core/native';
import { parseMac, tunFlags, validateLinkName } from './tap';

/** sizeof(struct virtio_net_hdr_mrg_rxbuf), what vhost-net with MRG_RXBUF or VERSION_1 expects. */
const VNET_HDR_SIZE = 12;
const DEFAULT_OPEN_TIMEOUT_MS = 2000;
const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Options of Macvtap.create() and Macvtap.passthrough(). */
export interface MacvtapOptions {
  /** Link name; default: the kernel picks 'macvtapN'. */
  name?: string;
  /** Guest MAC for the macvtap (in passthru mode this becomes the NIC's MAC until release). */
  mac?: string | Uint8Array;
  /** Bring the macvtap up (default true). */
  up?: boolean;
  /** How long to wait for /dev/tap<ifindex> to appear, in ms (default 2000). */
  openTimeoutMs?: number;
}

function lowerName(lower: LinkRef): string {
  return validateLinkName(typeof lower === 'string' ? lower : lower?.name, 'lower');
}

/** open(/dev/tapN) + TUNSETIFF(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), retried while udev/devtmpfs has not created the node yet. */
function openTapDevice(path: string, timeoutMs: number): OwnedFd {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return native.tapOpen(path, '', tunFlags.IFF_TAP | tunFlags.IFF_NO_PI | tunFlags.IFF_VNET_HDR).fd;
    } catch (err) {
      if ((err as VhostError).code !== 'ENOENT' || Date.now() >= deadline) throw withHint(err, { EACCES: deviceNodeHints({ module: 'macvtap', node: path }).EACCES });
      Atomics.wait(sleeper, 0, 0, 10); // the node normally exists at once; this bounds a slow udev
    }
  }
}

/**
 * A macvtap link and its open /dev/tap<ifindex> fd (vnet header on, 12 bytes).
 * Pass it to VhostNet.setBackend like a Tap. Dispose closes the fd, deletes
 * the link and, for passthru, restores the NIC's original MAC.
 */
export class Macvtap extends FdOwner {
  /** The macvtap link name. */
  readonly name: string;
  readonly ifindex: number;
  /** The lower link (the NIC). */
  readonly lower: string;
  readonly mode: MacvtapMode;
  readonly #rtnl: Rtnl;
  readonly #restoreMac: string | undefined;
  #released = false;

  private constructor(handle: OwnedFd, rtnl: Rtnl, info: LinkInfo, lower: string, mode: MacvtapMode, restoreMac: string | undefined) {
    super(handle);
    this.#rtnl = rtnl;
    this.name = info.name;
    this.ifindex = info.index;
    this.lower = lower;
    this.mode = mode;
    this.#restoreMac = restoreMac;
  }

  /** Creates a macvtap on `lower` in `mode` (bridge, vepa, private, passthru) and opens its tap device. */
  static create(lower: LinkRef, mode: MacvtapMode, opts: MacvtapOptions = {}): Macvtap {
    const nic = lowerName(lower);
    checkObject(opts, 'options');
    const name = opts.name === undefined ? undefined : validateLinkName(opts.name);
    const mac = opts.mac === undefined ? undefined : parseMac(opts.mac);
    const up = opts.up === undefined || checkBool(opts.up, 'up', null);
    const timeout = opts.openTimeoutMs ?? DEFAULT_OPEN_TIMEOUT_MS;
    if (!Number.isInteger(timeout) || timeout < 0) throw invalidArg('openTimeoutMs', 'must be a non-negative integer');
    checkOneOf<MacvtapMode>(mode, 'mode', ['bridge', 'vepa', 'private', 'passthru'], null, oneOfList);

    const rtnl = Rtnl.open();
    let created: string | undefined;
    let handle: OwnedFd | undefined;
    let restoreMac: string | undefined;
    try {
      const lowerInfo = rtnl.getLink(nic);
      if (mode === 'passthru') restoreMac = lowerInfo.mac;
      const before = new Set(name === undefined ? rtnl.listLinks().map((l) => l.index) : []);
      try {
        rtnl.createMacvtap(name ?? 'macvtap%d', nic, mode);
      } catch (err) {
        throw mode === 'passthru' ? claimError(rtnl, err, lowerInfo) : err;
      }
      created = name;
      // The kernel resolved the '%d' template; the new upper of `nic` is ours.
      const info = name !== undefined
        ? rtnl.getLink(name)
        : rtnl.listLinks().find((l) => !before.has(l.index) && l.parent === lowerInfo.index && l.kind === 'macvtap');
      if (!info) throw new VhostError(`ERR_VHOST_UNSUPPORTED: the new macvtap on '${nic}' was not found`, { code: 'ERR_VHOST_UNSUPPORTED', path: nic });
      created = info.name;
      if (name === undefined) rtnl.markCreated(created); // a named one was marked when created
      if (mac) rtnl.setMac(created, mac);
      if (up) rtnl.setUp(created, true);
      handle = openTapDevice(`/dev/tap${info.index}`, timeout);
      native.tapSetVnetHdrSize(handle, VNET_HDR_SIZE);
      return new Macvtap(handle, rtnl, info, nic, mode, restoreMac);
    } catch (err) {
      handle?.close();
      // Best-effort rollback, each step on its own: the caller needs the
      // original error, and the NIC's MAC back even if the delete failed.
      try {
        if (created) rtnl.deleteLink(created);
      } catch {
        // already gone, or the original error explains it
      }
      try {
        if (restoreMac && rtnl.getLink(nic).mac !== restoreMac) rtnl.setMac(nic, restoreMac);
      } catch {
        // as above
      }
      rtnl.close();
      throw err;
    }
  }

  /**
   * Dedicates NIC `nic` to one VM (macvtap passthru). A second claim on the
   * same NIC fails with EBUSY naming the holder; release (dispose) restores
   * the NIC's original MAC.
   */
  static passthrough(nic: LinkRef, opts: MacvtapOptions = {}): Macvtap {
    return Macvtap.create(nic, 'passthru', opts);
  }

  /** The macvtap link as the kernel reports it now. */
  get info(): LinkInfo {
    return this.#rtnl.getLink(this.name);
  }

  /** The /dev/tap<ifindex> path the fd was opened from. */
  get devicePath(): string {
    return `/dev/tap${this.ifindex}`;
  }

  /** TUNGETVNETHDRSZ of the fd. */
  get vnetHdrSize(): number {
    return native.tapGetVnetHdrSize(this.handle);
  }

  /** TUNGETIFF of the fd: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR ... */
  get iff(): { name: string; flags: number } {
    return native.tapGetIff(this.handle);
  }

  /** Closes the fd, deletes the link, restores the NIC's MAC (passthru). Idempotent. */
  override close(): void {
    if (this.#released) return;
    this.#released = true;
    super.close();
    try {
      try {
        this.#rtnl.deleteLink(this.name);
      } catch (err) {
        if ((err as VhostError).code !== 'ENODEV') throw err;
      }
      if (this.#restoreMac && this.#rtnl.getLink(this.lower).mac !== this.#restoreMac) this.#rtnl.setMac(this.lower, this.#restoreMac);
    } finally {
      this.#rtnl.close();
    }
  }
}

/** The kernel refuses a second passthru (or passthru next to other macvlans) with EINVAL; say why. */
function claimError(rtnl: Rtnl, err: unknown, lower: LinkInfo): unknown {
  if (!(err instanceof VhostError) || err.code !== 'EINVAL') return err;
  const uppers = rtnl.listLinks().filter((l) => l.parent === lower.index && (l.kind === 'macvtap' || l.kind === 'macvlan'));
  if (uppers.length === 0) return err;
  const holder = uppers.find((l) => l.macvlanMode === 'passthru');
  const why = holder
    ? `is already dedicated to a VM (macvtap passthru '${holder.name}'); release that first`
    : `already has macvlan/macvtap links (${uppers.map((l) => l.name).join(', ')}); passthru needs the NIC to itself`;
  return new VhostError(`EBUSY: NIC '${lower.name}' ${why}`, {
    code: 'EBUSY', errno: -16, syscall: err.syscall, path: lower.name, hint: `the kernel answered ${err.code}`,
  });
}
