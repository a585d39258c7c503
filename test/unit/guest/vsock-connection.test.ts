// The virtio-vsock connection state machine driven directly, without rings or
// a device: packets go in through onPacket() and come out of nextPacket() into
// a plain buffer, decoded by decodeVsockHeader (the allocating codec, not the
// view the connection writes through). Covers opening both ways, credit both
// ways, SHUTDOWN, RST, destroy(), the transport reset, and SEQPACKET messages
// (EOM, EMSGSIZE); a fast-check model checks that data never exceeds the
// peer's window and arrives whole and in order.
import fc from 'fast-check';
import { once } from 'node:events';
import { CREDIT_STALL, type VsockLink, VirtioVsockConnection } from '../../../lib/guest/vsock-connection';
import { decodeVsockHeader, encodeVsockHeader, VSOCK_HDR_SIZE, VSOCK_OP, VSOCK_SEQ, VSOCK_SHUTDOWN, VSOCK_TYPE, VsockPacketView, type VsockHeader } from '../../../lib/virtio/vsock-packet';
import type { VsockType } from '../../../lib/vsock/socket';

const LOCAL_CID = 3;
const LOCAL_PORT = 5000;
const PEER_CID = 2;
const PEER_PORT = 1234;
const BUF_ALLOC = 4096;
const ROOM = 1024; // payload bytes per TX buffer

/** A carrier that records what the connection asks of it. */
class FakeLink implements VsockLink {
  readonly localCid = LOCAL_CID;
  readonly bufAlloc = BUF_ALLOC;
  wants = 0;
  forgotten = 0;
  readonly deferred: Array<[(err?: Error | null) => void, Error | null]> = [];
  wantTx(): void {
    this.wants++;
  }
  forget(): void {
    this.forgotten++;
  }
  defer(cb: (err?: Error | null) => void, err: Error | null): void {
    this.deferred.push([cb, err]);
  }
  runDeferred(): void {
    for (const [cb, err] of this.deferred.splice(0)) cb(err);
  }
}

interface Sent extends VsockHeader {
  payload: Buffer;
}

const txBuf = new Uint8Array(7 + VSOCK_HDR_SIZE + ROOM);
const txView = new VsockPacketView(txBuf);

/** The connection's next packet, decoded; or the number nextPacket() returned when it wrote none. */
function next(conn: VirtioVsockConnection, dataToo = true): Sent | number {
  txBuf.fill(0xee);
  const n = conn.nextPacket(txView.at(7, VSOCK_HDR_SIZE + ROOM), dataToo);
  if (n <= 0) return n;
  const h = decodeVsockHeader(txBuf, 7);
  expect(n).toBe(VSOCK_HDR_SIZE + h.len);
  return { ...h, payload: Buffer.from(txBuf.subarray(7 + VSOCK_HDR_SIZE, 7 + n)) };
}

function nextSent(conn: VirtioVsockConnection, dataToo = true): Sent {
  const p = next(conn, dataToo);
  if (typeof p === 'number') throw new Error(`expected a packet, nextPacket() returned ${p}`);
  return p;
}

/**
 * What a carrier does: passes that take every packet the connection has now
 * (until it has none or stalls), each followed by the write callbacks it
 * completed (which may let the Writable hand it more), until idle.
 */
function drain(conn: VirtioVsockConnection, link: FakeLink): Sent[] {
  const out: Sent[] = [];
  do {
    for (let p = next(conn); typeof p !== 'number'; p = next(conn)) out.push(p);
    if (link.deferred.length === 0) return out;
    link.runDeferred();
  } while (out.length < 100_000);
  throw new Error('the connection never went idle');
}

const closed = (conn: VirtioVsockConnection) => new Promise((resolve) => conn.once('close', resolve));

/** A packet from the peer, as a device would leave it in an RX buffer (at an odd offset). */
function peerPacket(h: Partial<VsockHeader>, payload: Uint8Array = new Uint8Array(0), type: VsockType = 'stream'): VsockPacketView {
  const header: VsockHeader = {
    srcCid: BigInt(PEER_CID), dstCid: BigInt(LOCAL_CID), srcPort: PEER_PORT, dstPort: LOCAL_PORT, len: payload.length,
    type: type === 'seqpacket' ? VSOCK_TYPE.SEQPACKET : VSOCK_TYPE.STREAM, op: VSOCK_OP.RW, flags: 0, bufAlloc: BUF_ALLOC, fwdCnt: 0, ...h,
  };
  const buf = new Uint8Array(5 + VSOCK_HDR_SIZE + payload.length);
  buf.set(encodeVsockHeader(header), 5);
  buf.set(payload, 5 + VSOCK_HDR_SIZE);
  return new VsockPacketView(buf).at(5, VSOCK_HDR_SIZE + payload.length);
}

function make(type: VsockType = 'stream', allowHalfOpen = false): { conn: VirtioVsockConnection; link: FakeLink } {
  const link = new FakeLink();
  const conn = new VirtioVsockConnection(link, { localPort: LOCAL_PORT, peerCid: PEER_CID, peerPort: PEER_PORT, allowHalfOpen, type });
  conn.on('error', () => {}); // each test asserts the error it expects
  return { conn, link };
}

/** An accepted connection whose RESPONSE is out; the peer grants `peerBufAlloc`. */
function accepted(type: VsockType = 'stream', peerBufAlloc = BUF_ALLOC, allowHalfOpen = false) {
  const made = make(type, allowHalfOpen);
  made.conn.acceptRequest(peerPacket({ op: VSOCK_OP.REQUEST, bufAlloc: peerBufAlloc }, undefined, type));
  expect(nextSent(made.conn).op).toBe(VSOCK_OP.RESPONSE);
  return made;
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('opening', () => {
  test('connect: REQUEST with our addressing and credit, then nothing until RESPONSE; RESPONSE emits connect', async () => {
    const { conn, link } = make();
    conn.startConnect(undefined, undefined);
    expect(link.wants).toBe(1);
    expect(conn.connecting).toBe(true);
    const req = nextSent(conn);
    expect(req).toMatchObject({ srcCid: 3n, dstCid: 2n, srcPort: LOCAL_PORT, dstPort: PEER_PORT, len: 0, type: VSOCK_TYPE.STREAM, op: VSOCK_OP.REQUEST, flags: 0, bufAlloc: BUF_ALLOC, fwdCnt: 0 });
    conn.write('early'); // queued until connected
    expect(next(conn)).toBe(0);
    const connected = once(conn, 'connect');
    expect(conn.onPacket(peerPacket({ op: VSOCK_OP.RESPONSE }))).toBe(true);
    await connected;
    expect(conn.connecting).toBe(false);
    const data = nextSent(conn);
    expect(data.op).toBe(VSOCK_OP.RW);
    expect(data.payload.toString()).toBe('early');
  });

  test('accept: the RESPONSE goes out first, carrying our credit; the peer\'s REQUEST credit is taken', () => {
    const { conn } = make();
    conn.acceptRequest(peerPacket({ op: VSOCK_OP.REQUEST, bufAlloc: 10 }));
    conn.write(Buffer.alloc(50, 1));
    const resp = nextSent(conn, false);
    expect(resp).toMatchObject({ op: VSOCK_OP.RESPONSE, srcPort: LOCAL_PORT, dstPort: PEER_PORT, bufAlloc: BUF_ALLOC });
    expect(next(conn, false)).toBe(0); // control only: the data waits for the data pass
    expect(nextSent(conn).len).toBe(10); // the peer's buf_alloc from its REQUEST bounds the data
  });

  test('a second REQUEST, or a RESPONSE once connected, does not fit: onPacket returns false', () => {
    const { conn } = accepted();
    expect(conn.onPacket(peerPacket({ op: VSOCK_OP.REQUEST }))).toBe(false);
    expect(conn.onPacket(peerPacket({ op: VSOCK_OP.RESPONSE }))).toBe(false);
    expect(conn.onPacket(peerPacket({ op: VSOCK_OP.CREDIT_UPDATE }))).toBe(true);
    expect(conn.onPacket(peerPacket({ op: 99 }))).toBe(true); // unknown ops are ignored
    expect(conn.destroyed).toBe(false);
  });

  test('the connect timeout destroys with ETIMEDOUT and owes the peer an RST once the REQUEST left', async () => {
    const { conn, link } = make();
    conn.startConnect(5, undefined);
    expect(nextSent(conn).op).toBe(VSOCK_OP.REQUEST);
    const [err] = await once(conn, 'error');
    expect(err.code).toBe('ETIMEDOUT');
    expect(link.forgotten).toBe(1);
    expect(nextSent(conn).op).toBe(VSOCK_OP.RST);
    expect(next(conn)).toBe(0);
  });

  test('an abort before the REQUEST left sends nothing', async () => {
    const { conn } = make();
    const ac = new AbortController();
    conn.startConnect(undefined, ac.signal);
    ac.abort();
    const [err] = await once(conn, 'error');
    expect(err.code).toBe('ABORT_ERR');
    expect(next(conn)).toBe(0);
  });
});

describe('credit', () => {
  test('data never exceeds the peer\'s window: a stall sends one CREDIT_REQUEST, a CREDIT_UPDATE reopens it', () => {
    const { conn, link } = accepted('stream', 100);
    conn.write(Buffer.alloc(250, 7));
    expect(nextSent(conn)).toMatchObject({ op: VSOCK_OP.RW, len: 100 });
    expect(nextSent(conn).op).toBe(VSOCK_OP.CREDIT_REQUEST);
    expect(next(conn)).toBe(CREDIT_STALL);
    expect(next(conn)).toBe(CREDIT_STALL); // one request per stall
    const before = link.wants;
    conn.onPacket(peerPacket({ op: VSOCK_OP.CREDIT_UPDATE, bufAlloc: 100, fwdCnt: 60 }));
    expect(link.wants).toBe(before + 1); // data waits: the carrier is asked to come back
    expect(nextSent(conn).len).toBe(60);
    expect(nextSent(conn).op).toBe(VSOCK_OP.CREDIT_REQUEST); // a new stall, a new request
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW, bufAlloc: 1000, fwdCnt: 160 })); // any header carries credit
    expect(nextSent(conn).len).toBe(90);
    expect(conn.bytesWritten).toBe(250);
  });

  test('a packet carries at most the buffer\'s room', () => {
    const { conn, link } = accepted('stream', 1 << 20);
    conn.write(Buffer.alloc(2 * ROOM + 5, 1));
    expect(drain(conn, link).map((p) => p.len)).toEqual([ROOM, ROOM, 5]);
  });

  test('the window wraps with the u32 counters', () => {
    const { conn } = accepted('stream', 100);
    // The peer has consumed 2^32 - 10 bytes before we sent anything (fwd_cnt wraps): in flight is (0 - (2^32-10)) mod 2^32 = 10.
    conn.onPacket(peerPacket({ op: VSOCK_OP.CREDIT_UPDATE, bufAlloc: 100, fwdCnt: 0xffff_fff6 }));
    conn.write(Buffer.alloc(200));
    expect(nextSent(conn).len).toBe(90);
  });

  test('reading frees credit: a CREDIT_UPDATE with fwd_cnt once a quarter of buf_alloc was read, and every header carries fwd_cnt', async () => {
    const { conn } = accepted();
    const got: Buffer[] = [];
    conn.on('data', (b: Buffer) => got.push(b));
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW }, Buffer.alloc(BUF_ALLOC / 4 - 1, 1)));
    await tick();
    expect(next(conn)).toBe(0); // 1023 bytes freed: not yet worth an update
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW }, Buffer.from([2])));
    await tick();
    expect(nextSent(conn)).toMatchObject({ op: VSOCK_OP.CREDIT_UPDATE, bufAlloc: BUF_ALLOC, fwdCnt: BUF_ALLOC / 4 });
    expect(next(conn)).toBe(0); // one update is enough
    expect(Buffer.concat(got).length).toBe(BUF_ALLOC / 4);
    expect(conn.bytesRead).toBe(BUF_ALLOC / 4);
    conn.write('x');
    expect(nextSent(conn)).toMatchObject({ op: VSOCK_OP.RW, fwdCnt: BUF_ALLOC / 4 });
  });

  test('a slow reader leaves data queued (bounded by what the peer may send) and sends no update', () => {
    const { conn } = accepted();
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW }, Buffer.alloc(3000)));
    expect(conn.receiveQueued).toBe(3000);
    expect(next(conn)).toBe(0);
  });

  test('the peer\'s CREDIT_REQUEST is answered with one CREDIT_UPDATE', () => {
    const { conn } = accepted();
    conn.onPacket(peerPacket({ op: VSOCK_OP.CREDIT_REQUEST }));
    conn.onPacket(peerPacket({ op: VSOCK_OP.CREDIT_REQUEST }));
    expect(nextSent(conn, false)).toMatchObject({ op: VSOCK_OP.CREDIT_UPDATE, fwdCnt: 0, bufAlloc: BUF_ALLOC });
    expect(next(conn)).toBe(0);
  });

  test('model: whatever the writes and the peer\'s pace, bytes stay within the window and arrive whole, in order', () => {
    fc.assert(fc.property(
      fc.array(fc.integer({ min: 1, max: 3000 }), { minLength: 1, maxLength: 8 }),
      fc.integer({ min: 16, max: 5000 }),
      fc.array(fc.integer({ min: 1, max: 4000 }), { minLength: 1, maxLength: 40 }),
      (writes, window, consumeSteps) => {
        const { conn, link } = accepted('stream', window);
        let seq = 0;
        const sent = writes.map((n) => Buffer.from(Array.from({ length: n }, () => seq++ & 0xff)));
        for (const b of sent) conn.write(b);
        const wire: Buffer[] = [];
        let received = 0;
        let onWire = 0; // sent, not yet consumed by the peer
        let consumed = 0;
        for (let step = 0; ; step++) {
          for (const p of drain(conn, link)) {
            if (p.op === VSOCK_OP.RW) {
              wire.push(p.payload);
              received += p.len;
              onWire += p.len;
              if (onWire > window) throw new Error(`${onWire} bytes in flight, window ${window}`);
            } else if (p.op !== VSOCK_OP.CREDIT_REQUEST) throw new Error(`unexpected op ${p.op}`);
          }
          if (onWire === 0 && received === seq) break;
          if (step > seq + 10) throw new Error('no progress'); // each step consumes a byte or sends some
          const take = Math.min(onWire, consumeSteps[step % consumeSteps.length]);
          onWire -= take;
          consumed = (consumed + take) >>> 0;
          conn.onPacket(peerPacket({ op: VSOCK_OP.CREDIT_UPDATE, bufAlloc: window, fwdCnt: consumed }));
        }
        expect(Buffer.concat(wire).equals(Buffer.concat(sent))).toBe(true);
        conn.destroy();
      },
    ), { numRuns: 100 });
  });
});

describe('shutdown', () => {
  test('end() sends SHUTDOWN(SEND) after the queued data; the callbacks run once the carrier posted them', async () => {
    const { conn, link } = accepted('stream', 100, true);
    let written = false;
    conn.write(Buffer.alloc(150), () => (written = true));
    const finished = once(conn, 'finish');
    conn.end();
    expect(nextSent(conn).len).toBe(100);
    expect(nextSent(conn).op).toBe(VSOCK_OP.CREDIT_REQUEST);
    expect(next(conn)).toBe(CREDIT_STALL); // no SHUTDOWN before the rest of the data
    conn.onPacket(peerPacket({ op: VSOCK_OP.CREDIT_UPDATE, bufAlloc: 100, fwdCnt: 100 }));
    expect(nextSent(conn).len).toBe(50);
    expect(next(conn)).toBe(0);
    await tick();
    expect(written).toBe(false); // deferred: not in the middle of the carrier's pass
    link.runDeferred(); // the write completes, so the Writable calls _final
    expect(written).toBe(true);
    expect(nextSent(conn)).toMatchObject({ op: VSOCK_OP.SHUTDOWN, flags: VSOCK_SHUTDOWN.SEND, len: 0 });
    expect(next(conn)).toBe(0);
    link.runDeferred();
    await finished;
  });

  test('the peer\'s SHUTDOWN(SEND) ends the readable side after the queued data; later data is dropped', async () => {
    const { conn } = accepted('stream', BUF_ALLOC, true);
    const got: Buffer[] = [];
    conn.on('data', (b: Buffer) => got.push(b));
    const ended = once(conn, 'end');
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW }, Buffer.from('last')));
    conn.onPacket(peerPacket({ op: VSOCK_OP.SHUTDOWN, flags: VSOCK_SHUTDOWN.SEND }));
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW }, Buffer.from('late')));
    await ended;
    expect(Buffer.concat(got).toString()).toBe('last');
    expect(conn.writable).toBe(true); // allowHalfOpen: our side stays open
  });

  test('SHUTDOWN(RCV) alone ends nothing', async () => {
    const { conn } = accepted();
    let ended = false;
    conn.on('end', () => (ended = true)).resume();
    conn.onPacket(peerPacket({ op: VSOCK_OP.SHUTDOWN, flags: VSOCK_SHUTDOWN.RCV }));
    await tick();
    expect(ended).toBe(false);
  });
});

describe('reset', () => {
  test('RST to a connect is ECONNREFUSED; nothing answers it', async () => {
    const { conn, link } = make();
    conn.startConnect(undefined, undefined);
    nextSent(conn);
    conn.onPacket(peerPacket({ op: VSOCK_OP.RST }));
    const [err] = await once(conn, 'error');
    expect(err.code).toBe('ECONNREFUSED');
    expect(link.forgotten).toBe(1);
    expect(next(conn)).toBe(0);
  });

  test('RST on an established connection is ECONNRESET; queued data is dropped, nothing goes out', async () => {
    const { conn } = accepted('stream', 0);
    conn.write('stuck');
    conn.onPacket(peerPacket({ op: VSOCK_OP.RST, bufAlloc: 0 }));
    const [err] = await once(conn, 'error');
    expect(err.code).toBe('ECONNRESET');
    expect(err.syscall).toBe('virtio-vsock');
    expect(err.message).toMatch(/guest 3:5000 ↔ 2:1234/);
    expect(conn.destroyed).toBe(true);
    expect(next(conn)).toBe(0);
  });

  test('RST after the peer shut down its side is a normal close', async () => {
    const { conn } = accepted();
    conn.resume();
    conn.onPacket(peerPacket({ op: VSOCK_OP.SHUTDOWN, flags: VSOCK_SHUTDOWN.SEND | VSOCK_SHUTDOWN.RCV }));
    let error: Error | undefined;
    conn.on('error', (e) => (error = e));
    conn.onPacket(peerPacket({ op: VSOCK_OP.RST }));
    await once(conn, 'close');
    expect(error).toBeUndefined();
  });

  test('destroy() sends one RST (with the packet type), then nothing; writes after it fail', async () => {
    const { conn, link } = accepted('seqpacket');
    conn.destroy();
    expect(link.forgotten).toBe(1);
    expect(nextSent(conn, false)).toMatchObject({ op: VSOCK_OP.RST, type: VSOCK_TYPE.SEQPACKET, srcPort: LOCAL_PORT, dstPort: PEER_PORT });
    expect(next(conn)).toBe(0);
    await once(conn, 'close');
  });

  test('a transport reset ends the connection with ECONNRESET and sends nothing, not even an RST owed before', async () => {
    const { conn } = accepted();
    conn.write('queued');
    conn.onTransportReset();
    const [err] = await once(conn, 'error');
    expect(err.code).toBe('ECONNRESET');
    expect(next(conn)).toBe(0);
    const other = accepted().conn;
    other.destroy(); // owes an RST...
    other.onTransportReset(); // ...to a peer that is gone
    expect(next(other)).toBe(0);
  });
});

describe('seqpacket', () => {
  test('a message goes out in buffer-sized packets, EOM on the last only', () => {
    const { conn, link } = accepted('seqpacket', 1 << 20);
    conn.write(Buffer.alloc(2 * ROOM + 1, 3));
    conn.write(Buffer.from('two'));
    const packets = drain(conn, link);
    expect(packets.map((p) => [p.len, p.flags, p.type])).toEqual([
      [ROOM, 0, VSOCK_TYPE.SEQPACKET], [ROOM, 0, VSOCK_TYPE.SEQPACKET], [1, VSOCK_SEQ.EOM, VSOCK_TYPE.SEQPACKET], [3, VSOCK_SEQ.EOM, VSOCK_TYPE.SEQPACKET],
    ]);
  });

  test('packets are assembled into one message at EOM; an empty message yields no chunk', async () => {
    const { conn } = accepted('seqpacket');
    const got: Buffer[] = [];
    conn.on('data', (m: Buffer) => got.push(m));
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW }, Buffer.from('hel'), 'seqpacket'));
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW }, Buffer.from('lo'), 'seqpacket'));
    expect(conn.receiveQueued).toBe(5);
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW, flags: VSOCK_SEQ.EOM }, Buffer.from('!'), 'seqpacket'));
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW, flags: VSOCK_SEQ.EOM }, undefined, 'seqpacket'));
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW, flags: VSOCK_SEQ.EOM | VSOCK_SEQ.EOR }, Buffer.from('x'), 'seqpacket'));
    await tick();
    expect(got.map(String)).toEqual(['hello!', 'x']);
  });

  test('a payload shorter than its header claims is taken as far as the buffer holds', async () => {
    const { conn } = accepted('seqpacket');
    const got: Buffer[] = [];
    conn.on('data', (m: Buffer) => got.push(m));
    conn.onPacket(peerPacket({ op: VSOCK_OP.RW, flags: VSOCK_SEQ.EOM, len: 1 << 20 }, Buffer.from('abc'), 'seqpacket'));
    await tick();
    expect(got.map(String)).toEqual(['abc']);
  });

  test('a message larger than the peer\'s buf_alloc fails its write with EMSGSIZE; nothing of it goes out', async () => {
    const { conn, link } = accepted('seqpacket', 100);
    const result = new Promise<Error | null | undefined>((resolve) => conn.write(Buffer.alloc(101), resolve));
    expect(next(conn)).toBe(0);
    link.runDeferred();
    const err = (await result) as NodeJS.ErrnoException;
    expect(err.code).toBe('EMSGSIZE');
    expect(err.message).toMatch(/101 bytes exceeds the peer's receive buffer \(buf_alloc 100\)/);
    await closed(conn);
    expect(nextSent(conn).op).toBe(VSOCK_OP.RST); // the failed write destroyed the connection
  });
});
