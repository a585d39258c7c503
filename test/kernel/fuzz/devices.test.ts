// Property-based fuzzing against the real devices (issue 13), bounded: random
// sequences of low-level vhost calls (every ioctl method of VhostNet and
// VhostVsock), builder bring-ups, taps and AF_VSOCK sockets, with hostile
// arguments (test/support/hostile.ts), objects closed mid-sequence and used
// after close. Checked: no crash, every error has a string code (kernel errors
// included), no coercion hook of the caller runs, and the fds come back once
// all is closed. Runs in the test VM only (AF_VSOCK, /dev/vhost-*).
// LINUX_VHOST_FUZZ_RUNS / LINUX_VHOST_FUZZ_SEED as in the unit suite.
import fc from 'fast-check';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import * as lib from '../../../lib';
import { hostileValue, trapLog, violations, fuzzParams } from '../../support/hostile';
import { describeKernel, openFdCount } from '../../support/helpers';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

interface Pool {
  devices: (lib.VhostNet | lib.VhostVsock)[];
  eventfds: lib.EventFd[];
  memories: lib.GuestMemory[];
  taps: lib.Tap[];
  running: (lib.RunningVhostNet | lib.RunningVhostVsock)[];
}
type Any = any;  

let tapSeq = 0;
const tapName = (): string => `lvfz${process.pid % 1000}x${tapSeq++}`;
// CIDs well away from what other kernel tests and 'auto' use.
let nextCid = 700_000 + Math.floor(Math.random() * 100_000);

/** Valid values the low-level calls take, so sequences reach the kernel. */
const useful = fc.constantFrom<unknown>(0, 1, 2, 16, 256, 0n, 0x1000n, 1n << 32n, -1, null, 'little', true, false, { desc: 0x1000n, avail: 0x2000n, used: 0x3000n });
const arg = fc.oneof({ weight: 2, arbitrary: hostileValue }, { weight: 3, arbitrary: useful });

const pick = <T>(xs: T[], i: number): T | undefined => (xs.length ? xs[i % xs.length] : undefined);
const onDevice = (f: (d: lib.VhostNet | lib.VhostVsock, a: unknown[], p: Pool) => unknown) => (p: Pool, a: unknown[], i: number) => {
  const d = pick(p.devices, i);
  return d && f(d, a, p);
};

const ACTIONS: Record<string, (p: Pool, a: unknown[], i: number) => unknown> = {
  openNet: (p) => p.devices.push(lib.VhostNet.open()),
  openVsock: (p) => p.devices.push(lib.VhostVsock.open()),
  eventfd: (p) => p.eventfds.push(lib.EventFd.create()),
  memory: (p) => p.memories.push(lib.GuestMemory.create({ regions: [{ gpa: 0n, size: 0x10000n }] })),
  tap: (p) => p.taps.push(lib.Tap.create({ name: tapName(), vnetHdrSize: 12 })),
  setOwner: onDevice((d) => d.setOwner()),
  resetOwner: onDevice((d) => d.resetOwner()),
  getFeatures: onDevice((d) => d.getFeatures()),
  setFeatures: onDevice((d, [a]) => d.setFeatures(a as Any)),
  getBackendFeatures: onDevice((d) => d.getBackendFeatures()),
  setBackendFeatures: onDevice((d, [a]) => d.setBackendFeatures(a as Any)),
  setMemTable: onDevice((d, [a], p) => d.setMemTable((a === 0 ? pick(p.memories, 0) : a) as Any)),
  setVringNum: onDevice((d, [a, b]) => d.setVringNum(a as Any, b as Any)),
  setVringBase: onDevice((d, [a, b]) => d.setVringBase(a as Any, b as Any)),
  getVringBase: onDevice((d, [a]) => d.getVringBase(a as Any)),
  setVringAddr: onDevice((d, [a, b]) => d.setVringAddr(a as Any, b as Any)),
  setVringKick: onDevice((d, [a, b], p) => d.setVringKick(a as Any, (b === 0 ? pick(p.eventfds, 0) ?? null : b) as Any)),
  setVringCall: onDevice((d, [a, b], p) => d.setVringCall(a as Any, (b === 0 ? pick(p.eventfds, 1) ?? null : b) as Any)),
  setVringErr: onDevice((d, [a, b]) => d.setVringErr(a as Any, b as Any)),
  setVringEndian: onDevice((d, [a, b]) => d.setVringEndian(a as Any, b as Any)),
  setVringBusyloopTimeout: onDevice((d, [a, b]) => d.setVringBusyloopTimeout(a as Any, b as Any)),
  readIotlbMsg: onDevice((d) => d.readIotlbMsg()),
  sendIotlbMsg: onDevice((d, [a]) => d.sendIotlbMsg(a as Any)),
  setBackend: onDevice((d, [a, b], p) => (d instanceof lib.VhostNet ? d.setBackend(a as Any, (b === 0 ? pick(p.taps, 0) ?? null : b) as Any) : undefined)),
  setGuestCid: onDevice((d, [a]) => (d instanceof lib.VhostVsock ? d.setGuestCid((a === 0 ? (nextCid += 3) : a) as Any) : undefined)),
  setRunning: onDevice((d, [a]) => (d instanceof lib.VhostVsock ? d.setRunning(a as Any) : undefined)),
  closeDevice: onDevice((d) => d.close()),
  startNet: (p, [a, b]) => {
    const memory = pick(p.memories, 0) ?? lib.GuestMemory.create({ regions: [{ gpa: 0n, size: 0x10000n }] });
    if (!p.memories.includes(memory)) p.memories.push(memory);
    const q = (i: number) => ({ size: 16, desc: 0x1000n + 0x3000n * BigInt(i), avail: 0x2000n + 0x3000n * BigInt(i), used: 0x3000n + 0x3000n * BigInt(i), kick: pick(p.eventfds, i), call: pick(p.eventfds, i + 1) });
    const builder = lib.VhostNet.builder().memory(memory).features((a ?? lib.features.ring.VERSION_1) as Any).queue(0, q(0) as Any).queue(1, b === 0 ? (q(1) as Any) : (b as Any));
    const tap = pick(p.taps, 0);
    if (tap) builder.backend(tap);
    p.running.push(builder.start());
  },
  startVsock: (p, [a]) => {
    const memory = pick(p.memories, 0) ?? lib.GuestMemory.create({ regions: [{ gpa: 0n, size: 0x10000n }] });
    if (!p.memories.includes(memory)) p.memories.push(memory);
    const q = (i: number) => ({ size: 16, desc: 0x1000n + 0x3000n * BigInt(i), avail: 0x2000n + 0x3000n * BigInt(i), used: 0x3000n + 0x3000n * BigInt(i), kick: pick(p.eventfds, i), call: pick(p.eventfds, i + 1) });
    p.running.push(lib.VhostVsock.builder().memory(memory).features(lib.features.ring.VERSION_1).cid((a === 0 ? (nextCid += 3) : a) as Any).queue(0, q(0) as Any).queue(1, q(1) as Any).start());
  },
  stopRunning: (p, _a, i) => pick(p.running, i)?.stop(),
  closeRunning: (p, _a, i) => pick(p.running, i)?.close(),
  closeEventFd: (p, _a, i) => pick(p.eventfds, i)?.close(),
  closeMemory: (p, _a, i) => pick(p.memories, i)?.close(),
  closeTap: (p, _a, i) => pick(p.taps, i)?.close(),
  vsockConnect: (_p, [a, b]) => {
    // Hostile options only: a socket that gets as far as connect() is destroyed at once.
    const s = lib.vsock.connect({ cid: a, port: b } as Any);
    s.on('error', () => undefined);
    s.destroy();
  },
  vsockListen: (_p, [a]) => {
    const server = lib.vsock.createServer();
    server.on('error', () => undefined);
    server.listen({ port: a } as Any);
    server.close();
  },
};
const NAMES = Object.keys(ACTIONS);
const step = fc.record({ name: fc.constantFrom(...NAMES), target: fc.nat(5), args: fc.array(arg, { maxLength: 2 }) });

function run(p: Pool, s: { name: string; target: number; args: unknown[] }): void {
  trapLog.length = 0;
  let thrown: unknown;
  try {
    ACTIONS[s.name](p, s.args, s.target);
  } catch (err) {
    thrown = err;
  }
  const bad = violations(trapLog);
  if (bad.length) throw new Error(`${s.name}: ${bad.join('; ')}`);
  const code = typeof thrown === 'object' && thrown !== null && 'code' in thrown ? thrown.code : undefined;
  if (thrown !== undefined && typeof code !== 'string') {
    throw new Error(`${s.name}: threw without a string code: ${(thrown as Error)?.stack ?? typeof thrown}`);
  }
}

function closeAll(p: Pool): void {
  for (const o of [...p.running, ...p.devices, ...p.taps, ...p.eventfds, ...p.memories]) o.close();
}

const settle = (ms = 0): Promise<void> => new Promise((r) => setTimeout(r, ms));

describeKernel('fuzz: random vhost, tap and vsock call sequences against the real devices', ['/dev/vhost-net', '/dev/vhost-vsock', '/dev/net/tun'], () => {
  test('no crash, every error has a string code, no caller code run, fds back once all is closed', async () => {
    gc();
    await settle(50);
    const fdsAtStart = openFdCount();
    fc.assert(
      fc.property(fc.array(step, { minLength: 1, maxLength: 25 }), (steps) => {
        const pool: Pool = { devices: [], eventfds: [], memories: [], taps: [], running: [] };
        try {
          for (const s of steps) run(pool, s);
        } finally {
          closeAll(pool);
        }
      }),
      fuzzParams(60),
    );
    // Sockets destroyed above close on the next turns of the loop.
    await settle(200);
    gc();
    await settle(50);
    expect(openFdCount()).toBe(fdsAtStart);
  }, 600_000);
});
