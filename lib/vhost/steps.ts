// The steps of a bring-up: each named after its message ('SET_VRING_NUM'),
// run in order with a trace, and a failure tagged with its step and queue.
// Devices name their own extra steps (net.ts: 'TUNGETIFF', 'NET_SET_BACKEND';
// vsock.ts: 'SET_GUEST_CID', 'SET_RUNNING'); this file knows none of them.
import { VhostError } from '../core/errors';
import type { VhostBackend } from './backend';
import type { QueuePlan } from './plan';

/**
 * The steps every vhost device's bring-up shares, named after their messages
 * (and 'open' for opening the device). A device adds its own (NetBuildStep,
 * VsockBuildStep); a StepRunner takes any of them.
 */
export type BuildStep =
  | 'open'
  | 'SET_OWNER'
  | 'GET_FEATURES'
  | 'SET_FEATURES'
  | 'SET_MEM_TABLE'
  | 'SET_VRING_NUM'
  | 'SET_VRING_BASE'
  | 'SET_VRING_ENDIAN'
  | 'SET_VRING_ADDR'
  | 'SET_VRING_KICK'
  | 'SET_VRING_CALL'
  | 'SET_VRING_ERR'
  | 'SET_VRING_BUSYLOOP_TIMEOUT'
  | 'SET_VRING_ENABLE'
  | 'GET_VRING_BASE'
  | 'SET_LOG_BASE';

/**
 * A failed step of a builder or running device: the kernel's error (code,
 * errno, syscall, path kept) plus the step, the queue it concerned, and the
 * steps issued up to and including the failed one.
 */
export interface StepError<S extends string = BuildStep> extends VhostError {
  step: S;
  queue?: number;
  trace: string[];
}

/** Runs steps in order, recording each in `trace` ('SET_VRING_NUM[0]'), and tags a failure with its step. */
export class StepRunner<S extends string = string> {
  readonly trace: string[] = [];

  run<T>(step: S, queue: number | undefined, fn: () => T): T {
    this.trace.push(queue === undefined ? step : `${step}[${queue}]`);
    try {
      return fn();
    } catch (err) {
      throw tagStep(err, step, queue, this.trace);
    }
  }

  /** Tags `err` with `step` without recording a call (a failure decided here, not by the kernel). */
  fail(step: S, queue: number | undefined, err: unknown): never {
    throw tagStep(err, step, queue, this.trace);
  }

  /** Bound form of run() for helpers that take a step callback. */
  readonly step = <T>(step: S, queue: number | undefined, fn: () => T): T => this.run(step, queue, fn);
}

function tagStep(err: unknown, step: string, queue: number | undefined, trace: string[]): unknown {
  if (typeof err !== 'object' || err === null) return err;
  const e = err as Partial<StepError<string>> & Error;
  e.step = step;
  if (queue !== undefined) e.queue = queue;
  e.trace = [...trace];
  if (typeof e.message === 'string') e.message += ` [step ${step}${queue === undefined ? '' : ` queue ${queue}`}]`;
  return err;
}

/** A failure that is not the kernel's but belongs to a step (e.g. features the device lacks). */
export function stepFailure(message: string, code: 'ERR_VHOST_UNSUPPORTED' | 'ERR_VHOST_INVALID_ARG'): VhostError {
  return new VhostError(`${code}: ${message}`, { code });
}

/** Writes the queue setup ioctls for one queue, in QEMU's order. */
export function setUpQueue(dev: VhostBackend, q: QueuePlan, step: StepRunner<BuildStep>['step']): void {
  const i = q.index;
  step('SET_VRING_NUM', i, () => dev.setVringNum(i, q.size));
  step('SET_VRING_BASE', i, () => dev.setVringBase(i, q.base));
  if (q.endian !== undefined) step('SET_VRING_ENDIAN', i, () => optional(dev, 'setVringEndian')(i, q.endian!));
  step('SET_VRING_ADDR', i, () => dev.setVringAddr(i, { desc: q.hva.desc, avail: q.hva.avail, used: q.hva.used }));
  step('SET_VRING_KICK', i, () => dev.setVringKick(i, q.kick));
  step('SET_VRING_CALL', i, () => dev.setVringCall(i, q.call));
  if (q.err !== undefined) step('SET_VRING_ERR', i, () => dev.setVringErr(i, q.err!));
  if (q.busyloopTimeout !== undefined) step('SET_VRING_BUSYLOOP_TIMEOUT', i, () => optional(dev, 'setVringBusyloopTimeout')(i, q.busyloopTimeout!));
}


/** A call the contract leaves optional, bound to `dev`; ERR_VHOST_UNSUPPORTED when this transport lacks it. */
export function optional<K extends 'setVringEndian' | 'setVringBusyloopTimeout' | 'setVringEnable'>(dev: VhostBackend, name: K): NonNullable<VhostBackend[K]> {
  const fn = dev[name];
  if (typeof fn !== 'function') throw stepFailure(`${dev.path} has no ${name}() (its transport does not offer it)`, 'ERR_VHOST_UNSUPPORTED');
  return fn.bind(dev) as NonNullable<VhostBackend[K]>;
}
