// VirtioVsockGuest pause() / resume() against the real vhost-vsock (test VM
// only). While paused (SET_RUNNING 0) the host kernel keeps its sockets
// connected; resume() replaces the device (same CID, saved ring bases) and
// closing the old one makes the kernel reset every host socket connected to
// the CID, so both ends see ECONNRESET; listeners survive and new
// connections work both ways on the new device.
import { once } from 'node:events';
import { VirtioVsockGuest, type VirtioVsockConnection } from '../../../lib/guest/vsock';
import * as vsock from '../../../lib/vsock/socket';
import type { VsockSocket } from '../../../lib/vsock/socket';
import { describeKernel, errorOf, sleep, thrown, vsockAfterEach, waitFor } from '../../support/helpers';

jest.setTimeout(60_000);


/** Sends `text` and resolves with the first chunk that comes back. */
async function roundTrip(stream: NodeJS.ReadWriteStream, text: string): Promise<string> {
  const reply = once(stream, 'data');
  stream.write(text);
  return String((await reply)[0]);
}

describeKernel('VirtioVsockGuest pause / resume over vhost-vsock', ['/dev/vhost-vsock', '/dev/vsock'], () => {
  const { guests, servers, sockets } = vsockAfterEach();

  test('resume() after pause() resets connections on both ends (ECONNRESET); new connections work both ways', async () => {
    const g = VirtioVsockGuest.create({ cid: 'auto', queueSize: 64, bufferSize: 4096 });
    guests.push(g);
    const cid = g.cid;
    const accepted: VirtioVsockConnection[] = [];
    g.listen(5200, (conn) => {
      accepted.push(conn);
      conn.on('error', () => undefined);
      conn.pipe(conn);
    });
    const server = vsock.createServer((s: VsockSocket) => {
      sockets.push(s);
      s.on('error', () => undefined);
      s.pipe(s);
    });
    servers.push(server);
    server.listen({ cid: vsock.VMADDR_CID_ANY });
    await once(server, 'listening');
    const hostPort = server.address()!.port;

    // Established both ways: host → guest listener, guest → host server.
    const h = vsock.connect({ cid, port: 5200, timeout: 20_000 });
    sockets.push(h);
    await once(h, 'connect');
    expect(await roundTrip(h, 'in')).toBe('in');
    const c = g.connect({ port: hostPort });
    await once(c, 'connect');
    expect(await roundTrip(c, 'out')).toBe('out');
    expect(g.connections).toBe(2);

    const state = g.pause();
    expect(g.paused).toBe(true);
    expect(state.queues.map((q) => q.index)).toEqual([0, 1]);
    expect(g.pause()).toEqual(state); // idempotent
    h.write('while paused'); // queues at the host: the stopped device takes nothing
    await sleep(300);
    expect(h.destroyed).toBe(false); // SET_RUNNING 0 leaves host sockets connected
    expect(c.destroyed).toBe(false);

    const hErr = errorOf(h);
    const cErr = errorOf(c);
    const aErr = errorOf(accepted[0]);
    g.resume();
    expect(g.paused).toBe(false);
    expect(g.cid).toBe(cid);
    expect((await cErr).code).toBe('ECONNRESET');
    expect((await aErr).code).toBe('ECONNRESET');
    expect(g.connections).toBe(0);
    expect((await hErr).code).toBe('ECONNRESET'); // vhost_vsock_reset_orphans when the old device closed
    await waitFor('host server connection reset', () => server.connections === 0);

    // The new device: same CID, same listener, both directions.
    const h2 = vsock.connect({ cid, port: 5200, timeout: 20_000 });
    sockets.push(h2);
    await once(h2, 'connect');
    expect(await roundTrip(h2, 'again in')).toBe('again in');
    const c2 = g.connect({ port: hostPort });
    await once(c2, 'connect');
    expect(await roundTrip(c2, 'again out')).toBe('again out');
    expect(accepted).toHaveLength(2);
    c2.destroy();
  });

  test('resume() needs a pause first; pause() and resume() after close() throw ERR_VHOST_CLOSED', () => {
    const g = VirtioVsockGuest.create({ cid: 'auto', queueSize: 64, bufferSize: 4096 });
    guests.push(g);
    expect(thrown(() => g.resume()).code).toBe('ERR_VHOST_INVALID_ARG');
    g.pause();
    expect(thrown(() => g.resume({ queues: [{ index: 0, base: 70000 }] })).code).toBe('ERR_VHOST_OUT_OF_RANGE');
    expect(g.paused).toBe(true); // a refused state changes nothing
    g.close();
    expect(g.paused).toBe(false);
    expect(thrown(() => g.pause()).code).toBe('ERR_VHOST_CLOSED');
    expect(thrown(() => g.resume()).code).toBe('ERR_VHOST_CLOSED');
  });
});
