// Validation of the vsock API, thrown before any syscall. No AF_VSOCK socket
// is ever opened here: the native socket calls are replaced by spies that fail
// the test if reached (sockets are tested in the VM: test/kernel/vsock/vsock-socket.test.ts).
import * as fs from 'node:fs';
import { native } from '../../../lib/core/native';
import * as vsock from '../../../lib/vsock/socket';
import { checkConnectOptions, checkListenOptions } from '../../../lib/vsock/options';
import { thrown } from '../../support/helpers';

type Err = Error & { code?: string; argument?: string };

const guarded = ['vsockSocket', 'vsockBind', 'vsockListen', 'vsockConnect', 'vsockSetConnectTimeout', 'openPath'] as const;
let spies: jest.SpyInstance[];
beforeEach(() => {
  spies = guarded.map((name) =>
    jest.spyOn(native, name).mockImplementation(() => {
      throw new Error(`native.${name} reached: validation must throw first (and no AF_VSOCK on this host)`);
    }),
  );
});
afterEach(() => {
  for (const spy of spies) {
    expect(spy).not.toHaveBeenCalled();
    spy.mockRestore();
  }
});

describe('vsock.connect() options', () => {
  const good = { cid: 3, port: 1234 };
  test.each<[string, unknown, string]>([
    ['options', null, 'ERR_VHOST_INVALID_ARG'],
    ['options', 'vsock:3:1234', 'ERR_VHOST_INVALID_ARG'],
    ['options.cid', { port: 1 }, 'ERR_VHOST_INVALID_ARG'],
    ['options.port', { cid: 3 }, 'ERR_VHOST_INVALID_ARG'],
    ['options.cid', { ...good, cid: 1.5 }, 'ERR_VHOST_INVALID_ARG'],
    ['options.cid', { ...good, cid: '3' }, 'ERR_VHOST_INVALID_ARG'],
    ['options.cid', { ...good, cid: 3n }, 'ERR_VHOST_INVALID_ARG'],
    ['options.cid', { ...good, cid: -1 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['options.cid', { ...good, cid: vsock.VMADDR_CID_ANY }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['options.cid', { ...good, cid: 2 ** 32 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['options.port', { ...good, port: vsock.VMADDR_PORT_ANY }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['options.port', { ...good, port: NaN }, 'ERR_VHOST_INVALID_ARG'],
    ['options.type', { ...good, type: 'dgram' }, 'ERR_VHOST_INVALID_ARG'],
    ['options.timeout', { ...good, timeout: 0 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['options.timeout', { ...good, timeout: 2 ** 31 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['options.timeout', { ...good, timeout: 1.5 }, 'ERR_VHOST_INVALID_ARG'],
    ['options.signal', { ...good, signal: {} }, 'ERR_VHOST_INVALID_ARG'],
    ['options.allowHalfOpen', { ...good, allowHalfOpen: 1 }, 'ERR_VHOST_INVALID_ARG'],
  ])('%s is checked: %p → %s', (argument, options, code) => {
    const err = thrown(() => vsock.connect(options as vsock.VsockConnectOptions));
    expect(err.code).toBe(code);
    expect(err.argument).toBe(argument);
    expect(err.message).toContain(argument);
  });

  test('a callback that is not a function is refused', () => {
    expect(thrown(() => vsock.connect(good, 'cb' as unknown as () => void)).argument).toBe('cb');
  });

  test('defaults: a stream, not half-open, no timeout; the full u32 range below ANY is accepted', () => {
    expect(checkConnectOptions(good)).toEqual({ cid: 3, port: 1234, type: 'stream', allowHalfOpen: false, timeout: undefined, signal: undefined });
    const max = checkConnectOptions({ cid: 0xfffffffe, port: 0xfffffffe, type: 'seqpacket', timeout: 2 ** 31 - 1 });
    expect(max).toMatchObject({ cid: 0xfffffffe, port: 0xfffffffe, type: 'seqpacket', timeout: 2 ** 31 - 1 });
  });

  test('an already aborted signal fails with ABORT_ERR without opening a socket', async () => {
    const reason = new Error('no thanks');
    const socket = vsock.connect({ ...good, signal: AbortSignal.abort(reason) });
    const err = await new Promise<Err>((resolve) => socket.once('error', resolve));
    expect(err.code).toBe('ABORT_ERR');
    expect(err.name).toBe('AbortError');
    expect(err.cause).toBe(reason);
    expect(socket.destroyed).toBe(true);
    expect(thrown(() => socket.fd).code).toBe('ERR_VHOST_CLOSED');
  });
});

describe('vsock.createServer() and listen()', () => {
  test.each<[string, unknown]>([
    ['options', null],
    ['options.type', { type: 'stream ' }],
    ['options.allowHalfOpen', { allowHalfOpen: 'yes' }],
  ])('%s is checked: %p', (argument, options) => {
    expect(thrown(() => vsock.createServer(options as vsock.VsockServerOptions)).argument).toBe(argument);
  });

  test('a listener that is not a function is refused', () => {
    expect(thrown(() => vsock.createServer({}, 42 as unknown as () => void)).argument).toBe('listener');
  });

  test.each<[string, unknown, string]>([
    ['options', 7, 'ERR_VHOST_INVALID_ARG'],
    ['options.port', { port: -1 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['options.port', { port: 2 ** 32 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['options.port', { port: '80' }, 'ERR_VHOST_INVALID_ARG'],
    ['options.cid', { cid: 1.25 }, 'ERR_VHOST_INVALID_ARG'],
    ['options.backlog', { backlog: -1 }, 'ERR_VHOST_OUT_OF_RANGE'],
    ['options.backlog', { backlog: 2 ** 31 }, 'ERR_VHOST_OUT_OF_RANGE'],
  ])('listen %s is checked: %p → %s', (argument, options, code) => {
    const server = vsock.createServer();
    const err = thrown(() => server.listen(options as vsock.VsockListenOptions));
    expect(err.code).toBe(code);
    expect(err.argument).toBe(argument);
    expect(server.listening).toBe(false);
  });

  test('listen defaults: any CID, any port, backlog 511', () => {
    expect(checkListenOptions({})).toEqual({ cid: vsock.VMADDR_CID_ANY, port: vsock.VMADDR_PORT_ANY, backlog: 511 });
  });

  test('listen with a callback that is not a function is refused', () => {
    expect(thrown(() => vsock.createServer().listen({}, 'cb' as unknown as () => void)).argument).toBe('cb');
  });

  test('a server that never listened: no address, close() reports ERR_VHOST_CLOSED to its callback', async () => {
    const server = vsock.createServer({ type: 'seqpacket', allowHalfOpen: true });
    expect(server.type).toBe('seqpacket');
    expect(server.allowHalfOpen).toBe(true);
    expect(server.listening).toBe(false);
    expect(server.address()).toBeNull();
    expect(server.ref()).toBe(server);
    expect(server.unref()).toBe(server);
    const err = await new Promise<Err | undefined>((resolve) => server.close(resolve));
    expect(err?.code).toBe('ERR_VHOST_CLOSED');
  });
});

describe('constants and exports', () => {
  test('VMADDR_* match linux/vm_sockets.h', () => {
    const header = fs.readFileSync('/usr/include/linux/vm_sockets.h', 'utf8');
    const value = (name: string): number => {
      const m = new RegExp(`#define ${name}\\s+(-?\\d+)U?\\b`).exec(header);
      if (!m) throw new Error(`${name} not in the header`);
      return Number(m[1]) >>> 0;
    };
    expect(vsock.VMADDR_CID_ANY).toBe(value('VMADDR_CID_ANY'));
    expect(vsock.VMADDR_PORT_ANY).toBe(value('VMADDR_PORT_ANY'));
    expect(vsock.VMADDR_CID_HYPERVISOR).toBe(value('VMADDR_CID_HYPERVISOR'));
    expect(vsock.VMADDR_CID_LOCAL).toBe(value('VMADDR_CID_LOCAL'));
    expect(vsock.VMADDR_CID_HOST).toBe(value('VMADDR_CID_HOST'));
  });

  test('the package exports the API as the vsock namespace', () => {
    const lib = require('../../../lib') as { vsock: typeof vsock };
    expect(lib.vsock.connect).toBe(vsock.connect);
    expect(lib.vsock.createServer).toBe(vsock.createServer);
    expect(lib.vsock.localCid).toBe(vsock.localCid);
    expect(lib.vsock.VsockSocket).toBe(vsock.VsockSocket);
  });

  test('the addon exports every vsock function lib/core/native.ts declares', () => {
    for (const name of ['vsockSocket', 'vsockBind', 'vsockListen', 'vsockAccept', 'vsockConnect', 'vsockGetSocketError',
      'vsockSetConnectTimeout', 'vsockRead', 'vsockRecvMessage', 'vsockWrite', 'vsockShutdown', 'vsockGetSockName',
      'vsockGetPeerName', 'vsockGetLocalCid'] as const) {
      expect(typeof native[name]).toBe('function');
    }
  });

  test('native functions refuse a non-OwnedFd handle before any syscall', () => {
    const notFd = {} as never;
    expect(thrown(() => native.vsockRead(notFd, new Uint8Array(4))).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => native.vsockWrite(notFd, new Uint8Array(4))).code).toBe('ERR_VHOST_INVALID_ARG');
    expect(thrown(() => native.vsockGetLocalCid(notFd)).code).toBe('ERR_VHOST_INVALID_ARG');
  });
});
