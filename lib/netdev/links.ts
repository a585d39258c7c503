// Network links through rtnetlink: create, delete, list and look up bridges,
// veth pairs and macvtaps; set master, MTU, MAC, up/down; move a link into a
// network namespace. Encoding lives in netlink.ts; the addon only exchanges
// the bytes. Errors keep the kernel's code (EEXIST, ENODEV, EBUSY, EPERM,
// EOPNOTSUPP) and carry the link name as `.path`.
import '../core/dispose';
import { checkOneOf, oneOfList } from '../core/check';
import { invalidArg, VhostError, withHint, type Hints } from '../core/errors';
import { FdOwner } from '../core/fd';
import { native, type OwnedFd } from '../core/native';
import {
  attrBytes, attrNested, attrString, attrU32, decodeAttrs, decodeLinkMessage, encodeAttrs, encodeIfInfoMsg, encodeMessage,
  findAttr, ifla, iflaInfo, iflaMacvlan, macvlanMode, nlmsgFlags, nlmsgType, readString, readU32, VETH_INFO_PEER,
  type NlAttr,
} from './netlink';
import { currentMark, formatMark } from './creator';
import { formatMac, linkFlags, parseMac, validateLinkName, validateMtu, type Tap } from './tap';

/** macvtap / macvlan modes (enum macvlan_mode). */
export type MacvtapMode = 'bridge' | 'vepa' | 'private' | 'passthru';
const MODES: readonly MacvtapMode[] = ['bridge', 'vepa', 'private', 'passthru'];

/** A link as the kernel reports it (RTM_NEWLINK reply). */
export interface LinkInfo {
  index: number;
  name: string;
  /** IFLA_INFO_KIND: 'bridge', 'veth', 'macvtap', 'tun' ...; undefined for physical NICs and lo. */
  kind?: string;
  mtu: number;
  /** IFLA_ADDRESS as 'aa:bb:cc:dd:ee:ff' (undefined when the link has none). */
  mac?: string;
  /** ifi_flags: linkFlags.IFF_UP, IFF_RUNNING ... */
  flags: number;
  up: boolean;
  /** IFLA_MASTER: ifindex of the bridge this link is a port of. */
  master?: number;
  /** IFLA_LINK: ifindex of the lower link (macvtap) or the veth peer. */
  parent?: number;
  /** IFLA_MACVLAN_MODE of a macvtap / macvlan. */
  macvlanMode?: MacvtapMode;
  /** IFLA_IFALIAS (`ip link set … alias`); the library's creator mark on links it made (netdev/creator.ts). */
  alias?: string;
}

/** Anything that names a link: its name, or a Tap / Link / Macvtap object. */
export type LinkRef = string | { readonly name: string };

function refName(ref: LinkRef, arg = 'link'): string {
  if (typeof ref === 'object' && ref !== null && typeof ref.name === 'string') return validateLinkName(ref.name, arg);
  return validateLinkName(ref, arg);
}

/** Checks an MTU in 68..65535 (the kernel then applies each link's own min/max). */
export function validateLinkMtu(mtu: unknown, arg = 'mtu'): number {
  return validateMtu(mtu, arg);
}

function parseLink(payload: Uint8Array): LinkInfo {
  const { ifi, attrs } = decodeLinkMessage(payload);
  const at = (t: number) => findAttr(attrs, t);
  const info: LinkInfo = {
    index: ifi.index,
    name: at(ifla.IFNAME) ? readString(at(ifla.IFNAME)!) : '',
    mtu: at(ifla.MTU) ? readU32(at(ifla.MTU)!) : 0,
    flags: ifi.flags,
    up: (ifi.flags & linkFlags.IFF_UP) !== 0,
  };
  const address = at(ifla.ADDRESS);
  if (address && address.data.length === 6) info.mac = formatMac(address.data);
  if (at(ifla.MASTER)) info.master = readU32(at(ifla.MASTER)!);
  if (at(ifla.LINK)) info.parent = readU32(at(ifla.LINK)!);
  const alias = at(ifla.IFALIAS);
  if (alias && alias.data.length > 0) info.alias = readString(alias);
  const linkinfo = at(ifla.LINKINFO);
  if (linkinfo) {
    const nested = decodeAttrs(linkinfo.data);
    const kind = findAttr(nested, iflaInfo.KIND);
    if (kind) info.kind = readString(kind);
    const data = findAttr(nested, iflaInfo.DATA);
    if (data && (info.kind === 'macvtap' || info.kind === 'macvlan')) {
      const mode = findAttr(decodeAttrs(data.data), iflaMacvlan.MODE);
      if (mode) {
        const value = readU32(mode);
        info.macvlanMode = MODES.find((m) => macvlanMode[m] === value);
      }
    }
  }
  return info;
}

/** Options common to every link created here. */
export interface CreateLinkOptions {
  mtu?: number;
  mac?: string | Uint8Array;
}

/**
 * A NETLINK_ROUTE socket: the door to link configuration, in this process's
 * network namespace or (Rtnl.open(netns)) in another one. Owns its fd.
 */
/** What rtnetlink's refusals mean: changing links needs CAP_NET_ADMIN (in the namespace's user namespace); a kind the kernel lacks is a module not loaded. */
const NETLINK_HINTS: Hints = {
  EPERM: (err) => `${err.syscall ?? 'netlink'} needs CAP_NET_ADMIN: run as root or grant the process CAP_NET_ADMIN`,
  EOPNOTSUPP: 'the kernel lacks this link type: load its module (bridge, veth, macvtap, tun), or check CONFIG_* of your kernel',
};
/** Opening a socket inside another network namespace (setns) needs CAP_SYS_ADMIN. */
const SETNS_HINTS: Hints = {
  EPERM: 'entering another network namespace (setns) needs CAP_SYS_ADMIN: run as root',
};

export class Rtnl extends FdOwner {
  #seq = 1;

  private constructor(handle: OwnedFd) {
    super(handle);
  }

  /** Opens a route socket; with `netns` (a NetNs or its fd owner) the socket lives in that namespace. */
  static open(netns?: FdOwner): Rtnl {
    if (netns !== undefined && !(netns instanceof FdOwner)) throw invalidArg('netns', 'must be a NetNs (an FdOwner) or undefined');
    try {
      return new Rtnl(native.netlinkOpen(netns ? netns.nativeHandle : null));
    } catch (err) {
      throw withHint(err, netns ? SETNS_HINTS : NETLINK_HINTS);
    }
  }

  /** Sends one request; returns the decoded link messages of the reply. `path` names the link in errors. */
  private request(type: number, flags: number, ifi: Parameters<typeof encodeIfInfoMsg>[0], attrs: NlAttr[], path: string): LinkInfo[] {
    const seq = this.#seq;
    this.#seq = (this.#seq % 0xffffffff) + 1;
    const msg = encodeMessage({ type, flags: flags | nlmsgFlags.NLM_F_REQUEST, seq, body: encodeIfInfoMsg(ifi), attrs });
    let replies: Buffer[];
    try {
      replies = native.netlinkRequest(this.handle, msg, path);
    } catch (err) {
      throw withHint(err, NETLINK_HINTS);
    }
    return replies
      .filter((b) => b.readUInt16LE(4) === nlmsgType.RTM_NEWLINK)
      .map((b) => parseLink(b.subarray(16)));
  }

  private set(name: string, ifi: Parameters<typeof encodeIfInfoMsg>[0], attrs: NlAttr[]): void {
    this.request(nlmsgType.RTM_SETLINK, nlmsgFlags.NLM_F_ACK, ifi, [attrString(ifla.IFNAME, name), ...attrs], name);
  }

  /** Every link in this socket's namespace (RTM_GETLINK dump). */
  listLinks(): LinkInfo[] {
    return this.request(nlmsgType.RTM_GETLINK, nlmsgFlags.NLM_F_DUMP, {}, [], '');
  }

  /** One link by name or ifindex; ENODEV (with .path) when there is none. */
  getLink(link: LinkRef | number): LinkInfo {
    if (typeof link === 'number') {
      if (!Number.isInteger(link) || link <= 0 || link > 0x7fffffff) throw invalidArg('link', 'ifindex must be a positive integer');
      return this.request(nlmsgType.RTM_GETLINK, 0, { index: link }, [], `ifindex ${link}`)[0];
    }
    const name = refName(link);
    return this.request(nlmsgType.RTM_GETLINK, 0, {}, [attrString(ifla.IFNAME, name)], name)[0];
  }

  /** One link by name, or undefined when it does not exist. */
  findLink(link: LinkRef): LinkInfo | undefined {
    try {
      return this.getLink(link);
    } catch (err) {
      if ((err as VhostError).code === 'ENODEV') return undefined;
      throw err;
    }
  }

  /** RTM_NEWLINK with NLM_F_CREATE | NLM_F_EXCL: EEXIST when the name is taken. */
  private create(name: string, kind: string, opts: CreateLinkOptions, extra: { data?: NlAttr[]; attrs?: NlAttr[] } = {}): Link {
    const attrs: NlAttr[] = [attrString(ifla.IFNAME, name), ...(extra.attrs ?? [])];
    if (opts.mtu !== undefined) attrs.push(attrU32(ifla.MTU, validateLinkMtu(opts.mtu)));
    if (opts.mac !== undefined) attrs.push(attrBytes(ifla.ADDRESS, parseMac(opts.mac)));
    const linkinfo: NlAttr[] = [attrString(iflaInfo.KIND, kind)];
    if (extra.data) linkinfo.push(attrNested(iflaInfo.DATA, extra.data));
    attrs.push(attrNested(ifla.LINKINFO, linkinfo));
    const flags = nlmsgFlags.NLM_F_ACK | nlmsgFlags.NLM_F_CREATE | nlmsgFlags.NLM_F_EXCL;
    this.request(nlmsgType.RTM_NEWLINK, flags, {}, attrs, name);
    // A '%d' template is resolved by the kernel: the caller marks the link once it knows the name.
    if (!name.includes('%')) this.markCreated(name);
    return new Link(this, name);
  }

  /**
   * Writes this process's creator mark into the alias of a link it just made
   * (netdev/creator.ts), so cleanupOrphans() can remove it once this process
   * is gone. RTM_NEWLINK does not take IFLA_IFALIAS, hence a second request; a
   * failure deletes the link (an unmarked link would outlive a crash unseen).
   */
  markCreated(link: LinkRef): void {
    const name = refName(link);
    try {
      this.setAlias(name, formatMark(currentMark()));
    } catch (err) {
      try {
        this.deleteLink(name);
      } catch {
        // the mark's error is the one to report
      }
      throw err;
    }
  }

  /** Sets the link alias (IFLA_IFALIAS, at most 255 bytes); '' clears it. */
  setAlias(link: LinkRef, alias: string): void {
    const name = refName(link);
    if (typeof alias !== 'string' || Buffer.byteLength(alias) > 255 || alias.includes('\0')) throw invalidArg('alias', 'must be a string of at most 255 bytes without NUL');
    this.set(name, {}, [attrString(ifla.IFALIAS, alias)]);
  }

  /** Creates a bridge. With `mtu`, it is set after creation so the kernel treats it as chosen by the user and keeps it when ports join. */
  createBridge(name: string, opts: CreateLinkOptions = {}): Link {
    validateLinkName(name);
    const mtu = opts.mtu === undefined ? undefined : validateLinkMtu(opts.mtu);
    const mac = opts.mac === undefined ? undefined : parseMac(opts.mac);
    const link = this.create(name, 'bridge', { mac });
    try {
      if (mtu !== undefined) this.setMtu(name, mtu);
      return link;
    } catch (err) {
      link.delete();
      throw err;
    }
  }

  /** Creates a veth pair `name` ⇄ `peer`; the peer can be created directly in another namespace. Disposing the Link deletes both ends. */
  createVeth(name: string, peer: string, opts: CreateLinkOptions & { peerNetns?: FdOwner } = {}): Link {
    validateLinkName(name);
    validateLinkName(peer, 'peer');
    if (opts.peerNetns !== undefined && !(opts.peerNetns instanceof FdOwner)) throw invalidArg('peerNetns', 'must be a NetNs');
    const peerAttrs: NlAttr[] = [attrString(ifla.IFNAME, peer)];
    if (opts.mtu !== undefined) peerAttrs.push(attrU32(ifla.MTU, validateLinkMtu(opts.mtu)));
    if (opts.peerNetns) peerAttrs.push(attrU32(ifla.NET_NS_FD, opts.peerNetns.fd));
    // VETH_INFO_PEER holds an ifinfomsg followed by the peer's own attributes.
    const peerData = Buffer.concat([encodeIfInfoMsg(), encodeAttrs(peerAttrs)]);
    return this.create(name, 'veth', opts, { data: [attrBytes(VETH_INFO_PEER, peerData)] });
  }

  /** Creates a macvtap on `lower` in the given mode; /dev/tap<ifindex> appears for it (see Macvtap for the fd side). */
  createMacvtap(name: string, lower: LinkRef, mode: MacvtapMode, opts: CreateLinkOptions = {}): Link {
    validateLinkName(name);
    const lowerName = refName(lower, 'lower');
    const m = checkOneOf(mode, 'mode', MODES, null, oneOfList);
    const lowerIndex = this.getLink(lowerName).index;
    return this.create(name, 'macvtap', opts, {
      attrs: [attrU32(ifla.LINK, lowerIndex)],
      data: [attrU32(iflaMacvlan.MODE, macvlanMode[m])],
    });
  }

  /** RTM_DELLINK; ENODEV when it does not exist. */
  deleteLink(link: LinkRef): void {
    const name = refName(link);
    this.request(nlmsgType.RTM_DELLINK, nlmsgFlags.NLM_F_ACK, {}, [attrString(ifla.IFNAME, name)], name);
  }

  /** Makes `link` a port of bridge `master`, or (null) releases it from its master. */
  setMaster(link: LinkRef, master: LinkRef | null): void {
    const name = refName(link);
    const index = master === null ? 0 : this.getLink(refName(master, 'master')).index;
    this.set(name, {}, [attrU32(ifla.MASTER, index)]);
  }

  /** Sets the link MTU (68..65535 here; the kernel enforces the link's own range). */
  setMtu(link: LinkRef, mtu: number): void {
    const name = refName(link);
    this.set(name, {}, [attrU32(ifla.MTU, validateLinkMtu(mtu))]);
  }

  /** Sets the link MAC (unicast, not all zero). */
  setMac(link: LinkRef, mac: string | Uint8Array): void {
    const name = refName(link);
    this.set(name, {}, [attrBytes(ifla.ADDRESS, parseMac(mac))]);
  }

  /** Brings the link up or down (IFF_UP in ifi_flags, masked by ifi_change). */
  setUp(link: LinkRef, up: boolean): void {
    const name = refName(link);
    if (typeof up !== 'boolean') throw invalidArg('up', 'must be a boolean');
    this.set(name, { flags: up ? linkFlags.IFF_UP : 0, change: linkFlags.IFF_UP }, []);
  }

  /** Moves the link into the network namespace `netns` (IFLA_NET_NS_FD); it leaves this socket's namespace. */
  moveToNetns(link: LinkRef, netns: FdOwner): void {
    const name = refName(link);
    if (!(netns instanceof FdOwner)) throw invalidArg('netns', 'must be a NetNs');
    this.set(name, {}, [attrU32(ifla.NET_NS_FD, netns.fd)]);
  }
}

/**
 * A link created through an Rtnl. Disposing it deletes the link (a veth pair
 * goes with either end); a link already gone (moved away or deleted) is fine.
 */
export class Link implements Disposable {
  readonly name: string;
  readonly #rtnl: Rtnl;
  #deleted = false;

  /** @internal Created by Rtnl.create*. */
  constructor(rtnl: Rtnl, name: string) {
    this.#rtnl = rtnl;
    this.name = name;
  }

  /** The link as the kernel reports it now. */
  get info(): LinkInfo {
    return this.#rtnl.getLink(this.name);
  }

  /** Deletes the link; idempotent, and quiet when the kernel already removed it (ENODEV). */
  delete(): void {
    if (this.#deleted) return;
    this.#deleted = true;
    try {
      this.#rtnl.deleteLink(this.name);
    } catch (err) {
      if ((err as VhostError).code !== 'ENODEV') throw err;
    }
  }

  /** Same as delete(), for `using`. */
  [Symbol.dispose](): void {
    this.delete();
  }
}

/**
 * Multiqueue: makes the first `pairs` queues of a multi-queue tap active and
 * detaches the rest (TUNSETQUEUE), as a guest changes its number of queue
 * pairs. Queues already in the wanted state are left alone.
 */
export function setActiveQueuePairs(tap: Tap, pairs: number): void {
  const count = tap.queues.length;
  if (!Number.isInteger(pairs) || pairs < 1 || pairs > count) throw invalidArg('pairs', `must be an integer in 1..${count} (the tap's queues)`, 'ERR_VHOST_OUT_OF_RANGE');
  tap.queues.forEach((q, i) => {
    try {
      if (i < pairs) q.attach();
      else q.detach();
    } catch (err) {
      // The kernel answers EINVAL for attaching an attached queue or detaching a detached one.
      if ((err as VhostError).code !== 'EINVAL') throw err;
    }
  });
}
