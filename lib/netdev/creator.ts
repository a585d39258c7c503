// Who made a kernel object that outlives its process. Bridges, veths,
// macvtaps, persistent taps and named network namespaces stay after a
// `kill -9` of the process that made them; each one the library makes is
// marked with its creator so that listOrphans()/cleanupOrphans()
// (orphans.ts) can later tell the ones whose creator is gone from the ones
// still in use, and from everything the library did not make.
//
// The mark: 'linux-vhost:pid=<pid>:start=<starttime>:pidns=<inode>[:label=<L>]'
// - pid and start (field 22 of /proc/<pid>/stat, clock ticks after boot)
//   together name one process: a pid the kernel gave to a new process since
//   has another start time;
// - pidns (the inode of /proc/self/ns/pid) says which pid namespace the pid
//   belongs to: a cleanup run from another one cannot judge it and leaves
//   the object alone;
// - label: optional, set by setCreatorLabel() or LINUX_VHOST_LABEL, so one
//   application can clean up only its own objects.
// Links carry the mark as their alias (IFLA_IFALIAS, `ip link show` prints
// it); a named netns gets a note beside /run/netns, in /run/linux-vhost/netns/
// (a file under /run/netns itself would be listed by `ip netns` as a
// namespace), holding the mark and the namespace file's identity (inode and
// ctime: the kernel reuses a freed namespace's inode number, seen in the
// test VM, but the ctime is when the inode was made) so a namespace made
// again under the same name by someone else is never taken for ours.
import * as fs from 'node:fs';
import { invalidArg } from '../core/errors';
import { native } from '../core/native';
import { attrString, encodeIfInfoMsg, encodeMessage, ifla, nlmsgFlags, nlmsgType } from './netlink';

const PREFIX = 'linux-vhost:';
const LABEL_RE = /^[A-Za-z0-9._-]{1,64}$/;
const LABEL_ENV = 'LINUX_VHOST_LABEL';
/** Where the notes of named network namespaces live (tmpfs, like /run/netns: both go at reboot). */
export const NETNS_NOTES_DIR = '/run/linux-vhost/netns';

/** The process that created an object, as its mark records it. */
export interface CreatorMark {
  pid: number;
  /** Start time of the process in clock ticks after boot (/proc/<pid>/stat field 22). */
  start: bigint;
  /** Inode of the creator's pid namespace (/proc/<pid>/ns/pid). */
  pidns: bigint;
  label?: string;
}

/** alive: the creator runs; exited / pid-reused: it is gone; unknown: another pid namespace, cannot tell. */
export type CreatorState = 'alive' | 'exited' | 'pid-reused' | 'unknown';

let label: string | undefined;
let labelSet = false;

/** Checks a label: 1..64 of A-Z a-z 0-9 . _ - (it goes into a link alias and a command line). */
export function checkLabel(value: unknown, arg = 'label'): string {
  if (typeof value !== 'string' || !LABEL_RE.test(value)) throw invalidArg(arg, 'must be 1..64 characters of A-Z, a-z, 0-9, ".", "_" or "-"');
  return value;
}

/**
 * Sets the label written into the mark of every object this process creates
 * from now on (undefined: none). Until called, LINUX_VHOST_LABEL is used.
 */
export function setCreatorLabel(value: string | undefined): void {
  label = value === undefined ? undefined : checkLabel(value);
  labelSet = true;
}

function currentLabel(): string | undefined {
  if (labelSet) return label;
  const env = process.env[LABEL_ENV];
  return env === undefined || env === '' ? undefined : checkLabel(env, LABEL_ENV);
}

/** Start time and state of a process from /proc/<pid>/stat, or undefined when there is none. */
export function readProcStat(pid: number | 'self'): { start: bigint; state: string } | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') return undefined;
    throw err;
  }
  // comm (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state), so field 22 (starttime) is rest[19].
  return { state: rest[0], start: BigInt(rest[19]) };
}

/** Inode of a namespace link such as /proc/self/ns/pid. */
function nsInode(path: string): bigint {
  return fs.statSync(path, { bigint: true }).ino;
}

let self: Omit<CreatorMark, 'label'> | undefined;

/** The mark for objects this process creates now. */
export function currentMark(): CreatorMark {
  if (!self || self.pid !== process.pid) {
    self = { pid: process.pid, start: readProcStat('self')!.start, pidns: nsInode('/proc/self/ns/pid') };
  }
  const l = currentLabel();
  return l === undefined ? { ...self } : { ...self, label: l };
}

/** The mark as text: 'linux-vhost:pid=…:start=…:pidns=…[:label=…]'. */
export function formatMark(m: CreatorMark): string {
  return `${PREFIX}pid=${m.pid}:start=${m.start}:pidns=${m.pidns}${m.label === undefined ? '' : `:label=${m.label}`}`;
}

/** Parses a mark; undefined for anything that is not exactly one (so never for a user's alias). */
export function parseMark(text: string | undefined): CreatorMark | undefined {
  if (text === undefined) return undefined;
  const m = /^linux-vhost:pid=([1-9][0-9]{0,9}):start=(0|[1-9][0-9]{0,19}):pidns=([1-9][0-9]{0,19})(?::label=([A-Za-z0-9._-]{1,64}))?$/.exec(text);
  if (!m) return undefined;
  const pid = Number(m[1]);
  if (pid > 0x7fffffff) return undefined;
  const mark: CreatorMark = { pid, start: BigInt(m[2]), pidns: BigInt(m[3]) };
  if (m[4] !== undefined) mark.label = m[4];
  return mark;
}

/**
 * Whether the creator of `mark` still runs, judged from this process's
 * /proc: the pid absent or a zombie → exited, present with another start
 * time → pid-reused, a mark from another pid namespace → unknown.
 */
export function creatorState(mark: CreatorMark, proc: (pid: number) => { start: bigint; state: string } | undefined = readProcStat): CreatorState {
  if (mark.pidns !== currentMark().pidns) return 'unknown';
  const stat = proc(mark.pid);
  if (stat === undefined || stat.state === 'Z' || stat.state === 'X') return 'exited';
  return stat.start === mark.start ? 'alive' : 'pid-reused';
}

// ---- notes of named network namespaces ------------------------------------

/** The note of netns `name`: its creator and the namespace file's identity when the note was written. */
export interface NetnsNote {
  mark: CreatorMark;
  /** netnsIdentity() of /run/netns/<name> then. */
  identity: string;
}

function notePath(name: string): string {
  return `${NETNS_NOTES_DIR}/${name}`;
}

/**
 * Identity of a namespace file: '<inode>:<ctime ns>', or undefined when it
 * does not exist. The inode number alone is reused by the next namespace
 * once one is freed; its ctime is when the kernel made the inode.
 */
export function netnsIdentity(nsPath: string): string | undefined {
  try {
    const st = fs.statSync(nsPath, { bigint: true });
    return `${st.ino}:${st.ctimeNs}`;
  } catch {
    return undefined;
  }
}

/** Writes the note of netns `name` (just created by this process at `nsPath`). */
export function writeNetnsNote(name: string, nsPath: string): void {
  fs.mkdirSync(NETNS_NOTES_DIR, { recursive: true, mode: 0o755 });
  const identity = netnsIdentity(nsPath);
  if (identity === undefined) throw invalidArg('nsPath', `'${nsPath}' does not exist`);
  const tmp = `${notePath(name)}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${formatMark(currentMark())}\nnetns=${identity}\n`, { mode: 0o644 });
  fs.renameSync(tmp, notePath(name)); // whole or not at all, even if we die here
}

/** Reads the note of netns `name`; undefined when there is none or it is not one of ours. */
export function readNetnsNote(name: string): NetnsNote | undefined {
  let text: string;
  try {
    text = fs.readFileSync(notePath(name), 'utf8');
  } catch {
    return undefined;
  }
  const [first, second] = text.split('\n');
  const mark = parseMark(first);
  const m = /^netns=([0-9]{1,20}:[0-9]{1,30})$/.exec(second ?? '');
  return mark && m ? { mark, identity: m[1] } : undefined;
}

/** Removes the note of netns `name` (quiet when there is none). */
export function removeNetnsNote(name: string): void {
  fs.rmSync(notePath(name), { force: true });
}

/** Names of the netns notes (including stale ones whose namespace is gone). */
export function listNetnsNotes(): string[] {
  try {
    return fs.readdirSync(NETNS_NOTES_DIR).filter((n) => !n.endsWith('.tmp'));
  } catch {
    return [];
  }
}

/**
 * Marks link `name` in this process's namespace with its creator (one
 * RTM_SETLINK of IFLA_IFALIAS on a route socket of its own). For tap.ts,
 * which sits below links.ts (Rtnl) and so cannot use Rtnl.setAlias().
 */
export function markLink(name: string): void {
  const sock = native.netlinkOpen(null);
  try {
    const attrs = [attrString(ifla.IFNAME, name), attrString(ifla.IFALIAS, formatMark(currentMark()))];
    const msg = encodeMessage({ type: nlmsgType.RTM_SETLINK, flags: nlmsgFlags.NLM_F_REQUEST | nlmsgFlags.NLM_F_ACK, seq: 1, body: encodeIfInfoMsg({}), attrs });
    native.netlinkRequest(sock, msg, name);
  } finally {
    sock.close();
  }
}
