// A 'frame' listener that throws, with loans out (issue 18's "noticed, left
// alone"): the error reaches the process (uncaughtException) and the guest
// goes on. What must hold: no RX buffer is lost (the rest of the throwing
// listener's batch is dropped, but every slot goes back to the ring), the
// loans of that batch end (their views detached, never delivered), the loans
// already handed out stay valid, and the ledger of loans matches what the
// listener holds. A 16-entry ring makes a leak visible: a few lost slots per
// throw and it would stop taking frames. Runs in a child process (an uncaught
// exception would fail the test itself) over dist/ (npm run build:ts).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { describeKernel } from '../../support/helpers';
import { inject, TEST_ETHERTYPE as ETHERTYPE } from '../../support/net-helpers';

jest.setTimeout(120_000);

const DIST = path.resolve(__dirname, '../../../dist/index.js');
const BURSTS = 10;
const PER_BURST = 30;
const FINAL = 20;
const FINAL_SEQ = 10_000; // the listener never throws on these

function frame(seq: number): Buffer {
  const f = Buffer.alloc(64, 0x5a);
  f.fill(0xff, 0, 6);
  f.writeUInt16BE(ETHERTYPE, 12);
  f.writeUInt32BE(seq, 14);
  return f;
}

describeKernel('VirtioNetGuest with a throwing frame listener', ['/dev/vhost-net', '/dev/net/tun'], () => {
  beforeAll(() => {
    if (!fs.existsSync(DIST)) throw new Error(`${DIST} is missing: run npm run build:ts first`);
  });

  test.each([false, true])("loses the rest of its batch, never a ring slot, and keeps receiving (with loans out: %s; then that batch's loans end, earlier ones stay valid)", async (loans) => {
    const script = `
const lib = require(${JSON.stringify(DIST)});
const tap = lib.Tap.create({ name: 'vnt%d', up: true });
const guest = lib.VirtioNetGuest.create({ tap, queueSize: 16 });
const ours = (f) => f.length >= 18 && ((f[12] << 8) | f[13]) === ${ETHERTYPE};
const errors = [];
process.on('uncaughtException', (e) => errors.push(e.message));
let thrown = 0, finals = 0;
const held = []; // loans kept (at most 4), the rest given back at once
guest.on('frame', (f) => {
  if (!ours(f)) return;
  const seq = f.readUInt32BE(14);
  if (seq >= ${FINAL_SEQ}) console.log('final ' + ++finals);
  else if (seq % 7 === 3) { thrown++; throw new Error('listener boom ' + seq); }
});
if (${loans}) guest.on('loans', (batch) => {
  held.push(...batch);
  if (held.length > 4) guest.giveBack(held.splice(0, held.length - 4));
});
console.log('ready ' + tap.name);
process.stdin.once('data', () => {
  const keptValid = held.every((v) => v.byteLength > 0);
  const lentOutBefore = guest.stats.rxLentOut;
  guest.giveBack(held);
  const s = guest.stats;
  console.log(JSON.stringify({ errors, thrown, finals, keptValid, lentOutBefore, held: held.length, heldDetached: held.every((v) => v.byteLength === 0), lentOutAfter: s.rxLentOut, closed: guest.closed, rxFrames: s.rxFrames, rxLent: s.rxLent }));
  guest.close();
  tap.close();
  process.stdin.destroy();
});
`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
    const lines = createInterface({ input: child.stdout });
    const seen: string[] = [];
    const waiters: { match: (l: string) => boolean; resolve: (l: string) => void }[] = [];
    lines.on('line', (l) => {
      seen.push(l);
      for (const w of [...waiters]) {
        if (!w.match(l)) continue;
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(l);
      }
    });
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    const line = (match: (l: string) => boolean, what: string, ms = 30_000) =>
      new Promise<string>((resolve, reject) => {
        const old = seen.find(match);
        if (old) return resolve(old);
        const timer = setTimeout(() => reject(new Error(`no '${what}' from the child in ${ms} ms; it printed: ${seen.slice(-5).join(' | ')}`)), ms);
        waiters.push({
          match,
          resolve: (l) => {
            clearTimeout(timer);
            resolve(l);
          },
        });
        void exited.then((code) => reject(new Error(`the child exited (${code}) before '${what}'; it printed: ${seen.slice(-5).join(' | ')}`)));
      });
    try {
      const tapName = (await line((l) => l.startsWith('ready '), 'ready')).slice(6);
      for (let b = 0; b < BURSTS; b++) await inject(tapName, Array.from({ length: PER_BURST }, (_, i) => frame(b * PER_BURST + i)));
      await inject(tapName, Array.from({ length: FINAL }, (_, i) => frame(FINAL_SEQ + i)));
      await line((l) => l === `final ${FINAL}`, `final ${FINAL}: every frame sent after the throws arrived`);
      child.stdin.write('report\n');
      const report = JSON.parse(await line((l) => l.startsWith('{'), 'report'));
      expect(report.thrown).toBeGreaterThanOrEqual(3);
      expect(report.errors).toHaveLength(report.thrown); // each throw reached the process once, as itself
      expect(report.errors.every((m: string) => m.startsWith('listener boom '))).toBe(true);
      expect(report.closed).toBe(false);
      expect(report.finals).toBe(FINAL);
      expect(report.keptValid).toBe(true); // loans handed out before a throw are still valid
      expect(report.lentOutBefore).toBe(report.held); // the ledger matches what the listener holds: the throwing batches' loans ended
      expect(report.heldDetached).toBe(true);
      expect(report.lentOutAfter).toBe(0);
      if (loans) expect(report.rxLent).toBeGreaterThan(0);
      expect(await exited).toBe(0);
    } finally {
      child.kill();
    }
  });
});
