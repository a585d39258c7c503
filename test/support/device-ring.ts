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

/** A descriptor as a hostile driver writes it. */
export interface RawDesc {
  addr: bigint;
  len: number;
  flags: number;
  next: number;
}

export const F_NEXT = 1;
export const F_WRITE = 2;
export const F_INDIRECT = 4;

/**
 * A ring whose driver is the test itself, writing whatever it likes into the
 * shared memory (descriptors, indirect tables, avail entries and index),
 * with a DeviceQueue over a second mapping of the same memfd.
 */
export class RawRing {
  readonly mem: GuestMemory;
  readonly device: DeviceMemory;
  readonly queue: DeviceQueue;
  readonly ring: { desc: bigint; avail: bigint; used: bigint };
  readonly size: number;
  availIdx: number;

  constructor(o: { size?: number; eventIdx?: boolean; indirect?: boolean; base?: number; maxReadable?: number; regionSize?: bigint } = {}) {
    this.size = o.size ?? 16;
    this.mem = GuestMemory.create({ regions: [{ gpa: REGION_GPA, size: o.regionSize ?? REGION_SIZE }] });
    const region = this.mem.regions[0];
    this.ring = placeVirtqueue(this.size, REGION_GPA);
    this.device = DeviceMemory.map([{ fd: region.fd, gpa: region.gpa, size: region.size, userAddr: region.hva, mmapOffset: 0n }]);
    this.availIdx = o.base ?? 0;
    this.dv(this.ring.avail + 2n, 2).setUint16(0, this.availIdx, true);
    this.dv(this.ring.used + 2n, 2).setUint16(0, this.availIdx, true);
    const at = (gpa: bigint) => region.hva + (gpa - region.gpa);
    this.queue = new DeviceQueue(this.device, {
      size: this.size, desc: at(this.ring.desc), avail: at(this.ring.avail), used: at(this.ring.used),
      base: o.base, eventIdx: o.eventIdx ?? true, indirect: o.indirect ?? true, maxReadable: o.maxReadable, name: 'test queue',
    });
  }

  dv(gpa: bigint, len: number): DataView {
    const v = this.mem.view(gpa, len);
    return new DataView(v.buffer, v.byteOffset, len);
  }

  /** Writes descriptor i of the table at `table` (default: the ring's descriptor table). */
  writeDesc(i: number, d: RawDesc, table = this.ring.desc): void {
    const v = this.dv(table + 16n * BigInt(i), 16);
    v.setBigUint64(0, d.addr, true);
    v.setUint32(8, d.len >>> 0, true);
    v.setUint16(12, d.flags, true);
    v.setUint16(14, d.next, true);
  }

  /** Puts heads in the avail ring and moves avail->idx by their count (or to `idx` when given). */
  publish(heads: number[], idx?: number): void {
    for (const h of heads) {
      this.dv(this.ring.avail + 4n + 2n * BigInt(this.availIdx % this.size), 2).setUint16(0, h, true);
      this.availIdx = (this.availIdx + 1) & 0xffff;
    }
    if (idx !== undefined) this.availIdx = idx & 0xffff;
    this.dv(this.ring.avail + 2n, 2).setUint16(0, this.availIdx, true);
  }

  get usedIdx(): number {
    return this.dv(this.ring.used + 2n, 2).getUint16(0, true);
  }

  usedElem(i: number): { id: number; len: number } {
    const v = this.dv(this.ring.used + 4n + 8n * BigInt(i % this.size), 8);
    return { id: v.getUint32(0, true), len: v.getUint32(4, true) };
  }

  close(): void {
    this.queue.close();
    this.device.close();
    this.mem.close();
  }
}
