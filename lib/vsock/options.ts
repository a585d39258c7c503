// Options of the AF_VSOCK API (lib/vsock/socket.ts) and their validation, thrown
// before any syscall. The check* functions are internal (the unit tests call
// them); lib/vsock/socket.ts re-exports the constants and types.
import { checkBool, checkInt, checkObject, checkSignal, checkOneOf } from '../core/check';
import { invalidArg } from '../core/errors';

/** Any local CID (bind) — the default for servers. */
export const VMADDR_CID_ANY = 0xffffffff;
/** Any port: bind() picks a free one. */
export const VMADDR_PORT_ANY = 0xffffffff;
/** The hypervisor (reserved; not reachable through vhost-vsock). */
export const VMADDR_CID_HYPERVISOR = 0;
/** This host or guest itself, through the vsock_loopback transport. */
export const VMADDR_CID_LOCAL = 1;
/** The host, as seen from a guest. */
export const VMADDR_CID_HOST = 2;

/** SOCK_STREAM: a byte stream. SOCK_SEQPACKET: messages with boundaries kept. */
export type VsockType = 'stream' | 'seqpacket';

/** An AF_VSOCK socket type, 'stream' when undefined. */
export function checkVsockType(value: unknown, arg: string): VsockType {
  return value === undefined ? 'stream' : checkOneOf(value, arg, ['stream', 'seqpacket']);
}

/** An AF_VSOCK address: context id and port. */
export interface VsockAddress {
  cid: number;
  port: number;
}

/** Options of vsock.connect(). */
export interface VsockConnectOptions {
  /** The peer's context id, 0..0xfffffffe (1 = this machine through vsock_loopback, 2 = the host). */
  cid: number;
  /** The peer's port, 0..0xfffffffe. */
  port: number;
  /** Default 'stream'. */
  type?: VsockType;
  /**
   * Connect timeout in ms (1..2^31-1), enforced by the kernel
   * (SO_VM_SOCKETS_CONNECT_TIMEOUT) and failing with ETIMEDOUT. Without it the
   * kernel's default applies (2000 ms on Linux).
   */
  timeout?: number;
  /** Aborting it destroys the socket with an AbortError (code ABORT_ERR), connected or not. */
  signal?: AbortSignal;
  /** Keep the writable side open after the peer ends (default false: end() follows, like net). */
  allowHalfOpen?: boolean;
}

/** Options of vsock.createServer(). */
export interface VsockServerOptions {
  /** Default 'stream'. */
  type?: VsockType;
  /** For accepted sockets, as in VsockConnectOptions. Default false. */
  allowHalfOpen?: boolean;
}

/** Options of VsockServer.listen(). */
export interface VsockListenOptions {
  /** Default VMADDR_PORT_ANY: the kernel picks one (see address()). */
  port?: number;
  /** Local CID to bind, default VMADDR_CID_ANY. */
  cid?: number;
  /** listen() backlog, 0..2^31-1, default 511 (the kernel caps it at somaxconn). */
  backlog?: number;
}

const U32_MAX = 0xffffffff;
const INT32_MAX = 0x7fffffff;
const DEFAULT_BACKLOG = 511;

const typeOrNull = (value: unknown): string => (value === null ? 'null' : typeof value);
const checkOptions = (value: unknown): Record<string, unknown> => checkObject(value, 'options', 'an object', typeOrNull);

/** Validated connect options. @internal Use connect(). */
export function checkConnectOptions(options: unknown): Required<Omit<VsockConnectOptions, 'timeout' | 'signal'>> & Pick<VsockConnectOptions, 'timeout' | 'signal'> {
  const o = checkOptions(options);
  if (o.cid === undefined) throw invalidArg('options.cid', 'is required');
  if (o.port === undefined) throw invalidArg('options.port', 'is required');
  const cid = checkInt(o.cid, 'options.cid', 0, U32_MAX - 1);
  const port = checkInt(o.port, 'options.port', 0, U32_MAX - 1);
  const type = checkVsockType(o.type, 'options.type');
  const timeout = o.timeout === undefined ? undefined : checkInt(o.timeout, 'options.timeout', 1, INT32_MAX);
  const signal = checkSignal(o.signal, 'options.signal');
  const allowHalfOpen = checkBool(o.allowHalfOpen, 'options.allowHalfOpen');
  return { cid, port, type, timeout, signal, allowHalfOpen };
}

/** Validated listen options. @internal Use server.listen(). */
export function checkListenOptions(options: unknown): Required<VsockListenOptions> {
  const o = checkOptions(options);
  const port = o.port === undefined ? VMADDR_PORT_ANY : checkInt(o.port, 'options.port', 0, U32_MAX);
  const cid = o.cid === undefined ? VMADDR_CID_ANY : checkInt(o.cid, 'options.cid', 0, U32_MAX);
  const backlog = o.backlog === undefined ? DEFAULT_BACKLOG : checkInt(o.backlog, 'options.backlog', 0, INT32_MAX);
  return { port, cid, backlog };
}

/** Validated server options. @internal Use createServer(). */
export function checkServerOptions(options: unknown): Required<VsockServerOptions> {
  const o = checkOptions(options);
  return { type: checkVsockType(o.type, 'options.type'), allowHalfOpen: checkBool(o.allowHalfOpen, 'options.allowHalfOpen') };
}
