// lib/core/check.ts: the shared argument checks. Each module words a rejected value
// its own way (the `show` argument), so these tests pin both the codes and the
// exact messages each wording produces.
import {
  abortError, checkBool, checkFunction, checkInt, checkNonEmptyArray, checkNonEmptyString, checkObject, checkOneOf, checkSignal, checkUint,
  describe as describeValue, numberOrType, oneOfList, plain, readOptions, SHOWN_MAX, toBigInt, toU64, typeOf,
} from '../../../lib/core/check';
import { VhostError } from '../../../lib/core/errors';
import { checkVsockType } from '../../../lib/vsock/options';
import { thrown } from '../../support/helpers';

function rejects(fn: () => unknown, code: string, message: string, argument: string): void {
  const err = thrown(fn) as VhostError & { argument?: string };
  expect(err).toBeInstanceOf(VhostError);
  expect(err.code).toBe(code);
  expect(err.message).toBe(`${code}: ${message}`);
  expect(err.argument).toBe(argument);
}

describe('how a rejected value is shown', () => {
  test('typeOf, numberOrType, describe', () => {
    expect([null, 1.5, '1', 2n].map(typeOf)).toEqual(['object', 'number', 'string', 'bigint']);
    expect([null, 1.5, '1', 2n].map(numberOrType)).toEqual(['object', '1.5', 'string', 'bigint']);
    expect([null, 1.5, '1', 2n, undefined, true, {}].map(describeValue)).toEqual(['null', '1.5', '"1"', '2n', 'undefined', 'true', 'object']);
  });
});

describe('checkInt', () => {
  test('returns an integer within min..max, bounds included', () => {
    expect(checkInt(1, 'n', 1, 3)).toBe(1);
    expect(checkInt(3, 'n', 1, 3)).toBe(3);
  });

  test('a non-integer is ERR_VHOST_INVALID_ARG, shown as asked (a number or its type by default)', () => {
    rejects(() => checkInt(1.5, 'n', 0, 9), 'ERR_VHOST_INVALID_ARG', 'n must be an integer, got 1.5', 'n');
    rejects(() => checkInt('1', 'n', 0, 9), 'ERR_VHOST_INVALID_ARG', 'n must be an integer, got string', 'n');
    rejects(() => checkInt('1', 'n', 0, 9, String), 'ERR_VHOST_INVALID_ARG', 'n must be an integer, got 1', 'n');
    rejects(() => checkInt('1', 'n', 0, 9, describeValue), 'ERR_VHOST_INVALID_ARG', 'n must be an integer, got "1"', 'n');
    rejects(() => checkInt(1n, 'n', 0, 9, null), 'ERR_VHOST_INVALID_ARG', 'n must be an integer', 'n');
  });

  test('outside min..max is ERR_VHOST_OUT_OF_RANGE naming the range', () => {
    rejects(() => checkInt(0, 'n', 1, 3), 'ERR_VHOST_OUT_OF_RANGE', 'n must be in 1..3, got 0', 'n');
    rejects(() => checkInt(4, 'n', 1, 3), 'ERR_VHOST_OUT_OF_RANGE', 'n must be in 1..3, got 4', 'n');
  });
});

describe('checkUint', () => {
  test('numbers: one ERR_VHOST_OUT_OF_RANGE for a wrong type or range', () => {
    expect(checkUint(0xffff, 'v', 0xffff)).toBe(0xffff);
    rejects(() => checkUint(0x10000, 'v', 0xffff), 'ERR_VHOST_OUT_OF_RANGE', 'v must be an integer in 0..65535, got 65536', 'v');
    rejects(() => checkUint(-1, 'v', 0xffff), 'ERR_VHOST_OUT_OF_RANGE', 'v must be an integer in 0..65535, got -1', 'v');
    rejects(() => checkUint(1n, 'v', 0xffff), 'ERR_VHOST_OUT_OF_RANGE', 'v must be an integer in 0..65535, got 1', 'v');
    rejects(() => checkUint(0.5, 'v', 255, undefined, null), 'ERR_VHOST_OUT_OF_RANGE', 'v must be an integer in 0..255', 'v');
  });

  test('a bigint max wants a bigint; the range text can be given', () => {
    const max = (1n << 64n) - 1n;
    expect(checkUint(max, 'v', max, '0..2^64-1')).toBe(max);
    rejects(() => checkUint(1 << 20, 'v', max, '0..2^64-1'), 'ERR_VHOST_OUT_OF_RANGE', 'v must be a bigint in 0..2^64-1, got 1048576', 'v');
    rejects(() => checkUint(max + 1n, 'v', max, '0..2^64-1'), 'ERR_VHOST_OUT_OF_RANGE', 'v must be a bigint in 0..2^64-1, got 18446744073709551616', 'v');
    rejects(() => checkUint(-1n, 'v', max, '0..2^64-1'), 'ERR_VHOST_OUT_OF_RANGE', 'v must be a bigint in 0..2^64-1, got -1', 'v');
  });
});

describe('toBigInt and toU64', () => {
  test('take a bigint or a safe integer', () => {
    expect(toBigInt(5, 'v')).toBe(5n);
    expect(toBigInt(-5n, 'v')).toBe(-5n);
    expect(toU64(Number.MAX_SAFE_INTEGER, 'v')).toBe(BigInt(Number.MAX_SAFE_INTEGER));
    expect(toU64((1n << 64n) - 1n, 'v')).toBe((1n << 64n) - 1n);
  });

  test('anything else is ERR_VHOST_INVALID_ARG', () => {
    rejects(() => toBigInt(2 ** 53, 'v'), 'ERR_VHOST_INVALID_ARG', 'v must be a bigint or a safe integer, got 9007199254740992', 'v');
    rejects(() => toBigInt('1', 'v'), 'ERR_VHOST_INVALID_ARG', 'v must be a bigint or a safe integer, got string', 'v');
    rejects(() => toU64(null, 'v', null), 'ERR_VHOST_INVALID_ARG', 'v must be a bigint or a safe integer', 'v');
  });

  test('toU64 outside 0..2^64-1 is ERR_VHOST_OUT_OF_RANGE, with the default or the given reason', () => {
    rejects(() => toU64(-1, 'v'), 'ERR_VHOST_OUT_OF_RANGE', 'v must be in 0..2^64-1, got -1', 'v');
    rejects(() => toU64(1n << 64n, 'v', null, () => 'must fit in 64 bits unsigned'), 'ERR_VHOST_OUT_OF_RANGE', 'v must fit in 64 bits unsigned', 'v');
  });
});

describe('checkBool, checkOneOf, checkVsockType', () => {
  test('checkBool: undefined is false; anything but a boolean is ERR_VHOST_INVALID_ARG', () => {
    expect(checkBool(undefined, 'b')).toBe(false);
    expect(checkBool(true, 'b')).toBe(true);
    rejects(() => checkBool(null, 'b'), 'ERR_VHOST_INVALID_ARG', 'b must be a boolean, got object', 'b');
    rejects(() => checkBool(1, 'b', null), 'ERR_VHOST_INVALID_ARG', 'b must be a boolean', 'b');
  });

  test('checkOneOf names every choice', () => {
    expect(checkOneOf('pio', 'space', ['mmio', 'pio'])).toBe('pio');
    rejects(() => checkOneOf('file', 'backing', ['memfd', 'anonymous']), 'ERR_VHOST_INVALID_ARG', "backing must be 'memfd' or 'anonymous', got file", 'backing');
    rejects(() => checkOneOf(undefined, 'endian', ['little', 'big'], describeValue), 'ERR_VHOST_INVALID_ARG', "endian must be 'little' or 'big', got undefined", 'endian');
  });

  test('checkOneOf with oneOfList lists the choices bare', () => {
    expect(checkOneOf('vepa', 'mode', ['bridge', 'vepa'], null, oneOfList)).toBe('vepa');
    rejects(() => checkOneOf('x', 'mode', ['bridge', 'vepa', 'passthru'], null, oneOfList), 'ERR_VHOST_INVALID_ARG', 'mode must be one of bridge, vepa, passthru', 'mode');
  });

  test("checkVsockType: 'stream' when undefined, else 'stream' or 'seqpacket'", () => {
    expect(checkVsockType(undefined, 't')).toBe('stream');
    expect(checkVsockType('seqpacket', 't')).toBe('seqpacket');
    rejects(() => checkVsockType(null, 't'), 'ERR_VHOST_INVALID_ARG', "t must be 'stream' or 'seqpacket', got null", 't');
  });
});

describe('checkObject, checkNonEmptyArray, checkNonEmptyString, checkFunction, checkSignal', () => {
  test('checkObject returns the object; null and primitives are ERR_VHOST_INVALID_ARG naming the shape', () => {
    const o = { a: 1 };
    expect(checkObject(o, 'o')).toBe(o);
    rejects(() => checkObject(null, 'o'), 'ERR_VHOST_INVALID_ARG', 'o must be an object', 'o');
    rejects(() => checkObject(1, 'o', 'an object { gpa, size }'), 'ERR_VHOST_INVALID_ARG', 'o must be an object { gpa, size }', 'o');
    rejects(() => checkObject('x', 'o', 'an object', typeOf), 'ERR_VHOST_INVALID_ARG', 'o must be an object, got string', 'o');
  });

  test('checkNonEmptyArray returns the array; an empty array or a non-array is ERR_VHOST_INVALID_ARG', () => {
    const a = [0];
    expect(checkNonEmptyArray(a, 'regions')).toBe(a);
    rejects(() => checkNonEmptyArray([], 'regions'), 'ERR_VHOST_INVALID_ARG', 'regions must be a non-empty array', 'regions');
    rejects(() => checkNonEmptyArray({ length: 1 }, 'regions'), 'ERR_VHOST_INVALID_ARG', 'regions must be a non-empty array', 'regions');
  });

  test('checkNonEmptyString', () => {
    expect(checkNonEmptyString('/dev/kvm', 'path')).toBe('/dev/kvm');
    rejects(() => checkNonEmptyString('', 'path'), 'ERR_VHOST_INVALID_ARG', 'path must be a non-empty string', 'path');
    rejects(() => checkNonEmptyString(3, 'path', describeValue), 'ERR_VHOST_INVALID_ARG', 'path must be a non-empty string, got 3', 'path');
  });

  test('checkFunction: undefined passes only when optional', () => {
    expect(() => checkFunction(() => 0, 'cb')).not.toThrow();
    expect(() => checkFunction(undefined, 'cb', true)).not.toThrow();
    rejects(() => checkFunction(undefined, 'cb'), 'ERR_VHOST_INVALID_ARG', 'cb must be a function', 'cb');
    rejects(() => checkFunction(null, 'cb', true), 'ERR_VHOST_INVALID_ARG', 'cb must be a function', 'cb');
  });

  test('checkSignal takes an AbortSignal or undefined; abortError is an AbortError with code ABORT_ERR', () => {
    const ac = new AbortController();
    expect(checkSignal(ac.signal, 's')).toBe(ac.signal);
    expect(checkSignal(undefined, 's')).toBeUndefined();
    rejects(() => checkSignal({}, 's'), 'ERR_VHOST_INVALID_ARG', 's must be an AbortSignal', 's');
    ac.abort('why');
    const err = abortError(ac.signal) as Error & { code?: string };
    expect([err.name, err.code, err.message, err.cause]).toEqual(['AbortError', 'ABORT_ERR', 'The operation was aborted', 'why']);
  });
});

describe('a rejected value never runs the caller code (issue 13)', () => {
  /** An object whose every coercion hook records and throws. */
  function hostile(calls: string[]): object {
    const hook = (name: string) => () => {
      calls.push(name);
      throw new Error(`${name} ran`);
    };
    return { toString: hook('toString'), valueOf: hook('valueOf'), [Symbol.toPrimitive]: hook('toPrimitive'), toJSON: hook('toJSON') };
  }
  const nullProto = Object.create(null) as object;
  const revoked = Proxy.revocable({}, {});
  revoked.revoke();

  test('plain() and describe() show objects, functions, symbols and proxies by type, and cut long strings and bigints', () => {
    const calls: string[] = [];
    const values = [hostile(calls), nullProto, () => 1, Symbol('s'), revoked.proxy, new Proxy({}, { get: () => { calls.push('get'); return 1; } })];
    expect(values.map(plain)).toEqual(['object', 'object', 'function', 'symbol', 'object', 'object']);
    expect(values.map(describeValue)).toEqual(['object', 'object', 'function', 'symbol', 'object', 'object']);
    expect(calls).toEqual([]);
    expect(plain('x'.repeat(1 << 20))).toBe(`${'x'.repeat(SHOWN_MAX)}... (1048576 chars)`);
    expect(describeValue('y'.repeat(100))).toBe(`"${'y'.repeat(SHOWN_MAX)}"... (100 chars)`);
    expect(plain(10n ** 100n)).toBe(`1${'0'.repeat(SHOWN_MAX - 1)}... (101 chars)`);
    expect([null, undefined, -0, NaN, 1.5, true, 2n, 's'].map(plain)).toEqual(['null', 'undefined', '0', 'NaN', '1.5', 'true', '2', 's']);
  });

  test.each([
    ['checkUint', (v: unknown) => checkUint(v, 'v', 10), 'ERR_VHOST_OUT_OF_RANGE', 'v must be an integer in 0..10, got object'],
    ['checkOneOf', (v: unknown) => checkOneOf(v, 'v', ['a', 'b']), 'ERR_VHOST_INVALID_ARG', "v must be 'a' or 'b', got object"],
    ['checkInt', (v: unknown) => checkInt(v, 'v', 0, 1), 'ERR_VHOST_INVALID_ARG', 'v must be an integer, got object'],
    ['toU64', (v: unknown) => toU64(v, 'v'), 'ERR_VHOST_INVALID_ARG', 'v must be a bigint or a safe integer, got object'],
  ])('%s: a hostile or prototype-less object gives its ERR_VHOST_* error, never its own', (_name, check, code, message) => {
    const calls: string[] = [];
    for (const value of [hostile(calls), nullProto]) rejects(() => check(value), code, message, 'v');
    expect(calls).toEqual([]);
  });

  test('a symbol is rejected with a code, not the TypeError a template literal would throw', () => {
    rejects(() => checkOneOf(Symbol('x'), 'v', ['a']), 'ERR_VHOST_INVALID_ARG', "v must be 'a', got symbol", 'v');
  });

  test('readOptions reads each listed key once, own enumerable ones only', () => {
    const reads: string[] = [];
    const options = Object.create({ inherited: 1 }) as Record<string, unknown>;
    Object.defineProperty(options, 'size', { enumerable: true, get: () => (reads.push('size'), 16) });
    Object.defineProperty(options, 'hidden', { enumerable: false, value: 2 });
    const copy = readOptions(options, ['size', 'inherited', 'hidden', 'missing']);
    expect(copy).toEqual({ size: 16 });
    void copy.size;
    void copy.size;
    expect(reads).toEqual(['size']);
  });
});
