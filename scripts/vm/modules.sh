# Sourced by scripts/vm.sh and scripts/guest-initramfs.sh (bash): copies kernel
# modules and everything they depend on into an initramfs stage.
#
#   stage_modules MODDIR STAGE "required modules" "optional modules"
#
# MODDIR is lib/modules/<ver> (with modules.dep). Modules land uncompressed in
# STAGE/lib/modules/<name>.ko; STAGE/lib/modules/load lists "<name> <kind>"
# in load order (dependencies first), kind being required or optional.
# Built-in modules are skipped; a required module that is neither built in
# nor present is an error (the caller's die()).
stage_modules() {
	local moddir=$1 stage=$2 required=$3 optional=$4 line p n m kind
	local -A path_of=() deps_of=() builtin=() seen=()
	while IFS= read -r line; do
		p=${line%%:*} n=${p##*/} n=${n%%.ko*} n=${n//-/_}
		path_of[$n]=$p deps_of[$n]=${line#*:}
	done <"$moddir/modules.dep"
	if [ -f "$moddir/modules.builtin" ]; then
		while IFS= read -r p; do n=${p##*/} n=${n%%.ko*}; builtin[${n//-/_}]=1; done <"$moddir/modules.builtin"
	fi
	mkdir -p "$stage/lib/modules"
	: >"$stage/lib/modules/load"
	_stage_module() { # depth first: dependencies are listed (and loaded) before their users
		local n=$1 kind=$2 d p
		[ -z "${seen[$n]:-}" ] || return 0
		seen[$n]=1
		for d in ${deps_of[$n]}; do d=${d##*/} d=${d%%.ko*}; _stage_module "${d//-/_}" "$kind"; done
		p=$moddir/${path_of[$n]}
		case $p in
		*.ko) cp "$p" "$stage/lib/modules/$n.ko" ;;
		*.ko.xz) xz -dc "$p" >"$stage/lib/modules/$n.ko" ;;
		*.ko.zst) zstd -qdc "$p" >"$stage/lib/modules/$n.ko" ;;
		*.ko.gz) gzip -dc "$p" >"$stage/lib/modules/$n.ko" ;;
		*) die "unknown module file $p" ;;
		esac
		echo "$n $kind" >>"$stage/lib/modules/load"
	}
	for m in $required $optional; do
		kind=required; [[ " $optional " == *" $m "* ]] && kind=optional
		if [ -n "${builtin[$m]:-}" ]; then continue
		elif [ -n "${path_of[$m]:-}" ]; then _stage_module "$m" "$kind"
		elif [ $kind = required ]; then die "module $m is neither built into the kernel nor in $moddir"
		fi
	done
}
