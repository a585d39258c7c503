#!/usr/bin/env node
// A scripted vhost-user back-end for the front-end's tests, in its own process
// (the front-end's calls block this thread while they wait for a reply, as
// QEMU's do). Written on Node's `net`, independently of the library's codec:
// it reads headers and payloads with Buffer methods and answers per `mode`.
// It cannot receive fds (net drops them); the qemu-storage-daemon tests cover those.
//
//   node fake-vhost-user.js <socket path> <mode> [json options]
//
// Modes: ok, garbage, wrong-type, wrong-size, bad-flags, silent, hangup,
// unsolicited, nack (options.nack: request id answered with status 1),
// empty-config, config-offset (GET_CONFIG answered for another offset),
// wrong-index (GET_VRING_BASE answered for another ring). Prints "listening" when ready, then one JSON line per message received.
'use strict';
const net = require('node:net');
const fs = require('node:fs');

const [sockPath, mode, json] = process.argv.slice(2);
const opts = json ? JSON.parse(json) : {};
const FEATURES = BigInt(opts.features ?? '0x140000000'); // VERSION_1 | PROTOCOL_FEATURES
const PROTOCOL = BigInt(opts.protocol ?? '0x20b'); // MQ | LOG_SHMFD | REPLY_ACK | CONFIG
const NEED_REPLY = 0x8;

function header(request, flags, size) {
  const h = Buffer.alloc(12);
  h.writeUInt32LE(request, 0);
  h.writeUInt32LE(flags, 4);
  h.writeUInt32LE(size, 8);
  return h;
}
const u64 = (v) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
};
const reply = (request, payload, flags = 0x5) => Buffer.concat([header(request, flags, payload.length), payload]);

function answer(sock, request, flags, payload) {
  const name = request;
  switch (mode) {
    case 'silent':
      return;
    case 'hangup':
      sock.destroy();
      return;
    case 'wrong-type':
      if (request === 1) return sock.write(reply(15, u64(FEATURES)));
      break;
    case 'wrong-size':
      if (request === 1) return sock.write(reply(1, Buffer.alloc(4)));
      break;
    case 'bad-flags':
      if (request === 1) return sock.write(reply(1, u64(FEATURES), 0x1));
      break;
    default:
  }
  void name;
  switch (request) {
    case 1: // GET_FEATURES
      return sock.write(reply(1, u64(FEATURES)));
    case 15: // GET_PROTOCOL_FEATURES
      return sock.write(reply(15, u64(PROTOCOL)));
    case 17: // GET_QUEUE_NUM
      return sock.write(reply(17, u64(2)));
    case 11: {
      // GET_VRING_BASE: base 42 (wrong-index: for the next ring)
      const index = payload.readUInt32LE(0) + (mode === 'wrong-index' ? 1 : 0);
      return sock.write(reply(11, Buffer.concat([u64(index).subarray(0, 4), Buffer.from([42, 0, 0, 0])])));
    }
    case 24: {
      // GET_CONFIG: echo offset/size/flags, bytes 0..size-1 = offset + i
      if (mode === 'empty-config') return sock.write(reply(24, Buffer.alloc(0)));
      const size = payload.readUInt32LE(4);
      const body = Buffer.from(payload);
      if (mode === 'config-offset') body.writeUInt32LE(payload.readUInt32LE(0) + 4, 0);
      for (let i = 0; i < size; i++) body[12 + i] = (payload.readUInt32LE(0) + i) & 0xff;
      return sock.write(reply(24, body));
    }
    case 6: // SET_LOG_BASE with LOG_SHMFD: the back-end answers
      return sock.write(reply(6, u64(0)));
    default:
      if (flags & NEED_REPLY) sock.write(reply(request, u64(mode === 'nack' && request === opts.nack ? 1 : 0)));
  }
}

const server = net.createServer((sock) => {
  if (mode === 'garbage') {
    sock.write('HTTP/1.1 400 Bad Request\r\n\r\n');
    return;
  }
  let buf = Buffer.alloc(0);
  let handshook = false;
  sock.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 12) {
      const request = buf.readUInt32LE(0);
      const flags = buf.readUInt32LE(4);
      const size = buf.readUInt32LE(8);
      if (buf.length < 12 + size) break;
      const payload = buf.subarray(12, 12 + size);
      buf = buf.subarray(12 + size);
      process.stdout.write(`${JSON.stringify({ request, flags, payload: payload.toString('hex') })}\n`);
      answer(sock, request, flags, payload);
      if (mode === 'unsolicited' && request === 16 && !handshook) {
        handshook = true;
        setTimeout(() => sock.write(reply(1, u64(0))), 50);
      }
    }
  });
  sock.on('error', () => {});
});
fs.rmSync(sockPath, { force: true });
server.listen(sockPath, () => process.stdout.write('listening\n'));
process.on('SIGTERM', () => process.exit(0));
