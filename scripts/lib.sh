# shellcheck shell=bash
# Shared helpers for test.sh, bench.sh and demo.sh. Source it; it runs nothing.
#
# Invariant: every helper that stops a process or removes a mount acts only on
# a PID the calling script started itself, or on a mount that is provably ours
# (fstype fuse.sqlfs under the temp dir) and provably dead (its daemon is gone).

# The version of the S3 server the tests run, pinned outside the module's go.mod.
SQLFS_VERSITYGW_VERSION=v1.8.0

# Where tools installed for the tests are cached between runs (outside the repo).
SQLFS_CACHE=${SQLFS_CACHE:-${HOME:-/root}/.cache/sqlfs}

sqlfs_say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
sqlfs_die() { sqlfs_say "error: $*"; exit 1; }

# sqlfs_setup_path puts Go (/usr/local/go) and Go-installed tools on PATH and
# checks that a go command is there. cgo is required (mattn/go-sqlite3).
sqlfs_setup_path() {
	local d
	for d in "${HOME:-/root}/go/bin" /usr/local/go/bin; do
		case ":$PATH:" in *":$d:"*) ;; *) [[ -d $d ]] && PATH="$d:$PATH" ;; esac
	done
	export PATH
	export CGO_ENABLED=1
	command -v go >/dev/null || sqlfs_die "go not found (expected Go 1.26 at /usr/local/go)"
}

# sqlfs_as_root runs a command as root: directly when we are root, else via sudo -n.
sqlfs_as_root() {
	if [[ $(id -u) == 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo -n "$@"
	else
		sqlfs_die "need root for: $*"
	fi
}

# sqlfs_apt_ensure CMD:PKG[,PKG...]... installs the Debian packages of every
# command that is not on PATH. apt-get update runs only when something is missing.
sqlfs_apt_ensure() {
	local spec cmd more pkgs=()
	for spec in "$@"; do
		cmd=${spec%%:*}
		command -v "$cmd" >/dev/null && continue
		IFS=, read -r -a more <<<"${spec#*:}"
		pkgs+=("${more[@]}")
	done
	((${#pkgs[@]})) || return 0
	command -v apt-get >/dev/null || sqlfs_die "missing ${pkgs[*]} and no apt-get to install them"
	sqlfs_say "installing ${pkgs[*]}"
	local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300)
	sqlfs_as_root "${apt[@]}" update >/dev/null ||
		sqlfs_die "apt-get update failed"
	sqlfs_as_root "${apt[@]}" install --no-install-recommends "${pkgs[@]}" >/dev/null </dev/null ||
		sqlfs_die "apt-get install ${pkgs[*]} failed"
}

# sqlfs_ensure_fuse_dev makes sure /dev/fuse exists: loads the module, or makes
# the device node when the kernel has FUSE but the node is missing (containers).
sqlfs_ensure_fuse_dev() {
	[[ -c /dev/fuse ]] && return 0
	if command -v modprobe >/dev/null; then
		sqlfs_as_root modprobe fuse || true
	fi
	if [[ ! -c /dev/fuse ]] && grep -qw fuse /proc/filesystems 2>/dev/null; then
		sqlfs_as_root mknod -m 0666 /dev/fuse c 10 229 || true
	fi
	[[ -c /dev/fuse ]] || sqlfs_die "/dev/fuse is missing and could not be created (is FUSE in this kernel?)"
}

# sqlfs_mount_fstype MOUNTPOINT prints the fstype MOUNTPOINT is mounted with,
# or nothing when it is not a mount point. MOUNTPOINT must be an absolute,
# symlink-free path (the form /proc/mounts uses).
sqlfs_mount_fstype() {
	local want=$1 src mp fstype rest
	while read -r src mp fstype rest; do
		[[ $(printf '%b' "$mp") == "$want" ]] && { printf '%s\n' "$fstype"; return 0; }
	done </proc/mounts
	return 0
}

# sqlfs_proc_alive PID succeeds while PID runs (a zombie counts as gone).
sqlfs_proc_alive() {
	local stat
	read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != Z ]]
}

# sqlfs_wait_mount MOUNTPOINT PID SECONDS waits until MOUNTPOINT shows up as a
# fuse mount in /proc/mounts. It fails early when PID (the mounting process)
# exits, and when the deadline passes. Benchmarks time mounts with it, so it
# looks every 10 ms and forks nothing while it waits: sqlfs_mount_fstype runs
# a subshell per line of /proc/mounts, and under load one look took 100-200 ms
# of CPU on the cores the mount being timed needs. It sleeps by a read with a
# timeout from a pipe nobody writes to.
sqlfs_wait_mount() {
	local mp=$1 pid=$2 deadline=$((SECONDS + $3)) src m fstype rest nap rc=1
	exec {nap}<> <(:)
	while :; do
		while read -r src m fstype rest; do
			printf -v m '%b' "$m"
			[[ $m == "$mp" && $fstype == fuse* ]] && { rc=0; break 2; }
		done </proc/mounts
		sqlfs_proc_alive "$pid" || { sqlfs_say "sqlfs (pid $pid) exited before $mp was mounted"; break; }
		((SECONDS < deadline)) || { sqlfs_say "$mp not mounted after $3 s"; break; }
		read -rt 0.01 -u "$nap" || true
	done
	exec {nap}<&-
	return $rc
}

# sqlfs_unmount MOUNTPOINT removes a mount if it is there: umount, then a lazy
# umount (a dead or busy FUSE mount), then fusermount3 for non-root users.
sqlfs_unmount() {
	local mp=$1
	[[ -n $(sqlfs_mount_fstype "$mp") ]] || return 0
	umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null ||
		fusermount3 -u -z "$mp" 2>/dev/null || fusermount -u -z "$mp" 2>/dev/null || true
	[[ -z $(sqlfs_mount_fstype "$mp") ]] || { sqlfs_say "could not unmount $mp"; return 1; }
}

# sqlfs_stop_mount PID MOUNTPOINT stops a `sqlfs mount` this script started:
# SIGTERM, wait up to 15 s, then SIGKILL; then unmounts if the mount is still
# there. PID must be a child of the calling shell (it is reaped with wait).
sqlfs_stop_mount() {
	local pid=$1 mp=$2 deadline=$((SECONDS + 15)) rc=0
	if [[ -n $pid ]] && sqlfs_proc_alive "$pid"; then
		kill -TERM "$pid" 2>/dev/null || true
		while sqlfs_proc_alive "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
		if sqlfs_proc_alive "$pid"; then
			sqlfs_say "sqlfs (pid $pid) did not exit 15 s after SIGTERM; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	[[ -n $pid ]] && { wait "$pid" 2>/dev/null || rc=$?; }
	if [[ -n $(sqlfs_mount_fstype "$mp") ]]; then
		sqlfs_say "$mp still mounted after sqlfs exited; unmounting"
		sqlfs_unmount "$mp" || rc=1
	fi
	return "$rc"
}

# sqlfs_cleanup_stale_mounts unmounts sqlfs mounts under the temp dirs whose
# daemon is gone (stat answers ENOTCONN): what a killed or crashed test leaves.
# A mount is sqlfs's when its fstype is fuse.sqlfs or its source is "sqlfs".
# Live sqlfs mounts (someone else's run, or a test's leaked process) are only
# reported. Other mounts are never touched.
sqlfs_cleanup_stale_mounts() {
	local prefixes=(/tmp/) src mp fstype rest p ours err found=()
	[[ -n ${TMPDIR:-} && ${TMPDIR%/}/ != /tmp/ ]] && prefixes+=("${TMPDIR%/}/")
	while read -r src mp fstype rest; do
		[[ $fstype == fuse.sqlfs || ($fstype == fuse* && $src == sqlfs) ]] || continue
		mp=$(printf '%b' "$mp")
		ours=
		for p in "${prefixes[@]}"; do [[ $mp == "$p"* ]] && ours=1; done
		[[ -n $ours ]] && found+=("$mp")
	done </proc/mounts
	((${#found[@]})) || return 0
	# Deepest first, so a mount inside another comes off before its parent.
	mapfile -t found < <(printf '%s\n' "${found[@]}" | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-)
	for mp in "${found[@]}"; do
		err=$(timeout 5 stat -c %i "$mp" 2>&1 >/dev/null) && {
			sqlfs_say "note: live sqlfs mount left alone: $mp"
			continue
		}
		case $err in
		*"not connected"*)
			sqlfs_say "unmounting stale sqlfs mount $mp"
			sqlfs_unmount "$mp" || true
			;;
		*) sqlfs_say "note: sqlfs mount $mp does not answer (${err:-timeout}); left alone" ;;
		esac
	done
}

# sqlfs_pgrp_pids PGID prints the live processes of process group PGID.
sqlfs_pgrp_pids() {
	local f stat pid fields
	for f in /proc/[0-9]*/stat; do
		read -r stat 2>/dev/null <"$f" || continue
		pid=${f#/proc/} pid=${pid%/stat}
		# After the command name: state ppid pgrp ...
		read -r -a fields <<<"${stat##*) }"
		[[ ${fields[2]} == "$1" && ${fields[0]} != Z ]] && printf '%s\n' "$pid"
	done
	return 0
}

# sqlfs_elapsed START prints the seconds since START (an $EPOCHREALTIME value).
sqlfs_elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# sqlfs_remove_unless_mounted BASE MNT... removes the temp dir BASE, unless one
# of the MNTs (inside it) is still mounted: then it is left for a person to
# look at.
sqlfs_remove_unless_mounted() {
	local dir=$1 m
	shift
	for m in "$@"; do
		if [[ -n $(sqlfs_mount_fstype "$m") ]]; then
			sqlfs_say "leaving $dir in place: $m is still mounted"
			return
		fi
	done
	rm -rf "$dir"
}

# sqlfs_build_cmd OUTDIR builds ./cmd/sqlfs into OUTDIR/sqlfs (from the repo root).
sqlfs_build_cmd() {
	(cd "$SQLFS_ROOT" && go build -o "$1/sqlfs" ./cmd/sqlfs)
}

# sqlfs_install_versitygw prints the path of a versitygw $SQLFS_VERSITYGW_VERSION
# binary, building it with go install into $SQLFS_CACHE/bin on first use (about
# a minute cold) and reusing it afterwards. It never touches the project's go.mod.
sqlfs_install_versitygw() {
	local bin=$SQLFS_CACHE/bin/versitygw have tmp start=$SECONDS
	if [[ -x $bin ]]; then
		have=$(go version -m "$bin" 2>/dev/null | awk '$1 == "mod" && $2 == "github.com/versity/versitygw" { print $3 }')
		[[ $have == "$SQLFS_VERSITYGW_VERSION" ]] && { printf '%s\n' "$bin"; return 0; }
	fi
	sqlfs_say "installing versitygw $SQLFS_VERSITYGW_VERSION into $SQLFS_CACHE/bin"
	mkdir -p "$SQLFS_CACHE/bin"
	tmp=$(mktemp -d "$SQLFS_CACHE/install.XXXXXX")
	# Build outside any module, into a private GOBIN, then rename into place so a
	# concurrent run never sees a half-written binary.
	if ! (cd "$tmp" && GOFLAGS=-mod=mod GOBIN="$tmp" go install \
		"github.com/versity/versitygw/cmd/versitygw@$SQLFS_VERSITYGW_VERSION") >&2; then
		rm -rf "$tmp"
		sqlfs_die "go install versitygw@$SQLFS_VERSITYGW_VERSION failed"
	fi
	mv -f "$tmp/versitygw" "$bin"
	rm -rf "$tmp"
	sqlfs_say "versitygw installed in $((SECONDS - start)) s"
	printf '%s\n' "$bin"
}

SQLFS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
