// Runs a benchmark's main() here when this host has the vhost-net and tun
// devices (as root), otherwise re-runs the script inside the test VM, which
// sets LINUX_VHOST_IN_VM=1 so it never recurses.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');

function usable(p) {
  try {
    fs.accessSync(p, fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** name: for messages; script: the caller's __filename; main: async () => exit code. */
function runHereOrInVm(name, script, main) {
  if (process.getuid?.() === 0 && usable('/dev/vhost-net') && usable('/dev/net/tun')) {
    main().then(
      (code) => (process.exitCode = code),
      (err) => {
        console.error(`${name}: ${err.stack || err.message}`);
        process.exitCode = 1;
      },
    );
  } else if (process.env.LINUX_VHOST_IN_VM === '1') {
    console.error(`${name}: inside the test VM but /dev/vhost-net or /dev/net/tun is not usable`);
    process.exitCode = 1;
  } else {
    console.error(`${name}: this host lacks /dev/vhost-net or /dev/net/tun (or root): running inside the test VM`);
    const res = spawnSync('bash', [path.join(root, 'scripts', 'vm.sh'), '--', process.execPath, script, ...process.argv.slice(2)], { stdio: 'inherit', cwd: root });
    process.exitCode = res.status ?? 1;
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

module.exports = { buildC, runHereOrInVm, usable };
