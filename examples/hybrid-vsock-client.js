// Hybrid vsock from Node: reach an agent in a Firecracker or Cloud Hypervisor
// guest through the VMM's unix socket (`uds_path` / `--vsock socket=`), with
// the CONNECT/OK handshake done for you.
//   node examples/hybrid-vsock-client.js /path/to/v.sock 52
// Without arguments it starts a stand-in for the VMM first: socat answering
// the handshake as Firecracker does and echoing, so it runs anywhere socat is
// installed (no VM, no AF_VSOCK).
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { vsock } = require('linux-vhost');

async function main() {
  let [sockPath, port] = process.argv.slice(2);
  let standIn;
  if (!sockPath) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hybrid-vsock-'));
    sockPath = path.join(dir, 'v.sock');
    port = '52';
    standIn = spawn('socat', [`UNIX-LISTEN:${sockPath}`, 'SYSTEM:read l; echo "OK 1073741824"; exec cat'], { stdio: 'ignore' });
    for (let i = 0; i < 100 && !fs.existsSync(sockPath); i++) await new Promise((r) => setTimeout(r, 20));
    process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  }
  const conn = vsock.connect({ path: sockPath, port: Number(port), timeout: 5000 }, () => {
    console.log(`connected to guest port ${conn.port}; the VMM assigned host port ${conn.assignedPort}`);
    conn.end('hello over hybrid vsock');
  });
  const chunks = [];
  conn.on('data', (c) => chunks.push(c));
  conn.on('end', () => {
    console.log('answer:', Buffer.concat(chunks).toString());
    standIn?.kill();
  });
  conn.on('error', (err) => {
    console.error(`${err.code}: ${err.message}`);
    standIn?.kill();
    process.exitCode = 1;
  });
}
main();
