// Run here, or inside the test VM? The one place that decides whether this
// host can give a command the vhost devices it needs, and that re-spawns the
// command inside the test VM (scripts/vm.sh) when it cannot. Used by the CLI
// (`linux-vhost vm`, `linux-vhost demo`), scripts/test.js and the benches.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** The test VM runner, this package's scripts/vm.sh (package.json "files" ships it). */
export const TEST_VM_SCRIPT = path.resolve(__dirname, '..', '..', 'scripts', 'vm.sh');

/** What a command needs from the machine it runs on. */
export interface HostNeeds {
  /** Device nodes that must open read-write, e.g. '/dev/vhost-net'. */
  devices: readonly string[];
  /** Whether it must also run as root (default false). */
  root?: boolean;
}

/** The answer of canRunHere(). */
export interface HereCheck {
  /** True when nothing is missing. */
  ok: boolean;
  /** What is missing, in the order asked: 'root' first, then device paths. */
  missing: string[];
}

/** Where a command should run: here, re-spawned in the test VM, or nowhere (inside the VM already). */
export type RunPlace = 'here' | 'test-vm' | 'nowhere';

/** How runTestVmScript() starts scripts/vm.sh. */
export interface TestVmSpawnOptions {
  /** Prefix of the messages printed when scripts/vm.sh cannot be run, e.g. 'linux-vhost: vm'. */
  label: string;
  /** Environment of scripts/vm.sh (default process.env); it passes CI, LINUX_VHOST_* and JEST_* into the VM. */
  env?: NodeJS.ProcessEnv;
  /** Working directory of scripts/vm.sh; its git toplevel is shared into the VM (default: this process's). */
  cwd?: string;
}

/** Options of runInTestVm(). */
export interface TestVmOptions extends TestVmSpawnOptions {
  /** scripts/vm.sh's own options, put before '--', e.g. ['--smp', '1']. */
  vmArgs?: readonly string[];
}

function usable(device: string): boolean {
  try {
    fs.accessSync(device, fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Whether this process has what `needs` names: root if asked, and each device opening read-write. */
export function canRunHere(needs: HostNeeds): HereCheck {
  const missing: string[] = [];
  if (needs.root && process.getuid?.() !== 0) missing.push('root');
  for (const device of needs.devices) if (!usable(device)) missing.push(device);
  return { ok: missing.length === 0, missing };
}

/** True inside the test VM, where scripts/vm.sh sets LINUX_VHOST_IN_VM=1 (re-spawning there would recurse). */
export function insideTestVm(): boolean {
  return process.env.LINUX_VHOST_IN_VM === '1';
}

/**
 * Decides where a command that needs `needs` runs: 'here' when canRunHere()
 * says so, else 'test-vm', except inside the test VM, where it is 'nowhere'.
 * `missing` is canRunHere()'s list, for messages.
 */
export function whereToRun(needs: HostNeeds): { place: RunPlace; missing: string[] } {
  const { ok, missing } = canRunHere(needs);
  return { place: ok ? 'here' : insideTestVm() ? 'nowhere' : 'test-vm', missing };
}

/**
 * Runs `command args` as root inside the test VM with this process's stdio
 * and waits for it. Returns the exit status: the command's (124 or 125 when
 * scripts/vm.sh timed out or the VM failed), 128 + N when scripts/vm.sh died
 * of signal N, 1 when it could not be started (the reason on stderr, after
 * `options.label`).
 */
export function runInTestVm(command: string, args: readonly string[], options: TestVmOptions): number {
  return runTestVmScript([...(options.vmArgs ?? []), '--', command, ...args], options);
}

/**
 * Runs scripts/vm.sh with arguments as it takes them (its options, '--', the
 * command), for `linux-vhost vm`. Exit status as runInTestVm() returns it.
 */
export function runTestVmScript(scriptArgs: readonly string[], options: TestVmSpawnOptions): number {
  if (!fs.existsSync(TEST_VM_SCRIPT)) {
    process.stderr.write(`${options.label}: ${TEST_VM_SCRIPT} is missing from this installation\n`);
    return 1;
  }
  const res = spawnSync('bash', [TEST_VM_SCRIPT, ...scriptArgs], { stdio: 'inherit', env: options.env, cwd: options.cwd });
  if (res.error) {
    process.stderr.write(`${options.label}: ${res.error.message}\n`);
    return 1;
  }
  if (res.signal) return 128 + (os.constants.signals[res.signal] ?? 0);
  return res.status ?? 1;
}
