// The typed builder base: configuration shared by every device's builder
// (memory, features, queues, which device), validated at once per call and
// as a whole in start() before any syscall; then the bring-up in QEMU's order
// over any VhostBackend, closing what it opened when a step fails. A device's
// file (net.ts, vsock.ts) adds its own options, negotiation and steps.
import { checkBool, checkObject, describe as describeValue } from '../core/check';
import { closedError, invalidArg } from '../core/errors';
import { describeFeatures, features, type FeatureKind } from '../core/features';
import type { MemoryLike } from '../core/memory';
import { uncheckedBackend, type VhostBackend } from './backend';
import { checkFeatureBits, checkMemory, checkMemoryArg, checkQueueSpec, planQueues, type CheckedRegion, type MemoryLimits, type QueuePlan, type QueueSpec } from './plan';
import { setUpQueue, stepFailure, type BuildStep, type StepRunner } from './steps';

/** What a device's feature negotiation decided; devices add their own fields (e.g. net's header size). */
export interface FeatureNegotiation {
  /** The word for VHOST_SET_FEATURES. */
  vhostFeatures: bigint;
  /** Acked bits vhost must implement but the device does not offer (0n when negotiation succeeds). */
  unsupported: bigint;
}

/** What planCommon checked: the merged memory regions and the placed queues. */
export interface CommonPlan {
  regions: CheckedRegion[];
  queues: QueuePlan[];
  eventIdxBits: bigint;
}

/** How the builder gets its device: open a path, or use one the caller holds. */
export interface DeviceSource<D> {
  dev?: D;
  path?: string;
  /** The caller already did SET_OWNER on `dev`: skip it. */
  owned: boolean;
}

/** Options of builder.device(). */
export interface DeviceOptions {
  /** This process already did SET_OWNER on the device (e.g. reusing a stopped device): skip SET_OWNER. */
  owned?: boolean;
}

/**
 * Configuration shared by VhostNetBuilder and VhostVsockBuilder. Each method
 * checks its arguments at once and returns the builder; start() checks the
 * whole (rings against memory, features against ring layout) before any syscall.
 */
export abstract class VhostDeviceBuilder<D extends VhostBackend> {
  protected _memory?: MemoryLike;
  protected _acked?: bigint;
  protected _vhostFeatures?: bigint;
  protected _maxMemRegions?: number;
  protected readonly _queues = new Map<number, ReturnType<typeof checkQueueSpec>['spec']>();
  protected _source: DeviceSource<D> = { owned: false };

  /** Queue indexes the device has. */
  protected abstract readonly queueIndexes: readonly number[];
  /** Device class name, for messages. */
  protected abstract readonly deviceName: string;
  /** Which feature names describe the device's bits in messages. */
  protected abstract readonly featureKind: FeatureKind | undefined;
  /** How the device's transport takes memory (its region limit, `override` when the caller set one with maxMemRegions()). */
  protected abstract memoryLimits(override?: number): MemoryLimits;

  /** Guest memory (a GuestMemory, or { regions: [{ gpa, size, hva }] }); required. Its regions become the memory table. */
  memory(mem: MemoryLike): this {
    this._memory = checkMemoryArg(mem);
    return this;
  }

  /**
   * The feature bits the guest driver acknowledged (required unless
   * vhostFeatures() is used). Only bits the device offers and vhost
   * implements reach VHOST_SET_FEATURES.
   */
  features(acked: bigint): this {
    if (this._vhostFeatures !== undefined) throw invalidArg('features', 'cannot be combined with vhostFeatures()');
    this._acked = checkFeatureBits(acked, 'features');
    return this;
  }

  /**
   * Escape hatch: the exact word for VHOST_SET_FEATURES, skipping negotiation
   * and filtering (the kernel refuses bits it does not offer with EOPNOTSUPP).
   */
  vhostFeatures(bits: bigint): this {
    if (this._acked !== undefined) throw invalidArg('vhostFeatures', 'cannot be combined with features()');
    this._vhostFeatures = checkFeatureBits(bits, 'vhostFeatures');
    return this;
  }

  /**
   * Queue `index` as the guest set it up (guest-physical ring addresses,
   * eventfds, optional base / busy-poll / endian). Each index at most once.
   */
  queue(index: number, spec: QueueSpec): this {
    const checked = checkQueueSpec(index, spec, this.queueIndexes);
    if (this._queues.has(checked.index)) throw invalidArg('queue index', `${checked.index} is configured twice`);
    this._queues.set(checked.index, checked.spec);
    return this;
  }

  /**
   * The device node to open (default /dev/vhost-net or /dev/vhost-vsock), or
   * an open device to use. A device passed in is not closed if start()
   * fails; once started, the running device owns it.
   */
  device(device: D | string, options: DeviceOptions = {}): this {
    checkObject(options, 'options');
    const owned = checkBool(options.owned ?? false, 'options.owned', null);
    if (typeof device === 'string') {
      if (device.length === 0) throw invalidArg('device', 'must be a non-empty path or an open device');
      if (owned) throw invalidArg('options.owned', 'needs an open device, not a path');
      this._source = { path: device, owned: false };
    } else if (typeof device === 'object' && device !== null && typeof (device as VhostBackend).setOwner === 'function') {
      if ((device as VhostBackend).closed) throw closedError(this.deviceName, (device as VhostBackend).path);
      this._source = { dev: device, owned };
    } else {
      throw invalidArg('device', `must be a ${this.deviceName} or a device path, got ${describeValue(device)}`);
    }
    return this;
  }

  /** Overrides the transport's region limit (the kernel's: max_mem_regions, read from /sys/module/vhost/parameters). */
  maxMemRegions(n: number): this {
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1) throw invalidArg('maxMemRegions', `must be a positive integer, got ${describeValue(n)}`);
    this._maxMemRegions = n;
    return this;
  }

  /** Validates everything shared (memory, queues, features); throws before any syscall. */
  protected planCommon(requiredQueues: readonly number[]): CommonPlan {
    if (this._memory === undefined) throw invalidArg('memory', 'is required: call .memory(guestMemory)');
    if (this._acked === undefined && this._vhostFeatures === undefined) {
      throw invalidArg('features', 'is required: call .features(bitsTheGuestAcked) (or .vhostFeatures(exactBits))');
    }
    if (this._queues.size === 0) throw invalidArg('queue', `at least one queue is required (${this.queueIndexes.join(', ')})`);
    for (const i of requiredQueues) if (!this._queues.has(i)) throw invalidArg(`queue(${i})`, `is required: ${this.deviceName} starts every ring`);
    const limits = this.memoryLimits(this._maxMemRegions);
    const given = this._source.dev;
    const regions = checkMemory(this._memory, given ? { ...limits, access: given.memoryAccess } : limits);
    const bits = this._vhostFeatures ?? this._acked!;
    const eventIdx = (bits & features.ring.RING_EVENT_IDX) !== 0n;
    return { regions, queues: planQueues(this._queues, regions, eventIdx), eventIdxBits: bits & features.ring.RING_EVENT_IDX };
  }

  /**
   * Opens (or takes) the device and programs it in QEMU's order: SET_OWNER,
   * GET_FEATURES, `negotiate` on the offer (acked bits the device lacks fail
   * SET_FEATURES with ERR_VHOST_UNSUPPORTED), SET_FEATURES, SET_MEM_TABLE, each
   * queue's setup; then `rest` for the device's own steps. The plan is valid
   * by then, so the calls go to the device's unchecked form (`backend`). On
   * any failure closes what it opened and rethrows with the step.
   */
  protected bringUp<N extends FeatureNegotiation, R>(
    open: (path?: string) => D,
    runner: StepRunner<BuildStep>,
    plan: CommonPlan,
    negotiate: (offered: bigint) => N,
    rest: (dev: D, backend: D, negotiated: N) => R,
  ): R {
    const src = this._source;
    let opened: D | undefined;
    try {
      const dev = src.dev ?? (opened = runner.run('open', undefined, () => open(src.path)));
      const backend = uncheckedBackend(dev);
      if (!src.owned) runner.run('SET_OWNER', undefined, () => backend.setOwner());
      const offered = runner.run('GET_FEATURES', undefined, () => backend.getFeatures());
      const neg = negotiate(offered);
      if (neg.unsupported !== 0n) {
        const names = describeFeatures(neg.unsupported, this.featureKind).join(', ');
        runner.fail('SET_FEATURES', undefined, stepFailure(`features the guest acked but the device does not offer: ${names} (offered 0x${offered.toString(16)})`, 'ERR_VHOST_UNSUPPORTED'));
      }
      runner.run('SET_FEATURES', undefined, () => backend.setFeatures(neg.vhostFeatures));
      runner.run('SET_MEM_TABLE', undefined, () => backend.setMemTable(plan.regions));
      for (const q of plan.queues) setUpQueue(backend, q, runner.step);
      return rest(dev, backend, neg);
    } catch (err) {
      opened?.close();
      throw err;
    }
  }
}
