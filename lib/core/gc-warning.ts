// No silent close by the garbage collector. An object that owns kernel
// resources and is collected while still open is closed here, and a process
// warning says so, the way fs.FileHandle does ("Closing file descriptor N on
// garbage collection"): code LINUX_VHOST_GC_CLOSE, the object's class, its
// path / fd / CID and, in `detail`, where it was created. A device closed
// behind its user's back (its CID taken by another process, its tap gone) is
// otherwise a mystery. The native finalizers stay as the last safety net.
//
// One record per resource, shared by every object over it (a running device
// and its low-level device share one fd): it is closed only once all of them
// are collected. close() unregisters the record, so an object closed in time
// costs no callback.

/** Where a stack capture stops (Error.captureStackTrace's constructorOpt): a constructor or factory. */
// eslint-disable-next-line @typescript-eslint/no-unsafe-function-type -- what Error.captureStackTrace takes
export type StackAnchor = Function;

/** The process warning code of a close by the garbage collector. */
export const GC_CLOSE_WARNING = 'LINUX_VHOST_GC_CLOSE';

/** Frames kept of where an object was created: enough to reach the caller past the library's own frames (a builder opens its device 6 frames below start(), a guest one more); each frame costs (bench/gc-warning.js). */
const STACK_FRAMES = 10;

export interface GcRecord {
  /** Class names of the objects over the resource, first created first. */
  readonly owners: string[];
  /** How many of them are still alive. */
  live: number;
  /** 'fd 12', '/dev/vhost-vsock', 'CID 3': what identifies it, in the warning. */
  describe(): string;
  /** True while the resource is open. */
  isOpen(): boolean;
  /** Closes the resource. */
  close(): void;
  /** Where the first owner was created: its first STACK_FRAMES frames, as text. */
  readonly site: { stack?: string };
  /** Extra words a module adds once it knows them (a vsock device's CID). */
  note?: string;
}

const registry = new FinalizationRegistry<GcRecord>((record) => {
  if (--record.live > 0 || !record.isOpen()) return;
  const what = [...new Set(record.owners)].join(' / ');
  const note = record.note ? `, ${record.note}` : '';
  const created = record.site.stack?.split('\n').slice(1).join('\n');
  const message = `Closing ${what} (${record.describe()}${note}) on garbage collection: keep a reference to it while it is in use, or close() it`;
  try {
    record.close();
  } finally {
    process.emitWarning(message, { code: GC_CLOSE_WARNING, detail: created ? `Created at:\n${created}` : undefined });
  }
});

/**
 * Where an owner is being created, as text. Formatted at once, not left to
 * V8's lazy .stack: an unformatted captured stack keeps every frame's receiver
 * alive, and a builder's start() frame keeps the builder and so the device it
 * holds: the device would never be collected (and never warned about). This
 * formatting is most of what watching an object costs (bench/gc-warning.js).
 */
function captureSite(constructorOpt: StackAnchor): { stack?: string } {
  const site: { stack?: string } = {};
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = STACK_FRAMES;
  Error.captureStackTrace(site, constructorOpt);
  Error.stackTraceLimit = limit;
  return { stack: site.stack };
}

/**
 * Watches `owner` (an object of the library over a resource): when it is
 * collected while the resource is still open, the resource is closed and a
 * warning emitted. `record` is the resource's shared record: pass the one an
 * earlier owner of the same resource got (gcRecordOf) so the close waits for all.
 */
export function watchForGc(owner: object, record: Omit<GcRecord, 'owners' | 'live' | 'site'> | GcRecord, constructorOpt: StackAnchor): GcRecord {
  const shared: GcRecord = 'owners' in record
    ? record
    : Object.assign(record, { owners: [] as string[], live: 0, site: captureSite(constructorOpt) });
  shared.owners.push(owner.constructor.name);
  shared.live++;
  registry.register(owner, shared, shared);
  return shared;
}

/** Stops watching every owner of the record (called by close(): nothing left for the collector to close). */
export function unwatchForGc(record: GcRecord): void {
  registry.unregister(record);
}
