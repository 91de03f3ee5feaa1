#!/usr/bin/env bash
# test.sh — the one test command (CI runs it through .ci/run).
#
# Installs what the tests need when it is missing (Debian: sqlite3, fuse3, gcc),
# makes sure /dev/fuse exists, runs go vet and go test on every package, and
# exits non-zero on any failure. Mounts left under the temp dir by crashed sqlfs
# tests are removed before and after; processes the tests leave behind are
# reported and ended (only those of the go test run this script started).
#
# Environment:
#   SQLFS_S3=1   also install the S3 server (versitygw) even if no test asks for it
#   GOTESTFLAGS  extra flags for go test (e.g. "-run TestWAL -v")
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SQLFS_ROOT"

t0=$EPOCHREALTIME
sqlfs_setup_path
# Tests talk to S3 only on loopback: never let the AWS SDK look for EC2
# instance credentials on the network.
export AWS_EC2_METADATA_DISABLED=true
sqlfs_apt_ensure sqlite3:sqlite3 fusermount3:fuse3 gcc:gcc,libc6-dev
sqlfs_ensure_fuse_dev

# ---- hook: S3 server for the tests (issue 3) --------------------------------
# Tests that need a real S3 server read the versitygw binary's path from
# $SQLFS_VERSITYGW (and skip, or fail under CI, when it is empty). It is built
# once into $SQLFS_CACHE/bin and reused; only installed when asked for or when
# some test mentions SQLFS_VERSITYGW.
if [[ ${SQLFS_S3:-} == 1 ]] ||
	grep -rqs --include='*_test.go' --exclude-dir=.git SQLFS_VERSITYGW .; then
	SQLFS_VERSITYGW=$(sqlfs_install_versitygw)
	export SQLFS_VERSITYGW
fi
# ------------------------------------------------------------------------------
sqlfs_say "dependencies ready in $(sqlfs_elapsed "$t0") s ($(go version | cut -d' ' -f3), sqlite3 $(sqlite3 --version | cut -d' ' -f1))"

sqlfs_cleanup_stale_mounts

# go test runs in its own process group, so that whatever it leaves running can
# be found and ended afterwards without touching anything else on the machine.
pgid_file=$(mktemp)
test_pid=
test_pgid() { [[ -s $pgid_file ]] && cat "$pgid_file"; }

end_group() { # end_group PGID: SIGTERM, 5 s, SIGKILL
	local g=$1 deadline=$((SECONDS + 5))
	[[ -n $g ]] || return 0
	kill -TERM -- "-$g" 2>/dev/null || return 0
	while [[ -n $(sqlfs_pgrp_pids "$g") ]] && ((SECONDS < deadline)); do sleep 0.1; done
	kill -KILL -- "-$g" 2>/dev/null || true
}

# shellcheck disable=SC2317 # invoked by the trap below
on_signal() {
	trap - INT TERM
	sqlfs_say "interrupted; stopping go test"
	end_group "$(test_pgid)"
	[[ -n $test_pid ]] && { wait "$test_pid" 2>/dev/null || true; }
	sqlfs_cleanup_stale_mounts
	rm -f "$pgid_file"
	exit 130
}
trap on_signal INT TERM
trap 'rm -f "$pgid_file"' EXIT

rc=0
sqlfs_say "go vet ./..."
if ! go vet ./...; then
	sqlfs_say "go vet failed"
	rc=1
fi

# shellcheck disable=SC2086 # GOTESTFLAGS is a list of flags
set -- go test -count=1 -timeout 25m ${GOTESTFLAGS:-} ./...
sqlfs_say "$*"
t1=$EPOCHREALTIME
# shellcheck disable=SC2016 # $$ and $@ expand in the child shell
setsid -w bash -c 'echo "$$" >"$0"; exec "$@"' "$pgid_file" "$@" &
test_pid=$!
test_rc=0
wait "$test_pid" || test_rc=$?
test_pid=
sqlfs_say "go test exited with $test_rc after $(sqlfs_elapsed "$t1") s"
((test_rc == 0)) || rc=1

pgid=$(test_pgid || true)
if [[ -n $pgid ]]; then
	left=$(sqlfs_pgrp_pids "$pgid")
	if [[ -n $left ]]; then
		sqlfs_say "tests left processes running; ending them:"
		for p in $left; do
			printf '  %s %s\n' "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" >&2
		done
		end_group "$pgid"
		rc=1
	fi
fi

sqlfs_cleanup_stale_mounts
if ((rc == 0)); then
	sqlfs_say "PASS ($(sqlfs_elapsed "$t0") s)"
else
	sqlfs_say "FAIL ($(sqlfs_elapsed "$t0") s)"
fi
exit "$rc"
