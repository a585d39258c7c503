#!/usr/bin/env node
// `npm test`: the unit suite here, then the kernel suite against the real
// vhost devices: directly when this host has them (as root), otherwise inside
// the test VM (scripts/vm.sh; the files that use KVM in a VM of their own, see
// NESTED below). With CI=true a kernel suite that cannot run, or
// that skips a test, is a failure. Ends with one "N passed, N failed" line.
//
// The host suite (programs on this host such as qemu-storage-daemon, no
// kernel vhost) runs here, never in the VM; with CI=true a skip there fails too.
//
//   node scripts/test.js            unit + host + kernel
//   node scripts/test.js unit       unit only
//   node scripts/test.js host       host only
//   node scripts/test.js kernel     kernel only
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const outDir = path.join(root, '.vm-out');
const required = process.env.CI === 'true' || process.env.LINUX_VHOST_REQUIRE_KERNEL === '1';
const which = process.argv[2] || 'all';
const jest = path.join(root, 'node_modules', 'jest', 'bin', 'jest.js');

function log(msg) {
  process.stderr.write(`[test] ${msg}\n`);
}

// The test VM's decision and runner (lib/cli/test-vm.ts), from dist/: only the
// kernel suite needs them, and `npm run test:kernel` builds dist/ first.
function testVm() {
  const file = path.join(root, 'dist', 'cli', 'test-vm.js');
  if (!fs.existsSync(file)) throw new Error('dist/ is not built: run `npm run build:ts` first');
  return require(file);
}

// Kernel test files that use KVM, which in the test VM is nested SVM under TCG (QEMU 7.2).
// That emulation can break the test VM's own kernel (a QEMU that SIGKILL cannot end, every
// vCPU halted, busy with nothing moving, a panic), and everything after it in that VM: CI
// saw it in nested-guest and twice at kvm-tiny-vm/kvm (2 of 6 runs). They run in a test VM
// of their own, after the rest, and each part runs again in a fresh VM when its VM broke
// (scripts/vm.sh 124/125, or the test said so), never when a test merely failed. Worst case,
// all attempts at their timeouts: 2 × 15 + 3 × 20 + 4 × 12 min: over CI's 90 only if most
// attempts hang (a VM that froze, stuck or panicked is stopped within ~2 min; one a test found
// broken, 30 s after it said so).
// hotplug-guest has a VM part of its own: it breaks its VM more often than the rest (20 plug
// cycles with a booted nested guest: 3 of 4 CI runs on 2026-12-03 and 4 of 5 VMs in a loop on
// 12-04 saw its guest stop, reset or the VM's kernel break), and a fresh VM for it should not
// run the other nested files again. After its guest polled less (0.2 s, builtins): 4 of 4 parts
// passed in a loop here, 3 on their first VM and guest; of 7 guest runs 4 passed, 1 panicked at
// boot, 1 reset, 1 stopped (all three in one VM: the third part's first).
const HOTPLUG = ['test/kernel/vmm/hotplug-guest.test.ts'];
const NESTED = ['test/kernel/vmm/kvm-tiny-vm.test.ts', 'test/kernel/vmm/kvm.test.ts', 'test/kernel/vmm/nested-guest.test.ts', ...HOTPLUG];
const VM_PARTS = {
  kernel: { attempts: 2, timeout: 900 }, // seconds; takes ~6 min
  'kernel-nested': { attempts: 3, timeout: 1200 }, // takes ~3 min, up to 12 more with three nested guest runs
  'kernel-hotplug': { attempts: 4, timeout: 720 }, // takes ~2 min, up to 10 more with three guest runs
};

// Runs one jest project (or some of its files), here or inside the test VM; returns
// its counts from jest's JSON report. `name` names the report and the messages.
function runJest(name, project, { inVm = false, files = [], ignore = [] } = {}) {
  fs.mkdirSync(outDir, { recursive: true });
  const report = path.join(outDir, `${name}-results.json`);
  const progress = path.join(outDir, `${name}-progress.txt`); // test/progress-reporter.js
  fs.rmSync(report, { force: true });
  fs.rmSync(progress, { force: true });
  // The kernel suite runs in band, in this jest process, and nested-guest measures that
  // process's CPU. V8's memory reducer starts idle-time full GCs of jest's heap that cost
  // ~600 ms there (measured in the test VM): off, since they have nothing to do with the library.
  const node = project === 'kernel' ? ['--no-memory-reducer'] : [];
  // File paths first: --selectProjects takes every word after it.
  const args = [...node, jest, ...files, ...ignore.map((p) => `--testPathIgnorePatterns=${p}`), '--selectProjects', project, '--json', '--outputFile', report];
  if (project === 'kernel') args.push('--runInBand');
  const env = {
    ...process.env,
    LINUX_VHOST_TEST_PROGRESS: progress,
    ...(project === 'kernel' && required ? { LINUX_VHOST_REQUIRE_KERNEL: '1' } : {}),
    ...(project === 'host' && required ? { LINUX_VHOST_REQUIRE_HOST: '1' } : {}),
  };
  let status;
  if (!inVm) status = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit', env }).status;
  else {
    const { attempts, timeout } = VM_PARTS[name];
    const res = require('./fresh-vms').runInFreshTestVms(process.execPath, args, {
      label: `[test] ${name}`,
      cwd: root,
      env,
      vmArgs: ['--timeout', String(timeout)],
      attempts,
      brokenFile: path.join(outDir, `${name}-vm-broken.txt`),
      onBroken: (n, why) => {
        log(`${name}: the test VM broke (${why}); VM ${n} of ${attempts}, booting a fresh one`);
        fs.rmSync(report, { force: true }); // only the last VM's results count
        fs.rmSync(progress, { force: true });
      },
    });
    status = res.status;
    if (res.broken) log(`${name}: the test VM broke in all ${res.attempts} attempts, the last: ${res.broken}`);
  }
  let counts = { passed: 0, failed: 0, skipped: 0 };
  if (fs.existsSync(report)) {
    const r = JSON.parse(fs.readFileSync(report, 'utf8'));
    counts = { passed: r.numPassedTests, failed: r.numFailedTests, skipped: r.numPendingTests + r.numTodoTests };
    counts.failed += r.numRuntimeErrorTestSuites; // suites that failed before any test ran (failed tests are counted above)
  } else {
    counts.failed = 1; // jest died before reporting
    log(`${name}: jest wrote no report (exit ${status})`);
    const started = fs.existsSync(progress) ? fs.readFileSync(progress, 'utf8').trimEnd().split('\n') : [];
    log(`${name}: ${started.length} test(s) started; the last: ${started.at(-1) ?? 'none'}`);
  }
  if (status !== 0 && counts.failed === 0) counts.failed = 1;
  return counts;
}

// True to run the kernel suite inside the test VM, false to run it here; throws when it cannot run.
function kernelInVm() {
  const { place } = testVm().whereToRun({ devices: ['/dev/vhost-net', '/dev/vhost-vsock', '/dev/net/tun'] });
  if (place === 'here') {
    log('kernel suite: this host has the vhost devices, running directly');
    return false;
  }
  if (place === 'nowhere') {
    throw new Error('inside the test VM but /dev/vhost-net, /dev/vhost-vsock or /dev/net/tun is missing');
  }
  log('kernel suite: this host lacks /dev/vhost-net or /dev/vhost-vsock; running it inside the test VM');
  return true;
}

const total = { passed: 0, failed: 0, skipped: 0 };
function add(name, c) {
  log(`${name}: ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped`);
  total.passed += c.passed;
  total.failed += c.failed;
  total.skipped += c.skipped;
}

// A kernel part that skipped a test or ran none fails where the kernel suite is required.
function addKernel(name, c) {
  add(name, c);
  if (required && c.skipped > 0) {
    log(`${name} skipped ${c.skipped} test(s) but is required here (CI): failing`);
    total.failed += 1;
  }
  if (c.passed === 0 && c.failed === 0) {
    log(`${name} ran no test`);
    if (required) total.failed += 1;
  }
}

if (which === 'all' || which === 'unit') add('unit', runJest('unit', 'unit'));
// Same rule as the kernel parts: where required, a skipped or empty host suite fails.
if (which === 'all' || which === 'host') addKernel('host', runJest('host', 'host'));
if (which === 'all' || which === 'kernel') {
  let inVm;
  try {
    inVm = kernelInVm();
  } catch (err) {
    log(`kernel suite cannot run: ${err.message}`);
    total.failed += required ? 1 : 0;
  }
  if (inVm !== undefined) {
    addKernel('kernel', runJest('kernel', 'kernel', { inVm, ignore: NESTED }));
    addKernel('kernel-nested', runJest('kernel-nested', 'kernel', { inVm, files: NESTED.filter((f) => !HOTPLUG.includes(f)) }));
    addKernel('kernel-hotplug', runJest('kernel-hotplug', 'kernel', { inVm, files: HOTPLUG }));
  }
}

console.log(`${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
process.exit(total.failed > 0 ? 1 : 0);
