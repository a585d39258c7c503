// The hybrid vsock server of one guest of a VsockDeviceBackend, the protocol
// Firecracker and Cloud Hypervisor document: a unix socket PATH; a host client
// writes `CONNECT <port>\n` and, once the guest accepted, reads
// `OK <assigned host port>\n` followed by the stream. A guest connecting to
// host port P reaches whoever listens on the unix socket `PATH_P`. socat
// `UNIX-CONNECT:PATH` and lib/vsock/hybrid.ts speak it.
//
// A client is untrusted too: its handshake line is bounded in bytes
// (HYBRID_LINE_MAX) and in time (handshakeTimeout); anything else gets
// `ERR <reason>\n` and a close, never a hang.
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { checkInt, checkNonEmptyString, checkObject, describe, readOptions } from '../../core/check';
import { VhostError } from '../../core/errors';
import { claimSocketPath } from '../../core/unix-socket';
import { parsePort, takeLine } from '../../vsock/hybrid';
import { splice, type VsockDeviceBackend } from './backend';

/** Options of HybridVsockServer.listen(). */
export interface HybridVsockServerOptions {
  /** The guest (attached to the back-end) that `CONNECT <port>` reaches, and whose connections to host port P go to `PATH_P`. */
  cid: number;
  /** Mode of the socket file, 0..0o777. Default 0o600: only this user may connect. */
  mode?: number;
  /** Time a client has to send its `CONNECT` line, 1..2^31-1 ms. Default 5000. */
  handshakeTimeout?: number;
}

/** Counters of a HybridVsockServer. */
export interface HybridVsockServerStats {
  /** Host clients connected through to the guest. */
  connected: number;
  /** Clients answered `ERR` (malformed, oversized or late handshake line). */
  handshakeErrors: number;
  /** Clients closed without `OK`: the guest refused, timed out, or went away. */
  refused: number;
}

const PORT_MAX = 0xffff_fffe;
const INT32_MAX = 0x7fff_ffff;
/** After `ERR`, how long the client may take to read it before the socket is destroyed. */
const ERR_LINGER_MS = 1000;

/**
 * A guest's hybrid vsock socket. Create with HybridVsockServer.listen();
 * close() stops accepting, removes the socket file and stops forwarding the
 * guest's connections to PATH_P (established streams stay).
 */
export class HybridVsockServer extends EventEmitter {
  readonly path: string;
  readonly cid: number;
  readonly #backend: VsockDeviceBackend;
  readonly #server: net.Server;
  readonly #handshakeTimeout: number;
  readonly #pending = new Set<net.Socket>();
  #ino = 0;
  readonly stats: HybridVsockServerStats = { connected: 0, handshakeErrors: 0, refused: 0 };

  private constructor(backend: VsockDeviceBackend, path: string, cid: number, handshakeTimeout: number) {
    super();
    this.#backend = backend;
    this.path = path;
    this.cid = cid;
    this.#handshakeTimeout = handshakeTimeout;
    this.#server = net.createServer({ allowHalfOpen: true }, (sock) => this.#onClient(sock));
  }

  /**
   * Listens on `path` for guest `options.cid` of `backend`: a stale socket
   * file is replaced, a live one (or a non-socket) refused with EADDRINUSE;
   * the file gets `options.mode` (default 0600). Guest connections to host
   * port P without an in-process listener go to `${path}_${P}`.
   */
  static async listen(backend: VsockDeviceBackend, path: string, options: HybridVsockServerOptions): Promise<HybridVsockServer> {
    checkNonEmptyString(path, 'path', describe);
    const o = readOptions(checkObject<HybridVsockServerOptions>(options, 'options'), ['cid', 'mode', 'handshakeTimeout']);
    const cid = checkInt(o.cid, 'options.cid', 3, 0xffff_fffe);
    const mode = checkInt(o.mode ?? 0o600, 'options.mode', 0, 0o777);
    const handshakeTimeout = checkInt(o.handshakeTimeout ?? 5000, 'options.handshakeTimeout', 1, INT32_MAX);
    if (!backend.guest(cid)) throw new VhostError(`ENODEV: no guest with CID ${cid} is attached to this vsock back-end`, { code: 'ENODEV', path: `vsock:${cid}` });
    claimSocketPath(path);
    const s = new HybridVsockServer(backend, path, cid, handshakeTimeout);
    await new Promise<void>((resolve, reject) => {
      s.#server.once('error', reject);
      s.#server.listen(path, () => {
        s.#server.off('error', reject);
        resolve();
      });
    });
    try {
      // Created with the umask's mode (no write bit for others by default), then narrowed or widened as asked.
      fs.chmodSync(path, mode);
      s.#ino = fs.statSync(path).ino;
    } catch (err) {
      s.#server.close();
      throw err;
    }
    s.#server.on('error', (err) => s.emit('error', err));
    backend.setHybridPath(cid, path);
    return s;
  }

  /** True until close(). */
  get listening(): boolean {
    return this.#server.listening;
  }

  /** Stops accepting, drops clients still in their handshake, removes the socket file (if still ours). */
  close(): void {
    if (!this.#server.listening) return;
    this.#server.close();
    for (const s of this.#pending) s.destroy();
    this.#pending.clear();
    this.#backend.setHybridPath(this.cid, null);
    try {
      if (fs.lstatSync(this.path).ino === this.#ino) fs.rmSync(this.path, { force: true });
    } catch {
      // already gone
    }
  }

  /** Same as close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #onClient(sock: net.Socket): void {
    this.#pending.add(sock);
    sock.on('error', () => {}); // a client that vanishes is its own business
    let buffered: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => reject(`no CONNECT line within ${this.#handshakeTimeout} ms`), this.#handshakeTimeout);
    const done = (): void => {
      clearTimeout(timer);
      sock.off('data', onData);
      this.#pending.delete(sock);
    };
    const reject = (reason: string): void => {
      done();
      this.stats.handshakeErrors++;
      sock.pause();
      sock.end(`ERR ${reason}\n`);
      setTimeout(() => sock.destroy(), ERR_LINGER_MS).unref();
    };
    const onData = (data: Buffer): void => {
      buffered = buffered.length === 0 ? data : Buffer.concat([buffered, data]);
      const got = takeLine(buffered, this.path);
      if (got === null) return;
      if (got instanceof VhostError) {
        reject('handshake line too long');
        return;
      }
      const m = /^CONNECT (.*)$/.exec(got.line);
      const port = m ? parsePort(m[1]) : null;
      if (port === null || port > PORT_MAX) {
        reject('expected "CONNECT <port>"');
        return;
      }
      done();
      sock.pause();
      this.#forward(sock, port, Buffer.from(got.rest));
    };
    sock.on('data', onData);
    sock.once('close', () => {
      clearTimeout(timer);
      this.#pending.delete(sock);
    });
  }

  /** Connects to the guest's `port`; `OK <host port>` once it accepts, then the stream; a close if it does not. */
  #forward(sock: net.Socket, port: number, early: Buffer): void {
    let conn;
    try {
      conn = this.#backend.connect({ cid: this.cid, port, allowHalfOpen: true, timeout: this.#backend.routeTimeout });
    } catch {
      this.stats.refused++;
      sock.destroy(); // the guest is gone: as Firecracker, refuse by closing
      return;
    }
    let open = false;
    conn.on('error', () => {}); // refused / reset: the unix side is closed below
    conn.once('connect', () => {
      if (sock.destroyed) {
        conn.destroy();
        return;
      }
      open = true;
      this.stats.connected++;
      sock.write(`OK ${conn.localAddress.port}\n`);
      if (early.length > 0) conn.write(early); // bytes the client sent right behind its CONNECT line
      splice(sock, conn);
      sock.resume();
    });
    conn.once('close', () => {
      if (!open) {
        this.stats.refused++;
        sock.destroy();
      }
    });
    sock.once('close', () => {
      if (!open) conn.destroy();
    });
  }
}
