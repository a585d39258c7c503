// The Node side of `npm run bench`: one bring-up + teardown cycle of a
// vhost-net or vhost-vsock device per call, through the low-level API (the
// same ioctl sequence as bench/bringup.c, in the same order) and through the
// builders. bench/run.js times them; nothing here measures anything.
//
// Both sides make the guest memory once (1 MiB memfd, outside the timed
// loop) and open everything else inside: tap, four eventfds, device fd.
import * as fs from 'node:fs';
import { EventFd } from '../lib/core/eventfd';
import { features } from '../lib/core/features';
import { GuestMemory } from '../lib/core/memory';
import { Tap } from '../lib/netdev/tap';
import { VhostNet } from '../lib/vhost/net';
import { VhostVsock } from '../lib/vhost/vsock';
import type { VhostDevice } from '../lib/vhost/kernel/vhost-device';
import { layoutSplitRing, type SplitRingLayout } from '../lib/virtio/vring';

export const MEM_SIZE = 1 << 20;
export const QUEUE_SIZE = 256;
/** Queue q's ring sits at guest-physical q * 64 KiB (as in bringup.c). */
const RING_STRIDE = 0x10000n;

export type Device = 'net' | 'vsock';

/** What every cycle shares: memory, ring layout, and the per-variant tap name / CID. */
export interface Rig {
  mem: GuestMemory;
  rings: SplitRingLayout[];
  tapName: string;
  cid: number;
}

export function createRig(tapName: string, cid: number): Rig {
  const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: MEM_SIZE }], name: 'linux-vhost-bench' });
  const rings = [0n, 1n].map((q) => layoutSplitRing(QUEUE_SIZE, q * RING_STRIDE));
  return { mem, rings, tapName, cid };
}

/** Fails the bench: a cycle did not do what it should (not a timing matter). */
function check(cond: boolean, what: string): void {
  if (!cond) throw new Error(`bench: ${what}`);
}

function openEventFds(): { kick: EventFd[]; call: EventFd[] } {
  const kick: EventFd[] = [];
  const call: EventFd[] = [];
  for (let q = 0; q < 2; q++) {
    kick.push(EventFd.create());
    call.push(EventFd.create());
  }
  return { kick, call };
}

function closeAll(...owners: { close(): void }[][]): void {
  for (const list of owners) for (const o of list) o.close();
}

/** Owner, features (VERSION_1 if offered), memory table, then NUM/BASE/ADDR/KICK/CALL per queue. */
function setupDevice(dev: VhostDevice, rig: Rig, kick: EventFd[], call: EventFd[]): void {
  dev.setOwner();
  const offered = dev.getFeatures();
  dev.setFeatures(offered & features.ring.VERSION_1);
  dev.setMemTable(rig.mem);
  for (let q = 0; q < 2; q++) {
    const ring = rig.rings[q];
    dev.setVringNum(q, QUEUE_SIZE);
    dev.setVringBase(q, 0);
    dev.setVringAddr(q, { desc: rig.mem.translate(ring.desc), avail: rig.mem.translate(ring.avail), used: rig.mem.translate(ring.used) });
    dev.setVringKick(q, kick[q]);
    dev.setVringCall(q, call[q]);
  }
}

function checkBases(dev: VhostDevice): void {
  for (let q = 0; q < 2; q++) {
    const base = dev.getVringBase(q);
    check(base === 0, `queue ${q} base ${base} after stop, expected 0`);
  }
}

/** vhost-net, low-level: tap, eventfds, device, both backends attached, then stopped and closed. */
export function netLowLevel(rig: Rig): void {
  const tap = Tap.create({ name: rig.tapName });
  const { kick, call } = openEventFds();
  const net = VhostNet.open();
  try {
    setupDevice(net, rig, kick, call);
    net.setBackend(0, tap);
    net.setBackend(1, tap);
    // stop: detach both backends, then read the bases back
    net.setBackend(0, null);
    net.setBackend(1, null);
    checkBases(net);
  } finally {
    net.close();
    tap.close();
    closeAll(kick, call);
  }
}

/** vhost-vsock, low-level: eventfds, device, CID, running, then stopped and closed. */
export function vsockLowLevel(rig: Rig): void {
  const { kick, call } = openEventFds();
  const vsock = VhostVsock.open();
  try {
    setupDevice(vsock, rig, kick, call);
    vsock.setGuestCid(rig.cid);
    vsock.setRunning(true);
    // stop: SET_RUNNING 0, then read the bases back
    vsock.setRunning(false);
    checkBases(vsock);
  } finally {
    vsock.close();
    closeAll(kick, call);
  }
}

/** The queue specs a builder gets: guest-physical ring addresses (it translates them itself). */
function queueSpec(rig: Rig, q: number, kick: EventFd[], call: EventFd[]) {
  const ring = rig.rings[q];
  return { size: QUEUE_SIZE, desc: ring.desc, avail: ring.avail, used: ring.used, kick: kick[q], call: call[q] };
}

function checkState(state: { queues: { index: number; base: number }[] }): void {
  check(state.queues.length === 2 && state.queues.every((q) => q.base === 0), `stop() returned ${JSON.stringify(state)}, expected bases 0`);
}

/**
 * vhost-net through VhostNet.builder(): as netLowLevel, plus what start()
 * adds by design (TUNGETIFF, TUNSETVNETHDRSZ and TUNSETOFFLOAD on the tap,
 * reading max_mem_regions, validating rings against memory); stop() then close().
 */
export function netBuilder(rig: Rig): void {
  const tap = Tap.create({ name: rig.tapName });
  const { kick, call } = openEventFds();
  try {
    const net = VhostNet.builder()
      .memory(rig.mem)
      .backend(tap)
      .features(features.ring.VERSION_1)
      .queue(0, queueSpec(rig, 0, kick, call))
      .queue(1, queueSpec(rig, 1, kick, call))
      .start();
    try {
      checkState(net.stop());
    } finally {
      net.close();
    }
  } finally {
    tap.close();
    closeAll(kick, call);
  }
}

/** vhost-vsock through VhostVsock.builder() with a fixed CID (the same one each cycle); stop() then close(). */
export function vsockBuilder(rig: Rig): void {
  const { kick, call } = openEventFds();
  try {
    const vsock = VhostVsock.builder()
      .memory(rig.mem)
      .features(features.ring.VERSION_1)
      .cid(rig.cid)
      .queue(0, queueSpec(rig, 0, kick, call))
      .queue(1, queueSpec(rig, 1, kick, call))
      .start();
    try {
      check(vsock.cid === rig.cid, `builder took CID ${vsock.cid}, expected ${rig.cid}`);
      checkState(vsock.stop());
    } finally {
      vsock.close();
    }
  } finally {
    closeAll(kick, call);
  }
}

/** The builder cycles, or null while lib/ has no builders. */
export function builderCycles(): { net: (rig: Rig) => void; vsock: (rig: Rig) => void } | null {
  const has = (cls: object) => typeof (cls as { builder?: unknown }).builder === 'function';
  return has(VhostNet) && has(VhostVsock) ? { net: netBuilder, vsock: vsockBuilder } : null;
}

/** Open fds of this process. */
export function fdCount(): number {
  return fs.readdirSync('/proc/self/fd').length - 1; // minus the one readdir itself opened
}
