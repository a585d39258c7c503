// An inter-VM network: a Linux bridge whose ports are the VMs' taps. A tap
// gets the bridge's MTU before it joins (a port with a smaller MTU would
// pull the bridge down to it) and, like libvirt does, the guest's MAC with
// the first byte 0xFE, so the host side of the tap is never confused with
// the guest.
//
// The bridge gets an address of its own at creation. Left unset, the kernel
// gives a bridge the lowest address among its ports and changes it whenever
// that port leaves; with only taps attached that is a tap's 0xFE address, so
// the 0xFE rule alone does not keep the bridge stable, and every change
// leaves the host's neighbours with a stale entry for the bridge's IP. An
// address given at creation is "set by the user" for the kernel
// (addr_assign_type 3, NET_ADDR_SET), and the bridge keeps it whatever ports
// come and go.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import '../core/dispose';
import { checkBool, checkObject } from '../core/check';
import { Rtnl, validateLinkMtu, type Link, type LinkRef } from './links';
import { checkAdvisedMtu, formatMac, parseMac, validateLinkName } from './tap';

/** libvirt's rule for the host side of a guest NIC: the guest MAC with the first byte 0xFE. */
export function tapMacFor(guestMac: string | Uint8Array): Uint8Array {
  const mac = parseMac(guestMac, 'guestMac');
  mac[0] = 0xfe;
  return mac;
}

/** Where systemd (or dbus) keeps this host's stable identity. */
const MACHINE_ID_FILES = ['/etc/machine-id', '/var/lib/dbus/machine-id'];

/** This host's machine id, or '' when it has none. */
function machineId(): string {
  for (const file of MACHINE_ID_FILES) {
    try {
      const id = fs.readFileSync(file, 'utf8').trim();
      if (id) return id;
    } catch {
      // try the next one
    }
  }
  return '';
}

/**
 * The address bridge() gives bridge `name`: the first 6 bytes of
 * SHA-256('linux-vhost bridge', machine id, name), made unicast and locally
 * administered (first byte: bit 0 clear, bit 1 set), so it can never equal a
 * NIC's vendor address. Derived rather than random, so a control plane that
 * restarts and makes the bridge again gets the same address and the
 * neighbours' entries stay right; the machine id keeps two hosts' 'vmbr0'
 * apart on a shared segment. A first byte of 0xFE (the taps' rule) becomes
 * 0xFA so the bridge never shares the taps' space. Without a machine id the
 * name alone is hashed.
 */
export function bridgeMacFor(name: string, host: string = machineId()): string {
  validateLinkName(name);
  const h = createHash('sha256').update('linux-vhost bridge\0').update(host).update('\0').update(name).digest();
  const mac = Uint8Array.from(h.subarray(0, 6));
  mac[0] = (mac[0] & 0xfc) | 0x02;
  if (mac[0] === 0xfe) mac[0] = 0xfa;
  return formatMac(mac);
}

/** Options of bridge(). */
export interface BridgeOptions {
  /** Bridge MTU (68..65535); ports get it before they join. Default: the kernel's (1500). */
  mtu?: number;
  /** The bridge's own address, kept through port changes. Default: bridgeMacFor(name). */
  mac?: string | Uint8Array;
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

  /** The bridge's address as the kernel reports it ('aa:bb:cc:dd:ee:ff'). */
  get mac(): string {
    return this.#rtnl.getLink(this.name).mac ?? '';
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

/**
 * Creates bridge `name` (EEXIST if it exists) with its own address (`mac`,
 * default bridgeMacFor(name)), sets its MTU and brings it up. Nothing is left
 * behind on failure.
 */
export function bridge(name: string, opts: BridgeOptions = {}): Bridge {
  validateLinkName(name);
  checkObject(opts, 'options');
  const mtu = opts.mtu === undefined ? undefined : validateLinkMtu(opts.mtu);
  const mac = opts.mac === undefined ? bridgeMacFor(name) : parseMac(opts.mac);
  const up = opts.up === undefined || checkBool(opts.up, 'up', null);
  const rtnl = Rtnl.open();
  let link: Link | undefined;
  try {
    link = rtnl.createBridge(name, { mtu, mac });
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
