#!/usr/bin/env bash
# Runs the event-stream benchmark scenarios (Server-Sent Events fan-out against the websocket
# fan-out, idle streams, Last-Event-ID catch-up, a reconnect storm, replay-window memory) against
# a release build of `pgws --embedded` with the pgws-bench load generator (plus a heap profile
# of idle streams under heaptrack), and writes
# docs/BENCHMARKS-streams.md (machine, commit, exact commands, results next to their targets).
#
# Environment knobs (all optional):
#   BENCH_REPS=3                   repetitions of each scenario (medians reported)
#   BENCH_ONLY=fanout,idle,catchup,storm,windows,heap   scenarios to run (heap: idle
#                                  streams and websockets under heaptrack; needs heaptrack)
#   BENCH_IDLE_CONNECTIONS=15000   idle streams (and websockets, for the comparison)
#   BENCH_FANOUT_SUBSCRIBERS=5000  subscribers of the fan-out comparison
#   BENCH_CATCHUP_MISSED=10000     messages a resuming stream missed
#   BENCH_STORM_CLIENTS=1000       streams cut and resumed at once
#   BENCH_WINDOW_CHANNELS=1000     busy channels of the window-memory run
#   BENCH_OUT=docs/BENCHMARKS-streams.md   report path
#   BENCH_WORK=target/bench-streams        raw outputs (server logs, JSON lines)
#   BENCH_SKIP_BUILD=1             use the existing target/release binaries
#   BENCH_REPORT_ONLY=1            only rewrite the report from BENCH_WORK's results
#   BENCH_QUIET_WAIT=300           seconds to wait, before each run, for the machine to be
#                                  < 15% busy (shared machine)
#
# Every run is bounded (the generator has its own --max-duration), traffic stays on 127.0.0.1,
# and each server is stopped with SIGTERM afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${BENCH_REPS:-3}
ONLY=${BENCH_ONLY:-fanout,idle,catchup,storm,windows,heap}
IDLE_N=${BENCH_IDLE_CONNECTIONS:-15000}
FAN_N=${BENCH_FANOUT_SUBSCRIBERS:-5000}
MISSED=${BENCH_CATCHUP_MISSED:-10000}
STORM_N=${BENCH_STORM_CLIENTS:-1000}
WIN_K=${BENCH_WINDOW_CHANNELS:-1000}
OUT=${BENCH_OUT:-docs/BENCHMARKS-streams.md}
WORK=${BENCH_WORK:-target/bench-streams}
SERVER=target/release/pgws
GEN=target/release/pgws-bench

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

# The server needs one descriptor per socket.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

SERVER_PID=""
SERVER_ENV=""
PORT=""
PGCONN=""
ADMIN=""

# cpu_busy_pct, wait_quiet, stop_pid
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"

stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}
trap stop_server EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server NAME [VAR=value ...]: bench-lib's, with the admin listener on another free
# loopback port ($ADMIN).
start_server() {
    local name=$1
    shift
    ADMIN="127.0.0.1:$(free_port)"
    SERVER_ENV="$*"
    launch_embedded "$name" PGWS_ADMIN_ADDRESS="$ADMIN" "$@"
}

# run_bench LABEL SCENARIO-ARGS...: one generator run; keeps its JSON line (with the server's
# extra environment added, so that the report can say how each server was started).
run_bench() {
    local label=$1
    shift
    wait_quiet
    echo "${SERVER_ENV:+[$SERVER_ENV] }pgws-bench --port \$PORT --pg \"\$PGCONN\" --server-pid \$PID --admin \$ADMIN --label $label $*" >>"$COMMANDS"
    "$GEN" --port "$PORT" --pg "$PGCONN" --server-pid "$SERVER_PID" --admin "$ADMIN" \
        --label "$label" "$@" >"$WORK/$label.out" 2>"$WORK/$label.err" || {
        echo "generator failed for $label:" >&2
        cat "$WORK/$label.err" >&2
    }
    grep -v '^{' "$WORK/$label.out" >&2 || true
    grep '^{' "$WORK/$label.out" | SERVER_ENV="$SERVER_ENV" python3 -c '
import json, os, sys
for l in sys.stdin:
    r = json.loads(l); r["server_env"] = os.environ.get("SERVER_ENV", ""); print(json.dumps(r))
' >>"$RESULTS" || true
}

wants() { [[ ",$ONLY," == *",$1,"* ]]; }

FANOUT_ARGS="--subscribers $FAN_N --channels 1 --payload 100 --messages 2000 --burst 100 --burst-interval-ms 250 --drain-timeout 60"
IDLE_ARGS="--connections $IDLE_N --source-addrs 16 --connect-concurrency 128 --settle 3 --hold 10"

# 1. Fan-out: websockets and event streams, alternating on one server, measured the same way.
if wants fanout; then
    start_server fanout
    for r in $(seq 1 "$REPS"); do
        # shellcheck disable=SC2086
        run_bench "fanout#$r" fanout $FANOUT_ARGS
        # shellcheck disable=SC2086
        run_bench "sse-fanout#$r" sse-fanout $FANOUT_ARGS
    done
    stop_server
fi

# 2. Idle: server RSS per idle stream, and per idle websocket for comparison; a fresh server per
# repetition.
if wants idle; then
    for r in $(seq 1 "$REPS"); do
        start_server "sse-idle-$r"
        # shellcheck disable=SC2086
        run_bench "sse-idle#$r" sse-idle $IDLE_ARGS
        stop_server
        start_server "idle-$r"
        # shellcheck disable=SC2086
        run_bench "idle#$r" idle $IDLE_ARGS
        stop_server
    done
fi

# 3. Catch-up: a stream that missed 10,000 messages of 100 B resumes with Last-Event-ID (the
# window holds 20,000 messages; 10,000 x 100 B fit the default 1 MiB per channel).
if wants catchup; then
    start_server catchup PGWS_REPLAY_MESSAGES=20000
    for r in $(seq 1 "$REPS"); do
        run_bench "sse-catchup#$r" sse-catchup --channel "catchup$r" --missed "$MISSED" \
            --payload 100 --resumes 10
    done
    stop_server
fi

# 4. Reconnect storm: 1,000 streams over 10 channels at 500 notifications/s, all cut by the
# client side at once and resumed at once after 1 s; default window limits.
if wants storm; then
    start_server storm
    for r in $(seq 1 "$REPS"); do
        run_bench "sse-storm#$r" sse-storm --clients "$STORM_N" --channels 10 \
            --channel-prefix "storm$r-" --rate 500 --payload 100 --cut-at 4 --down-ms 1000 \
            --duration 15
    done
    stop_server
fi

# 5. Window memory at default limits: 1,000 busy channels, 1,200 messages of 100 B each.
if wants windows; then
    for r in $(seq 1 "$REPS"); do
        start_server "windows-$r"
        run_bench "windows#$r" windows --channels "$WIN_K" --per-channel 1200 --payload 100 \
            --publishers 2 --batch 1000
        stop_server
    done
fi

# 6. What an idle stream's memory is made of: a second pgws (on the first one's database) runs
# under heaptrack while 3,000 idle streams, then 3,000 idle websockets, are connected to it; the
# largest heap consumers at the peak, per connection. Skipped without heaptrack.
heap_profile() {
    local kind=$1 scenario=$2 n=3000
    local log="$WORK/server-heap-$kind.log" hpid="" hport="" tracer
    rm -f "$WORK/heap-$kind".*
    env PGWS_DB_URI="$PGCONN" PGWS_JWT_SECRET="$DEV_SECRET" PGWS_PORT=0 \
        PGWS_RATE_CONNECTIONS=0 PGWS_RATE_MESSAGES=0 PGWS_RATE_BYTES=0 \
        heaptrack -o "$WORK/heap-$kind" "$ROOT/$SERVER" >"$log" 2>&1 &
    tracer=$!
    for _ in $(seq 1 150); do
        hport=$(sed -n 's/^Listening on port \([0-9]*\).*/\1/p' "$log" 2>/dev/null | head -n1)
        [ -n "$hport" ] && break
        sleep 0.2
    done
    hpid=$(pgrep -n -x -f "$ROOT/$SERVER" || true)
    if [ -z "$hport" ] || [ -z "$hpid" ]; then
        echo "heaptrack'd server did not start:" >&2
        cat "$log" >&2
        kill "$tracer" 2>/dev/null || true
        return 0
    fi
    wait_quiet
    echo "[heaptrack, PGWS_DB_URI=\$PGCONN] pgws-bench --port \$HEAP_PORT --pg \"\$PGCONN\" --server-pid \$HEAP_PID --label heap-$kind#1 $scenario --connections $n --source-addrs 4 --connect-concurrency 64 --settle 3 --hold 2" >>"$COMMANDS"
    "$GEN" --port "$hport" --pg "$PGCONN" --server-pid "$hpid" --label "heap-$kind#1" "$scenario" \
        --connections "$n" --source-addrs 4 --connect-concurrency 64 --settle 3 --hold 2 \
        >"$WORK/heap-$kind.out" 2>"$WORK/heap-$kind.err" || true
    kill -TERM "$hpid" 2>/dev/null || true
    wait "$tracer" 2>/dev/null || true
    heaptrack_print -f "$WORK/heap-$kind.zst" --print-peaks 1 --print-allocators 0 \
        --print-temporary 0 --print-leaks 0 --peak-limit 10 --sub-peak-limit 4 \
        >"$WORK/heap-$kind.txt" 2>/dev/null || true
    KIND=$kind N=$n python3 - "$WORK/heap-$kind.txt" "$WORK/heap-$kind.out" >>"$RESULTS" <<'PY'
import json, os, re, sys
units = {"B": 1, "K": 1e3, "M": 1e6, "G": 1e9}
def size(s):
    m = re.match(r"([0-9.]+)([BKMG])", s)
    return float(m.group(1)) * units[m.group(2)] if m else None
sites, cur = [], None
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^([0-9.]+[BKMG]) consumed over ([0-9]+) calls from:", line)
    if m:
        cur = {"bytes": size(m.group(1)), "calls": int(m.group(2)), "at": []}
        sites.append(cur)
        continue
    if line.startswith(("PEAK", "MOST")) or re.match(r"^[0-9.]+[BKMG] peak memory", line):
        cur = None
        continue
    m = re.match(r"^\s+at (\S+)", line)
    if cur is not None and m and len(cur["at"]) < 4:
        loc = re.sub(r"^.*/registry/src/[^/]+/", "", m.group(1))
        if not loc.startswith("/rustc/"):
            cur["at"].append(loc)
sites.sort(key=lambda s: -s["bytes"])
rss = None
for line in open(sys.argv[2]):
    if line.startswith("{"):
        rss = json.loads(line).get("rss_per_conn_bytes")
n = int(os.environ["N"])
print(json.dumps({"scenario": "heap", "label": f"heap-{os.environ['KIND']}#1", "connections": n,
                  "rss_per_conn_bytes": rss, "sites": sites[:8]}))
PY
}
if wants heap && command -v heaptrack >/dev/null && command -v heaptrack_print >/dev/null; then
    DEV_SECRET=auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe
    start_server heap-db
    heap_profile sse sse-idle
    heap_profile ws idle
    stop_server
fi

# The commit the runs measured (a report-only pass reuses it: the tree may have changed since).
if [ -n "${BENCH_REPORT_ONLY:-}" ] && [ -f "$WORK/commit.txt" ]; then
    { read -r COMMIT; read -r DIRTY || DIRTY=""; } <"$WORK/commit.txt"
else
    COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "uncommitted")
    DIRTY=$(git status --porcelain 2>/dev/null | head -n1)
    printf '%s\n%s\n' "$COMMIT" "$DIRTY" >"$WORK/commit.txt"
fi
export COMMIT DIRTY REPS RESULTS COMMANDS OUT

python3 - <<'PY'
import json, os, platform, statistics, subprocess, datetime

res = [json.loads(l) for l in open(os.environ["RESULTS"]) if l.strip()]
reps = int(os.environ["REPS"])

def get(r, path):
    v = r
    for k in path.split("."):
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v

def runs(kind):
    return [r for r in res if r["label"].split("#")[0] == kind]

def med(rs, path):
    v = [get(r, path) for r in rs]
    v = [x for x in v if isinstance(x, (int, float))]
    return statistics.median(v) if v else None

def fmt(x, nd=0):
    if x is None:
        return "n/a"
    return f"{x:,.{nd}f}"

def vals(rs, path, nd=0):
    return ", ".join(fmt(get(r, path), nd) for r in rs)

def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "**missed**")

cpu_model = "?"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu_model = line.split(":", 1)[1].strip()
        break
nproc = os.cpu_count()
mem_kib = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
try:
    pgws_version = subprocess.run(["target/release/pgws", "--version"], capture_output=True, text=True).stdout.strip()
except Exception:
    pgws_version = ""

rows = []
ws_fan, sse_fan = runs("fanout"), runs("sse-fanout")
ws_cpu, sse_cpu = med(ws_fan, "server_cpu_per_delivery_us"), med(sse_fan, "server_cpu_per_delivery_us")
ratios = []
for a, b in zip(ws_fan, sse_fan):
    x, y = get(a, "server_cpu_per_delivery_us"), get(b, "server_cpu_per_delivery_us")
    if x and y:
        ratios.append(y / x)
ratio = statistics.median(ratios) if ratios else None
if sse_fan:
    lost = max((get(r, "deliveries.lost") or 0) for r in sse_fan)
    rows.append(("SSE fan-out: 1 channel x 5,000 streams, 100 B bursts: server CPU per delivery vs websocket (same run)",
                 "<= 1.2x websocket", f"{fmt(sse_cpu, 3)} us vs {fmt(ws_cpu, 3)} us: {fmt(ratio, 2)}x (median of per-repetition ratios)",
                 verdict(None if ratio is None else ratio <= 1.2)))
    rows.append(("SSE fan-out: loss (max over runs)", "0", f"{lost:,}", verdict(lost == 0)))
sse_idle, ws_idle = runs("sse-idle"), runs("idle")
if sse_idle:
    p = med(sse_idle, "rss_per_conn_bytes")
    w = med(ws_idle, "rss_per_conn_bytes")
    rows.append((f"Idle: server RSS per idle stream at {fmt(med(sse_idle, 'connect.ok'))} streams", "<= 4 KiB (4,096 B)",
                 f"{fmt(p)} B (websocket, same run: {fmt(w)} B)", verdict(None if p is None else p <= 4096)))
cu = runs("sse-catchup")
if cu:
    allr = [x for r in cu for x in (r.get("resumes") or []) if not x.get("error")]
    cpu = statistics.median([x["server_cpu_ms"] for x in allr if x.get("server_cpu_ms") is not None]) if allr else None
    live = statistics.median([x["live_ms"] for x in allr]) if allr else None
    bad = sum(r.get("failed") or 0 for r in cu) + sum(r.get("anomalies") or 0 for r in cu)
    missed = get(cu[0], "params.missed")
    rows.append((f"Catch-up: resume after {fmt(missed)} missed messages of 100 B: server CPU (request -> all replayed + first live)",
                 "<= 50 ms", f"{fmt(cpu, 1)} ms (wall {fmt(live, 1)} ms; {len(allr)} resumes)", verdict(None if cpu is None else cpu <= 50)))
    rows.append(("Catch-up: resumes failed / messages missing, repeated or out of order", "0", f"{bad}", verdict(bad == 0)))
st = runs("sse-storm")
if st:
    lost = max((get(r, "deliveries.lost") or 0) + (get(r, "deliveries.duplicated") or 0) + (get(r, "deliveries.out_of_order") or 0) + (r.get("gap_events") or 0) for r in st)
    failed = max((r.get("failed") or 0) for r in st)
    rows.append((f"Restart storm: {fmt(get(st[0], 'params.clients'))} streams cut at once and resumed at once: time until all live",
                 "(measure)", f"{fmt(med(st, 'all_live_ms'), 1)} ms (per stream p50 {fmt(med(st, 'live_ms.p50'), 1)} ms); server CPU from the "
                 f"reconnect to all live {fmt(med(st, 'server_cpu_storm_ms'), 1)} ms, live deliveries included", "-"))
    rows.append(("Restart storm: lost + duplicated + out-of-order + gap events; streams not live again (max over runs)", "0 / 0",
                 f"{lost} / {failed}", verdict(lost == 0 and failed == 0)))
wi = runs("windows")
if wi:
    rows.append((f"Windows at default limits, {fmt(get(wi[0], 'params.channels'))} busy channels x {fmt(get(wi[0], 'params.per_channel'))} messages of 100 B",
                 "(measure)", f"pgws_window_messages {fmt(med(wi, 'window_messages'))}, pgws_window_bytes {fmt(med(wi, 'window_bytes'))}; "
                 f"server RSS {fmt((med(wi, 'server_after.rss_kib') or 0) / 1024, 1)} MiB, of which {fmt((med(wi, 'rss_delta_kib') or 0) / 1024, 1)} MiB "
                 f"for the windows = {fmt(med(wi, 'rss_per_held_message_bytes'))} B per held message", "-"))

def usage_lines(rs):
    out = []
    for r in rs:
        u = r.get("usage") or {}
        flags = []
        if u.get("generator_saturated"): flags.append("generator saturated")
        if u.get("machine_saturated"): flags.append("machine saturated")
        if u.get("disturbed"): flags.append("disturbed by other processes")
        out.append(f"  - `{r['label']}`: {u.get('wall_s', 0):.1f} s; CPU s: server {u.get('server_cpu_s') or 0:.2f}, "
                   f"embedded PostgreSQL {u.get('server_children_cpu_s') or 0:.2f}, generator {u.get('generator_cpu_s', 0):.2f} "
                   f"({u.get('generator_cores', 0):.2f} cores), other processes {u.get('other_cpu_s', 0):.2f}; machine {100*u.get('machine_busy', 0):.0f}% busy"
                   + (f" — **{', '.join(flags)}**" if flags else ""))
    return out

L = []
L.append("# Benchmarks: event streams, resume and replay windows\n")
L.append(f"Generated by `scripts/bench-streams.sh` on {now}. Server under test: `{pgws_version or 'pgws'}` "
         f"(`target/release/pgws --embedded`, a fresh throwaway PostgreSQL cluster per server), "
         f"commit `{os.environ['COMMIT']}`{' (working tree had uncommitted changes)' if os.environ.get('DIRTY') else ''}. "
         f"Load generator: `target/release/pgws-bench` (crate `bench/`).\n")
L.append("## Machine\n")
L.append(f"- CPUs: {nproc} (`nproc`), model: {cpu_model}")
L.append(f"- Memory: {mem_kib/1024/1024:.1f} GiB")
L.append(f"- Kernel: {platform.release()}")
L.append("- Server, PostgreSQL and load generator all share these CPUs; the machine is shared and noisy. "
         f"Figures are medians of {reps} repetitions unless stated; CPU figures are CPU time of the pgws process.\n")
L.append("## Results against the targets\n")
L.append("| Scenario | Target | Measured (median) | Verdict |")
L.append("|---|---|---|---|")
for r in rows:
    L.append("| " + " | ".join(r) + " |")
L.append("")

L.append("## Details\n")
if ws_fan or sse_fan:
    L.append("### Fan-out bursts: event streams against websockets\n")
    L.append("Same server, same generator, same arguments; websocket and SSE repetitions alternate.\n")
    L.append("| Repetition | websocket: server CPU per delivery | SSE: server CPU per delivery | ratio | SSE lost / dup / out-of-order | SSE deliveries/s | SSE generator CPU per delivery |")
    L.append("|---|---|---|---|---|---|---|")
    for a, b in zip(ws_fan, sse_fan):
        x, y = get(a, "server_cpu_per_delivery_us"), get(b, "server_cpu_per_delivery_us")
        L.append(f"| {b['label'].split('#')[1]} | {fmt(x, 3)} us | {fmt(y, 3)} us | {fmt(y / x if x and y else None, 2)}x | "
                 f"{get(b, 'deliveries.lost')} / {get(b, 'deliveries.duplicated')} / {get(b, 'deliveries.out_of_order')} | "
                 f"{fmt(get(b, 'deliveries_per_s'))} | {fmt(get(b, 'generator_cpu_per_delivery_us'), 3)} us |")
    L.append("")
    L.append("- Server RSS peak during the run (KiB), websocket / SSE: " + "; ".join(
        f"{fmt(get(a, 'rss.peak_kib'))} / {fmt(get(b, 'rss.peak_kib'))}" for a, b in zip(ws_fan, sse_fan)) +
        "; delivery latency p50 websocket / SSE: " + "; ".join(
        f"{fmt((get(a, 'latency.p50_us') or 0) / 1000)} / {fmt((get(b, 'latency.p50_us') or 0) / 1000)} ms" for a, b in zip(ws_fan, sse_fan)))
    L.append(f"- Websocket lost (max): {max((get(r, 'deliveries.lost') or 0) for r in ws_fan) if ws_fan else 'n/a'}; "
             f"SSE streams ended early: {[r.get('ended_early') for r in sse_fan]}; SSE gap events: {[r.get('gap_events') for r in sse_fan]}")
    L.extend(usage_lines(ws_fan + sse_fan)); L.append("")
if sse_idle or ws_idle:
    L.append("### Idle streams\n")
    L.append(f"- SSE: RSS per idle stream (bytes), per run: {vals(sse_idle, 'rss_per_conn_bytes')}; after the hold: {vals(sse_idle, 'rss_per_conn_held_bytes')}")
    L.append(f"- Websocket, same machine, fresh servers alternating: {vals(ws_idle, 'rss_per_conn_bytes')}; after the hold: {vals(ws_idle, 'rss_per_conn_held_bytes')}")
    L.append(f"- SSE connected / failed per run: {vals(sse_idle, 'connect.ok')} / {vals(sse_idle, 'connect.failed')}; alive at the end: {vals(sse_idle, 'alive')}")
    L.append(f"- SSE server RSS before / settled (KiB): {vals(sse_idle, 'server_before.rss_kib')} / {vals(sse_idle, 'server_settled.rss_kib')}")
    L.append(f"- Websocket server RSS before / settled (KiB): {vals(ws_idle, 'server_before.rss_kib')} / {vals(ws_idle, 'server_settled.rss_kib')}")
    L.append("- Kernel socket memory (≈3-4 KB per TCP socket) is not in RSS and not counted.\n")
if cu:
    L.append("### Catch-up with Last-Event-ID\n")
    L.append(f"Server started with `{cu[0].get('server_env') or 'defaults'}`. Each run fills a fresh channel (a witness stream "
             "keeps it subscribed) and then resumes 10 times, one after the other, from the same position; resume r also gets "
             "the live messages of the r resumes before it.\n")
    L.append("| Run | resume | head | all replayed | first live | received / expected | pgws_replayed_total + | server CPU (schedstat) | server CPU (ticks) |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in cu:
        for i, x in enumerate(r.get("resumes") or []):
            if x.get("error"):
                L.append(f"| {r['label']} | {i+1} | failed: {x['error']} |||||||")
                continue
            L.append(f"| {r['label']} | {i+1} | {x['head_ms']:.2f} ms | {x['replayed_ms']:.2f} ms | {x['live_ms']:.2f} ms | "
                     f"{x['received']:,} / {x['expected']:,} | {fmt(x.get('replayed_metric'))} | {fmt(x.get('server_cpu_ms'), 1)} ms | {fmt(x.get('server_cpu_ticks_ms'))} ms |")
    L.append("")
    L.append(f"- Per run medians: first live {vals(cu, 'live_ms', 1)} ms; server CPU {vals(cu, 'server_cpu_ms', 1)} ms; generator CPU {vals(cu, 'generator_cpu_ms', 1)} ms")
    L.append(f"- Window before the resumes (messages / bytes): " + "; ".join(f"{fmt(get(r, 'window_before.messages'))} / {fmt(get(r, 'window_before.bytes'))}" for r in cu))
    L.append("")
if st:
    L.append("### Restart storm\n")
    L.append("Columns from the reconnect signal: all requests sent, all response heads received, all streams live. "
             "\"Steady\" is the server's CPU rate while all streams received before the cut; the reconnect phase delivers less than "
             "that (streams join one by one), so \"above steady\" understates the storm's own cost and can be negative.\n")
    L.append("| Run | cut (all closed) | all requests sent | all connected | all live | per stream request -> head p50 / p99 | per stream request -> live p50 / p99 / max | server CPU steady | server CPU cut + down | server CPU reconnect -> all live | above steady | replayed (server) | lost / dup / ooo / gaps | not live |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in st:
        lm = r.get("live_ms") or {}
        d = r.get("deliveries") or {}
        cm = r.get("connect_ms") or {}
        L.append(f"| {r['label']} | {fmt(r.get('cut_ms'), 1)} ms | {fmt(r.get('last_request_ms'), 1)} ms | {fmt(r.get('all_connected_ms'), 1)} ms | "
                 f"{fmt(r.get('all_live_ms'), 1)} ms | {fmt(cm.get('p50'), 1)} / {fmt(cm.get('p99'), 1)} ms | {fmt(lm.get('p50'), 1)} / {fmt(lm.get('p99'), 1)} / {fmt(lm.get('max'), 1)} ms | "
                 f"{fmt(r.get('server_cpu_steady_ms_per_s'), 1)} ms/s | {fmt(r.get('server_cpu_cut_ms'), 1)} ms | {fmt(r.get('server_cpu_storm_ms'), 1)} ms | {fmt(r.get('server_cpu_storm_excess_ms'), 1)} ms | "
                 f"{fmt(r.get('replayed'))} | {d.get('lost')} / {d.get('duplicated')} / {d.get('out_of_order')} / {r.get('gap_events')} | {r.get('failed')} |")
    L.append("")
    L.append(f"- Deliveries expected per run: {vals(st, 'deliveries.expected')}; published: {vals(st, 'published')}; "
             f"ended before the cut: {[r.get('ended_before_cut') for r in st]}; reconnect errors: {[r.get('reconnect_errors') for r in st]}")
    L.extend(usage_lines(st)); L.append("")
if wi:
    L.append("### Replay windows at default limits\n")
    L.append("| Run | pgws_window_messages | pgws_window_bytes | text per message | RSS with streams | RSS with full windows | RSS for the windows | per held message | lost |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in wi:
        L.append(f"| {r['label']} | {fmt(r.get('window_messages'))} | {fmt(r.get('window_bytes'))} | {fmt(r.get('text_per_held_message_bytes'))} B | "
                 f"{fmt(get(r, 'server_before.rss_kib'))} KiB | {fmt(get(r, 'server_after.rss_kib'))} KiB | {fmt(r.get('rss_delta_kib'))} KiB | "
                 f"{fmt(r.get('rss_per_held_message_bytes'))} B | {get(r, 'deliveries.lost')} |")
    L.append("")
    L.extend(usage_lines(wi)); L.append("")

hp = {r["label"].split("#")[0]: r for r in res if r.get("scenario") == "heap"}
if hp:
    L.append("### What an idle connection's heap is made of (heaptrack)\n")
    L.append("A second pgws on the same database under `heaptrack`, 3,000 idle connections; the largest heap consumers at the "
             "peak, from `heaptrack_print --print-peaks` (allocation site: the first frames outside the standard library). "
             "Heap bytes are allocated sizes; RSS counts only the pages touched, so an 8 KiB buffer of which a few hundred "
             "bytes were written costs less than 8 KiB of RSS.\n")
    for kind, name in (("heap-sse", "Event streams"), ("heap-ws", "Websockets")):
        r = hp.get(kind)
        if not r:
            continue
        L.append(f"{name} (RSS per connection under heaptrack: {fmt(r.get('rss_per_conn_bytes'))} B):\n")
        L.append("| Heap at peak | allocations | per allocation | allocated at |")
        L.append("|---|---|---|---|")
        for s in r.get("sites") or []:
            per = s["bytes"] / s["calls"] if s["calls"] else 0
            L.append(f"| {fmt(s['bytes'] / 1e6, 2)} MB | {s['calls']:,} | {fmt(per)} B | {' <- '.join('`' + a + '`' for a in s['at'][:3])} |")
        L.append("")

L.append("## Exact commands\n")
L.append("Each server: `target/release/pgws --embedded --port 0` with `PGWS_RATE_CONNECTIONS=0 PGWS_RATE_MESSAGES=0 "
         "PGWS_RATE_BYTES=0 PGWS_ADMIN_ADDRESS=127.0.0.1:<free port>` and the variables in brackets (port and connection "
         "string read from its output; `ulimit -n` raised to the hard limit). Each generator run (`$PORT`, `$PGCONN`, `$PID`, "
         "`$ADMIN` from that server):\n")
L.append("```")
L.extend(l.rstrip() for l in open(os.environ["COMMANDS"]))
L.append("```\n")
L.append("Raw JSON lines: `target/bench-streams/results.jsonl` (one per run); human summaries in `target/bench-streams/*.out`.\n")
L.append("## Reading the numbers\n")
L.append("- \"Server CPU per delivery\" is the pgws process's utime+stime (`/proc/<pid>/stat`) over the publishing and drain window divided by the deliveries; its embedded PostgreSQL is listed separately.")
L.append("- Catch-up and storm CPU figures are the sum of `/proc/<pid>/task/*/schedstat` run times (nanoseconds) over the phase, because the phases last tens of milliseconds and `stat` counts 10 ms ticks (the tick figure is shown beside it).")
L.append("- A stormed stream is *live* when it has received, with no hole before it, a message published after it sent its resume request.")
L.append("- RSS is `VmRSS` of the pgws process. Idle RSS per stream is (RSS settled − RSS before connecting) / streams.")
# The hand-written "Observations" section of the previous report survives regeneration.
notes = ""
if os.path.exists(os.environ["OUT"]):
    old = open(os.environ["OUT"]).read()
    at = old.find("\n## Observations")
    if at >= 0:
        notes = old[at:]
open(os.environ["OUT"], "w").write("\n".join(L) + "\n" + notes)
print("wrote", os.environ["OUT"])
PY
