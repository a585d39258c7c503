// The demo's own function (runDemo, not the CLI's VM path) against the real
// vhost-net and tun: the host's ping gets every reply, a small burst arrives
// whole on the tap, and the tap, its address and every fd are gone afterwards,
// also when the demo is interrupted mid-step.
import * as fs from 'node:fs';
import { DEMO_HOST_IP, runDemo } from '../../lib/demo';
import { describeKernel, openFdCount } from './helpers';

jest.setTimeout(120_000);

const BURST = 2000;

function demoTaps(): string[] {
  return fs.readdirSync('/sys/class/net').filter((n) => n.startsWith('lvdemo'));
}

describeKernel('linux-vhost demo (runDemo)', ['/dev/vhost-net', '/dev/net/tun'], () => {
  test('pings the guest 5/5, the burst arrives complete, and it cleans up after itself', async () => {
    const fds = openFdCount();
    const lines: string[] = [];
    const report = await runDemo({ frames: BURST, frameSize: 1514, progress: (line) => lines.push(line) });
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
    // The tap (and with it the host address) and every fd are gone.
    expect(fs.existsSync(`/sys/class/net/${report.tap}`)).toBe(false);
    expect(demoTaps()).toEqual([]);
    expect(fs.readFileSync('/proc/net/fib_trie', 'utf8')).not.toContain(DEMO_HOST_IP);
    expect(openFdCount()).toBe(fds);
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
});
