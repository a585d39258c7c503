// Bringing a vhost-user device up over its rings, in the order QEMU's
// vhost_dev_start uses: SET_OWNER, SET_FEATURES, SET_MEM_TABLE, then per ring
// NUM, BASE, ADDR, KICK, CALL, and last SET_VRING_ENABLE (rings start disabled
// when protocol features are in use). A failed message throws with .step
// naming it. Meant to fold into the transport-neutral builders (builder.ts)
// once they drive any VhostBackend; until then the vhost-user guests use this.
import type { EventFd } from '../../core/eventfd';
import type { MemoryLike } from '../backend';
import type { VhostUser } from './vhost-user';

export interface VhostUserQueueSetup {
  index: number;
  size: number;
  /** Ring addresses in this process (host virtual addresses). */
  desc: bigint;
  avail: bigint;
  used: bigint;
  kick: EventFd | null;
  call: EventFd | null;
  /** Next available index to process; default 0. */
  base?: number;
}

export interface VhostUserDeviceSetup {
  /** Virtio features to acknowledge (a subset of dev.offeredFeatures). */
  features: bigint;
  memory: MemoryLike;
  queues: readonly VhostUserQueueSetup[];
}

/** Runs the bring-up; on failure the back-end is reset (best effort) and the error rethrown. */
export function startVhostUserDevice(dev: VhostUser, setup: VhostUserDeviceSetup): void {
  try {
    dev.setOwner();
    dev.setFeatures(setup.features);
    dev.setMemTable(setup.memory.regions);
    for (const q of setup.queues) {
      dev.setVringNum(q.index, q.size);
      dev.setVringBase(q.index, q.base ?? 0);
      dev.setVringAddr(q.index, { desc: q.desc, avail: q.avail, used: q.used });
      dev.setVringKick(q.index, q.kick);
      dev.setVringCall(q.index, q.call);
    }
    if (dev.protocolFeatures !== 0n || (dev.offeredFeatures & (1n << 30n)) !== 0n) {
      for (const q of setup.queues) dev.setVringEnable(q.index, true);
    }
  } catch (err) {
    if (dev.connected) {
      try {
        dev.resetDevice();
      } catch {
        // the original error says what went wrong
      }
    }
    throw err;
  }
}
