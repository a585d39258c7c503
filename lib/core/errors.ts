// Errors of this library. Syscall failures come from the addon already shaped
// like Node core's (code, errno, syscall, path); validation errors are thrown
// before any syscall with an ERR_VHOST_* code that names the argument.

/** Every error the library throws: a failed syscall (code 'EBUSY', errno, syscall, path, as Node core shapes them) or a validation error (code 'ERR_VHOST_*', the argument named). */
export class VhostError extends Error {
  /** 'EBUSY', 'ENOENT', ... for syscall failures; 'ERR_VHOST_*' for validation. */
  code!: string;
  /** Negative errno, as in Node core (-16 for EBUSY); absent for validation errors. */
  errno?: number;
  /** e.g. 'ioctl(VHOST_SET_OWNER)' */
  syscall?: string;
  /** The device or file the call was made on. */
  path?: string;
  /** What the user can do about it, when we know. */
  hint?: string;
  /** For builder errors: the step that failed, e.g. 'SET_VRING_ADDR'. */
  step?: string;
  /** For builder errors: the queue the failed step concerned. */
  queue?: number;
  /** For builder errors: the steps issued up to and including the failed one ('SET_VRING_NUM[0]', ...). */
  trace?: string[];
  /** For validation errors: the argument at fault, e.g. 'queue(0).desc'. */
  argument?: string;

  constructor(message: string, props?: Partial<Pick<VhostError, 'code' | 'errno' | 'syscall' | 'path' | 'hint' | 'step' | 'queue' | 'trace' | 'argument'>>) {
    super(message);
    this.name = 'VhostError';
    if (props) Object.assign(this, props);
  }
}

/** Validation error codes. */
export type VhostErrorCode =
  | 'ERR_VHOST_INVALID_ARG'
  | 'ERR_VHOST_OUT_OF_RANGE'
  | 'ERR_VHOST_CLOSED'
  | 'ERR_VHOST_UNSUPPORTED';

/** A validation error thrown before any syscall. `arg` names the argument at fault. */
export function invalidArg(arg: string, reason: string, code: VhostErrorCode = 'ERR_VHOST_INVALID_ARG'): VhostError {
  if (typeof arg !== 'string') arg = typeof arg; // a caller's label that is not a string is never stringified
  return new VhostError(`${code}: ${arg} ${reason}`, { code, argument: arg });
}

/** Use-after-close of a library object. */
export function closedError(what: string, path?: string): VhostError {
  return new VhostError(`ERR_VHOST_CLOSED: ${what} is closed${path ? ` '${path}'` : ''}`, { code: 'ERR_VHOST_CLOSED', path });
}

/**
 * What a module tells its users about an error code it knows: a hint, or a
 * function of the error giving one (undefined: nothing to say). Each module
 * declares its own (which kernel module, device node, capability); core/ knows
 * no devices.
 */
export type Hints = Readonly<Record<string, string | ((err: VhostError) => string | undefined)>>;

/** Adds the hint `hints` gives for err.code to err.hint and the message (an error that has a hint keeps it). Returns err. */
export function withHint(err: unknown, hints: Hints): unknown {
  if (err instanceof VhostError && err.hint === undefined && typeof err.code === 'string' && Object.hasOwn(hints, err.code)) {
    const h = hints[err.code];
    const hint = typeof h === 'function' ? h(err) : h;
    if (hint) {
      err.hint = hint;
      err.message += ` (${hint})`;
    }
  }
  return err;
}

/** A device node a kernel module provides, as the module that opens it describes it. */
export interface DeviceNode {
  /** The kernel module(s) that create the node: 'vhost_net', or 'kvm_intel or kvm_amd'. */
  module: string;
  /** The node's usual path: '/dev/vhost-net'. */
  node: string;
  /** The group that usually owns the node (e.g. 'kvm'), when distributions set one. */
  group?: string;
  /** The capability EPERM means is missing (e.g. 'CAP_NET_ADMIN' for a tap). */
  capability?: string;
}

/** modprobe words for 'a or b': 'modprobe a (or b)'. */
const modprobe = (module: string): string => `modprobe ${module.split(' or ').join(' (or ')}${module.includes(' or ') ? ')' : ''}`;

/** Hints for opening (and then configuring) a device node: ENOENT → which module, EACCES → permissions, EPERM → the capability. */
export function deviceNodeHints(device: DeviceNode): Hints {
  const { module, node, group, capability } = device;
  return {
    ENOENT: (err) => (err.path === undefined || err.path === node
      ? `${node} is missing: the ${module} module is not loaded: ${modprobe(module)}`
      : `no such device node; ${node} comes from the ${module} module (${modprobe(module)})`),
    EACCES: (err) => `no permission on ${err.path ?? node}: run as root, or give your user read/write access${group ? ` (add it to the ${group} group)` : ` (e.g. a udev rule and a group for ${node})`}`,
    EPERM: (err) => (capability ? `${err.syscall ?? 'this operation'} needs ${capability}: run as root or grant the process ${capability}` : `operation on ${err.path ?? node} not permitted: run as root`),
  };
}

/** Adds the hint of a device node to errors a user meets opening or configuring it (module missing, permissions). */
export function withDeviceHint(err: unknown, device: DeviceNode): unknown {
  return withHint(err, deviceNodeHints(device));
}
