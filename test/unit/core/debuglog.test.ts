// NODE_DEBUG=linux-vhost (issue 13 item 7): every call through the addon door
// (lib/core/native.ts) is traced with its arguments and its result or error,
// through util.debuglog; with it off the binding is used unwrapped. Each case
// runs a child over lib/ (transpiled) and reads its stderr.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { tsPrelude } from '../../support/helpers';

const ROOT = path.resolve(__dirname, '../../..');
let dir: string;
let prelude: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lv-debug-'));
  prelude = tsPrelude(dir);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function child(body: string, nodeDebug: string | undefined): { stdout: string; stderr: string } {
  const env = { ...process.env };
  delete env.NODE_DEBUG;
  if (nodeDebug !== undefined) env.NODE_DEBUG = nodeDebug;
  const script = `${prelude}\nconst lib = require(${JSON.stringify(path.join(ROOT, 'lib/index.ts'))});\n${body}`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env, timeout: 30_000 });
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`);
  return { stdout: r.stdout, stderr: r.stderr };
}

/** Trace lines without the "LINUX-VHOST <pid>: " prefix. */
const traceLines = (stderr: string): string[] => stderr.split('\n').filter((l) => l.startsWith('LINUX-VHOST ')).map((l) => l.replace(/^LINUX-VHOST \d+: /, ''));

describe('NODE_DEBUG=linux-vhost', () => {
  test('traces each kernel call with its arguments and result, the close of the fd included', () => {
    const { stderr } = child(`const e = lib.EventFd.create({ initval: 2 }); e.write(5n); e.read(); e.close();`, 'linux-vhost');
    const lines = traceLines(stderr);
    const fd = /^eventfdCreate\(2, false\) -> fd (\d+) 'eventfd'$/.exec(lines[0])?.[1];
    expect(fd).toBeDefined();
    expect(lines).toEqual([
      `eventfdCreate(2, false) -> fd ${fd} 'eventfd'`,
      `eventfdWrite(fd ${fd} 'eventfd', 0x5) -> true`,
      `eventfdRead(fd ${fd} 'eventfd') -> 0x7`,
      `fd ${fd} 'eventfd'.close() -> ok`,
    ]);
  });

  test('traces a failed call with the error, and the unmap and close of guest memory', () => {
    const { stderr } = child(`
      lib.GuestMemory.create({ regions: [{ gpa: 0n, size: 4096n }] }).close();
      try { lib.VhostNet.open('/nonexistent/vhost-net'); } catch {}`, 'linux-vhost');
    const lines = traceLines(stderr);
    expect(lines).toContainEqual(expect.stringMatching(/^mmapShared\(fd \d+ 'memfd:linux-vhost-guest-0', 0x1000, 0x0, 0\) -> mapping 0x[0-9a-f]+\+0x1000$/));
    expect(lines).toContainEqual(expect.stringMatching(/^mapping 0x[0-9a-f]+\+0x1000\.unmap\(\) -> ok$/));
    expect(lines).toContain(`openPath("/nonexistent/vhost-net") !! ENOENT: no such file or directory, open '/nonexistent/vhost-net'`);
  });

  test('off (or set for another module): nothing is traced and the binding is not wrapped', () => {
    const body = `
      const raw = require(${JSON.stringify(path.join(ROOT, 'node_modules/node-gyp-build'))})(${JSON.stringify(ROOT)});
      const { native } = require(${JSON.stringify(path.join(ROOT, 'lib/core/native.ts'))});
      lib.EventFd.create().close();
      console.log(native === raw && native.eventfdCreate === raw.eventfdCreate);`;
    for (const nodeDebug of [undefined, 'net,http']) {
      const { stdout, stderr } = child(body, nodeDebug);
      expect(stdout.trim()).toBe('true');
      expect(traceLines(stderr)).toEqual([]);
    }
  });
});
