// runInFreshTestVms(): CI's retry of a kernel test part in a fresh test VM when the
// VM itself broke (not when a test failed). Used by scripts/test.js; not part of
// the library. Runs the command through lib/cli/test-vm.ts's runInTestVm, loaded
// from dist/ (npm run build:ts).
'use strict';
const fs = require('node:fs');
const path = require('node:path');

function testVm() {
  const file = path.join(__dirname, '..', 'dist', 'cli', 'test-vm.js');
  if (!fs.existsSync(file)) throw new Error('dist/ is not built: run `npm run build:ts` first');
  return require(file);
}

/**
 * runInTestVm(), again in a fresh VM when the VM itself broke rather than the command
 * failing: the command wrote `brokenFile` (its path reaches the command as
 * LINUX_VHOST_VM_BROKEN; it must be in the share, the git toplevel), or scripts/vm.sh
 * stopped a VM that ran too long (124) or failed (125: froze, panicked, did not boot). For
 * tests of nested KVM, whose emulation under TCG can break the test VM's own kernel.
 * `attempts` (≥ 1) bounds the VMs booted; `onBroken(n, why)` is told before the next boots.
 * Returns the last attempt's status, the number of VMs booted and, when the last one broke
 * too, why.
 * @param {string} command
 * @param {readonly string[]} args
 * @param {{ attempts: number, brokenFile: string, onBroken?: (n: number, why: string) => void, label: string, env?: NodeJS.ProcessEnv, cwd?: string, vmArgs?: string[] }} options
 * @returns {{ status: number, attempts: number, broken?: string }}
 */
function runInFreshTestVms(command, args, options) {
  const { attempts, brokenFile, onBroken, ...vmOptions } = options;
  if (!Number.isInteger(attempts) || attempts < 1) throw new RangeError(`attempts must be a whole number ≥ 1 (got ${attempts})`);
  const { runInTestVm } = testVm();
  const env = { ...(options.env ?? process.env), LINUX_VHOST_VM_BROKEN: brokenFile };
  for (let n = 1; ; n++) {
    fs.rmSync(brokenFile, { force: true });
    const status = runInTestVm(command, args, { ...vmOptions, env });
    const why = fs.existsSync(brokenFile)
      ? fs.readFileSync(brokenFile, 'utf8').split('\n')[0]
      : status === 124 || status === 125
        ? `scripts/vm.sh exited ${status} (the VM ran too long, froze or failed)`
        : undefined;
    if (why === undefined || n === attempts) return { status, attempts: n, broken: why };
    onBroken?.(n, why);
  }
}

module.exports = { runInFreshTestVms };
