// VirtioNetGuest across a device stop and restart, and dirty logging of what
// vhost writes on RX, on the real vhost-net and a tap this test creates (in
// the test VM):
// - pause() mid-burst (GET_VRING_BASE after detaching the tap) and resume()
//   on a new device built with the saved bases: every frame crosses exactly
//   once and in order, TX (guest → tap) and RX (tap → guest);
// - with dirty logging on, frames vhost writes into RX buffers mark the pages
//   of those buffers and of the RX used ring, and nothing in the TX area.
// Host side: python3 AF_PACKET scripts (Node cannot open them). Sized for TCG.
import { randomBytes } from 'node:crypto';
import { Tap } from '../../../lib/netdev/tap';
import { VirtioNetGuest } from '../../../lib/guest/net';
import { placeVirtqueue } from '../../../lib/virtio/virtqueue';
import { closeAfterEach, describeKernel, sleep, thrown, waitFor } from '../../support/helpers';
import { capture, FrameLog, inject, linkStat, sendAll, TEST_ETHERTYPE as ETHERTYPE } from '../../support/net-helpers';

jest.setTimeout(120_000);

const HOST_MAC = Buffer.from([0x02, 0x77, 0, 0, 0, 9]);
const QUEUE_SIZE = 256;
const VHOST_NET_RX = 0;
const VHOST_NET_TX = 1;
const PAGE = 4096;

/** An ETHERTYPE frame of `size` bytes to broadcast with `seq` after the header and a random payload. */
function frame(size: number, seq: number): Buffer {
  const f = randomBytes(size);
  f.fill(0xff, 0, 6);
  HOST_MAC.copy(f, 6);
  f.writeUInt16BE(ETHERTYPE, 12);
  f.writeUInt32BE(seq, 14);
  return f;
}

const seqs = (frames: Buffer[]) => frames.map((f) => f.readUInt32BE(14));
const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const baseOf = (state: { queues: { index: number; base: number }[] }, index: number) => state.queues.find((q) => q.index === index)!.base;

describeKernel('VirtioNetGuest: stop and restore, dirty log', ['/dev/vhost-net', '/dev/net/tun'], () => {
  const track = closeAfterEach();

  function setup(): { tap: Tap; guest: VirtioNetGuest } {
    const tap = track(Tap.create({ name: 'vnglc%d', up: true }));
    const guest = track(VirtioNetGuest.create({ tap, queueSize: QUEUE_SIZE }));
    return { tap, guest };
  }

  test('TX: paused mid-burst and resumed from the saved bases, every frame reaches the tap once, in order', async () => {
    const { tap, guest } = setup();
    const N = 1200;
    const frames = range(N).map((i) => frame(60 + ((i * 37) % 1400), i));
    const captured = await capture(tap.name, N + 1, 60, ETHERTYPE, 3); // one more than sent: a repeat would show
    const rx0 = linkStat(tap.name, 'rx_packets');

    await sendAll(guest, frames.slice(0, 300));
    let sent = 300 + guest.sendBatch(frames.slice(300, 300 + QUEUE_SIZE)); // a ring's worth in flight, then stop at once
    const firstDevice = guest.device;
    const state = guest.pause();
    expect(guest.paused).toBe(true);
    expect(firstDevice.running).toBe(false);
    expect(state.queues.map((q) => q.index).sort()).toEqual([VHOST_NET_RX, VHOST_NET_TX]);
    // The TX base is the next descriptor vhost would take: exactly the frames the tap got.
    const arrivedAtPause = linkStat(tap.name, 'rx_packets') - rx0;
    expect(baseOf(state, VHOST_NET_TX)).toBe(arrivedAtPause);
    expect(arrivedAtPause).toBeLessThanOrEqual(sent);
    expect(guest.pause()).toEqual(state); // again: the same state

    // While paused the ring keeps filling, and nothing leaves.
    sent += guest.sendBatch(frames.slice(sent, sent + QUEUE_SIZE));
    expect(guest.txInFlight).toBeGreaterThan(0);
    await sleep(300);
    expect(linkStat(tap.name, 'rx_packets') - rx0).toBe(arrivedAtPause);

    guest.resume(state);
    expect(guest.paused).toBe(false);
    expect(guest.device).not.toBe(firstDevice);
    expect(guest.device.running).toBe(true);
    expect(firstDevice.closed).toBe(true);
    await sendAll(guest, frames.slice(sent));

    const got = await captured.frames;
    expect(got.length).toBe(N);
    expect(seqs(got)).toEqual(range(N));
    for (let i = 0; i < N; i++) if (!got[i].equals(frames[i])) throw new Error(`frame ${i} differs`);
    expect(linkStat(tap.name, 'rx_packets') - rx0).toBe(N);
    expect(guest.stats.txFrames).toBe(N);
  });

  test('RX: paused while the host injects and resumed from the saved bases, every frame reaches the guest once, in order', async () => {
    const { tap, guest } = setup();
    const N = 400; // below the tap's own queue (500), which holds what arrives while paused
    const frames = range(N).map((i) => frame(60 + ((i * 53) % 1450), i));
    const got = new FrameLog(guest, (f) => f.readUInt16BE(12) === ETHERTYPE).frames;
    const injecting = inject(tap.name, frames, 0.002);
    await waitFor('the first 50 frames', () => got.length >= 50, 30_000);
    const state = guest.pause();
    expect(got.length).toBeLessThan(N); // mid-burst
    // While paused vhost takes nothing from the tap (its tx counter is what vhost read); the frames wait there.
    await sleep(100); // whatever vhost had placed in the used ring before the pause is collected now
    const readAtPause = linkStat(tap.name, 'tx_packets');
    const gotAtPause = got.length;
    await sleep(400);
    expect(linkStat(tap.name, 'tx_packets')).toBe(readAtPause);
    expect(got.length).toBe(gotAtPause);
    const placed = baseOf(state, VHOST_NET_RX);
    guest.resume(state);
    await injecting;
    await waitFor(`all ${N} frames`, () => got.length >= N, 30_000);
    await sleep(300); // a repeat would arrive now
    expect(got.length).toBe(N);
    expect(seqs(got)).toEqual(range(N));
    for (let i = 0; i < N; i++) if (!got[i].equals(frames[i])) throw new Error(`frame ${i} differs`);
    expect(placed).toBeGreaterThanOrEqual(50); // RX buffers vhost had taken by the pause (IPv6 noise included)
  });

  test('pause()/resume() misuse: not paused, a bad state, after close', () => {
    const { guest } = setup();
    expect(thrown(() => guest.resume()).code).toBe('ERR_VHOST_INVALID_ARG');
    const state = guest.pause();
    const bad = { queues: [{ index: VHOST_NET_RX, base: 70000 }, { index: VHOST_NET_TX, base: 0 }] };
    const e = thrown(() => guest.resume(bad));
    expect(e.code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(e.message).toContain('state.queues[0].base');
    expect(thrown(() => guest.resume({} as never)).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(guest.paused).toBe(true); // still paused, still resumable
    guest.resume(state);
    expect(guest.device.running).toBe(true);
    guest.close();
    expect(thrown(() => guest.pause()).code).toBe('ERR_VHOST_CLOSED');
    expect(thrown(() => guest.resume(state)).code).toBe('ERR_VHOST_CLOSED');
  });

  test('dirty log: RX frames mark the pages of the buffers vhost wrote and of the RX used ring, nothing in the TX area', async () => {
    const { tap, guest } = setup();
    // The guest's layout: RX ring at 0, TX ring after it, then the RX buffer pool, then the TX pool.
    const rxRing = placeVirtqueue(QUEUE_SIZE, 0n);
    const txRing = placeVirtqueue(QUEUE_SIZE, (rxRing.end + 15n) & ~15n);
    const rxUsedPage = Math.floor(Number(rxRing.used) / PAGE);
    const txRingPages = new Set(range(Math.ceil(Number(txRing.end) / PAGE)).filter((p) => p * PAGE >= Number(txRing.desc) && p !== rxUsedPage));
    const rxPoolStart = Math.ceil(Number(txRing.end) / PAGE) * PAGE;
    const rxPoolEnd = rxPoolStart + 2048 * QUEUE_SIZE;

    guest.device.enableDirtyLog();
    expect(guest.device.dirtyLogging).toBe(true);
    guest.device.readDirtyLog(); // start clean (IPv6 noise of the fresh link may have landed already)

    const frames = [100, 600, 1000, 1514].map((size, i) => frame(size, i));
    const got = new FrameLog(guest, (f) => f.readUInt16BE(12) === ETHERTYPE).frames;
    await inject(tap.name, frames);
    await waitFor('the injected frames', () => got.length === frames.length, 20_000);
    const dirty = new Set(guest.device.readDirtyLog());

    expect(dirty.has(rxUsedPage)).toBe(true);
    const view = guest.memory.view(0, guest.memory.regions[0].size);
    const mem = Buffer.from(view.buffer, view.byteOffset, view.byteLength);
    for (const f of frames) {
      const at = mem.indexOf(f.subarray(14)); // the frame body is unique (random); vhost wrote it after the 12-byte header
      expect(at).toBeGreaterThanOrEqual(rxPoolStart);
      expect(at + f.length).toBeLessThanOrEqual(rxPoolEnd);
      const first = Math.floor((at - 14 - 12) / PAGE);
      const last = Math.floor((at - 14 + f.length - 1) / PAGE);
      for (let p = first; p <= last; p++) expect(dirty.has(p)).toBe(true);
    }
    // Only the RX side was written: RX used ring page and RX pool pages.
    for (const p of dirty) {
      expect(txRingPages.has(p)).toBe(false);
      expect(p === rxUsedPage || (p * PAGE >= rxPoolStart && p * PAGE < rxPoolEnd)).toBe(true);
    }
  });
});
