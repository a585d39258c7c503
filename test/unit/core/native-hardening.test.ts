// Inputs from JavaScript that once crashed or misled the addon (a review
// reproduced each): they must now throw a typed error and leave the process up.
import * as fs from 'node:fs';
import { native, OwnedFd } from '../../../lib/core/native';
import { thrown } from '../../support/helpers';

// Like thrown() for calls that return an OwnedFd when they (wrongly) succeed.
function openErrorOf(open: () => OwnedFd | { fd: OwnedFd }): { code?: string; message: string } {
  let opened: OwnedFd | { fd: OwnedFd };
  try {
    opened = open();
  } catch (err) {
    return err as { code?: string; message: string };
  }
  ('close' in opened ? opened : opened.fd).close();
  throw new Error('expected a throw');
}

describe('native input hardening', () => {
  test('watch() refuses event bits libuv would abort on', () => {
    const ev = native.eventfdCreate(0, false);
    try {
      expect(thrown(() => ev.watch(16, () => {})).code).toBe('ERR_VHOST_INVALID_ARG');
      expect(thrown(() => ev.watch(-1, () => {})).code).toBe('ERR_VHOST_INVALID_ARG');
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
      expect(thrown(() => native.getSeals(m as never)).code).toBe('ERR_VHOST_INVALID_ARG');
      const forged = { [Symbol.hasInstance]: () => true };
      Object.setPrototypeOf(forged, native.OwnedFd.prototype);
      expect(thrown(() => native.ftruncate(forged as never, 0n)).code).toBe('ERR_VHOST_INVALID_ARG');
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
      expect(thrown(() => native.vhostSetMemTable(dev, huge)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    } finally {
      dev.close();
    }
  });

  test('a mapping past the end of its memfd is refused (touching it would SIGBUS)', () => {
    const fd = native.memfdCreate('hardening', 0);
    try {
      native.ftruncate(fd, 4096n);
      expect(thrown(() => native.mmapShared(fd, 8192n, 0n, 0)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
      expect(thrown(() => native.mmapShared(fd, 4096n, 4096n, 0)).code).toBe('ERR_VHOST_OUT_OF_RANGE');
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
      expect(thrown(() => native.eventfdRead(other)).code).toBe('ERR_VHOST_INVALID_ARG');
      expect(thrown(() => native.eventfdWrite(other, 1n)).code).toBe('ERR_VHOST_INVALID_ARG');
    } finally {
      other.close();
    }
  });

  test('openPath takes a string path and only O_NONBLOCK / O_NOCTTY as extra flags', () => {
    expect(thrown(() => native.openPath(5 as never)).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => native.openPath('/tmp/linux-vhost-never-created', 0o100 /* O_CREAT */)).code).toBe('ERR_VHOST_INVALID_ARG');
  });

  test('fdAdopt refuses an fd another OwnedFd owns (a second close would hit a reused number)', () => {
    const ev = native.eventfdCreate(0, false);
    try {
      expect(thrown(() => native.fdAdopt(ev.fd, 'twice')).code).toBe('ERR_VHOST_INVALID_ARG');
    } finally {
      ev.close();
    }
  });

  // open(2) and memfd_create(2) stop at the first NUL: '/dev/null\0x' would open /dev/null.
  test('a path or name with an embedded NUL is refused, not truncated by the syscall', () => {
    const IFF_TAP = 0x0002;
    const tapPath = openErrorOf(() => native.tapOpen('/dev/null\0/dev/net/tun', '', IFF_TAP));
    expect(tapPath.code).toBe('ERR_VHOST_INVALID_ARG');
    expect(tapPath.message).toBe('path must not contain NUL');
    const tapName = thrown(() => native.tapOpen('/dev/null', 'tap\0x', IFF_TAP));
    expect(tapName.code).toBe('ERR_VHOST_INVALID_ARG');
    expect(tapName.message).toBe('name must not contain NUL');
    const open = openErrorOf(() => native.openPath('/dev/null\0x'));
    expect(open.code).toBe('ERR_VHOST_INVALID_ARG');
    expect(open.message).toBe('path must not contain NUL');
    const memfd = openErrorOf(() => native.memfdCreate('a\0b', 0));
    expect(memfd.code).toBe('ERR_VHOST_INVALID_ARG');
    expect(memfd.message).toBe('memfd name must not contain NUL');
  });

  test('an adopted fd labelled "eventfd" is still not an eventfd', () => {
    const adopted = native.fdAdopt(fs.openSync('/dev/null', 'r'), 'eventfd');
    try {
      expect(thrown(() => native.eventfdRead(adopted)).message).toBe("read: not an eventfd 'eventfd'");
      expect(thrown(() => native.eventfdWrite(adopted, 1n)).code).toBe('ERR_VHOST_INVALID_ARG');
    } finally {
      adopted.close();
    }
  });

  test('fd and integer arguments: type and range checked with the same messages as ever', () => {
    expect(thrown(() => native.fdAdopt('3' as never, 'x')).message).toBe('fd must be a number');
    for (const bad of [-1, 1.5, 2 ** 31, NaN, Infinity]) {
      expect(thrown(() => native.fdAdopt(bad, 'x')).message).toBe('fd must be an integer in 0..2147483647');
    }
    const dev = native.openPath('/dev/null');
    try {
      for (const bad of [-2, 1.5, 2 ** 31, NaN, -Infinity]) {
        const err = thrown(() => native.vhostSetLogFd(dev, bad));
        expect(err.code).toBe('ERR_VHOST_INVALID_ARG');
        expect(err.message).toBe('ioctl(VHOST_SET_LOG_FD): fd must be an integer >= -1');
      }
      // Valid fd numbers get as far as the ioctl, which /dev/null refuses.
      expect(thrown(() => native.vhostSetLogFd(dev, -1)).code).toBe('ENOTTY');
      expect(thrown(() => native.vhostSetLogFd(dev, null)).code).toBe('ENOTTY');
      expect(thrown(() => native.tapSetSndbuf(dev, 'x' as never)).message).toBe('size must be a number');
      for (const bad of [0.5, 2 ** 31, -(2 ** 31) - 1, NaN]) {
        expect(thrown(() => native.tapSetSndbuf(dev, bad)).message).toBe('size must be an integer in -2147483648..2147483647');
      }
      expect(thrown(() => native.tapSetSndbuf(dev, -(2 ** 31))).code).toBe('ENOTTY');
    } finally {
      dev.close();
    }
  });
});
