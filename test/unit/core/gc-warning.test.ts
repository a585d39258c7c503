// No silent close by the garbage collector (issue 13 item 8): an object that
// owns a kernel resource and is collected while open is closed with a process
// warning of code LINUX_VHOST_GC_CLOSE naming its class, what identifies it and
// where it was created. Each case runs in a `node --expose-gc` child over lib/
// (transpiled), which prints the warnings it saw and its fd counts as JSON.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { tsPrelude } from '../../support/helpers';

const ROOT = path.resolve(__dirname, '../../..');
let dir: string;
let prelude: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lv-gc-'));
  prelude = tsPrelude(dir);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

interface ChildResult {
  warnings: { code?: string; message: string; detail?: string }[];
  fdsBefore: number;
  fdsAfter: number;
  extra?: unknown;
}

/** Runs `body` (which may set `extra`) in a child with --expose-gc, then collects twice and reports. */
function inChild(body: string): ChildResult {
  const script = `${prelude}
const fs = require('fs');
const lib = require(${JSON.stringify(path.join(ROOT, 'lib/index.ts'))});
const warnings = [];
process.on('warning', (w) => warnings.push({ code: w.code, message: w.message, detail: w.detail }));
const fds = () => fs.readdirSync('/proc/self/fd').length;
let extra;
// One turn of the loop first, and stdout / stderr (a warning prints there) opened: libuv and Node open those fds lazily.
void process.stdout, process.stderr;
setImmediate(() => {
  const fdsBefore = fds();
  (function createInAFunctionNamedForTheStack() {
${body}
  })();
  gc();
  setImmediate(() => { gc(); setImmediate(() => {
    process.stdout.write(JSON.stringify({ warnings, fdsBefore, fdsAfter: fds(), extra }));
  }); });
});
`;
  const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout) as ChildResult;
}

describe('closing on garbage collection', () => {
  test('an EventFd collected while open is closed with a LINUX_VHOST_GC_CLOSE warning naming it, its fd and where it was created', () => {
    const r = inChild(`const e = lib.EventFd.create(); extra = e.fd;`);
    expect(r.warnings).toHaveLength(1);
    const [w] = r.warnings;
    expect(w.code).toBe('LINUX_VHOST_GC_CLOSE');
    expect(w.message).toBe(`Closing EventFd (fd ${r.extra as number}, 'eventfd') on garbage collection: keep a reference to it while it is in use, or close() it`);
    expect(w.detail).toMatch(/^Created at:\n\s+at EventFd\.create .*\n\s+at createInAFunctionNamedForTheStack /);
    expect(r.fdsAfter).toBe(r.fdsBefore);
  });

  test('GuestMemory collected while mapped is unmapped and its memfd closed, with a warning naming its regions', () => {
    const r = inChild(`lib.GuestMemory.create({ regions: [{ gpa: 0x100000n, size: 0x10000n }] });`);
    expect(r.warnings.map((w) => w.code)).toEqual(['LINUX_VHOST_GC_CLOSE']);
    expect(r.warnings[0].message).toMatch(/^Closing GuestMemory \(1 region\(s\): gpa 0x100000 size 0x10000 fd \d+\) on garbage collection/);
    expect(r.warnings[0].detail).toMatch(/at GuestMemory\.create .*\n\s+at createInAFunctionNamedForTheStack /);
    expect(r.fdsAfter).toBe(r.fdsBefore);
  });

  test('objects closed in time (close() or using) give no warning', () => {
    const r = inChild(`
      lib.EventFd.create().close();
      lib.GuestMemory.create({ regions: [{ gpa: 0n, size: 4096n }] }).close();
      { const e = lib.EventFd.create(); e[Symbol.dispose](); }`);
    expect(r.warnings).toEqual([]);
    expect(r.fdsAfter).toBe(r.fdsBefore);
  });

  test('an object still referenced is neither closed nor warned about', () => {
    const r = inChild(`globalThis.kept = lib.EventFd.create(); extra = 0;`);
    expect(r.warnings).toEqual([]);
    expect(r.fdsAfter).toBe(r.fdsBefore + 1);
  });

  test('an object created inside a method of an object that keeps it (a builder) is still collected and warned about', () => {
    // The creation site must not hold the frames' receivers: a captured, unformatted stack
    // keeps each frame's `this` (here the builder, which keeps the device) alive.
    const r = inChild(`
      const { FdOwner } = require(${JSON.stringify(path.join(ROOT, 'lib/core/fd.ts'))});
      const { native } = require(${JSON.stringify(path.join(ROOT, 'lib/core/native.ts'))});
      class Device extends FdOwner { constructor(h) { super(h); } }
      class Builder { start() { this.device = new Device(native.eventfdCreate(0, false)); return this.device; } }
      new Builder().start();`);
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0].message).toMatch(/^Closing Device \(fd \d+, 'eventfd'\) on garbage collection/);
    expect(r.warnings[0].detail).toMatch(/at Builder\.start .*\n\s+at createInAFunctionNamedForTheStack /);
    expect(r.fdsAfter).toBe(r.fdsBefore);
  });

  test('two objects over one fd: collecting one leaves the fd open for the other, one warning once both are gone', () => {
    // A Tap shares its first queue's fd the way a running device shares its device's: modelled
    // here with the FdOwner base over one native handle.
    const r = inChild(`
      const { FdOwner } = require(${JSON.stringify(path.join(ROOT, 'lib/core/fd.ts'))});
      const { native } = require(${JSON.stringify(path.join(ROOT, 'lib/core/native.ts'))});
      class Inner extends FdOwner { constructor(h) { super(h); } }
      class Outer extends FdOwner { constructor(inner) { super(inner.nativeHandle); this.inner = inner; } }
      const handle = native.eventfdCreate(0, false);
      globalThis.keptInner = new Inner(handle);
      new Outer(globalThis.keptInner);`);
    expect(r.warnings).toEqual([]); // Outer was collected, Inner keeps the fd
    expect(r.fdsAfter).toBe(r.fdsBefore + 1);
    const both = inChild(`
      const { FdOwner } = require(${JSON.stringify(path.join(ROOT, 'lib/core/fd.ts'))});
      const { native } = require(${JSON.stringify(path.join(ROOT, 'lib/core/native.ts'))});
      class Inner extends FdOwner { constructor(h) { super(h); } }
      class Outer extends FdOwner { constructor(inner) { super(inner.nativeHandle); this.inner = inner; } }
      new Outer(new Inner(native.eventfdCreate(0, false)));`);
    expect(both.warnings).toHaveLength(1);
    expect(both.warnings[0].message).toMatch(/^Closing Inner \/ Outer \(fd \d+, 'eventfd'\) on garbage collection/);
    expect(both.fdsAfter).toBe(both.fdsBefore);
  });
});
