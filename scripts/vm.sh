#!/usr/bin/env bash
# Run a command as root inside a throwaway QEMU VM that has real vhost devices
# (/dev/vhost-net, /dev/vhost-vsock, /dev/net/tun), on Debian's generic kernel.
# The VM sees the host root read-only over 9p and the share dir writable at
# the same path, so the host's node/npm/build outputs work unchanged.
#
#   scripts/vm.sh [--mem MiB] [--smp N] [--timeout SECONDS] [--share DIR] -- command [args...]
#
# Exit status: the command's; 124 on timeout; 125 when the VM itself failed
# (boot, init, missing tools). Env: see usage() below.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
init_script=$here/vm/init.sh
# shellcheck source=vm/modules.sh
. "$here/vm/modules.sh"
cache=${LINUX_VHOST_CACHE:-$HOME/.cache/linux-vhost}
# Required modules, then optional ones (CPU-dependent or possibly built in).
modules_required="virtio_pci 9pnet_virtio 9p vhost_net vhost_vsock tun veth macvtap bridge"
modules_optional="kvm_amd kvm_intel af_packet virtio_rng"

log() { echo "[vm] $*" >&2; }
die() { echo "[vm] error: $*" >&2; exit 125; }
usage() {
	cat >&2 <<'EOF'
usage: scripts/vm.sh [--mem MiB] [--smp N] [--timeout SECONDS] [--share DIR] -- command [args...]
  --mem MiB      guest memory (default 4096)
  --smp N        guest CPUs (default 2)
  --timeout S    kill the VM after S seconds and exit 124 (default 1800)
  --share DIR    writable share, same path in the VM (default: git toplevel of cwd, else cwd)
env: LINUX_VHOST_CACHE (kernel/initramfs cache, default ~/.cache/linux-vhost)
     LINUX_VHOST_VM_ACCEL=kvm|tcg (default: kvm if /dev/kvm opens read-write and the CPU has vmx/svm)
     LINUX_VHOST_VM_CPU=model (qemu -cpu, default host under kvm, max under tcg)
     LINUX_VHOST_VM_BOOT_TIMEOUT=S (fail if the command has not started after S seconds, default 120)
     LINUX_VHOST_VM_FREEZE_TIMEOUT=S (fail if qemu uses no CPU at all for S seconds, default 60, 0: off)
     LINUX_VHOST_VM_HEARTBEAT_TIMEOUT=S (fail if the VM's init has not beaten for S seconds, default 90, 0: off)
     LINUX_VHOST_VM_BROKEN=FILE (stop the VM 30 s after a test in it writes FILE, in the share)
     LINUX_VHOST_VM_VERBOSE=1 (show kernel/init boot output on stderr)
     LINUX_VHOST_VM_APPEND="..." (extra kernel command line)
passed into the VM when set: CI DEBUG NODE_OPTIONS TERM LINUX_VHOST_* JEST_*; LINUX_VHOST_IN_VM=1 is set.
EOF
	exit 125
}

mem=4096 smp=2 timeout_s=1800 share=
while [ $# -gt 0 ]; do
	case $1 in
	--mem) mem=${2:?}; shift 2 ;;
	--smp) smp=${2:?}; shift 2 ;;
	--timeout) timeout_s=${2:?}; shift 2 ;;
	--share) share=${2:?}; shift 2 ;;
	--) shift; break ;;
	-h|--help) usage ;;
	-*) echo "[vm] unknown option $1" >&2; usage ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || usage
[[ $mem =~ ^[0-9]+$ && $smp =~ ^[0-9]+$ && $timeout_s =~ ^[0-9]+$ ]] || usage
boot_timeout=${LINUX_VHOST_VM_BOOT_TIMEOUT:-120}
[[ $boot_timeout =~ ^[0-9]+$ ]] || die "LINUX_VHOST_VM_BOOT_TIMEOUT must be a whole number of seconds (got '$boot_timeout')"
freeze_timeout=${LINUX_VHOST_VM_FREEZE_TIMEOUT:-60}
[[ $freeze_timeout =~ ^[0-9]+$ ]] || die "LINUX_VHOST_VM_FREEZE_TIMEOUT must be a whole number of seconds (got '$freeze_timeout')"
heartbeat_timeout=${LINUX_VHOST_VM_HEARTBEAT_TIMEOUT:-90}
[[ $heartbeat_timeout =~ ^[0-9]+$ ]] || die "LINUX_VHOST_VM_HEARTBEAT_TIMEOUT must be a whole number of seconds (got '$heartbeat_timeout')"

cwd=$(pwd -P)
[ -n "$share" ] || share=$(git rev-parse --show-toplevel 2>/dev/null || echo "$cwd")
share=$(cd "$share" && pwd -P) || die "share dir not found"
[ "$share" != / ] || die "refusing to share / writable"

# --- host tools: install them when we can (root + apt), else say what to install.
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v depmod >/dev/null || need_pkgs+=(kmod)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
# The initramfs has no libc, so busybox must be the static build.
if [[ $(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null || true) != *'ok installed'* ]]; then
	need_pkgs+=(busybox-static)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		log "installing ${need_pkgs[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2 ||
			{ apt-get update >&2 && apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2; } ||
			die "could not install ${need_pkgs[*]}"
	else
		die "missing tools; run: sudo apt-get install -y --no-install-recommends ${need_pkgs[*]}"
	fi
fi
busybox=/bin/busybox
[ -x $busybox ] || busybox=/usr/bin/busybox

# --- kernel: Debian's generic kernel, downloaded once. ($cache/kernel/current
# names the version in use; delete the cache to pick up a newer kernel.)
mkdir -p "$cache/kernel" "$cache/initramfs"
# Concurrent runs wait here instead of downloading/building the same thing twice.
exec 9>"$cache/.lock"
flock 9
kver=$(cat "$cache/kernel/current" 2>/dev/null || true)
if [ -z "$kver" ] || [ ! -e "$cache/kernel/$kver/.complete" ]; then
	dl=$(mktemp -d "$cache/kernel/.dl.XXXXXX")
	trap 'rm -rf "$dl"' EXIT
	sandbox=(); [ "$(id -u)" != 0 ] || sandbox=(-o APT::Sandbox::User=root) # _apt cannot write here
	# linux-image-amd64 is a metapackage: the kernel is the linux-image-<ver>-amd64 it depends on.
	fetch() {
		pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
			sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' || true)
		pkg=${pkg%%$'\n'*} # the first (no `| head`: SIGPIPE under pipefail)
		[ -n "$pkg" ] || return 1
		log "downloading $pkg (once, ~70 MB) into $cache/kernel"
		(cd "$dl" && apt-get download "${sandbox[@]}" "$pkg" >&2)
	}
	if ! fetch; then # no or stale package lists
		[ "$(id -u)" = 0 ] || die "cannot download the kernel package; run: sudo apt-get update"
		log "apt-get update (to find the kernel package)"
		apt-get update >&2 || die "apt-get update failed"
		fetch || die "cannot resolve/download linux-image-amd64's kernel package"
	fi
	log "unpacking $pkg"
	dpkg -x "$dl"/*.deb "$dl/root"
	# depmod -b and init expect <root>/lib/modules, whatever the package's usrmerge state.
	[ -e "$dl/root/lib" ] || ln -s usr/lib "$dl/root/lib"
	kver=$(ls "$dl/root/lib/modules")
	[ -f "$dl/root/boot/vmlinuz-$kver" ] || die "no vmlinuz in $pkg"
	depmod -b "$dl/root" "$kver"
	# Under TCG, decompressing the bzImage takes ~6 s per boot; an uncompressed
	# vmlinux boots directly through its PVH entry point instead.
	if grep -q '^CONFIG_PVH=y' "$dl/root/boot/config-$kver"; then
		off=$(LC_ALL=C grep -m1 -aboP '\xFD7zXZ\x00' "$dl/root/boot/vmlinuz-$kver" | cut -d: -f1)
		off=${off%%$'\n'*}
		# tail gets SIGPIPE when xz stops at the end of the stream: not an error.
		[ -z "$off" ] || { tail -c +$((off + 1)) "$dl/root/boot/vmlinuz-$kver" || true; } |
			xz -dc --single-stream >"$dl/root/boot/vmlinux-$kver" 2>/dev/null || true
		[ "$(head -c4 "$dl/root/boot/vmlinux-$kver" 2>/dev/null)" = $'\x7fELF' ] || rm -f "$dl/root/boot/vmlinux-$kver"
	fi
	touch "$dl/root/.complete"
	rm -rf "$cache/kernel/$kver"
	mv "$dl/root" "$cache/kernel/$kver"
	echo "$kver" >"$dl/current" && mv "$dl/current" "$cache/kernel/current"
	rm -rf "$dl"
	trap - EXIT
fi
kdir=$cache/kernel/$kver
kernel=$kdir/boot/vmlinux-$kver
[ -s "$kernel" ] || kernel=$kdir/boot/vmlinuz-$kver
moddir=$kdir/lib/modules/$kver

# --- initramfs: busybox + init.sh + the listed modules, cached by content.
key=$( { echo "v1 $kver $modules_required / $modules_optional"; cat "$init_script" "$here/vm/modules.sh" "$busybox"; } |
	sha256sum | cut -c1-16)
initrd=$cache/initramfs/$kver-$key.cpio
if [ ! -f "$initrd" ]; then
	log "building initramfs for $kver"
	stage=$(mktemp -d "$cache/initramfs/.stage.XXXXXX")
	trap 'rm -rf "$stage"' EXIT
	mkdir -p "$stage/bin" "$stage/lib/modules"
	cp "$busybox" "$stage/bin/busybox"
	cp "$init_script" "$stage/init"
	chmod 755 "$stage/init"
	stage_modules "$moddir" "$stage" "$modules_required" "$modules_optional"
	(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$stage.cpio"
	mv "$stage.cpio" "$initrd"
	rm -rf "$stage"
	trap - EXIT
	find "$cache/initramfs" -name '*.cpio' -mtime +7 -delete # unused for a week (see touch below)
fi
touch "$initrd"
exec 9>&-

# --- accel: KVM when /dev/kvm opens read-write and the CPU has vmx/svm, else TCG.
# (Some nested hosts expose a /dev/kvm without hardware virtualization, e.g.
# kvm_pvm: it cannot run a stock kernel at any usable speed.)
accel=${LINUX_VHOST_VM_ACCEL:-}
if [ -z "$accel" ]; then
	accel=tcg
	if { : <>/dev/kvm; } 2>/dev/null && grep -qwE 'vmx|svm' /proc/cpuinfo; then accel=kvm; fi
fi
case $accel in
kvm) { : <>/dev/kvm; } 2>/dev/null || die "LINUX_VHOST_VM_ACCEL=kvm but /dev/kvm cannot be opened read-write"
	cpu=${LINUX_VHOST_VM_CPU:-host} ;;
tcg) cpu=${LINUX_VHOST_VM_CPU:-max} ;;
*) die "LINUX_VHOST_VM_ACCEL must be kvm or tcg" ;;
esac

# --- per-run dir: host-only files in $tmp, the guest's run share in $tmp/guest.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/linux-vhost-vm.XXXXXX")
qpid= apid=
# Kills timeout (which passes the signal on to qemu). The pid file is written by
# qemu's launcher subshell; give it a moment if the kill comes right after launch.
stop_qemu() {
	local pid= i
	for i in 1 2 3 4 5 6 7 8 9 10; do
		pid=$(cat "$tmp/qemu.pid" 2>/dev/null) && [ -n "$pid" ] && break
		sleep 0.1
	done
	[ -z "$pid" ] || kill "$pid" 2>/dev/null || true
}
cleanup() {
	[ -z "$qpid" ] || stop_qemu
	[ -z "$apid" ] || kill "$apid" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
mkdir "$tmp/guest"
printf '%s\n' "$share" >"$tmp/guest/share"

# The command script runs under the host's bash inside the chroot with a clean env.
# The guest console is a tty; only let the command see one if our stdout is one.
host_tty=; [ -t 1 ] && host_tty=1
{
	printf 'cd -- %q || { echo "[vm] cwd %q does not exist in the VM" >&2; exit 125; }\n' "$cwd" "$cwd"
	echo 'exec </dev/null # nothing to read: the console input is not forwarded'
	# The host's PATH first (same node/npm as on the host), then the standard dirs.
	path=$PATH
	for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
		[[ ":$path:" == *":$d:"* ]] || path+=:$d
	done
	printf 'export PATH=%q HOME=/root USER=root LOGNAME=root LINUX_VHOST_IN_VM=1\n' "$path"
	while IFS= read -r v; do
		case $v in CI|DEBUG|NODE_OPTIONS|TERM|LINUX_VHOST_*|JEST_*)
			[ "$v" = LINUX_VHOST_IN_VM ] || printf 'export %s=%q\n' "$v" "${!v}" ;;
		esac
	done < <(compgen -e)
	if [ -n "$host_tty" ]; then
		printf 'stty cols %d rows %d <&1 2>/dev/null\n' "$(tput cols 2>/dev/null || echo 80)" "$(tput lines 2>/dev/null || echo 24)"
		printf '%q ' "$@"; echo
	else
		printf '%q ' "$@"; echo '2>&1 | cat; exit "${PIPESTATUS[0]}"'
	fi
} >"$tmp/guest/cmd"

nonce=$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
# Boot-time trims that do not matter in a throwaway test VM (crypto self-tests,
# lockup watchdogs that misfire under slow TCG, CPU-bug mitigations).
append="console=ttyS0 panic=-1 lvvm.nonce=$nonce cryptomgr.notests nowatchdog no_timer_check audit=0 mitigations=off"
if [ "${LINUX_VHOST_VM_VERBOSE:-}" = 1 ]; then append+=" loglevel=6"; else append+=" quiet loglevel=2"; fi # still shows panics/oopses
append+=" ${LINUX_VHOST_VM_APPEND:-}"
shares=()
virtfs() { # path, tag, extra options; qemu wants commas in paths doubled
	shares+=(-virtfs "local,path=${1//,/,,},mount_tag=$2,security_model=none,multidevs=remap$3")
}
virtfs / host ,readonly=on
virtfs "$kdir" kernel ,readonly=on
virtfs "$tmp/guest" run ""
virtfs "$share" share ""

# Console filter: hide boot noise (kept in boot.log for errors), stream the
# command's output, pick up the exit marker. mawk needs -W interactive to not
# buffer its input: without it the START line can sit unread until kilobytes of
# output follow. (Not `awk -W version | grep -q mawk`: grep exits at the match,
# awk's next write gets SIGPIPE and pipefail makes the test fail, ~3% of runs.)
awk_flags=(); [[ $(awk -W version 2>&1 || true) == mawk* ]] && awk_flags=(-W interactive)
mkfifo "$tmp/console"
log "booting VM ($accel, $smp cpu, $mem MiB, kernel $kver)"
# The subshell keeps bash from printing "Aborted" when qemu dies of a signal (its
# status is reported below); qemu.pid is timeout's pid, for stop_qemu.
{ timeout --foreground -k 10 "$timeout_s" qemu-system-x86_64 \
	-nodefaults -no-user-config -machine q35 -accel "$accel" -cpu "$cpu" \
	-smp "$smp" -m "$mem" -display none -nic none -no-reboot \
	-chardev stdio,id=con,signal=off -serial chardev:con \
	-kernel "$kernel" -initrd "$initrd" -append "$append" \
	-device virtio-rng-pci "${shares[@]}" \
	</dev/null >"$tmp/console" 2>"$tmp/qemu.err" &
	echo $! >"$tmp/qemu.pid"
	wait $!; } 2>/dev/null &
qpid=$!
# Elapsed time in hundredths from /proc/uptime (the boot-time clock), not
# $SECONDS: bash's SECONDS follows the wall clock, which a freshly restored
# machine may step by minutes.
uptime_cs() { local up; read -r up _ </proc/uptime; echo $((10#${up/./})); }
elapsed_s() { echo $((($(uptime_cs) - t0) / 100)); }
t0=$(uptime_cs) wall0=$SECONDS
awk "${awk_flags[@]}" -v n="@@$nonce@@" -v dir="$tmp" -v verbose="${LINUX_VHOST_VM_VERBOSE:-}" '
	{ sub(/\r$/, "") }
	(i = index($0, n " ")) {
		w = substr($0, i + length(n) + 1)
		if (w == "START") { phase = 1; printf "" > (dir "/started"); close(dir "/started"); next }
		if (phase == 1 && i > 1) { print substr($0, 1, i - 1); fflush() }
		if (w ~ /^EXIT /) { print substr(w, 6) > (dir "/marker"); phase = 2 }
		if (w ~ /^FAIL /) print substr(w, 6) > (dir "/fail")
		next
	}
	phase == 1 { print; fflush(); next }
	{ print > (dir "/boot.log"); if (verbose == "1") { print > "/dev/stderr"; fflush("/dev/stderr") } }
' <"$tmp/console" || { touch "$tmp/output-closed"; stop_qemu; } & # e.g. our stdout was closed
apid=$!

# Watchdogs, one loop. Boot: a VM that cannot boot (e.g. a broken accelerator)
# should fail fast, not sit out the whole --timeout; two witnesses that the
# command started: the console filter saw START, or init wrote "started" into
# the run share. Freeze: nested KVM under TCG (QEMU 7.2's SVM emulation) has left
# every vCPU of this VM halted for good, qemu using no CPU for minutes; an idle
# VM still uses a few ticks every 10 s, so none at all for freeze_timeout
# seconds means frozen: fail now, saying so. Heartbeat: a CI run also saw this VM
# stuck with qemu busy on both vCPUs and nothing moving for minutes; init writes
# its uptime into the run share every 5 s, so no new beat for heartbeat_timeout
# seconds once the command runs means stuck.
# Broken: a test that found this VM's kernel broken (a nested QEMU that SIGKILL cannot end)
# says so in $LINUX_VHOST_VM_BROKEN (scripts/fresh-vms.js); whatever runs after it in this VM
# can only hang, so the VM is stopped 30 s later (time for the test's own report) instead of
# at --timeout. A file there before the VM started is not this VM's.
broken_file=${LINUX_VHOST_VM_BROKEN:-} broken_since=
[ -z "$broken_file" ] || [ ! -e "$broken_file" ] || broken_file=
started() { [ -e "$tmp/started" ] || [ -e "$tmp/guest/started" ]; }
qemu_ticks() { # sets ticks_now: utime + stime of qemu, the child of timeout (pid in qemu.pid)
	local tpid qemu stat
	{ read -r tpid <"$tmp/qemu.pid" && { read -r qemu _ <"/proc/$tpid/task/$tpid/children" || [ -n "$qemu" ]; } &&
		read -r stat <"/proc/$qemu/stat"; } 2>/dev/null || return 1
	read -r -a stat <<<"${stat##*) }" # fields from 3 (state) on: utime is 14, stime 15
	ticks_now=$((stat[11] + stat[12]))
}
booted= ticks=-1 since=$t0 n=0 beat= beat_since=$t0
while kill -0 "$qpid" 2>/dev/null; do
	if [ -z "$booted" ]; then
		if started; then
			booted=1 beat_since=$(uptime_cs)
			[ "${LINUX_VHOST_VM_VERBOSE:-}" != 1 ] || log "command started $(elapsed_s)s after qemu"
		elif [ $(($(uptime_cs) - t0)) -ge $((boot_timeout * 100)) ]; then
			started || { touch "$tmp/boot-timeout"; stop_qemu; break; }
		fi
	fi
	n=$((n + 1))
	if [ "$freeze_timeout" -gt 0 ] && [ $((n % 10)) = 0 ] && qemu_ticks; then # once a second
		if [ "$ticks_now" != "$ticks" ]; then ticks=$ticks_now since=$(uptime_cs)
		elif [ $(($(uptime_cs) - since)) -ge $((freeze_timeout * 100)) ]; then touch "$tmp/frozen"; stop_qemu; break; fi
	fi
	if [ -n "$booted" ] && [ "$heartbeat_timeout" -gt 0 ] && [ $((n % 10)) = 1 ]; then # once a second
		now=
		{ read -r now _ <"$tmp/guest/alive"; } 2>/dev/null || true
		if [ "$now" != "$beat" ]; then beat=$now beat_since=$(uptime_cs)
		elif [ $(($(uptime_cs) - beat_since)) -ge $((heartbeat_timeout * 100)) ]; then touch "$tmp/stuck"; stop_qemu; break; fi
	fi
	if [ -n "$broken_file" ] && [ $((n % 10)) = 2 ] && [ -e "$broken_file" ]; then # once a second
		if [ -z "$broken_since" ]; then broken_since=$(uptime_cs)
		elif [ $(($(uptime_cs) - broken_since)) -ge 3000 ]; then touch "$tmp/broken"; stop_qemu; break; fi
	fi
	sleep 0.1
done
qrc=0; wait "$qpid" || qrc=$?
qpid=
wait "$apid" || true
apid=

if [ -e "$tmp/boot-timeout" ]; then
	log "the VM did not boot within ${boot_timeout}s ($accel); qemu killed"
	# Which witnesses showed up late (if any) and the two clocks, for a boot that was not stuck.
	log "late start witnesses: console=$([ -e "$tmp/started" ] && echo yes || echo no)" \
		"run-share=$([ -e "$tmp/guest/started" ] && echo yes || echo no);" \
		"elapsed $(elapsed_s)s, wall clock $((SECONDS - wall0))s"
	[ ! -s "$tmp/boot.log" ] || { log "last console lines:"; tail -n 20 "$tmp/boot.log" >&2; }
	exit 125
fi
if [ -e "$tmp/frozen" ]; then
	log "the VM froze: qemu used no CPU for ${freeze_timeout}s (every vCPU halted); qemu killed"
	[ ! -s "$tmp/boot.log" ] || { log "last console lines:"; tail -n 20 "$tmp/boot.log" >&2; }
	exit 125
fi
if [ -e "$tmp/stuck" ]; then
	log "the VM stopped responding: its init wrote no heartbeat for ${heartbeat_timeout}s (its kernel is stuck); qemu killed"
	exit 125
fi
if [ -e "$tmp/broken" ]; then
	log "a test found this VM broken ($(head -n 1 "$broken_file")); qemu stopped 30 s later"
	exit 125
fi
[ ! -e "$tmp/output-closed" ] || exit 141 # like a command killed by SIGPIPE
if [ $qrc = 124 ] || { [ $qrc = 137 ] && [ "$(elapsed_s)" -ge "$timeout_s" ]; }; then
	log "timeout: the VM ran longer than ${timeout_s}s; qemu killed"
	exit 124
fi
st=$(cat "$tmp/guest/status" 2>/dev/null || cat "$tmp/marker" 2>/dev/null || true)
if [[ $st =~ ^[0-9]+$ ]]; then exit "$st"; fi
if [ -s "$tmp/fail" ]; then log "guest init failed: $(cat "$tmp/fail")"
else log "the VM did not run the command (qemu exit status $qrc)"; fi
[ ! -s "$tmp/qemu.err" ] || { log "qemu said:"; tail -n 20 "$tmp/qemu.err" >&2; }
if [ -s "$tmp/boot.log" ]; then
	grep -m3 -E 'Kernel panic|BUG:|Oops' "$tmp/boot.log" >&2 || true
	log "last console lines:"; tail -n 15 "$tmp/boot.log" >&2
fi
exit 125
