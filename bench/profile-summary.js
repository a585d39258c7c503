#!/usr/bin/env node
// Summarises a V8 .cpuprofile (node --cpu-prof): self time by category
// (idle, GC, native/program, N-API calls of the ring and eventfd wrappers,
// JavaScript of this library, other JavaScript)
// and the top functions by self time, so a bench run under emulation can say
// what share of the busy time is JavaScript.
//
//   node bench/profile-summary.js FILE.cpuprofile [--top N]
'use strict';
const fs = require('node:fs');

// One-line library methods that only call into the addon: V8 books part of
// the time spent in the native code (and its syscalls) as their self time.
const NATIVE_DOORS = new Set(['postEncoded', 'collectInto', 'notify', 'enableCallbacks', 'disableCallbacks', 'lend', 'revoke', 'read', 'write']);

/** Lines describing a V8 CPU profile: self time by category and the `top` functions. */
function summarize(prof, top = 15) {
  const byId = new Map(prof.nodes.map((node) => [node.id, node]));
  const self = new Map();
  for (let i = 0; i < prof.samples.length; i++) {
    const dt = prof.timeDeltas[i + 1] ?? 0;
    self.set(prof.samples[i], (self.get(prof.samples[i]) ?? 0) + dt);
  }
  const cats = { idle: 0, gc: 0, 'native/program': 0, 'N-API calls': 0, 'library JS': 0, 'bench JS': 0, 'node internals JS': 0 };
  const fns = new Map();
  for (const [id, us] of self) {
    const { callFrame: cf } = byId.get(id);
    let cat;
    if (cf.functionName === '(idle)') cat = 'idle';
    else if (cf.functionName === '(garbage collector)') cat = 'gc';
    else if (cf.functionName === '(program)' || cf.functionName === '(root)') cat = 'native/program';
    else if (cf.url === '') cat = 'N-API calls'; // an addon function (V8 may name it after another of the addon's functions)
    else if (/\/(dist|lib)\//.test(cf.url) && NATIVE_DOORS.has(cf.functionName)) cat = 'N-API calls';
    else if (/\/(dist|lib)\//.test(cf.url)) cat = 'library JS';
    else if (/\/bench\//.test(cf.url)) cat = 'bench JS';
    else cat = 'node internals JS';
    cats[cat] += us;
    const key = `${cf.functionName || '(anonymous)'} ${cf.url.replace(/^.*\/(dist|lib|bench)\//, '$1/')}:${cf.lineNumber + 1} [${cat}]`;
    fns.set(key, (fns.get(key) ?? 0) + us);
  }
  const out = [];
const total = Object.values(cats).reduce((a, b) => a + b, 0);
const busy = total - cats.idle;
out.push(`${(total / 1e6).toFixed(2)} s sampled, ${(busy / 1e6).toFixed(2)} s busy`);
for (const [k, v] of Object.entries(cats)) {
  out.push(`  ${k.padEnd(18)} ${(v / 1e6).toFixed(2).padStart(7)} s  ${k === 'idle' ? '' : `${((100 * v) / busy).toFixed(1)}% of busy`}`);
}
out.push(`  JavaScript (library + bench + node internals): ${((100 * (cats['library JS'] + cats['bench JS'] + cats['node internals JS'])) / busy).toFixed(1)}% of busy`);
out.push(`top ${top} by self time:`);
for (const [k, v] of [...fns].sort((a, b) => b[1] - a[1]).slice(0, top)) out.push(`  ${(v / 1e3).toFixed(0).padStart(7)} ms  ${k}`);
  return out;
}

module.exports = { summarize };

if (require.main === module) {
  const [file, flag, n] = process.argv.slice(2);
  if (!file) {
    console.error('usage: node bench/profile-summary.js FILE.cpuprofile [--top N]');
    process.exit(2);
  }
  const lines = summarize(JSON.parse(fs.readFileSync(file, 'utf8')), flag === '--top' ? Number(n) : 15);
  console.log(`${file}:`);
  for (const l of lines) console.log(l);
}
