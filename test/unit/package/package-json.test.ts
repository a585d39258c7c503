// The package's manifest and build files: the fields issue 3's packaging asks
// for, what `npm pack` would ship (asked of npm itself), and that node-gyp and
// cmake-js compile exactly the files in native/sources.json. The packed tarball
// installed without build tools is tested by scripts/pack-test.sh.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const root = path.resolve(__dirname, '../../..');
const read = (file: string): string => fs.readFileSync(path.join(root, file), 'utf8');

interface PackageJson {
  name: string;
  os?: string[];
  engines?: Record<string, string>;
  main?: string;
  types?: string;
  exports?: Record<string, string | Record<string, string>>;
  bin?: Record<string, string>;
  files?: string[];
  gypfile?: boolean;
  binary?: { napi_versions?: number[] };
  scripts: Record<string, string>;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
}

interface GypTarget {
  target_name: string;
  sources: string[];
  defines?: string[];
}

const pkg = JSON.parse(read('package.json')) as PackageJson;
// binding.gyp is a Python literal; ours is JSON apart from its '#' comment lines.
const gyp = JSON.parse(read('binding.gyp').replace(/^\s*#.*$/gm, '')) as { targets: GypTarget[] };
const cmake = read('CMakeLists.txt');
const sourcesJson = JSON.parse(read('native/sources.json')) as unknown;
const nativeCc = fs
  .readdirSync(path.join(root, 'native'))
  .filter((f) => f.endsWith('.cc'))
  .map((f) => `native/${f}`)
  .sort();

describe('package.json', () => {
  test('is named linux-vhost and installs on Linux only', () => {
    expect(pkg.name).toBe('linux-vhost');
    expect(pkg.os).toEqual(['linux']);
  });

  test('requires Node 20 or later', () => {
    expect(pkg.engines?.node).toMatch(/^>=\s*20(\.0){0,2}$/);
  });

  test('exports "." with its types condition first, matching main and types', () => {
    const dot = pkg.exports?.['.'];
    expect(typeof dot).toBe('object');
    const conditions = dot as Record<string, string>;
    // TypeScript takes the first matching condition: "types" must come first.
    expect(Object.keys(conditions)[0]).toBe('types');
    expect(conditions.types).toBe('./dist/index.d.ts');
    expect(conditions.default).toBe('./dist/index.js');
    expect(pkg.types).toBe(conditions.types);
    expect(pkg.main).toBe(conditions.default);
  });

  test('has the linux-vhost bin in dist/', () => {
    expect(pkg.bin).toEqual({ 'linux-vhost': './dist/cli/main.js' });
  });

  test('"files" names no tests, TypeScript sources or build output', () => {
    const files = pkg.files ?? [];
    expect(files.length).toBeGreaterThan(0);
    for (const entry of files) {
      expect(entry).not.toMatch(/^(\.\/)?(test|lib|bench|build|build-cmake|node_modules)(\/|$)/);
      expect(entry.replace(/\.d\.ts$/, '')).not.toMatch(/\.ts$/);
    }
    for (const needed of ['prebuilds/', 'binding.gyp', 'CMakeLists.txt', 'native/*.cc', 'native/*.h', 'native/sources.json']) {
      expect(files).toContain(needed);
    }
  });

  test('npm pack would ship no tests, TypeScript sources or native build output', () => {
    const res = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
      cwd: root,
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(res.error).toBeUndefined();
    expect(res.status).toBe(0);
    const [packed] = JSON.parse(res.stdout) as { files: { path: string }[] }[];
    const paths = packed.files.map((f) => f.path);
    expect(paths).toContain('package.json');
    expect(paths).toContain('binding.gyp');
    expect(paths).toContain('CMakeLists.txt');
    expect(paths).toEqual(expect.arrayContaining(nativeCc));
    for (const p of paths) {
      expect(p).not.toMatch(/^(test|lib|bench|build|build-cmake|node_modules)\//);
      expect(p.replace(/\.d\.ts$/, '')).not.toMatch(/\.ts$/);
    }
  });

  test('builds from binding.gyp and loads the addon through node-gyp-build', () => {
    expect(pkg.gypfile).toBe(true);
    expect(pkg.scripts.install).toBe('node-gyp-build');
  });

  test('prebuilds are N-API builds, stripped', () => {
    expect(pkg.scripts.prebuild).toBe('prebuildify --napi --strip');
    expect(pkg.binary?.napi_versions).toEqual([8]);
  });

  test('depends at runtime on node-addon-api and node-gyp-build only', () => {
    expect(Object.keys(pkg.dependencies).sort()).toEqual(['node-addon-api', 'node-gyp-build']);
  });

  test('has the dev tools the build and tests use', () => {
    for (const dep of ['typescript', 'jest', 'ts-jest', 'cmake-js', 'prebuildify', 'fast-check']) {
      expect(pkg.devDependencies).toHaveProperty(dep);
    }
  });
});

describe('native sources: one list for node-gyp and cmake-js', () => {
  test('native/sources.json lists every native/*.cc exactly once, and nothing else', () => {
    expect(Array.isArray(sourcesJson)).toBe(true);
    const listed = sourcesJson as string[];
    expect(new Set(listed).size).toBe(listed.length);
    expect([...listed].sort()).toEqual(nativeCc);
  });

  test('binding.gyp takes its sources from native/sources.json and names no .cc itself', () => {
    expect(gyp.targets).toHaveLength(1);
    const [target] = gyp.targets;
    expect(target.target_name).toBe('linux_vhost');
    expect(target.sources).toHaveLength(1);
    const expansion = /^<!@\((.*)\)$/.exec(target.sources[0]);
    expect(expansion).not.toBeNull();
    expect(expansion![1]).toContain('native/sources.json');
    expect(read('binding.gyp')).not.toMatch(/\.cc\b/);
    // Run the command gyp runs: it must print the same list.
    const res = spawnSync('sh', ['-c', expansion![1]], { cwd: root, encoding: 'utf8' });
    expect(res.status).toBe(0);
    expect(res.stdout.trim().split(/\s+/)).toEqual(sourcesJson);
  });

  test('CMakeLists.txt takes its sources from native/sources.json and names no .cc itself', () => {
    expect(cmake).toMatch(/file\(READ\s+"\$\{CMAKE_SOURCE_DIR\}\/native\/sources\.json"\s+SOURCES_JSON\)/);
    expect(cmake).toMatch(/string\(JSON\s+src\s+GET\s+"\$\{SOURCES_JSON\}"/);
    expect(cmake).toMatch(/add_library\(\$\{PROJECT_NAME\}\s+SHARED\s+\$\{ADDON_SOURCES\}/);
    expect(cmake).not.toMatch(/\.cc\b/);
  });

  test('node-gyp, cmake-js and package.json agree on NAPI_VERSION 8', () => {
    expect(gyp.targets[0].defines).toContain('NAPI_VERSION=8');
    expect(cmake).toMatch(/target_compile_definitions\([^)]*\bNAPI_VERSION=8\b/);
    expect(pkg.binary?.napi_versions).toEqual([8]);
  });
});
