#!/usr/bin/env bash
# bench_levels.sh — what history costs (docs/BENCHMARKS.md, "Levels and request
# cost"). Run it as scripts/bench.sh -levels-only, or directly.
#
#   (a) restore time of the latest state from S3 against history length: for
#       each count in -commits, a fresh mount replicating to a local S3 server
#       (versitygw on 127.0.0.1) takes a 10 MB database (10,000 rows of 1,000
#       bytes, one transaction) and then that many single-row UPDATEs as
#       separate commits, as fast as the sqlite3 CLI goes (synchronous=NORMAL,
#       WAL). The levels run on a shortened schedule (-levels, default 1s,5s,15s
#       for production's 30s,5m,1h; -snapshot-interval 60s for 24h), so the
#       replica holds what production's would: snapshots, then level 3, 2, 1
#       and 0 files after them. Once level 3 reaches the last commit and a
#       snapshot exists the mount stops, and `sqlfs restore` of the latest
#       state runs -rounds times; the table gives the median, and the objects
#       the restore read (GETs in versitygw's access log).
#   (b) S3 requests per hour, counted twice: by sqlfs (its replica request
#       counter, logged every minute in which it changed and at unmount) and by
#       versitygw (lines of its access log, one per request it served):
#         idle — a database whose history is compacted (a first mount on the
#                short schedule wrote and compacted it) mounted again with the
#                production defaults; after -settle, requests over -window;
#         10/s — a fresh database taking 10 commits/s (one-row INSERTs from
#                python3's sqlite3) through a mount with the production
#                defaults; requests over -window, starting 20 s into the load.
#       Counts are scaled to an hour.
#
# Every process it starts is stopped by PID; its temp dir is removed at exit.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
	cat <<EOF
Usage: scripts/bench_levels.sh [-commits 1000,10000,100000] [-levels 1s,5s,15s]
                               [-snapshot-interval 60s] [-rounds 3] [-settle 90s]
                               [-window 60s] [-rate 10] [-dir DIR] [-only restore|requests]
EOF
}

commits=1000,10000,100000 levels=1s,5s,15s snapshot=60s rounds=3 settle=90 window=60 rate=10
parent=${TMPDIR:-/tmp} only=
while (($#)); do
	case ${1#-} in
	-h | h | -help | help) usage; exit 0 ;;
	commits | -commits) commits=${2:?-commits needs a value}; shift ;;
	levels | -levels) levels=${2:?-levels needs a value}; shift ;;
	snapshot-interval | -snapshot-interval) snapshot=${2:?-snapshot-interval needs a value}; shift ;;
	rounds | -rounds) rounds=${2:?-rounds needs a value}; shift ;;
	settle | -settle) settle=${2%s}; shift ;;
	window | -window) window=${2%s}; shift ;;
	rate | -rate) rate=${2:?-rate needs a value}; shift ;;
	dir | -dir) parent=${2:?-dir needs a value}; shift ;;
	only | -only) only=${2:?-only needs restore or requests}; shift ;;
	*) usage >&2; sqlfs_die "unknown argument $1" ;;
	esac
	shift
done
[[ $commits =~ ^[0-9]+(,[0-9]+)*$ ]] || sqlfs_die "-commits must be comma-separated counts, not $commits"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || sqlfs_die "-rounds must be a positive integer, not $rounds"
[[ $settle =~ ^[0-9]+$ && $window =~ ^[1-9][0-9]*$ ]] || sqlfs_die "-settle and -window are whole seconds (e.g. 60s)"
[[ $rate =~ ^[1-9][0-9]*$ ]] || sqlfs_die "-rate must be a positive integer, not $rate"
[[ -z $only || $only == restore || $only == requests ]] || sqlfs_die "-only takes restore or requests, not $only"
command -v sqlite3 >/dev/null || sqlfs_die "the sqlite3 CLI is needed"
command -v python3 >/dev/null || sqlfs_die "python3 is needed (it paces the 10/s load)"

sqlfs_setup_path
base=$(mktemp -d "$parent/sqlfs-bench-levels.XXXXXX")
bin=$base/bin mnt=$base/mnt
mkdir -p "$bin" "$mnt" "$base/s3/backup"
mount_pid='' vgw_pid=''

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $mount_pid ]]; then
		sqlfs_stop_mount "$mount_pid" "$mnt" || rc=1
	fi
	if [[ -n $vgw_pid ]]; then
		kill -TERM "$vgw_pid" 2>/dev/null || true
		wait "$vgw_pid" 2>/dev/null || true
	fi
	sqlfs_remove_unless_mounted "$base" "$mnt"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n ${SQLFS_BIN:-} ]]; then
	cp "$SQLFS_BIN" "$bin/sqlfs"
else
	sqlfs_say "building sqlfs"
	sqlfs_build_cmd "$bin"
fi
access=$base/access.log
# shellcheck source=scripts/bench_replication.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench_replication.sh"
start_versitygw --access-log "$access"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$vgw_port AWS_EC2_METADATA_DISABLED=true

# mount_start LOG ARGS... mounts $mnt with sqlfs mount ARGS.
mount_start() {
	local log=$1
	shift
	"$bin/sqlfs" mount "$@" "$mnt" >"$log" 2>&1 &
	mount_pid=$!
	sqlfs_wait_mount "$mnt" "$mount_pid" 60 || { tail -n 20 "$log" >&2; exit 1; }
}

mount_stop() { sqlfs_stop_mount "$mount_pid" "$mnt"; mount_pid=; }

# levels_of URL|-data DIR prints "level max_txid" for each file of app.db.
levels_of() {
	"$bin/sqlfs" ltx -json -db app.db "$@" | awk -F'"' '
		/"level"/ { split($0, a, ":"); l = a[2] + 0 }
		/"max_txid"/ { print l, $4 }'
}

# top_txid LEVEL < levels_of output prints the highest TXID of LEVEL (decimal).
top_txid() {
	local lv tx m=0
	while read -r lv tx; do
		[[ $lv == "$1" ]] && ((16#$tx > m)) && m=$((16#$tx))
	done
	echo "$m"
}

access_size() { stat -c %s "$access"; }

# access_ops FROM TO prints the requests in the access log between byte
# offsets FROM and TO, by operation, and the total.
access_ops() {
	head -c "$2" "$access" | tail -c "+$(($1 + 1))" |
		awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^s3_/) { n[substr($i, 4)]++; t++ } }
			END { s = ""; for (k in n) s = s sprintf("%s %d, ", k, n[k]); printf "%d|%s\n", t + 0, (s == "" ? "-" : substr(s, 1, length(s) - 2)) }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ---- (a) restore time against history length -----------------------------------
restore_rows=()
restore_run() {
	local n=$1 url=s3://backup/hist-$1 data=$base/data-$1 last t0 top snaps deadline r times=() s e gets
	mount_start "$base/mount-hist-$n.log" -data "$data" -replica "$url" -levels "$levels" -snapshot-interval "$snapshot"
	sqlfs_say "writing $n commits"
	t0=$EPOCHREALTIME
	awk -v n="$n" 'BEGIN {
		print "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
		print "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"
		print "INSERT INTO t(v) SELECT randomblob(1000) FROM generate_series(1, 10000);"
		for (i = 0; i < n; i++) print "UPDATE t SET v = randomblob(1000) WHERE id = abs(random()) % 10000 + 1;"
	}' | sqlite3 "$mnt/app.db" >/dev/null
	sqlfs_say "$n commits in $(sqlfs_elapsed "$t0") s; waiting for level 3 and a snapshot in the replica"
	last=$(levels_of -data "$data" | top_txid 0)
	deadline=$((SECONDS + 600))
	while :; do
		top=$(levels_of "$url" | top_txid 3)
		snaps=$(levels_of "$url" | top_txid 9)
		((top >= last && snaps > 0)) && break
		((SECONDS < deadline)) || sqlfs_die "replica hist-$n: level 3 at txid $top of $last, snapshot at $snaps after 600 s"
		sleep 1
	done
	mount_stop
	local objects
	objects=$(levels_of "$url" | awk '{ n[$1]++ } END { s = ""; for (l = 0; l <= 9; l++) if (n[l]) s = s sprintf("L%d %d, ", l, n[l]); print substr(s, 1, length(s) - 2) }')
	for ((r = 1; r <= rounds; r++)); do
		rm -rf "$base/restore" && mkdir -p "$base/restore"
		s=$(access_size)
		t0=$EPOCHREALTIME
		"$bin/sqlfs" restore -o "$base/restore/app.db" "$url" 2>>"$base/restore.log"
		times+=("$(sqlfs_elapsed "$t0")")
		e=$(access_size)
		gets=$(access_ops "$s" "$e")
	done
	[[ $(sqlite3 "$base/restore/app.db" "PRAGMA integrity_check; SELECT count(*) FROM t;" | tr '\n' ' ') == "ok 10000 " ]] ||
		sqlfs_die "restore of hist-$n does not check out"
	restore_rows+=("| $n | $last | $objects | $(printf '%s\n' "${times[@]}" | median) ($(printf '%s\n' "${times[@]}" | sort -g | head -n1)–$(printf '%s\n' "${times[@]}" | sort -g | tail -n1)) | ${gets#*|} |")
	sqlfs_say "hist-$n: restore ${times[*]} s; ${gets#*|}"
}

# ---- (b) requests per hour -------------------------------------------------------
# sqlfs_count LOG prints the last "replica requests" total in LOG (0 if none).
sqlfs_count() { sed -n 's/.*msg="replica requests" total=\([0-9]*\).*/\1/p' "$1" | tail -n 1 | awk '{ print $1 + 0 } END { if (!NR) print 0 }'; }

# sqlfs_lines LOG prints "epoch-seconds total" for each periodic report in LOG.
sqlfs_lines() {
	sed -n 's/^time=\([^ ]*\) .*msg="replica requests" total=\([0-9]*\).*/\1 \2/p' "$1" |
		while read -r ts n; do echo "$(date -d "$ts" +%s.%N) $n"; done
}

request_rows=() run_check=
requests_idle() {
	local url=s3://backup/idle data=$base/data-idle log=$base/mount-idle.log before s e ops last
	# First mount: write and compact on the short schedule.
	mount_start "$base/mount-idle-0.log" -data "$data" -replica "$url" -levels 1s,2s,3s -snapshot-interval 5s
	sqlite3 "$mnt/app.db" "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
		INSERT INTO t(v) SELECT randomblob(1000) FROM generate_series(1, 1000);" >/dev/null
	for i in $(seq 1 20); do sqlite3 "$mnt/app.db" "UPDATE t SET v = randomblob(1000) WHERE id = $i;"; done
	last=$(levels_of -data "$data" | top_txid 0)
	local deadline=$((SECONDS + 120))
	until (($(levels_of "$url" | top_txid 3) >= last && $(levels_of "$url" | top_txid 9) >= last)); do
		((SECONDS < deadline)) || sqlfs_die "idle replica not compacted after 120 s"
		sleep 1
	done
	mount_stop
	# Again with the production schedule; nothing is written.
	mount_start "$log" -data "$data" -replica "$url"
	sqlfs_say "idle mount up; settling ${settle} s, then counting for ${window} s"
	sleep "$settle"
	before=$(sqlfs_count "$log")
	s=$(access_size)
	sleep "$window"
	e=$(access_size)
	mount_stop
	ops=$(access_ops "$s" "$e")
	# sqlfs: the count at unmount, less the lease's release (one DELETE at
	# unmount), less the last count reported before the window (a request
	# after that report and before the window counts against the window).
	local n=$(($(sqlfs_count "$log") - 1 - before))
	request_rows+=("| idle (history compacted, production schedule) | ${window} s after ${settle} s | $(awk -v n="$n" -v w="$window" 'BEGIN { printf "%.0f", n * 3600 / w }') | $(awk -v n="${ops%%|*}" -v w="$window" 'BEGIN { printf "%.0f", n * 3600 / w }') | ${ops#*|} |")
	sqlfs_say "idle: sqlfs $n, versitygw ${ops%%|*} requests in ${window} s"
}

requests_load() {
	local url=s3://backup/load data=$base/data-load log=$base/mount-load.log s e ops load_pid t0 dur
	local run_from run_to
	run_from=$(access_size)
	mount_start "$log" -data "$data" -replica "$url"
	dur=$((20 + window + 70))
	sqlfs_say "load: $rate commits/s for $dur s"
	python3 - "$mnt/app.db" "$rate" "$dur" >"$base/load.out" <<'EOF' &
import sqlite3, sys, time
path, rate, dur = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
c = sqlite3.connect(path, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)")
t0 = time.monotonic()
n = 0
while time.monotonic() - t0 < dur:
    c.execute("INSERT INTO t(v) VALUES(randomblob(100))")
    n += 1
    time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
print(n, time.monotonic() - t0)
EOF
	load_pid=$!
	t0=$SECONDS
	sleep 20
	s=$(access_size)
	sleep "$window"
	e=$(access_size)
	wait "$load_pid" || sqlfs_die "the load failed"
	mount_stop
	run_to=$(access_size)
	ops=$(access_ops "$s" "$e")
	# The whole run, mount to unmount, as a check that both count the same.
	run_check="sqlfs counted $(sqlfs_count "$log") requests from mount to unmount of the $rate/s run; versitygw's access log has $(access_ops "$run_from" "$run_to" | cut -d'|' -f1)"
	# sqlfs: its per-minute reports during the load, first to last.
	local rate_sqlfs
	rate_sqlfs=$(sqlfs_lines "$log" | head -n -1 | awk 'NR == 1 { t0 = $1; n0 = $2 } { t = $1; n = $2 } END { if (t > t0) printf "%.0f", (n - n0) * 3600 / (t - t0); else print "-" }')
	request_rows+=("| $rate commits/s ($(awk '{ printf "%d commits in %.0f s", $1, $2 }' "$base/load.out")) | ${window} s from 20 s in | $rate_sqlfs | $(awk -v n="${ops%%|*}" -v w="$window" 'BEGIN { printf "%.0f", n * 3600 / w }') | ${ops#*|} |")
	sqlfs_say "load: versitygw ${ops%%|*} requests in ${window} s; sqlfs reports $rate_sqlfs/h"
}

if [[ $only != requests ]]; then
	IFS=, read -r -a counts <<<"$commits"
	for n in "${counts[@]}"; do restore_run "$n"; done
fi
if [[ $only != restore ]]; then
	requests_idle
	requests_load
fi

echo
echo "sqlfs $(git -C "$SQLFS_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') on $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), load average $(cut -d' ' -f1-3 /proc/loadavg)"
if ((${#restore_rows[@]})); then
	echo
	echo "restore of the latest state from S3 (versitygw on 127.0.0.1): 10 MB database, then N one-row commits;"
	echo "levels $levels, snapshots every $snapshot (production: 30s,5m,1h and 24h); median of $rounds (min–max)"
	echo
	echo "| commits | last TXID | objects in the replica | restore s | requests of one restore |"
	echo "|---|---|---|---|---|"
	printf '%s\n' "${restore_rows[@]}"
fi
if ((${#request_rows[@]})); then
	echo
	echo "S3 requests per hour (the window's count scaled to an hour): counted by sqlfs and by versitygw's access log"
	echo
	echo "| load | window | sqlfs /h | versitygw /h | versitygw's requests in the window |"
	echo "|---|---|---|---|---|"
	printf '%s\n' "${request_rows[@]}"
	[[ -n $run_check ]] && { echo; echo "$run_check"; }
fi
