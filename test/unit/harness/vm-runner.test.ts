// scripts/vm.sh, the runner the kernel suite depends on: the command's exit
// status comes back, and the boot watchdog stops watching once the command has
// started (CI once lost a kernel run to a watchdog that fired mid-run). Boots a
// small VM under QEMU; needs qemu-system-x86_64, which CI installs.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
type FreshVms = { runInFreshTestVms: (command: string, args: readonly string[], options: { label: string; vmArgs?: string[]; attempts: number; brokenFile: string; onBroken?: (n: number, why: string) => void }) => { status: number; attempts: number; broken?: string } };
// scripts/fresh-vms.js is plain JS (CI's harness, not the library).
const { runInFreshTestVms } = require('../../../scripts/fresh-vms') as Pick<FreshVms, 'runInFreshTestVms'>;

const script = path.resolve(__dirname, '../../../scripts/vm.sh');
const haveQemu = spawnSync('sh', ['-c', 'command -v qemu-system-x86_64'], { stdio: 'ignore' }).status === 0;
const maybe = haveQemu || process.env.CI === 'true' ? describe : describe.skip;

interface Run { status: number | null; stdout: string; stderr: string; startMs: number; firstOutputMs?: number; closeMs?: number }
interface Running extends Promise<Run> {
  child: ChildProcess;
  /** Resolves once the command's output matched. */
  output(pattern: RegExp): Promise<void>;
}

function vm(env: Record<string, string>, ...cmd: string[]): Running {
  const startMs = Date.now();
  const child = spawn('bash', [script, '--mem', '1024', '--smp', '1', '--', ...cmd], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  let firstOutputMs: number | undefined;
  child.stdout.setEncoding('utf8').on('data', (s: string) => {
    firstOutputMs ??= Date.now();
    stdout += s;
  });
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const done = new Promise<Run>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr, startMs, firstOutputMs, closeMs: Date.now() }));
  });
  const output = (pattern: RegExp) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (!pattern.test(stdout)) return;
        child.stdout.off('data', check);
        resolve();
      };
      child.stdout.on('data', check);
      done.then(() => reject(new Error(`the VM ended before its output matched ${pattern}: ${stdout}${stderr}`)), reject);
      check();
    });
  return Object.assign(done, { child, output });
}

/** The pid of the qemu-system process among pid's descendants, once there is one. */
async function waitForQemuUnder(pid: number): Promise<number> {
  for (let i = 0; i < 300; i++) {
    const found = descendants(pid).find((p) => readProc(`${p}/comm`).startsWith('qemu-system'));
    if (found) return found;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no qemu under pid ${pid} after 30 s`);
}

function descendants(pid: number): number[] {
  let tasks: string[];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return []; // ended meanwhile
  }
  const children = tasks.flatMap((t) => readProc(`${pid}/task/${t}/children`).split(' ').filter(Boolean).map(Number));
  return children.flatMap((c) => [c, ...descendants(c)]);
}

/** A /proc file's text; empty when the process ended meanwhile. */
function readProc(rel: string): string {
  try {
    return fs.readFileSync(`/proc/${rel}`, 'utf8');
  } catch {
    return '';
  }
}

maybe('scripts/vm.sh', () => {
  test('runs past the boot timeout once started and returns the exit status', async () => {
    // The command runs until the guest has been up 3 s longer than the boot
    // timeout (a TCG boot takes ~3 s, 30 s leaves room for a loaded host): a
    // watchdog still armed after START would kill it and exit 125.
    const wait = 'until [ "$(cut -d. -f1 /proc/uptime)" -ge 33 ]; do sleep 0.5; done';
    const r = await vm({ LINUX_VHOST_VM_BOOT_TIMEOUT: '30' }, 'bash', '-c', `echo "in-vm=$LINUX_VHOST_IN_VM"; ${wait}; exit 7`);
    expect(r.stderr).not.toContain('did not boot');
    expect(r.stdout).toContain('in-vm=1');
    expect(r.status).toBe(7);
    // Output streams while the command runs (the console filter must not sit
    // on it until the VM ends): the first line arrived well before the exit.
    expect(r.closeMs! - r.firstOutputMs!).toBeGreaterThan(10_000);
  }, 180_000);

  test('a VM whose qemu stops running (no CPU at all) is stopped after the freeze timeout, exit 125', async () => {
    // A frozen VM (every vCPU halted for good: seen with nested KVM under TCG) uses
    // no CPU; a stopped qemu is one, for real. The command would run for a minute.
    const run = vm({ LINUX_VHOST_VM_FREEZE_TIMEOUT: '5' }, 'sh', '-c', 'echo ready; sleep 60');
    const qemu = await waitForQemuUnder(run.child.pid!);
    await run.output(/ready/);
    process.kill(qemu, 'SIGSTOP');
    const r = await run;
    expect(r.status).toBe(125);
    expect(r.stderr).toContain('the VM froze: qemu used no CPU for 5s (every vCPU halted); qemu killed');
    expect(r.closeMs! - r.startMs).toBeLessThan(45_000); // not the minute the command wanted
  }, 120_000);

  test('a VM whose init stops beating (its kernel stuck, qemu still busy) is stopped after the heartbeat timeout, exit 125', async () => {
    // Nested KVM under TCG has left both vCPUs spinning in the VM's kernel for good, so the
    // freeze watchdog saw CPU in use. Here the heartbeat loop itself is stopped, for real.
    const r = await vm({ LINUX_VHOST_VM_HEARTBEAT_TIMEOUT: '5' }, 'sh', '-c', 'kill -STOP "$(cat /run/linux-vhost-vm/heartbeat.pid)" && echo stopped; sleep 60');
    expect(r.stdout).toContain('stopped');
    expect(r.status).toBe(125);
    expect(r.stderr).toContain('the VM stopped responding: its init wrote no heartbeat for 5s (its kernel is stuck); qemu killed');
    expect(r.closeMs! - r.startMs).toBeLessThan(45_000); // not the minute the command wanted
  }, 120_000);

  test('a command that says the VM broke ($LINUX_VHOST_VM_BROKEN) and runs on is stopped 30 s later, exit 125, the reason printed', async () => {
    // After a nested QEMU that SIGKILL cannot end, whatever runs next in that VM hangs (seen:
    // the next test file waited in the stuck kernel until the part's timeout).
    const share = path.resolve(__dirname, '../../../.vm-out');
    fs.mkdirSync(share, { recursive: true });
    const brokenFile = path.join(fs.mkdtempSync(path.join(share, 'broken-')), 'broken.txt');
    try {
      const r = await vm({ LINUX_VHOST_VM_BROKEN: brokenFile }, 'sh', '-c', 'echo "a stuck nested QEMU" >"$LINUX_VHOST_VM_BROKEN"; echo written; sleep 120');
      expect(r.stdout).toContain('written');
      expect(r.status).toBe(125);
      expect(r.stderr).toContain('a test found this VM broken (a stuck nested QEMU); qemu stopped 30 s later');
      expect(r.closeMs! - r.startMs).toBeLessThan(90_000); // not the two minutes the command wanted
    } finally {
      fs.rmSync(path.dirname(brokenFile), { recursive: true, force: true });
    }
  }, 180_000);

  test('module options on the kernel command line reach the modules init loads (as modprobe applies them)', async () => {
    // vhost's max_mem_regions (default 64) is the one a VMM with many memory regions raises.
    const r = await vm({ LINUX_VHOST_VM_APPEND: 'vhost.max_mem_regions=100' }, 'cat', '/sys/module/vhost/parameters/max_mem_regions');
    expect(r.stdout.trim()).toBe('100');
    expect(r.status).toBe(0);
  }, 120_000);

  test('runInFreshTestVms: a VM that broke (the command says so, or vm.sh exits 125) is followed by a fresh one; a plain failure is not', () => {
    // VM 1: the command reports the VM broken. VM 2: exit 125, as vm.sh gives for a VM that
    // froze, stuck or panicked. VM 3: a plain failure, which ends it with VMs to spare.
    const share = path.resolve(__dirname, '../../../.vm-out'); // in the repo: the VM shares it
    fs.mkdirSync(share, { recursive: true });
    const dir = fs.mkdtempSync(path.join(share, 'fresh-vms-'));
    const brokenFile = path.join(dir, 'broken.txt');
    const cmd = `n=$(ls ${dir} | grep -c '^ran'); : >${dir}/ran$n; case $n in 0) echo "stuck task" >"$LINUX_VHOST_VM_BROKEN"; exit 1 ;; 1) exit 125 ;; *) exit 3 ;; esac`;
    const told: [number, string][] = [];
    try {
      const r = runInFreshTestVms('sh', ['-c', cmd], { label: 'unit', vmArgs: ['--mem', '1024', '--smp', '1'], attempts: 5, brokenFile, onBroken: (n, why) => told.push([n, why]) });
      expect(r).toEqual({ status: 3, attempts: 3, broken: undefined });
      expect(told).toEqual([
        [1, 'stuck task'],
        [2, 'scripts/vm.sh exited 125 (the VM ran too long, froze or failed)'],
      ]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);

  test.each([
    ['LINUX_VHOST_VM_BOOT_TIMEOUT', '2m'],
    ['LINUX_VHOST_VM_FREEZE_TIMEOUT', '-1'],
    ['LINUX_VHOST_VM_HEARTBEAT_TIMEOUT', '1.5'],
  ])('%s that is not a whole number of seconds (%s) is refused before booting', async (name, value) => {
    const r = await vm({ [name]: value }, 'true');
    expect(r.status).toBe(125);
    expect(r.stderr).toContain(`${name} must be a whole number of seconds (got '${value}')`);
    expect(r.stderr).not.toContain('booting VM');
  });

  test('a VM that has not started the command within the boot timeout exits 125 and says why', async () => {
    const r = await vm({ LINUX_VHOST_VM_BOOT_TIMEOUT: '1' }, 'true');
    expect(r.status).toBe(125);
    expect(r.stderr).toContain('the VM did not boot within 1s');
    expect(r.stderr).toMatch(/late start witnesses: console=(yes|no) run-share=(yes|no); elapsed \d+s/);
  }, 120_000);
});

describe('runInFreshTestVms', () => {
  test.each([0, 1.5, NaN])('attempts %p is refused before anything runs', (attempts) => {
    expect(() => runInFreshTestVms('true', [], { label: 'unit', attempts, brokenFile: path.resolve(__dirname, '../../../.vm-out/unused') })).toThrow(
      new RangeError(`attempts must be a whole number ≥ 1 (got ${attempts})`),
    );
  });
});
