// Dirty-page logging for live migration: vhost sets one bit per 4 KiB
// guest-physical page it writes (used rings, and receive buffers under
// VHOST_F_LOG_ALL) in a bitmap in this process's memory. The kernel writes
// bit (page % 8) of byte (page / 8) (drivers/vhost/vhost.c, log_write), so on
// a little-endian host bit b of 64-bit word w is page w * 64 + b.
import * as os from 'node:os';
import { checkNonEmptyArray, checkObject, toU64 } from '../core/check';
import { features } from '../core/features';
import { native, type Mapping } from '../core/native';
import { VRING_ADDR_F_LOG, type VhostBackend } from './backend';

/** The granularity of vhost's dirty log (VHOST_PAGE_SIZE). */
export const DIRTY_LOG_PAGE_SIZE = 4096n;
const BITS_PER_WORD = 64n;
const MAP_ALIGN = 4096n;
const HOST_LE = os.endianness() === 'LE';

/** Bytes of log needed to cover guest-physical [0, highest region end): whole 64-bit words. */
export function dirtyLogSize(regions: readonly { gpa: bigint; size: bigint }[]): bigint {
  checkNonEmptyArray(regions, 'regions');
  let end = 0n;
  regions.forEach((r, i) => {
    checkObject(r, `regions[${i}]`, 'an object { gpa, size }');
    const { gpa, size } = r;
    const e = toU64(gpa, `regions[${i}].gpa`) + toU64(size, `regions[${i}].size`);
    if (e > end) end = e;
  });
  const pages = (end + DIRTY_LOG_PAGE_SIZE - 1n) / DIRTY_LOG_PAGE_SIZE;
  const words = (pages + BITS_PER_WORD - 1n) / BITS_PER_WORD;
  return words * 8n;
}

/** Appends the pages set in log byte `index`: bit b is page index * 8 + b. */
function pushPagesOfByte(out: number[], index: number, byte: number): void {
  for (let b = 0; b < 8; b++) if (byte & (1 << b)) out.push(index * 8 + b);
}

/** Page numbers set in a 64-bit log word read natively (`littleEndian` of this host). */
export function pagesOfWord(wordIndex: number, value: bigint, littleEndian = HOST_LE): number[] {
  const out: number[] = [];
  for (let k = 0; k < 8; k++) {
    const byte = Number((littleEndian ? value >> BigInt(8 * k) : value >> BigInt(56 - 8 * k)) & 0xffn);
    if (byte !== 0) pushPagesOfByte(out, wordIndex * 8 + k, byte);
  }
  return out;
}

/** Appends the pages set in 32-bit log word `index` read natively (the scan's path: no BigInt). */
function pushPagesOfWord32(out: number[], index: number, value: number): void {
  for (let k = 0; k < 4; k++) {
    const byte = (HOST_LE ? value >>> (8 * k) : value >>> (24 - 8 * k)) & 0xff;
    if (byte !== 0) pushPagesOfByte(out, index * 4 + k, byte);
  }
}

/**
 * A dirty-page bitmap in an anonymous shared mapping, sized for a set of
 * guest memory regions. close() (or `using`) unmaps it.
 */
export class DirtyLog implements Disposable {
  readonly #mapping: Mapping;
  // Scanned as 32-bit words: reading a BigUint64Array makes a BigInt per word.
  readonly #words: Uint32Array;
  /** Bytes of log that cover guest memory (the mapping is rounded up to a page). */
  readonly size: bigint;

  private constructor(mapping: Mapping, size: bigint) {
    this.#mapping = mapping;
    this.size = size;
    this.#words = new Uint32Array(mapping.buffer, 0, Number(size / 4n));
  }

  /** Maps a zeroed log for `regions` (one bit per 4 KiB page up to the highest region end). */
  static create(regions: readonly { gpa: bigint; size: bigint }[]): DirtyLog {
    const size = dirtyLogSize(regions);
    const mapped = ((size + MAP_ALIGN - 1n) / MAP_ALIGN) * MAP_ALIGN;
    return new DirtyLog(native.mmapShared(null, mapped, 0n, 0), size);
  }

  /** Host address of the bitmap, for VHOST_SET_LOG_BASE. */
  get address(): bigint {
    return this.#mapping.address;
  }

  /** True after close(). */
  get closed(): boolean {
    return this.#mapping.unmapped;
  }

  /** A byte view of the bitmap (bit page % 8 of byte page / 8); detached by close(). */
  bytes(): Uint8Array {
    return new Uint8Array(this.#mapping.buffer, 0, Number(this.size));
  }

  /**
   * Returns the dirty page numbers (ascending, as numbers) and clears them.
   * A word is swapped with zero by Atomics.exchange only when a plain read saw
   * it non-zero, so a bit the kernel sets concurrently is either returned now
   * or kept for the next call, never lost. The kernel sets bits with 64-bit
   * atomics and this exchanges 32-bit halves: mixed sizes, but on x86-64 and
   * arm64 each is atomic on the bytes it covers, so no update is lost. Pages
   * are read in the kernel's byte order, which is its layout on
   * little-endian hosts (the only ones this has been run on).
   */
  readAndClear(): number[] {
    if (this.closed) return [];
    const words = this.#words;
    const out: number[] = [];
    for (let i = 0; i < words.length; i++) {
      if (words[i] === 0) continue;
      const v = Atomics.exchange(words, i, 0);
      if (v !== 0) pushPagesOfWord32(out, i, v);
    }
    return out;
  }

  /** Unmaps the log. Idempotent. */
  close(): void {
    this.#mapping.unmap();
  }

  /** close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** A queue's ring addresses (host) and used ring's guest-physical address, for re-setting SET_VRING_ADDR. */
export interface DirtyLogQueue {
  index: number;
  desc: bigint;
  avail: bigint;
  used: bigint;
  usedGpa: bigint;
}

type Step = <T>(step: 'SET_LOG_BASE' | 'SET_FEATURES' | 'SET_VRING_ADDR', queue: number | undefined, fn: () => T) => T;

/**
 * Turns logging on as QEMU does: log base first (the kernel checks it when
 * LOG_ALL is set), then features with VHOST_F_LOG_ALL, then each ring's
 * address with the log flag and the used ring's guest-physical address.
 */
export function startDirtyLog(dev: VhostBackend, log: DirtyLog, baseFeatures: bigint, queues: readonly DirtyLogQueue[], step: Step): void {
  step('SET_LOG_BASE', undefined, () => dev.setLogBase({ hva: log.address, size: log.size }));
  step('SET_FEATURES', undefined, () => dev.setFeatures(baseFeatures | features.vhost.LOG_ALL));
  for (const q of queues) {
    step('SET_VRING_ADDR', q.index, () =>
      dev.setVringAddr(q.index, { desc: q.desc, avail: q.avail, used: q.used, log: q.usedGpa, flags: VRING_ADDR_F_LOG }),
    );
  }
}

/** Turns logging off: features without LOG_ALL, ring addresses without the log flag, log base 0 (nothing points at the freed log). */
export function stopDirtyLog(dev: VhostBackend, baseFeatures: bigint, queues: readonly DirtyLogQueue[], step: Step): void {
  step('SET_FEATURES', undefined, () => dev.setFeatures(baseFeatures));
  for (const q of queues) step('SET_VRING_ADDR', q.index, () => dev.setVringAddr(q.index, { desc: q.desc, avail: q.avail, used: q.used }));
  step('SET_LOG_BASE', undefined, () => dev.setLogBase(0n));
}
