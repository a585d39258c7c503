// A small Linux guest under QEMU, driven from Node: builds the initramfs
// (scripts/guest-initramfs.sh), boots it with the caller's network/vsock
// arguments, runs a shell script in the guest and exposes its console output
// line by line. Shared by test/kernel/vmm/nested-guest.test.ts and bench/qemu-vhost.js.
//
// The guest runs `script` (POSIX sh) chrooted into this machine's root, shared
// read-only over 9p, with busybox applets last in PATH. Its run share
// (`guest.runDir` here, /run/guest there) is writable both ways: the host
// can drop files the script waits for (guest.signal(name), `lvg_wait name`
// in the script) and the script can leave results there.
'use strict';
const { execFileSync, spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const INITRAMFS_SCRIPT = path.join(__dirname, 'guest-initramfs.sh');

/** Builds (or reuses) the guest initramfs: { initrd, kernel } paths. */
function buildInitramfs({ kernelDir, kver } = {}) {
  const args = [INITRAMFS_SCRIPT];
  if (kernelDir) args.push('--kernel-dir', kernelDir);
  if (kver) args.push('--kver', kver);
  const [initrd, kernel] = execFileSync('bash', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim().split('\n');
  return { initrd, kernel };
}

/**
 * True when /dev/kvm opens read-write here and the CPU has vmx/svm, as
 * scripts/vm.sh decides: some nested hosts expose a /dev/kvm without hardware
 * virtualization (kvm_pvm), which QEMU cannot use for a stock kernel.
 */
function kvmUsable() {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return /\b(?:vmx|svm)\b/.test(fs.readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return false;
  }
}

// Defined in every guest script: wait for a file the host drops with guest.signal(), and
// start a heartbeat (a line every `$1` seconds, 2 by default, kept out of `lines`) that tells a
// guest which stopped running from one which is running but has nothing to say: a waiting
// test can then tell a guest hung by nested virtualization from a wrong answer.
const HEARTBEAT = 'LVG_ALIVE';
const SCRIPT_PRELUDE =
  'lvg_wait() { while [ ! -e "/run/guest/$1" ]; do sleep 0.05; done; }\n' +
  `lvg_heartbeat() { ( while :; do read up _ </proc/uptime; echo "${HEARTBEAT} $up"; sleep "\${1:-2}"; done ) & }\n`;

/**
 * A booted guest. Console lines arrive as they come (`lines`, 'line' listeners);
 * waitFor() resolves on the first line (from `from` on) matching a pattern.
 */
class Guest {
  constructor(child, runDir, nonce, bootedAt) {
    this.child = child;
    this.runDir = runDir;
    this.bootedAt = bootedAt;
    /** Console lines after the script started (boot noise is in `bootLog`). */
    this.lines = [];
    this.bootLog = [];
    /** Seconds from spawn to the script's start, once it started. */
    this.bootSeconds = undefined;
    this.status = undefined; // the script's exit status
    this.failure = undefined; // init's FAIL reason
    this.stderr = '';
    this.qemuExit = undefined; // QEMU's exit code or signal, once it is gone
    /** Date.now() of the last console line, boot noise included: how long the guest has been silent. */
    this.lastLineAt = bootedAt;
    this._waiters = new Set();
    this._started = false;
    let partial = '';
    const marker = `@@${nonce}@@ `;
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop();
      for (const raw of parts) {
        const line = raw.replace(/\r$/, '');
        this.lastLineAt = Date.now();
        if (line.startsWith(`${HEARTBEAT} `)) continue;
        const at = line.indexOf(marker);
        if (at >= 0) {
          const word = line.slice(at + marker.length);
          if (word === 'START') {
            this._started = true;
            this.bootSeconds = (Date.now() - bootedAt) / 1000;
          } else if (word.startsWith('EXIT ')) this.status = Number(word.slice(5));
          else if (word.startsWith('FAIL ')) this.failure = word.slice(5);
          continue;
        }
        if (!this._started) {
          this.bootLog.push(line);
          continue;
        }
        this.lines.push(line);
        for (const w of this._waiters) w.check();
      }
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => (this.stderr += d));
    /** Resolves with { code, signal } when QEMU is gone. */
    this.exited = new Promise((resolve) => {
      child.on('error', (err) => {
        this.stderr += `spawn: ${err.message}\n`;
        resolve({ code: null, signal: null });
      });
      child.on('close', (code, signal) => {
        this.qemuExit = signal ?? code;
        resolve({ code, signal });
      });
    });
    this.exited.then(() => {
      for (const w of this._waiters) w.gone();
    });
  }

  /** A description of why the guest ended, for error messages. */
  why() {
    const tail = (a) => a.slice(-15).join('\n') + (this.qemuExit === undefined ? '' : `\n(QEMU exited ${this.qemuExit})`);
    if (this.failure) return `guest init failed: ${this.failure}\n${tail(this.bootLog)}`;
    if (!this._started) return `the guest has not started its script; console:\n${tail(this.bootLog)}\n${this.stderr}`;
    if (this.status !== undefined) return `guest script exited ${this.status}\n${tail(this.lines)}\n${this.stderr}`;
    // panic=-1 and -no-reboot: a guest panic or triple fault resets the guest, and QEMU exits 0.
    if (this.qemuExit !== undefined) return `the guest ended before its script did (a panic or a reset)\n${tail(this.lines)}\n${this.stderr}`;
    return `guest script still running\n${tail(this.lines)}\n${this.stderr}`;
  }

  /**
   * Resolves with the match of the first script line at index ≥ `from` that
   * matches `pattern`; rejects after `ms` or when QEMU exits first.
   */
  waitFor(pattern, ms = 60_000, from = 0) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          for (let i = Math.max(from, w.next ?? from); i < this.lines.length; i++) {
            const m = pattern.exec(this.lines[i]);
            if (m) {
              done();
              resolve(Object.assign(m, { lineIndex: i }));
              return;
            }
          }
          w.next = this.lines.length;
        },
        gone: () => {
          done();
          reject(new Error(`guest exited while waiting for ${pattern}: ${this.why()}`));
        },
      };
      const timer = setTimeout(() => {
        done();
        const silent = ((Date.now() - this.lastLineAt) / 1000).toFixed(1);
        reject(new Error(`timed out after ${ms} ms waiting for ${pattern} (the guest's last console line came ${silent} s ago) in the guest output:\n${this.lines.slice(-15).join('\n')}`));
      }, ms);
      const done = () => {
        clearTimeout(timer);
        this._waiters.delete(w);
      };
      this._waiters.add(w);
      w.check();
      if (this._waiters.has(w) && this.child.exitCode !== null) w.gone();
    });
  }

  /**
   * `promise` (e.g. a sink's wait), rejected as soon as QEMU is gone instead of at its own
   * timeout; `what` names it in the error, which matches "guest exited while waiting".
   */
  whileUp(promise, what) {
    const gone = this.exited.then(() => {
      throw new Error(`guest exited while waiting for ${what}: ${this.why()}`);
    });
    gone.catch(() => {}); // unhandled only if the guest outlives the promise
    return Promise.race([promise, gone]);
  }

  /** Drops an (empty) file the guest script waits for with `lvg_wait name`. */
  signal(name) {
    if (fs.existsSync(this.runDir)) fs.writeFileSync(path.join(this.runDir, name), ''); // else stopped already
  }

  /** Resolves with the script's exit status once QEMU powered off; rejects after ms. */
  async finished(ms = 60_000) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`guest still running after ${ms} ms: ${this.lines.slice(-10).join('\n')}`)), ms);
    });
    try {
      await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
    if (this.status === undefined) throw new Error(this.why());
    return this.status;
  }

  /**
   * Kills QEMU (SIGKILL after 5 s) and removes the run dir; resolves once it is gone. Idempotent.
   * Rejects with code ERR_GUEST_UNKILLABLE when QEMU outlives SIGKILL by `killWaitMs`: only a
   * task stuck in this machine's kernel does that (a CI run saw it after a nested guest under
   * TCG stopped answering), so the error says where each of its threads is, and QEMU's pipes
   * are let go so that this process can still exit.
   */
  async stop(killWaitMs = 30_000) {
    if (!this._gone()) {
      this.child.kill('SIGTERM');
      if (!(await this._exitWithin(5000))) {
        this.child.kill('SIGKILL');
        if (!(await this._exitWithin(killWaitMs))) {
          const pid = this.child.pid;
          this.child.stdout.destroy();
          this.child.stderr.destroy();
          this.child.unref();
          const err = new Error(`QEMU (pid ${pid}) is still there ${killWaitMs / 1000} s after SIGKILL: it is stuck in this machine's kernel, which is not healthy any more\n${taskStates(pid)}`);
          err.code = 'ERR_GUEST_UNKILLABLE';
          throw err;
        }
      }
    }
    fs.rmSync(this.runDir, { recursive: true, force: true });
  }

  _gone() {
    return this.child.exitCode !== null || this.child.signalCode !== null;
  }

  /** True once the process has exited (not waiting for its pipes), false after ms. */
  _exitWithin(ms) {
    if (this._gone()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (gone) => {
        clearTimeout(timer);
        this.child.off('exit', onExit);
        resolve(gone);
      };
      const onExit = () => done(true);
      const timer = setTimeout(() => done(false), ms);
      this.child.on('exit', onExit);
    });
  }
}

/** Each thread of `pid`: name, state, wchan and (as root) its kernel stack's top frames. */
function taskStates(pid) {
  const read = (file) => {
    try {
      return fs.readFileSync(file, 'utf8').trim();
    } catch (err) {
      return `(${err.code})`;
    }
  };
  let tids;
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch (err) {
    return `(/proc/${pid}/task: ${err.code})`;
  }
  return tids
    .map((tid) => {
      const dir = `/proc/${pid}/task/${tid}`;
      const state = /^State:\s*(.*)$/m.exec(read(`${dir}/status`))?.[1] ?? '?';
      const stack = read(`${dir}/stack`).split('\n').slice(0, 6).map((l) => `    ${l}`).join('\n');
      return `  ${tid} ${read(`${dir}/comm`)}: ${state}, wchan ${read(`${dir}/wchan`)}\n${stack}`;
    })
    .join('\n');
}

/**
 * Boots the guest and returns a Guest once QEMU is spawned.
 *   kernel, initrd   from buildInitramfs()
 *   script           POSIX sh run in the guest (lvg_wait and lvg_heartbeat are predefined)
 *   files            { name: contents } written next to it in the run share
 *   qemuArgs         device arguments (e.g. qemuArgs(...).args, or `-netdev tap,...`)
 *   spawn            (command, args, { stdio }) => ChildProcess; default child_process.spawn
 *                    (pass one that calls spawnVmm(command, args, handoff, options) for prepared fds)
 *   smp, mem         default 2, 256; accel/cpu default kvm/host when /dev/kvm is usable
 *   hostShare        share this machine's root read-only as the guest's root (default true)
 *   append           extra kernel command line
 */
function bootGuest(options) {
  const { kernel, initrd, script, files = {}, qemuArgs = [], smp = 2, mem = 256, hostShare = true, append = '' } = options;
  const spawnFn = options.spawn ?? ((cmd, args, opts) => spawn(cmd, args, opts));
  const kvm = kvmUsable();
  const accel = options.accel ?? (kvm ? 'kvm' : 'tcg');
  const cpu = options.cpu ?? (accel === 'kvm' ? 'host' : 'max');
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lv-guest-'));
  fs.writeFileSync(path.join(runDir, 'cmd'), SCRIPT_PRELUDE + script);
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(runDir, name), text);
  const nonce = crypto.randomBytes(8).toString('hex');
  const virtfs = (dir, tag, extra) => ['-virtfs', `local,path=${dir.replace(/,/g, ',,')},mount_tag=${tag},security_model=none,multidevs=remap${extra}`];
  const args = [
    '-nodefaults', '-no-user-config', '-machine', 'q35', '-accel', accel, '-cpu', cpu,
    '-smp', String(smp), '-m', String(mem), '-display', 'none', '-no-reboot',
    '-chardev', 'stdio,id=con,signal=off', '-serial', 'chardev:con',
    '-kernel', kernel, '-initrd', initrd,
    '-append', `console=ttyS0 panic=-1 quiet loglevel=2 lvg.nonce=${nonce} nowatchdog audit=0 mitigations=off ${append}`.trim(),
    ...qemuArgs,
    '-device', 'virtio-rng-pci',
    ...(hostShare ? virtfs('/', 'host', ',readonly=on') : []),
    ...virtfs(runDir, 'run', ''),
  ];
  const child = spawnFn(options.qemu ?? 'qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Guest(child, runDir, nonce, Date.now());
}

// /proc reports CPU times in USER_HZ ticks, 100 per second on every Linux architecture Node runs on.
const USER_HZ = 100;

/** This process's CPU time in seconds (utime + stime of /proc/self/stat, all threads). */
function selfCpuSeconds() {
  const stat = fs.readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
  return (Number(f[11]) + Number(f[12])) / USER_HZ;
}

/** CPU seconds per thread of this process: [{ tid, name, seconds }] (to see where control-plane time goes). */
function selfThreadsCpu() {
  const out = [];
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      const stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.push({ tid: Number(tid), name, seconds: (Number(f[11]) + Number(f[12])) / USER_HZ });
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

/** Per-thread CPU seconds between two selfThreadsCpu() samples, busiest first, as "name/tid 0.12s" text. */
function threadsCpuDelta(before, after) {
  const was = new Map(before.map((t) => [t.tid, t.seconds]));
  return after
    .map((t) => ({ ...t, seconds: t.seconds - (was.get(t.tid) ?? 0) }))
    .filter((t) => t.seconds > 0)
    .sort((a, b) => b.seconds - a.seconds)
    .map((t) => `${t.name}/${t.tid} ${t.seconds.toFixed(2)}s`)
    .join(', ');
}

/**
 * A TCP sink in a separate process (python3): accepts connections on host:port,
 * counts each one's bytes and prints one JSON line per connection when it
 * closes: { peer, bytes, seconds } (seconds from first byte to EOF), and
 * { first: peer } when a connection's first byte arrives. Resolves once it
 * listens; `reports` and `firsts` fill as events come.
 */
const SINK_PY = String.raw`
import json, socket, sys, threading, time
lock = threading.Lock()
def say(event):  # one whole line per event: the threads must not interleave their output
    with lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("LISTENING", flush=True)
def drain(c, peer):
    buf = bytearray(1 << 20)
    n, t0 = 0, None
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        if t0 is None:
            t0 = time.monotonic()
            say({"first": "%s:%d" % peer})
        n += k
    dt = time.monotonic() - t0 if t0 is not None else 0.0
    c.close()
    say({"peer": "%s:%d" % peer, "bytes": n, "seconds": dt})
while True:
    c, peer = s.accept()
    threading.Thread(target=drain, args=(c, peer), daemon=True).start()
`;

function startSink(host, port, python = '/usr/bin/python3') {
  const child = spawn(python, ['-c', SINK_PY, host, String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  const sink = { child, reports: [], firsts: [], listeners: new Set(), stderr: '' };
  let partial = '';
  child.stderr.on('data', (d) => (sink.stderr += d));
  const claimed = { reports: 0, firsts: 0 };
  const nextOf = (kind, ms) =>
    new Promise((resolve, reject) => {
      const want = claimed[kind]++;
      const check = () => {
        if (sink[kind].length > want) {
          clearTimeout(timer);
          sink.listeners.delete(check);
          resolve(sink[kind][want]);
        }
      };
      const timer = setTimeout(() => {
        sink.listeners.delete(check);
        reject(new Error(`sink: nothing in ${kind} after ${ms} ms ${sink.stderr}`));
      }, ms);
      sink.listeners.add(check);
      check();
    });
  /** Resolves with the next connection's report { peer, bytes, seconds } once it closed (in order of closing). */
  sink.next = (ms = 120_000) => nextOf('reports', ms);
  /** Resolves with the peer ("ip:port") of the next connection that delivered its first byte. */
  sink.nextFirst = (ms = 120_000) => nextOf('firsts', ms);
  /** Resolves with the report of the connection from `peer` (as nextFirst() gave it) once it closed. */
  sink.reportOf = (peer, ms = 120_000) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const report = sink.reports.find((r) => r.peer === peer);
        if (report) {
          clearTimeout(timer);
          sink.listeners.delete(check);
          resolve(report);
        }
      };
      const timer = setTimeout(() => {
        sink.listeners.delete(check);
        reject(new Error(`sink: no report from ${peer} after ${ms} ms ${sink.stderr}`));
      }, ms);
      sink.listeners.add(check);
      check();
    });
  sink.stop = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`sink exited ${code}: ${sink.stderr}`)));
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop();
      for (const line of parts) {
        if (line === 'LISTENING') resolve(sink);
        else if (line.startsWith('{')) {
          let event;
          try {
            event = JSON.parse(line);
          } catch {
            sink.stderr += `unparsable sink line: ${line}\n`;
            continue;
          }
          if (event.first) sink.firsts.push(event.first);
          else sink.reports.push(event);
          for (const l of sink.listeners) l();
        }
      }
    });
  });
}

/**
 * Guest-side python3 sender: `python3 /run/guest/send.py HOST PORT BYTES [SECONDS]` streams
 * zeros, 1 MiB per send, at least BYTES and (if given) for at least SECONDS, then prints
 * "SENT <bytes>".
 */
const SEND_PY = String.raw`
import socket, sys, time
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
until = time.monotonic() + (float(sys.argv[4]) if len(sys.argv) > 4 else 0)
buf = memoryview(bytes(1 << 20))
s = socket.create_connection((host, port))
sent = 0
while sent < total or time.monotonic() < until:
    k = min(total - sent, len(buf)) if sent < total else len(buf)
    s.sendall(buf[:k])
    sent += k
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
print("SENT", sent, flush=True)
`;

module.exports = { buildInitramfs, bootGuest, kvmUsable, selfCpuSeconds, selfThreadsCpu, threadsCpuDelta, startSink, Guest, SEND_PY };
