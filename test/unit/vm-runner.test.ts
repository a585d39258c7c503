// scripts/vm.sh, the runner the kernel suite depends on: the command's exit
// status comes back, and the boot watchdog stops watching once the command has
// started (CI once lost a kernel run to a watchdog that fired mid-run). Boots a
// small VM under QEMU; needs qemu-system-x86_64, which CI installs.
import { spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';

const script = path.resolve(__dirname, '../../scripts/vm.sh');
const haveQemu = spawnSync('sh', ['-c', 'command -v qemu-system-x86_64'], { stdio: 'ignore' }).status === 0;
const maybe = haveQemu || process.env.CI === 'true' ? describe : describe.skip;

interface Run { status: number | null; stdout: string; stderr: string; firstOutputMs?: number; closeMs?: number }

function vm(env: Record<string, string>, ...cmd: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
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
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr, firstOutputMs, closeMs: Date.now() }));
  });
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

  test('a boot timeout that is not a whole number of seconds is refused before booting', async () => {
    const r = await vm({ LINUX_VHOST_VM_BOOT_TIMEOUT: '2m' }, 'true');
    expect(r.status).toBe(125);
    expect(r.stderr).toContain("LINUX_VHOST_VM_BOOT_TIMEOUT must be a whole number of seconds (got '2m')");
    expect(r.stderr).not.toContain('booting VM');
  });

  test('a VM that has not started the command within the boot timeout exits 125 and says why', async () => {
    const r = await vm({ LINUX_VHOST_VM_BOOT_TIMEOUT: '1' }, 'true');
    expect(r.status).toBe(125);
    expect(r.stderr).toContain('the VM did not boot within 1s');
    expect(r.stderr).toMatch(/late start witnesses: console=(yes|no) run-share=(yes|no); elapsed \d+s/);
  }, 120_000);
});
