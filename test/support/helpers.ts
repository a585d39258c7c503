// Shared helpers of the kernel suite. Kernel tests need the real devices (as
// root); scripts/test.js runs them inside the test VM when this host lacks
// them. With CI=true or LINUX_VHOST_REQUIRE_KERNEL=1 a missing device fails
// the suite instead of skipping it.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as Ts from 'typescript';
import { canRunHere } from '../../lib/cli/test-vm';
import type { VirtioVsockGuest } from '../../lib/guest/vsock';
import type { VsockServer, VsockSocket } from '../../lib/vsock/socket';

export const requireKernel = process.env.CI === 'true' || process.env.LINUX_VHOST_REQUIRE_KERNEL === '1';

/** describe() that needs the given device nodes; skips with the reason, or fails when required. */
export function describeKernel(name: string, devices: string[], fn: () => void): void {
  const { missing } = canRunHere({ devices });
  if (missing.length === 0) {
    describe(name, fn);
  } else if (requireKernel) {
    describe(name, () => {
      test('has the kernel devices it needs', () => {
        throw new Error(`kernel suite required but ${missing.join(', ')} not usable (run it in the test VM: npm test)`);
      });
    });
  } else {
    describe.skip(`${name} [skipped: ${missing.join(', ')} not usable here]`, fn);
  }
}

/** Number of fds open in this process. */
export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** The open flags of an fd as the kernel reports them (octal in /proc/self/fdinfo). */
export function fdFlags(fd: number): number {
  const info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  const m = /^flags:\s+([0-7]+)/m.exec(info);
  if (!m) throw new Error(`no flags in fdinfo of ${fd}`);
  return parseInt(m[1], 8);
}

export const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;

/** An error as the library throws it: errno fields, a hint, a builder step, the argument a validation error names. */
export type KernelError = Error & { code?: string; errno?: number; syscall?: string; path?: string; hint?: string; step?: string; argument?: string };

/** Runs fn and returns the error it throws (fails the test if it does not throw). */
export function thrown(fn: () => unknown): KernelError {
  try {
    fn();
  } catch (err) {
    return err as KernelError;
  }
  throw new Error('expected a throw');
}

/** Returns expectErrno(fn, code, syscall): fn must fail with that errno code from that syscall on `path`. */
export function errnoExpecter(devicePath: string): (fn: () => unknown, code: string, syscall: string) => void {
  return (fn, code, syscall) => {
    const err = thrown(fn);
    expect({ code: err.code, syscall: err.syscall, path: err.path }).toEqual({ code, syscall, path: devicePath });
  };
}

/** A builder failure: the step it stopped at, the queue of that step, the ioctls done before. */
export type StepError = KernelError & { queue?: number; trace?: string[] };

/** Expects start() to fail at `step` with `code` (and `queue`), leaving the fd count where it was. */
export function expectStepFailure(start: () => unknown, step: string, code: string, queue?: number): StepError {
  const before = openFdCount();
  const err = thrown(start) as StepError;
  expect({ step: err.step, code: err.code, queue: err.queue }).toEqual({ step, code, queue });
  expect(openFdCount()).toBe(before);
  return err;
}

/** Ring of queue q at gpa 0x10000 * (q + 1): desc, avail +0x1000, used +0x2000. */
export const ringAt = (q: number): { desc: bigint; avail: bigint; used: bigint } => {
  const base = 0x10000n * BigInt(q + 1);
  return { desc: base, avail: base + 0x1000n, used: base + 0x2000n };
};

/** Resolves after `ms` milliseconds. */
export const sleep = (ms = 0): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls cond every 5 ms until it holds; fails after ms with what was awaited. */
export async function waitFor(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Hex SHA-256 of a buffer, to compare large payloads. */
export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Resolves with the 'error' a stream emits, failing if it closes without one. */
export function errorOf(stream: NodeJS.EventEmitter): Promise<KernelError> {
  return new Promise((resolve, reject) => {
    stream.once('error', resolve);
    stream.once('close', () => setImmediate(() => reject(new Error('closed without an error'))));
  });
}

/** Everything a stream yields until 'end' (events, not for-await: that destroys the stream at the end). */
export function collect(stream: NodeJS.ReadableStream & NodeJS.EventEmitter): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('error', reject);
  });
}

/** Registers an afterEach() that releases what the returned track() was given, newest first. */
function releaseAfterEach<R>(release: (resource: R) => void): <T extends R>(resource: T) => T {
  const opened: R[] = [];
  afterEach(() => {
    for (const resource of opened.splice(0).reverse()) release(resource);
  });
  return (resource) => {
    opened.push(resource);
    return resource;
  };
}

/**
 * Call inside a describe(): returns track(), which registers a resource to be
 * closed after each test, newest first, so a failing test leaks nothing.
 * With ignoreCloseErrors, a close() that throws (a resource the test already
 * destroyed) does not stop the others.
 */
export function closeAfterEach({ ignoreCloseErrors = false } = {}): <T extends { close(): void }>(resource: T) => T {
  return releaseAfterEach<{ close(): void }>((resource) => {
    try {
      resource.close();
    } catch (err) {
      if (!ignoreCloseErrors) throw err;
    }
  });
}

/** closeAfterEach() for Disposables (links, namespaces): [Symbol.dispose]() after each test, newest first. */
export function disposeAfterEach(): <T extends Disposable>(resource: T) => T {
  return releaseAfterEach<Disposable>((resource) => resource[Symbol.dispose]());
}

/** Call inside a describe(): vsock sockets, servers and guests pushed here are released after each test, in that order. */
export function vsockAfterEach(): { sockets: VsockSocket[]; servers: VsockServer[]; guests: VirtioVsockGuest[] } {
  const open = { sockets: [] as VsockSocket[], servers: [] as VsockServer[], guests: [] as VirtioVsockGuest[] };
  afterEach(() => {
    for (const s of open.sockets.splice(0)) s.destroy();
    for (const s of open.servers.splice(0)) if (s.listening) s.close();
    for (const g of open.guests.splice(0)) g.close();
  });
  return open;
}

/**
 * lib/*.ts transpiled to CommonJS, by absolute path, for children and workers
 * that must not load typescript themselves (slow under TCG). typescript is
 * required here, not imported at the top, so suites that never call this do
 * not load it.
 */
export function transpiledLib(): Record<string, string> {
  const ts = require('typescript') as typeof Ts;
  const root = path.resolve(__dirname, '../..');
  const out: Record<string, string> = {};
  const names = fs.readdirSync(path.join(root, 'lib'), { recursive: true, encoding: 'utf8' });
  for (const name of names.filter((f) => f.endsWith('.ts'))) {
    const file = path.join(root, 'lib', name);
    out[file] = ts.transpileModule(fs.readFileSync(file, 'utf8'), {
      fileName: file,
      compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 },
    }).outputText;
  }
  return out;
}

/** JS that lets a plain `node -e` child require lib/*.ts: transpiledLib() handed over in a file in `dir`. */
export function tsPrelude(dir: string): string {
  const cache = path.join(dir, 'lib.json');
  fs.writeFileSync(cache, JSON.stringify(transpiledLib()));
  return `
const compiled = JSON.parse(require('fs').readFileSync(${JSON.stringify(cache)}, 'utf8'));
require.extensions['.ts'] = (m, f) => m._compile(compiled[f], f);
`;
}
