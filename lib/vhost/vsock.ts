// vhost-vsock: the host side of a virtio-vsock device (/dev/vhost-vsock), its
// builder and the running device. Two virtqueues: 0 = receive (host → guest),
// 1 = transmit (guest → host); the event queue is the VMM's, not the kernel's.
//
// VhostVsockBuilder brings a device up in QEMU's order
// (hw/virtio/vhost.c vhost_dev_start, hw/virtio/vhost-vsock.c):
//   open → SET_OWNER → GET_FEATURES → SET_FEATURES → SET_MEM_TABLE → per queue
//   NUM, BASE, [ENDIAN], ADDR, KICK, CALL, [ERR], [BUSYLOOP_TIMEOUT] →
//   SET_GUEST_CID (walking upward on EADDRINUSE for 'auto') → SET_RUNNING(1).
import { describe as describeValue } from '../core/check';
import { invalidArg, VhostError } from '../core/errors';
import { features } from '../core/features';
import { native, type OwnedFd } from '../core/native';
import type { VhostBackend } from './backend';
import { VhostDeviceBuilder } from './builder';
import { kernelMemoryLimits, VhostDevice } from './kernel/vhost-device';
import { VHOST_RING_BITS, type MemoryLimits } from './plan';
import { RunningVhostDevice, type RunningInit } from './running';
import { StepRunner, type BuildStep } from './steps';

/** The steps of a vhost-vsock bring-up: the shared ones, the CID, and starting the rings. */
export type VsockBuildStep = BuildStep | 'SET_GUEST_CID' | 'SET_RUNNING';

/** What the vsock builder drives: the vhost message set plus the kernel's CID and running switch. VhostVsock implements it. */
export interface VhostVsockBackend extends VhostBackend {
  /** The guest's context id; EADDRINUSE when another device holds it. */
  setGuestCid(cid: number): void;
  /** Starts (true) or stops (false) the rings. */
  setRunning(on: boolean): void;
}

/** Queue index of a vhost-vsock device's receive ring (host → guest). */
export const VHOST_VSOCK_RX = 0;
/** Queue index of a vhost-vsock device's transmit ring (guest → host). */
export const VHOST_VSOCK_TX = 1;

/** A /dev/vhost-vsock fd. Owns it: close() or `using`. */
export class VhostVsock extends VhostDevice implements VhostVsockBackend {
  static readonly defaultPath = '/dev/vhost-vsock';

  private constructor(handle: OwnedFd) {
    super(handle);
  }

  /** Opens /dev/vhost-vsock (or `path`) O_RDWR | O_CLOEXEC. ENOENT says to load vhost_vsock. */
  static open(path: string = VhostVsock.defaultPath): VhostVsock {
    return new VhostVsock(VhostDevice.openPath(path, { module: 'vhost_vsock', node: VhostVsock.defaultPath }));
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
  static builder(): VhostVsockBuilder<VhostVsock> {
    return new VhostVsockBuilder<VhostVsock>((path) => VhostVsock.open(path));
  }

  protected override uncheckedCalls(): VhostVsockBackend {
    return {
      ...super.uncheckedCalls(),
      setGuestCid: (cid) => {
        native.vhostVsockSetGuestCid(this.handle, BigInt(cid));
        this.noteForGc(`CID ${cid}`); // as setGuestCid() does: the warning names the CID a collected device frees
      },
      setRunning: (on) => native.vhostVsockSetRunning(this.handle, on),
    };
  }

  /**
   * VHOST_VSOCK_SET_GUEST_CID: the guest's context id. The kernel rejects
   * 0, 1, 2, 0xffffffff and anything wider than 32 bits (EINVAL), and a CID
   * another device holds (EADDRINUSE).
   */
  setGuestCid(cid: number | bigint): void {
    const v = VhostDevice.checkU64(cid, 'cid');
    native.vhostVsockSetGuestCid(this.handle, v);
    this.noteForGc(`CID ${v}`); // a collected device frees its CID: the warning names it
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


/** Lowest CID a guest may have (0 hypervisor, 1 local, 2 host are reserved). */
export const VSOCK_CID_MIN = 3;
/** Highest: 0xffffffff is VMADDR_CID_ANY, and the kernel takes 32 bits. */
export const VSOCK_CID_MAX = 0xffff_fffe;
/**
 * How many CIDs the automatic CID search tries by default, for cid('auto') and
 * prepareVsockForVmm({ cid: 'auto' }) alike: 4096, the larger of the two
 * limits they used to have (1024 and 4096), so neither gives up sooner than before.
 */
export const VSOCK_AUTO_CID_ATTEMPTS = 4096;

/** Bits of the virtio-vsock feature word vhost-vsock implements: ring/transport bits and the socket types. */
export const VSOCK_VHOST_BITS = VHOST_RING_BITS | features.vsock.STREAM | features.vsock.SEQPACKET | features.vsock.NO_IMPLIED_STREAM;

/** Result of negotiateVsockFeatures. */
export interface VsockNegotiation {
  /** The word for VHOST_SET_FEATURES. */
  vhostFeatures: bigint;
  /** Acked bits vhost-vsock must implement but does not offer (0n when negotiation succeeds). */
  unsupported: bigint;
}

/** Bits for VHOST_SET_FEATURES: what vhost-vsock implements, offers and the guest acked (never LOG_ALL, ACCESS_PLATFORM). */
export function negotiateVsockFeatures(offered: bigint, acked: bigint): VsockNegotiation {
  if (typeof offered !== 'bigint') throw invalidArg('offered', `must be a bigint, got ${describeValue(offered)}`);
  if (typeof acked !== 'bigint') throw invalidArg('acked', `must be a bigint, got ${describeValue(acked)}`);
  const wanted = acked & VSOCK_VHOST_BITS;
  return { vhostFeatures: wanted & offered, unsupported: wanted & ~offered };
}

/** Options of cid('auto'). */
export interface AutoCidOptions {
  /** First CID to try (default 3). */
  from?: number;
  /** How many consecutive CIDs to try before giving up (default VSOCK_AUTO_CID_ATTEMPTS, 4096). */
  attempts?: number;
}

type CidPlan = { auto: false; cid: number } | { auto: true; from: number; attempts: number };

function checkCid(value: unknown, arg: string): number {
  let n: number;
  if (typeof value === 'bigint') {
    if (value < 0n || value > 0xffff_ffffn) throw invalidArg(arg, `must be in ${VSOCK_CID_MIN}..${VSOCK_CID_MAX}, got ${describeValue(value)}`, 'ERR_VHOST_OUT_OF_RANGE');
    n = Number(value);
  } else if (typeof value === 'number' && Number.isInteger(value)) {
    n = value;
  } else {
    throw invalidArg(arg, `must be an integer CID or 'auto', got ${describeValue(value)}`);
  }
  if (n < VSOCK_CID_MIN || n > VSOCK_CID_MAX) {
    throw invalidArg(arg, `must be in ${VSOCK_CID_MIN}..${VSOCK_CID_MAX} (0, 1, 2 and 0xffffffff are reserved), got ${n}`, 'ERR_VHOST_OUT_OF_RANGE');
  }
  return n;
}

/**
 * Typed bring-up of a /dev/vhost-vsock device (queues 0 = rx and 1 = tx, both
 * required; the event queue stays with the VMM). Get one with
 * VhostVsock.builder(). Validation precedes any syscall; a failure midway
 * closes what the builder opened and names the step.
 */
export class VhostVsockBuilder<D extends VhostVsockBackend = VhostVsock> extends VhostDeviceBuilder<D> {
  protected readonly queueIndexes = [0, 1] as const;
  protected readonly deviceName = 'VhostVsock';
  protected readonly featureKind = 'vsock';
  readonly #open: (path?: string) => D;
  #cid?: CidPlan;

  readonly #limits: (override?: number) => MemoryLimits;

  /**
   * @internal Use VhostVsock.builder(). `open` opens the device (a path or the
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
   * The guest's context id (required): 3..0xfffffffe, or 'auto' to take the
   * first free one from `from` (default 3) upward, trying `attempts` (default
   * 4096) CIDs. Free means the kernel accepted it (EADDRINUSE otherwise), so
   * concurrent allocations, in this process or others, never get the same CID.
   */
  cid(cid: number | bigint | 'auto', options: AutoCidOptions = {}): this {
    if (typeof options !== 'object' || options === null) throw invalidArg('options', 'must be an object');
    if (cid === 'auto') {
      const from = checkCid(options.from ?? VSOCK_CID_MIN, 'options.from');
      const attempts = options.attempts ?? VSOCK_AUTO_CID_ATTEMPTS;
      if (typeof attempts !== 'number' || !Number.isInteger(attempts) || attempts < 1) {
        throw invalidArg('options.attempts', `must be a positive integer, got ${describeValue(attempts)}`, 'ERR_VHOST_OUT_OF_RANGE');
      }
      this.#cid = { auto: true, from, attempts };
    } else {
      if (options.from !== undefined || options.attempts !== undefined) throw invalidArg('options', "from / attempts only apply to cid('auto')");
      this.#cid = { auto: false, cid: checkCid(cid, 'cid') };
    }
    return this;
  }

  /**
   * Validates everything, then brings the device up: rings set up, CID set,
   * SET_RUNNING(1) last. On failure nothing the builder opened stays open
   * (closing the device releases the CID) and the error carries `.step`.
   */
  start(): RunningVhostVsock<D> {
    const plan = this.planCommon([0, 1]);
    const cidPlan = this.#cid;
    if (cidPlan === undefined) throw invalidArg('cid', "is required: call .cid(number) or .cid('auto')");
    const raw = this._vhostFeatures;
    const runner = new StepRunner<VsockBuildStep>();
    const negotiate = (offered: bigint): VsockNegotiation =>
      raw !== undefined ? { vhostFeatures: raw, unsupported: 0n } : negotiateVsockFeatures(offered, this._acked!);
    return this.bringUp(this.#open, runner, plan, negotiate, (dev, unchecked, neg) => {
      const setCid = (c: number): void => runner.run('SET_GUEST_CID', undefined, () => unchecked.setGuestCid(c));
      const cid = cidPlan.auto ? allocateCidOrExplain(setCid, cidPlan.from, cidPlan.attempts) : cidPlan.cid;
      if (!cidPlan.auto) setCid(cid);
      runner.run('SET_RUNNING', undefined, () => unchecked.setRunning(true));
      return new RunningVhostVsock({ device: dev, features: neg.vhostFeatures, regions: plan.regions, queues: plan.queues, trace: runner.trace, cid });
    });
  }
}

/**
 * The automatic CID search: calls `setCid` (VHOST_VSOCK_SET_GUEST_CID) with
 * CIDs from `from` upward, at most `attempts` of them and never past
 * VSOCK_CID_MAX, and returns the first one it accepts. EADDRINUSE means
 * another device holds that CID: the search goes on; any other error is
 * rethrown at once. When every CID tried is in use, the last EADDRINUSE is
 * thrown as it came. Arguments are not checked (callers have).
 * @internal Used by VhostVsockBuilder and prepareVsockForVmm.
 */
export function allocateCid(setCid: (cid: number) => void, from: number = VSOCK_CID_MIN, attempts: number = VSOCK_AUTO_CID_ATTEMPTS): number {
  let last: unknown;
  for (let n = 0, cid = from; n < attempts && cid <= VSOCK_CID_MAX; n++, cid++) {
    try {
      setCid(cid);
      return cid;
    } catch (err) {
      if ((err as VhostError | null)?.code !== 'EADDRINUSE') throw err;
      last = err;
    }
  }
  if (last === undefined) throw invalidArg('attempts', `must allow at least one CID from ${from} up to ${VSOCK_CID_MAX} (got ${attempts})`, 'ERR_VHOST_OUT_OF_RANGE');
  throw last;
}

/** allocateCid, with the range tried added to the message of the final EADDRINUSE. */
function allocateCidOrExplain(setCid: (cid: number) => void, from: number, attempts: number): number {
  try {
    return allocateCid(setCid, from, attempts);
  } catch (err) {
    if ((err as VhostError | null)?.code === 'EADDRINUSE') {
      (err as VhostError).message += ` (cid 'auto': CIDs ${from}..${Math.min(from + attempts - 1, VSOCK_CID_MAX)} are all in use)`;
    }
    throw err;
  }
}

interface RunningVsockInit<D> extends RunningInit<D> {
  cid: number;
}

/**
 * A vhost-vsock device started by VhostVsockBuilder. stop() is SET_RUNNING(0)
 * then GET_VRING_BASE per queue; close() stops then closes (releasing the
 * CID); `using` works; after close every method throws ERR_VHOST_CLOSED.
 */
export class RunningVhostVsock<D extends VhostVsockBackend = VhostVsock> extends RunningVhostDevice<D> {
  /** The guest CID the device holds. */
  readonly cid: number;

  /** @internal Created by VhostVsockBuilder.start(). */
  constructor(init: RunningVsockInit<D>) {
    super(init);
    this.cid = init.cid;
  }

  protected quiesce(step: StepRunner<VsockBuildStep>['step']): void {
    step('SET_RUNNING', undefined, () => this.backend.setRunning(false));
  }
}
