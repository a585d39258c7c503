// Host-side traffic helpers for the network tests (inside the test VM only):
// python3 AF_PACKET scripts (Node cannot open packet sockets) to capture
// frames on a link and to inject frames into one, and a frame collector on a
// VirtioNetGuest that ignores the IPv6 noise a fresh link sends; link
// attributes from /sys/class/net and a TX frame posted on a raw ring.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { GuestMemory } from '../../lib/core/memory';
import type { VirtioNetGuest } from '../../lib/guest/net';
import { sleep } from './helpers';

const PYTHON = '/usr/bin/python3';
/** IEEE local experimental EtherType: the host stack ignores it. */
export const TEST_ETHERTYPE = 0x88b5;

// Prints "ready", then one hex line per frame of `proto` received on the
// link (not the host's own outgoing ones), until `count`, `timeout` s, or
// (when `idle` > 0) `idle` s without a frame after the first.
const CAPTURE = `
import socket, sys, select, time
ifname, count, timeout, proto, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4], 0), float(sys.argv[5])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
s.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE: hold a whole burst
s.bind((ifname, 0))
print("ready", flush=True)
got, end, out, last = 0, time.time() + timeout, [], None
while got < count:
    wait = end - time.time()
    if idle > 0 and last is not None:
        wait = min(wait, last + idle - time.time())
    r, _, _ = select.select([s], [], [], max(0, wait))
    if not r:
        break
    data, addr = s.recvfrom(70000)
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    out.append(data.hex())
    got += 1
    last = time.time()
sys.stdout.write("\\n".join(out) + "\\n")
`;

// Sends each hex frame read from stdin out of the link, `gap` s apart;
// prints the count.
const INJECT = `
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
gap = float(sys.argv[2])
n = 0
for line in sys.stdin:
    line = line.strip()
    if line:
        s.send(bytes.fromhex(line))
        n += 1
        if gap:
            time.sleep(gap)
print(n)
`;

export interface Capture {
  proc: ChildProcessWithoutNullStreams;
  /** The frames captured, once `count` arrived or the timeout passed. */
  frames: Promise<Buffer[]>;
}

/**
 * Starts capturing frames of `ethertype` on `ifname`; resolves once the socket
 * is bound. With `idleS` > 0 it also stops `idleS` seconds after the last frame.
 */
export async function capture(ifname: string, count: number, timeoutS = 30, ethertype = TEST_ETHERTYPE, idleS = 0): Promise<Capture> {
  const proc = spawn(PYTHON, ['-c', CAPTURE, ifname, String(count), String(timeoutS), String(ethertype), String(idleS)]);
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => (err += d));
  const ready = new Promise<void>((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      out += d;
      if (out.startsWith('ready\n')) resolve();
    });
    proc.on('close', (code) => reject(new Error(`capture exited ${code}: ${err}`)));
  });
  // 'close', not 'exit': stdout may still hold the last frames when the process has exited.
  const frames = once(proc, 'close').then(([code]) => {
    if (code !== 0) throw new Error(`capture failed (${code}): ${err}`);
    return out.split('\n').slice(1).filter((l) => l.length > 0).map((l) => Buffer.from(l, 'hex'));
  });
  await ready;
  return { proc, frames };
}

/** Sends every frame out of `ifname` (towards whatever is behind the link), `gapS` seconds apart. */
export async function inject(ifname: string, frames: Uint8Array[], gapS = 0): Promise<void> {
  const proc = spawn(PYTHON, ['-c', INJECT, ifname, String(gapS)]);
  let out = '';
  let err = '';
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => (err += d));
  proc.stdin.end(frames.map((f) => Buffer.from(f).toString('hex')).join('\n') + '\n');
  const [code] = await once(proc, 'close'); // stdout fully read
  if (code !== 0 || Number(out) !== frames.length) throw new Error(`inject failed (${code}, sent ${out}): ${err}`);
}

/** Records every frame a guest emits that `match` accepts (attach before traffic starts). */
export class FrameLog {
  readonly frames: Buffer[] = [];
  readonly #guest: VirtioNetGuest;
  readonly #listener: (f: Buffer) => void;

  constructor(guest: VirtioNetGuest, match: (f: Buffer) => boolean) {
    this.#guest = guest;
    this.#listener = (f) => {
      if (match(f)) this.frames.push(Buffer.from(f));
    };
    guest.on('frame', this.#listener);
  }

  /** Waits until `n` frames are logged; fails after `ms` saying how many came. */
  async waitFor(n: number, ms = 20_000): Promise<Buffer[]> {
    const end = Date.now() + ms;
    while (this.frames.length < n) {
      if (Date.now() > end) throw new Error(`got ${this.frames.length} of ${n} frames`);
      await sleep(5);
    }
    return this.frames;
  }

  /** Stops recording (the guest keeps running). */
  close(): void {
    this.#guest.off('frame', this.#listener);
  }
}

/** Sends every frame, `batch` at a time, waiting for 'drain' whenever the ring is full. */
export async function sendAll(guest: VirtioNetGuest, frames: Buffer[], batch = 64): Promise<void> {
  let i = 0;
  while (i < frames.length) {
    const chunk = frames.slice(i, i + batch);
    const n = guest.sendBatch(chunk);
    i += n;
    if (n < chunk.length) await once(guest, 'drain');
  }
}

/** Whether a frame is IPv4 carrying `proto` (1 ICMP, 17 UDP). */
export const isIpv4 = (f: Buffer, proto: number): boolean => f.length >= 34 && f.readUInt16BE(12) === 0x0800 && f[23] === proto;

/** An attribute of a link as /sys/class/net shows it (trimmed). */
export const sysNet = (name: string, attr: string): string => fs.readFileSync(path.join('/sys/class/net', name, attr), 'utf8').trim();

/** Whether /sys/class/net has the link. */
export const inSysNet = (name: string): boolean => fs.existsSync(path.join('/sys/class/net', name));

/** A counter of the link's statistics (rx_packets, tx_dropped, ...). */
export const linkStat = (name: string, stat: string): number => Number(sysNet(name, `statistics/${stat}`));

/** How many TX queues the link has. */
export const txQueues = (name: string): number => fs.readdirSync(`/sys/class/net/${name}/queues`).filter((q) => q.startsWith('tx-')).length;

/**
 * Posts TX descriptor `d` on a raw split ring of `size` entries (not kicked):
 * a zero 12-byte virtio_net_hdr and a 60-byte broadcast frame of TEST_ETHERTYPE
 * at 0x40000 + 0x100 * d, avail entry d % size, avail idx d + 1.
 */
export function postTxFrame(mem: GuestMemory, ring: { desc: bigint; avail: bigint }, size: number, d: number): void {
  const buf = 0x40000n + 0x100n * BigInt(d);
  const frame = mem.view(buf, 72);
  frame.fill(0);
  frame.fill(0xff, 12, 18);
  frame.set([0x02, 0, 0, 0, 0, 1], 18);
  frame.set([0x88, 0xb5], 24);
  const desc = mem.view(ring.desc + 16n * BigInt(d), 16);
  const dv = new DataView(desc.buffer, desc.byteOffset, 16);
  dv.setBigUint64(0, buf, true);
  dv.setUint32(8, 72, true);
  dv.setUint16(12, 0, true);
  const av = mem.view(ring.avail, 4 + 2 * size);
  const avv = new DataView(av.buffer, av.byteOffset, av.byteLength);
  avv.setUint16(4 + 2 * (d % size), d, true);
  avv.setUint16(2, d + 1, true);
}

/** Returns fresh(): link and namespace names unique to this run (prefix + 'x' + a counter; keep the prefix ≤ 10 bytes for IFNAMSIZ), recognisable by `prefix` in leak checks. */
export function linkNamer(prefix: string): () => string {
  let seq = 0;
  return () => `${prefix}x${seq++}`;
}
