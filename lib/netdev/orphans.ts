// Objects left behind by a process that died without closing them: the
// links (bridges, veths, macvtaps, persistent taps) and named network
// namespaces the library marked with their creator (netdev/creator.ts) whose
// creator is gone. listOrphans() finds them, cleanupOrphans() removes them;
// `linux-vhost cleanup` is the same from the command line. Nothing without
// a mark is ever touched, nor anything whose creator still runs or cannot be
// judged (a mark from another pid namespace).
import * as fs from 'node:fs';
import { checkBool, checkObject } from '../core/check';
import { VhostError } from '../core/errors';
import { checkLabel, creatorState, listNetnsNotes, netnsIdentity, parseMark, readNetnsNote, removeNetnsNote, type CreatorMark, type CreatorState } from './creator';
import { Rtnl } from './links';
import { NetNs } from './netns';

const NETNS_DIR = '/run/netns';

/** A kernel object carrying the library's creator mark. */
export interface MarkedObject {
  /** 'link': a network interface; 'netns': a named network namespace (/run/netns/<name>). */
  type: 'link' | 'netns';
  name: string;
  /** For a link: IFLA_INFO_KIND ('bridge', 'veth', 'macvtap', 'tun'). */
  kind?: string;
  /** For a link: the named netns it lives in, undefined for this process's own namespace. */
  netns?: string;
  creator: CreatorMark;
  /** Whether the creator still runs (see creatorState). */
  state: CreatorState;
}

/** A marked object whose creator is gone. */
export interface Orphan extends MarkedObject {
  state: 'exited' | 'pid-reused';
}

/** Which orphans listOrphans() returns: all, or those made under one label. */
export interface OrphanFilter {
  /** Only objects whose mark carries this label (setCreatorLabel / LINUX_VHOST_LABEL). */
  label?: string;
}

/** Options of cleanupOrphans(). */
export interface CleanupOptions extends OrphanFilter {
  /** List what would be removed, remove nothing. */
  dryRun?: boolean;
}

/** What cleanupOrphans() removed (or would remove) and what it could not. */
export interface CleanupResult {
  dryRun: boolean;
  /** Removed (or, with dryRun, to be removed); links first, then namespaces. */
  removed: Orphan[];
  /** Orphans whose removal failed, with the error. */
  failed: { orphan: Orphan; error: Error }[];
}

/** Inode of a network namespace file. */
function nsInode(path: string): bigint | undefined {
  try {
    return fs.statSync(path, { bigint: true }).ino;
  } catch {
    return undefined;
  }
}

/** Marked links reachable through `rtnl`. */
function markedLinks(rtnl: Rtnl, netns: string | undefined): MarkedObject[] {
  const out: MarkedObject[] = [];
  for (const link of rtnl.listLinks()) {
    const creator = parseMark(link.alias);
    if (!creator) continue;
    const obj: MarkedObject = { type: 'link', name: link.name, kind: link.kind, creator, state: creatorState(creator) };
    if (netns !== undefined) obj.netns = netns;
    out.push(obj);
  }
  return out;
}

/** Named namespaces other than this process's own, each once (two names may bind one namespace). */
function otherNamespaces(): string[] {
  const seen = new Set<bigint | undefined>([nsInode('/proc/self/ns/net')]);
  const names: string[] = [];
  for (const name of NetNs.list()) {
    const ino = nsInode(`${NETNS_DIR}/${name}`);
    if (ino === undefined || seen.has(ino)) continue;
    seen.add(ino);
    names.push(name);
  }
  return names;
}

/**
 * Every object carrying the library's mark: links in this process's network
 * namespace and in each named one, then named namespaces whose note matches
 * them (same inode and ctime: a namespace made again under that name by
 * someone else is not ours).
 */
export function listMarked(filter: OrphanFilter = {}): MarkedObject[] {
  checkObject(filter, 'options');
  const label = filter.label === undefined ? undefined : checkLabel(filter.label);
  const out: MarkedObject[] = [];
  const rtnl = Rtnl.open();
  try {
    out.push(...markedLinks(rtnl, undefined));
  } finally {
    rtnl.close();
  }
  for (const name of otherNamespaces()) {
    let ns: NetNs;
    try {
      ns = NetNs.open(name);
    } catch {
      continue; // deleted meanwhile, or not a namespace file
    }
    try {
      const inner = ns.rtnl();
      try {
        out.push(...markedLinks(inner, name));
      } finally {
        inner.close();
      }
    } finally {
      ns.close();
    }
  }
  for (const name of listNetnsNotes()) {
    const note = readNetnsNote(name);
    if (!note || netnsIdentity(`${NETNS_DIR}/${name}`) !== note.identity) continue;
    out.push({ type: 'netns', name, creator: note.mark, state: creatorState(note.mark) });
  }
  return label === undefined ? out : out.filter((o) => o.creator.label === label);
}

const isOrphan = (o: MarkedObject): o is Orphan => o.state === 'exited' || o.state === 'pid-reused';

/** The marked objects whose creator is gone (exited, or its pid now names another process). */
export function listOrphans(filter: OrphanFilter = {}): Orphan[] {
  return listMarked(filter).filter(isOrphan);
}

function removeLink(o: Orphan): void {
  const ns = o.netns === undefined ? undefined : NetNs.open(o.netns);
  try {
    const rtnl = ns ? ns.rtnl() : Rtnl.open();
    try {
      // Checked again just before: the name must still carry the same mark.
      const now = rtnl.findLink(o.name);
      if (!now) return; // gone already (a veth goes with its peer)
      const mark = parseMark(now.alias);
      if (!mark || mark.pid !== o.creator.pid || mark.start !== o.creator.start) {
        throw new VhostError(`ERR_VHOST_CHANGED: link '${o.name}' changed since it was listed; left alone`, { code: 'ERR_VHOST_CHANGED', path: o.name });
      }
      try {
        rtnl.deleteLink(o.name);
      } catch (err) {
        if ((err as VhostError).code !== 'ENODEV') throw err;
      }
    } finally {
      rtnl.close();
    }
  } finally {
    ns?.close();
  }
}

function removeNetns(o: Orphan): void {
  const note = readNetnsNote(o.name);
  if (!note || netnsIdentity(`${NETNS_DIR}/${o.name}`) !== note.identity) {
    throw new VhostError(`ERR_VHOST_CHANGED: netns '${o.name}' changed since it was listed; left alone`, { code: 'ERR_VHOST_CHANGED', path: o.name });
  }
  NetNs.delete(o.name); // also removes the note
}

/** Notes whose namespace is gone or is no longer the one they describe: only the note goes. */
function removeStaleNotes(): void {
  for (const name of listNetnsNotes()) {
    const note = readNetnsNote(name);
    if (note && netnsIdentity(`${NETNS_DIR}/${name}`) === note.identity) continue;
    if (note && !isOrphan({ type: 'netns', name, creator: note.mark, state: creatorState(note.mark) })) continue; // a live creator may be between mount and note
    removeNetnsNote(name);
  }
}

/**
 * Removes the orphans (links first, then namespaces); with `dryRun` only
 * lists them. Each object is checked again just before removal; one that
 * fails is reported in `failed` and the rest still go.
 */
export function cleanupOrphans(options: CleanupOptions = {}): CleanupResult {
  checkObject(options, 'options');
  const dryRun = options.dryRun === undefined ? false : checkBool(options.dryRun, 'dryRun', null);
  const orphans = listOrphans({ label: options.label });
  const ordered = [...orphans.filter((o) => o.type === 'link'), ...orphans.filter((o) => o.type === 'netns')];
  const result: CleanupResult = { dryRun, removed: [], failed: [] };
  if (dryRun) {
    result.removed = ordered;
    return result;
  }
  for (const o of ordered) {
    try {
      if (o.type === 'link') removeLink(o);
      else removeNetns(o);
      result.removed.push(o);
    } catch (error) {
      result.failed.push({ orphan: o, error: error as Error });
    }
  }
  if (options.label === undefined) removeStaleNotes();
  return result;
}

/** One line per object, as `linux-vhost cleanup` prints it. */
export function describeOrphan(o: MarkedObject): string {
  const what = o.type === 'link' ? `link ${o.name}${o.kind ? ` (${o.kind})` : ''}${o.netns ? ` in netns ${o.netns}` : ''}` : `netns ${o.name}`;
  const why = o.state === 'exited' ? 'exited' : o.state === 'pid-reused' ? 'exited (its pid now names another process)' : o.state === 'alive' ? 'still running' : 'in another pid namespace';
  return `${what}: creator pid ${o.creator.pid}${o.creator.label ? ` label ${o.creator.label}` : ''} ${why}`;
}
