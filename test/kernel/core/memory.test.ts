// GuestMemory against the real kernel: memfd sizes and seals read back, shared
// pages seen through a second mapping, /proc/self/maps agreeing with hva,
// detach on close, cleanup after a failure midway, fd and mapping leaks,
// inheritance, and the Mapping lifetime under garbage collection.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { constants as bufferConstants } from 'node:buffer';
import { GuestMemory, memfdSeals } from '../../../lib/core/memory';
import { native, type OwnedFd } from '../../../lib/core/native';
import { closeAfterEach, describeKernel, fdFlags, O_CLOEXEC, openFdCount, thrown } from '../../support/helpers';

const ROOT = path.resolve(__dirname, '../../..');
const MiB = 1n << 20n;
const GiB = 1n << 30n;
let serial = 0;
const uniqueName = (): string => `lvtest-${process.pid}-${++serial}`;

/** Lines of /proc/self/maps that mention `name`. */
const mapsLines = (name: string): string[] =>
  fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(name));

/** A second, independent fd for the same file (through /proc), owned by an OwnedFd. */
const reopen = (fd: number): OwnedFd => native.openPath(`/proc/self/fd/${fd}`);

describeKernel('GuestMemory (memfd, mmap)', [], () => {
  const track = closeAfterEach();
  const make = (opts: Parameters<typeof GuestMemory.create>[0]): GuestMemory => track(GuestMemory.create(opts));

  test('one memfd per region, sized as asked, O_CLOEXEC, offset 0', () => {
    const name = uniqueName();
    const mem = make({ name, regions: [{ gpa: 0n, size: 2n * MiB }, { gpa: 0x1_0000_0000n, size: 64 * 4096 }] });
    const r = mem.regions;
    expect(r.map((x) => [x.gpa, x.size, x.offset])).toEqual([
      [0n, 2n * MiB, 0n],
      [0x1_0000_0000n, 262144n, 0n],
    ]);
    expect(r[0].fd).not.toBe(r[1].fd);
    r.forEach((x, i) => {
      expect(fs.readlinkSync(`/proc/self/fd/${x.fd}`)).toBe(`/memfd:${name}-${i} (deleted)`);
      expect(BigInt(fs.fstatSync(x.fd).size)).toBe(x.size);
      expect(fdFlags(x.fd) & O_CLOEXEC).toBe(O_CLOEXEC);
    });
  });

  test('hva is where the kernel mapped the memfd, shared and read-write (/proc/self/maps)', () => {
    const name = uniqueName();
    const mem = make({ name, regions: [{ gpa: 0x8000n, size: 16n * 4096n }] });
    const [line] = mapsLines(`memfd:${name}-0`);
    const [range, perms] = line.split(/\s+/);
    const [start, end] = range.split('-').map((h) => BigInt(`0x${h}`));
    expect(start).toBe(mem.regions[0].hva);
    expect(end - start).toBe(16n * 4096n);
    expect(perms).toBe('rw-s');
    expect(mem.translate(0x8000n)).toBe(start);
    expect(mem.translate(0x8000n + 0xffffn, 1)).toBe(end - 1n);
  });

  test('bytes written through a view are in the memfd: a second mmap and pread see them', () => {
    const mem = make({ regions: [{ gpa: 0n, size: MiB }, { gpa: 4n * MiB, size: MiB }] });
    const payload = Buffer.from('vhost shares these pages');
    mem.view(4n * MiB + 0x1234n, payload.length).set(payload);
    const { fd } = mem.regions[1];
    const other = reopen(fd);
    const second = native.mmapShared(other, MiB, 0n, 0);
    try {
      expect(second.address).not.toBe(mem.regions[1].hva);
      expect(Buffer.from(second.buffer, 0x1234, payload.length).equals(payload)).toBe(true);
      // and back: a write through the second mapping shows in the first view
      new Uint8Array(second.buffer)[0x10] = 0xab;
      expect(mem.view(4n * MiB + 0x10n, 1)[0]).toBe(0xab);
      const read = Buffer.alloc(payload.length);
      expect(fs.readSync(fd, read, 0, read.length, 0x1234)).toBe(payload.length);
      expect(read.equals(payload)).toBe(true);
      // region 0 is a different memfd: untouched
      expect(mem.view(0x1234n, payload.length).every((b) => b === 0)).toBe(true);
    } finally {
      second.unmap();
      other.close();
    }
  });

  test('views are zero-copy windows at the right offsets, sharing one buffer per region', () => {
    const mem = make({ regions: [{ gpa: 0x10000n, size: 8192n }] });
    const a = mem.view(0x10000n, 8192);
    const b = mem.view(0x11000n, 16);
    expect(b.buffer).toBe(a.buffer);
    expect(b.byteOffset).toBe(4096);
    b[3] = 0x5a;
    expect(a[4096 + 3]).toBe(0x5a);
    expect(mem.view(0x11fffn, 1).length).toBe(1);
    expect(mem.view(0x10000, 0).length).toBe(0);
  });

  test('view and translate refuse ranges outside one region (ERR_VHOST_OUT_OF_RANGE)', () => {
    const mem = make({ regions: [{ gpa: 0n, size: 8192n }, { gpa: 8192n, size: 4096n }, { gpa: 0x10000n, size: 4096n }] });
    const crossing = thrown(() => mem.view(4096n, 8192));
    expect(crossing.code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(crossing.message).toMatch(/length 8192 from gpa 0x1000 crosses the end of its region at 0x2000/);
    const hole = thrown(() => mem.translate(0x3000n));
    expect(hole.code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(hole.message).toMatch(/gpa 0x3000 is not inside any region/);
    expect(thrown(() => mem.view(0x11000n, 0)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => mem.translate(0x10000n, 4097)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => mem.translate(-1)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(thrown(() => mem.view('0' as unknown as bigint, 1)).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(mem.translate(8192n + 4095n)).toBe(mem.regions[1].hva + 4095n);
  });

  test('close() unmaps every region, detaches every view and closes every memfd; idempotent', () => {
    const name = uniqueName();
    const fdsBefore = openFdCount();
    const mem = GuestMemory.create({ name, regions: [{ gpa: 0n, size: MiB }, { gpa: MiB, size: MiB }] });
    const fds = mem.regions.map((r) => r.fd);
    const v0 = mem.view(0x100n, 64);
    const v1 = mem.view(MiB, 4096);
    v0[0] = 1;
    expect(mapsLines(name)).toHaveLength(2);
    expect(openFdCount()).toBe(fdsBefore + 2);
    mem.close();
    expect(mem.closed).toBe(true);
    expect([v0.byteLength, v1.byteLength, v0.length, v1.buffer.byteLength]).toEqual([0, 0, 0, 0]);
    expect(v0[0]).toBeUndefined(); // reading a detached view is harmless
    v1[0] = 7; // so is writing: it goes nowhere
    expect(mapsLines(name)).toEqual([]);
    expect(openFdCount()).toBe(fdsBefore);
    for (const fd of fds) expect(fs.existsSync(`/proc/self/fd/${fd}`)).toBe(false);
    mem.close();
    mem[Symbol.dispose]();
    for (const use of [() => mem.view(0n, 1), () => mem.translate(0n), () => mem.regions]) {
      const err = thrown(use);
      expect(err.code).toBe('ERR_VHOST_CLOSED');
      expect(err.message).toMatch(/GuestMemory .* is closed/);
    }
  });

  test('seal: F_SEAL_SHRINK | F_SEAL_GROW read back, and the kernel then refuses resizing (EPERM)', () => {
    const mem = make({ seal: true, regions: [{ gpa: 0n, size: MiB }] });
    const other = reopen(mem.regions[0].fd);
    try {
      expect(native.getSeals(other)).toBe(memfdSeals.F_SEAL_SHRINK | memfdSeals.F_SEAL_GROW);
      const err = thrown(() => native.ftruncate(other, 2n * MiB));
      expect(err.code).toBe('EPERM');
      expect(err.syscall).toBe('ftruncate');
      expect(BigInt(fs.fstatSync(other.fd).size)).toBe(MiB);
      mem.view(MiB - 1n, 1)[0] = 1; // writes are still allowed
    } finally {
      other.close();
    }
  });

  test('without seal the memfd does not allow sealing (F_SEAL_SEAL set; F_ADD_SEALS → EPERM)', () => {
    const mem = make({ regions: [{ gpa: 0n, size: MiB }] });
    const other = reopen(mem.regions[0].fd);
    try {
      expect(native.getSeals(other)).toBe(memfdSeals.F_SEAL_SEAL);
      const err = thrown(() => native.addSeals(other, memfdSeals.F_SEAL_GROW));
      expect(err.code).toBe('EPERM');
      expect(err.syscall).toBe('fcntl(F_ADD_SEALS)');
      expect(err.path).toMatch(/^\/proc\/self\/fd\//);
    } finally {
      other.close();
    }
  });

  test("backing 'anonymous': MAP_SHARED anonymous memory, fd -1, usable views", () => {
    const before = openFdCount();
    const mem = make({ backing: 'anonymous', regions: [{ gpa: 0n, size: MiB }, { gpa: 2n * MiB, size: MiB }] });
    expect(openFdCount()).toBe(before);
    expect(mem.regions.map((r) => [r.fd, r.offset])).toEqual([
      [-1, 0n],
      [-1, 0n],
    ]);
    const line = fs
      .readFileSync('/proc/self/maps', 'utf8')
      .split('\n')
      .find((l) => l.startsWith(`${mem.regions[1].hva.toString(16)}-`));
    expect(line).toMatch(/ rw-s .*\/dev\/zero \(deleted\)$/);
    mem.view(2n * MiB, 3).set([1, 2, 3]);
    expect([...mem.view(2n * MiB, 3)]).toEqual([1, 2, 3]);
  });

  test('a failure midway (second region cannot be mapped: ENOMEM) closes and unmaps everything made so far', () => {
    const name = uniqueName();
    const fds = openFdCount();
    // 2^50 bytes fit in a sparse memfd but not in the 47-bit user address space.
    const err = thrown(() => GuestMemory.create({ name, regions: [{ gpa: 0n, size: MiB }, { gpa: 1n << 50n, size: 1n << 50n }] }));
    expect(err.code).toBe('ENOMEM');
    expect(err.syscall).toBe('mmap');
    expect(err.path).toBe(`memfd:${name}-1`);
    expect(openFdCount()).toBe(fds);
    expect(mapsLines(name)).toEqual([]);
  });

  test('1000 create/write/close cycles keep the fd count flat and leave no mapping behind', () => {
    // (The total count of mappings is not flat: the JS heap maps memory as it grows.)
    const name = uniqueName();
    const fds = openFdCount();
    for (let i = 0; i < 1000; i++) {
      const mem = GuestMemory.create({ name, seal: i % 2 === 0, regions: [{ gpa: 0n, size: 4096 }, { gpa: 0x10000n, size: 8192 }] });
      mem.view(0x10000n, 1)[0] = i & 0xff;
      mem.close();
    }
    expect(openFdCount()).toBe(fds);
    expect(mapsLines(name)).toEqual([]);
  }, 60_000); // slow under TCG

  test('a child process inherits none of its memfds', () => {
    const name = uniqueName();
    make({ name, regions: [{ gpa: 0n, size: MiB }, { gpa: MiB, size: MiB }] });
    const out = spawnSync('/bin/sh', ['-c', 'ls -l /proc/$$/fd'], { encoding: 'utf8' });
    expect(out.status).toBe(0);
    expect(out.stdout).toMatch(/ 0 -> /);
    expect(out.stdout).not.toMatch(/memfd:/);
  });

  test('a region larger than the largest ArrayBuffer is mapped and translated; view() says why it cannot', () => {
    const mem = make({ regions: [{ gpa: 0n, size: 5n * GiB }] });
    const { fd, hva } = mem.regions[0];
    expect(BigInt(fs.fstatSync(fd).size)).toBe(5n * GiB);
    expect(mem.translate(5n * GiB - 1n)).toBe(hva + 5n * GiB - 1n);
    if (5n * GiB > BigInt(bufferConstants.MAX_LENGTH)) {
      const err = thrown(() => mem.view(0n, 16));
      expect(err.code).toBe('ERR_VHOST_OUT_OF_RANGE');
      expect(err.message).toMatch(/larger than the largest ArrayBuffer this runtime allows/);
    } else {
      mem.view(5n * GiB - 1n, 1)[0] = 1;
    }
  });

  describe('native Mapping', () => {
    test('cannot be constructed from JS', () => {
      const m = native.mmapShared(null, 4096n, 0n, 0);
      try {
        const Ctor = Object.getPrototypeOf(m).constructor as new (...args: unknown[]) => unknown;
        for (const args of [[], [1], [{}], [m]]) expect(thrown(() => new Ctor(...args)).code).toBe('ERR_VHOST_ILLEGAL_CONSTRUCTOR');
      } finally {
        m.unmap();
      }
    });

    test('unmap() detaches the one buffer, then munmaps; idempotent', () => {
      const m = native.mmapShared(null, 8192n, 0n, 0);
      const hex = m.address.toString(16);
      const buf = m.buffer;
      expect(m.buffer).toBe(buf);
      expect(buf.byteLength).toBe(8192);
      expect(m.size).toBe(8192n);
      m.unmap();
      m.unmap();
      expect(m.unmapped).toBe(true);
      expect(buf.byteLength).toBe(0);
      expect(m.buffer.byteLength).toBe(0);
      expect(fs.readFileSync('/proc/self/maps', 'utf8')).not.toMatch(new RegExp(`^${hex}-`, 'm'));
    });

    test('refuses MAP_PRIVATE / MAP_FIXED in extraFlags before mmap', () => {
      for (const flags of [0x02, 0x10]) {
        const err = thrown(() => native.mmapShared(null, 4096n, 0n, flags));
        expect(err.code).toBe('ERR_VHOST_INVALID_ARG');
        expect(err.message).toMatch(/extraFlags must not contain/);
      }
    });

    test('mmap errors come from the kernel with syscall and path (size 0 → EINVAL)', () => {
      const fd = native.memfdCreate('lvtest-einval', 0);
      try {
        const err = thrown(() => native.mmapShared(fd, 0n, 0n, 0));
        expect(err.code).toBe('EINVAL');
        expect(err.syscall).toBe('mmap');
        expect(err.path).toBe('memfd:lvtest-einval');
        expect(thrown(() => native.memfdCreate('x', 0x1000)).code).toBe('EINVAL'); // unknown MFD flag
      } finally {
        fd.close();
      }
    });

    test('a mapping collected while a view lives stays mapped until the view is collected too (--expose-gc child)', () => {
      const script = `
const fs = require('fs');
const b = require(${JSON.stringify(path.join(ROOT, 'node_modules/node-gyp-build'))})(${JSON.stringify(ROOT)});
const mapped = (a) => fs.readFileSync('/proc/self/maps', 'utf8').includes(a.toString(16) + '-');
const settle = async () => { for (let i = 0; i < 6; i++) { global.gc(); await new Promise((r) => setImmediate(r)); } };
(async () => {
  let m = b.mmapShared(null, 1n << 20n, 0n, 0);
  const address = m.address;
  let view = new Uint8Array(m.buffer, 8192, 4096);
  view.fill(0x5a);
  let probe = new WeakRef(m);
  m = null;
  await settle();
  if (probe.deref() !== undefined) throw new Error('mapping object was not collected');
  if (!mapped(address)) throw new Error('unmapped while a view is alive');
  for (let i = 0; i < view.length; i++) if (view[i] !== 0x5a) throw new Error('view lost its bytes');
  view.fill(0xa5); // writing must not fault
  view = null;
  await settle();
  if (mapped(address)) throw new Error('still mapped after the mapping and its views were collected');
  let lone = b.mmapShared(null, 1n << 20n, 0n, 0);
  const loneAddress = lone.address;
  lone = null;
  await settle();
  if (mapped(loneAddress)) throw new Error('a never-viewed mapping leaked after GC');
  console.log('ok');
})().catch((e) => { console.error(e.message); process.exit(1); });
`;
      const out = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 30_000 });
      expect(out.stderr).toBe('');
      expect(out.signal).toBeNull();
      expect(out.status).toBe(0);
      expect(out.stdout).toBe('ok\n');
    }, 60_000); // slow under TCG
  });

  describe('hugetlb', () => {
    const nrPath = '/proc/sys/vm/nr_hugepages';
    const hugeFree = (): number => Number(/^HugePages_Free:\s+(\d+)/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))![1]);
    const hugeSize = (): bigint => BigInt(/^Hugepagesize:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024n;
    // Reserving huge pages changes a system-wide setting: only inside the test VM.
    const canReserve = ((): boolean => {
      if (process.env.LINUX_VHOST_IN_VM !== '1') return false;
      try {
        fs.accessSync(nrPath, fs.constants.W_OK);
        return process.getuid?.() === 0;
      } catch {
        return false;
      }
    })();
    const overcommit = (): number => Number(fs.readFileSync('/proc/sys/vm/nr_overcommit_hugepages', 'utf8'));
    const withNoFreePages = canReserve || (hugeFree() === 0 && overcommit() === 0) ? test : test.skip;
    const asRoot = canReserve ? test : test.skip;
    const why = canReserve ? '' : ' [skipped outside the test VM: reserving huge pages is system-wide]';
    let saved: string | undefined;
    const setHugePages = (n: number): void => {
      saved ??= fs.readFileSync(nrPath, 'utf8');
      fs.writeFileSync(nrPath, String(n));
    };
    afterAll(() => {
      if (saved !== undefined) fs.writeFileSync(nrPath, saved);
    });

    withNoFreePages('with no free huge pages, mmap fails with ENOMEM and nothing leaks', () => {
      if (canReserve) setHugePages(0);
      expect(hugeFree()).toBe(0);
      const fds = openFdCount();
      for (const backing of ['memfd', 'anonymous'] as const) {
        const err = thrown(() => GuestMemory.create({ backing, hugetlb: true, hugePageSize: hugeSize(), regions: [{ gpa: 0n, size: hugeSize() }] }));
        expect(err.code).toBe('ENOMEM');
        expect(err.syscall).toBe('mmap');
      }
      expect(openFdCount()).toBe(fds);
    });

    asRoot(`memfd and anonymous regions are backed by huge pages (KernelPageSize in smaps)${why}`, () => {
      setHugePages(4);
      const size = hugeSize();
      for (const backing of ['memfd', 'anonymous'] as const) {
        const mem = make({ backing, hugetlb: true, hugePageSize: size, regions: [{ gpa: 0n, size }] });
        mem.view(size - 1n, 1)[0] = 1; // fault a page in
        const smaps = fs.readFileSync('/proc/self/smaps', 'utf8');
        const start = smaps.indexOf(`${mem.regions[0].hva.toString(16)}-`);
        expect(start).toBeGreaterThanOrEqual(0);
        const kps = /KernelPageSize:\s+(\d+) kB/.exec(smaps.slice(start))!;
        expect(BigInt(kps[1]) * 1024n).toBe(size);
        mem.close();
      }
    });
  });
});
