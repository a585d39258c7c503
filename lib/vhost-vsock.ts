// VhostVsock: /dev/vhost-vsock, the host side of a virtio-vsock device. Two
// virtqueues: 0 = receive (host → guest), 1 = transmit (guest → host); the
// event queue is the VMM's, not the kernel's.
import { invalidArg } from './errors';
import { native, type OwnedFd } from './native';
import { VhostDevice } from './vhost';
import { VhostVsockBuilder } from './vsock-builder';

/** Queue indexes of a vhost-vsock device. */
export const VHOST_VSOCK_RX = 0;
export const VHOST_VSOCK_TX = 1;

/** A /dev/vhost-vsock fd. Owns it: close() or `using`. */
export class VhostVsock extends VhostDevice {
  static readonly defaultPath = '/dev/vhost-vsock';

  private constructor(handle: OwnedFd) {
    super(handle);
  }

  /** Opens /dev/vhost-vsock (or `path`) O_RDWR | O_CLOEXEC. ENOENT says to load vhost_vsock. */
  static open(path: string = VhostVsock.defaultPath): VhostVsock {
    return new VhostVsock(VhostDevice.openPath(path));
  }

  /**
   * Adopts an open /dev/vhost-vsock fd this process inherited by number (a VMM
   * spawned with spawnVmm): the object becomes its only owner and marks it
   * FD_CLOEXEC. EBADF when `fd` is not open. Nothing checks the fd's kind.
   */
  static fromFd(fd: number): VhostVsock {
    const n = VhostDevice.checkU32(fd, 'fd');
    return new VhostVsock(native.fdAdopt(n, VhostVsock.defaultPath));
  }

  /**
   * A typed builder that brings the device up in the kernel's order with
   * everything validated first (see VhostVsockBuilder); start() returns the running device.
   */
  static builder(): VhostVsockBuilder {
    return new VhostVsockBuilder((path) => VhostVsock.open(path));
  }

  /**
   * VHOST_VSOCK_SET_GUEST_CID: the guest's context id. The kernel rejects
   * 0, 1, 2, 0xffffffff and anything wider than 32 bits (EINVAL), and a CID
   * another device holds (EADDRINUSE).
   */
  setGuestCid(cid: number | bigint): void {
    const v = VhostDevice.checkU64(cid, 'cid');
    native.vhostVsockSetGuestCid(this.handle, v);
  }

  /**
   * VHOST_VSOCK_SET_RUNNING: starts (true) or stops (false) the rings. Start
   * needs the owner set and both rings' addresses accessible (else EFAULT).
   */
  setRunning(on: boolean): void {
    if (typeof on !== 'boolean') throw invalidArg('on', `must be a boolean, got ${typeof on}`);
    native.vhostVsockSetRunning(this.handle, on);
  }
}
