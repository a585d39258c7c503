// VhostNet: /dev/vhost-net, the kernel's virtio-net datapath. Two virtqueues:
// 0 = receive (tap → guest), 1 = transmit (guest → tap).
import type { FdOwner } from './fd';
import { native, type OwnedFd } from './native';
import { VhostDevice } from './vhost';
import { VhostNetBuilder } from './net-builder';

/** Queue indexes of a vhost-net device. */
export const VHOST_NET_RX = 0;
export const VHOST_NET_TX = 1;

/** A /dev/vhost-net fd. Owns it: close() or `using`. */
export class VhostNet extends VhostDevice {
  static readonly defaultPath = '/dev/vhost-net';

  private constructor(handle: OwnedFd) {
    super(handle);
  }

  /** Opens /dev/vhost-net (or `path`) O_RDWR | O_CLOEXEC. ENOENT says to load vhost_net. */
  static open(path: string = VhostNet.defaultPath): VhostNet {
    return new VhostNet(VhostDevice.openPath(path));
  }

  /**
   * Adopts an open /dev/vhost-net fd this process inherited by number (a VMM
   * spawned with spawnVmm): the object becomes its only owner and marks it
   * FD_CLOEXEC. EBADF when `fd` is not open. Nothing checks the fd's kind.
   */
  static fromFd(fd: number): VhostNet {
    const n = VhostDevice.checkU32(fd, 'fd');
    return new VhostNet(native.fdAdopt(n, VhostNet.defaultPath));
  }

  /**
   * A typed builder that brings the device up in the kernel's order with
   * everything validated first (see VhostNetBuilder); start() returns the running device.
   */
  static builder(): VhostNetBuilder {
    return new VhostNetBuilder((path) => VhostNet.open(path));
  }

  /**
   * VHOST_NET_SET_BACKEND: attaches a tap (or a raw packet socket) to queue
   * `index`; null detaches it. The kernel answers ENOTSOCK for any other fd,
   * and EFAULT when the ring's used ring is not writable memory, or when no
   * memory table was set yet (even to detach; measured on Linux 6.1).
   */
  setBackend(index: number, backend: FdOwner | number | null): void {
    const i = VhostDevice.checkU32(index, 'index');
    const fd = VhostDevice.checkFd(backend, 'backend');
    native.vhostNetSetBackend(this.handle, i, fd);
  }
}
