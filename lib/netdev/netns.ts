// Network namespaces kept the way iproute2 keeps them: a bind mount of the
// namespace file on /run/netns/<name>, so `ip netns` sees the same ones. A
// NetNs owns an fd of its namespace (for IFLA_NET_NS_FD and for route sockets
// opened inside it); the namespace it created is deleted on dispose. One it
// creates gets a note naming its creator (netdev/creator.ts).
import * as fs from 'node:fs';
import '../core/dispose';
import { checkNonEmptyString } from '../core/check';
import { invalidArg, withHint, type Hints } from '../core/errors';
import { FdOwner } from '../core/fd';
import { removeNetnsNote, writeNetnsNote } from './creator';
import { Rtnl } from './links';
import { native, type OwnedFd } from '../core/native';

const NETNS_DIR = '/run/netns';

function checkName(value: unknown): string {
  const name = checkNonEmptyString(value, 'name');
  if (name === '.' || name === '..' || /[/\0]/.test(name)) throw invalidArg('name', "must be a file name (no '/', NUL, '.' or '..')");
  if (Buffer.byteLength(name) > 255) throw invalidArg('name', 'must be at most 255 bytes');
  return name;
}

/** What the kernel's refusals mean for named namespaces (unshare, the bind mount on /run/netns, umount). */
const NETNS_HINTS: Hints = {
  EPERM: 'creating, entering or deleting a named network namespace needs CAP_SYS_ADMIN (unshare, mount on /run/netns): run as root',
  EACCES: `no permission on ${NETNS_DIR}: named network namespaces need root (CAP_SYS_ADMIN and write access to ${NETNS_DIR})`,
  ENOENT: (err) => `no network namespace ${err.path ?? ''} (\`ip netns list\` shows the named ones)`,
};

/** A named network namespace. Dispose closes its fd and, if this object created it, deletes it. */
export class NetNs extends FdOwner {
  readonly name: string;
  readonly #owned: boolean;

  private constructor(handle: OwnedFd, name: string, owned: boolean) {
    super(handle);
    this.name = name;
    this.#owned = owned;
  }

  /** Like `ip netns add <name>`: EEXIST when the name is taken, EPERM without CAP_SYS_ADMIN. */
  static create(name: string): NetNs {
    checkName(name);
    try {
      native.netnsCreate(name);
    } catch (err) {
      throw withHint(err, NETNS_HINTS);
    }
    let handle: OwnedFd | undefined;
    try {
      handle = native.netnsOpen(`${NETNS_DIR}/${name}`);
      // Who made it (netdev/creator.ts): cleanupOrphans() removes it once this process is gone.
      writeNetnsNote(name, `${NETNS_DIR}/${name}`);
      return new NetNs(handle, name, true);
    } catch (err) {
      handle?.close();
      native.netnsDelete(name);
      removeNetnsNote(name);
      throw err;
    }
  }

  /** Opens an existing namespace by name (ENOENT if none); dispose only closes the fd. */
  static open(name: string): NetNs {
    checkName(name);
    try {
      return new NetNs(native.netnsOpen(`${NETNS_DIR}/${name}`), name, false);
    } catch (err) {
      throw withHint(err, NETNS_HINTS);
    }
  }

  /** Like `ip netns delete <name>`. */
  static delete(name: string): void {
    try {
      native.netnsDelete(checkName(name));
    } catch (err) {
      throw withHint(err, NETNS_HINTS);
    }
    removeNetnsNote(name);
  }

  /** Names under /run/netns (like `ip netns list`). */
  static list(): string[] {
    try {
      return fs.readdirSync(NETNS_DIR).sort();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }

  /** A route socket inside this namespace: links listed, created or changed through it live here. */
  rtnl(): Rtnl {
    return Rtnl.open(this);
  }

  /** Closes the fd, then deletes the namespace if this object created it. Idempotent. */
  override close(): void {
    if (this.closed) return;
    super.close();
    if (this.#owned) {
      native.netnsDelete(this.name);
      removeNetnsNote(this.name);
    }
  }
}
