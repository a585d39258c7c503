// GuestMemory.onUnmap: whoever hands out buffers of its own over guest memory
// registers once, and every close() (by anyone) runs the hooks before the unmap.
import { GuestMemory } from '../../../lib/core/memory';
import { thrown } from '../../support/helpers';

const make = (): GuestMemory => GuestMemory.create({ regions: [{ gpa: 0x10000n, size: 1 << 16 }] });

describe('GuestMemory.onUnmap', () => {
  test('hooks run once, in order, while the memory is still mapped; close() then unmaps', () => {
    const mem = make();
    const view = mem.view(0x10000n, 16);
    view[3] = 0x5a;
    const seen: string[] = [];
    mem.onUnmap(() => seen.push(`a:${view.byteLength}:${view[3]}`));
    mem.onUnmap(() => seen.push(`b:${view.byteLength}`));
    mem.close();
    expect(seen).toEqual(['a:16:90', 'b:16']); // mapped (and readable) during the hooks
    expect(view.byteLength).toBe(0);
    mem.close(); // idempotent: the hooks do not run again
    expect(seen).toHaveLength(2);
  });

  test('the returned function unregisters; a throwing hook does not stop the others or the unmap', () => {
    const mem = make();
    const view = mem.view(0x10000n, 16);
    const seen: string[] = [];
    const forget = mem.onUnmap(() => seen.push('forgotten'));
    mem.onUnmap(() => {
      throw new Error('hook failed');
    });
    mem.onUnmap(() => seen.push('ran'));
    forget();
    forget(); // idempotent
    mem.close();
    expect(seen).toEqual(['ran']);
    expect(view.byteLength).toBe(0);
    expect(mem.closed).toBe(true);
  });

  test('after close ERR_VHOST_CLOSED; a hook that is not a function ERR_VHOST_INVALID_ARG', () => {
    const mem = make();
    expect(thrown(() => mem.onUnmap('x' as never))).toMatchObject({ code: 'ERR_VHOST_INVALID_ARG' });
    mem.close();
    expect(thrown(() => mem.onUnmap(() => undefined))).toMatchObject({ code: 'ERR_VHOST_CLOSED' });
  });
});
