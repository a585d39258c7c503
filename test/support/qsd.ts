// qemu-storage-daemon as a vhost-user-blk back-end for the host suite: a back-end
// nobody here wrote. With CI=true (or LINUX_VHOST_REQUIRE_HOST=1) a missing
// daemon fails the suite instead of skipping it.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { sleep } from './helpers';
import { describeNeeding, program } from './host-suite';

export const QSD = process.env.QEMU_STORAGE_DAEMON ?? '/usr/bin/qemu-storage-daemon';
/** describe() that needs qemu-storage-daemon: skips with the reason, or fails where required. */
export function describeWithQsd(name: string, fn: () => void): void {
  describeNeeding(name, 'qemu-storage-daemon', [program(QSD, ['--version'], 'Debian: qemu-system-common / qemu-utils')], fn);
}

export interface Qsd {
  child: ChildProcess;
  sock: string;
  /** SIGKILL (a crash) or SIGTERM, and wait for the exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Exports `image` as vhost-user-blk at `sock` and waits until the daemon says it is ready.
 * The socket file alone is not that: it exists from bind(), and a connect() that comes
 * before listen() is refused (CI saw ECONNREFUSED once). qemu-storage-daemon documents its
 * --pidfile as written after the exports are created, when clients may begin connecting.
 */
export async function startQsd(image: string, sock: string, { writable = true } = {}): Promise<Qsd> {
  const pidFile = `${sock}.pid`;
  fs.rmSync(sock, { force: true });
  fs.rmSync(pidFile, { force: true });
  const child = spawn(
    QSD,
    [
      '--pidfile', pidFile,
      '--blockdev', `driver=file,node-name=f,filename=${image}`,
      '--export', `type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=${sock},writable=${writable ? 'on' : 'off'}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await exited;
  };
  const end = Date.now() + 15_000;
  const ready = (): boolean => {
    try {
      return fs.readFileSync(pidFile, 'utf8').trim() === String(child.pid);
    } catch {
      return false;
    }
  };
  while (!ready()) {
    if (child.exitCode !== null) throw new Error(`qemu-storage-daemon exited ${child.exitCode}: ${stderr}`);
    if (Date.now() > end) {
      await stop('SIGKILL');
      throw new Error(`qemu-storage-daemon did not write ${pidFile} (ready to serve ${sock}) within 15 s: ${stderr}`);
    }
    await sleep(20);
  }
  return { child, sock, stop };
}

/** Lines of /proc/self/maps naming `what` (a memfd name). */
export const mappingsOf = (what: string): string[] => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(what));
