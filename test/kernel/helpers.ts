// Shared helpers of the kernel suite. Kernel tests need the real devices (as
// root); scripts/test.js runs them inside the test VM when this host lacks
// them. With CI=true or LINUX_VHOST_REQUIRE_KERNEL=1 a missing device fails
// the suite instead of skipping it.
import * as fs from 'node:fs';

export const requireKernel = process.env.CI === 'true' || process.env.LINUX_VHOST_REQUIRE_KERNEL === '1';

function usable(path: string): boolean {
  try {
    fs.accessSync(path, fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** describe() that needs the given device nodes; skips with the reason, or fails when required. */
export function describeKernel(name: string, devices: string[], fn: () => void): void {
  const missing = devices.filter((d) => !usable(d));
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

/** Runs fn and returns the error it throws (fails the test if it does not throw). */
export function thrown(fn: () => unknown): Error & { code?: string; errno?: number; syscall?: string; path?: string; hint?: string; step?: string } {
  try {
    fn();
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a throw');
}

/** Polls cond every 5 ms until it holds; fails after ms with what was awaited. */
export async function waitFor(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Call inside a describe(): returns track(), which registers a resource to be
 * closed after each test, newest first, so a failing test leaks nothing.
 */
export function closeAfterEach(): <T extends { close(): void }>(resource: T) => T {
  const opened: { close(): void }[] = [];
  afterEach(() => {
    for (const resource of opened.splice(0).reverse()) resource.close();
  });
  return (resource) => {
    opened.push(resource);
    return resource;
  };
}
