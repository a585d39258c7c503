// scripts/nested-guest.js Guest, the nested-guest test's handle on a QEMU. why(): what the
// test prints when a run ends early. stop(): how the test ends a QEMU. A QEMU
// that even SIGKILL cannot end is stuck in the test VM's kernel (seen with nested KVM
// under TCG); stop() must then fail fast, say where the process is, and let go of it so
// that jest can still exit. Real processes stand in for QEMU.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

interface GuestLike {
  exited: Promise<unknown>;
  why(): string;
  whileUp<T>(promise: Promise<T>, what: string): Promise<T>;
  stop(killWaitMs?: number): Promise<void>;
}
const { Guest } = require('../../../scripts/nested-guest') as { Guest: new (child: unknown, runDir: string, nonce: string, bootedAt: number) => GuestLike };

function guestOf(script: string) {
  const child = spawn('sh', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lv-stop-test-'));
  return { child, runDir, guest: new Guest(child, runDir, 'n0nce', Date.now()) };
}

describe('Guest.stop()', () => {
  test('ends the process with SIGTERM and removes the run dir', async () => {
    const { child, runDir, guest } = guestOf('exec sleep 100');
    await guest.stop();
    expect(child.signalCode).toBe('SIGTERM');
    expect(fs.existsSync(runDir)).toBe(false);
  });

  test('a process that ignores SIGTERM gets SIGKILL after 5 s', async () => {
    const { child, guest } = guestOf('trap "" TERM; echo ready; while :; do sleep 0.1; done');
    await new Promise((resolve) => child.stdout.once('data', resolve));
    await guest.stop();
    expect(child.signalCode).toBe('SIGKILL');
  }, 20_000);

  test('a process still there after SIGKILL: ERR_GUEST_UNKILLABLE naming it and its threads, pipes let go', async () => {
    const { child, runDir, guest } = guestOf('exec sleep 100');
    // Only a task stuck in the kernel outlives SIGKILL; that cannot be made on purpose, so
    // the kill itself is held back here while the real process keeps running.
    const sent: (string | number | undefined)[] = [];
    child.kill = (signal?: NodeJS.Signals | number) => (sent.push(signal), true);
    try {
      const err = await guest.stop(300).then(() => undefined, (e: NodeJS.ErrnoException) => e);
      expect(err?.code).toBe('ERR_GUEST_UNKILLABLE');
      expect(err?.message).toContain(`QEMU (pid ${child.pid}) is still there 0.3 s after SIGKILL`);
      expect(err?.message).toMatch(new RegExp(`\\n  ${child.pid} sleep: S \\(sleeping\\), wchan \\S+`)); // from /proc
      expect(sent).toEqual(['SIGTERM', 'SIGKILL']);
      expect(child.stdout.destroyed && child.stderr.destroyed).toBe(true);
      expect(fs.existsSync(runDir)).toBe(true); // the process may still use it
    } finally {
      process.kill(child.pid!, 'SIGKILL');
      fs.rmSync(runDir, { recursive: true, force: true });
    }
  }, 20_000);
});

describe('Guest.why()', () => {
  test.each([
    ['the script exited with its status', 'echo "@@n0nce@@ EXIT 3"', /^guest script exited 3\nlast line/],
    ['the guest ended without the script finishing (panic=-1 -no-reboot: QEMU exits 0)', 'exit 0', /^the guest ended before its script did \(a panic or a reset\)\nlast line\n\(QEMU exited 0\)/],
  ])('%s', async (_, end, expected) => {
    const { guest } = guestOf(`echo boot noise; echo "@@n0nce@@ START"; echo last line; ${end}`);
    await guest.exited;
    expect(guest.why()).toMatch(expected);
    await guest.stop();
  });

  test('a guest still running says so', async () => {
    const { child, guest } = guestOf('echo "@@n0nce@@ START"; echo ready; exec sleep 100');
    await new Promise((resolve) => child.stdout.once('data', resolve));
    expect(guest.why()).toMatch(/^guest script still running\n/);
    await guest.stop();
  });
});

describe('Guest.whileUp()', () => {
  test("passes the promise's value through while the guest runs", async () => {
    const { guest } = guestOf('exec sleep 100');
    await expect(guest.whileUp(Promise.resolve(42), 'the answer')).resolves.toBe(42);
    await guest.stop();
  });

  test('rejects as soon as the guest is gone, not at the promise\'s own timeout', async () => {
    const { guest } = guestOf('echo "@@n0nce@@ START"; exit 0');
    const never = new Promise(() => {});
    await expect(guest.whileUp(never, 'the sink')).rejects.toThrow(/^guest exited while waiting for the sink: the guest ended before its script did/);
    await guest.stop();
  });
});
