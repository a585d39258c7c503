// VhostUserBackend in this process against a raw front-end (hand-encoded
// messages over a UnixSocket, no VhostUser: its calls would block the loop the
// back-end runs on). The front door (socket mode, stale/live sockets, a second
// front-end), the message set's answers, and every malformed-input path: each
// drops the connection with a typed error and leaves no fd or mapping behind.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { EventFd } from '../../../../lib/core/eventfd';
import { GuestMemory } from '../../../../lib/core/memory';
import { UnixServer, UnixSocket, type PassableFd } from '../../../../lib/core/unix-socket';
import { VhostUserBackend } from '../../../../lib/vhost/user/backend';
import type { VhostUserDevice } from '../../../../lib/vhost/user/backend-device';
import type { VhostUserRing } from '../../../../lib/vhost/user/backend-ring';
import {
  encodeConfig, encodeMemTable, encodeMessage, encodeU64, encodeVringAddr, encodeVringState, FLAG_NEED_REPLY, VERSION, VhostUserRequest as R, vringFdPayload,
} from '../../../../lib/vhost/user/messages';
import { openFdCount, sleep, thrown, waitFor } from '../../../support/helpers';

const MEMFD = 'vu-backend-test';
const mappings = (): number => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(MEMFD)).length;

interface TestDevice extends VhostUserDevice {
  started: number[];
  stopped: number[];
  kicks: number[];
  acked: bigint | null;
  config: Buffer;
}

function testDevice(over: Partial<VhostUserDevice> = {}): TestDevice {
  const d: TestDevice = {
    name: 'test-device',
    features: (1n << 32n) | (1n << 29n),
    queues: 2,
    started: [],
    stopped: [],
    kicks: [],
    acked: null,
    config: Buffer.from('0123456789abcdef'),
    setFeatures(f: bigint) {
      d.acked = f;
    },
    startQueue(ring: VhostUserRing) {
      d.started.push(ring.index);
    },
    kick(ring: VhostUserRing) {
      d.kicks.push(ring.index);
    },
    stopQueue(ring: VhostUserRing) {
      d.stopped.push(ring.index);
    },
    readConfig(offset: number, size: number) {
      return d.config.subarray(offset, offset + size);
    },
    ...over,
  };
  return d;
}

/** A front-end speaking raw messages: send, then wait (yielding the loop) for a reply. */
class RawFrontEnd {
  readonly sock: UnixSocket;
  constructor(p: string) {
    this.sock = UnixSocket.connect(p);
  }
  send(request: number, payload: Uint8Array = Buffer.alloc(0), fds: PassableFd[] = [], flags = VERSION): void {
    const n = this.sock.send(encodeMessage(request, flags, payload), fds);
    expect(n).toBe(12 + payload.length);
  }
  async reply(ms = 2000): Promise<{ request: number; flags: number; payload: Buffer } | 'eof'> {
    const head = Buffer.alloc(12);
    const end = Date.now() + ms;
    for (;;) {
      let got;
      try {
        got = this.sock.receive(head);
      } catch (err) {
        // The back-end closed with our message unread: the kernel resets the stream.
        if ((err as { code?: string }).code === 'ECONNRESET') return 'eof';
        throw err;
      }
      if (got !== null) {
        if (got.bytes === 0) return 'eof';
        const size = head.readUInt32LE(8);
        const payload = Buffer.alloc(size);
        if (size > 0) expect(this.sock.receive(payload)?.bytes).toBe(size);
        return { request: head.readUInt32LE(0), flags: head.readUInt32LE(4), payload };
      }
      if (Date.now() > end) throw new Error('no reply');
      await sleep(2);
    }
  }
  async call(request: number, payload?: Uint8Array, fds: PassableFd[] = [], flags = VERSION): Promise<Buffer> {
    this.send(request, payload, fds, flags);
    const r = await this.reply();
    if (r === 'eof') throw new Error('the back-end hung up');
    expect(r.request).toBe(request);
    expect(r.flags).toBe(0x5);
    return r.payload;
  }
  async ack(request: number, payload?: Uint8Array, fds: PassableFd[] = []): Promise<bigint> {
    return (await this.call(request, payload, fds, VERSION | FLAG_NEED_REPLY)).readBigUInt64LE(0);
  }
  close(): void {
    this.sock.close();
  }
}

describe('VhostUserBackend', () => {
  let dir: string;
  let sock: string;
  const open: { close(): void }[] = [];
  const track = <T extends { close(): void }>(x: T): T => {
    open.push(x);
    return x;
  };
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vu-backend-'));
    sock = path.join(dir, 'dev.sock');
  });
  afterEach(() => {
    for (const x of open.splice(0).reverse()) x.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const listen = (device: VhostUserDevice = testDevice(), options = {}): VhostUserBackend => track(VhostUserBackend.listen(sock, device, options));
  const disconnectOf = (b: VhostUserBackend): Promise<(Error & { code?: string; step?: string; path?: string }) | null> => new Promise((resolve) => b.once('disconnect', resolve));

  describe('front door', () => {
    test('the socket is created owner-only (0600) and close() removes it', () => {
      const b = listen();
      expect(fs.statSync(sock).mode & 0o777).toBe(0o600);
      expect(fs.statSync(sock).isSocket()).toBe(true);
      b.close();
      expect(fs.existsSync(sock)).toBe(false);
      b.close(); // idempotent
    });

    test('options.mode sets another mode', () => {
      listen(testDevice(), { mode: 0o660 });
      expect(fs.statSync(sock).mode & 0o777).toBe(0o660);
    });

    test('a live socket at the path is refused with EADDRINUSE and left alone', () => {
      const other = track(UnixServer.listen(sock));
      const err = thrown(() => VhostUserBackend.listen(sock, testDevice()));
      expect(err.code).toBe('EADDRINUSE');
      expect(err.path).toBe(sock);
      expect(err.message).toMatch(/another process is listening/);
      // The other server still accepts.
      track(UnixSocket.connect(sock));
      expect(other.accept()).not.toBeNull();
    });

    test('a stale socket file (its process died: connect is refused) is replaced', async () => {
      // A process that listened there and was killed: its socket file stays.
      const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(sock)}); setInterval(() => {}, 1000)`], { stdio: 'ignore' });
      await waitFor('the child to listen', () => fs.existsSync(sock));
      const died = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await died;
      expect(thrown(() => UnixSocket.connect(sock)).code).toBe('ECONNREFUSED');
      const b = listen();
      const fe = track(new RawFrontEnd(sock));
      await waitFor('connect', () => b.connected);
      expect((await fe.call(R.GET_FEATURES)).readBigUInt64LE(0) & (1n << 30n)).toBe(1n << 30n);
    });

    test('a file that is not a socket is refused with EADDRINUSE and not removed', () => {
      fs.writeFileSync(sock, 'data');
      expect(thrown(() => VhostUserBackend.listen(sock, testDevice())).code).toBe('EADDRINUSE');
      expect(fs.readFileSync(sock, 'utf8')).toBe('data');
    });

    test('a second front-end is accepted and closed while one is attached (refused event, counter); the first goes on', async () => {
      const b = listen();
      const first = track(new RawFrontEnd(sock));
      await waitFor('connect', () => b.connected);
      const refused = new Promise<Error & { code?: string }>((resolve) => b.once('refused', resolve));
      const second = track(new RawFrontEnd(sock));
      const err = await refused;
      expect(err.code).toBe('EBUSY');
      expect(b.stats.refusedConnections).toBe(1);
      expect(await second.reply()).toBe('eof');
      expect((await first.call(R.GET_QUEUE_NUM)).readBigUInt64LE(0)).toBe(2n);
    });

    test('allowReplace: a second front-end takes over, the first is dropped', async () => {
      const b = listen(testDevice(), { allowReplace: true });
      const first = track(new RawFrontEnd(sock));
      await waitFor('connect', () => b.stats.connections === 1);
      const dropped = disconnectOf(b);
      const second = track(new RawFrontEnd(sock));
      expect((await dropped)?.message).toMatch(/replaced by a new front-end/);
      expect(await first.reply()).toBe('eof');
      expect((await second.call(R.GET_QUEUE_NUM)).readBigUInt64LE(0)).toBe(2n);
    });
  });

  describe('messages', () => {
    test('features, protocol features, queue count, config; REPLY_ACK acks', async () => {
      const dev = testDevice();
      const b = listen(dev);
      const fe = track(new RawFrontEnd(sock));
      expect((await fe.call(R.GET_FEATURES)).readBigUInt64LE(0)).toBe(dev.features | (1n << 30n));
      const proto = (await fe.call(R.GET_PROTOCOL_FEATURES)).readBigUInt64LE(0);
      // MQ (2 queues), REPLY_ACK, CONFIG (readConfig), RESET_DEVICE
      expect(proto).toBe((1n << 0n) | (1n << 3n) | (1n << 9n) | (1n << 13n));
      fe.send(R.SET_PROTOCOL_FEATURES, encodeU64(proto));
      expect(await fe.ack(R.SET_OWNER)).toBe(0n);
      expect(await fe.ack(R.SET_FEATURES, encodeU64(dev.features | (1n << 30n)))).toBe(0n);
      expect(dev.acked).toBe(dev.features);
      expect(b.ackedFeatures).toBe(dev.features | (1n << 30n));
      expect(b.protocolFeatures).toBe(proto);
      expect((await fe.call(R.GET_QUEUE_NUM)).readBigUInt64LE(0)).toBe(2n);
      const cfg = await fe.call(R.GET_CONFIG, encodeConfig({ offset: 4, flags: 0, data: new Uint8Array(6) }));
      expect(cfg.subarray(12).toString()).toBe('456789');
      expect(cfg.readUInt32LE(0)).toBe(4);
    });

    test('a feature that was not offered is refused (NACK), the connection stays', async () => {
      const b = listen();
      const fe = track(new RawFrontEnd(sock));
      const nack = new Promise<Error & { code?: string }>((resolve) => b.once('nack', resolve));
      expect(await fe.ack(R.SET_FEATURES, encodeU64(1n << 5n))).toBe(1n);
      expect((await nack).code).toBe('ERR_VHOST_USER_UNSUPPORTED');
      expect(b.connected).toBe(true);
    });

    test('GET_CONFIG of a device without config space answers empty (QEMU\'s failure)', async () => {
      listen(testDevice({ readConfig: undefined }));
      const fe = track(new RawFrontEnd(sock));
      expect((await fe.call(R.GET_PROTOCOL_FEATURES)).readBigUInt64LE(0) & (1n << 9n)).toBe(0n);
      expect((await fe.call(R.GET_CONFIG, encodeConfig({ offset: 0, flags: 0, data: new Uint8Array(4) }))).length).toBe(0);
    });

    test('GET_VRING_BASE of a ring never started answers the base set', async () => {
      listen();
      const fe = track(new RawFrontEnd(sock));
      expect(await fe.ack(R.SET_VRING_BASE, encodeVringState({ index: 1, num: 77 }))).toBe(0n);
      const st = await fe.call(R.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
      expect([st.readUInt32LE(0), st.readUInt32LE(4)]).toEqual([1, 77]);
    });
  });

  describe('malformed input drops the connection with a typed error and leaves nothing behind', () => {
    const dropsWith = async (act: (fe: RawFrontEnd) => void, code: string, message: RegExp): Promise<void> => {
      const b = listen();
      const fdsBefore = openFdCount();
      const fe = new RawFrontEnd(sock);
      await waitFor('connect', () => b.connected);
      const gone = disconnectOf(b);
      act(fe);
      const reason = await gone;
      expect(reason).not.toBeNull();
      expect(reason!.code).toBe(code);
      expect(reason!.message).toMatch(message);
      expect(reason!.path).toBe(sock);
      expect(await fe.reply()).toBe('eof');
      fe.close();
      expect(b.connected).toBe(false);
      expect(openFdCount()).toBe(fdsBefore);
      expect(mappings()).toBe(0);
    };

    test('a garbage header (an HTTP request)', () =>
      dropsWith((fe) => fe.sock.send(Buffer.from('GET / HTTP/1.1\r\n\r\n')), 'ERR_VHOST_USER_PROTOCOL', /version \d in flags 0x[0-9a-f]+, expected 1/));

    test('a payload size past the protocol\'s bound', () =>
      dropsWith((fe) => fe.sock.send(Buffer.from([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0])), 'ERR_VHOST_USER_PROTOCOL', /payload size 65536 exceeds/));

    test('a payload of the wrong size for its message', () =>
      dropsWith((fe) => fe.send(R.SET_VRING_NUM, Buffer.alloc(4)), 'ERR_VHOST_USER_PROTOCOL', /SET_VRING_NUM: a vring state must be 8 bytes/));

    test('a ring index past the device\'s queues', () =>
      dropsWith((fe) => fe.send(R.SET_VRING_NUM, encodeVringState({ index: 2, num: 256 })), 'ERR_VHOST_USER_PROTOCOL', /ring 2 does not exist: test-device has 2 queue/));

    test('a ring size that is not a power of two', () =>
      dropsWith((fe) => fe.send(R.SET_VRING_NUM, encodeVringState({ index: 0, num: 100 })), 'ERR_VHOST_USER_PROTOCOL', /size 100 is not a power of two/));

    test('more fds than any message carries (9)', async () => {
      const efds = Array.from({ length: 9 }, () => EventFd.create());
      try {
        await dropsWith((fe) => fe.send(R.SET_VRING_CALL, vringFdPayload(0, true), efds), 'ERR_VHOST_USER_PROTOCOL', /more than 8 file descriptors/);
      } finally {
        for (const e of efds) e.close();
      }
    });

    test('an fd where the message takes none', async () => {
      const e = EventFd.create();
      try {
        await dropsWith((fe) => fe.send(R.SET_OWNER, Buffer.alloc(0), [e]), 'ERR_VHOST_USER_PROTOCOL', /SET_OWNER: came with 1 file descriptors, expected 0/);
      } finally {
        e.close();
      }
    });

    test('a message this back-end does not implement (GET_INFLIGHT_FD)', () =>
      dropsWith((fe) => fe.send(R.GET_INFLIGHT_FD, Buffer.alloc(20)), 'ERR_VHOST_USER_UNSUPPORTED', /GET_INFLIGHT_FD: not implemented/));

    test('a region fd that cannot be mapped (a socket)', async () => {
      const pipe = UnixSocket.pair(); // mmap of a socket: ENODEV
      try {
        const table = encodeMemTable([{ gpa: 0n, size: 0x10000n, userAddr: 0x7f0000000000n, mmapOffset: 0n }]);
        await dropsWith((fe) => fe.send(R.SET_MEM_TABLE, table, [pipe[0]]), 'ENODEV', /mmap/);
      } finally {
        pipe[0].close();
        pipe[1].close();
      }
    });
  });

  describe('memory and rings', () => {
    const SIZE = 0x40000n;
    const setUpMemory = async (fe: RawFrontEnd, mem: GuestMemory): Promise<void> => {
      const r = mem.regions[0];
      expect(await fe.ack(R.SET_MEM_TABLE, encodeMemTable([{ gpa: r.gpa, size: r.size, userAddr: r.hva, mmapOffset: r.offset ?? 0n }]), [r.fd!])).toBe(0n);
    };

    test('SET_MEM_TABLE maps the regions and closes their fds; a new table replaces the old mapping; disconnect unmaps', async () => {
      const b = listen();
      const fdsBefore = openFdCount();
      const mem = track(GuestMemory.create({ regions: [{ gpa: 0n, size: SIZE }], name: MEMFD }));
      const mem2 = track(GuestMemory.create({ regions: [{ gpa: 0n, size: SIZE }], name: MEMFD }));
      const own = mappings(); // the two memories' own mappings here
      const fe = track(new RawFrontEnd(sock));
      await setUpMemory(fe, mem);
      expect(mappings()).toBe(own + 1);
      await setUpMemory(fe, mem2);
      expect(mappings()).toBe(own + 1);
      const gone = disconnectOf(b);
      fe.close();
      expect(await gone).toBeNull();
      expect(mappings()).toBe(own);
      expect(openFdCount()).toBe(fdsBefore + 2); // the two memfds of this test's GuestMemory
    });

    test('a ring outside the shared memory breaks that queue: err eventfd signalled, queue-broken emitted, the connection stays', async () => {
      const dev = testDevice();
      const b = listen(dev);
      const mem = track(GuestMemory.create({ regions: [{ gpa: 0n, size: SIZE }], name: MEMFD }));
      const kick = track(EventFd.create());
      const err = track(EventFd.create());
      const fe = track(new RawFrontEnd(sock));
      await setUpMemory(fe, mem);
      const hva = mem.regions[0].hva;
      expect(await fe.ack(R.SET_VRING_NUM, encodeVringState({ index: 0, num: 256 }))).toBe(0n);
      expect(await fe.ack(R.SET_VRING_ADDR, encodeVringAddr({ index: 0, flags: 0, desc: hva + SIZE, avail: hva + SIZE + 4096n, used: hva + SIZE + 8192n, log: 0n }))).toBe(0n);
      expect(await fe.ack(R.SET_VRING_ERR, vringFdPayload(0, true), [err])).toBe(0n);
      const broken = new Promise<[number, Error & { code?: string }]>((resolve) => b.once('queue-broken', (i: number, e: Error) => resolve([i, e])));
      expect(await fe.ack(R.SET_VRING_KICK, vringFdPayload(0, true), [kick])).toBe(0n);
      const [index, e] = await broken;
      expect(index).toBe(0);
      expect(e.code).toBe('ERR_VHOST_GUEST_ADDRESS');
      expect(err.read()).toBe(1n);
      expect(b.stats.brokenQueues).toBe(1);
      expect(dev.started).toEqual([]);
      expect(b.connected).toBe(true);
      expect((await fe.call(R.GET_QUEUE_NUM)).readBigUInt64LE(0)).toBe(2n);
    });
  });
});
