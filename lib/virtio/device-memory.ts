// The front-end's memory as a device (a vhost-user back-end) sees it: the
// region fds of VHOST_USER_SET_MEM_TABLE mapped MAP_SHARED into this process,
// each between PROT_NONE guard pages (native/device_memory.cc). Descriptor
// addresses are guest-physical; ring addresses are the front-end's virtual
// addresses (each region's userAddr). DeviceQueues hold the mapping's native
// state, so close() stops every queue over it before the pages go.
import { checkObject, describe, toU64 } from '../core/check';
import { closedError, invalidArg, VhostError } from '../core/errors';
import { FdOwner, type FdLike } from '../core/fd';
import { native, type FdArg, type NativeDeviceMemory, type NativeDeviceRegion } from '../core/native';

/** One region of a memory table as the front-end sends it (VhostUserMemoryRegion plus its fd). */
export interface DeviceMemoryRegion {
  /** The region's file (memfd, hugetlbfs, ...). Borrowed: map() keeps no fd, the mapping keeps the file alive. */
  fd: FdLike;
  /** Guest-physical address of the region: descriptor addresses are in this space. */
  gpa: bigint;
  /** Bytes, > 0. */
  size: bigint;
  /** The front-end's virtual address of the region: ring addresses (SET_VRING_ADDR) are in this space. */
  userAddr: bigint;
  /** Offset of the region in fd. */
  mmapOffset: bigint;
}

/** A mapped region as DeviceMemory reports it. */
export interface DeviceMemoryRegionInfo {
  readonly gpa: bigint;
  readonly size: bigint;
  readonly userAddr: bigint;
}

const U64_END = 1n << 64n;
const EINVAL = 22;
const hex = (v: bigint): string => `0x${v.toString(16)}`;

/** A region the front-end described wrongly: code EINVAL, as the kernel would answer the same table. */
function badRegion(i: number, reason: string): VhostError {
  const arg = `regions[${i}]`;
  return new VhostError(`EINVAL: invalid argument, mmap (${arg} ${reason})`, { code: 'EINVAL', errno: -EINVAL, syscall: 'mmap', argument: arg });
}

function fdArgOf(value: unknown, arg: string): FdArg {
  if (value instanceof FdOwner) return value.nativeHandle; // ERR_VHOST_CLOSED when closed
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 0x7fff_ffff) return value;
  throw invalidArg(arg, `must be an FdOwner (ReceivedFd, ...) or an fd number, got ${describe(value)}`);
}

/** Checks a memory table (each region read once) and returns what native code takes. Throws before mapping anything. */
export function checkDeviceRegions(regions: unknown): NativeDeviceRegion[] {
  if (!Array.isArray(regions) || regions.length === 0) throw invalidArg('regions', 'must be a non-empty array of regions');
  const out = Array.from(regions as unknown[], (given, i) => {
    const arg = `regions[${i}]`;
    const r = checkObject<Record<string, unknown>>(given, arg, 'a region { fd, gpa, size, userAddr, mmapOffset }');
    const { fd, gpa, size, userAddr, mmapOffset } = r; // each field read once
    const region: NativeDeviceRegion = {
      fd: fdArgOf(fd, `${arg}.fd`),
      gpa: toU64(gpa, `${arg}.gpa`, describe),
      size: toU64(size, `${arg}.size`, describe),
      userAddr: toU64(userAddr, `${arg}.userAddr`, describe),
      mmapOffset: toU64(mmapOffset, `${arg}.mmapOffset`, describe),
    };
    if (region.size === 0n) throw badRegion(i, 'has size 0');
    if (region.gpa + region.size > U64_END) throw badRegion(i, `ends beyond 2^64 in guest-physical space (gpa ${hex(region.gpa)} + size ${hex(region.size)})`);
    if (region.userAddr + region.size > U64_END) throw badRegion(i, `ends beyond 2^64 in the front-end's address space (userAddr ${hex(region.userAddr)} + size ${hex(region.size)})`);
    if (region.mmapOffset + region.size > 1n << 63n) throw badRegion(i, `mmapOffset ${hex(region.mmapOffset)} + size ${hex(region.size)} is past the largest file offset`);
    return region;
  });
  for (const space of ['gpa', 'userAddr'] as const) {
    const order = out.map((r, i) => ({ start: r[space], end: r[space] + r.size, i })).sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    for (let k = 1; k < order.length; k++) {
      if (order[k - 1].end > order[k].start) {
        const [a, b] = [order[k - 1], order[k]];
        throw badRegion(b.i, `overlaps regions[${a.i}] (${space} [${hex(b.start)}, ${hex(b.end)}) and [${hex(a.start)}, ${hex(a.end)}))`);
      }
    }
  }
  return out;
}

const handles = new WeakMap<DeviceMemory, NativeDeviceMemory>();

/** The native mapping behind a DeviceMemory, for DeviceQueue (same layer); throws ERR_VHOST_INVALID_ARG for anything else. */
export function deviceMemoryHandle(memory: unknown, arg: string): NativeDeviceMemory {
  const handle = typeof memory === 'object' && memory !== null ? handles.get(memory as DeviceMemory) : undefined;
  if (!handle) throw invalidArg(arg, `must be a DeviceMemory, got ${describe(memory)}`);
  if (handle.closed) throw closedError(`DeviceMemory (${arg})`);
  return handle;
}

/**
 * The front-end's memory table mapped into this process. Mapping is all or
 * nothing; read()/write() copy by guest-physical address, refusing any byte
 * outside the regions (ERR_VHOST_GUEST_ADDRESS). close() unmaps at once:
 * queues over it then stop (pop() gives null, complete() throws ERR_VHOST_CLOSED).
 * Dropped without close(), the pages are unmapped when it and every queue
 * over it are garbage-collected (the mapping holds no fd).
 */
export class DeviceMemory implements Disposable {
  /** The mapped regions (copies; no fds). */
  readonly regions: readonly DeviceMemoryRegionInfo[];
  readonly #handle: NativeDeviceMemory;

  private constructor(handle: NativeDeviceMemory, regions: NativeDeviceRegion[]) {
    this.#handle = handle;
    this.regions = Object.freeze(regions.map((r) => Object.freeze({ gpa: r.gpa, size: r.size, userAddr: r.userAddr })));
    handles.set(this, handle);
  }

  /**
   * Maps every region's fd (MAP_SHARED, read-write). On any failure (a zero,
   * overlapping or overflowing region, or one past the end of its file: EINVAL;
   * mmap failing: its errno with syscall 'mmap', the region named) it unmaps
   * what it mapped and throws a VhostError.
   */
  static map(regions: readonly DeviceMemoryRegion[]): DeviceMemory {
    const checked = checkDeviceRegions(regions);
    return new DeviceMemory(native.deviceMemoryMap(checked), checked);
  }

  /** True once close() has run. */
  get closed(): boolean {
    return this.#handle.closed;
  }

  /** A copy of `length` bytes at guest-physical `gpa`; ERR_VHOST_GUEST_ADDRESS when not all of it is mapped. */
  read(gpa: bigint, length: number): Buffer {
    this.#live('read');
    return this.#handle.read(toU64(gpa, 'gpa', describe), length);
  }

  /** Copies `data` to guest-physical `gpa`; ERR_VHOST_GUEST_ADDRESS when not all of it is mapped (nothing written then). */
  write(gpa: bigint, data: Uint8Array): void {
    this.#live('write');
    this.#handle.write(toU64(gpa, 'gpa', describe), data);
  }

  /** Unmaps every region; every DeviceQueue over this memory stops touching it. Idempotent. */
  close(): void {
    this.#handle.close();
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #live(what: string): void {
    if (this.#handle.closed) throw closedError(`DeviceMemory (${what})`);
  }
}
