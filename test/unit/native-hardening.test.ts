// Inputs from JavaScript that once crashed or misled the addon (a review
// reproduced each): they must now throw a typed error and leave the process up.
import { native } from '../../lib/native';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  throw new Error('expected a throw');
}

describe('native input hardening', () => {
  test('watch() refuses event bits libuv would abort on', () => {
    const ev = native.eventfdCreate(0, false);
    try {
      expect(codeOf(() => ev.watch(16, () => {}))).toBe('ERR_VHOST_INVALID_ARG');
      expect(codeOf(() => ev.watch(-1, () => {}))).toBe('ERR_VHOST_INVALID_ARG');
      ev.watch(0, () => {}); // a paused watcher is fine
      ev.unwatch();
    } finally {
      ev.close();
    }
  });

  test('an object made to look like an OwnedFd (hasInstance, prototype) is refused', () => {
    const m = native.mmapShared(null, 1n << 20n, 0n, 0);
    const proto = Object.getPrototypeOf(m);
    try {
      Object.setPrototypeOf(m, native.OwnedFd.prototype);
      expect(codeOf(() => native.getSeals(m as never))).toBe('ERR_VHOST_INVALID_ARG');
      const forged = { [Symbol.hasInstance]: () => true };
      Object.setPrototypeOf(forged, native.OwnedFd.prototype);
      expect(codeOf(() => native.ftruncate(forged as never, 0n))).toBe('ERR_VHOST_INVALID_ARG');
    } finally {
      Object.setPrototypeOf(m, proto);
      m.unmap();
    }
  });

  test('a memory table with more regions than any kernel takes is refused before allocating it', () => {
    const dev = native.openPath('/dev/null');
    try {
      const huge: never[] = [];
      huge.length = 2 ** 32 - 1;
      expect(codeOf(() => native.vhostSetMemTable(dev, huge))).toBe('ERR_VHOST_OUT_OF_RANGE');
    } finally {
      dev.close();
    }
  });

  test('a mapping past the end of its memfd is refused (touching it would SIGBUS)', () => {
    const fd = native.memfdCreate('hardening', 0);
    try {
      native.ftruncate(fd, 4096n);
      expect(codeOf(() => native.mmapShared(fd, 8192n, 0n, 0))).toBe('ERR_VHOST_OUT_OF_RANGE');
      expect(codeOf(() => native.mmapShared(fd, 4096n, 4096n, 0))).toBe('ERR_VHOST_OUT_OF_RANGE');
      const ok = native.mmapShared(fd, 4096n, 0n, 0);
      new Uint8Array(ok.buffer)[4095] = 1;
      ok.unmap();
    } finally {
      fd.close();
    }
  });

  test('eventfd read/write refuse fds that are not eventfds (a read could block the loop)', () => {
    const other = native.openPath('/dev/null');
    try {
      expect(codeOf(() => native.eventfdRead(other))).toBe('ERR_VHOST_INVALID_ARG');
      expect(codeOf(() => native.eventfdWrite(other, 1n))).toBe('ERR_VHOST_INVALID_ARG');
    } finally {
      other.close();
    }
  });

  test('openPath takes a string path and only O_NONBLOCK / O_NOCTTY as extra flags', () => {
    expect(codeOf(() => native.openPath(5 as never))).toBe('ERR_VHOST_INVALID_ARG');
    expect(codeOf(() => native.openPath('/tmp/linux-vhost-never-created', 0o100 /* O_CREAT */))).toBe('ERR_VHOST_INVALID_ARG');
  });

  test('fdAdopt refuses an fd another OwnedFd owns (a second close would hit a reused number)', () => {
    const ev = native.eventfdCreate(0, false);
    try {
      expect(codeOf(() => native.fdAdopt(ev.fd, 'twice'))).toBe('ERR_VHOST_INVALID_ARG');
    } finally {
      ev.close();
    }
  });
});
