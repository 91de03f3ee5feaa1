# shellcheck shell=bash
# shellcheck disable=SC2154 # bench.sh sets bin, base, mnt, rounds, duration, lag_duration
# The replication section of bench.sh (sourced by it with -replication; it
# uses bench.sh's variables: bin, base, mnt, mount_pid, rounds, duration,
# lag_duration). It measures, for a file:// replica (a directory on the same
# disk) and a local S3 server (versitygw on 127.0.0.1, the same 2 cores):
#
#   - lag: from a COMMIT returning to the application to the object holding
#     that TXID being visible in the replica, at 10 and 100 commits/s. The
#     driver (-workload lag) sees objects appear with inotify on the
#     directory they land in: the file replica's level directory, or the
#     posix store behind versitygw, which links an object into place only
#     once it is complete, so it is visible to a GET from that moment;
#   - the write rate (wal-normal-writes) through a mount with the replica
#     against bench.sh's mount without one, in pairs of runs one after the
#     other (alternating which goes first); the ratio is taken in each pair;
#   - PUTs per 1,000 commits at that full speed: objects in the replica once
#     it has caught up, per 1,000 TXIDs.
#
# Sides: file (file://), s3 (defaults) and s3-cap (S3 with -max-put-rate
# $SQLFS_BENCH_PUT_RATE, default 50).
#
# Every timed run starts on a settled machine (see settle): the mounts and
# the S3 server idle, earlier runs' dirty data written back, and for a
# full-speed run, no compaction instant inside it. Otherwise each run pays
# for the background work of the one before it (tens of thousands of commits
# written out as files, a replica catching up) or for four mounts compacting
# at once, whichever side it measures.
#
# Every process it starts is stopped by PID in replication_cleanup.

rep_pids=() rep_mnts=() vgw_pid='' put_rate=${SQLFS_BENCH_PUT_RATE:-50}

# replication_cleanup stops the mounts and the S3 server this section started.
replication_cleanup() {
	local i rc=0
	for i in "${!rep_pids[@]}"; do
		sqlfs_stop_mount "${rep_pids[$i]}" "${rep_mnts[$i]}" || rc=1
	done
	if [[ -n $vgw_pid ]]; then
		kill -TERM "$vgw_pid" 2>/dev/null || true
		wait "$vgw_pid" 2>/dev/null || true
	fi
	return "$rc"
}

# start_versitygw [FLAG...] starts versitygw (with FLAGs too) on a free
# loopback port and sets vgw_port.
# --keep-alive, as S3 itself does: by default versitygw closes the connection
# after each request, which costs a TCP handshake per PUT. --quiet: no log
# line per request.
# shellcheck disable=SC2120 # bench_levels.sh passes flags
start_versitygw() {
	local vgw deadline
	vgw=$(sqlfs_install_versitygw)
	mkdir -p "$base/s3/backup"
	for _ in 1 2 3 4 5; do
		vgw_port=$((20000 + RANDOM % 40000))
		"$vgw" --keep-alive --quiet "$@" --access bench --secret benchsecret --port "127.0.0.1:$vgw_port" posix "$base/s3" >"$base/versitygw.log" 2>&1 &
		vgw_pid=$!
		deadline=$((SECONDS + 10))
		while sqlfs_proc_alive "$vgw_pid" && ((SECONDS < deadline)); do
			(exec 3<>"/dev/tcp/127.0.0.1/$vgw_port") 2>/dev/null && return 0
			sleep 0.05
		done
		kill "$vgw_pid" 2>/dev/null || true
		wait "$vgw_pid" 2>/dev/null || true
		vgw_pid=
	done
	sqlfs_die "versitygw did not start (see $base/versitygw.log)"
}

# start_replicated KIND URL [FLAG...] starts a mount replicating to URL; its
# mount point is $base/mnt-KIND.
start_replicated() {
	local kind=$1 url=$2 m=$base/mnt-$1 pid
	shift 2
	mkdir -p "$m"
	"$bin/sqlfs" mount -data "$base/data-$kind" -replica "$url" "$@" "$m" >"$base/mount-$kind.log" 2>&1 &
	pid=$!
	rep_pids+=("$pid") rep_mnts+=("$m")
	sqlfs_wait_mount "$m" "$pid" 30 || { tail -n 20 "$base/mount-$kind.log" >&2; exit 1; }
	sqlfs_say "sqlfs mounted at $m with -replica $url $* (pid $pid)"
}

# replica_dir KIND DB is the directory DB's level-0 objects land in.
replica_dir() {
	case $1 in
	file) echo "$base/replica/$2/0000" ;;
	s3) echo "$base/s3/backup/bench/$2/0000" ;;
	s3-cap) echo "$base/s3/backup/bench-cap/$2/0000" ;;
	esac
}

# replica_stats DIR prints the number of LTX objects in DIR and the highest TXID.
replica_stats() {
	local f n=0 top=0 hi
	for f in "$1"/*.ltx; do
		[[ -e $f ]] || continue
		f=${f##*/} hi=${f#*-} hi=${hi%.ltx}
		n=$((n + 1))
		((16#$hi > top)) && top=$((16#$hi))
	done
	echo "$n $top"
}

# local_last DATA DB prints the newest TXID of DB in a data dir.
local_last() {
	"$bin/sqlfs" ltx -json -data "$1" -db "$2" | sed -n 's/.*"max_txid": "\([0-9a-f]*\)".*/\1/p' | tail -n 1 |
		while read -r h; do echo $((16#$h)); done
}

# puts_per_1000 KIND DB waits for the replica to hold the last local TXID of
# DB and prints objects per 1,000 TXIDs.
puts_per_1000() {
	local kind=$1 db=$2 want stats deadline=$((SECONDS + 120))
	want=$(local_last "$base/data-$kind" "$db")
	while :; do
		stats=$(replica_stats "$(replica_dir "$kind" "$db")")
		((${stats#* } >= want)) && break
		((SECONDS < deadline)) || sqlfs_die "$kind replica of $db stuck at txid ${stats#* } of $want"
		sleep 0.1
	done
	awk -v n="${stats% *}" -v t="$want" 'BEGIN { printf "%.0f", 1000 * n / t }'
}

# bench_ticks prints the CPU time (clock ticks) used so far by the mounts and
# the S3 server this benchmark started.
bench_ticks() {
	local p t=0 st
	local -a f
	for p in "$mount_pid" "${rep_pids[@]}" "$vgw_pid"; do
		[[ -n $p ]] || continue
		read -r st 2>/dev/null <"/proc/$p/stat" || continue
		read -r -a f <<<"${st##*) }" # fields from 3 on: utime and stime are 14 and 15
		t=$((t + f[11] + f[12]))
	done
	echo "$t"
}

# settle [D] waits until a timed run can start on a settled machine: dirty
# data written back (sync), the mounts and the S3 server nearly idle (at most
# 20 ms of CPU in half a second: writing earlier runs' commits out as files,
# shipping a backlog and compacting are over), and with D (a duration), the
# run ends at least a second before the next compaction instant: levels are
# aligned to the wall clock, so every mount compacts at each multiple of 30 s
# (-levels' first interval) and four mounts compacting at once would land in
# whichever side runs then. It waits two minutes at the most.
settle() {
	local need=${1:+$(dur_ms "$1")} deadline=$((SECONDS + 120)) a b into
	while ((SECONDS < deadline)); do
		sync
		a=$(bench_ticks)
		sleep 0.5
		b=$(bench_ticks)
		((b - a <= 2)) || continue
		[[ -n $need ]] || return 0
		into=$(((${EPOCHREALTIME/./} / 1000) % 30000))
		((into + need + 1000 <= 30000)) && return 0
		sleep "$(awk -v ms=$((30000 - into + 500)) 'BEGIN { printf "%.3f", ms / 1000 }')"
	done
	sqlfs_say "warning: the mounts did not settle within 120 s; measuring anyway"
}

# dur_ms D prints a duration as bench.sh accepts it (500ms, 3s, 1.5m) in ms.
dur_ms() {
	awk -v d="$1" 'BEGIN { u = d; sub(/^[0-9.]+/, "", u); v = d + 0
		printf "%d", v * (u == "ms" ? 1 : u == "s" ? 1000 : 60000) }'
}

rep_field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }

# replication_run measures everything, rounds times, alternating the sides.
replication_run() {
	local r kind rate out db v load
	start_versitygw
	export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
	export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$vgw_port AWS_EC2_METADATA_DISABLED=true
	mkdir -p "$base/replica"
	start_replicated file "file://$base/replica"
	start_replicated s3 "s3://backup/bench"
	start_replicated s3-cap "s3://backup/bench-cap" -max-put-rate "$put_rate"
	declare -gA rep=()
	for ((r = 1; r <= rounds; r++)); do
		for kind in file s3 s3-cap; do
			for rate in 10 100; do
				db=lag-$rate-$r.db
				settle
				out=$("$bin/benchdriver" -db "$base/mnt-$kind/$db" -workload lag -rate "$rate" \
					-duration "$lag_duration" -watch "$(replica_dir "$kind" "$db")") ||
					sqlfs_die "lag at $rate/s to the $kind replica failed"
				echo "$kind $out" >>"$base/replication.results"
				rep[$kind,$rate,p50]+="$(rep_field lag_p50_ms "$out") "
				rep[$kind,$rate,p99]+="$(rep_field lag_p99_ms "$out") "
				sqlfs_say "replication round $r/$rounds: lag to $kind at $rate/s: p50 $(rep_field lag_p50_ms "$out") ms, p99 $(rep_field lag_p99_ms "$out") ms"
			done
		done
		# Full speed: each replica's run is paired with a run without one
		# (bench.sh's mount) just before or after it, alternating, and the
		# ratio is taken within the pair: the other work on this shared
		# machine changes over minutes, so runs far apart in time are not
		# comparable. Which replica goes first rotates.
		local kinds=(file s3 s3-cap) pair side
		kinds=("${kinds[@]:r%3}" "${kinds[@]:0:r%3}")
		for kind in "${kinds[@]}"; do
			pair=(none "$kind")
			((r % 2 == 0)) && pair=("$kind" none)
			local -A got=()
			for side in "${pair[@]}"; do
				local m=$mnt
				[[ $side != none ]] && m=$base/mnt-$side
				db=full-$r-$kind.db
				settle "$duration"
				out=$("$bin/benchdriver" -db "$m/$db" -workload wal-normal-writes -duration "$duration") ||
					sqlfs_die "wal-normal-writes with replica $side failed"
				load=$(cut -d' ' -f1 /proc/loadavg)
				echo "$side $out load $load" >>"$base/replication.results"
				v=$(rep_field ops_per_sec "$out")
				got[$side]=$v
				rep[$side,txs]+="$v "
				if [[ $side != none ]]; then
					rep[$side,puts]+="$(puts_per_1000 "$side" "$db") "
				fi
				sqlfs_say "replication round $r/$rounds: wal-normal-writes with replica $side: $v tx/s (load average $load)"
			done
			rep[$kind,ratio]+="$(awk -v a="${got[$kind]}" -v b="${got[none]}" 'BEGIN { printf "%.3f", a / b }') "
		done
	done
}

# num V prints V to 4 significant digits, without an exponent (tx/s).
num() { awk -v v="$1" 'BEGIN { if (v >= 1000 || v <= -1000) printf "%.0f", v; else printf "%.4g", v }'; }

# med_spread "V V V" prints the median and, with more than one value, the range.
med_spread() {
	local vals sorted med
	read -r -a vals <<<"$1"
	med=$(printf '%s\n' "${vals[@]}" | median)
	sorted=$(printf '%s\n' "${vals[@]}" | sort -g | tr '\n' ' ')
	if ((${#vals[@]} > 1)); then
		printf '%s (%s–%s)' "$(num "$med")" "$(num "${sorted%% *}")" "$(num "$(awk '{ print $NF }' <<<"$sorted")")"
	else
		num "$med"
	fi
}

replication_table() {
	local kind
	echo
	echo "replication: lag from COMMIT returning to the object being visible in the replica (inotify on the"
	echo "directory it lands in), medians of $rounds rounds of $lag_duration at each pace, (min–max) over rounds;"
	echo "wal-normal-writes for $duration per run; ratio: tx/s with the replica / without in a run just before or after it,"
	echo "median (min–max) of the rounds' pairs; PUTs per 1,000 commits at that speed"
	echo "s3-cap: S3 with -max-put-rate $put_rate; versitygw runs on the same cores, with --keep-alive"
	echo
	echo "| replica | lag p50 @10/s ms | lag p99 @10/s ms | lag p50 @100/s ms | lag p99 @100/s ms | tx/s | ratio | PUTs per 1,000 commits |"
	echo "|---|---|---|---|---|---|---|---|"
	echo "| none | - | - | - | - | $(med_spread "${rep[none,txs]}") | 1.00 | - |"
	for kind in file s3 s3-cap; do
		echo "| $kind | $(med_spread "${rep[$kind,10,p50]}") | $(med_spread "${rep[$kind,10,p99]}") | $(med_spread "${rep[$kind,100,p50]}") | $(med_spread "${rep[$kind,100,p99]}") | $(med_spread "${rep[$kind,txs]}") | $(med_spread "${rep[$kind,ratio]}") | $(med_spread "${rep[$kind,puts]}") |"
	done
}
