// VirtioBlkGuest against a back-end that fails or lies (test/support/
// fake-blk-backend.py, Python with recv_fds and mmap: it maps the guest memory
// it is sent and writes the used ring itself). Statuses become coded errors;
// a used entry naming a descriptor that is not in flight breaks the device
// ('error', closed, pending requests rejected) and never the process.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VirtioBlkGuest } from '../../../lib/guest/blk';
import { encodeBlkHeader, parseVirtioBlkConfig, VirtioBlkType } from '../../../lib/virtio/blk';
import { openFdCount, thrown, waitFor, type KernelError } from '../../support/helpers';

const FAKE = path.join(__dirname, '..', '..', 'support', 'fake-blk-backend.py');
const hasPython = spawnSync('python3', ['-c', 'import socket; socket.recv_fds'], { stdio: 'ignore' }).status === 0;
const required = process.env.CI === 'true';
const describePython = hasPython || required ? describe : describe.skip;

describe('virtio-blk structures', () => {
  test('virtio_blk_outhdr is le32 type, le32 ioprio, le64 sector', () => {
    const b = Buffer.alloc(16, 0xff);
    encodeBlkHeader(b, VirtioBlkType.OUT, 0x1122334455n);
    expect([b.readUInt32LE(0), b.readUInt32LE(4), b.readBigUInt64LE(8)]).toEqual([1, 0, 0x1122334455n]);
    expect(thrown(() => encodeBlkHeader(Buffer.alloc(8), 0, 0n)).code).toBe('ERR_VHOST_INVALID_ARG');
  });

  test('config: capacity at 0, size_max at 8, seg_max at 12, blk_size at 20', () => {
    const c = Buffer.alloc(24);
    c.writeBigUInt64LE(123n, 0);
    c.writeUInt32LE(4096, 8);
    c.writeUInt32LE(126, 12);
    c.writeUInt32LE(512, 20);
    expect(parseVirtioBlkConfig(c)).toEqual({ capacity: 123n, sizeMax: 4096, segMax: 126, blkSize: 512 });
    expect(thrown(() => parseVirtioBlkConfig(Buffer.alloc(20))).code).toBe('ERR_VHOST_INVALID_ARG');
  });
});

describePython(`VirtioBlkGuest against a failing or lying back-end${hasPython ? '' : ' [skipped: python3 with socket.recv_fds missing]'}`, () => {
  let dir: string;
  let child: ChildProcess | null = null;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blk-fake-'));
  });
  afterEach(() => {
    child?.kill('SIGKILL');
    child = null;
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  async function start(mode: string): Promise<string> {
    const sock = path.join(dir, `${mode}.sock`);
    child = spawn('python3', [FAKE, sock, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child!.once('error', reject);
      child!.once('exit', (code) => reject(new Error(`fake back-end exited ${code}`)));
      child!.stdout!.once('data', () => resolve());
    });
    return sock;
  }

  test.each([
    ['ioerr', 'EIO', /VIRTIO_BLK_S_IOERR/],
    ['unsupp', 'ERR_VHOST_UNSUPPORTED', /VIRTIO_BLK_S_UNSUPP/],
  ])('status %s: the request fails with %s naming the status and sector; the guest stays usable', async (mode, code, message) => {
    const g = VirtioBlkGuest.connect(await start(mode));
    try {
      expect(g.capacity).toBe(2048n);
      const err = await g.read(16, 4096).then(() => null, (e: KernelError) => e);
      expect(err?.code).toBe(code);
      expect(err?.message).toMatch(message);
      expect(err?.message).toMatch(/sector 16/);
      expect(g.closed).toBe(false);
      expect(g.inFlight).toBe(0);
    } finally {
      g.close();
    }
  });

  test('a used entry naming a descriptor not in flight: \'error\' (ERR_VHOST_DEVICE), the guest closed, nothing leaked', async () => {
    const sock = await start('bogus-head');
    const before = openFdCount();
    const g = VirtioBlkGuest.connect(sock);
    const errors: KernelError[] = [];
    g.on('error', (e: KernelError) => errors.push(e));
    const pending = g.read(0, 512).then(() => null, (e: KernelError) => e);
    await waitFor('the ring error', () => errors.length === 1);
    expect(errors[0].code).toBe('ERR_VHOST_DEVICE');
    expect(errors[0].message).toMatch(/used id 1000 is not a buffer in flight/);
    expect(g.closed).toBe(true);
    expect((await pending)?.code).toBe('ERR_VHOST_DEVICE');
    expect(openFdCount()).toBe(before);
  });
});
