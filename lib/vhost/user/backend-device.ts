// What a device served over a vhost-user back-end implements: the
// transport-facing, device-neutral contract between VhostUserBackend (the
// socket, the message set, memory and eventfds) and a device (virtio-net in
// lib/device/net.ts; vsock next). The back-end owns every fd and mapping; a
// device only sees started rings (VhostUserRing) and answers config space.
import type { VhostUserRing } from './backend-ring';

/**
 * A virtio device served to a vhost-user front-end (QEMU) by VhostUserBackend.
 *
 * Call order, as the back-end drives it:
 * - `features`, `protocolFeatures`, `queues` are read when a front-end asks
 *   (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM); keep them constant.
 * - `setFeatures(bits)` after SET_FEATURES (the driver's acknowledged virtio
 *   bits, VHOST_USER_F_PROTOCOL_FEATURES removed).
 * - `startQueue(ring)` once a ring has memory, size, addresses and a kick fd
 *   and is enabled; then `kick(ring)` whenever the driver kicks it (and once
 *   right after the start: the driver may have posted buffers before).
 * - `stopQueue(ring)` before the ring goes away (GET_VRING_BASE, disable,
 *   a new memory table, disconnect, reset): the ring object is dead after it.
 * - `reset()` on RESET_OWNER / RESET_DEVICE.
 * - `readConfig`/`writeConfig` for GET_CONFIG/SET_CONFIG (protocol feature
 *   CONFIG; vhost-user-vsock reads its guest_cid this way).
 *
 * Callbacks run on the event loop and must not block. An exception thrown by
 * a callback never reaches the front-end as a crash: from a config callback it
 * is a failed reply (NACK), from a queue callback it breaks that ring.
 */
export interface VhostUserDevice {
  /** A short name for messages and errors ('vhost-user-net'). */
  readonly name: string;
  /** Virtio feature bits offered to the driver (VERSION_1, EVENT_IDX, ...). The back-end adds VHOST_USER_F_PROTOCOL_FEATURES. */
  readonly features: bigint;
  /**
   * Protocol features (bits of VhostUserProtocolFeature) the device wants
   * offered beyond the back-end's own (REPLY_ACK, MQ, RESET_DEVICE; CONFIG
   * when readConfig exists). Only bits the back-end implements are offered.
   */
  readonly protocolFeatures?: bigint;
  /** Number of virtqueues (GET_QUEUE_NUM, and the highest ring index + 1 accepted). */
  readonly queues: number;
  /** Called with the acknowledged virtio features (SET_FEATURES). */
  setFeatures?(features: bigint): void;
  /** Ring `ring.index` is running: keep `ring` to pop and complete chains. */
  startQueue(ring: VhostUserRing): void;
  /**
   * The driver kicked the ring: chains may be available. Return true when
   * the device stopped early with chains left (VhostUserRing.drain()'s
   * budget): it is called again on a later turn of the event loop.
   */
  kick(ring: VhostUserRing): boolean | void;
  /** The ring stops; `ring` must not be used after this returns. */
  stopQueue(ring: VhostUserRing): void;
  /** RESET_OWNER / RESET_DEVICE: every ring already stopped; forget negotiated state. */
  reset?(): void;
  /** GET_CONFIG: `size` bytes of the config space from `offset` (throw to refuse). */
  readConfig?(offset: number, size: number): Uint8Array;
  /** SET_CONFIG: the driver wrote `data` at `offset` (throw to refuse). */
  writeConfig?(offset: number, data: Uint8Array): void;
}
