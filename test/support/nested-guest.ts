// The typed door to scripts/nested-guest.js, a plain CommonJS helper the
// benches share with the tests: a small Linux guest under QEMU running a
// shell script, its console read line by line.
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';

export interface GuestLine extends RegExpExecArray {
  lineIndex: number;
}

export interface Guest {
  /** QEMU. Typed with a pid: a QEMU that failed to spawn has none, but then the guest never starts and every wait rejects with why(). */
  child: ChildProcess & { pid: number };
  /** Shared with the guest (/run/guest there): files both ways. */
  runDir: string;
  /** Console lines after the script started. */
  lines: string[];
  /** Seconds from spawn to the script's start, once it started. */
  bootSeconds?: number;
  /** Date.now() of the last console line (boot noise included), or of the spawn. */
  lastLineAt: number;
  exited: Promise<{ code: number | null; signal: string | null }>;
  waitFor(pattern: RegExp, ms?: number, from?: number): Promise<GuestLine>;
  /** `promise`, or a rejection naming `what` if the guest ends first. */
  whileUp<T>(promise: Promise<T>, what: string): Promise<T>;
  /** Drops a file the script waits for (`lvg_wait name`). */
  signal(name: string): void;
  /** Why the guest ended or has not started, with the console's last lines. */
  why(): string;
  finished(ms?: number): Promise<number>;
  stop(): Promise<void>;
}

export interface SinkReport {
  peer: string;
  bytes: number;
  seconds: number;
}

export interface Sink {
  reports: SinkReport[];
  next(ms?: number): Promise<SinkReport>;
  nextFirst(ms?: number): Promise<string>;
  reportOf(peer: string, ms?: number): Promise<SinkReport>;
  stop(): void;
}

interface NestedGuestModule {
  buildInitramfs(o?: { kernelDir?: string }): { initrd: string; kernel: string };
  bootGuest(o: Record<string, unknown>): Guest;
  kvmUsable(): boolean;
  selfCpuSeconds(): number;
  selfThreadsCpu(): unknown[];
  threadsCpuDelta(before: unknown[], after: unknown[]): string;
  startSink(host: string, port: number): Promise<Sink>;
  SEND_PY: string;
}

export const ng = require('../../scripts/nested-guest') as NestedGuestModule;

/**
 * Tells scripts/test.js (through $LINUX_VHOST_VM_BROKEN) that this test VM, not the library,
 * failed: it boots a fresh test VM for the nested files (scripts/fresh-vms.js).
 */
export function vmBroken(why: string): void {
  if (process.env.LINUX_VHOST_VM_BROKEN) fs.writeFileSync(process.env.LINUX_VHOST_VM_BROKEN, `${why.split('\n')[0]}\n`);
}
