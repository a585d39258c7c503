// A driver and a device over one memfd, the way a vhost-user back-end meets
// its front-end: the driver side is this library's Virtqueue over a
// GuestMemory; the device side maps the same memfd a second time
// (DeviceMemory) and addresses the rings by the driver's virtual addresses.
import { EventFd } from '../../lib/core/eventfd';
import { GuestMemory } from '../../lib/core/memory';
import { DeviceMemory } from '../../lib/virtio/device-memory';
import { DeviceQueue, type DeviceQueueOptions } from '../../lib/virtio/device-queue';
import { placeVirtqueue, Virtqueue } from '../../lib/virtio/virtqueue';

export const REGION_GPA = 0x100000n;
export const REGION_SIZE = 1n << 20n;
/** Buffers live from here on (rings sit at the region's start). */
export const BUFS = REGION_GPA + 0x80000n;

export interface RingPair {
  mem: GuestMemory;
  driver: Virtqueue;
  kick: EventFd;
  device: DeviceMemory;
  queue: DeviceQueue;
  ring: { desc: bigint; avail: bigint; used: bigint };
  /** The driver's (front-end's) virtual address of a guest-physical address. */
  userAddr(gpa: bigint): bigint;
  /** A new DeviceQueue over the same ring (e.g. resumed at `base`). */
  reopen(extra?: Partial<DeviceQueueOptions>): DeviceQueue;
  close(): void;
}

export function ringPair(o: { size?: number; eventIdx?: boolean; indirect?: boolean } = {}): RingPair {
  const size = o.size ?? 256;
  const eventIdx = o.eventIdx ?? true;
  const indirect = o.indirect ?? false;
  const mem = GuestMemory.create({ regions: [{ gpa: REGION_GPA, size: REGION_SIZE }] });
  const region = mem.regions[0];
  const ring = placeVirtqueue(size, REGION_GPA, { indirect });
  const kick = EventFd.create();
  const driver = Virtqueue.create({ memory: mem, size, desc: ring.desc, avail: ring.avail, used: ring.used, kick, eventIdx, indirect });
  const device = DeviceMemory.map([{ fd: region.fd, gpa: region.gpa, size: region.size, userAddr: region.hva, mmapOffset: 0n }]);
  const userAddr = (gpa: bigint): bigint => region.hva + (gpa - region.gpa);
  const reopen = (extra: Partial<DeviceQueueOptions> = {}): DeviceQueue =>
    new DeviceQueue(device, { size, desc: userAddr(ring.desc), avail: userAddr(ring.avail), used: userAddr(ring.used), eventIdx, indirect, ...extra });
  const queue = reopen();
  return {
    mem, driver, kick, device, queue, ring, userAddr, reopen,
    close() {
      queue.close();
      driver.close();
      device.close();
      kick.close();
      mem.close();
    },
  };
}

/** Bytes 0..n-1 shifted by seed (a pattern a test can recognise). */
export function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
}
