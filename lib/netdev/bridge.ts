// An inter-VM network: a Linux bridge whose ports are the VMs' taps. A tap
// gets the bridge's MTU before it joins (a port with a smaller MTU would
// pull the bridge down to it) and, like libvirt does, the guest's MAC with
// the first byte 0xFE, so the bridge never takes a tap's address as its own
// and the host side of the tap is never confused with the guest.
import '../core/dispose';
import { checkBool, checkObject } from '../core/check';
import { Rtnl, validateLinkMtu, type Link, type LinkRef } from './links';
import { checkAdvisedMtu, parseMac, validateLinkName } from './tap';

/** libvirt's rule for the host side of a guest NIC: the guest MAC with the first byte 0xFE. */
export function tapMacFor(guestMac: string | Uint8Array): Uint8Array {
  const mac = parseMac(guestMac, 'guestMac');
  mac[0] = 0xfe;
  return mac;
}

/** Options of bridge(). */
export interface BridgeOptions {
  /** Bridge MTU (68..65535); ports get it before they join. Default: the kernel's (1500). */
  mtu?: number;
  /** Bring the bridge up (default true). */
  up?: boolean;
}

/** Options of Bridge.attach(). */
export interface AttachOptions {
  /** The guest's MAC; the tap gets it with the first byte 0xFE (libvirt's rule). */
  guestMac?: string | Uint8Array;
}

function portName(port: LinkRef): string {
  return validateLinkName(typeof port === 'string' ? port : port?.name, 'tap');
}

/** A bridge created by bridge(). Dispose deletes it (its ports are released by the kernel). */
export class Bridge implements Disposable {
  readonly name: string;
  readonly #rtnl: Rtnl;
  readonly #link: Link;

  /** @internal Use bridge(). */
  constructor(rtnl: Rtnl, link: Link) {
    this.#rtnl = rtnl;
    this.#link = link;
    this.name = link.name;
  }

  /** The bridge MTU as the kernel reports it. */
  get mtu(): number {
    return this.#rtnl.getLink(this.name).mtu;
  }

  /** Names of the links that are ports of this bridge now. */
  get ports(): string[] {
    const index = this.#rtnl.getLink(this.name).index;
    return this.#rtnl.listLinks().filter((l) => l.master === index).map((l) => l.name);
  }

  /**
   * Makes a tap a port: MTU = the bridge's, then MAC = guestMac with 0xFE
   * first (when given), then master, then up, in that order.
   */
  attach(tap: LinkRef, opts: AttachOptions = {}): void {
    const name = portName(tap);
    const mac = opts.guestMac === undefined ? undefined : tapMacFor(opts.guestMac);
    this.#rtnl.setMtu(name, this.mtu);
    if (mac) this.#rtnl.setMac(name, mac);
    this.#rtnl.setMaster(name, this.name);
    this.#rtnl.setUp(name, true);
  }

  /** Releases a tap from the bridge. */
  detach(tap: LinkRef): void {
    this.#rtnl.setMaster(portName(tap), null);
  }

  /** Refuses (ERR_VHOST_OUT_OF_RANGE) an advised guest MTU above this bridge's MTU. */
  checkAdvisedMtu(mtu: number): void {
    checkAdvisedMtu(mtu, this.mtu);
  }

  /** Deletes the bridge and closes its route socket. Idempotent. */
  close(): void {
    if (this.#rtnl.closed) return;
    try {
      this.#link.delete();
    } finally {
      this.#rtnl.close();
    }
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Creates bridge `name` (EEXIST if it exists), sets its MTU and brings it up. Nothing is left behind on failure. */
export function bridge(name: string, opts: BridgeOptions = {}): Bridge {
  validateLinkName(name);
  checkObject(opts, 'options');
  const mtu = opts.mtu === undefined ? undefined : validateLinkMtu(opts.mtu);
  const up = opts.up === undefined || checkBool(opts.up, 'up', null);
  const rtnl = Rtnl.open();
  let link: Link | undefined;
  try {
    link = rtnl.createBridge(name, { mtu });
    if (up) rtnl.setUp(name, true);
    return new Bridge(rtnl, link);
  } catch (err) {
    try {
      link?.delete();
    } finally {
      rtnl.close();
    }
    throw err;
  }
}
