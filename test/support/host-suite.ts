// What the host suite (test/host, run by `npm test` on the CI host) needs from
// this machine, and one way to say so: a describe() that runs when every tool
// is there, skips with the reason otherwise, and fails instead of skipping
// where the host suite is required (CI=true or LINUX_VHOST_REQUIRE_HOST=1), so
// CI can never pass by having skipped the tests that use a real peer.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const requireHost = process.env.CI === 'true' || process.env.LINUX_VHOST_REQUIRE_HOST === '1';

/** A check: null when the tool is usable, else why not (with the package to install). */
export type Need = () => string | null;

/** A program that answers `args` with exit 0 (e.g. `--version`). */
export function program(file: string, args: string[], install: string): Need {
  return () => {
    if (file.startsWith('/') && !fs.existsSync(file)) return `${file} not installed (${install})`;
    const r = spawnSync(file, args, { encoding: 'utf8' });
    return r.status === 0 ? null : `${file} ${args.join(' ')} failed: ${r.error?.message ?? r.stderr.trim()} (${install})`;
  };
}

/** The guest kernel and initramfs scripts/guest-initramfs.sh builds (or reuses). */
export const guestKernel: Need = () => {
  const r = spawnSync('bash', [path.join(__dirname, '../../scripts/guest-initramfs.sh')], { encoding: 'utf8' });
  return r.status === 0 ? null : `no guest kernel/initramfs: ${r.stderr.trim()}`;
};

/**
 * describe() that needs `needs` (checked once, in order, when the file loads):
 * `what` names them in the failing test where the host suite is required.
 */
export function describeNeeding(name: string, what: string, needs: Need[], fn: () => void): void {
  let missing: string | null = null;
  for (const need of needs) {
    missing = need();
    if (missing !== null) break;
  }
  if (missing === null) describe(name, fn);
  else if (requireHost) {
    const why = missing;
    describe(name, () => {
      test(`has ${what}`, () => {
        throw new Error(`host suite required but ${why}`);
      });
    });
  } else describe.skip(`${name} [skipped: ${missing}]`, fn);
}
