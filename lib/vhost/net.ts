// vhost-net: the kernel's virtio-net datapath (/dev/vhost-net), its builder and
// the running device. Two virtqueues per device: 0 = receive (tap → guest),
// 1 = transmit (guest → tap).
//
// VhostNetBuilder brings a device up in QEMU's order
// (hw/virtio/vhost.c vhost_dev_start, hw/net/vhost_net.c):
//   TUNGETIFF (is there a vnet header?) → open → SET_OWNER → GET_FEATURES →
//   SET_FEATURES → SET_MEM_TABLE → per queue NUM, BASE, [ENDIAN], ADDR, KICK,
//   CALL, [ERR], [BUSYLOOP_TIMEOUT] → TUNSETVNETHDRSZ, TUNSETOFFLOAD →
//   NET_SET_BACKEND per queue (last: it starts the datapath).
// Feature negotiation is the pure negotiateNetFeatures().
import { describe as describeValue } from '../core/check';
import { closedError, invalidArg } from '../core/errors';
import { features } from '../core/features';
import { FdOwner, type FdLike } from '../core/fd';
import { native, type OwnedFd } from '../core/native';
import { Tap, TapQueue, tunFlags, tunOffload } from '../netdev/tap';
import type { VhostBackend } from './backend';
import { VhostDeviceBuilder } from './builder';
import { kernelMemoryLimits, VhostDevice } from './kernel/vhost-device';
import { VHOST_RING_BITS, type MemoryLimits, type QueuePlan } from './plan';
import { RunningVhostDevice, type RunningInit } from './running';
import { StepRunner, type BuildStep } from './steps';

/** The steps of a vhost-net bring-up: the shared ones, the tap's, and attaching the backend. */
export type NetBuildStep = BuildStep | 'TUNGETIFF' | 'TUNSETVNETHDRSZ' | 'TUNSETOFFLOAD' | 'NET_SET_BACKEND';

/** What the net builder drives: the vhost message set plus NET_SET_BACKEND. VhostNet implements it; so may a test's fake. */
export interface VhostNetBackend extends VhostBackend {
  /** Attaches `backend` (a tap or packet socket fd) to queue `index`; null detaches. */
  setBackend(index: number, backend: FdLike): void;
}

/** Queue index of a vhost-net device's receive ring (tap → guest). */
export const VHOST_NET_RX = 0;
/** Queue index of a vhost-net device's transmit ring (guest → tap). */
export const VHOST_NET_TX = 1;

/** A /dev/vhost-net fd. Owns it: close() or `using`. */
export class VhostNet extends VhostDevice implements VhostNetBackend {
  static readonly defaultPath = '/dev/vhost-net';

  private constructor(handle: OwnedFd) {
    super(handle);
  }

  /** Opens /dev/vhost-net (or `path`) O_RDWR | O_CLOEXEC. ENOENT says to load vhost_net. */
  static open(path: string = VhostNet.defaultPath): VhostNet {
    return new VhostNet(VhostDevice.openPath(path, { module: 'vhost_net', node: VhostNet.defaultPath }));
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
  static builder(): VhostNetBuilder<VhostNet> {
    return new VhostNetBuilder<VhostNet>((path) => VhostNet.open(path));
  }

  protected override uncheckedCalls(): VhostNetBackend {
    return { ...super.uncheckedCalls(), setBackend: (i, fd) => native.vhostNetSetBackend(this.handle, i, fd instanceof FdOwner ? fd.nativeHandle : fd) };
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


/** Bits of the virtio-net feature word that vhost-net implements itself: ring/transport bits and MRG_RXBUF. */
export const NET_VHOST_BITS = VHOST_RING_BITS | features.net.MRG_RXBUF;

/** sizeof(struct virtio_net_hdr) and sizeof(struct virtio_net_hdr_mrg_rxbuf). */
export type VnetHdrSize = 10 | 12;

/** Result of negotiateNetFeatures. */
export interface NetNegotiation {
  /** The word for VHOST_SET_FEATURES. */
  vhostFeatures: bigint;
  /** Size of the virtio-net header in the guest's buffers: 12 with VERSION_1 or MRG_RXBUF, else 10. */
  vnetHdrSize: VnetHdrSize;
  /** TUNSETOFFLOAD flags for the tap (0 when it has no vnet header: nothing to describe offloads with). */
  tapOffload: number;
  /** Acked bits vhost must implement but the device does not offer (0n when negotiation succeeds). */
  unsupported: bigint;
}

/** The virtio-net header size the guest uses with these features. */
export function vnetHdrSizeFor(bits: bigint): VnetHdrSize {
  return (bits & (features.ring.VERSION_1 | features.net.MRG_RXBUF)) !== 0n ? 12 : 10;
}

/**
 * TUNSETOFFLOAD flags from the guest's receive offloads, as QEMU's
 * virtio_net_apply_guest_offloads / tap_fd_set_offload: nothing without
 * GUEST_CSUM (the tap refuses TSO without checksum offload), ECN only with TSO.
 */
export function tapOffloadFor(acked: bigint): number {
  const has = (bit: bigint): boolean => (acked & bit) !== 0n;
  if (!has(features.net.GUEST_CSUM)) return 0;
  let flags = tunOffload.TUN_F_CSUM;
  const tso4 = has(features.net.GUEST_TSO4);
  const tso6 = has(features.net.GUEST_TSO6);
  if (tso4) flags |= tunOffload.TUN_F_TSO4;
  if (tso6) flags |= tunOffload.TUN_F_TSO6;
  if ((tso4 || tso6) && has(features.net.GUEST_ECN)) flags |= tunOffload.TUN_F_TSO_ECN;
  if (has(features.net.GUEST_UFO)) flags |= tunOffload.TUN_F_UFO;
  return flags;
}

/**
 * What to tell vhost-net and the tap, from the device's offer, the guest's
 * acknowledged bits and whether the tap carries a vnet header:
 * - vhost gets only bits it implements (ring/transport bits, MRG_RXBUF) that
 *   both sides have; device-only bits (MAC, CSUM, GSO, TSO/UFO/ECN, MQ, CTRL_*,
 *   MTU, STATUS, RSS, ...) are the VMM's business and never sent;
 *   LOG_ALL only by enableDirtyLog(); ACCESS_PLATFORM never (no IOTLB here).
 * - bit 27 (VHOST_NET_F_VIRTIO_NET_HDR) only when the tap has no vnet header,
 *   so vhost adds and strips the header itself. (Bit 27 acked by a guest is
 *   VIRTIO_F_ANY_LAYOUT, which means nothing to vhost.)
 */
export function negotiateNetFeatures(offered: bigint, acked: bigint, options: { tapHasVnetHdr: boolean }): NetNegotiation {
  const wanted = acked & NET_VHOST_BITS;
  let unsupported = wanted & ~offered;
  let vhostFeatures = wanted & offered;
  const hdr = features.vhost.NET_VIRTIO_NET_HDR;
  if (!options.tapHasVnetHdr) {
    if ((offered & hdr) !== 0n) vhostFeatures |= hdr;
    else unsupported |= hdr;
  }
  return {
    vhostFeatures,
    vnetHdrSize: vnetHdrSizeFor(acked),
    tapOffload: options.tapHasVnetHdr ? tapOffloadFor(acked) : 0,
    unsupported,
  };
}

/** A vhost-net backend: a Tap (its first queue), one TapQueue of a multi-queue tap, another socket's FdOwner, an fd number, or null. */
export type NetBackend = Tap | TapQueue | FdOwner | number | null;

/** Options of backend(). */
export interface NetBackendOptions {
  /**
   * Whether the backend carries a virtio-net header (IFF_VNET_HDR). Read from
   * the tap for a Tap / TapQueue; give it for an fd number or no backend.
   * Default true.
   */
  vnetHdr?: boolean;
}

interface BackendPlan {
  fd: Exclude<NetBackend, null> | null;
  tap?: Tap | TapQueue;
  vnetHdr?: boolean;
}

function checkBackend(backend: unknown, options: unknown): BackendPlan {
  if (typeof options !== 'object' || options === null) throw invalidArg('options', 'must be an object');
  const vnetHdr = (options as NetBackendOptions).vnetHdr;
  if (vnetHdr !== undefined && typeof vnetHdr !== 'boolean') throw invalidArg('options.vnetHdr', 'must be a boolean');
  if (backend instanceof Tap || backend instanceof TapQueue) {
    if (vnetHdr !== undefined) throw invalidArg('options.vnetHdr', 'is read from the tap itself (TUNGETIFF); leave it out');
    if (backend.closed) throw closedError('backend (Tap)', backend.path);
    return { fd: backend, tap: backend };
  }
  if (backend instanceof FdOwner) {
    if (backend.closed) throw closedError('backend', backend.path);
    return { fd: backend, vnetHdr };
  }
  if (typeof backend === 'number' && Number.isInteger(backend)) {
    if (backend < 0 || backend > 0x7fff_ffff) throw invalidArg('backend', `must be an fd number >= 0, got ${backend}`, 'ERR_VHOST_OUT_OF_RANGE');
    return { fd: backend, vnetHdr };
  }
  if (backend === null || backend === undefined) return { fd: null, vnetHdr };
  throw invalidArg('backend', `must be a Tap, a TapQueue, an fd owner, an fd number or null, got ${describeValue(backend)}`);
}

/** Whether the backend has a vnet header: TUNGETIFF for a tap, else the option (default true). */
function backendVnetHdr(plan: BackendPlan, runner: StepRunner<NetBuildStep>): boolean {
  const tap = plan.tap;
  if (!tap) return plan.vnetHdr ?? true;
  return runner.run('TUNGETIFF', undefined, () => (tap.iff.flags & tunFlags.IFF_VNET_HDR) !== 0);
}

/** Sets the tap's header size and offloads to what the guest negotiated (a tap with a vnet header only). */
function configureTap(tap: Tap | TapQueue, vnetHdrSize: number, offload: number, runner: StepRunner<NetBuildStep>): void {
  runner.run('TUNSETVNETHDRSZ', undefined, () => native.tapSetVnetHdrSize(tap.nativeHandle, vnetHdrSize));
  runner.run('TUNSETOFFLOAD', undefined, () => native.tapSetOffload(tap.nativeHandle, offload));
}

function attach(dev: VhostNetBackend, queues: readonly QueuePlan[], fd: Exclude<NetBackend, null> | null, runner: StepRunner<NetBuildStep>): void {
  for (const q of queues) runner.run('NET_SET_BACKEND', q.index, () => dev.setBackend(q.index, fd));
}

/**
 * Typed bring-up of a /dev/vhost-net device (one queue pair: 0 = rx, 1 = tx).
 * Get one with VhostNet.builder(). Everything is validated before the first
 * syscall; a failure midway closes what the builder opened and the error's
 * `.step` names the ioctl that failed (kernel code, errno, syscall kept).
 */
export class VhostNetBuilder<D extends VhostNetBackend = VhostNet> extends VhostDeviceBuilder<D> {
  protected readonly queueIndexes = [0, 1] as const;
  protected readonly deviceName = 'VhostNet';
  protected readonly featureKind = 'net';
  readonly #open: (path?: string) => D;
  #backend: BackendPlan = { fd: null };

  readonly #limits: (override?: number) => MemoryLimits;

  /**
   * @internal Use VhostNet.builder(). `open` opens the device (a path or the
   * default); `limits` says how its transport takes memory (the kernel's by default).
   */
  constructor(open: (path?: string) => D, limits: (override?: number) => MemoryLimits = kernelMemoryLimits) {
    super();
    this.#open = open;
    this.#limits = limits;
  }

  protected memoryLimits(override?: number): MemoryLimits {
    return this.#limits(override);
  }

  /**
   * The backend attached last (NET_SET_BACKEND on every queue): a Tap, one
   * TapQueue of a multi-queue tap, an fd number, or null / not called to
   * attach one later with attachBackend(). The tap's vnet header size and
   * offloads are set from the negotiated features before it is attached.
   */
  backend(backend: NetBackend, options: NetBackendOptions = {}): this {
    this.#backend = checkBackend(backend, options);
    return this;
  }

  /**
   * Validates everything, then brings the device up. Returns the running
   * device; on failure nothing the builder opened stays open and the error
   * carries `.step` (and `.queue`, `.trace`).
   */
  start(): RunningVhostNet<D> {
    const plan = this.planCommon([]);
    const backend = this.#backend;
    if (backend.fd instanceof FdOwner && backend.fd.closed) throw closedError('backend', backend.fd.path);
    const raw = this._vhostFeatures;
    const runner = new StepRunner<NetBuildStep>();
    // With exact vhost bits the caller decides about bit 27 and configures the tap.
    const vnetHdr = raw !== undefined ? (raw & features.vhost.NET_VIRTIO_NET_HDR) === 0n : backendVnetHdr(backend, runner);
    const negotiate = (offered: bigint): NetNegotiation =>
      raw !== undefined
        ? { vhostFeatures: raw, vnetHdrSize: vnetHdrSizeFor(raw), tapOffload: 0, unsupported: 0n }
        : negotiateNetFeatures(offered, this._acked!, { tapHasVnetHdr: vnetHdr });
    return this.bringUp(this.#open, runner, plan, negotiate, (dev, unchecked, neg) => {
      if (backend.tap && vnetHdr && raw === undefined) configureTap(backend.tap, neg.vnetHdrSize, neg.tapOffload, runner);
      if (backend.fd !== null) attach(unchecked, plan.queues, backend.fd, runner);
      return new RunningVhostNet({
        device: dev, features: neg.vhostFeatures, regions: plan.regions, queues: plan.queues, trace: runner.trace,
        vnetHdrSize: neg.vnetHdrSize, tapOffload: neg.tapOffload, backendVnetHdr: vnetHdr,
        configureTaps: raw === undefined, attached: backend.fd !== null,
      });
    });
  }
}

interface RunningNetInit<D> extends RunningInit<D> {
  vnetHdrSize: VnetHdrSize;
  tapOffload: number;
  backendVnetHdr: boolean;
  configureTaps: boolean;
  attached: boolean;
}

/**
 * A vhost-net device started by VhostNetBuilder. stop() detaches the backend
 * (NET_SET_BACKEND -1 on every queue) and returns each ring's base (GET_VRING_BASE);
 * close() stops then closes; `using` works; after close every method throws
 * ERR_VHOST_CLOSED.
 */
export class RunningVhostNet<D extends VhostNetBackend = VhostNet> extends RunningVhostDevice<D> {
  /** Virtio-net header size in the guest's buffers (and of the tap when it has a vnet header). */
  readonly vnetHdrSize: VnetHdrSize;
  /** TUNSETOFFLOAD flags the tap was given (0 when the tap has no vnet header). */
  readonly tapOffload: number;
  /** Whether the backend carries the vnet header (else vhost adds and strips it: VHOST_NET_F_VIRTIO_NET_HDR). */
  readonly backendVnetHdr: boolean;
  readonly #queues: QueuePlan[];
  readonly #configureTaps: boolean;
  #attached: boolean;

  /** @internal Created by VhostNetBuilder.start(). */
  constructor(init: RunningNetInit<D>) {
    super(init);
    this.vnetHdrSize = init.vnetHdrSize;
    this.tapOffload = init.tapOffload;
    this.backendVnetHdr = init.backendVnetHdr;
    this.#queues = init.queues;
    this.#configureTaps = init.configureTaps;
    this.#attached = init.attached;
  }

  /** Whether a backend is attached. */
  get backendAttached(): boolean {
    return this.running && this.#attached;
  }

  /**
   * Attaches a backend to every queue (after configuring a tap's header size
   * and offloads). Its vnet header must match what the device was started
   * with (`backendVnetHdr`). A failure carries `.step`.
   */
  attachBackend(backend: Exclude<NetBackend, null>, options: NetBackendOptions = {}): void {
    this.checkRunning('attachBackend');
    const plan = checkBackend(backend, options);
    if (plan.fd === null) throw invalidArg('backend', 'is required (use detachBackend() to detach)');
    const runner = new StepRunner<NetBuildStep>();
    const vnetHdr = backendVnetHdr(plan, runner);
    if (vnetHdr !== this.backendVnetHdr) {
      throw invalidArg('backend', `${vnetHdr ? 'has' : 'has no'} vnet header, but the device was started for a backend that ${this.backendVnetHdr ? 'has' : 'has none'}`);
    }
    if (plan.tap && vnetHdr && this.#configureTaps) configureTap(plan.tap, this.vnetHdrSize, this.tapOffload, runner);
    attach(this.backend, this.#queues, plan.fd, runner);
    this.#attached = true;
  }

  /** Detaches the backend from every queue (NET_SET_BACKEND -1); the rings keep their state. */
  detachBackend(): void {
    this.checkRunning('detachBackend');
    attach(this.backend, this.#queues, null, new StepRunner<NetBuildStep>());
    this.#attached = false;
  }

  protected quiesce(step: StepRunner<NetBuildStep>['step']): void {
    for (const q of this.#queues) step('NET_SET_BACKEND', q.index, () => this.backend.setBackend(q.index, null));
    this.#attached = false;
  }
}
