// The cases issue 13 names, pinned: each entry point given an object whose
// coercion hooks throw, or one without a prototype, answers with its own
// ERR_VHOST_* error naming the argument, and none of the caller's hooks runs.
import * as lib from '../../../lib';
import { encodeVsockHeader } from '../../../lib/virtio/vsock-packet';
import { thrown } from '../../support/helpers';

const calls: string[] = [];
function hostile(): object {
  const hook = (name: string) => () => {
    calls.push(name);
    throw new Error(`${name} ran`);
  };
  return { toString: hook('toString'), valueOf: hook('valueOf'), [Symbol.toPrimitive]: hook('toPrimitive') };
}
const bare = (): object => Object.create(null) as object;

beforeEach(() => {
  calls.length = 0;
});
afterEach(() => expect(calls).toEqual([]));

test.each([
  ['VirtioVsockGuest options.cid', () => lib.VirtioVsockGuest.create({ cid: hostile() as never }), 'options.cid'],
  ['VirtioVsockGuest options.bufferSize', () => lib.VirtioVsockGuest.create({ bufferSize: bare() as never }), 'options.bufferSize'],
  ['VirtioNetGuest options.tap', () => lib.VirtioNetGuest.create({ tap: hostile() as never }), 'options.tap'],
  ['VirtioNetGuest options', () => lib.VirtioNetGuest.create(bare() as never), 'options.tap'],
  ['GuestMemory options.name', () => lib.GuestMemory.create({ name: hostile() as never, regions: [{ gpa: 0n, size: 4096n }] }), 'options.name'],
  ['GuestMemory options.backing', () => lib.GuestMemory.create({ backing: bare() as never, regions: [] }), 'options.backing'],
  ['EventFd options.initval', () => lib.EventFd.create({ initval: hostile() as never }), 'options.initval'],
  ['Tap.create options.mtu', () => lib.Tap.create({ mtu: hostile() as never }), 'mtu'],
  ['layoutSplitRing size', () => lib.layoutSplitRing(hostile() as never, 0n), 'size'],
  ['vsock header srcCid', () => encodeVsockHeader({ srcCid: bare() } as never), 'header.srcCid'],
  ['VhostVsock.builder().cid', () => lib.VhostVsock.builder().cid(hostile() as never), 'cid'],
])('%s', (_name, call, argument) => {
  const err = thrown(call) as lib.VhostError & { argument?: string };
  expect(err).toBeInstanceOf(lib.VhostError);
  expect(err.code).toMatch(/^ERR_VHOST_/);
  expect(err.argument).toBe(argument);
  expect(err.message).not.toMatch(/ran/);
});
