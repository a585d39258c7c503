// The batched and copy-free frame paths of VirtioNetGuest against real
// vhost-net and a tap (issue 18): 'frames' batches, reserve() / commit(),
// RX loans ('loans' / giveBack()), and that a view never outlives its slot
// (detached on commit, give-back, pause and close). Frames are judged by
// python3 AF_PACKET sockets on the tap (test/support/net-helpers.ts).
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { Tap } from '../../../lib/netdev/tap';
import { VirtioNetGuest, type VirtioNetGuestOptions } from '../../../lib/guest/net';
import { closeAfterEach, describeKernel, sleep, thrown, waitFor } from '../../support/helpers';
import { capture, inject, TEST_ETHERTYPE as ETHERTYPE } from '../../support/net-helpers';

jest.setTimeout(120_000);

const HOST_MAC = Buffer.from([0x02, 0x77, 0, 0, 0, 1]);

/** A broadcast frame of `size` bytes (ETHERTYPE) with sequence number `seq` after the header, random payload. */
function frame(size: number, seq: number): Buffer {
  const f = randomBytes(size);
  f.fill(0xff, 0, 6);
  HOST_MAC.copy(f, 6);
  f.writeUInt16BE(ETHERTYPE, 12);
  f.writeUInt32BE(seq, 14);
  return f;
}

const ours = (f: Uint8Array): boolean => f.length >= 18 && ((f[12] << 8) | f[13]) === ETHERTYPE;

describeKernel('VirtioNetGuest frame paths: batches, reserve/commit, loans', ['/dev/vhost-net', '/dev/net/tun'], () => {
  const track = closeAfterEach({ ignoreCloseErrors: true });

  function setup(options: Partial<VirtioNetGuestOptions> = {}): { tap: Tap; guest: VirtioNetGuest } {
    const tap = track(Tap.create({ name: 'vnf%d', up: true }));
    const guest = track(VirtioNetGuest.create({ tap, queueSize: 256, ...options }));
    return { tap, guest };
  }

  describe('RX batches', () => {
    test.each([true, false])("'frames' gives each collected batch once, in order, the same frames as 'frame' (eventIdx %s); calls stay at most one per batch", async (eventIdx) => {
      const { tap, guest } = setup({ eventIdx });
      const perFrame: Buffer[] = [];
      const batches: Buffer[][] = [];
      guest.on('frame', (f: Buffer) => perFrame.push(f));
      guest.on('frames', (b: Buffer[]) => batches.push(b));
      const sent = Array.from({ length: 300 }, (_, i) => frame(i % 2 ? 1500 : 64, i));
      const calls0 = guest.stats.calls.rx;
      await inject(tap.name, sent);
      await waitFor('every frame', () => perFrame.filter(ours).length === sent.length, 30_000);
      const flat = batches.flat();
      expect(flat.length).toBe(perFrame.length);
      expect(flat.findIndex((f, i) => f !== perFrame[i])).toBe(-1); // the same objects, in the same order
      const got = flat.filter(ours);
      expect(got.length).toBe(sent.length);
      expect(got.findIndex((f, i) => !f.equals(sent[i]))).toBe(-1); // byte-exact, in order (cheaper than toEqual under TCG)
      const stats = guest.stats;
      expect(batches.length).toBe(stats.rxBatches);
      expect(batches.every((b) => b.length > 0)).toBe(true);
      // Interrupt suppression: each call wake-up drains everything waiting, so there are
      // never more wake-ups than batches (plus one that finds the ring already drained).
      expect(stats.calls.rx - calls0).toBeLessThanOrEqual(stats.rxBatches + 1);
    });
  });

  test("frames spanning several mergeable buffers keep their place among single-buffer ones; a batch's single-buffer copies are views of one Buffer", async () => {
    const { tap, guest } = setup({ rxBufferSize: 512 });
    const batches: Buffer[][] = [];
    guest.on('frames', (b: Buffer[]) => batches.push(b));
    const sent = Array.from({ length: 240 }, (_, i) => frame([64, 1500, 400, 1000][i % 4], i)); // 1500 and 1000 B span 3 buffers
    await inject(tap.name, sent);
    await waitFor('every frame', () => batches.flat().filter(ours).length === sent.length, 30_000);
    const got = batches.flat().filter(ours);
    expect(got.findIndex((f, i) => !f.equals(sent[i]))).toBe(-1); // byte-exact, in order
    // Single-buffer frames (64 and 400 B) of one batch share one allocation, filled by one addon call.
    const shared = batches.map((b) => new Set(b.filter((f) => f.length <= 500 - 12).map((f) => f.buffer)).size);
    expect(shared.every((n) => n <= 1)).toBe(true);
    expect(guest.stats.rxFrames).toBeGreaterThanOrEqual(sent.length);
  });

  describe('TX reserve() / commit()', () => {
    test('frames written into reserved slots arrive byte-exact; one commit is one publish with at most one kick; views detach on commit', async () => {
      const { tap, guest } = setup();
      const frames = Array.from({ length: 200 }, (_, i) => frame([60, 64, 128, 1000, 1514][i % 5], i));
      const cap = await capture(tap.name, frames.length);
      const kicks0 = guest.stats.kicks.tx;
      let commits = 0;
      const views: Uint8Array[] = [];
      for (let i = 0; i < frames.length; i += 50) {
        for (const f of frames.slice(i, i + 50)) {
          const v = guest.reserve(f.length);
          expect(v).not.toBeNull();
          expect(v!.length).toBe(f.length);
          v!.set(f);
          views.push(v!);
        }
        expect(guest.reserved).toBe(50);
        expect(guest.commit()).toBe(50);
        commits++;
        expect(guest.reserved).toBe(0);
        await sleep(20); // let the device return the slots
      }
      expect(await cap.frames).toEqual(frames);
      expect(views.every((v) => v.byteLength === 0 && v[0] === undefined)).toBe(true);
      expect(guest.stats.kicks.tx - kicks0).toBeLessThanOrEqual(commits);
      expect(guest.stats).toMatchObject({ txFrames: frames.length, txBytes: frames.reduce((a, f) => a + f.length, 0) });
      expect(guest.commit()).toBe(0); // nothing reserved
    });

    test('with every slot reserved reserve() returns null, and drain follows a commit', async () => {
      const { guest } = setup();
      const views: Uint8Array[] = [];
      for (;;) {
        const v = guest.reserve(64);
        if (v === null) break;
        v.fill(0xff, 0, 6);
        v[12] = ETHERTYPE >> 8;
        v[13] = ETHERTYPE & 0xff;
        views.push(v);
      }
      expect(views.length).toBe(256);
      expect(guest.stats.txRingFull).toBe(1);
      const drained = once(guest, 'drain');
      expect(guest.commit()).toBe(256);
      await drained;
      expect(guest.reserve(64)).not.toBeNull();
    });

    test('reserved views are detached by pause() and close() (their frames are not sent); bad lengths and use after close throw', () => {
      const { guest } = setup();
      expect(thrown(() => guest.reserve(13))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE', message: expect.stringContaining('len') });
      expect(thrown(() => guest.reserve(guest.maxFrameSize + 1))).toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
      expect(thrown(() => guest.reserve(1.5))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
      const a = guest.reserve(100)!;
      expect(a.byteLength).toBe(100);
      const state = guest.pause();
      expect(a.byteLength).toBe(0);
      expect(guest.reserved).toBe(0);
      guest.resume(state);
      const b = guest.reserve(100)!;
      expect(b.byteLength).toBe(100);
      const txFrames = guest.stats.txFrames;
      guest.close();
      expect(b.byteLength).toBe(0);
      expect(txFrames).toBe(0);
      expect(thrown(() => guest.reserve(64))).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
      expect(thrown(() => guest.commit())).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
    });
  });

  describe('RX loans', () => {
    test('lent frames are views into the ring slots, byte-exact; giveBack() detaches them and refills the ring', async () => {
      const { tap, guest } = setup();
      const lent: Uint8Array[] = [];
      let batches = 0;
      guest.on('loans', (frames: Uint8Array[]) => {
        batches++;
        for (const f of frames) {
          if (ours(f)) lent.push(f);
          else guest.giveBack(f); // IPv6 noise of a fresh link
        }
      });
      const sent = Array.from({ length: 40 }, (_, i) => frame(i % 2 ? 1500 : 60, i));
      await inject(tap.name, sent);
      await waitFor('every frame lent', () => lent.length === sent.length, 30_000);
      expect(lent.map((f) => Buffer.from(f))).toEqual(sent);
      expect(batches).toBeLessThanOrEqual(guest.stats.rxBatches);
      expect(guest.stats.rxLentOut).toBe(sent.length);
      // A view of the slot itself, not a copy: a byte written through it shows in guest memory.
      const region = guest.memory.regions[0];
      const mem = guest.memory.view(region.gpa, region.size);
      const all = Buffer.from(mem.buffer, mem.byteOffset, mem.length); // a view, not a copy
      const at = all.indexOf(sent[5]);
      expect(at).toBeGreaterThan(0);
      lent[5][20] ^= 0xff;
      expect(all[at + 20]).toBe(sent[5][20] ^ 0xff);
      lent[5][20] ^= 0xff;
      expect(guest.giveBack(lent.slice(0, 10))).toBe(10);
      expect(lent.slice(0, 10).every((f) => f.byteLength === 0)).toBe(true);
      expect(lent[10].byteLength).toBeGreaterThan(0);
      expect(guest.giveBack(lent[0])).toBe(0); // already given back
      expect(guest.giveBack(Buffer.alloc(64))).toBe(0); // not a loan
      expect(guest.giveBack(lent)).toBe(30);
      expect(guest.stats.rxLentOut).toBe(0);
      expect(thrown(() => guest.giveBack(42 as never))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
    });

    test('at most maxLoans frames are out: the guest stops collecting until they come back, then everything arrives', async () => {
      const { tap, guest } = setup({ maxLoans: 8 });
      const held: Uint8Array[] = [];
      let got = 0;
      guest.on('loans', (frames: Uint8Array[]) => {
        for (const f of frames) {
          if (ours(f)) {
            got++;
            held.push(f);
          } else guest.giveBack(f);
        }
      });
      const sent = Array.from({ length: 30 }, (_, i) => frame(200, i));
      await inject(tap.name, sent);
      await waitFor('8 loans out', () => guest.stats.rxLentOut === 8, 30_000);
      await sleep(300);
      expect(guest.stats.rxLentOut).toBe(8); // bounded: no more lent while 8 are out
      while (got < sent.length) {
        guest.giveBack(held.splice(0));
        await sleep(50);
      }
      expect(got).toBe(sent.length);
    });

    test('lent views are detached by pause() and by close(); giveBack() after close throws', async () => {
      const { tap, guest } = setup();
      const lent: Uint8Array[] = [];
      guest.on('loans', (frames: Uint8Array[]) => lent.push(...frames.filter(ours)));
      await inject(tap.name, [frame(64, 0), frame(64, 1)]);
      await waitFor('2 loans', () => lent.length === 2, 30_000);
      const state = guest.pause();
      expect(lent.map((f) => f.byteLength)).toEqual([0, 0]);
      expect(guest.stats.rxLentOut).toBe(0);
      guest.resume(state);
      await inject(tap.name, [frame(64, 2)]);
      await waitFor('a loan after resume', () => lent.length === 3, 30_000);
      expect(Buffer.from(lent[2]).readUInt32BE(14)).toBe(2);
      guest.close();
      expect(lent[2].byteLength).toBe(0);
      expect(thrown(() => guest.giveBack(lent[2]))).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
    });

    test('copies and loans side by side: frame listeners get copies that outlive the loan', async () => {
      const { tap, guest } = setup();
      const copies: Buffer[] = [];
      guest.on('frame', (f: Buffer) => ours(f) && copies.push(f));
      guest.on('loans', (frames: Uint8Array[]) => guest.giveBack(frames));
      const sent = [frame(300, 0), frame(300, 1)];
      await inject(tap.name, sent);
      await waitFor('2 copies', () => copies.length === 2, 30_000);
      expect(copies).toEqual(sent);
      expect(guest.stats.rxLentOut).toBe(0);
    });
  });

  describe('closing guest.memory directly', () => {
    test('every lent and reserved view is detached before the unmap; the guest then fails cleanly (no crash), close() still works', async () => {
      const { tap, guest } = setup();
      const errors: Error[] = [];
      guest.on('error', (err: Error) => errors.push(err));
      const lent: Uint8Array[] = [];
      guest.on('loans', (frames: Uint8Array[]) => lent.push(...frames.filter(ours))); // never given back
      await inject(tap.name, [frame(64, 0), frame(1500, 1), frame(300, 2)]);
      await waitFor('3 loans', () => lent.length === 3, 30_000);
      const reserved = [guest.reserve(64)!, guest.reserve(1500)!, guest.reserve(200)!];
      reserved[0].fill(0xab);
      expect(lent.map((f) => f.byteLength)).toEqual([64, 1500, 300]);
      expect(reserved.map((f) => f.byteLength)).toEqual([64, 1500, 200]);
      expect(Buffer.from(lent[1]).readUInt32BE(14)).toBe(1);

      guest.memory.close(); // not guest.close(): the hazard the unmap hooks close

      for (const view of [...lent, ...reserved]) {
        expect(view.byteLength).toBe(0);
        expect(view[0]).toBeUndefined(); // nothing left to read, rather than unmapped pages
        view[0] = 1; // dropped: a detached view has no bytes
      }
      expect(thrown(() => reserved[1].fill(1))).toMatchObject({ name: 'TypeError', message: expect.stringContaining('detached') }); // not a fault
      // The guest's next ring access finds its memory closed: a typed error, thrown or emitted.
      await inject(tap.name, [frame(64, 3)]);
      let sendError: unknown = null;
      try {
        guest.send(frame(64, 4));
      } catch (err) {
        sendError = err;
      }
      await sleep(200);
      expect(sendError ?? errors[0]).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
      expect(errors.every((e) => (e as { code?: string }).code === 'ERR_VHOST_CLOSED')).toBe(true);
      guest.close(); // idempotent with the failure path; must not throw
      expect(guest.closed).toBe(true);
      expect(lent.concat(reserved).every((v) => v.byteLength === 0)).toBe(true);
    });
  });
});
