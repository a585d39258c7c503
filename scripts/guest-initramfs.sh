#!/usr/bin/env bash
# Build a small initramfs for a guest that QEMU boots on devices this library
# prepared (examples/boot-vm.js, test/kernel/vmm/nested-guest.test.ts, bench/qemu-vhost.js):
# static busybox, the kernel's virtio-net / virtio-pci / 9p / virtio-vsock
# modules (with their dependencies, from modules.dep), and an /init that
#   - loads them, leaving eth0 as the device configured it (the MTU the guest
#     reports is the one the host offered through host_mtu, not one it set);
#   - mounts a 9p share tagged `host` read-only and chroots into it when QEMU
#     exports one (so the guest can use the host's tools, e.g. python3 for a
#     vsock agent: busybox has no AF_VSOCK), with tmpfs /tmp and /run, busybox
#     applets last in PATH;
#   - runs `sh /run/guest/cmd` when a 9p share tagged `run` holds a cmd file
#     (the share stays writable: the script can leave results there), printing
#     "@@<nonce>@@ START" and "@@<nonce>@@ EXIT <status>" on the console around it
#     (nonce from lvg.nonce= on the kernel command line), then powers off;
#   - otherwise brings eth0 up (with lvg.ip=ADDR/PREFIX if given), prints its
#     MTU and gives a shell on the console; leaving the shell powers off.
#
#   scripts/guest-initramfs.sh [OUT.cpio] [--kernel-dir DIR] [--kver VERSION]
#
# DIR holds lib/modules/<ver>/ (with modules.dep) and boot/vmlinu[xz]-<ver>:
# default /run/linux-vhost-vm-kernel inside the test VM, else the kernel
# scripts/vm.sh downloaded. `--kernel-dir / --kver $(uname -r)` uses this host's.
# The initramfs is cached by content in $LINUX_VHOST_CACHE/guest-initramfs
# (default ~/.cache/linux-vhost); OUT (optional) gets a copy. Prints two lines:
# the initramfs path, then the kernel image to boot it with.
set -euo pipefail

modules_lib=$(dirname "${BASH_SOURCE[0]}")/vm/modules.sh
# shellcheck source=vm/modules.sh
. "$modules_lib"

cache=${LINUX_VHOST_CACHE:-$HOME/.cache/linux-vhost}
modules_required="virtio_pci virtio_net 9pnet_virtio 9p vmw_vsock_virtio_transport"
modules_optional="af_packet virtio_rng"

die() { echo "guest-initramfs: $*" >&2; exit 1; }

out= kdir= kver=
while [ $# -gt 0 ]; do
	case $1 in
	--kernel-dir) kdir=${2:?--kernel-dir needs a value}; shift 2 ;;
	--kver) kver=${2:?--kver needs a value}; shift 2 ;;
	-h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
	-*) die "unknown option $1" ;;
	*) [ -z "$out" ] || die "one output file only"; out=$1; shift ;;
	esac
done

if [ -z "$kdir" ]; then
	if [ -d /run/linux-vhost-vm-kernel/lib/modules ]; then kdir=/run/linux-vhost-vm-kernel
	else
		v=$(cat "$cache/kernel/current" 2>/dev/null) ||
			die "no kernel: pass --kernel-dir, or run scripts/vm.sh once (it downloads Debian's)"
		kdir=$cache/kernel/$v
	fi
fi
[ -d "$kdir/lib/modules" ] || die "$kdir/lib/modules: no such directory"
if [ -z "$kver" ]; then
	vers=$(ls "$kdir/lib/modules")
	[ "$(echo "$vers" | wc -l)" = 1 ] || vers=$(uname -r)
	kver=$vers
fi
moddir=$kdir/lib/modules/$kver
[ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep missing (run depmod -b $kdir $kver)"
kernel=$kdir/boot/vmlinux-$kver
[ -s "$kernel" ] || kernel=$kdir/boot/vmlinuz-$kver
[ -s "$kernel" ] || die "no kernel image $kdir/boot/vmlinu[xz]-$kver"

busybox=/bin/busybox
[ -x $busybox ] || busybox=/usr/bin/busybox
# The initramfs has no libc, so busybox must be the static build.
[[ $(file -L "$busybox" 2>/dev/null || true) != *'dynamically linked'* ]] ||
	die "$busybox is dynamically linked; install busybox-static"
[ -x "$busybox" ] || die "no busybox; install busybox-static"
command -v cpio >/dev/null || die "cpio missing; install cpio"

# The /init below, kept in this file so the cache key covers it.
read -r -d '' init <<'INIT' || true
#!/bin/busybox sh
# PID 1 of a guest booted on devices linux-vhost prepared (scripts/guest-initramfs.sh).
/bin/busybox mkdir -p /proc /sys /dev /tmp /host
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
N= IP=
for arg in $(cat /proc/cmdline); do
	case $arg in lvg.nonce=*) N=${arg#*=} ;; lvg.ip=*) IP=${arg#*=} ;; esac
done
off() { sync; poweroff -f; echo o >/proc/sysrq-trigger; exit 1; }
fail() { echo "@@$N@@ FAIL $*"; off; }
while read -r mod kind; do
	err=$(insmod "/lib/modules/$mod.ko" 2>&1) || case $err in
		*"File exists"*) ;;
		*) [ "$kind" = optional ] || fail "insmod $mod: $err" ;;
	esac
done </lib/modules/load
ip link set lo up
tags=$(cat /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag 2>/dev/null | tr '\0' '\n')
has_tag() { echo "$tags" | grep -qx "$1"; }
p9='trans=virtio,version=9p2000.L,msize=512000'
root=
if has_tag host; then
	mount -t 9p -o "$p9,ro,cache=loose" host /host || fail "cannot mount the host share (9p)"
	root=/host
	for d in tmp run; do mount -t tmpfs -o mode=1777 "$d" "/host/$d" || fail "tmpfs /$d"; done
	mount -t proc proc /host/proc
	mount -t sysfs sysfs /host/sys
	mount -t devtmpfs dev /host/dev
	mkdir -p /host/dev/pts /host/run/busybox
	mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
	cp /bin/busybox /host/run/busybox/busybox
	# Relative links: --install -s would point them at /host/..., which the chroot cannot see.
	for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox "/host/run/busybox/$a"; done
fi
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/busybox HOME=/tmp
if has_tag run; then
	mkdir -p "$root/run/guest"
	mount -t 9p -o "$p9" run "$root/run/guest" || fail "cannot mount the run share (9p)"
fi
if [ -f "$root/run/guest/cmd" ]; then
	echo "@@$N@@ START"
	if [ -n "$root" ]; then chroot "$root" /bin/sh /run/guest/cmd 2>&1; else sh /run/guest/cmd 2>&1; fi
	echo "@@$N@@ EXIT $?"
	off
fi
if [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up
	[ -z "$IP" ] || ip addr add "$IP" dev eth0
	echo "eth0: mtu $(cat /sys/class/net/eth0/mtu), $(ls -d /sys/class/net/eth0/queues/rx-* | wc -l) rx queue(s)${IP:+, $IP}"
fi
echo "guest shell (exit to power off)"
if [ -n "$root" ]; then setsid cttyhack chroot "$root" /bin/sh -l; else setsid cttyhack sh; fi
off
INIT

key=$( { echo "v1 $kver $modules_required / $modules_optional"; echo "$init"; cat "$modules_lib" "$busybox"; } | sha256sum | cut -c1-16)
dir=$cache/guest-initramfs
initrd=$dir/$kver-$key.cpio
mkdir -p "$dir"
if [ ! -f "$initrd" ]; then
	stage=$(mktemp -d "$dir/.stage.XXXXXX")
	trap 'rm -rf "$stage" "$stage.cpio"' EXIT
	mkdir -p "$stage/bin" "$stage/lib/modules"
	cp "$busybox" "$stage/bin/busybox"
	printf '%s\n' "$init" >"$stage/init"
	chmod 755 "$stage/init"
	stage_modules "$moddir" "$stage" "$modules_required" "$modules_optional"
	(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$stage.cpio"
	mv "$stage.cpio" "$initrd" # atomic: concurrent builders write the same content
	rm -rf "$stage"
	trap - EXIT
fi
if [ -n "$out" ]; then cp "$initrd" "$out"; initrd=$(realpath "$out"); fi
echo "$initrd"
echo "$kernel"
