// The demo's own function (runDemo, not the CLI's VM path) against the real
// vhost-net and tun: the host's ping gets every reply, a small burst arrives
// whole on the tap, the vsock agent in the userspace vsock guest answers every
// request and checks the upload's SHA-256, and the tap, its address, the vsock
// guest and every fd are gone afterwards, also when the demo is interrupted
// mid-step.
import * as fs from 'node:fs';
import { DEMO_HOST_IP, DEMO_VSOCK_PORT, DEMO_VSOCK_REQUEST_SIZE, formatDemoReport, runDemo } from '../../../lib/cli/demo';
import { describeKernel, openFdCount } from '../../support/helpers';

// Under TCG, most of the first test is ts-jest compiling the net and vsock modules on first use.
jest.setTimeout(240_000);

const BURST = 2000;
const REQUESTS = 300;
const BULK = 1 << 20;

function demoTaps(): string[] {
  return fs.readdirSync('/sys/class/net').filter((n) => n.startsWith('lvdemo'));
}

describeKernel('linux-vhost demo (runDemo)', ['/dev/vhost-net', '/dev/net/tun', '/dev/vhost-vsock'], () => {
  test('pings the guest 5/5, the burst arrives complete, the vsock agent answers, and it cleans up after itself', async () => {
    const fds = openFdCount();
    const lines: string[] = [];
    const report = await runDemo({ frames: BURST, frameSize: 1514, vsock: { requests: REQUESTS, bulkBytes: BULK }, progress: (line) => lines.push(line) });
    expect(report.ping.transmitted).toBe(5);
    expect(report.ping.received).toBe(5);
    expect(report.ping.rttAvgMs).toBeGreaterThan(0);
    expect(report.ping.rttMinMs!).toBeLessThanOrEqual(report.ping.rttAvgMs!);
    expect(report.guest.rxAnswered).toBeGreaterThanOrEqual(5); // the echo requests (plus ARP)
    expect(report.burst.frames).toBe(BURST);
    expect(report.burst.arrived).toBe(BURST);
    expect(report.burst.seconds).toBeGreaterThan(0);
    expect(report.burst.pps).toBeGreaterThan(0);
    expect(report.burst.gbps).toBeCloseTo((report.burst.pps * 1514 * 8) / 1e9, 9);
    expect(lines.some((l) => l.startsWith('ping: reply'))).toBe(true);
    expect(lines.some((l) => l.startsWith(`burst: ${BURST}/${BURST} sent`))).toBe(true);
    // vsock: every echo came back (checked by runDemo, which throws otherwise), the figures are consistent.
    const v = report.vsock;
    expect(v.guestCid).toBeGreaterThanOrEqual(3);
    expect(v.port).toBe(DEMO_VSOCK_PORT);
    expect(v.connectMs).toBeGreaterThan(0);
    expect(v.agentUptimeS).toBeGreaterThanOrEqual(0);
    expect(v.requests).toBe(REQUESTS);
    expect(v.requestSize).toBe(DEMO_VSOCK_REQUEST_SIZE);
    expect(v.requestsPerSec).toBeCloseTo(REQUESTS / v.seconds, 6);
    expect(v.p50Ms).toBeGreaterThan(0);
    expect(v.p50Ms).toBeLessThanOrEqual(v.p99Ms);
    expect(v.p50Ms * REQUESTS).toBeLessThanOrEqual(v.seconds * 1000 * 2); // the median is a real per-request figure
    expect(v.bulk.bytes).toBe(BULK);
    expect(v.bulk.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(v.bulk.mbPerSec).toBeCloseTo(BULK / 1e6 / v.bulk.seconds, 6);
    // The guest's own counters, read back through the agent: at least one packet per request and answer, the upload's credit updates.
    expect(v.agentStats.connections).toBe(1);
    expect(v.agentStats.rxPackets).toBeGreaterThan(REQUESTS);
    expect(v.agentStats.txPackets).toBeGreaterThan(REQUESTS);
    expect(v.agentStats.creditUpdatesSent).toBeGreaterThan(0);
    expect(lines).toContain(`vsock: ${REQUESTS}/${REQUESTS} requests answered`);
    expect(lines).toContain(`vsock: ${BULK} bytes uploaded, SHA-256 matches`);
    const text = formatDemoReport(report);
    expect(text).toContain(`CID ${v.guestCid} port ${DEMO_VSOCK_PORT}`);
    expect(text).toMatch(/300 requests of 64 B answered in [\d.]+ s: [\d,]+ requests\/s, latency p50 [\d.]+ ms, p99 [\d.]+ ms/);
    expect(text).toMatch(/1\.0 MiB host -> guest in [\d.]+ s: [\d,.]+ MB\/s, SHA-256 checked by the agent/);
    // The tap (and with it the host address) and every fd are gone.
    expect(fs.existsSync(`/sys/class/net/${report.tap}`)).toBe(false);
    expect(demoTaps()).toEqual([]);
    expect(fs.readFileSync('/proc/net/fib_trie', 'utf8')).not.toContain(DEMO_HOST_IP);
    expect(openFdCount()).toBe(fds);
  });

  test('bad vsock options are refused before anything is set up', async () => {
    await expect(runDemo({ frames: 1, vsock: { requests: 0 } })).rejects.toThrow('demo: vsock.requests must be a positive integer, got 0');
    await expect(runDemo({ frames: 1, vsock: { bulkBytes: 1.5 } })).rejects.toThrow('demo: vsock.bulkBytes must be a positive integer, got 1.5');
    expect(demoTaps()).toEqual([]);
  });

  test('an abort while ping runs kills it, rejects with AbortError and removes the tap', async () => {
    const fds = openFdCount();
    const controller = new AbortController();
    let tapSeen = '';
    const run = runDemo({
      frames: 100,
      signal: controller.signal,
      progress: (line) => {
        const m = /^setting up: tap (\S+),/.exec(line);
        if (m) tapSeen = m[1];
        if (line.startsWith('ping: reply 1/') && !controller.signal.aborted) controller.abort(); // ping is running
      },
    });
    await expect(run).rejects.toMatchObject({ name: 'AbortError', message: 'demo interrupted' });
    expect(tapSeen).toMatch(/^lvdemo\d+$/);
    expect(fs.existsSync(`/sys/class/net/${tapSeen}`)).toBe(false);
    expect(demoTaps()).toEqual([]);
    expect(openFdCount()).toBe(fds);
  });

  test('an abort during the vsock step rejects with AbortError and closes the vsock guest, its socket and the tap', async () => {
    const fds = openFdCount();
    const controller = new AbortController();
    let tapSeen = '';
    let cidSeen = 0;
    const run = runDemo({
      frames: 100,
      vsock: { requests: 100, bulkBytes: 4096 },
      signal: controller.signal,
      progress: (line) => {
        const t = /^setting up: tap (\S+),/.exec(line);
        if (t) tapSeen = t[1];
        const c = /^vsock: guest CID (\d+),/.exec(line);
        if (c && !controller.signal.aborted) {
          cidSeen = Number(c[1]);
          controller.abort(); // the host socket is connecting to the agent
        }
      },
    });
    await expect(run).rejects.toMatchObject({ name: 'AbortError', message: 'demo interrupted' });
    expect(cidSeen).toBeGreaterThanOrEqual(3);
    expect(fs.existsSync(`/sys/class/net/${tapSeen}`)).toBe(false);
    expect(openFdCount()).toBe(fds); // the vsock guest's device, eventfds and memfd, and the host socket
  });
});
