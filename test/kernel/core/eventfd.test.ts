// EventFd against the real kernel: counter and semaphore semantics read back
// (also through /proc fdinfo), EAGAIN → null, overflow → false, the poll
// watcher, fd flags, use-after-close, fd leaks and inheritance.
// eventfd exists on any Linux host, so this suite needs no device nodes.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { EVENTFD_MAX, EventFd } from '../../../lib/core/eventfd';
import { native } from '../../../lib/core/native';
import { closeAfterEach, describeKernel, fdFlags, O_CLOEXEC, O_NONBLOCK, openFdCount, sleep, thrown, tsPrelude, waitFor } from '../../support/helpers';

const ROOT = path.resolve(__dirname, '../../..');

/** The counter as the kernel reports it in /proc/self/fdinfo. */
function fdinfoCount(fd: number): bigint {
  const m = /^eventfd-count:\s*([0-9a-f]+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (!m) throw new Error('no eventfd-count in fdinfo');
  return BigInt(`0x${m[1]}`);
}

describeKernel('EventFd (kernel eventfd)', [], () => {
  const track = closeAfterEach();
  const make = (opts?: Parameters<typeof EventFd.create>[0]): EventFd => track(EventFd.create(opts));

  test('is an eventfd opened O_CLOEXEC | O_NONBLOCK', () => {
    const ev = make();
    expect(fs.readlinkSync(`/proc/self/fd/${ev.fd}`)).toBe('anon_inode:[eventfd]');
    expect(fdFlags(ev.fd) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
    expect(ev.path).toBe('eventfd');
    expect(ev.closed).toBe(false);
  });

  test('initval sets the counter the kernel holds', () => {
    const ev = make({ initval: 5 });
    expect(fdinfoCount(ev.fd)).toBe(5n);
    expect(make({ initval: 0xffffffffn }).read()).toBe(0xffffffffn);
  });

  test('writes add up; read returns the sum and resets the counter to zero', () => {
    const ev = make();
    expect(ev.write(1n)).toBe(true);
    expect(ev.write(2)).toBe(true);
    expect(fdinfoCount(ev.fd)).toBe(3n);
    expect(ev.read()).toBe(3n);
    expect(fdinfoCount(ev.fd)).toBe(0n);
  });

  test('read on a zero counter returns null (EAGAIN), not an error', () => {
    const ev = make();
    expect(ev.read()).toBeNull();
    ev.write(7n);
    ev.read();
    expect(ev.read()).toBeNull();
  });

  test('semaphore mode: each read returns 1n and decrements by one', () => {
    const ev = make({ semaphore: true, initval: 2 });
    ev.write(1n);
    expect(fdinfoCount(ev.fd)).toBe(3n);
    expect([ev.read(), ev.read(), ev.read(), ev.read()]).toEqual([1n, 1n, 1n, null]);
  });

  test('a write that would pass 0xfffffffffffffffe returns false and adds nothing', () => {
    const ev = make();
    expect(ev.write(EVENTFD_MAX)).toBe(true);
    expect(ev.write(1n)).toBe(false);
    expect(fdinfoCount(ev.fd)).toBe(EVENTFD_MAX);
    expect(ev.read()).toBe(EVENTFD_MAX);
    expect(ev.write(1n)).toBe(true);
  });

  test('the kernel itself rejects 2^64-1 with EINVAL (write)', () => {
    const ev = make();
    const err = thrown(() => native.eventfdWrite(ev.nativeHandle, 0xffff_ffff_ffff_ffffn));
    expect(err.code).toBe('EINVAL');
    expect(err.errno).toBe(-22);
    expect(err.syscall).toBe('write');
    expect(err.path).toBe('eventfd');
    expect(err.message).toBe("EINVAL: invalid argument, write 'eventfd'");
  });

  test('write() rejects values outside 1..0xfffffffffffffffe before any syscall', () => {
    const ev = make();
    const spy = jest.spyOn(native, 'eventfdWrite');
    try {
      for (const v of [0n, 0, -1, 0xffff_ffff_ffff_ffffn, 1n << 64n]) {
        const err = thrown(() => ev.write(v));
        expect(err.code).toBe('ERR_VHOST_OUT_OF_RANGE');
        expect(err.message).toMatch(/value must be in 1\.\.0xfffffffffffffffe/);
      }
      for (const v of ['1', 1.5, 2 ** 53, null]) {
        const err = thrown(() => ev.write(v as unknown as bigint));
        expect(err.code).toBe('ERR_VHOST_INVALID_ARG');
        expect(err.message).toMatch(/value must be a bigint or a safe integer/);
      }
      expect(spy).not.toHaveBeenCalled();
    } finally {
      spy.mockRestore();
    }
    expect(fdinfoCount(ev.fd)).toBe(0n);
  });

  test('create() validates its options before any syscall', () => {
    const spy = jest.spyOn(native, 'eventfdCreate');
    try {
      expect(thrown(() => EventFd.create({ initval: -1 })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
      expect(thrown(() => EventFd.create({ initval: 0x1_0000_0000 })).message).toMatch(/options\.initval must be in 0\.\.0xffffffff/);
      expect(thrown(() => EventFd.create({ initval: 0.5 })).code).toBe('ERR_VHOST_INVALID_ARG');
      expect(thrown(() => EventFd.create({ semaphore: 'yes' as unknown as boolean })).message).toMatch(/options\.semaphore must be a boolean/);
      expect(thrown(() => EventFd.create(null as unknown as object)).message).toMatch(/options must be an object/);
      expect(spy).not.toHaveBeenCalled();
    } finally {
      spy.mockRestore();
    }
  });

  test('the watcher fires on write, on the loop, and not before', async () => {
    const ev = make();
    const seen: (bigint | null)[] = [];
    ev.watch(() => seen.push(ev.read()));
    await sleep(20);
    expect(seen).toEqual([]);
    ev.write(41n);
    ev.write(1n);
    expect(seen).toEqual([]); // never synchronously
    await waitFor('the first callback', () => seen.length > 0);
    expect(seen).toEqual([42n]);
    ev.write(1n);
    await waitFor('the second callback', () => seen.length > 1);
    expect(seen).toEqual([42n, 1n]);
  });

  test('unwatch stops the callbacks; watch again resumes with the new callback', async () => {
    const ev = make();
    let first = 0;
    let second = 0;
    ev.watch(() => {
      first++;
      ev.read();
    });
    ev.unwatch();
    ev.write(1n);
    await sleep(20);
    expect(first).toBe(0);
    ev.watch(() => {
      second++;
      ev.read();
    });
    await waitFor('the new callback', () => second > 0);
    await sleep(20);
    expect([first, second]).toEqual([0, 1]);
    ev.unwatch();
    ev.unwatch(); // idempotent
  });

  test('close() while watching stops the watcher and closes the fd', async () => {
    const before = openFdCount();
    const ev = EventFd.create();
    let calls = 0;
    ev.watch(() => calls++);
    ev.close();
    await sleep(20);
    expect(calls).toBe(0);
    expect(openFdCount()).toBe(before);
  });

  test('watch() requires a function', () => {
    const ev = make();
    const err = thrown(() => ev.watch(undefined as unknown as () => void));
    expect(err.code).toBe('ERR_VHOST_INVALID_ARG');
    expect(err.message).toMatch(/cb must be a function/);
  });

  test('use after close throws ERR_VHOST_CLOSED and makes no syscall; close is idempotent', () => {
    const ev = EventFd.create();
    const fd = ev.fd;
    ev.close();
    ev.close();
    ev[Symbol.dispose]();
    expect(ev.closed).toBe(true);
    expect(fs.existsSync(`/proc/self/fd/${fd}`)).toBe(false); // nothing in this test opened another fd
    const spies = (['eventfdRead', 'eventfdWrite'] as const).map((name) => jest.spyOn(native, name));
    try {
      for (const use of [() => ev.read(), () => ev.write(1n), () => ev.watch(() => {}), () => ev.ref(), () => ev.unref(), () => ev.fd, () => ev.nativeHandle]) {
        const err = thrown(use);
        expect(err.code).toBe('ERR_VHOST_CLOSED');
        expect(err.message).toMatch(/EventFd is closed/);
      }
      for (const spy of spies) expect(spy).not.toHaveBeenCalled();
    } finally {
      for (const spy of spies) spy.mockRestore();
    }
    expect(() => ev.unwatch()).not.toThrow();
  });

  test('the native layer refuses a closed handle too (ERR_VHOST_CLOSED, no read on a recycled fd)', () => {
    const handle = native.eventfdCreate(0, false);
    handle.close();
    const other = make({ initval: 9 }); // likely takes the same fd number
    expect(thrown(() => native.eventfdRead(handle)).code).toBe('ERR_VHOST_CLOSED');
    expect(thrown(() => native.eventfdWrite(handle, 1n)).code).toBe('ERR_VHOST_CLOSED');
    expect(other.read()).toBe(9n);
  });

  test('1000 create/write/read/close cycles leave the fd count unchanged', () => {
    const before = openFdCount();
    for (let i = 0; i < 1000; i++) {
      const ev = EventFd.create({ semaphore: i % 2 === 1 });
      ev.write(1n);
      ev.read();
      ev.close();
    }
    expect(openFdCount()).toBe(before);
  }, 60_000); // slow under TCG

  test('a child process inherits none of its eventfds', () => {
    const evs = [make(), make({ semaphore: true })];
    const out = spawnSync('/bin/sh', ['-c', 'ls -l /proc/$$/fd'], { encoding: 'utf8' });
    expect(out.status).toBe(0);
    expect(out.stdout).toMatch(/ 0 -> /);
    expect(out.stdout).not.toMatch(/eventfd/);
    for (const ev of evs) expect(fs.readlinkSync(`/proc/self/fd/${ev.fd}`)).toBe('anon_inode:[eventfd]');
  });

  describe('ref()/unref() of the watcher (child processes)', () => {
    // The child watches an eventfd; SIGUSR2 (whose handler does not keep the
    // loop alive) makes it write the eventfd; the callback reads and closes.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lvtest-'));
    afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
    const prelude = tsPrelude(dir);
    const child = (refMode: 'ref' | 'unref') => `${prelude}
const { EventFd } = require(${JSON.stringify(path.join(ROOT, 'lib/core/eventfd.ts'))});
const ev = EventFd.create();
ev.watch(() => { console.log('fired', String(ev.read())); ev.close(); });
ev.${refMode}();
process.on('SIGUSR2', () => ev.write(5n));
console.log('ready');
`;

    function run(refMode: 'ref' | 'unref') {
      const proc = spawn(process.execPath, ['-e', child(refMode)], { stdio: ['ignore', 'pipe', 'inherit'] });
      let stdout = '';
      const ready = new Promise<void>((resolve) =>
        proc.stdout.on('data', (d: Buffer) => {
          stdout += d.toString();
          if (stdout.includes('ready')) resolve();
        }),
      );
      const exit = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
      // The exit code, or 'timeout' (after killing the child) if it is still running after 30 s.
      const exited = (): Promise<number | null | 'timeout'> => {
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<'timeout'>((resolve) => {
          timer = setTimeout(() => {
            proc.kill('SIGKILL');
            resolve('timeout');
          }, 30_000);
        });
        return Promise.race([exit, timeout]).finally(() => clearTimeout(timer));
      };
      return { proc, ready, exited, output: () => stdout };
    }

    test('an unref()ed watcher does not keep the process alive', async () => {
      const c = run('unref');
      const code = await c.exited();
      expect(code).toBe(0);
      expect(c.output()).toBe('ready\n');
    }, 60_000);

    test('a ref()ed watcher keeps it alive until the eventfd is written and closed', async () => {
      const c = run('ref');
      await c.ready;
      await sleep(500);
      expect(c.proc.exitCode).toBeNull();
      expect(c.proc.signalCode).toBeNull();
      c.proc.kill('SIGUSR2');
      const code = await c.exited();
      expect(code).toBe(0);
      expect(c.output()).toBe('ready\nfired 5\n');
    }, 60_000);
  });
});
