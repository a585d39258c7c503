// What the AF_VSOCK errors a user meets mean, and which kernel module or peer
// is missing. Internal (not in the public vsock namespace).
import { VhostError } from '../core/errors';
import type { VsockAddress } from './options';

/** The kernel modules behind AF_VSOCK, named in hints. */
const VSOCK_TRANSPORTS = 'vhost_vsock (host side, for guests), vsock_loopback (CID 1, this machine), vmw_vsock_virtio_transport (inside a guest)';

/** Adds what the user can do about the errors a vsock user meets. */
export function withVsockHint(err: unknown, peer?: VsockAddress, timeout?: number): unknown {
  if (!(err instanceof VhostError)) return err;
  let hint: string | undefined;
  if (err.code === 'EAFNOSUPPORT') hint = `AF_VSOCK is unavailable: load a vsock transport module: ${VSOCK_TRANSPORTS}`;
  else if (err.code === 'ENODEV' && err.syscall !== 'connect') hint = `no vsock transport serves this address: load ${VSOCK_TRANSPORTS}`;
  else if (err.code === 'ENOENT' && err.path === '/dev/vsock') hint = 'the vsock module is not loaded: modprobe vsock';
  else if (peer && err.syscall === 'connect') {
    if (err.code === 'ENODEV') {
      hint = `no vsock transport reaches CID ${peer.cid}: CID 1 needs vsock_loopback; a guest CID needs vhost_vsock and a running guest with that CID; the host (CID 2) from a guest needs the guest's virtio vsock transport`;
    } else if (err.code === 'ECONNRESET') {
      hint = `nothing listens on port ${peer.port} at CID ${peer.cid} (virtio vsock transports refuse a connection with a reset)`;
    } else if (err.code === 'ETIMEDOUT') {
      hint = `CID ${peer.cid} did not answer within ${timeout ?? 2000} ms`;
    }
  }
  if (hint) {
    err.hint = hint;
    err.message += ` (${hint})`;
  }
  return err;
}
