#!/usr/bin/env bash
# Packaging test (issue 3): build the N-API prebuild, pack the package, install
# the tarball into an empty folder with no compiler, make or python on PATH,
# and check that the addon loads from the package's prebuilds/ and works.
# Prints the prebuild's glibc floor (PACK_TEST_MAX_GLIBC=x.y caps it). Exits
# non-zero on any failure.
#
# Everything happens in a staging copy of the source tree under a temp dir:
# prebuildify runs `node-gyp rebuild`, which would wipe the shared build/ and
# move its .node away. PACK_TEST_KEEP=1 keeps the temp dir for inspection.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/linux-vhost-pack.XXXXXX")
if [ "${PACK_TEST_KEEP:-}" = 1 ]; then
  trap 'echo "pack-test: kept $work"' EXIT
else
  trap 'rm -rf "$work"' EXIT
fi

step() { printf '\n==> pack-test: %s\n' "$*"; }
fail() { printf 'pack-test: FAIL: %s\n' "$*" >&2; exit 1; }

# The directory whose include/node holds the running Node's headers. node-gyp
# (run by prebuildify with --target=<newest Node>) downloads headers unless
# nodedir points at local ones; N-API builds work with any Node's headers.
node_prefix=$(node -p "require('path').resolve(process.execPath, '../..')")
if [ -z "${npm_config_nodedir:-}" ]; then
  [ -f "$node_prefix/include/node/node_api.h" ] \
    || fail "no Node headers in $node_prefix/include/node and npm_config_nodedir unset: node-gyp would download headers"
  export npm_config_nodedir=$node_prefix
fi

step "staging a copy of the source tree in $work/stage"
stage=$work/stage
mkdir "$stage"
# Build outputs and local state stay out; test/ and bench/ are copied on
# purpose so that the "files" whitelist is what keeps them out of the tarball.
tar -C "$repo" --exclude=./.git --exclude=./node_modules --exclude=./build \
  --exclude=./build-cmake --exclude=./dist --exclude=./prebuilds --exclude=./.vm-out \
  --exclude='./*.tgz' -cf - . | tar -C "$stage" -xf -
ln -s "$repo/node_modules" "$stage/node_modules"

step "npm run prebuild (nodedir=$npm_config_nodedir)"
(cd "$stage" && npm run --silent prebuild)
platform_arch=$(node -p "process.platform + '-' + process.arch")
mapfile -t prebuilds < <(cd "$stage/prebuilds/$platform_arch" && ls -- *.node)
[ "${#prebuilds[@]}" -eq 1 ] || fail "expected one prebuild in prebuilds/$platform_arch, found: ${prebuilds[*]:-none}"
prebuild_name=${prebuilds[0]}
prebuild_file=$stage/prebuilds/$platform_arch/$prebuild_name
echo "prebuild: prebuilds/$platform_arch/$prebuild_name ($(stat -c %s "$prebuild_file") bytes)"

step "npm run build:ts"
(cd "$stage" && npm run --silent build:ts)

step "npm pack"
tarball=$(cd "$stage" && npm pack --silent --pack-destination "$work")
tarball=$work/$tarball
[ -f "$tarball" ] || fail "npm pack produced no tarball"
echo "tarball: $(basename "$tarball") ($(stat -c %s "$tarball") bytes)"

step "tarball contents"
mapfile -t entries < <(tar -tzf "$tarball" | sed 's|^package/||')
# No grep -q: it exits at the first match, printf then dies of SIGPIPE and
# pipefail turns the match into a failure (seen once the list grew).
has() { printf '%s\n' "${entries[@]}" | grep -xF -- "$1" >/dev/null; }
none() { ! printf '%s\n' "${entries[@]}" | grep -E -- "$1" >/dev/null; }
none '^test/' || fail "tarball contains test/"
none '^(build|build-cmake)/' || fail "tarball contains a native build directory"
none '^node_modules/' || fail "tarball contains node_modules/"
ts_sources=$(printf '%s\n' "${entries[@]}" | grep -E '\.ts$' | grep -vE '\.d\.ts$' || true)
[ -z "$ts_sources" ] || fail "tarball contains TypeScript sources: $ts_sources"
for f in package.json binding.gyp CMakeLists.txt native/sources.json native/addon.h \
  dist/index.js dist/index.d.ts dist/cli/main.js "prebuilds/$platform_arch/$prebuild_name"; do
  has "$f" || fail "tarball lacks $f"
done
for f in "$repo"/native/*.cc; do
  has "native/$(basename "$f")" || fail "tarball lacks native/$(basename "$f")"
done
echo "${#entries[@]} files; no test/, build/ or .ts sources; has prebuilds/, dist/, native/*.cc, binding.gyp, CMakeLists.txt"

step "PATH without build tools"
bin=$work/bin
mkdir "$bin"
for tool in node npm npx sh bash env cat ls mkdir rm uname; do
  target=$(command -v "$tool") || fail "$tool not found"
  ln -s "$(readlink -f "$target")" "$bin/$tool"
done
for tool in python3 python make cc gcc g++ c++ clang clang++ cmake node-gyp; do
  if PATH=$bin command -v "$tool" >/dev/null 2>&1; then fail "$tool is reachable on the restricted PATH"; fi
done
echo "PATH=$bin: $(ls "$bin" | tr '\n' ' ')"

# A clean environment: only what npm needs to reach its cache and registry.
# npm_config_nodedir points nowhere, so any attempt to compile fails loudly.
clean_env=(HOME="$HOME" PATH="$bin" TMPDIR="${TMPDIR:-/tmp}" LANG=C
  npm_config_nodedir="$work/no-node-headers" npm_config_ignore_scripts=false
  npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false)
for v in npm_config_registry npm_config_cache npm_config_userconfig npm_config_cafile \
  HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  [ -z "${!v:-}" ] || clean_env+=("$v=${!v}")
done

step "install the tarball into an empty folder"
consumer=$work/consumer
mkdir "$consumer"
# Without a package.json, npm would install into the nearest parent that has one.
echo '{ "name": "linux-vhost-pack-test", "version": "1.0.0", "private": true }' > "$consumer/package.json"
(cd "$consumer" && env -i "${clean_env[@]}" npm install --prefer-offline --foreground-scripts "$tarball")
installed=$consumer/node_modules/linux-vhost
[ -d "$installed" ] || fail "node_modules/linux-vhost missing after install"
[ ! -e "$installed/build" ] || fail "the install built the addon (node_modules/linux-vhost/build exists)"

step "load the addon from prebuilds/ and use it"
(cd "$consumer" && env -i "${clean_env[@]}" PREBUILD_REL="prebuilds/$platform_arch/$prebuild_name" node -e '
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const pkgDir = fs.realpathSync(path.dirname(require.resolve("linux-vhost/package.json")));
assert.equal(pkgDir, fs.realpathSync(path.join(process.cwd(), "node_modules", "linux-vhost")));
const expected = path.join(pkgDir, process.env.PREBUILD_REL);

const lv = require("linux-vhost");
const loaded = Object.keys(require.cache).filter((f) => f.endsWith(".node"));
assert.deepEqual(loaded.map((f) => fs.realpathSync(f)), [expected], "the addon loaded is not the prebuild");
assert.equal(fs.realpathSync(require("node-gyp-build").path(pkgDir)), expected);

const efd = lv.EventFd.create();
assert.equal(efd.write(3n), true);
assert.equal(efd.read(), 3n);
assert.equal(efd.read(), null);
efd.close();
assert.equal(efd.closed, true);

const mem = lv.GuestMemory.create({ regions: [{ gpa: 0n, size: 1 << 20 }] });
mem.view(0x1000n, 4).set([1, 2, 3, 4]);
assert.deepEqual([...mem.view(0x1000n, 4)], [1, 2, 3, 4]);
mem.close();
assert.equal(mem.closed, true);
console.log("loaded " + path.relative(process.cwd(), expected) + "; EventFd and GuestMemory work");
')

step "npx linux-vhost help"
help=$(cd "$consumer" && env -i "${clean_env[@]}" npx --no linux-vhost help) || fail "npx linux-vhost help failed"
grep -q '^usage: linux-vhost' <<<"$help" || fail "unexpected help output: $help"
echo "ok"

step "glibc floor of the prebuild"
if command -v objdump >/dev/null; then
  symbols=$(objdump -T "$prebuild_file")
elif command -v readelf >/dev/null; then
  symbols=$(readelf --dyn-syms -W "$prebuild_file")
else
  fail "neither objdump nor readelf found: install binutils (apt-get install binutils)"
fi
floor() { grep -oE "$1_[0-9]+(\.[0-9]+)*" <<<"$symbols" | sort -u -V | tail -n 1; }
glibc=$(floor GLIBC)
[ -n "$glibc" ] || fail "no GLIBC symbol versions found in $prebuild_name"
echo "glibc floor: $glibc (libstdc++: $(floor GLIBCXX); built on glibc $(getconf GNU_LIBC_VERSION 2>/dev/null | sed 's/^glibc //' || echo '?'))"
# PACK_TEST_MAX_GLIBC=2.31, say, fails the run when the prebuild needs newer.
if [ -n "${PACK_TEST_MAX_GLIBC:-}" ]; then
  highest=$(printf '%s\n' "GLIBC_$PACK_TEST_MAX_GLIBC" "$glibc" | sort -V | tail -n 1)
  [ "$highest" = "GLIBC_$PACK_TEST_MAX_GLIBC" ] || fail "prebuild needs $glibc, above PACK_TEST_MAX_GLIBC=$PACK_TEST_MAX_GLIBC"
fi

printf '\npack-test: OK in %ss\n' "$SECONDS"
