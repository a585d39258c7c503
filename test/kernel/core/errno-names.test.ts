// Errno names the kernel gives that libuv does not know still get their
// symbolic code: a tap whose link was deleted answers EBADFD (77).
import { execFileSync } from 'node:child_process';
import { Tap } from '../../../lib/netdev/tap';
import { describeKernel, thrown } from '../../support/helpers';

describeKernel('errno names beyond libuv', ['/dev/net/tun'], () => {
  test('TUNGETIFF on a tap whose link was deleted fails with code EBADFD and a readable message', () => {
    const tap = Tap.create({ name: 'lvbadfd0' });
    try {
      execFileSync('ip', ['link', 'del', 'lvbadfd0']);
      const err = thrown(() => tap.iff);
      expect({ code: err.code, errno: err.errno, syscall: err.syscall, path: err.path }).toEqual({
        code: 'EBADFD',
        errno: -77,
        syscall: 'ioctl(TUNGETIFF)',
        path: '/dev/net/tun',
      });
      expect(err.message).toBe("EBADFD: file descriptor in bad state, ioctl(TUNGETIFF) '/dev/net/tun'");
    } finally {
      tap.close();
    }
  });
});
