// Command-line options of the benches: `--name N` for the positive integers a
// bench declares (with their defaults) and bare `--flag`s; anything else, or a
// value that is not an integer in 1..max, prints the usage line and exits 2.
'use strict';

/**
 * name: for messages; usageLine: printed on a mistake; defaults: { option: integer }.
 * flags: bare switches (default false); max: the largest value accepted.
 */
function parseOptions(argv, { name, usageLine, defaults, flags = [], max = Number.MAX_SAFE_INTEGER }) {
  const usage = (msg) => {
    console.error(`${name}: ${msg}`);
    console.error(`usage: ${usageLine}`);
    process.exit(2);
  };
  const opts = { ...defaults };
  for (const f of flags) opts[f] = false;
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].startsWith('--') ? argv[i].slice(2) : null;
    if (key !== null && flags.includes(key)) {
      opts[key] = true;
      continue;
    }
    if (key === null || !Object.hasOwn(defaults, key)) usage(`unknown option ${argv[i]}`);
    const n = Number(argv[++i]);
    if (!Number.isInteger(n) || n < 1 || n > max) usage(`${argv[i - 1]} must be an integer in 1..${max}`);
    opts[key] = n;
  }
  return opts;
}

module.exports = { parseOptions };
