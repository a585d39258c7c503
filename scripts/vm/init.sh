#!/bin/busybox sh
# PID 1 of the test VM (packed into the initramfs by scripts/vm.sh).
# Loads the modules listed in /lib/modules/load, chroots into the host root
# (9p, read-only) with the writable share mounted over its host path, runs
# /run/linux-vhost-vm/cmd (written by vm.sh) and powers off.
# Console protocol, parsed by vm.sh: everything before "@@<nonce>@@ START" is
# boot noise; "@@<nonce>@@ EXIT <n>" carries the exit status, "@@<nonce>@@ FAIL
# <why>" an init failure. The nonce keeps command output from faking markers.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /host
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev

N=
for arg in $(cat /proc/cmdline); do
	case $arg in lvvm.nonce=*) N=${arg#lvvm.nonce=} ;; esac
done

# Progress lines land in vm.sh's boot log (shown with LINUX_VHOST_VM_VERBOSE=1).
say() { read -r up _ </proc/uptime; echo "init[$up]: $*"; }

say "init started"

die() {
	echo "@@$N@@ FAIL $*"
	# poweroff -f alone can return early under some firmware; sysrq is the fallback.
	poweroff -f
	echo o >/proc/sysrq-trigger
	exit 1 # PID 1 exiting panics; panic=-1 + qemu -no-reboot then ends qemu
}

# Dependencies come first in the list (vm.sh resolved modules.dep).
# Optional modules (kvm_amd/kvm_intel need CPU virtualization support) may fail.
while read -r mod kind; do
	[ -n "$mod" ] || continue
	# A vendor KVM module without its CPU flag only wastes boot time failing.
	case $mod in
	kvm_intel) grep -qw vmx /proc/cpuinfo || continue ;;
	kvm_amd) grep -qw svm /proc/cpuinfo || continue ;;
	esac
	# Module options from the kernel command line (mod.param=value), as modprobe applies them.
	opts=$(tr ' ' '\n' </proc/cmdline | sed -n "s/^$mod\.//p")
	# shellcheck disable=SC2086 # one word per option
	if ! err=$(insmod "/lib/modules/$mod.ko" $opts 2>&1); then
		case $err in *"File exists"*) continue ;; esac
		[ "$kind" = optional ] && { say "optional module $mod not loaded: $err"; continue; }
		die "insmod $mod: $err"
	fi
done </lib/modules/load

say "modules loaded"
p9='trans=virtio,version=9p2000.L,msize=512000'
mount -t 9p -o "$p9,ro,cache=loose" host /host || die "cannot mount host root (9p)"
mount -t tmpfs -o mode=755 run /host/run || die "cannot mount /run tmpfs"
mkdir -p /host/run/linux-vhost-vm /host/run/linux-vhost-vm-kernel
mount -t 9p -o "$p9" run /host/run/linux-vhost-vm || die "cannot mount run dir (9p)"
mount -t 9p -o "$p9,ro,cache=loose" kernel /host/run/linux-vhost-vm-kernel || die "cannot mount kernel dir (9p)"
IFS= read -r share </host/run/linux-vhost-vm/share || die "no share path"

mount -t tmpfs -o mode=1777 tmp /host/tmp || die "cannot mount /tmp tmpfs"
mount -t tmpfs -o mode=700 home /host/root || die "cannot mount /root tmpfs"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,gid=5,mode=620 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 shm /host/dev/shm
ln -sf /proc/self/fd /host/dev/fd
ln -sf /proc/self/fd/0 /host/dev/stdin
ln -sf /proc/self/fd/1 /host/dev/stdout
ln -sf /proc/self/fd/2 /host/dev/stderr

# Mounted last so a share below /tmp or /root is not hidden by the tmpfs above
# (mkdir creates the mount point there; on the read-only root it already exists).
# cache=loose: ~10x faster directory walks (jest's crawl) than uncached 9p; the
# price is that host-side changes made during the run may go unseen, and
# writes reach the host by the sync below at the latest.
mkdir -p "/host$share" 2>/dev/null
mount -t 9p -o "$p9,cache=loose" share "/host$share" || die "cannot mount share $share (9p)"

say "mounts done"
hostname linux-vhost-vm
ip link set lo up

# Heartbeat for vm.sh's watchdog: a VM whose kernel is stuck stops writing it.
# Its pid is in the run share, for the test that stops it.
(while :; do cat /proc/uptime >/host/run/linux-vhost-vm/alive; sleep 5; done) &
hb=$!
echo "$hb" >/host/run/linux-vhost-vm/heartbeat.pid
renice -n -10 -p "$hb" >/dev/null 2>&1

# Two witnesses for vm.sh's boot watchdog: a file in the run share and the console line.
: >/host/run/linux-vhost-vm/started
echo "@@$N@@ START"
env -i chroot /host /bin/bash /run/linux-vhost-vm/cmd
st=$?
kill "$hb" 2>/dev/null
echo "$st" >/host/run/linux-vhost-vm/status
echo "@@$N@@ EXIT $st"
say "command exited with $st"
sync
poweroff -f
echo o >/proc/sysrq-trigger
exit 1
