// VirtioNetGuest over the real vhost-net and a tap this test creates (inside
// the test VM): frames cross the kernel byte-exact both ways, the host's own
// ping and a UDP client talk to the guest's responder, backpressure holds on
// both sides, and bad input / a deleted tap fail cleanly.
//
// Host side of the tap: small python3 scripts with AF_PACKET sockets (Node
// cannot open them) and busybox ping. Counts are sized for TCG, where JS runs
// ~25x slower; the full counts run with, on a KVM host:
//   LINUX_VHOST_TEST_BURST=100000 LINUX_VHOST_TEST_UDP=10000
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { promisify } from 'node:util';
import { Tap } from '../../../lib/netdev/tap';
import { VirtioNetGuest, type VirtioNetGuestOptions } from '../../../lib/guest/net';
import { closeAfterEach, describeKernel, openFdCount, sleep, thrown, waitFor } from '../../support/helpers';
import { capture, FrameLog, inject, sendAll, TEST_ETHERTYPE as ETHERTYPE } from '../../support/net-helpers';

jest.setTimeout(120_000);

const BURST = Number(process.env.LINUX_VHOST_TEST_BURST ?? 2000);
const UDP_COUNT = Number(process.env.LINUX_VHOST_TEST_UDP ?? 300);
const PYTHON = '/usr/bin/python3';
const HOST_IP = '10.77.0.1';
const GUEST_IP = '10.77.0.2';
const run = promisify(execFile);

// UDP client: `count` datagrams, at most `window` unanswered; prints the number echoed intact.
const UDP_CLIENT = `
import socket, sys, os
src, dst, port, count, window = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.settimeout(5)
sent, ok, outstanding = 0, 0, {}
while ok < count:
    while sent < count and len(outstanding) < window:
        payload = sent.to_bytes(4, "big") + os.urandom(60)
        outstanding[sent] = payload
        s.sendto(payload, (dst, port))
        sent += 1
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        break
    seq = int.from_bytes(data[:4], "big")
    if outstanding.get(seq) == data:
        del outstanding[seq]
        ok += 1
print(ok)
`;

const BROADCAST = Buffer.alloc(6, 0xff);
const HOST_MAC = Buffer.from([0x02, 0x77, 0, 0, 0, 1]);

/** An Ethernet frame of `size` bytes (ETHERTYPE), random payload, optional sequence number after the header. */
function frame(size: number, dst: Buffer = BROADCAST, seq?: number): Buffer {
  const f = randomBytes(size);
  dst.copy(f, 0);
  HOST_MAC.copy(f, 6);
  f.writeUInt16BE(ETHERTYPE, 12);
  if (seq !== undefined) f.writeUInt32BE(seq, 14);
  return f;
}

/** Takes `n` frames from the iterator, or fails after `ms`. */
async function take(it: AsyncIterator<Buffer>, n: number, ms = 30_000): Promise<Buffer[]> {
  const out: Buffer[] = [];
  const deadline = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`got ${out.length} of ${n} frames`)), ms).unref());
  while (out.length < n) {
    const r = await Promise.race([it.next(), deadline]);
    if (r.done) throw new Error(`iterator ended after ${out.length} of ${n} frames`);
    out.push(r.value);
  }
  return out;
}

/** Takes frames until `n` of ETHERTYPE arrived (the host also sends IPv6 noise to a fresh link). */
async function takeOurs(it: AsyncIterator<Buffer>, n: number): Promise<Buffer[]> {
  const out: Buffer[] = [];
  while (out.length < n) {
    const [f] = await take(it, 1);
    if (f.readUInt16BE(12) === ETHERTYPE) out.push(f);
  }
  return out;
}

describeKernel('VirtioNetGuest over vhost-net and a tap', ['/dev/vhost-net', '/dev/net/tun'], () => {
  const track = closeAfterEach({ ignoreCloseErrors: true }); // a tap the test deleted may fail to close

  function setup(options: Partial<VirtioNetGuestOptions> = {}, tapMtu?: number): { tap: Tap; guest: VirtioNetGuest } {
    const tap = track(Tap.create({ name: 'vng%d', up: true, mtu: tapMtu }));
    const guest = track(VirtioNetGuest.create({ tap, queueSize: 256, ...options }));
    return { tap, guest };
  }

  describe('TX: guest → tap', () => {
    test('frames of 60 to 1514 bytes arrive on the host side byte-exact', async () => {
      const { tap, guest } = setup();
      const frames = [60, 61, 64, 100, 128, 512, 999, 1000, 1500, 1513, 1514].map((n) => frame(n));
      const cap = await capture(tap.name, frames.length);
      expect(guest.sendBatch(frames)).toBe(frames.length);
      expect(await cap.frames).toEqual(frames);
      expect(guest.stats).toMatchObject({ txFrames: frames.length, txBytes: frames.reduce((a, f) => a + f.length, 0) });
    });

    test('a 9014-byte frame arrives byte-exact with MTU 9000', async () => {
      const { tap, guest } = setup({ mtu: 9000 }, 9000);
      const big = frame(9014);
      const cap = await capture(tap.name, 2);
      expect(guest.send(big)).toBe(true);
      expect(guest.send(frame(9018))).toBe(true); // with a VLAN tag's 4 bytes: the limit
      const got = await cap.frames;
      expect(got[0]).toEqual(big);
      expect(got[1].length).toBe(9018);
    });

    test(`a burst of ${BURST} frames arrives complete and in order`, async () => {
      const { tap, guest } = setup();
      const frames = Array.from({ length: BURST }, (_, i) => frame(64, BROADCAST, i));
      const cap = await capture(tap.name, BURST, 120);
      const t0 = process.hrtime.bigint();
      await sendAll(guest, frames);
      const sendNs = Number(process.hrtime.bigint() - t0);
      const got = await cap.frames;
      expect(got.length).toBe(BURST);
      expect(got.map((f) => f.readUInt32BE(14))).toEqual(frames.map((_, i) => i));
      expect(got.findIndex((f, i) => !f.equals(frames[i]))).toBe(-1); // byte-exact (cheaper than toEqual under TCG)
      const { kicks } = guest.stats;
      // one kick per batch at most, and the device's hints save some
      expect(kicks.tx).toBeLessThanOrEqual(Math.ceil(BURST / 64) + guest.stats.txRingFull + 1);
      console.log(`TX burst: ${BURST} x 64 B posted in ${(sendNs / 1e6).toFixed(1)} ms (${Math.round(BURST / (sendNs / 1e9))} pps), kicks ${kicks.tx}, ring full ${guest.stats.txRingFull}x`);
    });

    test('a full TX ring refuses more (false / short count) and emits drain when space returns', async () => {
      const { tap, guest } = setup({ queueSize: 8 });
      const frames = Array.from({ length: 40 }, (_, i) => frame(80, BROADCAST, i));
      const cap = await capture(tap.name, frames.length);
      const first = guest.sendBatch(frames);
      expect(first).toBe(8); // one ring's worth, not queued in JS
      await once(guest, 'drain');
      await sendAll(guest, frames.slice(first), 16);
      expect(await cap.frames).toEqual(frames);
      expect(guest.stats.txRingFull).toBeGreaterThanOrEqual(1);
    });
  });

  describe('RX: tap → guest', () => {
    test('frames injected on the host side arrive byte-exact, including ones spanning several mergeable buffers', async () => {
      const { tap, guest } = setup({ mtu: 9000 }, 9000);
      const mac = Buffer.from(guest.mac.split(':').map((h) => parseInt(h, 16)));
      const sizes = [60, 64, 1514, 2035, 2036, 2037, 4000, 9014, 61, 8000];
      const frames = sizes.map((n, i) => frame(n, i % 2 ? mac : BROADCAST, i));
      const it = guest.frames();
      const posted = guest.stats.rxBuffersPosted;
      await inject(tap.name, frames, 0.01);
      const got = await takeOurs(it, frames.length);
      expect(got).toEqual(frames);
      // 2048-byte buffers hold 2036 bytes after the header: larger frames took several
      const buffers = sizes.reduce((a, n) => a + Math.ceil((n + 12) / 2048), 0);
      await waitFor('refill', () => guest.stats.rxBuffersPosted - posted >= buffers, 20_000);
      await it.return!();
    });

    test('without mergeable buffers each frame lands whole in one buffer', async () => {
      const { tap, guest } = setup({ mergeableRx: false });
      const frames = [60, 700, 1514].map((n, i) => frame(n, BROADCAST, i));
      const got = new FrameLog(guest, (f) => f.readUInt16BE(12) === ETHERTYPE).frames;
      await inject(tap.name, frames);
      await waitFor('3 frames', () => got.length === 3, 20_000);
      expect(got).toEqual(frames);
    });

    test('a slow frames() consumer stops the guest collecting (bounded), and everything arrives once it reads', async () => {
      const { tap, guest } = setup({ queueSize: 16, highWaterMark: 8 });
      const frames = Array.from({ length: 60 }, (_, i) => frame(100, BROADCAST, i));
      const it = guest.frames();
      await inject(tap.name, frames, 0.002);
      await sleep(500);
      // at most highWaterMark frames taken from the ring while nobody reads
      expect(guest.stats.rxFrames).toBeLessThanOrEqual(8);
      expect(await takeOurs(it, frames.length)).toEqual(frames);
    });
  });

  describe('responder', () => {
    async function addressed(): Promise<{ tap: Tap; guest: VirtioNetGuest }> {
      const r = setup({ responder: { ipv4: GUEST_IP, udpEchoPort: 7 } });
      await run('ip', ['addr', 'add', `${HOST_IP}/24`, 'dev', r.tap.name]);
      return r;
    }

    test('the host’s ping gets 5 replies from the guest', async () => {
      const { guest } = await addressed();
      const { stdout } = await run('busybox', ['ping', '-c', '5', '-W', '2', GUEST_IP]);
      expect(stdout).toMatch(/5 packets transmitted, 5 packets received/);
      expect(guest.stats.rxAnswered).toBeGreaterThanOrEqual(6); // ARP + 5 echo requests
      console.log(stdout.trim().split('\n').slice(-1)[0]);
    });

    test(`UDP echo round-trips ${UDP_COUNT} datagrams with none lost`, async () => {
      const { guest } = await addressed();
      const { stdout } = await run(PYTHON, ['-c', UDP_CLIENT, HOST_IP, GUEST_IP, '7', String(UDP_COUNT), '16'], { timeout: 100_000 });
      expect(Number(stdout)).toBe(UDP_COUNT);
      expect(guest.stats.txRepliesDropped).toBe(0);
    });
  });

  describe('bad input and teardown', () => {
    test('an oversize frame throws ERR_VHOST_OUT_OF_RANGE naming the limit; a runt ERR_VHOST_INVALID_ARG', () => {
      const { guest } = setup();
      expect(guest.maxFrameSize).toBe(1518);
      const err = thrown(() => guest.send(frame(1519)));
      expect(err.code).toBe('ERR_VHOST_OUT_OF_RANGE');
      expect(err.message).toMatch(/1519 bytes, larger than the limit 1518 \(mtu 1500/);
      expect(thrown(() => guest.sendBatch([frame(60), frame(2000)])).message).toMatch(/frames\[1\]/);
      expect(guest.stats.txFrames).toBe(0); // validated before anything was posted
      expect(thrown(() => guest.send(new Uint8Array(13))).code).toBe('ERR_VHOST_INVALID_ARG');
      expect(guest.send(frame(1518))).toBe(true);
    });

    test('options are validated before any syscall, naming the option', () => {
      const tap = track(Tap.create({ name: 'vng%d' }));
      const before = openFdCount();
      const cases: [Record<string, unknown>, string, RegExp][] = [
        [{ queueSize: 100 }, 'ERR_VHOST_INVALID_ARG', /options\.queueSize/],
        [{ mtu: 67 }, 'ERR_VHOST_OUT_OF_RANGE', /options\.mtu/],
        [{ mergeableRx: false, rxBufferSize: 4096 }, 'ERR_VHOST_INVALID_ARG', /options\.rxBufferSize/],
        [{ responder: { ipv4: '10.77.0' } }, 'ERR_VHOST_INVALID_ARG', /responder\.ipv4/],
        [{ bogus: 1 }, 'ERR_VHOST_INVALID_ARG', /options\.bogus/],
        [{ tap: {} }, 'ERR_VHOST_INVALID_ARG', /options\.tap/],
      ];
      for (const [extra, code, message] of cases) {
        const err = thrown(() => VirtioNetGuest.create({ tap, ...extra }));
        expect({ code: err.code, message: err.message }).toEqual({ code, message: expect.stringMatching(message) });
      }
      expect(openFdCount()).toBe(before);
      tap.close();
      expect(thrown(() => VirtioNetGuest.create({ tap })).code).toBe('ERR_VHOST_CLOSED');
    });

    test('close() releases every fd and mapping it made, ends frames(), and sending after it throws ERR_VHOST_CLOSED', async () => {
      const tap = track(Tap.create({ name: 'vng%d', up: true }));
      const before = openFdCount();
      const guest = VirtioNetGuest.create({ tap });
      expect(openFdCount()).toBeGreaterThan(before);
      const it = guest.frames();
      const pending = it.next();
      const closed = once(guest, 'close');
      guest.close();
      await closed;
      expect(await pending).toEqual({ value: undefined, done: true });
      expect(openFdCount()).toBe(before);
      expect(thrown(() => guest.send(frame(60))).code).toBe('ERR_VHOST_CLOSED');
      expect(thrown(() => guest.sendBatch([frame(60)])).code).toBe('ERR_VHOST_CLOSED');
      guest.close(); // idempotent
      expect(tap.closed).toBe(false); // the caller's tap stays theirs
      expect(tap.iff.name).toBe(tap.name);
    });

    test('a tap deleted under the running device gives an error event and a clean close', async () => {
      const tap = track(Tap.create({ name: 'vng%d', up: true }));
      const before = openFdCount();
      const guest = VirtioNetGuest.create({ tap, linkCheckIntervalMs: 50 });
      guest.send(frame(60));
      const events: string[] = [];
      let error: (Error & { code?: string }) | undefined;
      guest.on('error', (err) => {
        events.push('error');
        error = err;
      });
      guest.on('close', () => events.push('close'));
      await run('ip', ['link', 'del', tap.name]);
      await waitFor('the guest to close', () => guest.closed, 10_000);
      expect(events).toEqual(['error', 'close']);
      expect(error).toMatchObject({ code: 'EBADFD', errno: -77, syscall: 'ioctl(TUNGETIFF)' });
      expect(error!.message).toMatch(/was deleted under the running device/);
      expect(guest.closed).toBe(true);
      expect(openFdCount()).toBe(before);
      expect(thrown(() => guest.send(frame(60))).code).toBe('ERR_VHOST_CLOSED');
    });
  });
});
