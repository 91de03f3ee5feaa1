#!/usr/bin/env bash
# bench.sh — SQLite through a sqlfs mount against the same SQLite on the disk
# underneath, on this machine, alternating the two in one run.
#
# Builds sqlfs and scripts/benchdriver into a temp dir, mounts sqlfs (data dir
# and native dir on the same filesystem), runs every workload natively and
# through the mount for -rounds rounds each, and prints the medians as a table
# (docs/BENCHMARKS.md has the format). Everything it made is removed at exit;
# the mount it started is stopped by PID and unmounted even on failure.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

all_workloads=(wal-normal-writes wal-full-writes delete-full-writes wal-reads delete-reads bulk)

usage() {
	cat <<EOF
Usage: scripts/bench.sh [-duration 3s] [-rounds 3] [-workloads LIST] [-dir DIR] [-native-only]
                        [-replication | -replication-only] [-lag-duration 10s]

  -duration D     how long each timed run lasts (Go duration; bulk is one transaction)
  -rounds N       runs per workload and side; the table shows medians
  -workloads L    comma-separated subset of: ${all_workloads[*]}
  -dir DIR        where the temp dirs go (default \${TMPDIR:-/tmp}); the native
                  database and sqlfs's data dir share its filesystem
  -native-only    skip sqlfs (also SQLFS_BENCH_NATIVE_ONLY=1)
  -hist           instead of the workloads: historical mounts of a large history
                  (-hist-mib MiB database, default 1024; -hist-commits N, default 10000);
                  -hist-data DIR keeps the built history in DIR and reuses it when
                  DIR already holds one (its build takes minutes);
                  with SQLFS_VERSITYGW set, also from an S3 replica
  -replication    also run the replication section: lag from commit to object
                  visible in a file:// and a local S3 replica, and the write
                  rate with a replica against without
  -replication-only  only that section
  -lag-duration D how long each lag run commits at its pace (default 10s)
  -levels-only [ARGS]  only scripts/bench_levels.sh ARGS: restore time against history
                  length, and S3 requests per hour idle and at 10 commits/s

Environment: SQLFS_BIN=PATH benchmarks that sqlfs binary instead of building one.
EOF
}

# The command line as typed, quoted only where the shell needs it.
command_line=
for a in "$0" "$@"; do
	[[ $a =~ ^[][A-Za-z0-9_./:=,@%+-]+$ ]] || a=$(printf '%q' "$a")
	command_line+="$a "
done
duration=3s rounds=3 parent=${TMPDIR:-/tmp} native_only=${SQLFS_BENCH_NATIVE_ONLY:-0}
hist=0 hist_mib=1024 hist_commits=10000 hist_data=
replication=0 lag_duration=10s
workloads=("${all_workloads[@]}")
while (($#)); do
	case ${1#-} in
	-h | h | -help | help) usage; exit 0 ;;
	duration | -duration) duration=${2:?-duration needs a value}; shift ;;
	rounds | -rounds) rounds=${2:?-rounds needs a value}; shift ;;
	workloads | -workloads) IFS=, read -r -a workloads <<<"${2:?-workloads needs a value}"; shift ;;
	dir | -dir) parent=${2:?-dir needs a value}; shift ;;
	native-only | -native-only) native_only=1 ;;
	hist | -hist) hist=1 ;;
	hist-mib | -hist-mib) hist_mib=${2:?-hist-mib needs a value}; shift ;;
	hist-commits | -hist-commits) hist_commits=${2:?-hist-commits needs a value}; shift ;;
	hist-data | -hist-data) hist=1 hist_data=${2:?-hist-data needs a value}; shift ;;
	replication | -replication) replication=1 ;;
	replication-only | -replication-only) replication=1 workloads=() ;;
	lag-duration | -lag-duration) lag_duration=${2:?-lag-duration needs a value}; shift ;;
	levels-only | -levels-only) shift; exec "$(dirname "${BASH_SOURCE[0]}")/bench_levels.sh" "$@" ;;
	*) usage >&2; sqlfs_die "unknown argument $1" ;;
	esac
	shift
done
[[ $duration =~ ^[0-9]+(\.[0-9]+)?(ms|s|m)$ ]] || sqlfs_die "-duration must look like 500ms, 3s or 1m, not $duration"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || sqlfs_die "-rounds must be a positive integer, not $rounds"
for w in "${workloads[@]}"; do
	[[ " ${all_workloads[*]} " == *" $w "* ]] || sqlfs_die "unknown workload $w (want: ${all_workloads[*]})"
done
[[ $native_only == 1 ]] && native_only=1 || native_only=0
((native_only && replication)) && sqlfs_die "-replication needs sqlfs; drop -native-only"
[[ $lag_duration =~ ^[0-9]+(\.[0-9]+)?(ms|s|m)$ ]] || sqlfs_die "-lag-duration must look like 10s, not $lag_duration"

sqlfs_setup_path
load_start=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load_start" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
	sqlfs_say "warning: load average is $load_start on $(nproc) cores; other work will skew the numbers"
fi
base=$(mktemp -d "$parent/sqlfs-bench.XXXXXX")
mnt=$base/mnt data=$base/data native=$base/native bin=$base/bin
mkdir -p "$mnt" "$data" "$native" "$bin"
mount_pid=

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $mount_pid ]]; then
		sqlfs_stop_mount "$mount_pid" "$mnt" || rc=1
	fi
	if declare -F replication_cleanup >/dev/null; then
		replication_cleanup || rc=1
	fi
	sqlfs_remove_unless_mounted "$base" "$mnt"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_log_tail() {
	[[ -s $base/mount.log ]] && { sqlfs_say "last lines of the sqlfs log:"; tail -n 20 "$base/mount.log" >&2; }
	return 0
}

# ---- historical mounts (-hist) ----------------------------------------------
# A database of hist_mib MiB (1,000-byte random blobs, 4 KiB pages) is built
# natively and copied into a live mount (one snapshot in history) started
# with short compaction intervals (hist_levels), so that history has levels
# 1-3 and level-9 snapshots as a production mount would after days, compressed
# into a minute: 90% of hist_commits commits (single-row UPDATEs, WAL), then a
# wait until compaction has caught up (level 3 reaches the last TXID and a
# snapshot exists), then the live mount is stopped and the last 10% of the
# commits go through a mount without levels, so history ends in level-0 files
# past the newest level-1 file, as it does between compactions.
#
# Then historical mounts of TXIDs spread over history are timed from the data
# dir (and, with SQLFS_VERSITYGW, from versitygw serving the same files):
# the oldest, the middle, one just before and one just after the newest
# level-1 boundary, and the newest. For the newest: the first point query,
# the bytes the page source fetched for it (from its -v log), and cp out of a
# fresh mount against sqlfs restore.
hist_levels=(-levels 2s,10s,30s -snapshot-interval 1m)
hist_pid=
hist_cleanup() {
	local rc=$?
	[[ -n $hist_pid ]] && { sqlfs_stop_mount "$hist_pid" "$base/hist" || rc=1; }
	[[ -n ${s3_pid:-} ]] && { kill "$s3_pid" 2>/dev/null; wait "$s3_pid" 2>/dev/null; }
	(exit "$rc")
	cleanup
}

# hist_mount ARGS... mounts $base/hist with sqlfs mount -v ARGS, logging to
# $base/hist.log, and sets mount_s to the seconds until it was mounted and
# plan_files to the number of LTX files its pages come from.
hist_mount() {
	local t0=$EPOCHREALTIME
	"$bin/sqlfs" mount -v "$@" "$base/hist" >"$base/hist.log" 2>&1 &
	hist_pid=$!
	sqlfs_wait_mount "$base/hist" "$hist_pid" 120 || { tail -n 5 "$base/hist.log" >&2; exit 1; }
	mount_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
	plan_files=$(sed -n 's/.*msg="mounted read-only".* files=\([0-9]*\).*/\1/p' "$base/hist.log" | head -n 1)
}

hist_unmount() { sqlfs_stop_mount "$hist_pid" "$base/hist"; hist_pid=; }

# hist_fetched prints the page bytes and ranged reads the mount fetched so far.
hist_fetched() {
	awk '/msg=fetched/ { n++; for (i = 1; i <= NF; i++) if ($i ~ /^total_bytes=/) { split($i, kv, "="); b = kv[2] } }
		END { printf "%d %d\n", b, n }' "$base/hist.log"
}

# hist_ltx prints the history's files as "level min max" (decimal TXIDs), one a line.
hist_ltx() {
	local min max size created level
	"$bin/sqlfs" ltx -data "$data" -db app.db | tail -n +2 | while read -r min max size created level; do
		echo "$level $((16#$min)) $((16#$max))"
	done
}

# hist_caught_up says whether level 3 reaches the last TXID and a snapshot exists.
hist_caught_up() {
	hist_ltx | awk '{ m = $3 + 0; if (m > last) last = m; if (m > top[$1]) top[$1] = m }
		END { exit !(top[3] == last && top[9] > 0) }'
}

# hist_commit N makes N single-row UPDATEs through the live mount.
hist_commit() {
	{
		echo "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
		for ((i = 0; i < $1; i++)); do
			echo "UPDATE t SET v = randomblob(1000) WHERE id = abs(random()) % $hist_rows + 1;"
		done
	} | sqlite3 "$mnt/app.db" >/dev/null
}

# hist_mount_times LABEL SOURCE... prints a "label:data_s" line per TXID of
# hist_txids mounted from SOURCE, each mount timed and unmounted.
hist_mount_times() {
	local label=$1 name txid
	shift
	for name in "${!hist_txids[@]}"; do
		txid=${hist_txids[$name]}
		hist_mount -at-txid "$txid" -db app.db "$@"
		hist_unmount
		printf '%s %s %s %s\n' "$name" "$label" "$mount_s" "$plan_files" >>"$base/mount-times"
	done
}

# hist_measure LABEL SOURCE... prints one table row for a historical mount
# of the last TXID from SOURCE (-data DIR or -replica URL).
hist_measure() {
	local label=$1 q0 q_s fetched reqs cp_s restore_s src
	shift
	src=("$@")
	[[ $1 == -replica ]] && src=("$2")
	rm -f "$base/restored.db"
	q0=$EPOCHREALTIME
	"$bin/sqlfs" restore -o "$base/restored.db" -txid "$last" -db app.db "${src[@]}" 2>/dev/null
	restore_s=$(awk -v a="$q0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
	set -- -at-txid "$last" -db app.db "$@"
	hist_mount "$@"
	q0=$EPOCHREALTIME
	sqlite3 "$base/hist/app.db" "SELECT length(v) FROM t WHERE id = $((hist_rows / 2 + 7));" >/dev/null
	q_s=$(awk -v a="$q0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
	read -r fetched reqs < <(hist_fetched)
	hist_unmount
	local first_mount_s=$mount_s
	hist_mount "$@"
	rm -f "$base/copy.db"
	q0=$EPOCHREALTIME
	cp "$base/hist/app.db" "$base/copy.db"
	cp_s=$(awk -v a="$q0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
	hist_unmount
	[[ $(cmp -l "$base/copy.db" "$base/restored.db" | wc -l) -le 2 ]] || sqlfs_die "cp out of the $label mount differs from sqlfs restore"
	awk -v l="$label" -v m="$first_mount_s" -v q="$q_s" -v f="$fetched" -v r="$reqs" -v c="$cp_s" -v rs="$restore_s" -v sz="$hist_bytes" 'BEGIN {
		printf "| %s | %.2f | %.3f | %.1f KiB in %d reads | %.0f MB/s | %.0f MB/s | %.2f |\n",
			l, m, q, f / 1024, r, sz / c / 1e6, sz / rs / 1e6, rs / c }' >>"$base/hist-table"
}

if ((hist)); then
	trap hist_cleanup EXIT
	bin=$base/bin
	hist_rev=$(git -C "$SQLFS_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
	[[ -n $(git -C "$SQLFS_ROOT" status --porcelain 2>/dev/null) ]] && hist_rev+="-dirty"
	sqlfs_build_cmd "$bin"
	command -v sqlite3 >/dev/null || sqlfs_die "the sqlite3 CLI is needed for -hist"
	mkdir -p "$base/hist"
	hist_rows=$((hist_mib * 1024))
	t0=$EPOCHREALTIME
	if [[ -n $hist_data ]]; then
		mkdir -p "$hist_data"
		data=$(realpath "$hist_data")
	fi
	tail_commits=$((hist_commits / 10)) # also printed when the history is reused
	if [[ -n $hist_data && -f $data/built ]]; then
		read -r hist_rows caught_up_s <"$data/built"
		sqlfs_say "reusing the history built in $data"
	else
		sqlite3 "$native/app.db" "PRAGMA page_size=4096; PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
			CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
			WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < $hist_rows)
			INSERT INTO t(v) SELECT randomblob(1000) FROM c;" >/dev/null
		"$bin/sqlfs" mount -data "$data" "${hist_levels[@]}" "$mnt" >"$base/mount.log" 2>&1 &
		mount_pid=$!
		sqlfs_wait_mount "$mnt" "$mount_pid" 30 || { mount_log_tail; exit 1; }
		cp "$native/app.db" "$mnt/app.db"
		rm -f "$native/app.db"
		n=$("$bin/sqlfs" ltx -data "$data" -db app.db | tail -n +2 | wc -l)
		hist_commit $((hist_commits - tail_commits - n - 1))
		sqlfs_say "$((hist_commits - tail_commits)) commits in $(sqlfs_elapsed "$t0") s; waiting for compaction to catch up"
		t1=$EPOCHREALTIME
		for ((i = 0; i < 600; i++)); do hist_caught_up && break; sleep 1; done
		hist_caught_up || sqlfs_die "compaction did not catch up in 600 s: $(hist_ltx | awk '{ print $1 }' | sort | uniq -c | tr '\n' ' ')"
		caught_up_s=$(sqlfs_elapsed "$t1")
		sqlfs_stop_mount "$mount_pid" "$mnt"
		mount_pid=
		"$bin/sqlfs" mount -data "$data" -levels none "$mnt" >"$base/mount.log" 2>&1 &
		mount_pid=$!
		sqlfs_wait_mount "$mnt" "$mount_pid" 30 || { mount_log_tail; exit 1; }
		hist_commit "$tail_commits"
		sqlfs_stop_mount "$mount_pid" "$mnt"
		mount_pid=
		[[ -n $hist_data ]] && echo "$hist_rows $caught_up_s" >"$data/built"
	fi
	last=$("$bin/sqlfs" ltx -data "$data" -db app.db | awk 'NR > 1 { print $2 }' | sort | tail -n 1)
	hist_bytes=$(stat -c %s "$data/root/app.db")
	files_by_level=$(hist_ltx | awk '{ n[$1]++ } END { for (l in n) printf "%s%d at level %d", (c++ ? ", " : ""), n[l], l }')
	sqlfs_say "built $hist_bytes bytes, history 1..$last ($files_by_level), in $(sqlfs_elapsed "$t0") s"

	# The TXIDs mounted: the newest level-1 file ends at l1 (compaction
	# caught up before the last commits, so l1 is where they start).
	read -r l1min l1 < <(hist_ltx | awk '$1 == 1 { print $2, $3 }' | sort -n -k2 | tail -n 1)
	declare -A hist_txids=(
		[oldest]=1
		[middle]=$(printf '%x' $((0x$last / 2)))
		[before-l1]=$(printf '%x' $((l1 - 1)))
		[after-l1]=$(printf '%x' $((l1 + 1)))
		[newest]=$last
	)
	: >"$base/mount-times"
	: >"$base/hist-table"
	hist_mount_times "-data" -data "$data"
	hist_measure "-data" -data "$data"
	if [[ -n ${SQLFS_VERSITYGW:-} ]]; then
		# versitygw's posix backend serves bucket/key as files: the data
		# dir's history, linked in, is an S3 replica of the same files.
		mkdir -p "$base/s3/backup/prod"
		cp -al "$data/ltx/app.db" "$base/s3/backup/prod/app.db"
		port=$((20000 + RANDOM % 20000))
		"$SQLFS_VERSITYGW" --access bench --secret benchsecret --port "127.0.0.1:$port" --keep-alive --quiet posix "$base/s3" >"$base/s3.log" 2>&1 &
		s3_pid=$!
		for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port" && break; sleep 0.05; done
		export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 XDG_CACHE_HOME=$base/cache
		url="s3://backup/prod?endpoint=http://127.0.0.1:$port"
		hist_mount_times "s3" -replica "$url"
		hist_measure "s3 (versitygw)" -replica "$url"
	fi

	echo
	echo "sqlfs historical mount, $(date -u +%Y-%m-%dT%H:%MZ), sqlfs built from commit $hist_rev"
	echo "machine: $(nproc) cores, Linux $(uname -r); load average $load_start at start, $(cut -d' ' -f1 /proc/loadavg) at end"
	echo "database: $hist_bytes bytes (4 KiB pages, $hist_rows rows), txids 1..$last; command: ${command_line% }"
	echo "history: $files_by_level; live mount ${hist_levels[*]} for the first $((hist_commits - tail_commits)) commits, compaction caught up $caught_up_s s after them; the last $tail_commits commits with -levels none"
	echo
	echo "| txid | files in plan | mount s, -data | mount s, s3 |"
	echo "|---|---|---|---|"
	for name in oldest middle before-l1 after-l1 newest; do
		awk -v n="$name" -v t="${hist_txids[$name]}" '$1 == n { f = $4; s[$2] = $3 }
			END { printf "| %s (%s) | %s | %s | %s |\n", n, t, f, s["-data"], ("s3" in s ? s["s3"] : "-") }' "$base/mount-times"
	done
	echo
	echo "| source | mount s | first point query s | fetched by it | cp out | sqlfs restore | cp/restore |"
	echo "|---|---|---|---|---|---|---|"
	cat "$base/hist-table"
	exit 0
fi

sqlfs_say "building benchdriver$( ((native_only)) || [[ -n ${SQLFS_BIN:-} ]] || printf ' and sqlfs')"
(cd "$SQLFS_ROOT" && go build -o "$bin/benchdriver" ./scripts/benchdriver)
if ((!native_only)) && ((${#workloads[@]} || replication)); then
	if [[ -n ${SQLFS_BIN:-} ]]; then
		ln -s "$(realpath "$SQLFS_BIN")" "$bin/sqlfs"
	else
		sqlfs_build_cmd "$bin"
	fi
	"$bin/sqlfs" mount -data "$data" "$mnt" >"$base/mount.log" 2>&1 &
	mount_pid=$!
	if ! sqlfs_wait_mount "$mnt" "$mount_pid" 30; then
		mount_log_tail
		exit 1
	fi
	sqlfs_say "sqlfs mounted at $mnt (pid $mount_pid)"
fi

# metric WORKLOAD JSON prints the number the table compares: seconds for bulk,
# operations per second for the rest.
metric() {
	local key=ops_per_sec
	[[ $1 == bulk ]] && key=seconds
	sed -n "s/.*\"$key\":\([0-9.]*\).*/\1/p" <<<"$2"
}

# run_one SIDE WORKLOAD ROUND runs the driver once and prints its metric.
run_one() {
	local side=$1 w=$2 r=$3 dir=$native out
	if [[ $side == sqlfs ]]; then
		dir=$mnt
		sqlfs_proc_alive "$mount_pid" || { mount_log_tail; sqlfs_die "sqlfs (pid $mount_pid) is gone"; }
	fi
	if ! out=$("$bin/benchdriver" -db "$dir/$w-$r.db" -workload "$w" -duration "$duration"); then
		[[ $side == sqlfs ]] && mount_log_tail
		sqlfs_die "$w round $r on $side failed"
	fi
	printf '%s %s\n' "$side" "$out" >>"$base/results"
	metric "$w" "$out"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A med_native med_sqlfs
for w in "${workloads[@]}"; do
	nat=() fus=()
	for ((r = 1; r <= rounds; r++)); do
		# Alternate which side goes first, so neither always runs on a warmer machine.
		sides=(native sqlfs)
		((r % 2 == 0)) && sides=(sqlfs native)
		line=""
		for side in "${sides[@]}"; do
			[[ $side == sqlfs ]] && ((native_only)) && continue
			v=$(run_one "$side" "$w" "$r")
			if [[ $side == native ]]; then nat+=("$v"); else fus+=("$v"); fi
			line+="  $side $v"
		done
		sqlfs_say "$w round $r/$rounds:$line"
	done
	med_native[$w]=$(printf '%s\n' "${nat[@]}" | median)
	med_sqlfs[$w]=
	((${#fus[@]})) && med_sqlfs[$w]=$(printf '%s\n' "${fus[@]}" | median)
done
# ---- replication: lag to a replica, write rate with one, PUTs per commit ----
# (its own section: runs the drivers, keeps its results for the table below)
if ((replication)); then
	# shellcheck source=scripts/bench_replication.sh
	. "$SQLFS_ROOT/scripts/bench_replication.sh"
	replication_run
fi

sqlite_version=$( (cat "$base"/results "$base"/replication.results 2>/dev/null || true) | sed -n 's/.*"sqlite":"\([^"]*\)".*/\1/p' | head -n 1)

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
fstype=$(df -PT "$base" | awk 'NR == 2 { print $2 }')
rev=$(git -C "$SQLFS_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$SQLFS_ROOT" status --porcelain 2>/dev/null) ]] && rev+="-dirty"

echo
echo "sqlfs benchmark, $(date -u +%Y-%m-%dT%H:%MZ), commit $rev"
echo "machine: $(nproc) cores, ${cpu:-unknown CPU}, Linux $(uname -r), $fstype under $parent; load average $load_start at start, $(cut -d' ' -f1 /proc/loadavg) at end"
echo "software: $(go version | cut -d' ' -f3), SQLite $sqlite_version (mattn/go-sqlite3), one connection"
echo "command: ${command_line% }"
((${#workloads[@]})) && {
	echo "medians of $rounds rounds, $duration per timed run; ratio: sqlfs/native (bulk: native s / sqlfs s), higher is better"
	echo
	echo "| workload | unit | native | sqlfs | ratio |"
	echo "|---|---|---|---|---|"
}
for w in "${workloads[@]}"; do
	n=${med_native[$w]} s=${med_sqlfs[$w]}
	case $w in
	bulk) unit="s (50k rows)" fmt='%.3f' ;;
	*reads) unit="reads/s" fmt='%.0f' ;;
	*) unit="tx/s" fmt='%.0f' ;;
	esac
	ratio=- sv=-
	if [[ -n $s ]]; then
		# shellcheck disable=SC2059 # fmt is one of the formats above
		sv=$(printf "$fmt" "$s")
		if [[ $w == bulk ]]; then
			ratio=$(awk -v a="$n" -v b="$s" 'BEGIN { printf "%.2f", a / b }')
		else
			ratio=$(awk -v a="$n" -v b="$s" 'BEGIN { printf "%.2f", b / a }')
		fi
	fi
	# shellcheck disable=SC2059
	printf "| %s | %s | $fmt | %s | %s |\n" "$w" "$unit" "$n" "$sv" "$ratio"
done
((replication)) && replication_table

# ---- restore (issue 4) --------------------------------------------------------
# SQLFS_BENCH_RESTORE=1 also times `sqlfs restore` of a 1 GiB database from a
# local S3 server and from a file replica next to cp of the same file
# (scripts/bench-restore.sh; SQLFS_BENCH_RESTORE_MIB changes the size).
if [[ ${SQLFS_BENCH_RESTORE:-} == 1 ]]; then
	"$SQLFS_ROOT/scripts/bench-restore.sh" -size "${SQLFS_BENCH_RESTORE_MIB:-1024}" -rounds "$rounds" -dir "$parent"
fi
exit 0
