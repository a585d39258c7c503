// GuestMemory: guest-physical regions backed by MAP_SHARED host memory. With
// memfd backing (the default) each region has its own memfd at offset 0, so
// the very same pages can be handed to KVM (memory slots) or QEMU
// (memory-backend-file). Views are zero-copy Uint8Arrays; close() unmaps and
// detaches every view, so JS can never touch unmapped memory.
//
// A region larger than the runtime's largest ArrayBuffer (4 GiB on Node 20)
// can be created, translated and given to vhost, but view() on it throws
// ERR_VHOST_OUT_OF_RANGE (see native/guest_memory.cc).
import { checkBool, checkObject, checkOneOf, readOptions, toU64 } from './check';
import { unwatchForGc, watchForGc, type GcRecord } from './gc-warning';
import { closedError, invalidArg, withHint, type Hints } from './errors';
import { native, type Mapping, type OwnedFd } from './native';

/** File seals (fcntl F_ADD_SEALS / F_GET_SEALS). */
export const memfdSeals = {
  F_SEAL_SEAL: 0x1,
  F_SEAL_SHRINK: 0x2,
  F_SEAL_GROW: 0x4,
  F_SEAL_WRITE: 0x8,
  F_SEAL_FUTURE_WRITE: 0x10,
} as const;

const PAGE_SIZE = 4096n;
const DEFAULT_HUGE_PAGE_SIZE = 2n << 20n;
const U64_LIMIT = 1n << 64n;
const MFD_ALLOW_SEALING = 0x2;
const MFD_HUGETLB = 0x4;
const MAP_HUGETLB = 0x40000;
const HUGE_SHIFT = 26; // MFD_HUGE_SHIFT == MAP_HUGE_SHIFT: log2(page size) in bits 26..31
const NAME_MAX_BYTES = 200; // memfd names are limited to 249 bytes; leave room for "-<index>"

/** One region to create: guest-physical address and size in bytes. */
export interface GuestMemoryRegionSpec {
  gpa: bigint | number;
  size: bigint | number;
}

/** Options of GuestMemory.create(). */
export interface GuestMemoryOptions {
  /** Non-empty, non-overlapping; gpa 4096-aligned, size a multiple of the page size. */
  regions: readonly GuestMemoryRegionSpec[];
  /** 'memfd' (default): one memfd per region, shareable. 'anonymous': MAP_SHARED|MAP_ANONYMOUS, no fd. */
  backing?: 'memfd' | 'anonymous';
  /** Back regions with huge pages (MFD_HUGETLB / MAP_HUGETLB). Needs reserved huge pages. */
  hugetlb?: boolean;
  /** Huge page size in bytes (a power of two > 4096); default 2 MiB. Only with hugetlb. */
  hugePageSize?: bigint | number;
  /** memfd only: add F_SEAL_SHRINK | F_SEAL_GROW once sized, so nobody can resize the file. */
  seal?: boolean;
  /** memfd name (shown in /proc/<pid>/maps); region i is named `${name}-${i}`. Default 'linux-vhost-guest'. */
  name?: string;
}

/**
 * One region of guest memory, in the one shape used from the API down to the
 * addon: guest-physical start, size, and where it is mapped in this process.
 * `fd`/`offset` say which file backs it, for transports that share memory by
 * fd (vhost-user); the kernel reads this process's memory and ignores them.
 */
export interface MemoryRegion {
  /** Guest-physical address. */
  readonly gpa: bigint;
  readonly size: bigint;
  /** Host virtual address of the mapping in this process (what vhost's memory table takes). */
  readonly hva: bigint;
  /** The file backing the region (a memfd), or -1 / absent when it has none (anonymous memory). */
  readonly fd?: number;
  /** Offset of the region in `fd`. Default 0. */
  readonly offset?: bigint;
}

/** Anything with guest memory regions, such as GuestMemory. */
export interface MemoryLike {
  readonly regions: readonly MemoryRegion[];
}

/** A created region. All numbers are bigints except fd. */
export interface GuestMemoryRegion extends MemoryRegion {
  /** The region's memfd, or -1 for anonymous backing. Owned by the GuestMemory. */
  readonly fd: number;
  /** Offset of the region in fd (always 0n: one memfd per region). */
  readonly offset: bigint;
}

/** Validated, normalised options. */
export interface GuestMemoryPlan {
  regions: { gpa: bigint; size: bigint }[];
  backing: 'memfd' | 'anonymous';
  hugetlb: boolean;
  pageSize: bigint;
  seal: boolean;
  name: string;
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

/** Checks GuestMemory options without making any syscall; throws ERR_VHOST_* naming the argument. */
export function validateGuestMemoryOptions(options: GuestMemoryOptions): GuestMemoryPlan {
  checkObject(options, 'options');
  options = readOptions(options, ['backing', 'hugetlb', 'hugePageSize', 'seal', 'name', 'regions']);
  const backing = checkOneOf(options.backing ?? 'memfd', 'options.backing', ['memfd', 'anonymous']);
  const hugetlb = checkBool(options.hugetlb ?? false, 'options.hugetlb', null);
  let pageSize = PAGE_SIZE;
  if (options.hugePageSize !== undefined) {
    if (!hugetlb) throw invalidArg('options.hugePageSize', 'is only meaningful with hugetlb: true');
    pageSize = toU64(options.hugePageSize, 'options.hugePageSize');
    if (pageSize <= PAGE_SIZE || (pageSize & (pageSize - 1n)) !== 0n) {
      throw invalidArg('options.hugePageSize', `must be a power of two above 4096, got ${pageSize}`);
    }
  } else if (hugetlb) {
    pageSize = DEFAULT_HUGE_PAGE_SIZE;
  }
  const seal = checkBool(options.seal ?? false, 'options.seal', null);
  if (seal && backing !== 'memfd') throw invalidArg('options.seal', "needs backing 'memfd' (anonymous memory has no file to seal)");
  const name = options.name ?? 'linux-vhost-guest';
  if (typeof name !== 'string') throw invalidArg('options.name', 'must be a string');
  if (name.includes('\0')) throw invalidArg('options.name', 'must not contain NUL characters');
  if (Buffer.byteLength(name) > NAME_MAX_BYTES) throw invalidArg('options.name', `must be at most ${NAME_MAX_BYTES} bytes`);

  if (!Array.isArray(options.regions) || options.regions.length === 0) {
    throw invalidArg('options.regions', 'must be a non-empty array');
  }
  const regions = options.regions.map((spec: GuestMemoryRegionSpec, i) => {
    const arg = `options.regions[${i}]`;
    checkObject(spec, arg, 'an object { gpa, size }');
    const gpa = toU64(spec.gpa, `${arg}.gpa`);
    const size = toU64(spec.size, `${arg}.size`);
    if (gpa % PAGE_SIZE !== 0n) throw invalidArg(`${arg}.gpa`, `must be 4096-aligned, got ${hex(gpa)}`);
    if (size === 0n) throw invalidArg(`${arg}.size`, 'must be greater than 0', 'ERR_VHOST_OUT_OF_RANGE');
    if (size % pageSize !== 0n) throw invalidArg(`${arg}.size`, `must be a multiple of the page size ${pageSize}, got ${size}`);
    if (gpa + size > U64_LIMIT) {
      throw invalidArg(arg, `ends beyond 2^64 (gpa ${hex(gpa)} + size ${hex(size)})`, 'ERR_VHOST_OUT_OF_RANGE');
    }
    return { gpa, size };
  });
  const order = regions.map((r, i) => ({ ...r, i })).sort((a, b) => (a.gpa < b.gpa ? -1 : a.gpa > b.gpa ? 1 : 0));
  for (let k = 1; k < order.length; k++) {
    const prev = order[k - 1];
    const next = order[k];
    if (prev.gpa + prev.size > next.gpa) {
      throw invalidArg(
        `options.regions[${next.i}]`,
        `overlaps options.regions[${prev.i}] ([${hex(next.gpa)}, ${hex(next.gpa + next.size)}) and [${hex(prev.gpa)}, ${hex(prev.gpa + prev.size)}))`,
      );
    }
  }
  return { regions, backing, hugetlb, pageSize, seal, name };
}

function log2(v: bigint): number {
  return v.toString(2).length - 1;
}

/**
 * Runs the unmap hooks (each detaches the buffers its owner lent over this
 * memory), then unmaps (detaching every view) and closes each region.
 * Idempotent: the hooks run once. A throwing hook does not stop the unmap.
 */
function closeRegions(regions: readonly RegionState[], hooks: Set<() => void>): void {
  const pending = [...hooks];
  hooks.clear();
  for (const hook of pending) {
    try {
      hook();
    } catch {
      // A hook only detaches buffers; the unmap below must happen regardless.
    }
  }
  for (const { handle, mapping } of regions) {
    mapping.unmap();
    handle?.close();
  }
}

/** mmap of huge pages fails ENOMEM when none of that size is reserved (vm.nr_hugepages is 0 by default). */
function hugePageHints(pageSize: bigint): Hints {
  const kb = pageSize / 1024n;
  return {
    ENOMEM: `not enough free ${kb} kB huge pages: reserve them first, e.g. echo N > /sys/kernel/mm/hugepages/hugepages-${kb}kB/nr_hugepages (N pages of ${kb} kB)`,
    EINVAL: `this kernel or CPU has no ${kb} kB huge pages (see /sys/kernel/mm/hugepages/)`,
  };
}

interface RegionState {
  info: GuestMemoryRegion;
  handle: OwnedFd | null;
  mapping: Mapping;
}

/**
 * Guest memory: several regions at chosen guest-physical addresses, each a
 * MAP_SHARED mapping (memfd-backed by default). Owns every memfd and mapping;
 * close() (or `using`) releases them all.
 */
export class GuestMemory implements Disposable {
  #regions: RegionState[] | null;
  readonly #gc: GcRecord;
  // Run before the unmap, whoever unmaps (close() or the GC safety net); held by the GC record, not by this object.
  readonly #unmapHooks = new Set<() => void>();

  private constructor(regions: RegionState[]) {
    this.#regions = regions;
    const hooks = this.#unmapHooks;
    // Collected while mapped: unmap and close with a LINUX_VHOST_GC_CLOSE warning (never silently).
    // The record holds the regions, never this object.
    this.#gc = watchForGc(this, {
      describe: () => `${regions.length} region(s): ${regions.map((r) => `gpa ${hex(r.info.gpa)} size ${hex(r.info.size)}${r.handle ? ` fd ${r.handle.fd}` : ''}`).join(', ')}`,
      isOpen: () => !regions[0].mapping.unmapped,
      close: () => closeRegions(regions, hooks),
    }, GuestMemory);
  }

  /**
   * Validates `options` (before any syscall), then creates, sizes, optionally
   * seals and maps one memfd per region. If any step fails, everything
   * created so far is unmapped and closed before the error is thrown.
   */
  static create(options: GuestMemoryOptions): GuestMemory {
    const plan = validateGuestMemoryOptions(options);
    const made: { handle: OwnedFd | null; mapping?: Mapping }[] = [];
    try {
      plan.regions.forEach(({ size }, i) => {
        const hugeBits = plan.hugetlb ? log2(plan.pageSize) << HUGE_SHIFT : 0;
        let handle: OwnedFd | null = null;
        let mapping: Mapping;
        if (plan.backing === 'memfd') {
          const flags = (plan.seal ? MFD_ALLOW_SEALING : 0) | (plan.hugetlb ? MFD_HUGETLB | hugeBits : 0);
          handle = native.memfdCreate(`${plan.name}-${i}`, flags >>> 0);
          made.push({ handle });
          native.ftruncate(handle, size);
          if (plan.seal) native.addSeals(handle, memfdSeals.F_SEAL_SHRINK | memfdSeals.F_SEAL_GROW);
          mapping = native.mmapShared(handle, size, 0n, 0);
        } else {
          made.push({ handle: null });
          mapping = native.mmapShared(null, size, 0n, (plan.hugetlb ? MAP_HUGETLB | hugeBits : 0) >>> 0);
        }
        made[made.length - 1].mapping = mapping;
      });
    } catch (err) {
      for (const { handle, mapping } of made) {
        mapping?.unmap();
        handle?.close();
      }
      throw plan.hugetlb ? withHint(err, hugePageHints(plan.pageSize)) : err;
    }
    return new GuestMemory(
      made.map(({ handle, mapping }, i) => ({
        handle,
        mapping: mapping!,
        info: Object.freeze({
          gpa: plan.regions[i].gpa,
          size: plan.regions[i].size,
          hva: mapping!.address,
          fd: handle ? handle.fd : -1,
          offset: 0n,
        }),
      })),
    );
  }

  /** True once close() has run. */
  get closed(): boolean {
    return this.#regions === null;
  }

  /** The regions in the order given to create(); throws ERR_VHOST_CLOSED after close(). */
  get regions(): readonly GuestMemoryRegion[] {
    return Object.freeze(this.#live('regions').map((r) => r.info));
  }

  /**
   * A zero-copy view of guest memory [gpa, gpa + length). The range must lie
   * inside one region; the view is detached (byteLength 0) by close().
   */
  view(gpa: bigint | number, length: bigint | number): Uint8Array {
    const { region, offset, len } = this.#locate('view', gpa, length);
    return new Uint8Array(region.mapping.buffer, Number(offset), Number(len));
  }

  /** The host virtual address of `gpa`; [gpa, gpa + length) must lie inside one region. */
  translate(gpa: bigint | number, length: bigint | number = 1): bigint {
    const { region, offset } = this.#locate('translate', gpa, length);
    return region.info.hva + offset;
  }

  /**
   * Registers `hook` to run once, just before the regions are unmapped (by
   * close() or the GC safety net). Whoever hands out buffers of its own over
   * this memory (Virtqueue.lend) registers once and detaches them there, so
   * no buffer ever points at unmapped memory. Returns a function that
   * unregisters the hook. Throws ERR_VHOST_CLOSED after close().
   */
  onUnmap(hook: () => void): () => void {
    this.#live('onUnmap');
    if (typeof hook !== 'function') throw invalidArg('hook', 'must be a function');
    const hooks = this.#unmapHooks;
    hooks.add(hook);
    return () => {
      hooks.delete(hook);
    };
  }

  /** Detaches every buffer lent over this memory (see onUnmap), unmaps every region (detaching every view) and closes every memfd. Idempotent. */
  close(): void {
    const regions = this.#regions;
    if (regions === null) return;
    this.#regions = null;
    closeRegions(regions, this.#unmapHooks);
    unwatchForGc(this.#gc);
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #live(what: string): RegionState[] {
    if (this.#regions === null) throw closedError(`GuestMemory (${what})`);
    return this.#regions;
  }

  #locate(what: string, gpaArg: bigint | number, lengthArg: bigint | number): { region: RegionState; offset: bigint; len: bigint } {
    const regions = this.#live(what);
    const gpa = toU64(gpaArg, 'gpa');
    const len = toU64(lengthArg, 'length');
    const region = regions.find((r) => gpa >= r.info.gpa && gpa < r.info.gpa + r.info.size);
    if (!region) throw invalidArg('gpa', `${hex(gpa)} is not inside any region`, 'ERR_VHOST_OUT_OF_RANGE');
    const end = region.info.gpa + region.info.size;
    if (gpa + len > end) {
      throw invalidArg('length', `${len} from gpa ${hex(gpa)} crosses the end of its region at ${hex(end)}`, 'ERR_VHOST_OUT_OF_RANGE');
    }
    if (region.mapping.unmapped) throw closedError(`GuestMemory (${what})`);
    return { region, offset: gpa - region.info.gpa, len };
  }
}
