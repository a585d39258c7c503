// Hostile JS values for the fuzz suites (test/unit/fuzz, test/kernel/fuzz):
// wrong types, edge numbers, huge strings and bigints, prototype-less objects,
// objects whose coercion hooks, getters and proxy traps record every call the
// library makes into them. A rule of the library (issue 13): argument checks
// never run the caller's toString / valueOf / Symbol.toPrimitive, and read each
// option at most once per call.
import fc from 'fast-check';

/** A call the library made into a hostile value. */
export interface TrapCall {
  kind: 'coerce' | 'get';
  /** The value's label and the hook or key, e.g. 'trap#3.toString' or 'getters#2.size'. */
  what: string;
}

/** Every call into a hostile value since the last reset(). */
export const trapLog: TrapCall[] = [];
let nextId = 0;

/** The error every hostile hook throws: it has a string code, so an entry point that lets it through still passes the "string code" check, but trapLog says it ran. */
export class HostileHookError extends Error {
  readonly code = 'ERR_FUZZ_HOSTILE_HOOK';
}

const COERCION_KEYS = new Set<PropertyKey>(['toString', 'valueOf', 'toJSON', Symbol.toPrimitive]);

/** An object whose coercion hooks record and throw. */
function coercionTrap(): object {
  const label = `trap#${nextId++}`;
  const hook = (name: string) => () => {
    trapLog.push({ kind: 'coerce', what: `${label}.${name}` });
    throw new HostileHookError(`${label}.${name} was called`);
  };
  return { toString: hook('toString'), valueOf: hook('valueOf'), toJSON: hook('toJSON'), [Symbol.toPrimitive]: hook('toPrimitive') };
}

/** A prototype-less object with a throwing toString, which String() cannot reach anyway. */
function nullProto(entries: [string, unknown][]): object {
  const o = Object.create(null) as Record<string, unknown>;
  for (const [k, v] of entries) o[k] = v;
  return o;
}

/** An object whose own properties are recording getters (each returns `value`, or throws when `throws`). */
function getters(keys: string[], value: unknown, throws: boolean): object {
  const label = `getters#${nextId++}`;
  const o = coercionTrap();
  for (const key of keys) {
    Object.defineProperty(o, key, {
      enumerable: true,
      get() {
        trapLog.push({ kind: 'get', what: `${label}.${key}` });
        if (throws) throw new HostileHookError(`${label}.${key} getter throws`);
        return value;
      },
    });
  }
  return o;
}

/** A proxy that records every get (coercion hooks recorded as such) over `target`. */
function recordingProxy(target: object): object {
  const label = `proxy#${nextId++}`;
  return new Proxy(target, {
    get(t, key, receiver) {
      const name = typeof key === 'symbol' ? key.toString() : key;
      if (COERCION_KEYS.has(key)) {
        trapLog.push({ kind: 'coerce', what: `${label}.${name}` });
        throw new HostileHookError(`${label}.${name} was read`);
      }
      trapLog.push({ kind: 'get', what: `${label}.${name}` });
      return Reflect.get(t, key, receiver);
    },
  });
}

/** A function whose toString records (functions are values too). */
function trappedFunction(): () => void {
  const f = (): void => undefined;
  const label = `fn#${nextId++}`;
  f.toString = () => {
    trapLog.push({ kind: 'coerce', what: `${label}.toString` });
    throw new HostileHookError(`${label}.toString was called`);
  };
  return f;
}

/** Option and field names the library reads, so hostile objects reach past the first check. */
export const FIELD_NAMES = [
  'size', 'gpa', 'base', 'regions', 'initval', 'semaphore', 'name', 'backing', 'memory', 'index', 'desc', 'avail', 'used', 'kick',
  'call', 'cid', 'len', 'type', 'op', 'srcCid', 'dstCid', 'srcPort', 'dstPort', 'flags', 'bufAlloc', 'fwdCnt', 'mtu', 'mac',
  'queueSize', 'bufferSize', 'tap', 'endian', 'busyloopTimeout', 'attempts', 'body', 'seq', 'attrs', 'data', 'status', 'maxQueuePairs',
];

const edgeNumbers = fc.constantFrom(0, -0, 1, -1, 0.5, NaN, Infinity, -Infinity, 2 ** 31, 2 ** 32, 2 ** 53, -(2 ** 53), Number.MAX_VALUE, 3, 16, 4096, 65535, 0xffffffff);
const edgeBigInts = fc.constantFrom(0n, 1n, -1n, 3n, 4096n, 2n ** 32n, 2n ** 63n, 2n ** 64n - 1n, 2n ** 64n, -(2n ** 64n), 10n ** 400n);
// Strings never start with '/': a path-taking entry point then opens nothing outside the working directory.
const strings = fc.oneof(
  fc.string({ maxLength: 20 }).map((s) => s.replace(/^\/+/, '')),
  fc.constantFrom('', 'auto', 'memfd', 'little', '\0', 'lv%d', 'a'.repeat(5000), 'x'.repeat(1 << 20), 'ffff:ffff', '12:34:56:78:9a:bc', '\ud800'),
);

/** Values with no hooks: primitives of every type, symbols, plain objects and arrays. */
export const inertValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(undefined, null, true, false, Symbol('fuzz'), Symbol.iterator),
  edgeNumbers,
  fc.integer(),
  fc.double(),
  edgeBigInts,
  fc.bigInt(),
  strings,
  fc.constantFrom({}, [], new Uint8Array(0), new Uint8Array(64), Buffer.alloc(44), new ArrayBuffer(8), new Date(0), /re/, new Map(), Promise.resolve()),
);

/** Any hostile value, nesting inert values inside hostile objects. */
export const hostileValue: fc.Arbitrary<unknown> = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', maxDepth: 3 },
    { weight: 6, arbitrary: inertValue },
    { weight: 2, arbitrary: fc.constant(null).map(() => coercionTrap()) },
    { weight: 1, arbitrary: fc.constant(null).map(() => trappedFunction()) },
    { weight: 2, arbitrary: fc.array(fc.tuple(fc.constantFrom(...FIELD_NAMES), tie('value')), { maxLength: 3 }).map(nullProto) },
    { weight: 2, arbitrary: fc.tuple(fc.subarray(FIELD_NAMES, { maxLength: 6 }), tie('value'), fc.boolean()).map(([k, v, t]) => getters(k, v, t)) },
    { weight: 2, arbitrary: fc.dictionary(fc.constantFrom(...FIELD_NAMES), tie('value'), { maxKeys: 4 }).map(recordingProxy) },
    { weight: 1, arbitrary: fc.array(tie('value'), { maxLength: 3 }).map(recordingProxy) },
    { weight: 1, arbitrary: fc.array(tie('value'), { maxLength: 3 }) },
  ),
})).value;

/** Calls made into hostile values that the library must never make: coercions, and a key read twice by one entry-point call. */
export function violations(log: readonly TrapCall[]): string[] {
  const out = log.filter((c) => c.kind === 'coerce').map((c) => `coerced ${c.what}`);
  const reads = new Map<string, number>();
  // An array's length is read at each step of an iteration: not an option read.
  for (const c of log) if (c.kind === 'get' && !c.what.endsWith('.length')) reads.set(c.what, (reads.get(c.what) ?? 0) + 1);
  for (const [what, n] of reads) if (n > 1) out.push(`read ${what} ${n} times`);
  return out;
}

/** fast-check parameters: a fixed seed by default (reproducible CI), LINUX_VHOST_FUZZ_RUNS / LINUX_VHOST_FUZZ_SEED to go further. */
export function fuzzParams(defaultRuns: number): fc.Parameters<unknown> {
  const runs = Number(process.env.LINUX_VHOST_FUZZ_RUNS ?? defaultRuns);
  const seed = process.env.LINUX_VHOST_FUZZ_SEED === 'random' ? undefined : Number(process.env.LINUX_VHOST_FUZZ_SEED ?? 0x5eed);
  return { numRuns: runs, seed, endOnFailure: true };
}

/**
 * Options objects holding only `keys` (so they get past "is not an option"
 * checks), each value drawn from `value`, as a plain object, a prototype-less
 * one, an object of recording getters, or a recording proxy.
 */
export function hostileOptions(keys: readonly string[], value: fc.Arbitrary<unknown> = hostileValue): fc.Arbitrary<object> {
  return fc.tuple(fc.dictionary(fc.constantFrom(...keys), value, { maxKeys: keys.length }), fc.nat(3)).map(([entries, shape]) => {
    switch (shape) {
      case 0: return entries;
      case 1: return nullProto(Object.entries(entries));
      case 2: {
        const label = `getters#${nextId++}`;
        const o = {};
        for (const [key, v] of Object.entries(entries)) {
          Object.defineProperty(o, key, { enumerable: true, get() { trapLog.push({ kind: 'get', what: `${label}.${key}` }); return v; } });
        }
        return o;
      }
      default: return recordingProxy(entries);
    }
  });
}
