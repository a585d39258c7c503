#!/usr/bin/env node
// `npm test`: the unit suite here, then the kernel suite against the real
// vhost devices: directly when this host has them (as root), otherwise inside
// the test VM (scripts/vm.sh). With CI=true a kernel suite that cannot run, or
// that skips a test, is a failure. Ends with one "N passed, N failed" line.
//
//   node scripts/test.js            unit + kernel
//   node scripts/test.js unit       unit only
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

function usable(p) {
  try {
    fs.accessSync(p, fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

// Runs one jest project; returns its counts from jest's JSON report.
function runJest(project, wrap = []) {
  fs.mkdirSync(outDir, { recursive: true });
  const report = path.join(outDir, `${project}-results.json`);
  fs.rmSync(report, { force: true });
  const args = [...wrap, process.execPath, jest, '--selectProjects', project, '--json', '--outputFile', report];
  if (project === 'kernel') args.push('--runInBand');
  const env = { ...process.env, ...(project === 'kernel' && required ? { LINUX_VHOST_REQUIRE_KERNEL: '1' } : {}) };
  const res = spawnSync(args[0], args.slice(1), { cwd: root, stdio: 'inherit', env });
  let counts = { passed: 0, failed: 0, skipped: 0 };
  if (fs.existsSync(report)) {
    const r = JSON.parse(fs.readFileSync(report, 'utf8'));
    counts = { passed: r.numPassedTests, failed: r.numFailedTests, skipped: r.numPendingTests + r.numTodoTests };
    counts.failed += r.numRuntimeErrorTestSuites; // suites that failed before any test ran (failed tests are counted above)
  } else {
    counts.failed = 1; // jest died before reporting
    log(`${project}: jest wrote no report (exit ${res.status ?? res.signal})`);
  }
  if (res.status !== 0 && counts.failed === 0) counts.failed = 1;
  return counts;
}

function kernelWrap() {
  if (usable('/dev/vhost-net') && usable('/dev/vhost-vsock') && usable('/dev/net/tun')) {
    log('kernel suite: this host has the vhost devices, running directly');
    return [];
  }
  if (process.env.LINUX_VHOST_IN_VM === '1') {
    throw new Error('inside the test VM but /dev/vhost-net, /dev/vhost-vsock or /dev/net/tun is missing');
  }
  log('kernel suite: this host lacks /dev/vhost-net or /dev/vhost-vsock; running it inside the test VM');
  return [path.join(root, 'scripts', 'vm.sh'), '--'];
}

const total = { passed: 0, failed: 0, skipped: 0 };
function add(name, c) {
  log(`${name}: ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped`);
  total.passed += c.passed;
  total.failed += c.failed;
  total.skipped += c.skipped;
}

if (which === 'all' || which === 'unit') add('unit', runJest('unit'));
if (which === 'all' || which === 'kernel') {
  let wrap;
  try {
    wrap = kernelWrap();
  } catch (err) {
    log(`kernel suite cannot run: ${err.message}`);
    total.failed += required ? 1 : 0;
  }
  if (wrap) {
    const c = runJest('kernel', wrap);
    add('kernel', c);
    if (required && c.skipped > 0) {
      log(`kernel suite skipped ${c.skipped} test(s) but is required here (CI): failing`);
      total.failed += 1;
    }
    if (c.passed === 0 && c.failed === 0) {
      log('kernel suite ran no test');
      if (required) total.failed += 1;
    }
  }
}

console.log(`${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
process.exit(total.failed > 0 ? 1 : 0);
