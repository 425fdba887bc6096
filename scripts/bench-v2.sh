#!/usr/bin/env bash
# Benchmarks of protocol v2 (`pgws.v2`, docs/PROTOCOL.md) against a release build of
# `pgws --embedded`, with the pgws-bench load generator, and writes docs/BENCHMARKS-v2.md:
#
#   fanout   fan-out bursts (1 channel x 5,000 sockets, as scripts/bench.sh): compat sockets and
#            v2 sockets alternately on one server, server CPU per delivery and the ratio
#   idle     RSS per idle connection: compat, and v2 with 0, 1 and 10 subscriptions each (a fresh
#            server per run, the variants alternating), and the cost of one subscription
#   subscribe  subscribe/unsubscribe operations per second: one socket (one request in flight,
#            then a window of 32), and 5,000 sockets (one in flight each)
#   publish  acked publishes, round trip client -> PostgreSQL -> ack: at 1,000/s (open loop, 10
#            sockets), and at saturation (closed loop, 10 sockets x 64 outstanding)
#   size     the JS client's size beside centrifuge-js and realtime-js (scripts/client-size.sh)
#
# Knobs (all optional):
#   BENCH_REPS=3               repetitions (medians reported)
#   BENCH_ONLY=fanout,idle,subscribe,publish,size   (each phase keeps its own results file in
#                              BENCH_WORK, so re-running one phase replaces only its figures)
#   BENCH_V2_IDLE=10000        idle connections per run
#   BENCH_V2_SOCKETS=5000      sockets of the fan-out and the many-sockets subscribe runs
#   BENCH_OUT=docs/BENCHMARKS-v2.md, BENCH_WORK=target/bench-v2
#   BENCH_SKIP_BUILD=1, BENCH_REPORT_ONLY=1 (only rewrite the report from BENCH_WORK)
#   BENCH_QUIET_WAIT=20        seconds to wait before each run for the machine to calm down
#
# Every run is bounded, traffic stays on 127.0.0.1, each server is stopped with SIGTERM.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${BENCH_REPS:-3}
ONLY=${BENCH_ONLY:-fanout,idle,subscribe,publish,size}
IDLE_N=${BENCH_V2_IDLE:-10000}
SOCKETS=${BENCH_V2_SOCKETS:-5000}
OUT=${BENCH_OUT:-docs/BENCHMARKS-v2.md}
WORK=${BENCH_WORK:-target/bench-v2}
export BENCH_QUIET_WAIT=${BENCH_QUIET_WAIT:-20}
TARGET=${CARGO_TARGET_DIR:-target}
SERVER=$TARGET/release/pgws
GEN=$TARGET/release/pgws-bench

mkdir -p "$WORK" "$(dirname "$OUT")"
SIZES="$WORK/sizes.jsonl"
if [ -n "${BENCH_REPORT_ONLY:-}" ]; then
    ONLY=none
    BENCH_SKIP_BUILD=1
fi
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    nice -n 10 cargo build --release -p pgws -p pgws-bench
fi
# The server needs one descriptor per socket; 20,000 is this machine's cap.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
SERVER_PID=""
PORT=""
PGCONN=""
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
trap stop_server EXIT INT TERM
# wants PHASE: whether to run it; if so, its results and commands files start empty (run_bench
# appends to $RESULTS and $COMMANDS).
wants() {
    [[ ",$ONLY," == *",$1,"* ]] || return 1
    RESULTS="$WORK/results-$1.jsonl"
    COMMANDS="$WORK/commands-$1.txt"
    : >"$RESULTS"
    : >"$COMMANDS"
}

FANOUT=(fanout --subscribers "$SOCKETS" --channels 1 --payload 100 --messages 2000 --burst 100
    --burst-interval-ms 250 --drain-timeout 60)
if wants fanout; then
    start_server fanout
    for r in $(seq 1 "$REPS"); do
        run_bench "fanout#$r" "${FANOUT[@]}"
        run_bench "v2-fanout#$r" "${FANOUT[@]}" --v2
    done
    stop_server
fi

IDLE=(idle --connections "$IDLE_N" --channels 100 --source-addrs 16 --connect-concurrency 128
    --settle 3 --hold 3)
if wants idle; then
    for r in $(seq 1 "$REPS"); do
        start_server "idle-$r"; run_bench "idle#$r" "${IDLE[@]}"; stop_server
        for s in 0 1 10; do
            start_server "idle-v2-$s-$r"
            run_bench "v2-idle-$s#$r" "${IDLE[@]}" --v2 --subscriptions "$s"
            stop_server
        done
    done
fi

if wants subscribe; then
    start_server subscribe
    for r in $(seq 1 "$REPS"); do
        run_bench "v2-sub-1#$r" v2-subscribe --sockets 1 --window 1 --duration 5
        run_bench "v2-sub-1w32#$r" v2-subscribe --sockets 1 --window 32 --duration 5
        run_bench "v2-sub-many#$r" v2-subscribe --sockets "$SOCKETS" --window 1 --duration 5 \
            --channels 100 --source-addrs 16 --connect-concurrency 128
    done
    stop_server
fi

if wants publish; then
    start_server publish
    for r in $(seq 1 "$REPS"); do
        run_bench "v2-pub-1000#$r" v2-publish --sockets 10 --rate 1000 --window 1024 \
            --duration 10
        run_bench "v2-pub-sat#$r" v2-publish --sockets 10 --window 64 --duration 10
    done
    stop_server
fi

if wants size; then
    scripts/client-size.sh >"$SIZES" || echo "client size measurement failed" >&2
fi

# The commit the runs measured (a report-only pass reuses it: the tree may have changed since).
record_commit
PHASES="fanout idle subscribe publish"
RESULTS="$WORK/results.jsonl"
COMMANDS="$WORK/commands.txt"
: >"$RESULTS"
: >"$COMMANDS"
for p in $PHASES; do
    [ ! -f "$WORK/results-$p.jsonl" ] || cat "$WORK/results-$p.jsonl" >>"$RESULTS"
    [ ! -f "$WORK/commands-$p.txt" ] || cat "$WORK/commands-$p.txt" >>"$COMMANDS"
done
export COMMIT DIRTY REPS RESULTS COMMANDS OUT SIZES IDLE_N SOCKETS SERVER
python3 "$ROOT/scripts/bench-v2-report.py"
