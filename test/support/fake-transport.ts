// A transport that is not the kernel: it implements the device contract
// (VhostBackend, plus the net and vsock devices' own calls) by recording each
// call as 'NAME' or 'NAME[queue]', and can fail at any one of them. The real
// builders and running devices drive it exactly as they drive /dev/vhost-*,
// which is the proof that a second transport needs no change to a base file.
import { VhostError } from '../../lib/core/errors';
import type { FdLike } from '../../lib/core/fd';
import type { LogArea, MemoryRegion, VringAddr, VringEndian } from '../../lib/vhost/backend';
import type { VhostNetBackend } from '../../lib/vhost/net';
import type { VhostVsockBackend } from '../../lib/vhost/vsock';

export class FakeTransport implements VhostNetBackend, VhostVsockBackend {
  readonly calls: string[] = [];
  readonly args: Record<string, unknown[]> = {};
  readonly memoryAccess: 'address' | 'fd';
  /** The call that fails ('SET_VRING_ADDR[1]'), and with which errno name. */
  failAt?: string;
  failCode = 'EIO';
  takenCids = new Set<number>();
  bases = new Map<number, number>();
  #closed = false;

  constructor(
    readonly offered: bigint,
    options: { memoryAccess?: 'address' | 'fd'; path?: string } = {},
  ) {
    this.memoryAccess = options.memoryAccess ?? 'address';
    this.path = options.path ?? '/dev/fake';
  }

  readonly path: string;

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    if (!this.#closed) this.calls.push('close');
    this.#closed = true;
  }

  #call(name: string, queue: number | undefined, ...args: unknown[]): void {
    if (this.#closed) throw new VhostError(`ERR_VHOST_CLOSED: fake transport is closed '${this.path}'`, { code: 'ERR_VHOST_CLOSED', path: this.path });
    const key = queue === undefined ? name : `${name}[${queue}]`;
    this.calls.push(key);
    this.args[key] = args;
    if (this.failAt === key) {
      throw new VhostError(`${this.failCode}: fake, ${name} '${this.path}'`, { code: this.failCode, errno: -5, syscall: name, path: this.path });
    }
  }

  setOwner(): void { this.#call('SET_OWNER', undefined); }
  getFeatures(): bigint { this.#call('GET_FEATURES', undefined); return this.offered; }
  setFeatures(bits: bigint): void { this.#call('SET_FEATURES', undefined, bits); }
  setMemTable(regions: readonly MemoryRegion[]): void { this.#call('SET_MEM_TABLE', undefined, regions); }
  setLogBase(log: LogArea | bigint | number): void { this.#call('SET_LOG_BASE', undefined, log); }
  setVringNum(i: number, n: number): void { this.#call('SET_VRING_NUM', i, n); }
  setVringBase(i: number, b: number): void { this.#call('SET_VRING_BASE', i, b); this.bases.set(i, b); }
  getVringBase(i: number): number { this.#call('GET_VRING_BASE', i); return this.bases.get(i) ?? 0; }
  setVringEndian(i: number, e: VringEndian): void { this.#call('SET_VRING_ENDIAN', i, e); }
  setVringAddr(i: number, a: VringAddr): void { this.#call('SET_VRING_ADDR', i, a); }
  setVringKick(i: number, fd: FdLike): void { this.#call('SET_VRING_KICK', i, fd); }
  setVringCall(i: number, fd: FdLike): void { this.#call('SET_VRING_CALL', i, fd); }
  setVringErr(i: number, fd: FdLike): void { this.#call('SET_VRING_ERR', i, fd); }
  setVringBusyloopTimeout(i: number, t: number): void { this.#call('SET_VRING_BUSYLOOP_TIMEOUT', i, t); }
  setBackend(i: number, fd: FdLike): void { this.#call('NET_SET_BACKEND', i, fd); }
  setRunning(on: boolean): void { this.#call('SET_RUNNING', undefined, on); }
  setGuestCid(cid: number): void {
    this.#call('SET_GUEST_CID', undefined, cid);
    if (this.takenCids.has(cid)) {
      throw new VhostError(`EADDRINUSE: address already in use, SET_GUEST_CID '${this.path}'`, { code: 'EADDRINUSE', errno: -98, syscall: 'SET_GUEST_CID', path: this.path });
    }
  }
}
