#!/usr/bin/env node
// The `linux-vhost` command. Each subcommand is one entry of COMMANDS; modules
// that load the native addon are required only by the command that needs
// them, so `help` and `vm` work without a build.
import { checkLabel } from '../netdev/creator';
import { runInTestVm, runTestVmScript, whereToRun } from './test-vm';

interface Command {
  /** One line for the usage text, e.g. 'probe [--json]'. */
  synopsis: string;
  summary: string;
  /** Returns the exit status (a promise for commands that wait on I/O). */
  run(args: string[]): number | Promise<number>;
}

/** Exit status for usage errors, as in most Unix tools. */
const EXIT_USAGE = 2;

function usage(): string {
  const lines = ['usage: linux-vhost <command> [args]', '', 'commands:'];
  const width = Math.max(...Object.values(COMMANDS).map((c) => c.synopsis.length));
  for (const c of Object.values(COMMANDS)) lines.push(`  ${c.synopsis.padEnd(width)}  ${c.summary}`);
  return lines.join('\n') + '\n';
}

function usageError(message: string): number {
  process.stderr.write(`linux-vhost: ${message}\n\n${usage()}`);
  return EXIT_USAGE;
}

function probeCommand(args: string[]): number {
  const unknown = args.filter((a) => a !== '--json');
  if (unknown.length > 0) return usageError(`probe: unknown argument '${unknown[0]}'`);
  const { probe, probeToJson, formatProbe } = require('../vhost/probe') as typeof import('../vhost/probe');
  const report = probe();
  process.stdout.write(args.includes('--json') ? probeToJson(report) + '\n' : formatProbe(report));
  return 0;
}

function vmCommand(args: string[]): number {
  if (args.length === 0) return usageError('vm: missing command (linux-vhost vm -- <command...>)');
  // vm.sh takes its own options before '--' and the command after it.
  return runTestVmScript(args, { label: 'linux-vhost: vm' });
}

/** What runDemo() opens: a tap and a vhost-net device for the ping and burst, a vhost-vsock device for the agent. */
const DEMO_NEEDS = { root: true, devices: ['/dev/vhost-net', '/dev/net/tun', '/dev/vhost-vsock'] };

/** Exit status after SIGINT, as shells report it. */
const EXIT_INTERRUPTED = 130;

/**
 * Runs the demo here when this process can (root, /dev/vhost-net,
 * /dev/net/tun), else re-runs `demo` inside the test VM (never from inside it).
 */
function demoCommand(args: string[]): number | Promise<number> {
  const demo = require('./demo') as typeof import('./demo');
  const parsed = demo.parseDemoArgs(args);
  if (typeof parsed === 'string') {
    process.stderr.write(`linux-vhost: ${parsed}\n\n${demo.demoUsage()}`);
    return EXIT_USAGE;
  }
  if (parsed.help) {
    process.stdout.write(demo.demoUsage());
    return 0;
  }
  const { place } = whereToRun(DEMO_NEEDS);
  if (place === 'nowhere') {
    process.stderr.write('linux-vhost: demo: inside the test VM but not root or /dev/vhost-net, /dev/vhost-vsock or /dev/net/tun is missing\n');
    return 1;
  }
  if (place === 'test-vm') {
    process.stderr.write('linux-vhost: demo: this host lacks root, /dev/vhost-net, /dev/vhost-vsock or /dev/net/tun: running the demo inside the test VM (scripts/vm.sh)\n');
    return runInTestVm(process.execPath, [__filename, 'demo', ...args], { label: 'linux-vhost: vm' });
  }
  return runDemoHere(demo, parsed);
}

async function runDemoHere(demo: typeof import('./demo'), parsed: { frames?: number; frameSize?: number }): Promise<number> {
  const controller = new AbortController();
  // The first Ctrl-C aborts (the demo cleans up); a second one exits at once (the kernel drops the tap and device with our fds).
  const onSigint = () => (controller.signal.aborted ? process.exit(EXIT_INTERRUPTED) : controller.abort());
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  try {
    const report = await demo.runDemo({ frames: parsed.frames, frameSize: parsed.frameSize, signal: controller.signal });
    process.stdout.write(demo.formatDemoReport(report));
    const ok = report.ping.received === report.ping.transmitted && report.ping.received > 0 && report.burst.arrived === report.burst.frames;
    return ok ? 0 : 1;
  } catch (err) {
    if (controller.signal.aborted) {
      process.stderr.write('\nlinux-vhost: demo: interrupted, everything it set up is removed\n');
      return EXIT_INTERRUPTED;
    }
    process.stderr.write(`\nlinux-vhost: demo failed: ${(err as Error).message}\n`);
    return 1;
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
  }
}

/** Parses `cleanup [--dry-run] [--label L] [--json]`; a string is a usage error. */
export function parseCleanupArgs(args: string[]): { dryRun: boolean; label?: string; json: boolean } | string {
  const out: { dryRun: boolean; label?: string; json: boolean } = { dryRun: false, json: false };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--dry-run') out.dryRun = true;
    else if (a === '--json') out.json = true;
    else if (a === '--label' || a.startsWith('--label=')) {
      const value = a === '--label' ? args[++i] : a.slice('--label='.length);
      try {
        out.label = checkLabel(value, '--label');
      } catch (err) {
        return `cleanup: ${(err as Error).message}`;
      }
    } else return `cleanup: unknown argument '${a}'`;
  }
  return out;
}

/**
 * Removes what processes that died left behind (netdev/orphans.ts): marked
 * links and named netns whose creator is gone. Exit 1 when a removal failed.
 */
function cleanupCommand(args: string[]): number {
  const parsed = parseCleanupArgs(args);
  if (typeof parsed === 'string') return usageError(parsed);
  const { cleanupOrphans, describeOrphan } = require('../netdev/orphans') as typeof import('../netdev/orphans');
  const result = cleanupOrphans({ dryRun: parsed.dryRun, label: parsed.label });
  if (parsed.json) {
    const plain = (o: import('../netdev/orphans').Orphan) => ({ ...o, creator: { ...o.creator, start: String(o.creator.start), pidns: String(o.creator.pidns) } });
    const json = {
      dryRun: result.dryRun,
      removed: result.removed.map(plain),
      failed: result.failed.map((f) => ({ ...plain(f.orphan), error: { code: (f.error as { code?: string }).code, message: f.error.message } })),
    };
    process.stdout.write(JSON.stringify(json, null, 2) + '\n');
  } else {
    const verb = result.dryRun ? 'would remove' : 'removed';
    for (const o of result.removed) process.stdout.write(`${verb} ${describeOrphan(o)}\n`);
    for (const f of result.failed) process.stdout.write(`failed to remove ${describeOrphan(f.orphan)}: ${f.error.message}\n`);
    if (result.removed.length === 0 && result.failed.length === 0) process.stdout.write('no orphans\n');
  }
  return result.failed.length > 0 ? 1 : 0;
}

const COMMANDS: Record<string, Command> = {
  probe: {
    synopsis: 'probe [--json]',
    summary: 'show what this host offers for vhost (devices, features, modules) and how to fix what is missing',
    run: probeCommand,
  },
  demo: {
    synopsis: 'demo [--frames N] [--size BYTES]',
    summary: 'ping a virtio-net guest in this process over vhost-net and a tap, push a burst, print figures (runs in the test VM when needed)',
    run: demoCommand,
  },
  cleanup: {
    synopsis: 'cleanup [--dry-run] [--label L] [--json]',
    summary: 'remove bridges, veths, macvtaps, persistent taps and netns left by library users that died (only marked ones)',
    run: cleanupCommand,
  },
  vm: {
    synopsis: 'vm [options] -- <command...>',
    summary: 'run a command as root in a throwaway VM with vhost devices (scripts/vm.sh --help)',
    run: vmCommand,
  },
  help: {
    synopsis: 'help',
    summary: 'show this help',
    run: () => {
      process.stdout.write(usage());
      return 0;
    },
  },
};

/** Runs the CLI with argv (without node and the script) and returns the exit status. */
export function main(argv: string[]): number | Promise<number> {
  const [name, ...args] = argv;
  if (name === undefined) return usageError('missing command');
  if (name === '--help' || name === '-h') return COMMANDS.help.run([]);
  const command = Object.prototype.hasOwnProperty.call(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!command) return usageError(`unknown command '${name}'`);
  return command.run(args);
}

if (require.main === module) {
  const status = main(process.argv.slice(2));
  if (typeof status === 'number') process.exitCode = status;
  else
    status.then(
      (code) => (process.exitCode = code),
      (err: Error) => {
        process.stderr.write(`linux-vhost: ${err.message}\n`);
        process.exitCode = 1;
      },
    );
}
