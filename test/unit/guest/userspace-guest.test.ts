// UserspaceGuest, the lifecycle VirtioNetGuest and VirtioVsockGuest share,
// driven over real GuestRings (memfd memory, eventfds, native virtqueues: all
// available without vhost) with a stand-in device: start, calls, pause and
// resume onto a new device, a resume that fails, close and its hooks, use
// after close, and failures.
import type { DeviceState } from '../../../lib/vhost/plan';
import { VhostError } from '../../../lib/core/errors';
import { GuestRings, RX_QUEUE, TX_QUEUE, UserspaceGuest, type GuestDevice } from '../../../lib/guest/userspace-guest';
import { thrown } from '../../support/helpers';

class FakeDevice implements GuestDevice {
  running = true;
  closed = false;
  constructor(readonly generation: number, readonly resumedFrom?: DeviceState) {}
  stop(): DeviceState {
    this.running = false;
    return { queues: [{ index: RX_QUEUE, base: 7 }, { index: TX_QUEUE, base: 9 }] };
  }
  close(): void {
    this.closed = true;
  }
}

const layout = { name: 'userspace-guest-test', queueSize: 8, rxBufferSize: 256, txBufferSize: 256, eventIdx: false };

class TestGuest extends UserspaceGuest<FakeDevice> {
  readonly log: string[] = [];
  readonly devices: FakeDevice[] = [];
  failNextStart = false;

  static make(): TestGuest {
    let guest: TestGuest | undefined;
    const devices: FakeDevice[] = [];
    return GuestRings.create<FakeDevice, TestGuest>(layout, (_rings, state, previous) => {
      if (guest?.failNextStart) throw new VhostError('EBUSY: the new device failed', { code: 'EBUSY' });
      if (previous && !previous.closed) throw new Error('the old device must be closed before the new one starts');
      const dev = new FakeDevice(devices.length, state);
      devices.push(dev);
      return dev;
    }, (rings) => {
      guest = new TestGuest(rings, devices);
      guest.start();
      return guest;
    });
  }

  private constructor(rings: GuestRings<FakeDevice>, devices: FakeDevice[]) {
    super('TestGuest', rings);
    this.devices = devices;
  }

  get ringsForTest(): GuestRings<FakeDevice> {
    return this.rings;
  }

  protected onCall(which: 'rx' | 'tx'): void {
    this.log.push(`call:${which}`);
    if (which === 'tx') throw new VhostError('EIO: the ring broke', { code: 'EIO' });
  }

  protected override onDeviceReleased(): void {
    this.log.push(`released:${this.devices.map((d) => d.closed).join(',')}`);
  }

  protected override beforeClose(): void {
    this.log.push(`beforeClose:closed=${this.closed}`);
  }

  protected override afterClose(): void {
    this.log.push(`afterClose:closed=${this.closed}`);
  }

  checkOpenFor(method: string): void {
    this.checkOpen(method);
  }
}

const until = async (cond: () => boolean) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(cond()).toBe(true);
};

describe('UserspaceGuest', () => {
  test('start posts every RX buffer and turns each call eventfd wake-up into onCall()', async () => {
    const guest = TestGuest.make();
    try {
      expect(guest.ringsForTest.rxPool.available).toBe(0);
      expect(guest.ringsForTest.rxq.inFlight).toBe(layout.queueSize);
      guest.ringsForTest.queue(RX_QUEUE).call.write(1n);
      await until(() => guest.log.includes('call:rx'));
      expect(guest.closed).toBe(false);
    } finally {
      guest.close();
    }
  });

  test('a ring failure in onCall() emits error, then closes the guest', async () => {
    const guest = TestGuest.make();
    const errors: Error[] = [];
    guest.on('error', (e) => errors.push(e));
    guest.ringsForTest.queue(TX_QUEUE).call.write(1n);
    await until(() => guest.closed);
    expect(errors.map((e) => (e as VhostError).code)).toEqual(['EIO']);
    expect(guest.devices[0].closed).toBe(true);
  });

  test('pause stops the device and returns its state; resume starts a new one at those bases after closing the old, then kicks both rings', () => {
    const guest = TestGuest.make();
    try {
      expect(guest.paused).toBe(false);
      const state = guest.pause();
      expect(state.queues).toEqual([{ index: 0, base: 7 }, { index: 1, base: 9 }]);
      expect(guest.paused).toBe(true);
      const rx = guest.ringsForTest.queue(RX_QUEUE).kick;
      const tx = guest.ringsForTest.queue(TX_QUEUE).kick;
      rx.read();
      tx.read();
      guest.resume();
      expect(guest.log).toContain('released:true'); // the hook runs between the two devices
      expect(guest.devices.map((d) => d.closed)).toEqual([true, false]);
      expect(guest.devices[1].resumedFrom).toEqual(state);
      expect(guest.paused).toBe(false);
      expect(rx.read()).toBe(1n);
      expect(tx.read()).toBe(1n);
      const given = { queues: [{ index: 0, base: 1 }, { index: 1, base: 2 }] };
      guest.pause();
      guest.resume(given);
      expect(guest.devices[2].resumedFrom).toEqual(given);
    } finally {
      guest.close();
    }
  });

  test('resume without pause throws and changes nothing', () => {
    const guest = TestGuest.make();
    try {
      expect(thrown(() => guest.resume()).code).toBe('ERR_VHOST_INVALID_ARG');
      expect(guest.devices.length).toBe(1);
      expect(guest.devices[0].closed).toBe(false);
      expect(guest.closed).toBe(false);
    } finally {
      guest.close();
    }
  });

  test('a resume whose new device fails closes the guest and throws that error', () => {
    const guest = TestGuest.make();
    let closes = 0;
    guest.on('close', () => closes++);
    guest.pause();
    guest.failNextStart = true;
    expect(thrown(() => guest.resume()).code).toBe('EBUSY');
    expect(guest.closed).toBe(true);
    expect(closes).toBe(1);
  });

  test('close runs beforeClose while open and afterClose once closed, emits close once, and is idempotent', () => {
    const guest = TestGuest.make();
    let closes = 0;
    guest.on('close', () => closes++);
    const memory = guest.ringsForTest.memory;
    guest.close();
    guest.close();
    guest[Symbol.dispose]();
    expect(guest.log).toEqual(['beforeClose:closed=false', 'afterClose:closed=true']);
    expect(closes).toBe(1);
    expect(guest.devices[0].closed).toBe(true);
    expect(memory.closed).toBe(true);
  });

  test('after close, pause/resume and the checks throw ERR_VHOST_CLOSED naming the guest and the method; ref/unref do nothing', () => {
    const guest = TestGuest.make();
    guest[Symbol.dispose]();
    expect(guest.closed).toBe(true);
    for (const [method, call] of [['pause', () => guest.pause()], ['resume', () => guest.resume()], ['send', () => guest.checkOpenFor('send')]] as const) {
      const err = thrown(call);
      expect(err.code).toBe('ERR_VHOST_CLOSED');
      expect(err.message).toContain(`TestGuest (${method})`);
    }
    guest.ref();
    guest.unref();
  });
});
