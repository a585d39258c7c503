// Orphans after a crash, on the real kernel (root, inside the test VM): a
// child process makes one of each kernel-persistent object the library
// creates (bridge, veth, macvtap, persistent tap, named netns, a link in
// another named netns), is killed with SIGKILL, and listOrphans() /
// cleanupOrphans() / `linux-vhost cleanup` find and remove exactly those.
// iproute2 (`ip -j link`, `ip netns list`) judges what is left. Objects made
// with `ip` (no mark), objects whose creator still runs (this process) and
// marks from another pid namespace are never touched. Needs dist/ (the child
// and the CLI run the built library).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cleanupOrphans, listMarked, listOrphans } from '../../../lib/netdev/orphans';
import { currentMark, formatMark, NETNS_NOTES_DIR } from '../../../lib/netdev/creator';
import { Rtnl } from '../../../lib/netdev/links';
import { NetNs } from '../../../lib/netdev/netns';
import { describeKernel, disposeAfterEach } from '../../support/helpers';

const root = path.resolve(__dirname, '../../..');
const dist = path.join(root, 'dist', 'index.js');
const bin = path.join(root, 'dist', 'cli', 'main.js');
const prefix = `lvo${process.pid % 1000}`;
let seq = 0;
const fresh = (): string => `${prefix}${seq++}`;

/** Link names iproute2 sees, in this namespace or (netns) another one. */
function ipLinks(netns?: string): string[] {
  const args = netns ? ['-n', netns, '-j', 'link', 'show'] : ['-j', 'link', 'show'];
  return (JSON.parse(execFileSync('ip', args, { encoding: 'utf8' })) as { ifname: string }[]).map((l) => l.ifname);
}

/** Named namespaces iproute2 sees. */
function ipNetns(): string[] {
  const out = execFileSync('ip', ['-j', 'netns', 'list'], { encoding: 'utf8' }).trim();
  return out ? (JSON.parse(out) as { name: string }[]).map((n) => n.name) : [];
}

// The child: makes each kind, prints their names as one JSON line, then waits to be killed.
const CHILD = `
const lv = require(${JSON.stringify(dist)});
const [p, lower1, lower2, hostNs] = process.argv.slice(1);
const made = {};
lv.bridge(p + 'b');                                            made.bridge = p + 'b';
lv.Rtnl.open().createVeth(p + 'va', p + 'vb');                 made.veth = p + 'va';
made.macvtap = lv.Macvtap.create(lower1, 'bridge', { name: p + 'm' }).name;
made.macvtapTemplate = lv.Macvtap.create(lower2, 'bridge').name; // 'macvtap%d', resolved by the kernel
lv.Tap.create({ name: p + 't', persist: true });               made.tap = p + 't';
lv.NetNs.create(p + 'n');                                      made.netns = p + 'n';
lv.NetNs.open(hostNs).rtnl().createBridge(p + 'i');            made.inner = p + 'i';
process.stdout.write(JSON.stringify(made) + '\\n');
setInterval(() => {}, 1000);
`;

type Made = { bridge: string; veth: string; macvtap: string; macvtapTemplate: string; tap: string; netns: string; inner: string };

/** Runs the child with LINUX_VHOST_LABEL=label, waits for its objects, kills it with SIGKILL. */
async function childMakesEachKindAndDies(label: string | undefined, p: string, lower1: string, lower2: string, hostNs: string): Promise<{ pid: number; made: Made }> {
  const env = { ...process.env };
  delete env.LINUX_VHOST_LABEL;
  if (label) env.LINUX_VHOST_LABEL = label;
  const child = spawn(process.execPath, ['-e', CHILD, p, lower1, lower2, hostNs], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const exited = once(child, 'exit');
  const started = Date.now();
  while (!out.includes('\n')) {
    if (child.exitCode !== null || Date.now() - started > 60_000) throw new Error(`the child did not make its objects (exit ${child.exitCode})`);
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  await exited; // reaped: its pid is gone from /proc
  return { pid: child.pid!, made: JSON.parse(out) as Made };
}

describeKernel('orphans after kill -9 (real kernel)', ['/dev/net/tun'], () => {
  const keep = disposeAfterEach();
  let rtnl: Rtnl;
  let hostNs: NetNs;
  const userMade: string[] = [];

  beforeAll(() => {
    rtnl = Rtnl.open();
    hostNs = NetNs.create(fresh()); // this process's: alive, never cleaned up
  });
  afterAll(() => {
    for (const name of userMade) spawnSync('ip', ['link', 'del', name]);
    hostNs.close();
    expect(ipLinks().filter((n) => n.startsWith(prefix))).toEqual([]);
    expect(ipNetns().filter((n) => n.startsWith(prefix))).toEqual([]);
    rtnl.close();
  });

  /** Two veth ends (made by this process, so marked alive) to carry macvtaps. */
  function lowers(): [string, string] {
    const [a, b, c, d] = [fresh(), fresh(), fresh(), fresh()];
    keep(rtnl.createVeth(a, b));
    keep(rtnl.createVeth(c, d));
    return [a, c];
  }

  /** A bridge and a tap made with iproute2: no mark, never the library's. */
  function unmarkedByIp(): string[] {
    const [br, tap] = [fresh(), fresh()];
    execFileSync('ip', ['link', 'add', br, 'type', 'bridge']);
    execFileSync('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap']);
    userMade.push(br, tap);
    return [br, tap];
  }

  test('each object the library made carries its creator: link alias (ip link), netns note beside /run/netns', () => {
    const name = fresh();
    keep(rtnl.createBridge(name));
    const alias = (JSON.parse(execFileSync('ip', ['-j', '-d', 'link', 'show', 'dev', name], { encoding: 'utf8' })) as { ifalias?: string }[])[0].ifalias;
    expect(alias).toBe(formatMark(currentMark()));
    expect(fs.readFileSync(`${NETNS_NOTES_DIR}/${hostNs.name}`, 'utf8').split('\n')[0]).toBe(formatMark(currentMark()));
    expect(ipNetns()).not.toContain(expect.stringContaining('linux-vhost'));
    expect(listMarked().filter((o) => o.name === name || o.name === hostNs.name).map((o) => o.state)).toEqual(['alive', 'alive']);
  });

  test('kill -9 of a child holding each kind: listOrphans names exactly its objects; cleanupOrphans removes exactly those', async () => {
    const label = `t${process.pid}x${seq}`;
    const [lower1, lower2] = lowers();
    const unmarked = unmarkedByIp();
    const ours = fresh();
    keep(rtnl.createBridge(ours)); // marked, creator alive
    const { pid, made } = await childMakesEachKindAndDies(label, fresh(), lower1, lower2, hostNs.name);

    const expected = [
      { type: 'link', name: made.bridge, kind: 'bridge' },
      { type: 'link', name: made.veth, kind: 'veth' },
      { type: 'link', name: made.macvtap, kind: 'macvtap' },
      { type: 'link', name: made.macvtapTemplate, kind: 'macvtap' },
      { type: 'link', name: made.tap, kind: 'tun' },
      { type: 'link', name: made.inner, kind: 'bridge', netns: hostNs.name },
      { type: 'netns', name: made.netns },
    ];
    const key = (o: { type: string; name: string }) => `${o.type}:${o.name}`;
    const orphans = listOrphans({ label });
    expect(orphans.map((o) => ({ type: o.type, name: o.name, kind: o.kind, netns: o.netns })).sort((a, b) => key(a).localeCompare(key(b))))
      .toEqual(expected.map((e) => ({ kind: undefined, netns: undefined, ...e })).sort((a, b) => key(a).localeCompare(key(b))));
    for (const o of orphans) expect(o).toMatchObject({ state: 'exited', creator: { pid, label } });

    const dry = cleanupOrphans({ label, dryRun: true });
    expect(dry.removed.map(key).sort()).toEqual(expected.map(key).sort());
    expect(ipLinks()).toEqual(expect.arrayContaining([made.bridge, made.veth, made.tap])); // nothing removed yet

    const res = cleanupOrphans({ label });
    expect(res.failed).toEqual([]);
    expect(res.removed.map(key).sort()).toEqual(expected.map(key).sort());
    expect(res.removed.findIndex((o) => o.type === 'netns')).toBe(res.removed.length - 1); // links first

    const links = ipLinks();
    for (const gone of [made.bridge, made.veth, `${made.veth.slice(0, -1)}b`, made.macvtap, made.macvtapTemplate, made.tap]) expect(links).not.toContain(gone);
    expect(ipLinks(hostNs.name)).not.toContain(made.inner);
    expect(ipNetns()).not.toContain(made.netns);
    expect(fs.existsSync(`${NETNS_NOTES_DIR}/${made.netns}`)).toBe(false);
    // Left alone: objects made with ip, the live creator's bridge, the macvtaps' lowers, its netns.
    expect(links).toEqual(expect.arrayContaining([...unmarked, ours, lower1, lower2]));
    expect(ipNetns()).toContain(hostNs.name);
    expect(listOrphans({ label })).toEqual([]);
  }, 120_000);

  test('pid reused (pid 1 with another start time) is an orphan; a foreign pid namespace or a user alias is left alone', () => {
    const self = currentMark();
    const [reused, foreign, userAlias] = [fresh(), fresh(), fresh()];
    for (const name of [reused, foreign, userAlias]) {
      execFileSync('ip', ['link', 'add', name, 'type', 'bridge']);
      userMade.push(name);
    }
    const label = `r${process.pid}`;
    execFileSync('ip', ['link', 'set', reused, 'alias', formatMark({ pid: 1, start: 999_999_999n, pidns: self.pidns, label })]);
    execFileSync('ip', ['link', 'set', foreign, 'alias', formatMark({ pid: 123456, start: 1n, pidns: self.pidns + 1n, label })]);
    execFileSync('ip', ['link', 'set', userAlias, 'alias', `linux-vhost: uplink (pid=1) label=${label}`]);
    expect(listMarked({ label }).map((o) => [o.name, o.state]).sort()).toEqual([[foreign, 'unknown'], [reused, 'pid-reused']].sort());
    const res = cleanupOrphans({ label });
    expect(res.removed.map((o) => o.name)).toEqual([reused]);
    const links = ipLinks();
    expect(links).not.toContain(reused);
    expect(links).toEqual(expect.arrayContaining([foreign, userAlias]));
  });

  test('`linux-vhost cleanup`: --dry-run lists, then removes; a netns made again by someone else under an orphan\'s name survives, its stale note goes', async () => {
    const [lower1, lower2] = lowers();
    const unmarked = unmarkedByIp();
    const { made } = await childMakesEachKindAndDies(undefined, fresh(), lower1, lower2, hostNs.name);
    // A user deletes the orphan namespace and makes their own under that name.
    execFileSync('ip', ['netns', 'delete', made.netns]);
    execFileSync('ip', ['netns', 'add', made.netns]);
    try {
      const dry = spawnSync(process.execPath, [bin, 'cleanup', '--dry-run'], { encoding: 'utf8' });
      expect(dry.status).toBe(0);
      for (const name of [made.bridge, made.veth, made.macvtap, made.macvtapTemplate, made.tap, made.inner]) expect(dry.stdout).toMatch(new RegExp(`^would remove link ${name} `, 'm'));
      expect(dry.stdout).not.toContain(`netns ${made.netns}`);
      expect(ipLinks()).toContain(made.bridge);

      const run = spawnSync(process.execPath, [bin, 'cleanup', '--json'], { encoding: 'utf8' });
      expect(run.status).toBe(0);
      const json = JSON.parse(run.stdout) as { dryRun: boolean; removed: { name: string }[]; failed: unknown[] };
      expect(json).toMatchObject({ dryRun: false, failed: [] });
      expect(json.removed.map((o) => o.name)).toEqual(expect.arrayContaining([made.bridge, made.tap, made.inner]));
      const links = ipLinks();
      for (const gone of [made.bridge, made.veth, made.macvtap, made.macvtapTemplate, made.tap]) expect(links).not.toContain(gone);
      expect(links).toEqual(expect.arrayContaining([...unmarked, lower1, lower2]));
      expect(ipNetns()).toEqual(expect.arrayContaining([made.netns, hostNs.name])); // the user's namespace stays
      expect(fs.existsSync(`${NETNS_NOTES_DIR}/${made.netns}`)).toBe(false); // the stale note does not
      expect(fs.existsSync(`${NETNS_NOTES_DIR}/${hostNs.name}`)).toBe(true);
    } finally {
      spawnSync('ip', ['netns', 'delete', made.netns]);
    }
  }, 120_000);

  test('an unknown cleanup argument is a usage error (exit 2) and removes nothing', () => {
    const r = spawnSync(process.execPath, [bin, 'cleanup', '--force'], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("unknown argument '--force'");
  });
});
