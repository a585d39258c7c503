// VhostVsock.builder() on the real kernel: order, CID allocation (explicit,
// 'auto', concurrent in one process and across processes), stop/restore,
// close, and every bring-up step the kernel can be made to refuse.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { QueueSpec } from '../../../lib/vhost/plan';
import { EventFd } from '../../../lib/core/eventfd';
import { features } from '../../../lib/core/features';
import { GuestMemory } from '../../../lib/core/memory';
import type { RunningVhostVsock } from '../../../lib/vhost/vsock';
import { VhostVsock } from '../../../lib/vhost/vsock';
import { describeKernel, expectStepFailure, openFdCount, ringAt, thrown, closeAfterEach, type StepError } from '../../support/helpers';

const { ring, vsock, net } = features;
const ACKED = ring.VERSION_1 | ring.RING_EVENT_IDX | vsock.SEQPACKET;
const QSIZE = 256;
const repo = path.resolve(__dirname, '../../..');

// CIDs nobody else in this VM uses, well above what 'auto' hands out from 3.
let nextCid = 200_000 + Math.floor(Math.random() * 100_000);
const freshCid = (): number => (nextCid += 10);

/** A child process that builds a vsock device with cid('auto') when told "go", prints its CID, and holds it until stdin closes. */
const CHILD = `
const fs = require('fs');
const ts = require(${JSON.stringify(path.join(repo, 'node_modules/typescript'))});
require.extensions['.ts'] = (m, file) => {
  const out = ts.transpileModule(fs.readFileSync(file, 'utf8'), { fileName: file, compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true } });
  m._compile(out.outputText, file);
};
const { VhostVsock } = require(${JSON.stringify(path.join(repo, 'lib/vhost/vsock.ts'))});
const { GuestMemory } = require(${JSON.stringify(path.join(repo, 'lib/core/memory.ts'))});
const { EventFd } = require(${JSON.stringify(path.join(repo, 'lib/core/eventfd.ts'))});
const mem = GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] });
const q = (i) => ({ size: 256, desc: 0x10000n * BigInt(i + 1), avail: 0x10000n * BigInt(i + 1) + 0x1000n, used: 0x10000n * BigInt(i + 1) + 0x2000n, kick: EventFd.create(), call: EventFd.create() });
const b = VhostVsock.builder().memory(mem).features(1n << 32n).cid('auto').queue(0, q(0)).queue(1, q(1));
process.stdout.write('ready\\n');
let started = false;
process.stdin.on('data', () => {
  if (started) return;
  started = true;
  try {
    const dev = b.start();
    process.stdout.write('cid ' + dev.cid + '\\n');
  } catch (err) {
    process.stdout.write('error ' + err.code + ' ' + err.message + '\\n');
  }
});
process.stdin.on('end', () => process.exit(0));
`;

function lines(child: ChildProcess): { next(prefix: RegExp): Promise<string> } {
  let buf = '';
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  const seen: string[] = [];
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      const w = waiters.findIndex((x) => x.re.test(line));
      if (w >= 0) waiters.splice(w, 1)[0].resolve(line);
      else seen.push(line);
    }
  });
  return {
    next(re) {
      const i = seen.findIndex((l) => re.test(l));
      if (i >= 0) return Promise.resolve(seen.splice(i, 1)[0]);
      return new Promise((resolve) => waiters.push({ re, resolve }));
    },
  };
}

describeKernel('VhostVsock.builder() on the real kernel', ['/dev/vhost-vsock'], () => {
  const track = closeAfterEach();

  let mem: GuestMemory;
  beforeEach(() => {
    mem = track(GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] }));
  });

  function queue(q: number, extra: Partial<QueueSpec> = {}): QueueSpec {
    return { size: QSIZE, ...ringAt(q), kick: track(EventFd.create()), call: track(EventFd.create()), ...extra };
  }

  const builder = (q0: Partial<QueueSpec> = {}, q1: Partial<QueueSpec> = {}) =>
    VhostVsock.builder().memory(mem).features(ACKED).queue(0, queue(0, q0)).queue(1, queue(1, q1));

  /** Holds `cid` on a bare device, as another VM would. */
  function holdCid(cid: number): VhostVsock {
    const dev = track(VhostVsock.open());
    dev.setGuestCid(cid);
    return dev;
  }

  describe('bring-up', () => {
    test('issues the ioctls in order, CID then SET_RUNNING last; the kernel holds the CID and runs the rings', () => {
      const cid = freshCid();
      const running = track(builder({ busyloopTimeout: 20 }, { base: 9 }).cid(cid).start());
      const q = (i: number) => [`SET_VRING_NUM[${i}]`, `SET_VRING_BASE[${i}]`, `SET_VRING_ADDR[${i}]`, `SET_VRING_KICK[${i}]`, `SET_VRING_CALL[${i}]`];
      expect(running.trace).toEqual(['open', 'SET_OWNER', 'GET_FEATURES', 'SET_FEATURES', 'SET_MEM_TABLE', ...q(0), 'SET_VRING_BUSYLOOP_TIMEOUT[0]', ...q(1), 'SET_GUEST_CID', 'SET_RUNNING']);
      expect(running.cid).toBe(cid);
      expect(running.features).toBe(ACKED);
      expect(running.device.getVringBase(1)).toBe(9);
      expect(running.device.getVringBusyloopTimeout(0)).toBe(20);
      expect(thrown(() => running.device.setVringNum(0, 128)).code).toBe('EBUSY'); // running
      expect(thrown(() => track(VhostVsock.open()).setGuestCid(cid)).code).toBe('EADDRINUSE');
    });

    test('ACCESS_PLATFORM acked by the guest is not passed (no IOTLB): the rings run on the memory table', () => {
      const running = track(VhostVsock.builder().memory(mem).features(ACKED | ring.ACCESS_PLATFORM).cid(freshCid()).queue(0, queue(0)).queue(1, queue(1)).start());
      expect(running.features & ring.ACCESS_PLATFORM).toBe(0n);
      expect(running.running).toBe(true);
    });
  });

  describe("cid('auto')", () => {
    test('two devices in one process get different CIDs, the first free from 3 upward', () => {
      const a = track(builder().cid('auto').start());
      const b = track(builder().cid('auto').start());
      expect(a.cid).toBeGreaterThanOrEqual(3);
      expect(b.cid).toBeGreaterThan(a.cid);
      // every CID the walk skipped was in use: the kernel refuses them to a third device
      const probe = track(VhostVsock.open());
      for (let c = 3; c < b.cid; c++) {
        if (c === a.cid) continue;
        expect(thrown(() => probe.setGuestCid(c)).code).toBe('EADDRINUSE');
      }
    });

    test('walks past CIDs other devices hold', () => {
      const from = freshCid();
      holdCid(from);
      holdCid(from + 1);
      const running = track(builder().cid('auto', { from }).start());
      expect(running.cid).toBe(from + 2);
      expect(running.trace.filter((s) => s === 'SET_GUEST_CID')).toHaveLength(3);
    });

    test('gives up after `attempts` CIDs in use: EADDRINUSE at SET_GUEST_CID, nothing left open', () => {
      const from = freshCid();
      holdCid(from);
      holdCid(from + 1);
      const b = builder().cid('auto', { from, attempts: 2 });
      const err = expectStepFailure(() => b.start(), 'SET_GUEST_CID', 'EADDRINUSE');
      expect(err.syscall).toBe('ioctl(VHOST_VSOCK_SET_GUEST_CID)');
      expect(err.message).toContain(`CIDs ${from}..${from + 1} are all in use`);
    });

    test('closing a device releases its CID for the next auto allocation', () => {
      const from = freshCid();
      const a = builder().cid('auto', { from }).start();
      expect(a.cid).toBe(from);
      a.close();
      expect(track(builder().cid('auto', { from }).start()).cid).toBe(from);
    });

    test('N processes allocating at the same moment all get different CIDs', async () => {
      const N = 6;
      const script = path.join(os.tmpdir(), `vsock-auto-${process.pid}.js`);
      fs.writeFileSync(script, CHILD);
      const children = Array.from({ length: N }, () => spawn(process.execPath, [script], { stdio: ['pipe', 'pipe', 'inherit'] }));
      try {
        const out = children.map(lines);
        await Promise.all(out.map((o) => o.next(/^ready$/)));
        for (const c of children) c.stdin.write('go\n'); // all start as close together as we can make it
        const results = await Promise.all(out.map((o) => o.next(/^(cid|error) /)));
        const cids = results.map((l) => {
          expect(l).toMatch(/^cid \d+$/);
          return Number(l.split(' ')[1]);
        });
        expect(new Set(cids).size).toBe(N);
        // the children hold them: this process cannot take any
        const probe = track(VhostVsock.open());
        for (const c of cids) expect(thrown(() => probe.setGuestCid(c)).code).toBe('EADDRINUSE');
      } finally {
        for (const c of children) c.stdin.end();
        await Promise.all(children.map((c) => (c.exitCode !== null ? Promise.resolve() : new Promise((r) => c.on('exit', r)))));
        fs.rmSync(script, { force: true });
      }
    }, 300_000);
  });

  describe('stop, restore, close', () => {
    test('stop() is SET_RUNNING(0) then GET_VRING_BASE; the bases restore on a new device', () => {
      const cid = freshCid();
      const first = builder({ base: 5 }, { base: 7 }).cid(cid).start();
      track(first);
      const state = first.stop();
      expect(state).toEqual({ queues: [{ index: 0, base: 5 }, { index: 1, base: 7 }] });
      first.device.setVringNum(0, QSIZE); // stopped: not busy any more
      first.close();
      const second = track(builder({ base: state.queues[0].base }, { base: state.queues[1].base }).cid(cid).start());
      expect([second.device.getVringBase(0), second.device.getVringBase(1)]).toEqual([5, 7]);
      expect(second.stop()).toEqual(state);
    });

    test('close() of a running device stops it and releases the fd and the CID; then ERR_VHOST_CLOSED', () => {
      const cid = freshCid();
      const specs = [queue(0), queue(1)];
      const before = openFdCount();
      const running: RunningVhostVsock = VhostVsock.builder().memory(mem).features(ACKED).cid(cid).queue(0, specs[0]).queue(1, specs[1]).start();
      expect(openFdCount()).toBe(before + 1);
      running.close();
      expect(openFdCount()).toBe(before);
      holdCid(cid); // free again
      for (const call of [() => running.stop(), () => running.readDirtyLog(), () => running.fd]) expect(thrown(call).code).toBe('ERR_VHOST_CLOSED');
    });
  });

  describe('rollback: each step the kernel can refuse, for real', () => {
    test('SET_OWNER: a device already owned (EBUSY)', () => {
      const dev = track(VhostVsock.open());
      dev.setOwner();
      const b = builder().cid(freshCid()).device(dev);
      expectStepFailure(() => b.start(), 'SET_OWNER', 'EBUSY');
      expect(dev.closed).toBe(false);
    });

    test('SET_FEATURES: a bit vhost-vsock does not offer (EOPNOTSUPP, named ENOTSUP)', () => {
      const b = VhostVsock.builder().memory(mem).vhostFeatures(ring.VERSION_1 | net.MRG_RXBUF).cid(freshCid()).queue(0, queue(0)).queue(1, queue(1));
      expectStepFailure(() => b.start(), 'SET_FEATURES', 'ENOTSUP');
    });

    test('SET_FEATURES: acked NO_IMPLIED_STREAM, which 6.1 does not offer (ERR_VHOST_UNSUPPORTED)', () => {
      const b = VhostVsock.builder().memory(mem).features(ACKED | vsock.NO_IMPLIED_STREAM).cid(freshCid()).queue(0, queue(0)).queue(1, queue(1));
      const dev = track(VhostVsock.open());
      if ((dev.getFeatures() & vsock.NO_IMPLIED_STREAM) !== 0n) return; // a newer kernel offers it
      expectStepFailure(() => b.start(), 'SET_FEATURES', 'ERR_VHOST_UNSUPPORTED');
    });

    /** An owned, running device (SET_RUNNING 1). */
    function runningDevice(): VhostVsock {
      const dev = track(VhostVsock.open());
      dev.setOwner();
      dev.setMemTable(mem);
      for (const q of [0, 1]) {
        const r = ringAt(q);
        dev.setVringNum(q, QSIZE);
        dev.setVringAddr(q, { desc: mem.translate(r.desc), avail: mem.translate(r.avail), used: mem.translate(r.used) });
      }
      dev.setGuestCid(freshCid());
      dev.setRunning(true);
      return dev;
    }

    test('SET_MEM_TABLE: memory outside user space while the rings run (EFAULT)', () => {
      const dev = runningDevice();
      const b = VhostVsock.builder().device(dev, { owned: true }).memory({ regions: [{ gpa: 0n, size: 1n << 20n, hva: 0xffff_8880_0000_0000n }] })
        .features(ACKED).cid(freshCid()).queue(0, queue(0)).queue(1, queue(1));
      expectStepFailure(() => b.start(), 'SET_MEM_TABLE', 'EFAULT');
    });

    test('SET_VRING_NUM: rings of a running device (EBUSY)', () => {
      const dev = runningDevice();
      const b = builder().cid(freshCid()).device(dev, { owned: true });
      expectStepFailure(() => b.start(), 'SET_VRING_NUM', 'EBUSY', 0);
    });

    test('SET_VRING_ENDIAN: ENOTTY without cross-endian support (Debian 6.1), else it runs', () => {
      const b = builder({}, { endian: 'little' }).cid(freshCid());
      const before = openFdCount();
      try {
        track(b.start());
      } catch (e) {
        const err = e as StepError;
        expect({ step: err.step, code: err.code, queue: err.queue }).toEqual({ step: 'SET_VRING_ENDIAN', code: 'ENOTTY', queue: 1 });
        expect(openFdCount()).toBe(before);
      }
    });

    test.each([
      ['kick', 'SET_VRING_KICK'],
      ['call', 'SET_VRING_CALL'],
      ['err', 'SET_VRING_ERR'],
    ] as const)('%s that is not an eventfd fails at %s (EINVAL)', (which, step) => {
      const devNull = track(VhostVsock.open('/dev/null'));
      const b = builder({}, { [which]: devNull.fd }).cid(freshCid());
      expectStepFailure(() => b.start(), step, 'EINVAL', 1);
    });

    test('SET_GUEST_CID: a CID another device holds (EADDRINUSE); the holder keeps it', () => {
      const cid = freshCid();
      holdCid(cid);
      const b = builder().cid(cid);
      const err = expectStepFailure(() => b.start(), 'SET_GUEST_CID', 'EADDRINUSE');
      expect(err.trace!.slice(-1)).toEqual(['SET_GUEST_CID']);
      expect(thrown(() => track(VhostVsock.open()).setGuestCid(cid)).code).toBe('EADDRINUSE');
    });

    test('SET_RUNNING: rings in unmapped memory (EFAULT); rollback releases the CID it had set', () => {
      const cid = freshCid();
      const b = VhostVsock.builder().memory({ regions: [{ gpa: 0n, size: 1n << 20n, hva: 0x1000n }] }).features(ACKED).cid(cid).queue(0, queue(0)).queue(1, queue(1));
      const err = expectStepFailure(() => b.start(), 'SET_RUNNING', 'EFAULT');
      expect(err.trace!.slice(-2)).toEqual(['SET_GUEST_CID', 'SET_RUNNING']);
      holdCid(cid); // the failed device's CID is free again
    });
  });
});
