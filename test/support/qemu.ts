// QEMU (qemu-system-x86_64, TCG) with a QMP socket for the host and kernel
// suites: a judge nobody here wrote. With CI=true (or
// LINUX_VHOST_REQUIRE_HOST=1) a missing QEMU fails the suite instead of skipping it.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { describeNeeding, guestKernel, program, type Need } from './host-suite';
import { sleep } from './helpers';
import { Qmp, type QmpOptions } from '../../lib/vmm/qmp';

export const QEMU = process.env.QEMU_SYSTEM ?? '/usr/bin/qemu-system-x86_64';
const qemu = program(QEMU, ['--version'], 'Debian: qemu-system-x86');

/** describe() that needs QEMU: skips with the reason, or fails where the host suite is required. */
export function describeWithQemu(name: string, fn: () => void): void {
  describeNeeding(name, 'qemu-system-x86_64', [qemu], fn);
}

/** describe() that boots guests (scripts/nested-guest.js): QEMU, the guest kernel and initramfs, and `more`. */
export function describeWithQemuGuest(name: string, fn: () => void, more: { what: string; needs: Need[] } = { what: '', needs: [] }): void {
  describeNeeding(name, `qemu-system-x86_64, a guest kernel${more.what ? `, ${more.what}` : ''}`, [qemu, guestKernel, ...more.needs], fn);
}

export interface QemuProcess {
  child: ChildProcess;
  pid: number;
  qmp: string;
  /** What QEMU wrote to stderr so far. */
  stderr(): string;
  /** SIGKILL or SIGTERM, and wait for the exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** q35 pcie-root-ports rp1..rpN, free slots for hotplug. */
export const rootPorts = (n: number): string[] =>
  Array.from({ length: n }, (_, i) => ['-device', `pcie-root-port,id=rp${i + 1},bus=pcie.0,chassis=${i + 1},slot=${i + 1}`]).flat();

/** Starts QEMU with `-qmp unix:<qmp>` (plus `args`) and waits for the socket. */
export async function startQemu(qmp: string, args: readonly string[]): Promise<QemuProcess> {
  fs.rmSync(qmp, { force: true });
  const child = spawn(QEMU, [...args, '-qmp', `unix:${qmp},server=on,wait=off`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await exited;
  };
  const end = Date.now() + 30_000;
  while (!fs.existsSync(qmp)) {
    if (child.exitCode !== null) throw new Error(`QEMU exited ${child.exitCode}: ${stderr}`);
    if (Date.now() > end) {
      await stop('SIGKILL');
      throw new Error(`QEMU did not create ${qmp} within 30 s: ${stderr}`);
    }
    await sleep(20);
  }
  return { child, pid: child.pid!, qmp, stderr: () => stderr, stop };
}

/** QEMU's open fds as `fd -> link target` (e.g. '/dev/net/tun', '/tmp/x', 'anon_inode:[eventfd]'). */
export function fdsOf(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const f of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.set(Number(f), fs.readlinkSync(`/proc/${pid}/fd/${f}`));
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

/** How many of QEMU's fds point at `target` (exactly, or matching a RegExp). */
export const countFds = (pid: number, target: string | RegExp): number =>
  [...fdsOf(pid).values()].filter((t) => (typeof target === 'string' ? t === target : target.test(t))).length;

/** Qmp.connect, retried while QEMU has bound its socket but not listened yet (ECONNREFUSED). */
export async function connectQmp(file: string, options: QmpOptions = {}): Promise<Qmp> {
  const end = Date.now() + 10_000;
  for (;;) {
    try {
      return await Qmp.connect(file, options);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ECONNREFUSED' || Date.now() > end) throw err;
      await sleep(20);
    }
  }
}
