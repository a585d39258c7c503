// The creator mark the library writes on kernel objects that outlive a
// process (netdev/creator.ts), and how a creator's state is judged. The
// kernel side (marks on real links, netns notes, cleanup after kill -9) is in
// test/kernel/netdev/orphans.test.ts.
import fc from 'fast-check';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { creatorState, currentMark, formatMark, parseMark, readProcStat, setCreatorLabel } from '../../../lib/netdev/creator';
import { parseCleanupArgs } from '../../../lib/cli/main';

const labels = fc.stringMatching(/^[A-Za-z0-9._-]{1,64}$/);
const marks = fc.record(
  {
    pid: fc.integer({ min: 1, max: 0x7fffffff }),
    start: fc.bigInt({ min: 0n, max: 2n ** 63n }),
    pidns: fc.bigInt({ min: 1n, max: 2n ** 63n }),
    label: labels,
  },
  { requiredKeys: ['pid', 'start', 'pidns'] },
);

describe('creator mark', () => {
  afterEach(() => setCreatorLabel(undefined));

  test('format and parse are inverse, and the text fits a link alias (255 bytes)', () => {
    fc.assert(fc.property(marks, (m) => {
      const text = formatMark(m);
      expect(Buffer.byteLength(text)).toBeLessThanOrEqual(255);
      expect(parseMark(text)).toEqual(m);
    }));
  });

  test.each([
    ['a user alias', 'uplink to the lab switch'],
    ['another prefix', 'libvirt:pid=1:start=2:pidns=3'],
    ['missing start', 'linux-vhost:pid=12:pidns=3'],
    ['pid 0', 'linux-vhost:pid=0:start=1:pidns=3'],
    ['pid above 2^31-1', 'linux-vhost:pid=2147483648:start=1:pidns=3'],
    ['a label with a space', 'linux-vhost:pid=12:start=1:pidns=3:label=a b'],
    ['trailing text', 'linux-vhost:pid=12:start=1:pidns=3:x'],
    ['empty', ''],
  ])('%s is not a mark', (_what, text) => {
    expect(parseMark(text)).toBeUndefined();
  });

  test('currentMark: this pid, its start time from /proc/self/stat, its pid namespace', () => {
    const m = currentMark();
    expect(m.pid).toBe(process.pid);
    const fields = fs.readFileSync('/proc/self/stat', 'latin1').split(') ')[1].split(' ');
    expect(m.start).toBe(BigInt(fields[19]));
    expect(m.pidns).toBe(fs.statSync('/proc/self/ns/pid', { bigint: true }).ino);
    expect(m.label).toBeUndefined();
  });

  test('the label: setCreatorLabel, else LINUX_VHOST_LABEL; a bad one is ERR_VHOST_INVALID_ARG', () => {
    setCreatorLabel('ci-42');
    expect(currentMark().label).toBe('ci-42');
    expect(() => setCreatorLabel('a b')).toThrow(expect.objectContaining({ code: 'ERR_VHOST_INVALID_ARG' }));
    expect(() => setCreatorLabel({ toString: () => 'x' } as unknown as string)).toThrow(expect.objectContaining({ code: 'ERR_VHOST_INVALID_ARG' }));
  });

  test('readProcStat reads the start time after a comm holding spaces and parentheses', () => {
    // comm is the executable's file name: a symlink to sleep named 'a) b (c 1 2'.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lv-comm-'));
    const exe = path.join(dir, 'a) b (c 1 2');
    fs.symlinkSync(fs.realpathSync('/bin/sleep'), exe);
    const child = spawn(exe, ['30'], { stdio: 'ignore' });
    try {
      expect(fs.readFileSync(`/proc/${child.pid}/comm`, 'utf8').trim()).toBe('a) b (c 1 2');
      const stat = readProcStat(child.pid!)!;
      // python3 as the judge: the fields after the LAST ') ', the 20th of them (field 22).
      const py = spawnSync('python3', ['-c', `print(open('/proc/${child.pid}/stat').read().rsplit(') ', 1)[1].split()[19])`], { encoding: 'utf8' });
      expect(stat.start).toBe(BigInt(py.stdout.trim()));
      expect(stat.start).toBeGreaterThanOrEqual(currentMark().start); // started after this process
      expect('RSD').toContain(stat.state);
    } finally {
      child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
    expect(readProcStat(0x7ffffffe)).toBeUndefined(); // no such process
  });
});

describe('creatorState', () => {
  const self = currentMark();
  const proc = (table: Record<number, { start: bigint; state: string }>) => (pid: number) => table[pid];

  test('alive: the pid runs with the recorded start time', () => {
    expect(creatorState(self)).toBe('alive');
    expect(creatorState({ ...self, pid: 5, start: 9n }, proc({ 5: { start: 9n, state: 'S' } }))).toBe('alive');
  });

  test('exited: no such pid, or only a zombie left', () => {
    expect(creatorState({ ...self, pid: 5, start: 9n }, proc({}))).toBe('exited');
    expect(creatorState({ ...self, pid: 5, start: 9n }, proc({ 5: { start: 9n, state: 'Z' } }))).toBe('exited');
  });

  test('pid-reused: the pid runs but started at another time', () => {
    expect(creatorState({ ...self, pid: 5, start: 9n }, proc({ 5: { start: 10n, state: 'R' } }))).toBe('pid-reused');
    expect(creatorState({ ...self, start: self.start + 1n })).toBe('pid-reused');
  });

  test('unknown: a mark from another pid namespace is never judged', () => {
    expect(creatorState({ ...self, pidns: self.pidns + 1n }, proc({}))).toBe('unknown');
  });
});

describe('parseCleanupArgs (linux-vhost cleanup)', () => {
  test.each([
    [[], { dryRun: false, json: false }],
    [['--dry-run'], { dryRun: true, json: false }],
    [['--label', 'ci-1', '--json'], { dryRun: false, json: true, label: 'ci-1' }],
    [['--label=ci-1', '--dry-run'], { dryRun: true, json: false, label: 'ci-1' }],
  ])('%j', (args, expected) => {
    expect(parseCleanupArgs(args)).toEqual(expected);
  });

  test.each([[['--label']], [['--label', 'a b']], [['--force']]])('%j is a usage error', (args) => {
    expect(typeof parseCleanupArgs(args)).toBe('string');
  });
});
