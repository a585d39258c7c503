// The typed builder over a vhost-user front-end: the same bring-up as the
// kernel devices' (VhostDeviceBuilder: owner, features, memory table, each
// ring's num/base/addr/kick/call, checked as a whole first), over a VhostUser
// connection instead of a device node. What differs is declared here: memory
// goes by file (at most 8 regions, VHOST_MEMORY_BASELINE_NREGIONS), the
// back-end implements the whole device so every acked bit it offers is passed
// on, and with protocol features the rings start disabled until
// SET_VRING_ENABLE (QEMU's vhost_user_set_vring_enable after the setup).
import { invalidArg } from '../../core/errors';
import { VhostDeviceBuilder, type FeatureNegotiation } from '../builder';
import type { MemoryLimits } from '../plan';
import { RunningVhostDevice, type RunningInit } from '../running';
import { StepRunner, type BuildStep } from '../steps';
import { MAX_MEM_REGIONS, VhostUserProtocolFeature } from './messages';
import { VhostUser } from './vhost-user';

/** The steps of a vhost-user bring-up: the shared ones and enabling the rings. */
export type VhostUserBuildStep = BuildStep | 'SET_VRING_ENABLE' | 'RESET_DEVICE';

/** VHOST_USER_F_PROTOCOL_FEATURES: a transport bit, set by VhostUser.setFeatures itself. */
const PROTOCOL_FEATURES_BIT = 1n << 30n;

/** Options of new VhostUserBuilder(). */
export interface VhostUserBuilderOptions {
  /** How many rings the device has (valid queue indexes 0..queues-1). Default: GET_QUEUE_NUM with the MQ protocol feature, else 2. */
  queues?: number;
}

/**
 * Brings up a device served by a vhost-user back-end, given a connected
 * VhostUser. Validation precedes the first message; a message the back-end
 * refuses names its step, and the back-end is reset (best effort) so it holds
 * no half-made configuration. The connection stays the caller's until start()
 * succeeds; then the running device owns it.
 */
export class VhostUserBuilder extends VhostDeviceBuilder<VhostUser> {
  protected readonly queueIndexes: readonly number[];
  protected readonly deviceName = 'VhostUser';
  protected readonly featureKind = undefined;
  readonly #dev: VhostUser;

  constructor(device: VhostUser, options: VhostUserBuilderOptions = {}) {
    super();
    if (!(device instanceof VhostUser)) throw invalidArg('device', 'must be a VhostUser (VhostUser.connect(path))');
    if (typeof options !== 'object' || options === null) throw invalidArg('options', 'must be an object');
    const queues = options.queues ?? (device.hasProtocolFeature(VhostUserProtocolFeature.MQ) ? device.getQueueNum() : 2);
    if (typeof queues !== 'number' || !Number.isInteger(queues) || queues < 1 || queues > 0x8000) {
      throw invalidArg('options.queues', 'must be an integer in 1..32768', 'ERR_VHOST_OUT_OF_RANGE');
    }
    this.queueIndexes = Array.from({ length: queues }, (_, i) => i);
    this.#dev = device;
    this.device(device);
  }

  protected memoryLimits(override?: number): MemoryLimits {
    return { maxRegions: override ?? MAX_MEM_REGIONS, limitName: "vhost-user's limit of regions per SET_MEM_TABLE", access: 'fd' };
  }

  /**
   * Validates everything, then brings the device up over the connection;
   * with protocol features, SET_VRING_ENABLE(1) on every ring last.
   */
  start(): RunningVhostUser {
    const plan = this.planCommon([]);
    const raw = this._vhostFeatures;
    const runner = new StepRunner<VhostUserBuildStep>();
    const negotiate = (offered: bigint): FeatureNegotiation => {
      if (raw !== undefined) return { vhostFeatures: raw, unsupported: 0n };
      const acked = this._acked! & ~PROTOCOL_FEATURES_BIT;
      return { vhostFeatures: acked & offered, unsupported: acked & ~offered };
    };
    const dev = this.#dev;
    try {
      return this.bringUp(() => dev, runner, plan, negotiate, (device, backend, neg) => {
        if (device.protocolFeatures !== 0n) {
          for (const q of plan.queues) runner.run('SET_VRING_ENABLE', q.index, () => backend.setVringEnable(q.index, true));
        }
        return new RunningVhostUser({ device, features: neg.vhostFeatures, regions: plan.regions, queues: plan.queues, trace: runner.trace });
      });
    } catch (err) {
      if (dev.connected) {
        try {
          dev.resetDevice();
        } catch {
          // the bring-up's own error says what went wrong
        }
      }
      throw err;
    }
  }
}

/**
 * A device started by VhostUserBuilder. stop() disables the rings (with
 * protocol features) and reads each ring's base (GET_VRING_BASE, which also
 * stops it in the back-end); close() stops then closes the connection.
 */
export class RunningVhostUser extends RunningVhostDevice<VhostUser> {
  readonly #queues: readonly number[];

  /** @internal Created by VhostUserBuilder.start(). */
  constructor(init: RunningInit<VhostUser>) {
    super(init);
    this.#queues = init.queues.map((q) => q.index);
  }

  protected quiesce(step: StepRunner<VhostUserBuildStep>['step']): void {
    if (this.device.protocolFeatures === 0n) return;
    for (const i of this.#queues) step('SET_VRING_ENABLE', i, () => this.backend.setVringEnable(i, false));
  }
}
