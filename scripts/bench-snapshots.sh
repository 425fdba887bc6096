#!/usr/bin/env bash
# Snapshot benchmarks (issue 23; results in docs/BENCHMARKS-snapshots.md):
#   one10k / one100k          a snapshot of 10,000 / 100,000 rows to one client
#   hundred10k / hundred100k  the same to 100 clients subscribing at once
#   storm                     1,000 clients resuming from a position of another stream at once:
#                             each gets a gap and a fresh snapshot of a 1,000-row table
# Each run: a fresh `target/release/pgws --source wal` on the cluster of a `pgws --embedded`
# started first (max_connections=500), the generator `bench/examples/snapshots.rs` (time until
# live, pgws CPU and peak memory, pg_stat_database deltas, peak backends), then the server
# stopped and its slot dropped. Writes one JSON line per run to $WORK/results.jsonl.
#
# Environment: BENCH_REPS=3, BENCH_ONLY=one10k,one100k,hundred10k,hundred100k,storm,
# BENCH_WORK=target/bench-snapshots, BENCH_SKIP_BUILD=1, BENCH_STORM_CLIENTS=1000,
# BENCH_STORM_ROWS=1000 (or 10000: the storm on the 10,000-row table), and any
# PGWS_* setting for the measured servers (e.g. PGWS_SNAPSHOT_CONCURRENCY once it exists).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${BENCH_REPS:-3}
ONLY=${BENCH_ONLY:-one10k,one100k,hundred10k,hundred100k,storm}
WORK=${BENCH_WORK:-target/bench-snapshots}
STORM=${BENCH_STORM_CLIENTS:-1000}
STORM_ROWS=${BENCH_STORM_ROWS:-1000}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER="$TARGET/release/pgws"
GEN="$TARGET/release/examples/snapshots"
SECRET="auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe"
# A position of another stream: the resume is a gap, then a fresh snapshot.
OTHER="0123456789abcdef-0/100.0"

mkdir -p "$WORK"
RESULTS="$WORK/results.jsonl"
COMMANDS="$WORK/commands.txt"
: >"$RESULTS"
: >"$COMMANDS"
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    nice -n 10 cargo build --release -p pgws
    nice -n 10 cargo build --release -p pgws-bench --example snapshots
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"

HOLDER_PID=""
SERVER_PID=""
cleanup() {
    stop_pid "$SERVER_PID"
    stop_pid "$HOLDER_PID"
}
trap cleanup EXIT INT TERM
wants() { [[ ",$ONLY," == *",$1,"* ]]; }

log="$WORK/holder.log"
env PGWS_LISTEN_CHANNEL=bench-holder PGWS_JWT_SECRET="$SECRET" "$SERVER" --embedded --port 0 >"$log" 2>&1 &
HOLDER_PID=$!
PGCONN=""
for _ in $(seq 1 300); do
    PGCONN=$(sed -n 's/^Embedded PostgreSQL: //p' "$log" | head -n1)
    [ -n "$PGCONN" ] && grep -qs '^Listening on port' "$log" && break
    sleep 0.2
done
[ -n "$PGCONN" ] || { cat "$log" >&2; exit 1; }
echo "database: $PGCONN" >&2

psql "$PGCONN" -X -q -v ON_ERROR_STOP=1 <<'SQL'
DROP PUBLICATION IF EXISTS pgws;
DROP TABLE IF EXISTS snap1k, snap10k, snap100k;
CREATE TABLE snap1k (id int PRIMARY KEY, owner int, title text, done bool);
CREATE TABLE snap10k (LIKE snap1k INCLUDING ALL);
CREATE TABLE snap100k (LIKE snap1k INCLUDING ALL);
INSERT INTO snap1k SELECT i, i % 10, md5(i::text), i % 3 = 0 FROM generate_series(1, 1000) i;
INSERT INTO snap10k SELECT i, i % 10, md5(i::text), i % 3 = 0 FROM generate_series(1, 10000) i;
INSERT INTO snap100k SELECT i, i % 10, md5(i::text), i % 3 = 0 FROM generate_series(1, 100000) i;
CREATE PUBLICATION pgws FOR TABLE snap1k, snap10k, snap100k;
VACUUM ANALYZE snap1k, snap10k, snap100k;
SQL

# run LABEL TABLE ROWS CLIENTS [--since POS]
run() {
    local label=$1 table=$2 rows=$3 clients=$4
    shift 4
    local name="snap_${label//[^a-z0-9]/_}" slog="$WORK/server-$label.log"
    local admin
    admin="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    : >"$slog"
    env PGWS_DB_URI="$PGCONN" PGWS_ADMIN_ADDRESS="$admin" PGWS_JWT_SECRET="$SECRET" PGWS_PORT=0 PGWS_HOST=127.0.0.1 \
        PGWS_RATE_CONNECTIONS=0 PGWS_RATE_MESSAGES=0 PGWS_RATE_BYTES=0 PGWS_SOURCE=wal \
        PGWS_NODE_ID="$name" RUST_LOG=warn "$SERVER" >"$slog" 2>&1 &
    SERVER_PID=$!
    local port=""
    for _ in $(seq 1 300); do
        port=$(sed -n 's/^Listening on port \([0-9]*\).*/\1/p' "$slog" | tail -n1)
        [ -n "$port" ] && curl -fs "http://$admin/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "snapshots --port \$PORT --pid \$PID --pg \"\$PGCONN\" --table public.$table --rows $rows --clients $clients $*" >>"$COMMANDS"
    PGWS_JWT_SECRET="$SECRET" "$GEN" --port "$port" --pid "$SERVER_PID" --pg "$PGCONN" \
        --table "public.$table" --rows "$rows" --clients "$clients" --label "$label" "$@" \
        >>"$RESULTS" 2>"$WORK/$label.err" || { echo "generator failed for $label" >&2; tail -5 "$WORK/$label.err" >&2; }
    tail -n1 "$RESULTS" >&2
    stop_pid "$SERVER_PID"
    SERVER_PID=""
    env PGWS_DB_URI="$PGCONN" PGWS_JWT_SECRET="$SECRET" "$SERVER" --drop-wal-slot "pgws_$name" >/dev/null 2>&1 || true
}

for r in $(seq 1 "$REPS"); do
    wants one10k && run "one10k#$r" snap10k 10000 1
    wants one100k && run "one100k#$r" snap100k 100000 1
    wants hundred10k && run "hundred10k#$r" snap10k 10000 100
    wants hundred100k && run "hundred100k#$r" snap100k 100000 100
    if wants storm; then
        case $STORM_ROWS in
            1000) run "storm#$r" snap1k 1000 "$STORM" --since "$OTHER" ;;
            10000) run "storm10k#$r" snap10k 10000 "$STORM" --since "$OTHER" ;;
            *) echo "BENCH_STORM_ROWS: 1000 or 10000" >&2; exit 2 ;;
        esac
    fi
done
echo "results: $RESULTS" >&2
