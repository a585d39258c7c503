// NetSwitch: a learning Ethernet switch between NIC-like ports in this
// process: VhostUserNet ports (real guests over vhost-user) and VirtioNetGuest
// ports (a tap on the host), which share send() and 'frame'. It learns which
// port each source MAC lives behind, forwards unicast to that port and floods
// broadcast, multicast and unknown destinations to every other port. Frames
// a port cannot take now are queued or dropped by the port (its backpressure).
import { invalidArg } from '../core/errors';
import { formatMac } from '../netdev/tap';

/** What the switch needs of a port: send frames to it, hear frames from it. */
export interface NetSwitchPort {
  send(frame: Uint8Array): boolean;
  on(event: 'frame', listener: (frame: Buffer) => void): unknown;
  off(event: 'frame', listener: (frame: Buffer) => void): unknown;
}

/** Most MACs the switch remembers; past it, the oldest is forgotten (a guest spraying source MACs cannot grow it). */
export const NET_SWITCH_MAX_MACS = 4096;

/** Counters of a NetSwitch. */
export interface NetSwitchStats {
  /** Frames sent to one learned port. */
  forwarded: number;
  /** Frames sent to every other port (broadcast, multicast, unknown unicast). */
  flooded: number;
  /** Frames whose destination is the port they came from (not sent back). */
  filtered: number;
}

/** A learning switch between ports; attach() them, close() detaches all. */
export class NetSwitch {
  readonly stats: NetSwitchStats = { forwarded: 0, flooded: 0, filtered: 0 };
  readonly #ports = new Map<NetSwitchPort, (frame: Buffer) => void>();
  readonly #macs = new Map<string, NetSwitchPort>();

  /** Connects `port`: frames it emits are switched to the others. */
  attach(port: NetSwitchPort): void {
    if (port === null || typeof port !== 'object' || typeof port.send !== 'function' || typeof port.on !== 'function') {
      throw invalidArg('port', 'must have send(frame) and emit \'frame\' (a VhostUserNet or a VirtioNetGuest)');
    }
    if (this.#ports.has(port)) return;
    const listener = (frame: Buffer): void => this.#switch(port, frame);
    this.#ports.set(port, listener);
    port.on('frame', listener);
  }

  /** Disconnects `port` and forgets the MACs learned behind it. */
  detach(port: NetSwitchPort): void {
    const listener = this.#ports.get(port);
    if (!listener) return;
    port.off('frame', listener);
    this.#ports.delete(port);
    for (const [mac, p] of this.#macs) if (p === port) this.#macs.delete(mac);
  }

  /** The MACs learned, with the index of their port in attach order. */
  get table(): Record<string, number> {
    const ports = [...this.#ports.keys()];
    return Object.fromEntries([...this.#macs].map(([mac, p]) => [mac, ports.indexOf(p)]));
  }

  #switch(from: NetSwitchPort, frame: Buffer): void {
    if (frame.length < 14) return;
    const src = frame.subarray(6, 12);
    if (!(src[0] & 1)) {
      const key = formatMac(src);
      if (this.#macs.get(key) !== from) {
        this.#macs.delete(key);
        if (this.#macs.size >= NET_SWITCH_MAX_MACS) this.#macs.delete(this.#macs.keys().next().value!);
        this.#macs.set(key, from);
      }
    }
    const to = frame[0] & 1 ? undefined : this.#macs.get(formatMac(frame.subarray(0, 6)));
    if (to === from) {
      this.stats.filtered++;
    } else if (to !== undefined) {
      this.stats.forwarded++;
      to.send(frame);
    } else {
      this.stats.flooded++;
      for (const port of this.#ports.keys()) if (port !== from) port.send(frame);
    }
  }

  /** Detaches every port. */
  close(): void {
    for (const port of [...this.#ports.keys()]) this.detach(port);
  }
}
