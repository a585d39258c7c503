// Property-based fuzzing of the public API (issue 13): random sequences of
// public calls with hostile arguments (test/support/hostile.ts), including use
// after close, objects passed after they were closed, and objects dropped to
// the garbage collector. No devices needed: on a host without /dev/vhost-*
// the calls that get past validation fail at open() with ENOENT. Checked:
// nothing crashes, every error has a string `code`, no coercion hook of the
// caller runs and no option is read twice, and once everything is closed (or
// collected) the process has the fds it started with.
// LINUX_VHOST_FUZZ_RUNS=N raises the runs; LINUX_VHOST_FUZZ_SEED=random varies the seed;
// LINUX_VHOST_FUZZ_SURVEY=1 lists every distinct failure (and each call's outcomes) instead of stopping at the first.
import fc from 'fast-check';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import * as lib from '../../../lib';
// Internal helpers are fuzzed too, from their own modules (they are not exported from the root).
import * as packet from '../../../lib/virtio/vsock-packet';
import { mergeMemoryRegions } from '../../../lib/vhost/plan';
import { negotiateVsockFeatures } from '../../../lib/vhost/vsock';
import { validateLinkName } from '../../../lib/netdev/tap';
import { hostileOptions, hostileValue, trapLog, violations, fuzzParams } from '../../support/hostile';
import { openFdCount } from '../../support/helpers';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** What a sequence can hold and reuse: objects it created, open or closed. */
interface Pool {
  eventfds: lib.EventFd[];
  memories: lib.GuestMemory[];
  builders: (lib.VhostNetBuilder | lib.VhostVsockBuilder)[];
  virtqueues: lib.Virtqueue[];
  logs: lib.DirtyLog[];
}

/** An argument: a hostile value, or a reference to an object of the pool (maybe closed). */
type Arg = { hostile: unknown } | { ref: keyof Pool; i: number };

const pick = <T>(xs: T[], i: number): T | undefined => (xs.length ? xs[i % xs.length] : undefined);
const resolve = (pool: Pool, a: Arg | undefined): unknown => (a === undefined ? undefined : 'hostile' in a ? a.hostile : pick(pool[a.ref] as unknown[], a.i));

/** Valid-looking values, so sequences get past the first check to the later ones. */
const useful = fc.constantFrom<unknown>(
  0, 1, 16, 256, 4096, 0n, 0x1000n, 0x10000n, 3, 'auto', 'little', { regions: [{ gpa: 0n, size: 0x10000n }] }, { size: 16 },
  { size: 16, desc: 0x1000n, avail: 0x2000n, used: 0x3000n }, { initval: 1 }, { semaphore: true }, [{ gpa: 0n, size: 0x10000n }],
  { type: 16, flags: 5, seq: 1, body: new Uint8Array(16) }, new Uint8Array(44), '12:34:56:78:9a:bc', 'fuzz0', {},
);
const arg: fc.Arbitrary<Arg> = fc.oneof(
  { weight: 5, arbitrary: hostileValue.map((hostile) => ({ hostile })) },
  { weight: 3, arbitrary: useful.map((hostile) => ({ hostile })) },
  { weight: 2, arbitrary: fc.record({ ref: fc.constantFrom<keyof Pool>('eventfds', 'memories', 'builders', 'virtqueues', 'logs'), i: fc.nat(7) }) },
);

type Action = (pool: Pool, args: unknown[], target: number) => unknown;
const on = <K extends keyof Pool>(key: K, f: (o: Pool[K][number], args: unknown[]) => unknown): Action => (pool, args, i) => {
  const o = pick(pool[key] as Pool[K][number][], i);
  return o === undefined ? undefined : f(o, args);
};
 
type Any = any;

/** The public calls a sequence draws from. Nothing here opens AF_VSOCK, adopts fds or touches host links. */
const ACTIONS: Record<string, Action> = {
  'EventFd.create': (p, [a]) => p.eventfds.push(lib.EventFd.create(a as Any)),
  'EventFd#read': on('eventfds', (e) => e.read()),
  'EventFd#write': on('eventfds', (e, [a]) => e.write(a as Any)),
  'EventFd#watch': on('eventfds', (e, [a]) => { e.watch(a as Any); e.unwatch(); }),
  'EventFd#fd': on('eventfds', (e) => e.fd),
  'EventFd#close': on('eventfds', (e) => e.close()),
  'GuestMemory.create': (p, [a]) => p.memories.push(lib.GuestMemory.create(a as Any)),
  'GuestMemory#view': on('memories', (m, [a, b]) => m.view(a as Any, b as Any)),
  'GuestMemory#translate': on('memories', (m, [a, b]) => m.translate(a as Any, b as Any)),
  'GuestMemory#regions': on('memories', (m) => m.regions),
  'GuestMemory#close': on('memories', (m) => m.close()),
  'Virtqueue.create': (p, [a, b, c]) => {
    const memory = pick(p.memories, 0);
    const options = a !== null && typeof a === 'object' && !Array.isArray(a) ? { memory, size: b, base: c, ...(a) } : a;
    p.virtqueues.push(lib.Virtqueue.create(options as Any));
  },
  'Virtqueue#post': on('virtqueues', (q, [a, b]) => q.post(a as Any, b as Any)),
  'Virtqueue#collect': on('virtqueues', (q, [a]) => q.collect(a as Any)),
  'Virtqueue#close': on('virtqueues', (q) => q.close()),
  'DirtyLog.create': (p, [a]) => p.logs.push(lib.DirtyLog.create(a as Any)),
  'DirtyLog#readAndClear': on('logs', (l) => l.readAndClear()),
  'DirtyLog#close': on('logs', (l) => l.close()),
  'VhostNet.builder': (p) => p.builders.push(lib.VhostNet.builder()),
  'VhostVsock.builder': (p) => p.builders.push(lib.VhostVsock.builder()),
  'builder#memory': on('builders', (b, [a]) => b.memory(a as Any)),
  'builder#features': on('builders', (b, [a]) => b.features(a as Any)),
  'builder#queue': on('builders', (b, [a, c]) => b.queue(a as Any, c as Any)),
  'builder#maxMemRegions': on('builders', (b, [a]) => b.maxMemRegions(a as Any)),
  'builder#device': on('builders', (b, [a, c]) => b.device(a as Any, c as Any)),
  'builder#backend': on('builders', (b, [a, c]) => (b instanceof lib.VhostNetBuilder ? b.backend(a as Any, c as Any) : undefined)),
  'builder#cid': on('builders', (b, [a, c]) => (b instanceof lib.VhostVsockBuilder ? b.cid(a as Any, c as Any) : undefined)),
  'builder#start': on('builders', (b) => b.start().close()),
  'VhostNet.open': (_p, [a]) => lib.VhostNet.open((typeof a === 'string' ? `fuzz-missing/${a}` : a) as Any).close(),
  'VhostVsock.open': (_p, [a]) => lib.VhostVsock.open((typeof a === 'string' ? `fuzz-missing/${a}` : a) as Any).close(),
  'VirtioVsockGuest.create': (_p, [a]) => lib.VirtioVsockGuest.create(a as Any).close(),
  'VirtioNetGuest.create': (_p, [a]) => lib.VirtioNetGuest.create(a as Any).close(),
  layoutSplitRing: (_p, [a, b, c]) => lib.layoutSplitRing(a as Any, b as Any, c as Any),
  splitRingLayout: (_p, [a, b]) => lib.splitRingLayout(a as Any, b as Any),
  placeVirtqueue: (_p, [a, b, c]) => lib.placeVirtqueue(a as Any, b as Any, c as Any),
  virtqueueFootprint: (_p, [a, b]) => lib.virtqueueFootprint(a as Any, b as Any),
  describeFeatures: (_p, [a, b]) => lib.describeFeatures(a as Any, b as Any),
  negotiateVsockFeatures: (_p, [a, b]) => negotiateVsockFeatures(a as Any, b as Any),
  mergeMemoryRegions: (_p, [a]) => mergeMemoryRegions(a as Any),
  dirtyLogSize: (_p, [a]) => lib.dirtyLogSize(a as Any),
  validateLinkName: (_p, [a, b]) => validateLinkName(a, b as Any),
  parseMac: (_p, [a, b]) => lib.parseMac(a, b as Any),
  formatMac: (_p, [a]) => lib.formatMac(a as Any),
  parseIpv4: (_p, [a, b]) => lib.parseIpv4(a, b as Any),
  virtioNetConfig: (_p, [a]) => lib.virtioNetConfig(a as Any),
  encodeVsockHeader: (_p, [a]) => packet.encodeVsockHeader(a as Any),
  decodeVsockHeader: (_p, [a, b]) => packet.decodeVsockHeader(a as Any, b as Any),
  checkVsockHeader: (_p, [a]) => packet.checkVsockHeader(a as Any),
  writeVsockHeader: (_p, [a, b, c]) => packet.writeVsockHeader(a as Any, b as Any, c as Any),
  'netlink.encodeMessage': (_p, [a]) => lib.netlink.encodeMessage(a as Any),
  'netlink.decodeMessages': (_p, [a]) => lib.netlink.decodeMessages(a as Any),
  'netlink.decodeAttrs': (_p, [a]) => lib.netlink.decodeAttrs(a as Any),
  'netlink.encodeAttrs': (_p, [a]) => lib.netlink.encodeAttrs(a as Any),
  'netlink.attrU32': (_p, [a, b]) => lib.netlink.attrU32(a as Any, b as Any),
  'netlink.encodeIfInfoMsg': (_p, [a]) => lib.netlink.encodeIfInfoMsg(a as Any),
};
const NAMES = Object.keys(ACTIONS);

/** The option keys of the calls that take an options object first: their first argument is often an object of only those keys. */
const OPTION_KEYS: Record<string, readonly string[]> = {
  'EventFd.create': ['initval', 'semaphore'],
  'GuestMemory.create': ['backing', 'hugetlb', 'hugePageSize', 'seal', 'name', 'regions'],
  'VirtioVsockGuest.create': ['cid', 'queueSize', 'bufferSize', 'bufAlloc', 'seqpacket'],
  'VirtioNetGuest.create': ['tap', 'queueSize', 'mergeableRx', 'mtu', 'rxBufferSize', 'eventIdx', 'highWaterMark', 'mac', 'responder', 'linkCheckIntervalMs'],
  virtioNetConfig: ['mac', 'status', 'maxQueuePairs', 'mtu', 'pathMtu', 'speed', 'duplex'],
  encodeVsockHeader: ['srcCid', 'dstCid', 'srcPort', 'dstPort', 'len', 'type', 'op', 'flags', 'bufAlloc', 'fwdCnt'],
  checkVsockHeader: ['srcCid', 'dstCid', 'srcPort', 'dstPort', 'len', 'type', 'op', 'flags', 'bufAlloc', 'fwdCnt'],
  'netlink.encodeMessage': ['type', 'flags', 'seq', 'pid', 'body', 'attrs'],
  'netlink.encodeIfInfoMsg': ['family', 'type', 'index', 'flags', 'change'],
  'builder#queue': ['size', 'desc', 'avail', 'used', 'kick', 'call', 'err', 'base', 'busyloopTimeout', 'endian'],
  'Virtqueue.create': ['size', 'desc', 'avail', 'used', 'kick', 'eventIdx', 'indirect'],
};
const optionValue = fc.oneof(hostileValue, useful);
const step = fc.constantFrom(...NAMES, 'drop', 'gc').chain((name) => {
  const keys = OPTION_KEYS[name];
  const first = keys ? fc.oneof(arg, hostileOptions(keys, optionValue).map((hostile): Arg => ({ hostile }))) : arg;
  // builder#queue takes (index, spec): the options go second.
  const args = name === 'builder#queue' ? fc.tuple(arg, first) : fc.tuple(first, arg, arg);
  return fc.record({ name: fc.constant(name), target: fc.nat(7), args: args.map((a): Arg[] => a) });
});

/** One failed check, with what the call was. */
function describeFailure(name: string, why: string): Error {
  return new Error(`${name}: ${why}`);
}
const survey = process.env.LINUX_VHOST_FUZZ_SURVEY ? new Map<string, string>() : null;
const stats = survey ? new Map<string, { ok: number; codes: Set<string> }>() : null;

/** Runs one step; returns what was wrong, or null. */
function run(pool: Pool, s: { name: string; target: number; args: Arg[] }): void {
  if (s.name === 'gc') return gc();
  if (s.name === 'drop') {
    // Forget an object without closing it: the collector closes it later (with a warning).
    const key = (['eventfds', 'memories', 'builders', 'virtqueues', 'logs'] as const)[s.target % 5];
    pool[key].splice(0, 1);
    return;
  }
  const args = s.args.map((a) => resolve(pool, a));
  trapLog.length = 0;
  let thrown: unknown;
  try {
    ACTIONS[s.name](pool, args, s.target);
  } catch (err) {
    thrown = err;
  }
  if (stats) {
    const st = stats.get(s.name) ?? { ok: 0, codes: new Set<string>() };
    if (thrown === undefined) st.ok++;
    else st.codes.add(String((thrown as { code?: unknown })?.code));
    stats.set(s.name, st);
  }
  const bad = violations(trapLog);
  const code = (thrown as { code?: unknown } | null)?.code;
  const failure = bad.length ? bad.join('; ') : thrown !== undefined && typeof code !== 'string' ? `threw without a string code: ${(thrown as Error)?.stack ?? typeof thrown}` : null;
  if (failure && survey) {
    const at = /\n\s+at .*\((.*lib\/[^)]*)\)/.exec(failure)?.[1] ?? (thrown as Error)?.stack?.split('\n').find((l) => l.includes('/lib/')) ?? '';
    survey.set(`${s.name} ${failure.split('\n')[0].replace(/#\d+/g, '#')} ${at}`, '');
    return;
  }
  if (failure) throw describeFailure(s.name, failure);
}

/** A pool that starts with one valid object of each kind, so hostile calls reach real objects (and their use after close). */
function seededPool(): Pool {
  const memory = lib.GuestMemory.create({ regions: [{ gpa: 0n, size: 0x10000n }] });
  const kick = lib.EventFd.create();
  const q = { size: 16, desc: 0x1000n, avail: 0x2000n, used: 0x3000n, kick, call: lib.EventFd.create() };
  const net = lib.VhostNet.builder().memory(memory).features(lib.features.ring.VERSION_1).queue(0, q).queue(1, { ...q, desc: 0x4000n, avail: 0x5000n, used: 0x6000n });
  const vsock = lib.VhostVsock.builder().memory(memory).cid(3).queue(0, q).queue(1, { ...q, desc: 0x4000n, avail: 0x5000n, used: 0x6000n });
  const virtqueue = lib.Virtqueue.create({ memory, size: 16, desc: 0x8000n, avail: 0x9000n, used: 0xa000n, kick });
  return { eventfds: [kick, q.call], memories: [memory], builders: [net, vsock], virtqueues: [virtqueue], logs: [lib.DirtyLog.create([{ gpa: 0n, size: 0x10000n }])] };
}

function closeAll(pool: Pool): void {
  for (const o of [...pool.virtqueues, ...pool.builders.map(() => null), ...pool.eventfds, ...pool.memories, ...pool.logs]) {
    (o as { close?: () => void } | null)?.close?.();
  }
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('fuzz: random sequences of public calls with hostile arguments', () => {
  const warnings: string[] = [];
  const onWarning = (w: Error & { code?: string }): void => void warnings.push(w.code ?? w.name);
  beforeAll(() => process.on('warning', onWarning));
  afterAll(() => process.off('warning', onWarning));

  test('no crash, every error has a string code, no caller code run, no fd left once all is closed and collected', async () => {
    gc();
    await settle();
    const fdsAtStart = openFdCount();
    fc.assert(
      fc.property(fc.array(step, { minLength: 1, maxLength: 40 }), (steps) => {
        const pool = seededPool();
        try {
          for (const s of steps) run(pool, s);
        } finally {
          closeAll(pool);
        }
      }),
      fuzzParams(600),
    );
    if (survey) console.log([...survey.keys()].sort().join('\n'), [...stats!].map(([k, v]) => `${k} ok ${v.ok} ${[...v.codes].join(',')}`).join('\n'));
    // Dropped objects are closed by the collector: force it and let the finalizers run.
    for (let i = 0; i < 3; i++) {
      gc();
      await settle();
    }
    expect(openFdCount()).toBe(fdsAtStart);
    // Objects dropped while open were closed with a warning (their fds are back above); no other warning.
    expect(warnings.filter((code) => code !== 'LINUX_VHOST_GC_CLOSE')).toEqual([]);
  }, 120_000);
});
