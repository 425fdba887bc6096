#!/usr/bin/env bash
# Runs the WAL-source benchmarks (issue 13), NOTIFY mode beside WAL mode with the same generator
# in the same run, and writes docs/BENCHMARKS-wal.md (machine, commit, exact commands, results):
#   ingest     100 websocket writers as fast as possible, 100-byte messages, arrivals counted at
#              100 subscribers (one per channel): messages/s reaching subscribers
#   ingest64k  the same with 64 KiB messages (WAL only: NOTIFY refuses payloads of 8000 bytes)
#   latency    database -> socket at 1,000 messages/s to 5,000 subscribers (100 channels x 50)
#   catchup    a stream that missed 10,000 messages resumes (no restart), both modes
#   restart    the same across a pgws restart: WAL rebuilds the window from the slot; NOTIFY
#              cannot (a Gap)
#   retained   WAL kept by PostgreSQL for the slot during a steady run (BENCH_STEADY seconds of
#              fan-out at 1,000 messages/s)
#
# PostgreSQL is the cluster of a `pgws --embedded` started first (on another listen channel, so
# that it receives none of the traffic); each measured server is a separate `target/release/pgws`
# on that cluster, so that it can be restarted while the database stays.
#
# Environment knobs: BENCH_REPS=3, BENCH_ONLY=ingest,ingest64k,latency,catchup,restart,retained,
# BENCH_STEADY=600, BENCH_OUT=docs/BENCHMARKS-wal.md, BENCH_WORK=target/bench-wal,
# BENCH_SKIP_BUILD=1, BENCH_REPORT_ONLY=1, BENCH_QUIET_WAIT=300 (see scripts/bench-streams.sh),
# BENCH_SYNC_COMMIT=on|off (the embedded cluster runs synchronous_commit=off; set this to give
# every session of the cluster's user that value, e.g. `on` as in production).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${BENCH_REPS:-3}
ONLY=${BENCH_ONLY:-ingest,ingest64k,latency,catchup,restart,retained}
STEADY=${BENCH_STEADY:-600}
OUT=${BENCH_OUT:-docs/BENCHMARKS-wal.md}
WORK=${BENCH_WORK:-target/bench-wal}
SERVER="$ROOT/target/release/pgws"
GEN="$ROOT/target/release/pgws-bench"
DEV_SECRET="auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe"

mkdir -p "$WORK" "$(dirname "$OUT")"
RESULTS="$WORK/results.jsonl"
COMMANDS="$WORK/commands.txt"
if [ -n "${BENCH_REPORT_ONLY:-}" ]; then
    ONLY=none
    BENCH_SKIP_BUILD=1
else
    : >"$RESULTS"
    : >"$COMMANDS"
fi
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
SOURCE=""
SAMPLER_PID=""

cleanup() {
    stop_pid "$SAMPLER_PID"
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

# launch SOURCE NAME [VAR=value ...]: starts a measured server; prints "<pid> <port>" on stdout.
# Used by start_server and, through $WORK/restart.sh, by the generator's --restart-cmd.
launch() {
    local source=$1 name=$2
    shift 2
    local log="$WORK/server-$name.log"
    env PGWS_DB_URI="$PGCONN" PGWS_JWT_SECRET="$DEV_SECRET" PGWS_PORT=0 \
        PGWS_RATE_CONNECTIONS=0 PGWS_RATE_MESSAGES=0 PGWS_RATE_BYTES=0 \
        PGWS_ADMIN_ADDRESS="$ADMIN" PGWS_SOURCE="$source" PGWS_NODE_ID="bench_$name" \
        PGWS_MAX_MESSAGE_SIZE=1048576 "$@" \
        "$SERVER" >>"$log" 2>&1 &
    local pid=$! port=""
    for _ in $(seq 1 300); do
        port=$(sed -n 's/^Listening on port \([0-9]*\).*/\1/p' "$log" | tail -n1)
        if [ -n "$port" ] && curl -fs "http://$ADMIN/ready" >/dev/null 2>&1; then
            echo "$pid $port"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "server $name did not become ready:" >&2
    tail -n 20 "$log" >&2
    return 1
}

start_server() {
    SOURCE=$1
    NAME=$2
    ADMIN="127.0.0.1:$(free_port)"
    : >"$WORK/server-$NAME.log"
    local pp
    pp=$(launch "$@")
    SERVER_PID=${pp% *}
    PORT=${pp#* }
    echo "server $NAME ($SOURCE): pid $SERVER_PID port $PORT admin $ADMIN" >&2
}

# Stops the server and drops its slot (a dead slot would keep WAL for the later runs).
stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=""
    if [ "$SOURCE" = wal ]; then
        env PGWS_DB_URI="$PGCONN" PGWS_JWT_SECRET="$DEV_SECRET" "$SERVER" \
            --drop-wal-slot "pgws_bench_$NAME" >/dev/null 2>&1 || true
    fi
}

run_bench() {
    local label=$1
    shift
    wait_quiet
    echo "[PGWS_SOURCE=$SOURCE] pgws-bench --port \$PORT --pg \"\$PGCONN\" --server-pid \$PID --admin \$ADMIN --source $SOURCE --label $label $*" >>"$COMMANDS"
    "$GEN" --port "$PORT" --pg "$PGCONN" --server-pid "$SERVER_PID" --admin "$ADMIN" \
        --source "$SOURCE" --label "$label" "$@" >"$WORK/$label.out" 2>"$WORK/$label.err" || {
        echo "generator failed for $label:" >&2
        tail -n 20 "$WORK/$label.err" >&2
    }
    grep -v '^{' "$WORK/$label.out" >&2 || true
    grep '^{' "$WORK/$label.out" | SRC="$SOURCE" python3 -c '
import json, os, sys
for l in sys.stdin:
    r = json.loads(l); r["source"] = os.environ["SRC"]; print(json.dumps(r))
' >>"$RESULTS" || true
}

if [ "$ONLY" != none ]; then
    start_holder
    if [ -n "${BENCH_SYNC_COMMIT:-}" ]; then
        # psql variables are interpolated in scripts read from stdin, not in -c commands.
        psql "$PGCONN" -X -q -v ON_ERROR_STOP=1 -v v="$BENCH_SYNC_COMMIT" -f - <<'SQL'
SELECT set_config('bench.v', :'v', false) \gset
DO $$ BEGIN
  EXECUTE format('ALTER ROLE CURRENT_USER SET synchronous_commit = %L', current_setting('bench.v'));
END $$;
SQL
        echo "synchronous_commit=$BENCH_SYNC_COMMIT for every new session of the cluster's user" >&2
    fi
    echo "database: $PGCONN" >&2
fi

INGEST="--writers 100 --channels 100 --subscribers 100 --drain-timeout 120"
if wants ingest; then
    for r in $(seq 1 "$REPS"); do
        for src in notify wal; do
            start_server "$src" "ingest-$src-$r"
            run_bench "ingest-$src#$r" ingest $INGEST --payload 100 --messages 300000
            stop_server
        done
    done
fi

if wants ingest64k; then
    for r in $(seq 1 "$REPS"); do
        start_server wal "ingest64k-$r"
        run_bench "ingest64k-wal#$r" ingest $INGEST --payload 65536 --messages 5000
        stop_server
    done
fi

if wants latency; then
    for r in $(seq 1 "$REPS"); do
        for src in notify wal; do
            start_server "$src" "latency-$src-$r"
            run_bench "latency-$src#$r" fanout --subscribers 5000 --channels 100 --payload 100 \
                --rate 1000 --duration 20 --publishers 2
            stop_server
        done
    done
fi

if wants catchup; then
    for src in notify wal; do
        start_server "$src" "catchup-$src" PGWS_REPLAY_MESSAGES=20000 PGWS_REPLAY_BYTES=16777216
        run_bench "catchup-$src#1" sse-catchup --missed 10000 --resumes "$((REPS * 3))"
        stop_server
    done
fi

if wants restart; then
    for src in notify wal; do
        for r in $(seq 1 "$REPS"); do
            name="restart-$src-$r"
            start_server "$src" "$name" PGWS_REPLAY_MESSAGES=20000 PGWS_REPLAY_BYTES=16777216
            # The generator runs this after filling the window: stop the server, start it again
            # with the same settings (same node id, hence the same slot), print "<pid> <port>".
            cat >"$WORK/restart.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
$(declare -f launch stop_pid)
WORK="$WORK" PGCONN="$PGCONN" DEV_SECRET="$DEV_SECRET" ADMIN="$ADMIN" SERVER="$SERVER"
stop_pid $SERVER_PID >&2
launch $src $name PGWS_REPLAY_MESSAGES=20000 PGWS_REPLAY_BYTES=16777216 | tee "$WORK/restart.pid"
EOF
            chmod +x "$WORK/restart.sh"
            run_bench "restart-$src#$r" sse-catchup --missed 10000 --resumes 1 \
                --restart-cmd "$WORK/restart.sh"
            pp=$(cat "$WORK/restart.pid" 2>/dev/null || echo "")
            SERVER_PID=${pp% *}
            stop_server
        done
    done
fi

if wants retained; then
    start_server wal retained
    # Samples what PostgreSQL keeps for the slot every 10 s.
    (
        while true; do
            psql "$PGCONN" -Atc "SELECT extract(epoch from now())::int, \
                pg_current_wal_lsn() - restart_lsn, pg_current_wal_lsn() - confirmed_flush_lsn \
                FROM pg_replication_slots WHERE slot_name = 'pgws_bench_retained'" \
                >>"$WORK/retained.tsv" 2>/dev/null || true
            sleep 10
        done
    ) &
    SAMPLER_PID=$!
    : >"$WORK/retained.tsv"
    run_bench "retained-wal#1" fanout --subscribers 5000 --channels 100 --payload 100 \
        --rate 1000 --duration "$STEADY" --publishers 2 --rss-interval-ms 1000
    stop_pid "$SAMPLER_PID"
    SAMPLER_PID=""
    python3 - "$WORK/retained.tsv" >>"$RESULTS" <<'PY'
import json, sys
rows = [l.strip().split("|") for l in open(sys.argv[1]) if l.count("|") == 2]
kept = [int(r[1]) for r in rows]
behind = [int(r[2]) for r in rows]
print(json.dumps({"scenario": "retained", "label": "retained-wal#1", "source": "wal",
    "samples": len(rows), "retained_max": max(kept, default=None),
    "retained_last": kept[-1] if kept else None, "behind_max": max(behind, default=None),
    "retained_series": kept}))
PY
    stop_server
fi

cleanup
HOLDER_PID=""
SERVER_PID=""

COMMIT=$(git rev-parse --short HEAD)
CPU=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)
NCPU=$(nproc)
KERNEL=$(uname -r)
export RESULTS COMMANDS COMMIT CPU NCPU KERNEL REPS STEADY
python3 - >"$OUT" <<'PY'
import json, os, statistics as st
rows = [json.loads(l) for l in open(os.environ["RESULTS"])]
def runs(prefix):
    return [r for r in rows if r.get("label", "").startswith(prefix)]
def med(vals):
    vals = [v for v in vals if v is not None]
    return st.median(vals) if vals else None
def f(v, fmt="{:,.0f}"):
    return "n/a" if v is None else fmt.format(v)
L = []
L.append("# pgws benchmarks: the WAL source beside NOTIFY")
L.append("")
L.append(f"Generated by `scripts/bench-wal.sh` at commit `{os.environ['COMMIT']}` on {os.environ['NCPU']} x {os.environ['CPU']}, "
         f"kernel {os.environ['KERNEL']}, release build; a shared, noisy machine: medians of {os.environ['REPS']} runs, "
         "NOTIFY and WAL alternating, generator and server on the same CPUs. PostgreSQL 15, the embedded cluster "
         "(`fsync=off`, `wal_level=logical`); each server a separate `target/release/pgws` on it with "
         "`PGWS_SOURCE=notify|wal`, `PGWS_MAX_MESSAGE_SIZE=1048576`, rate limits off.")
L.append("")
L.append("| Scenario | NOTIFY | WAL | Goal |")
L.append("|---|---|---|---|")
def ingest_rate(src, prefix="ingest-"):
    return med([r.get("msgs_per_s") for r in runs(f"{prefix}{src}#")])
def ingest_loss(src, prefix="ingest-"):
    return sum((r.get("subscriber_deliveries") or {}).get("lost", 0) or 0 for r in runs(f"{prefix}{src}#"))
L.append(f"| Ingest, 100 writers, 100 B: messages/s reaching subscribers | {f(ingest_rate('notify'))} (LISTEN count) | {f(ingest_rate('wal'))} | WAL >= 200,000/s |")
L.append(f"| Ingest, 100 writers, 64 KiB: messages/s reaching subscribers | refused (NOTIFY stops at 8000 bytes) | {f(ingest_rate('wal', 'ingest64k-'))} | works |")
def lat(src, q):
    v = med([(r.get("latency") or {}).get(q) for r in runs(f"latency-{src}#")])
    return None if v is None else v / 1000.0
L.append(f"| Latency DB -> socket at 1,000/s to 5,000 subscribers, p50 | {f(lat('notify','p50_us'),'{:.2f} ms')} | {f(lat('wal','p50_us'),'{:.2f} ms')} | |")
L.append(f"| the same, p99 | {f(lat('notify','p99_us'),'{:.2f} ms')} | {f(lat('wal','p99_us'),'{:.2f} ms')} | |")
def cu(src, key, prefix):
    return med([r.get(key) for r in runs(f"{prefix}-{src}#")])
L.append(f"| Catch-up of 10,000 missed messages (no restart): until live | {f(cu('notify','live_ms','catchup'),'{:.1f} ms')} | {f(cu('wal','live_ms','catchup'),'{:.1f} ms')} | |")
L.append(f"| the same, server CPU | {f(cu('notify','server_cpu_ms','catchup'),'{:.1f} ms')} | {f(cu('wal','server_cpu_ms','catchup'),'{:.1f} ms')} | |")
ra = {s: runs(f"restart-{s}#") for s in ("notify", "wal")}
def anomalies(s):
    return sum(r.get("anomalies", 0) or 0 for r in ra[s])
L.append(f"| Catch-up of 10,000 missed messages across a pgws restart: until live | {f(cu('notify','live_ms','restart'),'{:.1f} ms')} | {f(cu('wal','live_ms','restart'),'{:.1f} ms')} | WAL: exact |")
L.append(f"| the same: missing/duplicated/Gap over all runs | {anomalies('notify')} (a Gap: positions died with the process) | {anomalies('wal')} | WAL: 0 |")
L.append(f"| the same: server CPU of the new process (rebuild + replay) | {f(cu('notify','server_cpu_ms','restart'),'{:.1f} ms')} | {f(cu('wal','server_cpu_ms','restart'),'{:.1f} ms')} | |")
ret = runs("retained-wal#")
if ret:
    x = [r for r in ret if r.get("scenario") == "retained"]
    if x:
        x = x[0]
        mb = lambda v: None if v is None else v / 1e6
        L.append(f"| WAL kept for the slot over {os.environ['STEADY']} s at 1,000 messages/s: max / at the end | | {f(mb(x.get('retained_max')),'{:.1f} MB')} / {f(mb(x.get('retained_last')),'{:.1f} MB')} | bounded |")
L.append("")
L.append("Notes:")
L.append("- Ingest counts, in both modes, the deliveries to 100 subscribers (one per channel, so each message once). "
         "NOTIFY's column is the generator's LISTEN connection count, as in docs/BENCHMARKS.md.")
L.append("- The restart runs stop the server after the window is filled and start it again with the same "
         "settings (same `PGWS_NODE_ID`, so the same slot); the resume goes to the new process, which reads its slot "
         "from the oldest message its windows held and rebuilds them. The time includes that rebuild.")
L.append("- What PostgreSQL keeps for a slot follows from the replay window: pgws confirms nothing a window still holds "
         "(`PGWS_REPLAY_AGE`, 300 s by default), so retention is about the WAL written in that time; a shorter age keeps less.")
L.append("")
L.append("## Runs")
L.append("")
L.append("| Label | Source | Key figures |")
L.append("|---|---|---|")
for r in rows:
    keys = {k: r.get(k) for k in ("msgs_per_s", "live_ms", "server_cpu_ms", "anomalies", "retained_max") if r.get(k) is not None}
    if r.get("latency"):
        keys["p50_us"] = r["latency"].get("p50_us"); keys["p99_us"] = r["latency"].get("p99_us")
    L.append(f"| {r.get('label')} | {r.get('source')} | {json.dumps(keys)} |")
L.append("")
L.append("## Commands")
L.append("")
L.append("```sh")
L.append("scripts/bench-wal.sh            # all of it (about 20 minutes plus BENCH_STEADY)")
for l in open(os.environ["COMMANDS"]):
    L.append(l.rstrip())
L.append("```")
print("\n".join(L))
PY
echo "wrote $OUT" >&2
