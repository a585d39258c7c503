// Errors of this library. Syscall failures come from the addon already shaped
// like Node core's (code, errno, syscall, path); validation errors are thrown
// before any syscall with an ERR_VHOST_* code that names the argument.

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

  constructor(message: string, props?: Partial<Pick<VhostError, 'code' | 'errno' | 'syscall' | 'path' | 'hint' | 'step'>>) {
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
  const err = new VhostError(`${code}: ${arg} ${reason}`, { code });
  (err as VhostError & { argument: string }).argument = arg;
  return err;
}

/** Use-after-close of a library object. */
export function closedError(what: string, path?: string): VhostError {
  return new VhostError(`ERR_VHOST_CLOSED: ${what} is closed${path ? ` '${path}'` : ''}`, { code: 'ERR_VHOST_CLOSED', path });
}

function moduleFor(path: string): string | undefined {
  if (path.startsWith('/dev/vhost-vsock')) return 'vhost_vsock';
  if (path.startsWith('/dev/vhost-net')) return 'vhost_net';
  if (path === '/dev/net/tun') return 'tun';
  return undefined;
}

const DEVICE_HINTS: Record<string, (path: string) => string | undefined> = {
  ENOENT: (p) => {
    const mod = moduleFor(p);
    return mod ? `the ${mod} module is not loaded: modprobe ${mod}` : undefined;
  },
  EACCES: (p) => `no permission on ${p}: run as root, or give your user access (e.g. a udev rule and group for ${p})`,
  EPERM: (p) => (p === '/dev/net/tun' ? 'creating or configuring a tap needs CAP_NET_ADMIN' : `operation on ${p} not permitted: run as root or grant CAP_NET_ADMIN`),
};

/** Adds a hint to errors a user meets when opening devices (module missing, permissions). */
export function withDeviceHint(err: unknown): unknown {
  if (err instanceof VhostError && err.path && err.code in DEVICE_HINTS) {
    const hint = DEVICE_HINTS[err.code](err.path);
    if (hint) {
      err.hint = hint;
      err.message += ` (${hint})`;
    }
  }
  return err;
}
