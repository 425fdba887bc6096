#!/usr/bin/env bash
# Runs the standard pgws-bench scenarios (the same commands as scripts/bench.sh)
# against benchmark peers instead of pgws, so their figures come from the same
# load generator on the same machine. Peers:
#   node-bridge  bench/peers/node-bridge/bridge.js (`ws` + `pg`, ~80 lines)
#   min-bridge   target/release/examples/min_bridge (bench/examples/min_bridge.rs: tokio +
#                tokio-tungstenite + tokio-postgres, one LISTEN connection, a broadcast per
#                channel, no auth or limits): the limit reference for pgws's CPU and memory.
#                It ignores client messages, so it has no ingest run.
#
# PostgreSQL: `target/release/pgws --embedded --port 0` is started only for
# its throwaway cluster (removed when it exits); the peer and the generator
# use a separate database in it (`pgws_peers`), so pgws's own LISTEN
# connection (on database `postgres`) is never woken by the benchmark traffic.
# Server CPU and RSS in the results are the peer process only (neither peer has
# child processes); PostgreSQL counts under "other processes".
#
# Environment knobs (all optional):
#   PEERS=node-bridge             peers to measure, comma-separated (node-bridge,min-bridge)
#   PEERS_REPS=1                  repetitions of each scenario
#   BENCH_IDLE_CONNECTIONS=15000  idle connections
#   PEERS_ONLY=idle,fanout,latency,ingest   scenarios to run
#   PEERS_WORK=target/bench-peers raw outputs (results.jsonl, *.out, *.err, logs)
#   PEERS_SMOKE=1                 tiny sizes, to check the script and the peer
#   BENCH_QUIET_WAIT=300          seconds to wait, before each run, for the
#                                 machine to be < 15% busy (shared machine)
#   PEERS_RUN_TIMEOUT=900         hard cap in seconds on one generator run
#   PEERS_DRAIN_TIMEOUT=300       fanout/ingest --drain-timeout (bench.sh uses 60 s;
#                                 a slower peer needs more to deliver all)
#   PEERS_FANOUT_MESSAGES         fan-out burst notifications: 200 for node-bridge (bench.sh
#                                 sends 2,000; a tenth gives the same CPU per delivery in a
#                                 tenth of the time), 2,000 for min-bridge (bench.sh's command)
#   PEERS_INGEST_MESSAGES=100000  ingest --messages (bench.sh sends 500,000; the rate is the
#                                 figure, and a slow peer would need minutes)
#
# Traffic stays on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${PEERS_REPS:-1}
IDLE_N=${BENCH_IDLE_CONNECTIONS:-15000}
ONLY=${PEERS_ONLY:-idle,fanout,latency,ingest}
WORK=${PEERS_WORK:-target/bench-peers}
RUN_TIMEOUT=${PEERS_RUN_TIMEOUT:-900}
PGWS=target/release/pgws
GEN=target/release/pgws-bench
BRIDGE_DIR=bench/peers/node-bridge
MIN_BRIDGE=target/release/examples/min_bridge
PEER_LIST=${PEERS:-node-bridge}
DB=pgws_peers
# Development secret of postgres-websockets (pgws-bench's default --secret).
SECRET=auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe

has_peer() { [[ ",$PEER_LIST," == *",$1,"* ]]; }
for f in "$PGWS" "$GEN"; do
    [ -x "$f" ] || { echo "$f missing: cargo build --release -p pgws -p pgws-bench" >&2; exit 1; }
done
if has_peer min-bridge && [ ! -x "$MIN_BRIDGE" ]; then
    echo "$MIN_BRIDGE missing: cargo build --release -p pgws-bench --example min_bridge" >&2
    exit 1
fi
if has_peer node-bridge; then
    command -v node >/dev/null || { echo "node missing (apt-get install -y nodejs npm)" >&2; exit 1; }
    if [ ! -d "$BRIDGE_DIR/node_modules" ]; then
        (cd "$BRIDGE_DIR" && npm ci --no-audit --no-fund)
    fi
fi

mkdir -p "$WORK"
RESULTS="$WORK/results.jsonl"
COMMANDS="$WORK/commands.txt"
: >"$RESULTS"
: >"$COMMANDS"

# One descriptor per socket; 20,000 is this machine's cap.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PG_PID=""
PEER_PID=""
GEN_PID=""
PORT=""

# cpu_busy_pct, wait_quiet, stop_pid
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
stop_peer() { stop_pid "$PEER_PID"; PEER_PID=""; }
cleanup() {
    stop_pid "$GEN_PID"
    GEN_PID=""
    stop_peer
    stop_pid "$PG_PID"
    PG_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_line LOG PATTERN PID: waits (60 s at most) for PATTERN in LOG while PID lives.
wait_line() {
    for _ in $(seq 1 300); do
        grep -q "$2" "$1" && return 0
        kill -0 "$3" 2>/dev/null || { echo "process exited during start-up:" >&2; cat "$1" >&2; return 1; }
        sleep 0.2
    done
    echo "no '$2' within 60 s:" >&2
    cat "$1" >&2
    return 1
}

# 1. PostgreSQL: pgws --embedded, for its throwaway cluster only.
log="$WORK/pgws-embedded.log"
"$PGWS" --embedded --port 0 >"$log" 2>&1 &
PG_PID=$!
wait_line "$log" '^Embedded PostgreSQL:' "$PG_PID"
PGCONN=$(sed -n 's/^Embedded PostgreSQL: //p' "$log" | head -n1)
kv() { sed -n "s/.*\(^\| \)$1=\([^ ]*\).*/\2/p" <<<"$PGCONN"; }
PG_HOST=$(kv host)
PG_PORT=$(kv port)
PG_USER=$(kv user)
if [ -z "$PG_HOST" ] || [ -z "$PG_PORT" ] || [ -z "$PG_USER" ]; then
    echo "cannot parse '$PGCONN'" >&2
    exit 1
fi
pg_url() { echo "postgresql://$PG_USER@/$1?host=$PG_HOST&port=$PG_PORT"; }
if command -v psql >/dev/null; then
    psql -q -X -v ON_ERROR_STOP=1 -d "$(pg_url postgres)" -c "CREATE DATABASE \"$DB\"" >&2
else
    # shellcheck disable=SC2016 # JavaScript template literal, not shell
    (cd "$BRIDGE_DIR" && node -e '
const c = new (require("pg").Client)(process.argv[1])
c.connect().then(() => c.query(`CREATE DATABASE "${process.argv[2]}"`)).then(() => c.end())
  .catch((e) => { console.error(e.message); process.exit(1) })' "$(pg_url postgres)" "$DB")
fi
PEER_PG="host=$PG_HOST port=$PG_PORT user=$PG_USER dbname=$DB"
echo "PostgreSQL: $PEER_PG (cluster of pgws --embedded, pid $PG_PID)" >&2

# start_peer NAME: starts peer $PEER on a free port; sets PEER_PID and PORT.
start_peer() {
    local log="$WORK/$PEER-$1.log"
    case $PEER in
    node-bridge)
        PGWS_DB_URI="$(pg_url "$DB")" PGWS_JWT_SECRET="$SECRET" PGWS_PORT=0 PGWS_HOST=127.0.0.1 \
            node "$BRIDGE_DIR/bridge.js" >"$log" 2>&1 &
        ;;
    min-bridge)
        "$MIN_BRIDGE" 0 "$PEER_PG" >"$log" 2>&1 &
        ;;
    *)
        echo "unknown peer $PEER" >&2
        return 1
        ;;
    esac
    PEER_PID=$!
    wait_line "$log" '^Listening on port' "$PEER_PID"
    PORT=$(sed -n 's/^Listening on port \([0-9]*\).*/\1/p' "$log" | head -n1)
    echo "$PEER $1: pid $PEER_PID port $PORT" >&2
    sleep 1
}


# run_bench LABEL SCENARIO-ARGS...: one bounded generator run; keeps its JSON line.
run_bench() {
    local label=$1 file
    shift
    file="$WORK/${label//[#\/]/-}"
    wait_quiet
    echo "pgws-bench --port \$PORT --pg \"\$PGCONN\" --server-pid \$PID --label $label --max-duration $RUN_TIMEOUT $*" >>"$COMMANDS"
    # In the background so that a signal to this script interrupts `wait`.
    timeout -k 10 $((RUN_TIMEOUT + 30)) "$GEN" --port "$PORT" --pg "$PEER_PG" --server-pid "$PEER_PID" \
        --label "$label" --max-duration "$RUN_TIMEOUT" "$@" >"$file.out" 2>"$file.err" &
    GEN_PID=$!
    local rc=0
    wait "$GEN_PID" || rc=$?
    GEN_PID=""
    if [ "$rc" -ne 0 ]; then
        echo "generator failed for $label (exit $rc):" >&2
        tail -n 20 "$file.err" >&2
    fi
    grep -v '^{' "$file.out" >&2 || true
    grep '^{' "$file.out" >>"$RESULTS" || true
}

wants() { [[ ",$ONLY," == *",$1,"* ]]; }

# Scenario sizes (scripts/bench.sh's), or tiny ones with PEERS_SMOKE=1; per peer.
sizes() {
    if [ -n "${PEERS_SMOKE:-}" ]; then
        IDLE_N=${BENCH_IDLE_CONNECTIONS:-200}
        IDLE=(--settle 1 --hold 1)
        FANOUT=(--subscribers 50 --channels 1 --payload 100 --messages 200 --burst 50 --burst-interval-ms 250 --drain-timeout 10)
        LATENCY=(--subscribers 100 --channels 10 --payload 100 --rate 200 --duration 3 --publishers 2)
        INGEST=(--writers 5 --channels 5 --payload 100 --messages 2000 --drain-timeout 10)
        return
    fi
    local drain messages
    if [ "$PEER" = min-bridge ]; then
        drain=${PEERS_DRAIN_TIMEOUT:-60}
        messages=${PEERS_FANOUT_MESSAGES:-2000}
    else
        drain=${PEERS_DRAIN_TIMEOUT:-300}
        messages=${PEERS_FANOUT_MESSAGES:-200}
    fi
    IDLE=(--settle 3 --hold 10)
    FANOUT=(--subscribers 5000 --channels 1 --payload 100 --messages "$messages" --burst 100 --burst-interval-ms 250 --drain-timeout "$drain")
    LATENCY=(--subscribers 5000 --channels 100 --payload 100 --rate 1000 --duration 20 --publishers 2)
    INGEST=(--writers 100 --channels 100 --payload 100 --messages "${PEERS_INGEST_MESSAGES:-100000}" --drain-timeout "$drain")
}

IFS=, read -r -a PEER_NAMES <<<"$PEER_LIST"
for PEER in "${PEER_NAMES[@]}"; do
    sizes
    # Idle: a fresh peer per repetition.
    if wants idle; then
        for r in $(seq 1 "$REPS"); do
            start_peer "idle-$r"
            run_bench "$PEER/idle#$r" idle --connections "$IDLE_N" --source-addrs 16 \
                --connect-concurrency 128 "${IDLE[@]}"
            stop_peer
        done
    fi
    if wants fanout; then
        start_peer fanout
        for r in $(seq 1 "$REPS"); do run_bench "$PEER/fanout#$r" fanout "${FANOUT[@]}"; done
        stop_peer
    fi
    if wants latency; then
        start_peer latency
        for r in $(seq 1 "$REPS"); do run_bench "$PEER/latency#$r" fanout "${LATENCY[@]}"; done
        stop_peer
    fi
    # The minimal bridge does not publish client messages.
    if wants ingest && [ "$PEER" != min-bridge ]; then
        start_peer ingest
        for r in $(seq 1 "$REPS"); do run_bench "$PEER/ingest#$r" ingest "${INGEST[@]}"; done
        stop_peer
    fi
done

# Short summary of the key figures.
python3 - "$RESULTS" <<'PY' || true
import json, sys
def g(r, p):
    for k in p.split("."):
        r = r.get(k) if isinstance(r, dict) else None
    return r
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    r = json.loads(line)
    kind = r["label"].split("/")[-1].split("#")[0]
    if kind == "idle":
        f = [("rss/conn B", "rss_per_conn_bytes"), ("connected", "connect.ok"), ("failed", "connect.failed"), ("alive", "alive")]
    elif kind == "ingest":
        f = [("msgs/s", "msgs_per_s"), ("lost", "arrived.lost"), ("dup", "arrived.duplicated"), ("not in order", "writers_not_in_order"),
             ("p50 us", "latency.p50_us"), ("p99 us", "latency.p99_us"), ("server us/msg", "server_cpu_per_msg_us")]
    else:
        f = [("server us/delivery", "server_cpu_per_delivery_us"), ("lost", "deliveries.lost"), ("dup", "deliveries.duplicated"),
             ("out of order", "deliveries.out_of_order"), ("p50 us", "latency.p50_us"), ("p99 us", "latency.p99_us")]
    print(r["label"] + ": " + ", ".join(f"{n} {g(r, p)}" for n, p in f))
PY
echo "results: $RESULTS; summaries: $WORK/*.out" >&2
