#!/usr/bin/env bash
# Row-subscription benchmarks (issue 22), written to docs/BENCHMARKS-rows.md's raw part
# (target/bench-rows/results.jsonl and commands.txt; the tables in the document are made from
# them by scripts/bench-rows-report.py):
#   scale     changes of one table inserted from SQL in transactions of 500 rows, as fast as
#             possible, to S row subscriptions (S in BENCH_SUBS, default "100 1000 10000"), one
#             per v2 socket, each change matching one subscription; three kinds of subscription
#             alternating run by run on the same server build:
#               eq       user_id=eq.U          (the equality index)
#               range    user_id=gte.U&user_id=lte.U (the same rows; every filter evaluated)
#               message  plain channels fed by pg_logical_emit_message (the reference)
#             figures: changes/s end to end, server CPU per change, lost/extra deliveries
#   fixed     the same with the changes going to 100 users only (--active-users 100): as many
#             sockets receive at every S, the other S - 100 subscriptions are passed over; this
#             isolates what the number of subscriptions costs from how well the server can
#             batch its writes to a socket (which depends on how many changes each socket gets)
#   latency   1,000 changes/s (one row per transaction) to 1,000 eq subscriptions, beside
#             1,000 logical messages/s to 1,000 plain-channel subscriptions: issue -> receipt
#
# PostgreSQL is the cluster of a `pgws --embedded` started first (another listen channel, so it
# receives none of the traffic); each measured server is a fresh `target/release/pgws` with
# PGWS_SOURCE=wal on it (its own slot, dropped after the run). The cluster's sessions run with
# synchronous_commit=on, as in production (the embedded cluster's default is off, which delays
# WAL-mode delivery by up to wal_writer_delay; see docs/BENCHMARKS-wal.md).
#
# Environment knobs: BENCH_REPS=3, BENCH_ONLY=scale,fixed,latency, BENCH_SUBS="100 1000 10000",
# BENCH_KINDS="eq range message", BENCH_WORK=target/bench-rows, BENCH_SKIP_BUILD=1,
# BENCH_QUIET_WAIT=300 (seconds to wait for the machine to calm down before each run),
# BENCH_PROFILE=release (debug: a quick check of the script with unoptimised binaries),
# BENCH_ROWS_ARGS (more options for every `pgws-bench rows` run, e.g. `--subscribe-window 0`).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${BENCH_REPS:-3}
ONLY=${BENCH_ONLY:-scale,fixed,latency}
SUBS=${BENCH_SUBS:-100 1000 10000}
KINDS=${BENCH_KINDS:-eq range message}
WORK=${BENCH_WORK:-target/bench-rows}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PROFILE=${BENCH_PROFILE:-release}
SERVER="$TARGET/$PROFILE/pgws"
GEN="$TARGET/$PROFILE/pgws-bench"
DEV_SECRET="auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe"

mkdir -p "$WORK"
RESULTS="$WORK/results.jsonl"
COMMANDS="$WORK/commands.txt"
: >"$RESULTS"
: >"$COMMANDS"
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    nice -n 10 cargo build --release -p pgws -p pgws-bench
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# cpu_busy_pct, wait_quiet, stop_pid
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"

HOLDER_PID=""
SERVER_PID=""
PORT=""
ADMIN=""
PGCONN=""
NAME=""

cleanup() {
    stop_pid "$SERVER_PID"
    stop_pid "$HOLDER_PID"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wants() { [[ ",$ONLY," == *",$1,"* ]]; }

start_holder() {
    local log="$WORK/holder.log"
    env PGWS_LISTEN_CHANNEL=bench-holder "$SERVER" --embedded --port 0 >"$log" 2>&1 &
    HOLDER_PID=$!
    for _ in $(seq 1 300); do
        PGCONN=$(sed -n 's/^Embedded PostgreSQL: //p' "$log" | head -n1)
        [ -n "$PGCONN" ] && grep -qs '^Listening on port' "$log" && return 0
        sleep 0.2
    done
    echo "the database holder did not start:" >&2
    cat "$log" >&2
    exit 1
}

# start_server NAME: a fresh WAL-source pgws on the holder's cluster (slot pgws_bench_NAME).
start_server() {
    NAME=$1
    ADMIN="127.0.0.1:$(free_port)"
    local log="$WORK/server-$NAME.log"
    : >"$log"
    env PGWS_DB_URI="$PGCONN" PGWS_JWT_SECRET="$DEV_SECRET" PGWS_PORT=0 \
        PGWS_RATE_CONNECTIONS=0 PGWS_RATE_MESSAGES=0 PGWS_RATE_BYTES=0 \
        PGWS_ADMIN_ADDRESS="$ADMIN" PGWS_SOURCE=wal PGWS_NODE_ID="bench_$NAME" \
        "$SERVER" >>"$log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        PORT=$(sed -n 's/^Listening on port \([0-9]*\).*/\1/p' "$log" | tail -n1)
        if [ -n "$PORT" ] && curl -fs "http://$ADMIN/ready" >/dev/null 2>&1; then
            echo "server $NAME: pid $SERVER_PID port $PORT" >&2
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "server $NAME did not become ready:" >&2
    tail -n 20 "$log" >&2
    exit 1
}

stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=""
    env PGWS_DB_URI="$PGCONN" PGWS_JWT_SECRET="$DEV_SECRET" "$SERVER" \
        --drop-wal-slot "pgws_bench_$NAME" >/dev/null 2>&1 || true
}

run_bench() {
    local label=$1
    shift
    wait_quiet
    echo "pgws-bench --port \$PORT --pg \"\$PGCONN\" --server-pid \$PID --source wal --source-addrs 16 --connect-concurrency 128 --label $label $* ${BENCH_ROWS_ARGS:-}" >>"$COMMANDS"
    # shellcheck disable=SC2086 # BENCH_ROWS_ARGS is split into options on purpose
    "$GEN" --port "$PORT" --pg "$PGCONN" --server-pid "$SERVER_PID" --source wal \
        --source-addrs 16 --connect-concurrency 128 --label "$label" "$@" ${BENCH_ROWS_ARGS:-} \
        >"$WORK/$label.out" 2>"$WORK/$label.err" || {
        echo "generator failed for $label:" >&2
        tail -n 5 "$WORK/$label.err" >&2
    }
    grep -v '^{' "$WORK/$label.out" >&2 || true
    grep '^{' "$WORK/$label.out" >>"$RESULTS" || true
}

start_holder
echo "database: $PGCONN" >&2
psql "$PGCONN" -X -q -v ON_ERROR_STOP=1 <<'SQL'
ALTER ROLE CURRENT_USER SET synchronous_commit = on;
DROP TABLE IF EXISTS public.bench_rows;
CREATE TABLE public.bench_rows (
    id bigserial PRIMARY KEY,
    user_id int NOT NULL,
    seq bigint NOT NULL,
    t_ns bigint NOT NULL,
    body text NOT NULL
);
DROP PUBLICATION IF EXISTS pgws;
CREATE PUBLICATION pgws FOR TABLE public.bench_rows;
SQL

if wants scale; then
    for n in $SUBS; do
        for r in $(seq 1 "$REPS"); do
            for kind in $KINDS; do
                changes=100000
                # Every range filter is evaluated for every change: fewer changes keep the run short.
                if [ "$kind" = range ] && [ "$n" -gt 1000 ]; then changes=2000; fi
                start_server "scale_${kind}_${n}_$r"
                run_bench "scale-$kind-$n#$r" rows --kind "$kind" --subscriptions "$n" \
                    --changes "$changes" --batch 500 --window 4 --max-seconds 120 --drain-timeout 120
                stop_server
            done
        done
    done
fi

if wants fixed; then
    for n in $SUBS; do
        for r in $(seq 1 "$REPS"); do
            for kind in $KINDS; do
                changes=100000
                if [ "$kind" = range ] && [ "$n" -gt 1000 ]; then changes=2000; fi
                start_server "fixed_${kind}_${n}_$r"
                run_bench "fixed-$kind-$n#$r" rows --kind "$kind" --subscriptions "$n" \
                    --active-users 100 --changes "$changes" --batch 500 --window 4 \
                    --max-seconds 120 --drain-timeout 120
                stop_server
            done
        done
    done
fi

if wants latency; then
    for r in $(seq 1 "$REPS"); do
        for kind in eq message; do
            start_server "latency_${kind}_$r"
            run_bench "latency-$kind#$r" rows --kind "$kind" --subscriptions 1000 \
                --rate 1000 --duration 20 --changes 20000 --batch 1 --window 16
            stop_server
        done
    done
fi

cleanup
HOLDER_PID=""
SERVER_PID=""
echo "results: $RESULTS; commands: $COMMANDS" >&2
