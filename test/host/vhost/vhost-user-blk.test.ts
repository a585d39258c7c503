// The vhost-user front-end and the userspace virtio-blk driver against
// qemu-storage-daemon (a back-end nobody here wrote), on this host: what the
// driver writes is in the image file as fs sees it and the other way round,
// GET_CONFIG gives the image's capacity, the daemon dying mid-I/O ends in
// 'disconnect' (no hang, no crash), and failures leave no fd or mapping.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VirtioBlkGuest } from '../../../lib/guest/blk';
import { VhostUserBuilder } from '../../../lib/vhost/user/builder';
import { VhostUser } from '../../../lib/vhost/user/vhost-user';
import { EventFd } from '../../../lib/core/eventfd';
import { GuestMemory } from '../../../lib/core/memory';
import { openFdCount, thrown, waitFor, type KernelError } from '../../support/helpers';
import { describeWithQsd, mappingsOf, startQsd, type Qsd } from '../../support/qsd';

const IMAGE_SIZE = 16 << 20;
const MEMFD = 'linux-vhost-blk';

describeWithQsd('vhost-user-blk through qemu-storage-daemon', () => {
  let dir: string;
  let image: string;
  let sock: string;
  let qsd: Qsd | null = null;
  const guests: VirtioBlkGuest[] = [];

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-user-blk-'));
    sock = path.join(dir, 'blk.sock');
  });
  beforeEach(async () => {
    image = path.join(dir, 'disk.img');
    fs.writeFileSync(image, Buffer.alloc(0));
    fs.truncateSync(image, IMAGE_SIZE);
    qsd = await startQsd(image, sock);
  });
  afterEach(async () => {
    for (const g of guests.splice(0)) g.close();
    await qsd?.stop();
    qsd = null;
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const connect = (options = {}): VirtioBlkGuest => {
    const g = VirtioBlkGuest.connect(sock, options);
    guests.push(g);
    return g;
  };
  const fileBytes = (offset: number, length: number): Buffer => {
    const fd = fs.openSync(image, 'r');
    try {
      const b = Buffer.alloc(length);
      fs.readSync(fd, b, 0, length, offset);
      return b;
    } finally {
      fs.closeSync(fd);
    }
  };

  test('GET_CONFIG gives the capacity of the image in 512-byte sectors', () => {
    const g = connect();
    expect(g.capacity).toBe(BigInt(IMAGE_SIZE / 512));
    expect(g.size).toBe(BigInt(IMAGE_SIZE));
    // The protocol features QEMU 7.2's daemon and this front-end share.
    expect(g.device.hasProtocolFeature(3 /* REPLY_ACK */)).toBe(true);
    expect(g.device.hasProtocolFeature(9 /* CONFIG */)).toBe(true);
  });

  test('writes land in the image file at the right offsets; flush completes', async () => {
    const g = connect();
    const writes = [
      { sector: 0, data: randomBytes(4096) },
      { sector: 1, data: randomBytes(512) }, // overlaps the first: written after it
      { sector: 1000, data: randomBytes(64 * 1024) },
      { sector: IMAGE_SIZE / 512 - 8, data: randomBytes(4096) }, // the last 4 KiB
    ];
    for (const w of writes) await g.write(w.sector, w.data);
    await g.flush();
    const expected = Buffer.from(writes[0].data);
    writes[1].data.copy(expected, 512);
    expect(fileBytes(0, 4096).equals(expected)).toBe(true);
    expect(fileBytes(1000 * 512, 64 * 1024).equals(writes[2].data)).toBe(true);
    expect(fileBytes(IMAGE_SIZE - 4096, 4096).equals(writes[3].data)).toBe(true);
  });

  test('reads return what fs wrote into the image, including transfers split across requests', async () => {
    const pattern = randomBytes(1 << 20);
    const fd = fs.openSync(image, 'r+');
    fs.writeSync(fd, pattern, 0, pattern.length, 3 << 20);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    const g = connect({ maxTransfer: 64 * 1024 });
    const all = await g.read((3 << 20) / 512, 1 << 20); // 16 requests of 64 KiB
    expect(all.equals(pattern)).toBe(true);
    const some = await g.read((3 << 20) / 512 + 7, 4096);
    expect(some.equals(pattern.subarray(7 * 512, 7 * 512 + 4096))).toBe(true);
  });

  test('many concurrent requests (more than the ring holds) all complete with the right bytes', async () => {
    const g = connect({ queueSize: 16 }); // 5 requests in flight at most
    const blocks = Array.from({ length: 200 }, (_, i) => ({ sector: i * 16, data: randomBytes(4096) }));
    await Promise.all(blocks.map((b) => g.write(b.sector, b.data)));
    await g.flush();
    const back = await Promise.all(blocks.map((b) => g.read(b.sector, 4096)));
    blocks.forEach((b, i) => expect(back[i].equals(b.data)).toBe(true));
    for (const b of blocks.slice(0, 20)) expect(fileBytes(b.sector * 512, 4096).equals(b.data)).toBe(true);
    expect(g.inFlight).toBe(0);
  });

  test('out-of-range and misaligned requests are refused before reaching the ring', async () => {
    const g = connect();
    expect(thrown(() => g.read(BigInt(IMAGE_SIZE / 512), 512)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => g.read(0, 100)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    await expect(g.write(IMAGE_SIZE / 512 - 1, Buffer.alloc(1024))).rejects.toMatchObject({ code: 'ERR_VHOST_OUT_OF_RANGE' });
  });

  test('the daemon killed mid-I/O: \'disconnect\', every pending request rejected, no hang, later calls fail clearly', async () => {
    const g = connect();
    const reasons: KernelError[] = [];
    g.on('disconnect', (r: KernelError) => reasons.push(r));
    const reads: Promise<Buffer>[] = [];
    for (let i = 0; i < 300; i++) reads.push(g.read((i * 8) % 30000, 4096));
    const settled = Promise.allSettled(reads);
    await qsd!.stop('SIGKILL');
    const results = await settled; // resolves: nothing hangs
    await waitFor('disconnect', () => reasons.length === 1);
    expect(reasons[0].code).toBe('ECONNRESET');
    const rejected = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(rejected.length).toBeGreaterThan(0); // the daemon cannot have served all 300 in time
    for (const r of rejected) expect((r.reason as KernelError).code).toBe('ECONNRESET');
    expect(thrown(() => g.read(0, 512)).code).toBe('ERR_VHOST_USER_DISCONNECTED');
    expect(g.device.connected).toBe(false);
  });

  test('reconnect() after the daemon was killed mid-I/O and restarted: I/O resumes and lands in the image', async () => {
    const g = connect({ queueSize: 16 });
    const gone = new Promise<KernelError>((resolve) => g.once('disconnect', resolve));
    const writes = Array.from({ length: 50 }, (_, i) => g.write(i * 8, Buffer.alloc(4096, i)));
    const settled = Promise.allSettled(writes);
    await qsd!.stop('SIGKILL');
    await gone;
    await settled;
    expect(thrown(() => g.reconnect()).code).toBe('ECONNREFUSED'); // the dead daemon's socket file, nobody listening: still disconnected
    qsd = await startQsd(image, sock);
    g.reconnect();
    expect(thrown(() => g.reconnect()).code).toBe('ERR_VHOST_INVALID_STATE');
    const data = randomBytes(64 * 1024);
    await Promise.all(Array.from({ length: 20 }, (_, i) => g.write(2048 + i * 128, data)));
    await g.flush();
    for (let i = 0; i < 20; i++) expect(fileBytes((2048 + i * 128) * 512, data.length).equals(data)).toBe(true);
    expect((await g.read(2048, 4096)).equals(data.subarray(0, 4096))).toBe(true);
  });

  test('SET_LOG_BASE with LOG_SHMFD: under VHOST_F_LOG_ALL the daemon marks the pages it wrote in a log shared by memfd', async () => {
    const g = connect();
    const log = GuestMemory.create({ regions: [{ gpa: 0, size: 4096 }], name: 'blk-dirty-log' });
    try {
      const bits = log.view(0, 4096); // the daemon's writes show here: the same memfd pages
      g.device.setLogBase({ hva: log.regions[0].hva, size: 4096n, fd: log.regions[0].fd, offset: 0n });
      await g.read(0, 4096);
      expect(bits.some((b) => b !== 0)).toBe(false); // not logging yet
      g.device.setFeatures(g.features | (1n << 26n)); // VHOST_F_LOG_ALL, allowed while running
      await g.read(0, 4096);
      const pages: number[] = [];
      bits.forEach((b, i) => {
        for (let k = 0; k < 8; k++) if (b & (1 << k)) pages.push(i * 8 + k);
      });
      // The first request slot sits at guest page 1 (after the ring's page 0): its status byte and
      // 4 KiB of data at offset 512 span pages 1 and 2; page 0 holds the used ring.
      expect(pages).toEqual(expect.arrayContaining([1, 2]));
      for (const p of pages) expect(p).toBeLessThan(2048); // inside the guest memory (under 8 MiB), nowhere else
    } finally {
      g.close();
      log.close();
    }
  });

  test('close() releases every fd and mapping; the daemon takes a new front-end afterwards', async () => {
    const fds = openFdCount();
    const g = VirtioBlkGuest.connect(sock);
    expect(mappingsOf(`memfd:${MEMFD}`).length).toBeGreaterThan(0);
    await g.write(0, Buffer.alloc(512, 1));
    g.close();
    g.close();
    expect(openFdCount()).toBe(fds);
    expect(mappingsOf(`memfd:${MEMFD}`)).toEqual([]);
    expect(thrown(() => g.read(0, 512)).code).toBe('ERR_VHOST_CLOSED');
    const again = connect();
    expect((await again.read(0, 512)).equals(Buffer.alloc(512, 1))).toBe(true);
  });

  test('bad input leaves no fd, mapping or socket: a path that is no socket, nothing there, bad options, memory without fd', () => {
    const fds = openFdCount();
    expect(thrown(() => VirtioBlkGuest.connect(image)).code).toBe('ECONNREFUSED');
    expect(thrown(() => VirtioBlkGuest.connect(path.join(dir, 'nothing.sock'))).code).toBe('ENOENT');
    expect(thrown(() => VirtioBlkGuest.connect(sock, { queueSize: 3 })).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => VirtioBlkGuest.connect(sock, { maxTransfer: 1000 })).code).toBe('ERR_VHOST_INVALID_ARG');
    const dev = VhostUser.connect(sock);
    const anon = GuestMemory.create({ regions: [{ gpa: 0, size: 1 << 16 }], backing: 'anonymous' });
    const kick = EventFd.create();
    // The builder refuses it before the first message; the low-level call names the message.
    const queue = { size: 8, desc: 0, avail: 0x100, used: 0x200, kick, call: kick };
    const planned = thrown(() => new VhostUserBuilder(dev, { queues: 1 }).memory(anon).features(1n << 32n).queue(0, queue).start());
    expect({ code: planned.code, argument: (planned as { argument?: string }).argument }).toEqual({ code: 'ERR_VHOST_INVALID_ARG', argument: 'memory.regions[0].fd' });
    const err = thrown(() => dev.setMemTable(anon));
    expect(err.code).toBe('ERR_VHOST_USER_NO_FD');
    dev.close();
    anon.close();
    kick.close();
    expect(openFdCount()).toBe(fds);
    expect(mappingsOf(`memfd:${MEMFD}`)).toEqual([]);
  });

  test.each([
    ['speaks garbage', 'garbage', 'ERR_VHOST_USER_PROTOCOL'],
    ['answers GET_CONFIG with a failure (after the guest memory exists)', 'empty-config', 'ERR_VHOST_USER_NACK'],
  ])('a back-end that %s: a coded error, no fd or mapping left', async (_, mode, code) => {
    const fakeSock = path.join(dir, `fake-${mode}.sock`);
    const fake = spawn(process.execPath, [path.join(__dirname, '..', '..', 'support', 'fake-vhost-user.js'), fakeSock, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve) => fake.stdout.once('data', () => resolve()));
      const fds = openFdCount();
      expect(thrown(() => VirtioBlkGuest.connect(fakeSock, { timeoutMs: 2000 })).code).toBe(code);
      expect(openFdCount()).toBe(fds);
      expect(mappingsOf(`memfd:${MEMFD}`)).toEqual([]);
    } finally {
      fake.kill('SIGKILL');
    }
  });

  test('reconnect() to a restarted daemon restores the saved ring base (GET_VRING_BASE reads it back)', async () => {
    const dev = VhostUser.connect(sock);
    const mem = GuestMemory.create({ regions: [{ gpa: 0, size: 1 << 16 }] });
    const kick = EventFd.create();
    const call = EventFd.create();
    try {
      new VhostUserBuilder(dev, { queues: 1 }).memory(mem).features((1n << 32n) & dev.offeredFeatures).queue(0, { size: 16, desc: 0, avail: 0x1000, used: 0x2000, kick, call, base: 9 }).start();
      const gone = new Promise<KernelError>((resolve) => dev.once('disconnect', resolve));
      await qsd!.stop('SIGKILL');
      expect((await gone).code).toBe('ECONNRESET');
      qsd = await startQsd(image, sock);
      dev.reconnect();
      expect(dev.getVringBase(0)).toBe(9);
      dev.reconnect({ bases: { 0: 4 } }); // and an explicit one
      expect(dev.getVringBase(0)).toBe(4);
    } finally {
      dev.close();
      kick.close();
      call.close();
      mem.close();
    }
  });
});
