// Front-end ↔ back-end loopback, both in this library, no QEMU: the vhost-user
// front-end (VhostUser + VhostUserBuilder, GuestMemory on a memfd, driver-side
// Virtqueues) plays QEMU and the guest driver; VhostUserNet behind
// VhostUserBackend runs in a child process (VhostUser's calls block this
// thread while they wait for replies, as QEMU's do). The child echoes every
// frame back with the MACs swapped and reports its events as JSON lines.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { EventFd } from '../../../lib/core/eventfd';
import { features as F } from '../../../lib/core/features';
import { GuestMemory } from '../../../lib/core/memory';
import { buildArpRequest, parseIpv4 } from '../../../lib/guest/responder';
import { VhostUserBuilder } from '../../../lib/vhost/user/builder';
import { VhostUser } from '../../../lib/vhost/user/vhost-user';
import { placeVirtqueue, Virtqueue } from '../../../lib/virtio/virtqueue';
import { tsPrelude, waitFor } from '../../support/helpers';

const LIB = path.resolve(__dirname, '../../../lib');
const QSIZE = 64;
const SLOT = 2048;
const GUEST_MAC = Buffer.from([0x02, 0, 0, 0, 0, 0x22]);
const NODE_MAC = '02:00:00:00:00:11';

const CHILD = (sock: string): string => `
const { VhostUserNet } = require(${JSON.stringify(path.join(LIB, 'device/net.ts'))});
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const net = VhostUserNet.listen(${JSON.stringify(sock)}, { mac: ${JSON.stringify(NODE_MAC)}, responder: { ipv4: '10.9.0.1' }, queueLimit: 8 });
net.on('frame', (f) => {
  const r = Buffer.from(f);
  f.copy(r, 0, 6, 12);
  f.copy(r, 6, 0, 6);
  say({ sent: net.send(r) });
});
net.on('drain', () => say({ drain: true }));
net.on('ready', () => say({ ready: true }));
net.backend.on('disconnect', (r) => say({ disconnect: r ? r.code : null }));
net.backend.on('refused', (e) => say({ refused: e.code }));
process.stdin.on('data', () => say({ stats: net.stats, conns: net.backend.stats, rings: [0, 1].map((i) => net.backend.ringState(i)) }));
process.stdin.on('end', () => { net.close(); process.exit(0); });
say({ listening: true });
`;

interface ChildEvent {
  listening?: true;
  sent?: boolean;
  drain?: true;
  ready?: true;
  disconnect?: string | null;
  refused?: string;
  stats?: Record<string, number>;
  conns?: Record<string, number>;
  rings?: { running: boolean; base: number }[];
}

class Child {
  readonly events: ChildEvent[] = [];
  stderr = '';
  constructor(readonly proc: ChildProcess) {
    let partial = '';
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      const lines = (partial + d).split('\n');
      partial = lines.pop()!;
      for (const l of lines) this.events.push(JSON.parse(l) as ChildEvent);
    });
    proc.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
  }
  async next<K extends keyof ChildEvent>(key: K, from = 0): Promise<ChildEvent> {
    await waitFor(`${key} from the back-end child (${this.stderr})`, () => this.events.slice(from).some((e) => key in e), 15_000);
    return this.events.slice(from).find((e) => key in e)!;
  }
  async stats(): Promise<ChildEvent> {
    const from = this.events.length;
    this.proc.stdin!.write('\n');
    return this.next('stats', from);
  }
}

/** The driver side: memory, the two rings and their eventfds, driven through VhostUser. */
class Driver {
  readonly memory: GuestMemory;
  readonly rx: Virtqueue;
  readonly tx: Virtqueue;
  readonly fds: EventFd[];
  readonly rings: { desc: bigint; avail: bigint; used: bigint }[];
  readonly pool: bigint;
  nextSlot = 0;

  constructor() {
    const rx = placeVirtqueue(QSIZE, 0n);
    const tx = placeVirtqueue(QSIZE, (rx.end + 4095n) & ~4095n);
    this.pool = (tx.end + 4095n) & ~4095n;
    this.memory = GuestMemory.create({ regions: [{ gpa: 0n, size: this.pool + BigInt(SLOT * 4 * QSIZE) }], name: 'vu-net-loopback' });
    this.fds = [EventFd.create(), EventFd.create(), EventFd.create(), EventFd.create()];
    this.rings = [rx, tx];
    this.rx = Virtqueue.create({ memory: this.memory, kick: this.fds[0], size: QSIZE, ...rx, eventIdx: true });
    this.tx = Virtqueue.create({ memory: this.memory, kick: this.fds[2], size: QSIZE, ...tx, eventIdx: true });
  }

  start(dev: VhostUser): void {
    new VhostUserBuilder(dev, { queues: 2 })
      .memory(this.memory)
      .features(F.ring.VERSION_1 | F.ring.RING_EVENT_IDX)
      .queue(0, { size: QSIZE, ...this.rings[0], kick: this.fds[0], call: this.fds[1] })
      .queue(1, { size: QSIZE, ...this.rings[1], kick: this.fds[2], call: this.fds[3] })
      .start();
  }

  slot(): bigint {
    const gpa = this.pool + BigInt(SLOT * (this.nextSlot++ % (4 * QSIZE)));
    return gpa;
  }

  readonly rxByHead = new Map<number, bigint>();

  postRx(n: number): void {
    const gpas = Array.from({ length: n }, () => this.slot());
    const heads = this.rx.post(gpas.map((gpa) => [{ gpa, len: SLOT, writable: true }]));
    heads.forEach((h, i) => this.rxByHead.set(h, gpas[i]));
  }

  sendFrames(frames: Uint8Array[]): void {
    const chains = frames.map((f) => {
      const gpa = this.slot();
      const v = this.memory.view(gpa, 12 + f.length);
      v.fill(0, 0, 12);
      v.set(f, 12);
      return [{ gpa, len: 12 + f.length }];
    });
    this.tx.post(chains);
  }

  /** The next `n` RX buffers the device filled, in the order it used them. */
  async received(n: number): Promise<Buffer[]> {
    const used: { head: number; len: number }[] = [];
    await waitFor(`${n} RX buffers used`, () => {
      used.push(...this.rx.collect());
      return used.length >= n;
    });
    return used.map((u) => Buffer.from(this.memory.view(this.rxByHead.get(u.head)!, u.len)));
  }

  close(): void {
    this.rx.close();
    this.tx.close();
    for (const f of this.fds) f.close();
    this.memory.close();
  }
}

function frame(dst: Uint8Array, src: Uint8Array, payload: Buffer): Buffer {
  return Buffer.concat([Buffer.from(dst), Buffer.from(src), Buffer.from([0x88, 0xb5]), payload]);
}

describe('vhost-user-net loopback: VhostUser front-end ↔ VhostUserNet back-end (child process)', () => {
  let dir: string;
  let sock: string;
  let child: Child;
  let driver: Driver | null = null;
  let dev: VhostUser | null = null;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vu-net-'));
    sock = path.join(dir, 'net.sock');
    const proc = spawn(process.execPath, ['-e', tsPrelude(dir) + CHILD(sock)], { stdio: ['pipe', 'pipe', 'pipe'] });
    child = new Child(proc);
    await child.next('listening');
  }, 30_000);
  afterEach(async () => {
    dev?.close();
    driver?.close();
    dev = null;
    driver = null;
    const exited = new Promise((r) => child.proc.once('exit', r));
    child.proc.stdin!.end();
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const connect = (): { d: VhostUser; drv: Driver } => {
    dev = VhostUser.connect(sock);
    driver = new Driver();
    driver.start(dev);
    return { d: dev, drv: driver };
  };

  test('frames from the driver reach the device and its answers land in the driver\'s RX buffers (header, num_buffers 1)', async () => {
    const { drv } = connect();
    await child.next('ready');
    drv.postRx(16);
    const sent = Array.from({ length: 10 }, (_, i) => frame(parseMacBytes(NODE_MAC), GUEST_MAC, Buffer.alloc(46 + i * 100, i + 1)));
    drv.sendFrames(sent);
    const got = await drv.received(10);
    got.forEach((buf, i) => {
      expect(buf.subarray(0, 10)).toEqual(Buffer.alloc(10));
      expect(buf.readUInt16LE(10)).toBe(1); // num_buffers
      const f = buf.subarray(12);
      expect(f.subarray(0, 6)).toEqual(GUEST_MAC); // swapped by the echo
      expect(f.subarray(14)).toEqual(sent[i].subarray(14));
    });
    await waitFor('TX buffers used', () => drv.tx.collect().length > 0 || drv.tx.inFlight === 0);
    const s = await child.stats();
    expect(s.stats).toMatchObject({ rxFrames: 10, txFrames: 10, txQueued: 0, txDropped: 0 });
  });

  test('the responder answers the driver\'s ARP request for its address', async () => {
    const { drv } = connect();
    await child.next('ready');
    drv.postRx(2);
    drv.sendFrames([buildArpRequest({ srcMac: GUEST_MAC, srcIp: parseIpv4('10.9.0.2'), targetIp: parseIpv4('10.9.0.1') })]);
    const [reply] = await drv.received(1);
    const f = reply.subarray(12);
    expect(f.readUInt16BE(12)).toBe(0x0806);
    expect(f.readUInt16BE(20)).toBe(2); // ARP reply
    expect(Uint8Array.from(f.subarray(22, 28))).toEqual(parseMacBytes(NODE_MAC));
    expect((await child.stats()).stats).toMatchObject({ rxAnswered: 1 });
  });

  test('with no RX buffer posted, frames wait in the bounded queue (send false), the excess is dropped, and posting buffers delivers them and emits drain', async () => {
    const { drv } = connect();
    await child.next('ready');
    const frames = Array.from({ length: 12 }, (_, i) => frame(parseMacBytes(NODE_MAC), GUEST_MAC, Buffer.alloc(50, i)));
    drv.sendFrames(frames);
    await waitFor('12 echoes attempted', () => child.events.filter((e) => 'sent' in e).length === 12);
    expect(child.events.filter((e) => e.sent === true)).toHaveLength(0);
    let s = await child.stats();
    expect(s.stats).toMatchObject({ txQueued: 8, txDropped: 4, txFrames: 0 });
    drv.postRx(16);
    const got = await drv.received(8);
    expect(got.map((b) => b[12 + 14])).toEqual([0, 1, 2, 3, 4, 5, 6, 7]); // the first 8, in order
    await child.next('drain');
    s = await child.stats();
    expect(s.stats).toMatchObject({ txFrames: 8 });
  });

  test('GET_VRING_BASE stops the ring and returns its next avail index; a reconnecting front-end resumes from the bases it sets', async () => {
    const { d, drv } = connect();
    await child.next('ready');
    drv.postRx(8);
    drv.sendFrames([frame(parseMacBytes(NODE_MAC), GUEST_MAC, Buffer.alloc(50, 1)), frame(parseMacBytes(NODE_MAC), GUEST_MAC, Buffer.alloc(50, 2))]);
    await drv.received(2);
    expect(d.getVringBase(1)).toBe(2);
    expect(d.getVringBase(0)).toBe(2); // 8 RX buffers posted, 2 used
    let s = await child.stats();
    expect(s.rings!.map((r) => r.running)).toEqual([false, false]);
    // The front-end goes away and comes back: the device keeps its state, the rings start again from the saved bases.
    const from = child.events.length;
    d.reconnect();
    await child.next('disconnect', from);
    await child.next('ready', from);
    s = await child.stats();
    expect(s.conns).toMatchObject({ connections: 2, refusedConnections: 0 });
    expect(s.rings!.map((r) => r.base)).toEqual([2, 2]);
    // RX resumes at avail index 2: the six buffers posted before the reconnect are used next.
    drv.sendFrames([frame(parseMacBytes(NODE_MAC), GUEST_MAC, Buffer.alloc(50, 3))]);
    const got = await drv.received(1);
    expect(got[0][12 + 14]).toBe(3);
    expect(drv.rx.lastUsedIdx).toBe(3);
    s = await child.stats();
    expect(s.stats).toMatchObject({ rxFrames: 3, txFrames: 3 });
  });
});

function parseMacBytes(mac: string): Uint8Array {
  return Uint8Array.from(mac.split(':').map((h) => parseInt(h, 16)));
}
