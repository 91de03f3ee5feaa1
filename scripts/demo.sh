#!/usr/bin/env bash
# demo.sh — the quick start: mount sqlfs, write a database through it with the
# sqlite3 CLI, list its history, and restore an earlier transaction.
#
# Everything happens in a temp dir that is removed at exit; the mount is
# stopped (SIGTERM, then unmount) even when a step fails.
#
# Replicates every commit to a file replica beside the data dir; with -s3, to a
# local S3 server instead (versitygw on 127.0.0.1, installed and cached the
# first time).
#
# Environment: SQLFS_BIN=PATH uses that sqlfs binary instead of building one.
set -euo pipefail
use_s3=
case ${1:-} in
-s3) use_s3=1 ;;
"") ;;
*)
	echo "usage: scripts/demo.sh [-s3]" >&2
	exit 2
	;;
esac
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step() { printf '\n==> %s\n' "$*"; }

# show CMD ARGS... prints the command as a reader would type it, then runs it.
show() {
	local a line=\$
	for a in "$@"; do
		[[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]] || a="\"$a\""
		line+=" $a"
	done
	printf '%s\n' "$line"
	"$@"
}

sqlfs_setup_path
sqlfs_apt_ensure sqlite3:sqlite3
sqlfs_ensure_fuse_dev

base=$(mktemp -d "${TMPDIR:-/tmp}/sqlfs-demo.XXXXXX")
data=$base/data mnt=$base/mnt replica=$base/replica hist=$base/hist
mkdir -p "$data" "$mnt" "$replica" "$hist"
mount_pid='' s3_pid='' hist_pid=''

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $hist_pid ]]; then
		sqlfs_stop_mount "$hist_pid" "$hist" || rc=1
	fi
	if [[ -n $mount_pid ]]; then
		sqlfs_stop_mount "$mount_pid" "$mnt" || rc=1
	fi
	if [[ -n $s3_pid ]]; then
		kill "$s3_pid" 2>/dev/null || true
		wait "$s3_pid" 2>/dev/null || true
	fi
	if ((rc != 0)) && [[ -s $base/mount.log ]]; then
		sqlfs_say "last lines of the sqlfs log:"
		tail -n 20 "$base/mount.log" >&2
	fi
	sqlfs_remove_unless_mounted "$base" "$mnt" "$hist"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Build sqlfs"
mkdir -p "$base/bin"
if [[ -n ${SQLFS_BIN:-} ]]; then
	ln -s "$(realpath "$SQLFS_BIN")" "$base/bin/sqlfs"
	echo "using $SQLFS_BIN"
else
	echo "\$ go build -o $base/bin/sqlfs ./cmd/sqlfs"
	sqlfs_build_cmd "$base/bin"
fi
PATH=$base/bin:$PATH

replica_url=file://$replica
if [[ -n $use_s3 ]]; then
	step "Start a local S3 server (versitygw) with a bucket \"backup\""
	gw=$(sqlfs_install_versitygw)
	port=$((20000 + RANDOM % 20000))
	mkdir -p "$base/s3/backup"
	"$gw" --access demo --secret demosecret --port "127.0.0.1:$port" posix "$base/s3" >"$base/s3.log" 2>&1 &
	s3_pid=$!
	export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demosecret AWS_REGION=us-east-1
	export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$port AWS_EC2_METADATA_DISABLED=true
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
		sleep 0.1
	done
	replica_url=s3://backup/demo
	echo "versitygw on $AWS_ENDPOINT_URL_S3 (pid $s3_pid); the AWS SDK finds it through AWS_ENDPOINT_URL_S3"
fi

step "Mount: backing files go to $data/root, history to $data/ltx, every commit to the replica $replica_url"
echo "\$ sqlfs mount -data $data -replica $replica_url $mnt &"
sqlfs mount -data "$data" -replica "$replica_url" "$mnt" >"$base/mount.log" 2>&1 &
mount_pid=$!
sqlfs_wait_mount "$mnt" "$mount_pid" 30
echo "mounted (pid $mount_pid): $(grep -F " $mnt " /proc/mounts)"

# latest_txid prints the highest max_txid that `sqlfs ltx` lists for app.db.
latest_txid() {
	sqlfs ltx -data "$data" -db app.db | awk '
		$2 ~ /^[0-9a-fA-F]+$/ && length($2) <= 16 { print $2 }' |
		while read -r t; do printf '%d %s\n' "$((16#$t))" "$t"; done |
		sort -n | tail -n 1 | cut -d' ' -f2
}

db=$mnt/app.db
step "Create app.db through the mount, in WAL mode"
show sqlite3 "$db" "PRAGMA journal_mode=WAL; CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"

step "Insert rows: four transactions of five rows each"
batches=4 per_batch=5
txids=() counts=()
for ((b = 1; b <= batches; b++)); do
	show sqlite3 "$db" "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $per_batch) INSERT INTO notes (body) SELECT 'batch $b, note ' || i FROM n; COMMIT;"
	txid=$(latest_txid)
	[[ -n $txid ]] || sqlfs_die "sqlfs ltx lists no history after batch $b"
	((${#txids[@]} == 0)) || [[ $txid != "${txids[-1]}" ]] ||
		sqlfs_die "the latest TXID did not advance after batch $b (still $txid)"
	count=$(sqlite3 "$db" "SELECT count(*) FROM notes")
	txids+=("$txid") counts+=("$count")
	echo "batch $b committed: $count rows, latest TXID $txid"
done

step "History of app.db"
show sqlfs ltx -data "$data" -db app.db

pick=1 # the second batch: an earlier state than the live database
txid=${txids[$pick]} want=${counts[$pick]}
step "Restore TXID $txid (after batch $((pick + 1)), when app.db had $want rows)"
show sqlfs restore -o "$base/restored.db" -txid "$txid" -data "$data" -db app.db
got=$(sqlite3 "$base/restored.db" "SELECT count(*) FROM notes")
check=$(sqlite3 "$base/restored.db" "PRAGMA integrity_check")
echo "restored.db: $got rows (want $want), integrity_check: $check"
[[ $got == "$want" && $check == ok ]] || sqlfs_die "the restore at TXID $txid is not what was committed"

step "Mount TXID $txid read-only beside the live mount, and query it in place"
echo "\$ sqlfs mount -at-txid $txid -data $data -db app.db $hist &"
sqlfs mount -at-txid "$txid" -data "$data" -db app.db "$hist" >"$base/hist.log" 2>&1 &
hist_pid=$!
sqlfs_wait_mount "$hist" "$hist_pid" 30
show sqlite3 "$hist/app.db" "SELECT count(*) FROM notes"
got=$(sqlite3 "$hist/app.db" "SELECT count(*) FROM notes")
[[ $got == "$want" ]] || sqlfs_die "the historical mount of TXID $txid shows $got rows, want $want"
if sqlite3 "$hist/app.db" "INSERT INTO notes (body) VALUES ('x')" 2>/dev/null; then
	sqlfs_die "a write through the historical mount succeeded"
fi
echo "historical app.db: $got rows (want $want); writing to it fails (read-only)"
sqlfs_stop_mount "$hist_pid" "$hist"
hist_pid=

step "Restore the latest state"
show sqlfs restore -o "$base/latest.db" -data "$data" -db app.db
got=$(sqlite3 "$base/latest.db" "SELECT count(*) FROM notes")
want=${counts[-1]}
echo "latest.db: $got rows (want $want)"
[[ $got == "$want" ]] || sqlfs_die "the latest restore has $got rows, want $want"

step "Restore the latest state from the replica (database name from -o)"
for _ in $(seq 100); do
	[[ $(sqlfs ltx -db app.db "$replica_url" 2>/dev/null | awk 'NR > 1 { m = $2 } END { print m }') == "$(latest_txid)" ]] && break
	sleep 0.1
done
show sqlfs ltx "$replica_url" -db app.db
mkdir -p "$base/from-replica"
show sqlfs restore -o "$base/from-replica/app.db" "$replica_url"
got=$(sqlite3 "$base/from-replica/app.db" "SELECT count(*) FROM notes")
echo "from-replica/app.db: $got rows (want $want)"
[[ $got == "$want" ]] || sqlfs_die "the restore from the replica has $got rows, want $want"

step "Unmount (SIGTERM to sqlfs)"
sqlfs_stop_mount "$mount_pid" "$mnt"
mount_pid=
echo "unmounted"

step "Done: every commit through the mount was captured and can be restored."
