// Argument checks shared across lib/, thrown as invalidArg() errors before any
// syscall. Modules word the rejected value differently (and the unit tests pin
// each wording), so the helpers take how to show it: a Show, or null to say
// no "got ..." at all. Internal: not exported from lib/index.ts.
import { invalidArg } from './errors';

/** How a rejected value is shown after "got" in a message; null leaves the "got" out. */
export type Show = ((value: unknown) => string) | null;

const got = (show: Show, value: unknown): string => (show ? `, got ${show(value)}` : '');

/** Strings and bigints longer than this are cut in messages (a 1 MiB name must not make a 1 MiB message). */
export const SHOWN_MAX = 64;

const cut = (text: string): string => (text.length > SHOWN_MAX ? `${text.slice(0, SHOWN_MAX)}... (${text.length} chars)` : text);

// Every Show below is safe on any JS value: it looks at typeof first and
// stringifies primitives only (String() of a primitive, JSON.stringify of a
// string), so no toString / valueOf / Symbol.toPrimitive / getter / proxy trap
// of the caller's runs, and prototype-less objects, symbols and revoked proxies
// are words ('object', 'symbol') rather than a TypeError. Messages elsewhere in
// lib/ must show a rejected value through one of them, never String(v) or `${v}`.

/** Shows the value's typeof. */
export const typeOf = (value: unknown): string => typeof value;
/** Shows a number as itself, anything else as its typeof. */
export const numberOrType = (value: unknown): string => (typeof value === 'number' ? String(value) : typeof value);
/** Shows a primitive as String() would (strings unquoted, cut at SHOWN_MAX), null as null, anything else as its typeof. */
export function plain(value: unknown): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string': return cut(value);
    case 'bigint': return cut(String(value));
    case 'number': case 'boolean': case 'undefined': return String(value);
    default: return typeof value; // object (arrays, proxies, null-prototype objects), function, symbol
  }
}
/** Shows the value as written in source where that is short: 1n, "s", null; typeof for objects, functions and symbols. */
export function describe(value: unknown): string {
  if (typeof value === 'string') return value.length > SHOWN_MAX ? `${JSON.stringify(value.slice(0, SHOWN_MAX))}... (${value.length} chars)` : JSON.stringify(value);
  if (typeof value === 'bigint') return `${cut(String(value))}n`;
  return plain(value);
}

/** An integer in min..max: ERR_VHOST_INVALID_ARG if not an integer, ERR_VHOST_OUT_OF_RANGE outside the range. */
export function checkInt(value: unknown, arg: string, min: number, max: number, show: Show = numberOrType): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) throw invalidArg(arg, `must be an integer${got(show, value)}`);
  if (value < min || value > max) throw invalidArg(arg, `must be in ${min}..${max}, got ${value}`, 'ERR_VHOST_OUT_OF_RANGE');
  return value;
}

/** An integer (a bigint when `max` is one) in 0..max; else one ERR_VHOST_OUT_OF_RANGE, whatever was wrong, naming `range`. */
export function checkUint<T extends number | bigint>(value: unknown, arg: string, max: T, range = `0..${max}`, show: Show = plain): T {
  const isBig = typeof max === 'bigint';
  if (typeof value !== typeof max || (!isBig && !Number.isInteger(value)) || (value as T) < 0 || (value as T) > max) {
    throw invalidArg(arg, `must be ${isBig ? 'a bigint' : 'an integer'} in ${range}${got(show, value)}`, 'ERR_VHOST_OUT_OF_RANGE');
  }
  return value as T;
}

/** A bigint or a safe integer, as a bigint; else ERR_VHOST_INVALID_ARG. */
export function toBigInt(value: unknown, arg: string, show: Show = numberOrType): bigint {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isSafeInteger(value)) return BigInt(value);
  throw invalidArg(arg, `must be a bigint or a safe integer${got(show, value)}`);
}

const U64_MAX = (1n << 64n) - 1n;

/** toBigInt() within 0..2^64-1, else ERR_VHOST_OUT_OF_RANGE with `outOfRange`'s reason. */
export function toU64(value: unknown, arg: string, show: Show = numberOrType, outOfRange = (v: bigint) => `must be in 0..2^64-1, got ${plain(v)}`): bigint {
  const v = toBigInt(value, arg, show);
  if (v < 0n || v > U64_MAX) throw invalidArg(arg, outOfRange(v), 'ERR_VHOST_OUT_OF_RANGE');
  return v;
}

/** A boolean, false when undefined. */
export function checkBool(value: unknown, arg: string, show: Show = typeOf): boolean {
  if (value === undefined) return false;
  if (typeof value !== 'boolean') throw invalidArg(arg, `must be a boolean${got(show, value)}`);
  return value;
}

/** Words choices as "'a' or 'b'". */
const quotedOr = (choices: readonly string[]): string => choices.map((c) => `'${c}'`).join(' or ');
/** Words choices as "one of a, b, c". */
export const oneOfList = (choices: readonly string[]): string => `one of ${choices.join(', ')}`;

/** One of two or more strings: "must be 'a' or 'b'" (or as `words` puts the choices). */
export function checkOneOf<T extends string>(value: unknown, arg: string, choices: readonly T[], show: Show = plain, words = quotedOr): T {
  if (!choices.includes(value as T)) throw invalidArg(arg, `must be ${words(choices)}${got(show, value)}`);
  return value as T;
}

/** A non-null object (its fields still unchecked, whatever T says); `expected` names its shape in the message. */
export function checkObject<T extends object = Record<string, unknown>>(value: unknown, arg: string, expected = 'an object', show: Show = null): T {
  if (value === null || typeof value !== 'object') throw invalidArg(arg, `must be ${expected}${got(show, value)}`);
  return value as T;
}

/**
 * A plain copy of a caller's options holding the own enumerable keys among
 * `keys`, each read once: a getter on the caller's object runs once, and later
 * checks read the copy. `value` must already be an object.
 */
export function readOptions<T extends object>(value: T, keys: Iterable<string>): T {
  const copy = {} as Record<string, unknown>;
  for (const key of keys) if (Object.prototype.propertyIsEnumerable.call(value, key)) copy[key] = (value as Record<string, unknown>)[key];
  return copy as T;
}

/** A non-empty array (its elements still unchecked). */
export function checkNonEmptyArray<T = unknown>(value: unknown, arg: string): T[] {
  if (!Array.isArray(value) || value.length === 0) throw invalidArg(arg, 'must be a non-empty array');
  return value as T[];
}

/** A non-empty string. */
export function checkNonEmptyString(value: unknown, arg: string, show: Show = null): string {
  if (typeof value !== 'string' || value.length === 0) throw invalidArg(arg, `must be a non-empty string${got(show, value)}`);
  return value;
}

/** A function (or undefined, when `optional`). */
export function checkFunction(value: unknown, arg: string, optional = false): void {
  if (!(optional && value === undefined) && typeof value !== 'function') throw invalidArg(arg, 'must be a function');
}

/** An AbortSignal or undefined. */
export function checkSignal(value: unknown, arg: string): AbortSignal | undefined {
  if (value !== undefined && !(value instanceof AbortSignal)) throw invalidArg(arg, 'must be an AbortSignal');
  return value;
}

/** The AbortError (code ABORT_ERR, like Node core's) an aborted checkSignal() signal ends an operation with. */
export function abortError(signal: AbortSignal): Error {
  const err = new Error('The operation was aborted', { cause: signal.reason }) as Error & { code: string };
  err.name = 'AbortError';
  err.code = 'ABORT_ERR';
  return err;
}
