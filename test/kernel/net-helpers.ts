// Host-side traffic helpers for the network tests (inside the test VM only):
// python3 AF_PACKET scripts (Node cannot open packet sockets) to capture
// frames on a link and to inject frames into one, and a frame collector on a
// VirtioNetGuest that ignores the IPv6 noise a fresh link sends.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import type { VirtioNetGuest } from '../../lib/virtio-net-guest';

const PYTHON = '/usr/bin/python3';
/** IEEE local experimental EtherType: the host stack ignores it. */
export const TEST_ETHERTYPE = 0x88b5;

// Prints "ready", then one hex line per frame of `proto` received on the
// link (not the host's own outgoing ones), until `count` or `timeout` s.
const CAPTURE = `
import socket, sys, select, time
ifname, count, timeout, proto = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4], 0)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
s.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE: hold a whole burst
s.bind((ifname, 0))
print("ready", flush=True)
got, end, out = 0, time.time() + timeout, []
while got < count:
    r, _, _ = select.select([s], [], [], max(0, end - time.time()))
    if not r:
        break
    data, addr = s.recvfrom(70000)
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    out.append(data.hex())
    got += 1
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

/** Starts capturing frames of `ethertype` on `ifname`; resolves once the socket is bound. */
export async function capture(ifname: string, count: number, timeoutS = 30, ethertype = TEST_ETHERTYPE): Promise<Capture> {
  const proc = spawn(PYTHON, ['-c', CAPTURE, ifname, String(count), String(timeoutS), String(ethertype)]);
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

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Whether a frame is IPv4 carrying `proto` (1 ICMP, 17 UDP). */
export const isIpv4 = (f: Buffer, proto: number): boolean => f.length >= 34 && f.readUInt16BE(12) === 0x0800 && f[23] === proto;
