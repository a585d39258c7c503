// lib/cli/test-vm.ts: what a command lacks on this machine, where it then runs
// (here, the test VM, or nowhere inside the VM), and the re-spawn through
// scripts/vm.sh with its exit status and its failure to start. Nothing here
// boots a VM (test/unit/harness/vm-runner.test.ts does).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { canRunHere, runInTestVm, TEST_VM_SCRIPT, whereToRun } from '../../../lib/cli/test-vm';

const root = path.resolve(__dirname, '../../..');
const absent = ['/dev/linux-vhost-test-absent-a', '/dev/linux-vhost-test-absent-b'];
const isRoot = process.getuid?.() === 0;

describe('canRunHere', () => {
  test('devices that open read-write are not missing', () => {
    expect(canRunHere({ devices: ['/dev/null', '/dev/zero'] })).toEqual({ ok: true, missing: [] });
  });

  test('lists every device that does not open, in the order asked', () => {
    expect(canRunHere({ devices: ['/dev/null', absent[1], '/dev/zero', absent[0]] })).toEqual({ ok: false, missing: [absent[1], absent[0]] });
  });

  test('root: true adds "root" first when this process is not root', () => {
    const r = canRunHere({ root: true, devices: [absent[0]] });
    expect(r.missing).toEqual(isRoot ? [absent[0]] : ['root', absent[0]]);
    expect(canRunHere({ root: true, devices: ['/dev/null'] }).ok).toBe(isRoot);
  });
});

describe('whereToRun', () => {
  const saved = process.env.LINUX_VHOST_IN_VM;
  afterEach(() => {
    if (saved === undefined) delete process.env.LINUX_VHOST_IN_VM;
    else process.env.LINUX_VHOST_IN_VM = saved;
  });

  test('here when nothing is missing, even inside the test VM', () => {
    process.env.LINUX_VHOST_IN_VM = '1';
    expect(whereToRun({ devices: ['/dev/null'] })).toEqual({ place: 'here', missing: [] });
  });

  test('the test VM when something is missing outside it', () => {
    delete process.env.LINUX_VHOST_IN_VM;
    expect(whereToRun({ devices: [absent[0]] })).toEqual({ place: 'test-vm', missing: [absent[0]] });
    process.env.LINUX_VHOST_IN_VM = '0';
    expect(whereToRun({ devices: [absent[0]] }).place).toBe('test-vm');
  });

  test('nowhere when something is missing inside the test VM (a re-spawn would recurse)', () => {
    process.env.LINUX_VHOST_IN_VM = '1';
    expect(whereToRun({ devices: ['/dev/null', absent[0]] })).toEqual({ place: 'nowhere', missing: [absent[0]] });
  });
});

describe('runInTestVm', () => {
  test('runs the scripts/vm.sh of this checkout', () => {
    expect(TEST_VM_SCRIPT).toBe(path.join(root, 'scripts', 'vm.sh'));
    expect(fs.existsSync(TEST_VM_SCRIPT)).toBe(true);
  });

  test('returns 1 and prints the reason after the label when scripts/vm.sh cannot start', () => {
    const err = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(runInTestVm('true', [], { label: 'unit', cwd: path.join(root, 'no-such-dir') })).toBe(1);
      expect(err).toHaveBeenCalledWith('unit: spawnSync bash ENOENT\n');
    } finally {
      err.mockRestore();
    }
  });

  test('passes vmArgs to scripts/vm.sh before the command and returns its exit status', () => {
    // An invalid --smp stops vm.sh at its usage (125) before anything boots.
    // Run from dist/ in a child process, to capture the usage it prints on the inherited stderr.
    const built = path.join(root, 'dist', 'cli', 'test-vm.js');
    if (!fs.existsSync(built) || fs.statSync(built).mtimeMs < fs.statSync(path.join(root, 'lib', 'cli', 'test-vm.ts')).mtimeMs)
      throw new Error(`${built} is missing or older than lib/cli/test-vm.ts: run npm run build:ts first`);
    const code = `process.exitCode = require(${JSON.stringify(built)}).runInTestVm('true', [], { label: 'unit', vmArgs: ['--smp', 'two'] })`;
    const res = spawnSync(process.execPath, ['-e', code], { cwd: root, encoding: 'utf8' });
    expect(res.stderr).toContain('usage: scripts/vm.sh');
    expect(res.status).toBe(125);
  });
});
