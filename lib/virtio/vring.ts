// Split virtqueue layout (virtio spec 1.x, section 2.7 "Split Virtqueues").
//
//   descriptor table  16 * size bytes, 16-aligned: struct { le64 addr; le32 len; le16 flags; le16 next; }
//   available ring    2 + 2 + 2 * size + 2 bytes, 2-aligned:
//                       le16 flags; le16 idx; le16 ring[size]; le16 used_event;
//   used ring         2 + 2 + 8 * size + 2 bytes, 4-aligned:
//                       le16 flags; le16 idx; struct { le32 id; le32 len; } ring[size]; le16 avail_event;
//
// used_event / avail_event exist only with VIRTIO_RING_F_EVENT_IDX; the
// kernel's vhost checks 4 + 2 * size (+ 2 with EVENT_IDX) when the ring
// addresses are set. Layouts here include them by default (eventIdx: true,
// the familiar 6 + 2n and 6 + 8n), which fits either way.
// Legacy (pre-1.0) devices put the descriptor table on a page boundary and
// the used ring on the next 4096-byte boundary: `legacy: true`.
import { invalidArg } from '../core/errors';

/** Largest split-ring queue size (virtio: queue size is at most 32768). */
export const MAX_QUEUE_SIZE = 32768;
/** Legacy virtio's ring alignment (VIRTIO_PCI_VRING_ALIGN). */
export const LEGACY_VRING_ALIGN = 4096n;

/** Options of splitRingLayout(). */
export interface SplitRingOptions {
  /** Include used_event / avail_event (VIRTIO_RING_F_EVENT_IDX). Default true (always enough room). */
  eventIdx?: boolean;
}

/** Options of layoutSplitRing(). */
export interface SplitRingLayoutOptions extends SplitRingOptions {
  /** Legacy layout: descriptor table and used ring each start on a 4096-byte boundary. */
  legacy?: boolean;
}

/** Sizes and alignments in bytes of the three parts of a split ring. */
export interface SplitRingSizes {
  descSize: bigint;
  availSize: bigint;
  usedSize: bigint;
  descAlign: bigint;
  availAlign: bigint;
  usedAlign: bigint;
}

/** Addresses of a split ring placed in memory; [desc, end) holds all of it. */
export interface SplitRingLayout {
  desc: bigint;
  avail: bigint;
  used: bigint;
  /** First byte after the used ring. */
  end: bigint;
}

/** Checks a queue size (a power of two in 1..32768) and returns it as a number. */
export function validateQueueSize(size: number | bigint, arg = 'size'): number {
  if (typeof size === 'bigint') {
    if (size < 0n || size > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw invalidArg(arg, `must be in 1..${MAX_QUEUE_SIZE}, got ${size}`, 'ERR_VHOST_OUT_OF_RANGE');
    }
    size = Number(size);
  }
  if (typeof size !== 'number' || !Number.isInteger(size)) {
    throw invalidArg(arg, `must be an integer, got ${typeof size === 'number' ? size : typeof size}`);
  }
  if (size < 1 || size > MAX_QUEUE_SIZE) {
    throw invalidArg(arg, `must be in 1..${MAX_QUEUE_SIZE}, got ${size}`, 'ERR_VHOST_OUT_OF_RANGE');
  }
  if ((size & (size - 1)) !== 0) throw invalidArg(arg, `must be a power of two, got ${size}`);
  return size;
}

function eventIdxOf(options: SplitRingOptions): boolean {
  if (options === null || typeof options !== 'object') throw invalidArg('options', 'must be an object');
  const eventIdx = options.eventIdx ?? true;
  if (typeof eventIdx !== 'boolean') throw invalidArg('options.eventIdx', 'must be a boolean');
  return eventIdx;
}

/** Sizes and alignments of a split ring of `size` entries. */
export function splitRingLayout(size: number | bigint, options: SplitRingOptions = {}): SplitRingSizes {
  const n = BigInt(validateQueueSize(size));
  const event = eventIdxOf(options) ? 2n : 0n;
  return {
    descSize: 16n * n,
    availSize: 4n + 2n * n + event,
    usedSize: 4n + 8n * n + event,
    descAlign: 16n,
    availAlign: 2n,
    usedAlign: 4n,
  };
}

const alignUp = (v: bigint, a: bigint): bigint => (v + a - 1n) & ~(a - 1n);

/**
 * Places a split ring of `size` entries at the first suitably aligned address
 * at or after `base`: descriptor table, then available ring, then used ring,
 * each at its alignment (4096 for the descriptor table and used ring when
 * legacy). The returned `end` can be the `base` of the next ring.
 */
export function layoutSplitRing(size: number | bigint, base: bigint, options: SplitRingLayoutOptions = {}): SplitRingLayout {
  const sizes = splitRingLayout(size, options);
  if (typeof base !== 'bigint') throw invalidArg('base', `must be a bigint, got ${typeof base}`);
  if (base < 0n) throw invalidArg('base', `must not be negative, got ${base}`, 'ERR_VHOST_OUT_OF_RANGE');
  const legacy = options.legacy ?? false;
  if (typeof legacy !== 'boolean') throw invalidArg('options.legacy', 'must be a boolean');
  const desc = alignUp(base, legacy ? LEGACY_VRING_ALIGN : sizes.descAlign);
  const avail = alignUp(desc + sizes.descSize, sizes.availAlign);
  const used = alignUp(avail + sizes.availSize, legacy ? LEGACY_VRING_ALIGN : sizes.usedAlign);
  const end = used + sizes.usedSize;
  if (end > 1n << 64n) throw invalidArg('base', `leaves no room for the ring below 2^64 (ends at 0x${end.toString(16)})`, 'ERR_VHOST_OUT_OF_RANGE');
  return { desc, avail, used, end };
}
