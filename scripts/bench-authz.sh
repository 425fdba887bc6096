#!/usr/bin/env bash
# Handshakes per second with authorization by the database (PGWS_AUTHZ_FUNCTION) off, on with a
# cold cache (PGWS_AUTHZ_CACHE_SIZE=0: every handshake asks PostgreSQL) and on with a warm cache
# (every socket of the run has the same claims: one database check, then cache hits), and the
# server's RSS per idle connection in each case. Uses `pgws --embedded` (release build) and the
# `idle` scenario of pgws-bench; prints one JSON line per run into $WORK/results.jsonl.
#
# Then the authorized write round trip (PGWS_AUTHZ_WRITE_FUNCTION): `ingest` with 20 writers at
# 1,000 messages/s for 10 s, each message through a SQL function that NOTIFYs it (the LISTEN probe
# measures writer -> server -> function -> NOTIFY -> probe), beside the plain NOTIFY path; and the
# pool saturated: a function that takes 4 ms, 2 connections (at most 500 calls/s) at 1,000/s.
#
#   AUTHZ_REPS=3 AUTHZ_CONNECTIONS=2000 AUTHZ_ONLY=handshakes,writes scripts/bench-authz.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${AUTHZ_REPS:-3}
N=${AUTHZ_CONNECTIONS:-2000}
TARGET=${CARGO_TARGET_DIR:-target}
SERVER=$TARGET/release/pgws
GEN=$TARGET/release/pgws-bench
WORK=${AUTHZ_WORK:-$TARGET/bench-authz}
PSQL=${PSQL:-/usr/lib/postgresql/15/bin/psql}
mkdir -p "$WORK"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT INT TERM

# start NAME [VAR=value ...]: pgws --embedded with the check function installed.
start() {
    local name=$1
    shift
    local log="$WORK/server-$name.log"
    env PGWS_RATE_CONNECTIONS=0 "$@" "$SERVER" --embedded --port 0 >"$log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        grep -q '^Listening on port' "$log" && grep -q '^Embedded PostgreSQL:' "$log" && break
        sleep 0.2
    done
    PORT=$(sed -n 's/^Listening on port \([0-9]*\).*/\1/p' "$log" | head -n1)
    PGCONN=$(sed -n 's/^Embedded PostgreSQL: //p' "$log" | head -n1)
    # The check the handshakes run (as the anonymous role: the bench's tokens carry no role).
    "$PSQL" "$PGCONN" -q -v ON_ERROR_STOP=1 <<'SQL'
DO $$ BEGIN CREATE ROLE bench_anon NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE OR REPLACE FUNCTION public.bench_write(channel text, message text) RETURNS void
  LANGUAGE sql AS $f$ SELECT pg_notify('postgres-websockets-listener',
    json_build_object('channel', channel, 'payload', message)::text) $f$;
CREATE OR REPLACE FUNCTION public.bench_slow_write(channel text, message text) RETURNS void
  LANGUAGE sql AS $f$ SELECT pg_sleep(0.004); SELECT pg_notify('postgres-websockets-listener',
    json_build_object('channel', channel, 'payload', message)::text) $f$;
CREATE OR REPLACE FUNCTION public.bench_allow() RETURNS boolean LANGUAGE sql STABLE AS
  $f$ SELECT current_setting('pgws.channel') LIKE 'idle%' AND current_user = 'bench_anon' $f$;
SQL
}

run() {
    local label=$1
    "$GEN" --port "$PORT" --pg "$PGCONN" --server-pid "$SERVER_PID" --label "$label" \
        idle --connections "$N" --connect-concurrency 64 --settle 2 --hold 1 \
        >"$WORK/$label.out" 2>"$WORK/$label.err" || cat "$WORK/$label.err" >&2
    grep -v '^{' "$WORK/$label.out" >&2 || true
    grep '^{' "$WORK/$label.out" >>"$RESULTS" || true
}

ONLY=${AUTHZ_ONLY:-handshakes,writes}
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
AUTHZ=(PGWS_AUTHZ_FUNCTION=public.bench_allow PGWS_AUTHZ_ANON_ROLE=bench_anon)
if wants handshakes; then
    for r in $(seq 1 "$REPS"); do
        start "off-$r"; run "off#$r"; stop_server
        start "cold-$r" "${AUTHZ[@]}" PGWS_AUTHZ_CACHE_SIZE=0; run "cold#$r"; stop_server
        start "warm-$r" "${AUTHZ[@]}"; run "warm#$r"; stop_server
    done
fi

ingest() {
    local label=$1
    "$GEN" --port "$PORT" --pg "$PGCONN" --server-pid "$SERVER_PID" --label "$label" \
        ingest --writers 20 --mode w --channels 1 --rate 1000 --duration 10 --payload 100 \
        --drain-timeout 30 >"$WORK/$label.out" 2>"$WORK/$label.err" || cat "$WORK/$label.err" >&2
    grep -v '^{' "$WORK/$label.out" >&2 || true
    grep '^{' "$WORK/$label.out" >>"$RESULTS" || true
}
if wants writes; then
    for r in $(seq 1 "$REPS"); do
        start "notify-$r"; ingest "write-notify#$r"; stop_server
        start "fn-$r" PGWS_AUTHZ_WRITE_FUNCTION=public.bench_write PGWS_AUTHZ_ANON_ROLE=bench_anon \
            PGWS_AUTHZ_WRITE_POOL_SIZE=4
        ingest "write-function#$r"; stop_server
        start "sat-$r" PGWS_AUTHZ_WRITE_FUNCTION=public.bench_slow_write \
            PGWS_AUTHZ_ANON_ROLE=bench_anon PGWS_AUTHZ_WRITE_POOL_SIZE=2
        ingest "write-saturated#$r"; stop_server
    done
fi
echo "results: $RESULTS" >&2
