#!/usr/bin/env node
// What the garbage-collection watch of every fd owner costs (issue 13 item 8):
// each FdOwner / GuestMemory records where it was created (Error.captureStackTrace
// on a small object, 10 frames, formatted to text at once: left unformatted, V8's
// captured frames would keep their receivers alive) and registers with a
// FinalizationRegistry; close() unregisters. Measured here in one run, in
// interleaved blocks, against the syscalls the object wraps:
//   eventfd   EventFd.create().close()                   (eventfd(2) + close(2) + the watch)
//   watch     the watch alone: capture + format + register + unregister
//   capture   capture + format alone
//   lazy      capture without formatting (what it would cost if it were safe)
// Prints ns per operation and the watch's share of an EventFd's life.
//   node bench/gc-warning.js [--iterations N]   (needs dist/: npm run build:ts)
'use strict';
const path = require('node:path');
const { EventFd } = require(path.join(__dirname, '..', 'dist'));

const arg = process.argv.indexOf('--iterations');
const N = arg > 0 ? Number(process.argv[arg + 1]) : 200_000;
const BLOCK = 10_000;

const registry = new FinalizationRegistry(() => {});
function lazy() {
  const site = {};
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 10;
  Error.captureStackTrace(site, lazy);
  Error.stackTraceLimit = limit;
  return site;
}
const capture = () => ({ stack: lazy().stack });
const variants = {
  eventfd: () => EventFd.create().close(),
  watch: () => {
    const owner = {};
    const record = { site: capture() };
    registry.register(owner, record, record);
    registry.unregister(record);
  },
  capture: () => capture(),
  lazy: () => lazy(),
};
const total = Object.fromEntries(Object.keys(variants).map((k) => [k, 0n]));
for (const f of Object.values(variants)) for (let i = 0; i < 1000; i++) f(); // warm up
for (let done = 0; done < N; done += BLOCK) {
  for (const [name, f] of Object.entries(variants)) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < BLOCK; i++) f();
    total[name] += process.hrtime.bigint() - t0;
  }
}
const ns = (k) => Number(total[k]) / N;
for (const k of Object.keys(variants)) console.log(`${k.padEnd(8)} ${ns(k).toFixed(0).padStart(6)} ns/op`);
console.log(`watch / EventFd life (create + close, watch included): ${((100 * ns('watch')) / ns('eventfd')).toFixed(1)}%`);
