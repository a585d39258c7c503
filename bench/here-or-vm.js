// Runs a benchmark's main() here when this host has the devices it needs (as
// root), otherwise re-runs the script inside the test VM, which sets
// LINUX_VHOST_IN_VM=1 so it never recurses. The decision and the re-spawn are
// lib/cli/test-vm.ts's, loaded from dist/ (npm run build:ts).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');

/**
 * name: for messages; script: the caller's __filename; main: async () => exit code.
 * options.devices: what main() opens (default /dev/vhost-net and /dev/net/tun; root is always needed);
 * options.lacking: how the messages name them (default '/dev/vhost-net or /dev/net/tun');
 * options.unusableInVm: the message inside the test VM (default: lacking + ' is not usable');
 * options.beforeVm: runs on the host before the re-spawn (e.g. buildC()).
 */
function runHereOrInVm(name, script, main, options = {}) {
  const { devices = ['/dev/vhost-net', '/dev/net/tun'], lacking = '/dev/vhost-net or /dev/net/tun' } = options;
  const { whereToRun, runInTestVm } = require(path.join(root, 'dist', 'cli', 'test-vm'));
  const { place } = whereToRun({ root: true, devices });
  if (place === 'here') {
    main().then(
      (code) => (process.exitCode = code),
      (err) => {
        console.error(`${name}: ${err.stack || err.message}`);
        process.exitCode = 1;
      },
    );
  } else if (place === 'nowhere') {
    console.error(`${name}: inside the test VM but ${options.unusableInVm ?? `${lacking} is not usable`}`);
    process.exitCode = 1;
  } else {
    options.beforeVm?.();
    console.error(`${name}: this host lacks ${lacking} (or root): running inside the test VM`);
    // Node's own flags (--expose-gc, --cpu-prof, ...) go along.
    process.exitCode = runInTestVm(process.execPath, [...process.execArgv, script, ...process.argv.slice(2)], { label: name, cwd: root });
  }
}

/** Builds bench/<src> into build/bench/<bin> with cc -O2 unless the binary is newer; exits 1 if cc fails. */
function buildC(name, cSrc, cBin) {
  try {
    if (fs.statSync(cBin).mtimeMs >= fs.statSync(cSrc).mtimeMs) return;
  } catch {
    // not built yet
  }
  fs.mkdirSync(path.dirname(cBin), { recursive: true });
  const cc = process.env.CC || 'cc';
  const res = spawnSync(cc, ['-O2', '-Wall', '-Wextra', '-o', cBin, cSrc], { stdio: 'inherit' });
  if (res.status !== 0) {
    console.error(`${name}: ${cc} failed to build ${path.relative(root, cSrc)}`);
    process.exit(1);
  }
}

module.exports = { buildC, runHereOrInVm };
