// A running vsock device nobody keeps is closed by the garbage collector, and
// says so (issue 13 item 8): a LINUX_VHOST_GC_CLOSE warning naming the device,
// its node, fd and CID and where it was started; the CID is free again after.
// Runs in a `node --expose-gc` child over lib/ (transpiled).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describeKernel, tsPrelude } from '../../support/helpers';

const ROOT = path.resolve(__dirname, '../../..');
const CID = 900_000 + Math.floor(Math.random() * 50_000);

describeKernel('garbage collection of a running vhost-vsock device', ['/dev/vhost-vsock'], () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lv-gc-kernel-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('is closed with a warning naming RunningVhostVsock, /dev/vhost-vsock, its CID and the start() caller; the CID can be taken again', () => {
    const script = `${tsPrelude(dir)}
const lib = require(${JSON.stringify(path.join(ROOT, 'lib/index.ts'))});
const warnings = [];
process.on('warning', (w) => warnings.push({ code: w.code, message: w.message, detail: w.detail }));
const memory = lib.GuestMemory.create({ regions: [{ gpa: 0n, size: 1n << 20n }] });
const q = (i) => ({ size: 64, desc: 0x10000n * BigInt(i + 1), avail: 0x10000n * BigInt(i + 1) + 0x1000n, used: 0x10000n * BigInt(i + 1) + 0x2000n, kick: lib.EventFd.create(), call: lib.EventFd.create() });
const queues = [q(0), q(1)];
(function startAndForget() {
  lib.VhostVsock.builder().memory(memory).features(lib.features.ring.VERSION_1).cid(${CID}).queue(0, queues[0]).queue(1, queues[1]).start();
})();
gc();
setImmediate(() => { gc(); setImmediate(() => {
  let retaken = 'no';
  try { const d = lib.VhostVsock.open(); d.setOwner(); d.setGuestCid(${CID}); d.close(); retaken = 'yes'; } catch (e) { retaken = e.code; }
  console.log(JSON.stringify({ warnings, retaken }));
  memory.close();
  for (const x of queues) { x.kick.close(); x.call.close(); }
}); });`;
    const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 120_000 });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: expect.any(String) });
    const out = JSON.parse(r.stdout) as { warnings: { code: string; message: string; detail: string }[]; retaken: string };
    expect(out.warnings).toHaveLength(1);
    const [w] = out.warnings;
    expect(w.code).toBe('LINUX_VHOST_GC_CLOSE');
    expect(w.message).toMatch(new RegExp(`^Closing VhostVsock / RunningVhostVsock \\(fd \\d+, '/dev/vhost-vsock', CID ${CID}\\) on garbage collection: keep a reference to it while it is in use, or close\\(\\) it$`));
    expect(w.detail).toMatch(/at VhostVsockBuilder\.start [\s\S]*at startAndForget /);
    expect(out.retaken).toBe('yes');
  });
});
