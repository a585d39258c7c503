// NetSwitch: learns source MACs, forwards known unicast to one port, floods
// broadcast and unknown destinations, never sends a frame back where it came
// from, and forgets a detached port's MACs.
import { EventEmitter } from 'node:events';
import { NetSwitch } from '../../../lib/device/switch';
import { VhostUserNet } from '../../../lib/device/net';
import { thrown } from '../../support/helpers';

class Port extends EventEmitter {
  readonly got: Buffer[] = [];
  send(frame: Uint8Array): boolean {
    this.got.push(Buffer.from(frame));
    return true;
  }
  inject(dst: number, src: number): void {
    const f = Buffer.alloc(60);
    f.set(dst === 0xff ? [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] : [2, 0, 0, 0, 0, dst], 0);
    f.set([2, 0, 0, 0, 0, src], 6);
    this.emit('frame', f);
  }
}

describe('NetSwitch', () => {
  test('floods unknown and broadcast, then forwards to the learned port only', () => {
    const sw = new NetSwitch();
    const [a, b, c] = [new Port(), new Port(), new Port()];
    for (const p of [a, b, c]) sw.attach(p);
    a.inject(0xff, 1); // broadcast from MAC 1 behind a
    expect([a.got.length, b.got.length, c.got.length]).toEqual([0, 1, 1]);
    b.inject(1, 2); // to MAC 1: learned behind a
    expect([a.got.length, b.got.length, c.got.length]).toEqual([1, 1, 1]);
    a.inject(3, 1); // unknown MAC 3: flooded to b and c
    expect([a.got.length, b.got.length, c.got.length]).toEqual([1, 2, 2]);
    a.inject(1, 4); // destination behind the port it came from: filtered
    expect(sw.stats).toEqual({ forwarded: 1, flooded: 2, filtered: 1 });
    expect(sw.table).toEqual({ '02:00:00:00:00:01': 0, '02:00:00:00:00:02': 1, '02:00:00:00:00:04': 0 });
    sw.detach(a);
    expect(sw.table).toEqual({ '02:00:00:00:00:02': 0 });
    a.inject(2, 1); // detached: not switched
    expect(b.got.length).toBe(2);
    sw.close();
  });

  test('a port without send() is refused', () => {
    expect(thrown(() => new NetSwitch().attach({} as never)).code).toBe('ERR_VHOST_INVALID_ARG');
  });
});

describe('VhostUserNet options', () => {
  test('bad options are typed errors naming the option', () => {
    expect(thrown(() => new VhostUserNet({ mtu: 10 })).argument).toBe('options.mtu');
    expect(thrown(() => new VhostUserNet({ queueLimit: -1 })).argument).toBe('options.queueLimit');
    expect(thrown(() => new VhostUserNet({ bogus: 1 } as never)).argument).toBe('options.bogus');
    expect(thrown(() => new VhostUserNet({ responder: { ipv4: '300.1.1.1' } })).argument).toBe('responder.ipv4');
  });

  test('send() before a guest attached queues up to queueLimit, then drops and counts', () => {
    const net = new VhostUserNet({ queueLimit: 2 });
    const f = Buffer.alloc(60);
    expect([net.send(f), net.send(f), net.send(f)]).toEqual([false, false, false]);
    expect(net.queued).toBe(2);
    expect(net.stats).toMatchObject({ txQueued: 2, txDropped: 1, txFrames: 0 });
    expect(thrown(() => net.send(Buffer.alloc(13))).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => net.send(Buffer.alloc(1519))).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    net.close();
    expect(thrown(() => net.send(f)).code).toBe('ERR_VHOST_CLOSED');
  });
});
