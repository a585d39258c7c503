// The addon keeps no process-wide state: it loads and works in worker threads
// (each with its own env, loop and per-env data), tears down with them (even
// with objects left open), and the main thread keeps working afterwards.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { EventFd } from '../../../lib/core/eventfd';
import { GuestMemory } from '../../../lib/core/memory';
import { openFdCount, transpiledLib } from '../../support/helpers';

const ROOT = path.resolve(__dirname, '../../..');

/** Every lib/ module transpiled once here, so workers need not load typescript. */
const compiled = transpiledLib();

/** Worker source: lets the worker require lib/*.ts (from `compiled`), then runs `body`. */
const workerSource = (body: string): string => `
const fs = require('fs');
const { parentPort, workerData } = require('worker_threads');
require.extensions['.ts'] = (m, f) => m._compile(workerData.compiled[f], f);
const { EventFd } = require(${JSON.stringify(path.join(ROOT, 'lib/core/eventfd.ts'))});
const { GuestMemory } = require(${JSON.stringify(path.join(ROOT, 'lib/core/memory.ts'))});
const native = require(${JSON.stringify(path.join(ROOT, 'node_modules/node-gyp-build'))})(${JSON.stringify(ROOT)});
${body}
`;

const mapsMention = (name: string): boolean => fs.readFileSync('/proc/self/maps', 'utf8').includes(name);

function runWorker(body: string, onMessage?: (msg: unknown, worker: Worker) => void): Promise<{ code: number; messages: unknown[] }> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(workerSource(body), { eval: true, workerData: { compiled } });
    const messages: unknown[] = [];
    worker.on('message', (msg) => {
      messages.push(msg);
      onMessage?.(msg, worker);
    });
    worker.on('error', reject);
    worker.on('exit', (code) => resolve({ code, messages }));
  });
}

describe('addon in worker threads', () => {
  // The main thread has loaded the addon (imports above) before any worker does.
  const mainEv = EventFd.create();
  afterAll(() => mainEv.close());

  test('EventFd (with a watcher on the worker loop) and GuestMemory work in a worker, which exits cleanly', async () => {
    const before = openFdCount();
    const { code, messages } = await runWorker(`
const ev = EventFd.create();
const mem = GuestMemory.create({ name: 'lvworker-ok', regions: [{ gpa: 0x1000n, size: 8192 }] });
mem.view(0x2000n, 4).set([1, 2, 3, 4]);
const bytes = [...mem.view(0x2000n, 4)];
ev.watch(() => {
  const value = ev.read();
  ev.close();
  mem.close();
  parentPort.postMessage({ value: String(value), bytes, closed: [ev.closed, mem.closed] });
});
ev.write(3n);
ev.write(4);
`);
    expect(code).toBe(0);
    expect(messages).toEqual([{ value: '7', bytes: [1, 2, 3, 4], closed: [true, true] }]);
    expect(openFdCount()).toBe(before);
    expect(mapsMention('lvworker-ok')).toBe(false);
  });

  test('several workers at once, each with its own per-env data', async () => {
    const runs = await Promise.all(
      [1, 2, 3].map((n) =>
        runWorker(`
const ev = EventFd.create({ initval: ${n} });
parentPort.postMessage(String(ev.read()));
const m = native.mmapShared(null, 4096n, 0n, 0);
new Uint8Array(m.buffer)[0] = ${n};
parentPort.postMessage(new Uint8Array(m.buffer)[0]);
m.unmap();
ev.close();
`),
      ),
    );
    expect(runs.map((r) => r.code)).toEqual([0, 0, 0]);
    expect(runs.map((r) => r.messages)).toEqual([
      ['1', 1],
      ['2', 2],
      ['3', 3],
    ]);
  });

  test('a worker terminated with objects still open (a ref()ed watcher, a viewed mapping) tears down without leaking', async () => {
    const before = openFdCount();
    const { code, messages } = await runWorker(
      `
const ev = EventFd.create();
ev.watch(() => ev.read());
const mem = GuestMemory.create({ name: 'lvworker-left-open', regions: [{ gpa: 0n, size: 65536 }] });
globalThis.keep = [ev, mem, mem.view(0n, 16)];
parentPort.postMessage({ fds: fs.readdirSync('/proc/self/fd').length });
`,
      (_msg, worker) => void worker.terminate(),
    );
    expect(code).toBe(1); // terminate()
    expect((messages[0] as { fds: number }).fds).toBeGreaterThanOrEqual(before + 2);
    expect(openFdCount()).toBe(before);
    expect(mapsMention('lvworker-left-open')).toBe(false);
  });

  test('the main thread still works after the workers are gone', async () => {
    expect(mainEv.write(2n)).toBe(true);
    const fired = new Promise<bigint | null>((resolve) => mainEv.watch(() => resolve(mainEv.read())));
    expect(await fired).toBe(2n);
    mainEv.unwatch();
    const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 4096 }] });
    mem.view(0n, 1)[0] = 9;
    expect(mem.view(0n, 1)[0]).toBe(9);
    mem.close();
  });
});
