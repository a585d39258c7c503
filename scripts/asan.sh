#!/usr/bin/env bash
# `npm run test:asan`: the addon built with AddressSanitizer and UBSan, then
# the unit suite (test/unit, fuzz suites included) and a bounded part of the
# kernel suite run against it. Any sanitizer report fails the run.
#
#   scripts/asan.sh            build, unit suite, kernel part (in the test VM when this host lacks vhost)
#   scripts/asan.sh unit       build, unit suite only
#   scripts/asan.sh kernel     build, kernel part only
#
# Design:
# - The sanitized addon is built in build-asan/ (a gyp tree whose native/ is a
#   link to ../native), never in build/: the normal build is untouched.
#   node-gyp-build loads it when LINUX_VHOST_PREBUILD=build-asan (its
#   <NAME>_PREBUILD override: build-asan/build/Release/linux_vhost.node).
# - node itself is not instrumented, so libasan must be loaded before
#   anything else: LD_PRELOAD. Every process the tests spawn inherits it
#   (node children load the sanitized addon too; ip, python3 just carry the
#   runtime).
# - halt_on_error / abort_on_error and -fno-sanitize-recover=all: the first
#   report aborts the process, the test or its jest worker fails, the run fails.
# - detect_leaks=0: LeakSanitizer would report what node and V8 (not built
#   with ASan) never free at exit, in every process, none of it ours; the
#   library's own lifetime checks (fd counts, finalizers) are tests of their own.
# - The kernel part: the vhost and guest files that drive the native rings
#   and ioctls hardest, in the test VM (or here when this host has the devices).
# Cost measured in the test VM under TCG, with other VMs running: build 2.5 min
# (1 min CPU), unit suite ~3 min, kernel part ~4-6 min.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
which=${1:-all}
case $which in all|unit|kernel) ;; *) echo "usage: scripts/asan.sh [all|unit|kernel]" >&2; exit 2 ;; esac

# Bounded for CI's budget: under ASan in the TCG test VM these took 9, 79 and 110 s
# (vhost-net.test.ts, 112 s more, is left out: its ioctls are the builders' that these
# files drive too). Together they run the ring driver (virtqueue.cc), the vhost and
# vsock ioctls, tap and eventfd code against the real devices.
KERNEL_FILES=(
	test/kernel/vhost/vhost-vsock.test.ts
	test/kernel/guest/net-guest.test.ts
	test/kernel/guest/vsock-guest.test.ts
)

log() { printf '[asan] %s\n' "$*" >&2; }

libasan=$(${CC:-gcc} -print-file-name=libasan.so)
[ -e "$libasan" ] || { log "libasan.so not found (gcc -print-file-name=libasan.so gave '$libasan'): install gcc's sanitizer runtime (libasan8)"; exit 1; }

# The sanitized build: same sources and flags as binding.gyp, plus the sanitizers.
out=$root/build-asan
mkdir -p "$out"
ln -sfn ../native "$out/native"
# make rebuilds only what changed; a changed binding.gyp (or none built yet) means a full rebuild.
action=build
if [ ! -f "$out/build/Makefile" ] || ! cmp -s binding.gyp "$out/binding.gyp"; then action=rebuild; fi
cp binding.gyp "$out/binding.gyp"
san='-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g'
log "building the addon with ASan + UBSan in build-asan/"
start=$SECONDS
# node-gyp run by hand does not see npm's config: pass its nodedir (headers) on.
nodedir=$(npm config get nodedir 2>/dev/null || true)
gyp_args=("$action" --directory "$out" --jobs max --loglevel=warn)
case $nodedir in ''|undefined|null) ;; *) gyp_args+=(--nodedir "$nodedir") ;; esac
CFLAGS="$san" CXXFLAGS="$san" LDFLAGS="-fsanitize=address,undefined" \
	node node_modules/node-gyp/bin/node-gyp.js "${gyp_args[@]}" >&2
log "built in $((SECONDS - start)) s"

export LINUX_VHOST_PREBUILD=$out
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=0
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1
# Check the sanitized addon is the one loaded, with the runtime in place.
LD_PRELOAD=$libasan node -e "
  const p = require('node-gyp-build').path('.');
  if (!p.startsWith(process.env.LINUX_VHOST_PREBUILD)) throw new Error('loaded ' + p + ', not the ASan build');
  require('./dist/core/native.js');
  console.error('[asan] loads ' + p);
"

status=0
if [ "$which" != kernel ]; then
	log "unit suite under ASan + UBSan"
	start=$SECONDS
	LD_PRELOAD=$libasan node node_modules/jest/bin/jest.js test/unit --selectProjects unit || status=1
	log "unit suite: $((SECONDS - start)) s, exit $status"
fi
if [ "$which" != unit ]; then
	log "kernel part under ASan + UBSan: ${KERNEL_FILES[*]}"
	start=$SECONDS
	cmd=(env "LD_PRELOAD=$libasan" "ASAN_OPTIONS=$ASAN_OPTIONS" "UBSAN_OPTIONS=$UBSAN_OPTIONS"
		node node_modules/jest/bin/jest.js "${KERNEL_FILES[@]}" --selectProjects kernel --runInBand)
	if [ "$(id -u)" = 0 ] && [ -c /dev/vhost-net ] && [ -c /dev/vhost-vsock ] && [ -c /dev/net/tun ]; then
		"${cmd[@]}" || status=1
	else
		log "this host lacks root or the vhost devices: running the kernel part in the test VM"
		bash scripts/vm.sh --timeout 900 -- "${cmd[@]}" || status=1
	fi
	log "kernel part: $((SECONDS - start)) s, exit $status"
fi
exit $status
