#!/usr/bin/env bash
# bench-restore.sh — how long `sqlfs restore` of a large database takes from a
# local S3 server (versitygw) and from a file replica, next to `cp` of the same
# database file on the same disk.
#
# Makes a database of -size MiB with the sqlite3 CLI (incompressible rows),
# copies it into a sqlfs mount that replicates to versitygw (one snapshot LTX),
# copies the replica's objects into a file replica, then times -rounds rounds
# of: cp, cp + fsync, restore from S3, restore from the file replica (restore
# fsyncs its output). Prints medians as a table with each time's ratio to cp
# and to cp + fsync; docs/BENCHMARKS.md has the results. Everything it made is
# removed at exit (unless -keep DIR: then DIR holds the database and both
# replicas, and a later run with the same -keep DIR and -size reuses them);
# the processes it started are stopped by PID.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

size=1024 rounds=3 parent=${TMPDIR:-/tmp} parallelism=8 keep=
while (($#)); do
	case ${1#-} in
	size | -size) size=${2:?-size needs MiB}; shift ;;
	rounds | -rounds) rounds=${2:?-rounds needs a value}; shift ;;
	parallelism | -parallelism) parallelism=${2:?-parallelism needs a value}; shift ;;
	dir | -dir) parent=${2:?-dir needs a value}; shift ;;
	keep | -keep) keep=${2:?-keep needs a directory}; shift ;;
	h | -h | help | -help)
		echo "Usage: scripts/bench-restore.sh [-size MiB (1024)] [-rounds 3] [-parallelism 8] [-dir DIR] [-keep DIR]"
		exit 0 ;;
	*) sqlfs_die "unknown argument $1" ;;
	esac
	shift
done

sqlfs_setup_path
sqlfs_apt_ensure sqlite3:sqlite3
export AWS_EC2_METADATA_DISABLED=true
if [[ -n $keep ]]; then
	mkdir -p "$keep"
	base=$(cd "$keep" && pwd)
else
	base=$(mktemp -d "$parent/sqlfs-bench-restore.XXXXXX")
fi
mnt=$base/mnt data=$base/data bin=$base/bin
reuse=
[[ -n $keep && -f $base/app.db && -d $base/file-replica && $(cat "$base/size" 2>/dev/null) == "$size" ]] && reuse=1
[[ -z $reuse ]] && rm -rf "$mnt" "$data" "$base/s3" "$base/file-replica" "$base/app.db"
mkdir -p "$mnt" "$data" "$bin" "$base/s3/backup" "$base/out"
mount_pid= s3_pid=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	[[ -n $mount_pid ]] && { sqlfs_stop_mount "$mount_pid" "$mnt" || rc=1; }
	if [[ -n $s3_pid ]]; then
		kill -TERM "$s3_pid" 2>/dev/null || true
		wait "$s3_pid" 2>/dev/null || true
	fi
	if [[ -n $keep ]]; then
		rm -rf "$base/out" "$base/data"
	else
		sqlfs_remove_unless_mounted "$base" "$mnt"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sqlfs_build_cmd "$bin"
gw=$(sqlfs_install_versitygw)
port=$((20000 + RANDOM % 20000))
"$gw" --access bench --secret benchsecret --port "127.0.0.1:$port" posix "$base/s3" >"$base/s3.log" 2>&1 &
s3_pid=$!
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$port
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
url=s3://backup/bench

rows=$((size * 1024 * 1024 / 1040))
if [[ -n $reuse ]]; then
	sqlfs_say "reusing the $size MiB database and replicas in $base"
else
	sqlfs_say "making a $size MiB database"
	sqlite3 "$base/app.db" "PRAGMA page_size=4096; PRAGMA journal_mode=OFF; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
	WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $rows) INSERT INTO t(v) SELECT randomblob(1000) FROM s;" >/dev/null

	sqlfs_say "shipping it to $url through a mount"
	"$bin/sqlfs" mount -levels none -data "$data" -replica "$url" "$mnt" >"$base/mount.log" 2>&1 &
	mount_pid=$!
	sqlfs_wait_mount "$mnt" "$mount_pid" 30 || { tail "$base/mount.log" >&2; exit 1; }
	cp "$base/app.db" "$mnt/app.db"
	deadline=$((SECONDS + 600))
	until "$bin/sqlfs" ltx "$url" -db app.db 2>/dev/null | grep -q '^0000000000000001'; do
		((SECONDS < deadline)) || sqlfs_die "the replica did not get the database in 10 minutes"
		sleep 0.5
	done
	sqlfs_stop_mount "$mount_pid" "$mnt"
	mount_pid=
	cp -a "$base/s3/backup/bench" "$base/file-replica"
	rm -rf "$data"
	echo "$size" >"$base/size"
fi
bytes=$(stat -c %s "$base/app.db")
ltx_bytes=$(stat -c %s "$base/file-replica/app.db/0000/"*.ltx | awk '{ s += $1 } END { print s }')

# time_one NAME COMMAND... prints the seconds COMMAND takes; the output file is
# removed (and the page cache of the source kept warm by the first round).
time_one() {
	local t0=$EPOCHREALTIME
	"$@" >/dev/null 2>"$base/err" || { cat "$base/err" >&2; sqlfs_die "$* failed"; }
	awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }'
}
cp_sync() { cp "$1" "$2" && sync "$2"; }

load_start=$(cut -d' ' -f1 /proc/loadavg)
declare -A res
names=(cp cp+fsync restore-s3 restore-file)
for ((r = 0; r <= rounds; r++)); do # round 0 warms the caches and is not counted
	for n in "${names[@]}"; do
		out=$base/out/app.db
		rm -f "$out"
		sync
		case $n in
		cp) v=$(time_one cp "$base/app.db" "$out") ;;
		cp+fsync) v=$(time_one cp_sync "$base/app.db" "$out") ;;
		restore-s3) v=$(time_one "$bin/sqlfs" restore -parallelism "$parallelism" -o "$out" "$url") ;;
		restore-file) v=$(time_one "$bin/sqlfs" restore -parallelism "$parallelism" -o "$out" "file://$base/file-replica") ;;
		esac
		cmp -s "$base/app.db" "$out" || sqlfs_die "$n: output differs from the database"
		((r > 0)) && res[$n]+="$v "
		sqlfs_say "round $r: $n $v s"
	done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
rev=$(git -C "$SQLFS_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$SQLFS_ROOT" status --porcelain 2>/dev/null) ]] && rev+="-dirty"
cp_med=$(median <<<"${res[cp]}")
sync_med=$(median <<<"${res[cp+fsync]}")
echo
echo "sqlfs restore benchmark, $(date -u +%Y-%m-%dT%H:%MZ), commit $rev"
echo "machine: $(nproc) cores, ${cpu:-unknown CPU}, Linux $(uname -r), $(df -PT "$base" | awk 'NR == 2 { print $2 }') under $parent; load average $load_start at start, $(cut -d' ' -f1 /proc/loadavg) at end"
echo "database: $bytes bytes ($rows rows of 1000 random bytes), history: one $ltx_bytes-byte snapshot LTX; -parallelism $parallelism"
echo "medians of $rounds rounds, warm page cache; ratio: time / time of cp, and of cp + fsync (restore's output is durable, cp's is not)"
echo
echo "| what | seconds | MiB/s | ratio to cp | ratio to cp+fsync |"
echo "|---|---|---|---|---|"
for n in "${names[@]}"; do
	m=$(median <<<"${res[$n]}")
	awk -v n="$n" -v m="$m" -v b="$bytes" -v c="$cp_med" -v s="$sync_med" 'BEGIN { r = (n == "cp") ? "" : sprintf("%.2f", m / s); printf "| %s | %.2f | %.0f | %.2f | %s |\n", n, m, b / m / 1048576, m / c, r }'
done
