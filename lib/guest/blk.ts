// VirtioBlkGuest: a small userspace virtio-blk driver (the guest's role) over
// a vhost-user-blk back-end such as qemu-storage-daemon. One memfd region
// holds the split ring and a pool of request slots; the back-end maps it from
// the fd sent with SET_MEM_TABLE. Each request is a 3-descriptor chain:
// virtio_blk_outhdr (device-readable), the data (readable for writes,
// writable for reads), and the status byte (writable). Completions arrive on
// the call eventfd, watched on the event loop.
//
// The back-end is another process and not trusted: a used entry naming a
// chain that is not in flight breaks the device ('error', then closed); a
// back-end that goes away rejects every pending request and emits 'disconnect';
// reconnect() resumes with a fresh queue once it is back.
import { EventEmitter } from 'node:events';
import { checkInt, checkObject, describe, toU64 } from '../core/check';
import { closedError, invalidArg, VhostError } from '../core/errors';
import { EventFd } from '../core/eventfd';
import { GuestMemory } from '../core/memory';
import { encodeBlkHeader, parseVirtioBlkConfig, VIRTIO_BLK_CONFIG_READ_SIZE, VIRTIO_BLK_OUTHDR_SIZE, VIRTIO_BLK_SECTOR_SIZE, VirtioBlkFeature, VirtioBlkStatus, VirtioBlkType } from '../virtio/blk';
import { BufferPool, placeVirtqueue, Virtqueue, type VirtqueueSegment } from '../virtio/virtqueue';
import { validateQueueSize } from '../virtio/vring';
import { VhostUserBuilder } from '../vhost/user/builder';
import { VhostUser, type VhostUserOptions } from '../vhost/user/vhost-user';

const VIRTIO_F_VERSION_1 = 32;
const VIRTIO_RING_F_EVENT_IDX = 29;
const bit = (n: number): bigint => 1n << BigInt(n);
/** Where the data starts in a request slot (header at 0, status at 16): sector-aligned. */
const SLOT_DATA = 512;
const STATUS_AT = VIRTIO_BLK_OUTHDR_SIZE;
const PAGE = 4096n;
const DESCS_PER_REQUEST = 3;

/** Options of VirtioBlkGuest.connect(): the connection's (VhostUserOptions) and the driver's. */
export interface VirtioBlkGuestOptions extends VhostUserOptions {
  /** Ring size, a power of two; default 128 (42 requests in flight: 3 descriptors each). */
  queueSize?: number;
  /** Largest transfer of one request in bytes, a multiple of 512; default 128 KiB. Larger reads and writes are split. */
  maxTransfer?: number;
  /** memfd name; default 'linux-vhost-blk'. */
  name?: string;
}

/** Where queue 0's rings sit (guest-physical) and how they are driven. */
interface RingPlace {
  size: number;
  desc: bigint;
  avail: bigint;
  used: bigint;
  eventIdx: boolean;
}

interface Pending {
  slot: number;
  type: number;
  sector: bigint;
  length: number;
  resolve: (data: Buffer | undefined) => void;
  reject: (err: Error) => void;
}

interface Waiting {
  type: number;
  sector: bigint;
  data: Uint8Array | null;
  length: number;
  resolve: (data: Buffer | undefined) => void;
  reject: (err: Error) => void;
}

/**
 * A virtio-blk driver in this process. read/write/flush return promises;
 * requests beyond the ring's room wait in order. Emits 'disconnect' (reason)
 * when the back-end goes away and 'error' when it breaks the ring protocol.
 */
export class VirtioBlkGuest extends EventEmitter implements Disposable {
  /** Capacity in 512-byte sectors, from the config space (GET_CONFIG). */
  readonly capacity: bigint;
  /** Negotiated virtio features. */
  readonly features: bigint;
  readonly maxTransfer: number;
  readonly #dev: VhostUser;
  readonly #memory: GuestMemory;
  #vq: Virtqueue;
  readonly #ring: RingPlace;
  readonly #pool: BufferPool;
  readonly #kick: EventFd;
  readonly #call: EventFd;
  readonly #inFlight = new Map<number, Pending>();
  readonly #waiting: Waiting[] = [];
  #closed = false;
  #broken: VhostError | null = null;

  private constructor(parts: { dev: VhostUser; memory: GuestMemory; vq: Virtqueue; ring: RingPlace; pool: BufferPool; kick: EventFd; call: EventFd; capacity: bigint; features: bigint; maxTransfer: number }) {
    super();
    this.#dev = parts.dev;
    this.#memory = parts.memory;
    this.#vq = parts.vq;
    this.#ring = parts.ring;
    this.#pool = parts.pool;
    this.#kick = parts.kick;
    this.#call = parts.call;
    this.capacity = parts.capacity;
    this.features = parts.features;
    this.maxTransfer = parts.maxTransfer;
    this.#dev.on('disconnect', (reason: VhostError) => this.#fail(reason, 'disconnect'));
    this.#call.watch(() => this.#onCall());
  }

  /** Connects to the vhost-user-blk back-end at `path` and brings queue 0 up. */
  static connect(path: string, options: VirtioBlkGuestOptions = {}): VirtioBlkGuest {
    checkObject(options, 'options');
    const plan = VirtioBlkGuest.#plan(options); // before connecting: bad options open nothing
    const dev = VhostUser.connect(path, { timeoutMs: options.timeoutMs, protocolFeatures: options.protocolFeatures });
    return VirtioBlkGuest.#start(dev, plan);
  }

  /** Drives an already connected VhostUser (which the guest then owns and closes). */
  static over(dev: VhostUser, options: VirtioBlkGuestOptions = {}): VirtioBlkGuest {
    checkObject(options, 'options');
    if (!(dev instanceof VhostUser)) throw invalidArg('dev', 'must be a VhostUser');
    return VirtioBlkGuest.#start(dev, VirtioBlkGuest.#plan(options));
  }

  static #plan(options: VirtioBlkGuestOptions): { queueSize: number; maxTransfer: number; name: string } {
    const queueSize = validateQueueSize(options.queueSize ?? 128, 'options.queueSize');
    if (queueSize < DESCS_PER_REQUEST) throw invalidArg('options.queueSize', `must be at least 4 (a request takes ${DESCS_PER_REQUEST} descriptors)`, 'ERR_VHOST_OUT_OF_RANGE');
    const maxTransfer = checkInt(options.maxTransfer ?? 128 * 1024, 'options.maxTransfer', VIRTIO_BLK_SECTOR_SIZE, 64 << 20, describe);
    if (maxTransfer % VIRTIO_BLK_SECTOR_SIZE !== 0) throw invalidArg('options.maxTransfer', `must be a multiple of ${VIRTIO_BLK_SECTOR_SIZE}, got ${maxTransfer}`);
    const name = options.name ?? 'linux-vhost-blk';
    if (typeof name !== 'string') throw invalidArg('options.name', 'must be a string');
    return { queueSize, maxTransfer, name };
  }

  static #start(dev: VhostUser, plan: { queueSize: number; maxTransfer: number; name: string }): VirtioBlkGuest {
    const made: { close(): void }[] = [dev];
    try {
      const offered = dev.offeredFeatures;
      if (!(offered & bit(VIRTIO_F_VERSION_1))) {
        throw new VhostError(`ERR_VHOST_UNSUPPORTED: the back-end at '${dev.path}' does not offer VIRTIO_F_VERSION_1 (legacy virtio-blk is not supported)`, { code: 'ERR_VHOST_UNSUPPORTED' });
      }
      const wanted = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VirtioBlkFeature.FLUSH) | bit(VirtioBlkFeature.RO) | bit(VirtioBlkFeature.BLK_SIZE);
      const features = offered & wanted;
      const ring = placeVirtqueue(plan.queueSize, 0n);
      const slots = Math.floor(plan.queueSize / DESCS_PER_REQUEST);
      const slotSize = SLOT_DATA + plan.maxTransfer;
      const poolGpa = (ring.end + PAGE - 1n) & ~(PAGE - 1n);
      const size = (poolGpa + BigInt(slotSize) * BigInt(slots) + PAGE - 1n) & ~(PAGE - 1n);
      const memory = GuestMemory.create({ regions: [{ gpa: 0n, size }], name: plan.name });
      made.push(memory);
      const kick = EventFd.create();
      made.push(kick);
      const call = EventFd.create();
      made.push(call);
      const eventIdx = (features & bit(VIRTIO_RING_F_EVENT_IDX)) !== 0n;
      const place = { size: plan.queueSize, desc: ring.desc, avail: ring.avail, used: ring.used, eventIdx };
      const vq = Virtqueue.create({ memory, kick, ...place });
      made.push(vq);
      const pool = new BufferPool(memory, 0n, poolGpa, slotSize, slots);
      const config = parseVirtioBlkConfig(dev.getConfig(0, VIRTIO_BLK_CONFIG_READ_SIZE));
      // The running device is not kept: the guest owns the connection and closes it itself (close() sends no
      // messages, so a dead back-end cannot hold it up), and reconnect() replays the connection's saved setup.
      new VhostUserBuilder(dev, { queues: 1 })
        .memory(memory)
        .features(features)
        .queue(0, { size: plan.queueSize, desc: ring.desc, avail: ring.avail, used: ring.used, kick, call })
        .start();
      vq.enableCallbacks();
      return new VirtioBlkGuest({ dev, memory, vq, ring: place, pool, kick, call, capacity: config.capacity, features, maxTransfer: plan.maxTransfer });
    } catch (err) {
      for (const r of made.reverse()) r.close();
      throw err;
    }
  }

  /** True after close(). */
  get closed(): boolean {
    return this.#closed;
  }

  /** The vhost-user connection (for its protocol features, or reconnect-level control). */
  get device(): VhostUser {
    return this.#dev;
  }

  /** Size in bytes. */
  get size(): bigint {
    return this.capacity * BigInt(VIRTIO_BLK_SECTOR_SIZE);
  }

  /** Requests posted to the ring and not completed. */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  /** Reads `length` bytes (a multiple of 512) from `sector`. */
  read(sector: bigint | number, length: number): Promise<Buffer> {
    const s = this.#checkRange(sector, length, 'length');
    if (length <= this.maxTransfer) return this.#submit(VirtioBlkType.IN, s, null, length) as Promise<Buffer>;
    return this.#split(VirtioBlkType.IN, s, null, length).then((parts) => Buffer.concat(parts as Buffer[]));
  }

  /** Writes `data` (a multiple of 512 bytes) at `sector`. */
  async write(sector: bigint | number, data: Uint8Array): Promise<void> {
    if (!(data instanceof Uint8Array)) throw invalidArg('data', 'must be a Uint8Array');
    if (this.features & bit(VirtioBlkFeature.RO)) throw new VhostError(`EROFS: the vhost-user-blk device at '${this.#dev.path}' is read-only`, { code: 'EROFS', path: this.#dev.path });
    const s = this.#checkRange(sector, data.length, 'data.length');
    if (data.length <= this.maxTransfer) await this.#submit(VirtioBlkType.OUT, s, data, data.length);
    else await this.#split(VirtioBlkType.OUT, s, data, data.length);
  }

  /** Makes completed writes durable (VIRTIO_BLK_T_FLUSH); a no-op promise when the device has no write cache (no VIRTIO_BLK_F_FLUSH). */
  async flush(): Promise<void> {
    this.#live();
    if (!(this.features & bit(VirtioBlkFeature.FLUSH))) return;
    await this.#submit(VirtioBlkType.FLUSH, 0n, null, 0);
  }

  #checkRange(sector: bigint | number, length: number, arg: string): bigint {
    this.#live();
    const s = toU64(sector, 'sector', describe);
    if (!Number.isInteger(length) || length <= 0 || length % VIRTIO_BLK_SECTOR_SIZE !== 0) {
      throw invalidArg(arg, `must be a positive multiple of ${VIRTIO_BLK_SECTOR_SIZE}, got ${describe(length)}`, 'ERR_VHOST_OUT_OF_RANGE');
    }
    const sectors = BigInt(length / VIRTIO_BLK_SECTOR_SIZE);
    if (s + sectors > this.capacity) {
      throw invalidArg('sector', `${s} + ${sectors} sectors passes the end of the device (${this.capacity} sectors)`, 'ERR_VHOST_OUT_OF_RANGE');
    }
    return s;
  }

  #split(type: number, sector: bigint, data: Uint8Array | null, length: number): Promise<(Buffer | undefined)[]> {
    const parts: Promise<Buffer | undefined>[] = [];
    for (let off = 0; off < length; off += this.maxTransfer) {
      const n = Math.min(this.maxTransfer, length - off);
      parts.push(this.#submit(type, sector + BigInt(off / VIRTIO_BLK_SECTOR_SIZE), data ? data.subarray(off, off + n) : null, n));
    }
    return Promise.all(parts);
  }

  #submit(type: number, sector: bigint, data: Uint8Array | null, length: number): Promise<Buffer | undefined> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ type, sector, data, length, resolve, reject });
      this.#pump();
    });
  }

  /** Posts waiting requests while slots are free; one kick for the batch. */
  #pump(): void {
    let posted = 0;
    while (this.#waiting.length > 0 && this.#broken === null && !this.#closed) {
      const slot = this.#pool.alloc();
      if (slot < 0) break;
      const w = this.#waiting.shift()!;
      const view = this.#pool.view(slot);
      encodeBlkHeader(view, w.type, w.sector);
      view[STATUS_AT] = 0xff; // a device that never writes the status is caught
      if (w.data) view.set(w.data, SLOT_DATA);
      const gpa = this.#pool.gpa + BigInt(slot * this.#pool.slotSize);
      const chain: VirtqueueSegment[] = [{ gpa, len: VIRTIO_BLK_OUTHDR_SIZE }];
      if (w.length > 0) chain.push({ gpa: gpa + BigInt(SLOT_DATA), len: w.length, writable: w.type === VirtioBlkType.IN });
      chain.push({ gpa: gpa + BigInt(STATUS_AT), len: 1, writable: true });
      const heads = this.#vq.post([chain], false);
      if (heads.length === 0) {
        this.#pool.release(slot);
        this.#waiting.unshift(w);
        break;
      }
      this.#inFlight.set(heads[0], { slot, type: w.type, sector: w.sector, length: w.length, resolve: w.resolve, reject: w.reject });
      posted++;
    }
    if (posted > 0) this.#vq.notify();
  }

  #onCall(): void {
    if (this.#closed) return;
    this.#call.read();
    try {
      do {
        for (const used of this.#vq.collect()) this.#complete(used.head);
      } while (this.#vq.enableCallbacks());
    } catch (err) {
      this.#fail(err as VhostError, 'error');
      return;
    }
    this.#pump();
  }

  #complete(head: number): void {
    const p = this.#inFlight.get(head);
    if (!p) {
      throw new VhostError(`ERR_VHOST_USER_PROTOCOL: the back-end at '${this.#dev.path}' returned descriptor ${head}, which is not in flight`, { code: 'ERR_VHOST_USER_PROTOCOL' });
    }
    this.#inFlight.delete(head);
    const view = this.#pool.view(p.slot);
    const status = view[STATUS_AT];
    const data = status === VirtioBlkStatus.OK && p.type === VirtioBlkType.IN ? Buffer.from(view.subarray(SLOT_DATA, SLOT_DATA + p.length)) : undefined;
    this.#pool.release(p.slot);
    if (status === VirtioBlkStatus.OK) {
      p.resolve(data);
      return;
    }
    const what = { [VirtioBlkType.IN]: 'read', [VirtioBlkType.OUT]: 'write', [VirtioBlkType.FLUSH]: 'flush' }[p.type] ?? `request ${p.type}`;
    const code = status === VirtioBlkStatus.UNSUPP ? 'ERR_VHOST_UNSUPPORTED' : 'EIO';
    const why = status === VirtioBlkStatus.IOERR ? 'VIRTIO_BLK_S_IOERR' : status === VirtioBlkStatus.UNSUPP ? 'VIRTIO_BLK_S_UNSUPP' : `unknown status ${status}`;
    p.reject(new VhostError(`${code}: vhost-user-blk ${what} at sector ${p.sector} failed (${why}) '${this.#dev.path}'`, { code, path: this.#dev.path }));
  }

  /** Ends every request with `reason`; the guest is unusable afterwards (close() it). */
  #fail(reason: VhostError, event: 'disconnect' | 'error'): void {
    if (this.#broken !== null || this.#closed) return;
    this.#broken = reason;
    const err = new VhostError(`${reason.code}: vhost-user-blk request ended: ${reason.message}`, { code: reason.code, path: this.#dev.path });
    for (const p of this.#inFlight.values()) {
      this.#pool.release(p.slot);
      p.reject(err);
    }
    this.#inFlight.clear();
    for (const w of this.#waiting.splice(0)) w.reject(err);
    if (event === 'error') {
      if (this.listenerCount('error') > 0) this.emit('error', reason);
      this.close();
    } else {
      this.emit('disconnect', reason);
    }
  }

  /**
   * After 'disconnect' (the back-end died and was restarted at the same path):
   * connects again, resets the queue (fresh rings from index 0: the requests
   * that were in flight were rejected with the disconnect, and whether the old
   * back-end performed them is unknown) and replays the configuration through
   * VhostUser.reconnect(). Throws, leaving the guest disconnected, when the
   * back-end is not there yet; call again.
   */
  reconnect(): void {
    if (this.#closed) throw closedError('VirtioBlkGuest', this.#dev.path);
    if (this.#broken === null) {
      throw new VhostError(`ERR_VHOST_INVALID_STATE: VirtioBlkGuest.reconnect() is for after 'disconnect'; '${this.#dev.path}' is connected`, { code: 'ERR_VHOST_INVALID_STATE' });
    }
    this.#vq.close();
    this.#vq = Virtqueue.create({ memory: this.#memory, kick: this.#kick, ...this.#ring }); // clears the rings
    this.#call.read(); // a stale call from the old back-end
    this.#dev.reconnect({ bases: { 0: 0 } });
    this.#vq.enableCallbacks();
    this.#broken = null;
  }

  #live(): void {
    if (this.#closed) throw closedError('VirtioBlkGuest', this.#dev.path);
    if (this.#broken) {
      throw new VhostError(`ERR_VHOST_USER_DISCONNECTED: the vhost-user-blk back-end at '${this.#dev.path}' is gone (${this.#broken.message}): reconnect() or close() this guest`, {
        code: 'ERR_VHOST_USER_DISCONNECTED',
        path: this.#dev.path,
      });
    }
  }

  /** Stops the rings' processing and releases everything: connection, eventfds, memory. Pending requests are rejected. Idempotent. */
  close(): void {
    if (this.#closed) return;
    const pending = [...this.#inFlight.values(), ...this.#waiting.splice(0)];
    this.#inFlight.clear();
    this.#closed = true;
    const err = closedError('VirtioBlkGuest', this.#dev.path);
    for (const p of pending) p.reject(err);
    this.#call.unwatch();
    this.#dev.close(); // the back-end sees end of stream and unmaps our memory
    this.#vq.close();
    this.#kick.close();
    this.#call.close();
    this.#memory.close();
  }

  /** close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
