#!/usr/bin/env bash
# Runs the standard benchmark scenarios against a release build of
# `pgws --embedded` with the pgws-bench load generator, and writes
# docs/BENCHMARKS.md (machine info, commit, exact commands, results next to
# their targets).
#
# Environment knobs (all optional):
#   BENCH_REPS=3                 repetitions of each scenario (medians reported)
#   BENCH_STEADY_SECONDS=600     length of the steady-load memory run (10 minutes)
#   BENCH_IDLE_CONNECTIONS=15000 idle connections
#   BENCH_ONLY=idle,fanout,latency,curve,ingest,steady,peers,bridge   scenarios to run
#                                (peers: scripts/bench-peers.sh, the Node ws+pg bridge
#                                measured by the same generator; needs node + npm;
#                                bridge: the same script with the minimal Rust bridge,
#                                bench/examples/min_bridge.rs, BENCH_REPS repetitions of
#                                those of idle, fan-out and latency that BENCH_ONLY names
#                                (all three if none): the limit reference.
#                                BENCH_ONLY=idle,fanout,bridge gives just the
#                                "pgws vs minimal Rust bridge" table)
#   BENCH_OUT=docs/BENCHMARKS.md report path
#   BENCH_WORK=target/bench      raw outputs (server logs, JSON lines)
#   BENCH_SKIP_BUILD=1           use the existing target/release binaries
#   BENCH_REPORT_ONLY=1          only rewrite the report from BENCH_WORK's results
#   BENCH_QUIET_WAIT=300         seconds to wait, before each run, for the
#                                machine to be < 15% busy (shared machine)
#
# Every run is bounded (the generator has its own --max-duration), traffic
# stays on 127.0.0.1, and each server is stopped with SIGTERM afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${BENCH_REPS:-3}
STEADY=${BENCH_STEADY_SECONDS:-600}
IDLE_N=${BENCH_IDLE_CONNECTIONS:-15000}
ONLY=${BENCH_ONLY:-idle,fanout,latency,curve,ingest,steady,peers,bridge}
OUT=${BENCH_OUT:-docs/BENCHMARKS.md}
WORK=${BENCH_WORK:-target/bench}
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
    nice -n 10 cargo build --release -p pgws-bench --example min_bridge
fi

# The server needs one descriptor per socket; 20,000 is this machine's cap.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

SERVER_PID=""
PORT=""
PGCONN=""

# cpu_busy_pct, wait_quiet, stop_pid
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"

# stop_server, start_server NAME [VAR=value ...], run_bench LABEL SCENARIO-ARGS...: bench-lib.sh
trap stop_server EXIT INT TERM

wants() { [[ ",$ONLY," == *",$1,"* ]]; }

# 1. Idle: RSS per idle authenticated connection; a fresh server per repetition.
if wants idle; then
    for r in $(seq 1 "$REPS"); do
        start_server "idle-$r"
        run_bench "idle#$r" idle --connections "$IDLE_N" --source-addrs 16 \
            --connect-concurrency 128 --settle 3 --hold 10
        stop_server
    done
fi

# 2. Fan-out bursts: 1 channel x 5,000 subscribers, 100-byte payloads.
if wants fanout; then
    start_server fanout
    for r in $(seq 1 "$REPS"); do
        run_bench "fanout#$r" fanout --subscribers 5000 --channels 1 --payload 100 \
            --messages 2000 --burst 100 --burst-interval-ms 250 --drain-timeout 60
    done
    stop_server
fi

# 3. Latency: 100 channels x 50 subscribers at 1,000 notifications/s.
if wants latency; then
    start_server latency
    for r in $(seq 1 "$REPS"); do
        run_bench "latency#$r" fanout --subscribers 5000 --channels 100 --payload 100 \
            --rate 1000 --duration 20 --publishers 2
    done
    stop_server
fi

# 3b. Latency against load: the same 100 channels and 1,000 notifications/s with 10, 25 and
# 50 subscribers per channel, to show where the shared CPUs start to queue deliveries.
if wants curve; then
    start_server curve
    for per in 10 25 50; do
        run_bench "curve#$per" fanout --subscribers $((100 * per)) --channels 100 --payload 100 \
            --rate 1000 --duration 20 --publishers 2
    done
    stop_server
fi

# 4. Ingest: 100 writers as fast as possible, arrivals counted by LISTEN.
if wants ingest; then
    start_server ingest
    for r in $(seq 1 "$REPS"); do
        run_bench "ingest#$r" ingest --writers 100 --channels 100 --payload 100 \
            --messages 500000 --drain-timeout 60
    done
    stop_server
fi

# 5. Steady load: memory over time (fan-out at 1,000/s to 5,000 sockets).
if wants steady; then
    start_server steady
    run_bench "steady#1" fanout --subscribers 5000 --channels 100 --payload 100 \
        --rate 1000 --duration "$STEADY" --publishers 2 --rss-interval-ms 1000
    stop_server
fi

# 6. Peers: the same generator against the Node ws+pg bridge, in the same run.
if wants peers; then
    stop_server
    PEERS=node-bridge PEERS_WORK="$WORK/peers" BENCH_IDLE_CONNECTIONS="$IDLE_N" scripts/bench-peers.sh ||
        echo "peer runs failed; the report lists what finished" >&2
fi

# 7. The limit reference: the minimal Rust bridge, as many repetitions as pgws's runs.
if wants bridge; then
    stop_server
    # The scenarios pgws runs in this pass (all three when BENCH_ONLY names none of them).
    BRIDGE_ONLY=""
    for s in idle fanout latency; do
        if wants "$s"; then BRIDGE_ONLY="$BRIDGE_ONLY${BRIDGE_ONLY:+,}$s"; fi
    done
    PEERS=min-bridge PEERS_REPS="$REPS" PEERS_ONLY="${BRIDGE_ONLY:-idle,fanout,latency}" PEERS_WORK="$WORK/bridge" \
        BENCH_IDLE_CONNECTIONS="$IDLE_N" scripts/bench-peers.sh ||
        echo "minimal bridge runs failed; the report lists what finished" >&2
fi

# The commit the runs measured (a report-only pass reuses it: the tree may have changed since).
record_commit
PEERS_RESULTS="$WORK/peers/results.jsonl"
[ -f "$PEERS_RESULTS" ] || PEERS_RESULTS=""
BRIDGE_RESULTS="$WORK/bridge/results.jsonl"
[ -f "$BRIDGE_RESULTS" ] || BRIDGE_RESULTS=""
export COMMIT DIRTY REPS STEADY IDLE_N RESULTS COMMANDS OUT PEERS_RESULTS BRIDGE_RESULTS

python3 - <<'PY'
import json, os, platform, statistics, subprocess, datetime

res = [json.loads(l) for l in open(os.environ["RESULTS"]) if l.strip()]
reps = int(os.environ["REPS"])

def runs(prefix):
    return [r for r in res if r["label"].split("#")[0] == prefix]

def get(r, path):
    for k in path.split("."):
        if r is None:
            return None
        r = r.get(k)
    return r

def med(rs, path):
    v = [get(r, path) for r in rs]
    v = [x for x in v if isinstance(x, (int, float))]
    return statistics.median(v) if v else None

def vals(rs, path, fmt):
    return ", ".join(fmt(get(r, path)) if get(r, path) is not None else "n/a" for r in rs)

def f0(x): return f"{x:,.0f}"
def f2(x): return f"{x:,.2f}"
def f3(x): return f"{x:,.3f}"
def ms(us): return f"{us/1000:,.2f} ms"

cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem_kib = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
nproc = os.cpu_count()
pgws_version = subprocess.run(["target/release/pgws", "--version"], capture_output=True, text=True).stdout.strip()
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

rows = []
def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "**missed**")

idle = runs("idle")
if idle:
    v = med(idle, "rss_per_conn_bytes")
    ok_conns = med(idle, "connect.ok")
    rows.append(("Idle: server RSS per idle authenticated connection at %s connections" % os.environ["IDLE_N"],
                 "<= 4 KiB (4,096 B)", f"{f0(v)} B ({ok_conns:,.0f} connected)" if v is not None else "n/a",
                 "original ~51 KB, pg_eventserv ~28 KB, Node ws+pg ~7.6 KB",
                 verdict(None if v is None else v <= 4096 and ok_conns == int(os.environ["IDLE_N"]))))
fan = runs("fanout")
if fan:
    cpu = med(fan, "server_cpu_per_delivery_us")
    lost = max((get(r, "deliveries.lost") or 0) for r in fan)
    rows.append(("Fan-out: 1 channel x 5,000 subscribers, 100 B, bursts: server CPU per delivery",
                 "<= 1 us", f"{f3(cpu)} us" if cpu is not None else "n/a",
                 "original ~40 us, Node bridge ~14 us", verdict(None if cpu is None else cpu <= 1.0)))
    rows.append(("Fan-out: loss (max over runs)", "0", f0(lost), "", verdict(lost == 0)))
lat = runs("latency")
if lat:
    p50 = med(lat, "latency.p50_us"); p99 = med(lat, "latency.p99_us")
    rows.append(("Latency: 100 ch x 50 subs at 1,000 notif/s, pg_notify -> receipt p50", "<= 1 ms",
                 ms(p50) if p50 is not None else "n/a", "", verdict(None if p50 is None else p50 <= 1000)))
    rows.append(("Latency: same, p99", "<= 5 ms", ms(p99) if p99 is not None else "n/a", "",
                 verdict(None if p99 is None else p99 <= 5000)))
ing = runs("ingest")
if ing:
    rate = med(ing, "msgs_per_s")
    dis = max((get(r, "writers_not_in_order") or 0) for r in ing)
    lost = max((get(r, "arrived.lost") or 0) for r in ing)
    rows.append(("Ingest: client messages/s reaching PostgreSQL from 100 writers", ">= 50,000/s",
                 f"{f0(rate)}/s" if rate is not None else "n/a", "", verdict(None if rate is None else rate >= 50000)))
    rows.append(("Ingest: writers not in order / messages lost (max over runs)", "0 / 0", f"{dis} / {lost}", "",
                 verdict(dis == 0 and lost == 0)))
st = runs("steady")
if st:
    s = st[0]
    slope = get(s, "rss.slope_kib_per_min")
    first, last, peak = get(s, "rss.first_kib"), get(s, "rss.last_kib"), get(s, "rss.peak_kib")
    rows.append((f"Memory over a {os.environ['STEADY']} s steady run (5,000 sockets, 1,000 notif/s)",
                 "flat", f"{first:,} -> {last:,} KiB (peak {peak:,}), trend {slope:+,.0f} KiB/min" if slope is not None else "n/a",
                 "", verdict(None if slope is None else abs(slope) * float(os.environ['STEADY']) / 60 <= max(1024, 0.02 * last))))

L = []
L.append("# Benchmarks\n")
L.append(f"Generated by `scripts/bench.sh` on {now}. Server under test: `{pgws_version or 'pgws'}` "
         f"(`target/release/pgws --embedded`, a fresh throwaway PostgreSQL cluster per scenario), "
         f"commit `{os.environ['COMMIT']}`{' (working tree had uncommitted changes)' if os.environ.get('DIRTY') else ''}. "
         f"Load generator: `target/release/pgws-bench` (crate `bench/`).\n")
L.append("## Machine\n")
L.append(f"- CPUs: {nproc} (`nproc`), model: {cpu_model}")
L.append(f"- Memory: {mem_kib/1024/1024:.1f} GiB")
L.append(f"- Kernel: {platform.release()}")
L.append("- Server, PostgreSQL and load generator all share these CPUs; the machine is shared and noisy. "
         f"Figures are medians of {reps} repetitions unless stated.\n")
L.append("## Results against the targets\n")
L.append("| Scenario | Target | Measured | Peers (published) | Verdict |")
L.append("|---|---|---|---|---|")
for r in rows:
    L.append("| " + " | ".join(r) + " |")
L.append("")

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

peers = []
if os.environ.get("PEERS_RESULTS"):
    peers = [json.loads(l) for l in open(os.environ["PEERS_RESULTS"]) if l.strip()]
if peers:
    def peer_run(kind):
        return [r for r in peers if r["label"].split("#")[0] == "node-bridge/" + kind]
    L.append("## Same generator, same machine: pgws and a Node ws+pg bridge\n")
    L.append("The Node bridge (`bench/peers/node-bridge/bridge.js`, `ws` + `pg`, the ~80-line server a user might "
             "write instead) measured by `scripts/bench-peers.sh` in this run, one repetition per scenario, "
             "on its own throwaway database. Fan-out bursts send 200 notifications to it instead of 2,000 and ingest "
             "100,000 messages instead of 500,000 (the per-delivery and per-second figures do not depend on the count).\n")
    L.append("| Scenario | pgws (median) | Node bridge | Ratio |")
    L.append("|---|---|---|---|")
    def ratio(a, b, higher_better):
        if a is None or b is None or a == 0 or b == 0:
            return "n/a"
        x = (a / b) if higher_better else (b / a)
        return f"pgws {x:,.1f}x better" if x >= 1 else f"Node bridge {1 / x:,.1f}x better"
    pi = peer_run("idle")
    if pi and idle:
        a, b = med(idle, "rss_per_conn_bytes"), med(pi, "rss_per_conn_bytes")
        L.append(f"| Idle RSS per connection | {f0(a)} B | {f0(b)} B ({f0(med(pi, 'connect.ok'))} connected) | {ratio(a, b, False)} |")
    pf = peer_run("fanout")
    if pf and fan:
        a, b = med(fan, "server_cpu_per_delivery_us"), med(pf, "server_cpu_per_delivery_us")
        L.append(f"| Fan-out bursts: server CPU per delivery | {f3(a)} us | {f3(b)} us (lost {f0(max(get(r, 'deliveries.lost') or 0 for r in pf))}) | {ratio(a, b, False)} |")
    pl = peer_run("latency")
    if pl and lat:
        for k, name in (("p50_us", "p50"), ("p99_us", "p99")):
            a, b = med(lat, f"latency.{k}"), med(pl, f"latency.{k}")
            L.append(f"| Latency 100 x 50 at 1,000/s: {name} | {ms(a)} | {ms(b)} | {ratio(a, b, False)} |")
        a, b = med(lat, "server_cpu_per_delivery_us"), med(pl, "server_cpu_per_delivery_us")
        L.append(f"| Latency run: server CPU per delivery | {f2(a)} us | {f2(b)} us | {ratio(a, b, False)} |")
    pg_ = peer_run("ingest")
    if pg_ and ing:
        a, b = med(ing, "msgs_per_s"), med(pg_, "msgs_per_s")
        L.append(f"| Ingest: messages/s reaching PostgreSQL | {f0(a)}/s | {f0(b)}/s (lost {f0(max(get(r, 'arrived.lost') or 0 for r in pg_))}) | {ratio(a, b, True)} |")
    L.append("")

bridge = []
if os.environ.get("BRIDGE_RESULTS"):
    bridge = [json.loads(l) for l in open(os.environ["BRIDGE_RESULTS"]) if l.strip()]
def bridge_run(kind):
    return [r for r in bridge if r["label"].split("#")[0] == "min-bridge/" + kind]
if bridge:
    L.append("## pgws vs minimal Rust bridge\n")
    L.append("The limit reference: `bench/examples/min_bridge.rs` (tokio + tokio-tungstenite + tokio-postgres: one LISTEN "
             "connection, a `tokio::sync::broadcast` per channel carrying the text allocated once, one task per socket "
             "that drains what is ready and flushes once; no auth, no limits, no metrics), measured by "
             "`scripts/bench-peers.sh` in this run with the same commands as pgws, on its own database, "
             "medians of the runs listed below. The ratio is pgws's figure over the bridge's: 1.0x is the least any "
             "Rust server on tokio spends.\n")
    L.append("| Scenario | pgws (median) | minimal bridge (median) | pgws / bridge |")
    L.append("|---|---|---|---|")
    def over(a, b):
        return "n/a" if a is None or b is None or b == 0 else f"{a / b:,.2f}x"
    bf, bi, bl = bridge_run("fanout"), bridge_run("idle"), bridge_run("latency")
    if bf:
        a = med(fan, "server_cpu_per_delivery_us") if fan else None
        b = med(bf, "server_cpu_per_delivery_us")
        lost = max(get(r, "deliveries.lost") or 0 for r in bf)
        L.append(f"| Fan-out bursts (1 x 5,000, 100 B): server CPU per delivery | {f3(a) + ' us' if a is not None else 'n/a'} | "
                 f"{f3(b)} us (lost {f0(lost)}) | **{over(a, b)}** |")
    if bi:
        a = med(idle, "rss_per_conn_bytes") if idle else None
        b = med(bi, "rss_per_conn_bytes")
        L.append(f"| Idle RSS per connection ({os.environ['IDLE_N']} connections) | {f0(a) + ' B' if a is not None else 'n/a'} | "
                 f"{f0(b)} B ({f0(med(bi, 'connect.ok'))} connected) | **{over(a, b)}** |")
    if bl:
        for k, name in (("p50_us", "p50"), ("p99_us", "p99")):
            a = med(lat, f"latency.{k}") if lat else None
            b = med(bl, f"latency.{k}")
            L.append(f"| Latency 100 x 50 at 1,000/s: {name} | {ms(a) if a is not None else 'n/a'} | {ms(b)} | {over(a, b)} |")
        a = med(lat, "server_cpu_per_delivery_us") if lat else None
        b = med(bl, "server_cpu_per_delivery_us")
        L.append(f"| Latency run: server CPU per delivery | {f2(a) + ' us' if a is not None else 'n/a'} | {f2(b)} us | {over(a, b)} |")
    L.append("")
    if bf:
        L.append(f"- Bridge fan-out, server CPU per delivery (us), per run: {vals(bf, 'server_cpu_per_delivery_us', f3)}; "
                 f"generator: {vals(bf, 'generator_cpu_per_delivery_us', f3)}; deliveries/s: {vals(bf, 'deliveries_per_s', f0)}")
        L.extend(usage_lines(bf))
    if bi:
        L.append(f"- Bridge idle RSS per connection (bytes), per run: {vals(bi, 'rss_per_conn_bytes', f0)}; "
                 f"alive at the end: {vals(bi, 'alive', f0)}")
    if bl:
        L.append(f"- Bridge latency p50 / p99 per run: " + "; ".join(
            f"{ms(get(r, 'latency.p50_us'))} / {ms(get(r, 'latency.p99_us'))}" for r in bl)
            + f"; server CPU per delivery (us): {vals(bl, 'server_cpu_per_delivery_us', f2)}")
    L.append("")

L.append("## Details\n")
if idle:
    L.append("### Idle connections\n")
    L.append(f"- RSS per connection (bytes), per run: {vals(idle, 'rss_per_conn_bytes', f0)}; after the hold: {vals(idle, 'rss_per_conn_held_bytes', f0)}")
    L.append(f"- Connected / failed per run: {vals(idle, 'connect.ok', f0)} / {vals(idle, 'connect.failed', f0)}; failures: {[r['connect']['failures'] for r in idle]}")
    L.append(f"- Connections/s: {vals(idle, 'connect.per_s', f0)}")
    L.append(f"- Alive at the end (received a notification): {vals(idle, 'alive', f0)}")
    L.append(f"- Server RSS before / settled (KiB): {vals(idle, 'server_before.rss_kib', f0)} / {vals(idle, 'server_settled.rss_kib', f0)}")
    L.append(f"- Generator RSS per connection (bytes): {vals(idle, 'generator_rss_per_conn_bytes', f0)}")
    L.append("- Kernel socket memory (≈3-4 KB per TCP socket) is not in RSS and not counted.\n")
if fan:
    L.append("### Fan-out bursts\n")
    L.append(f"- Server CPU per delivery (us): {vals(fan, 'server_cpu_per_delivery_us', f3)}")
    L.append(f"- Generator CPU per delivery, including its publishing work (us): {vals(fan, 'generator_cpu_per_delivery_us', f3)}")
    L.append(f"- Expected / delivered / lost / duplicated / out-of-order: " + "; ".join(
        f"{get(r,'deliveries.expected'):,} / {get(r,'deliveries.delivered'):,} / {get(r,'deliveries.lost'):,} / {get(r,'deliveries.duplicated'):,} / {get(r,'deliveries.out_of_order'):,}" for r in fan))
    L.append(f"- Deliveries/s: {vals(fan, 'deliveries_per_s', f0)}")
    L.append(f"- Latency p50 / p99 / max (bursts queue, so this is not the latency target): " + "; ".join(
        f"{ms(get(r,'latency.p50_us'))} / {ms(get(r,'latency.p99_us'))} / {ms(get(r,'latency.max_us'))}" for r in fan))
    L.append(f"- Sockets closed by the server: {[r.get('ended_early') for r in fan]}")
    L.extend(usage_lines(fan)); L.append("")
if lat:
    L.append("### Latency at 1,000 notifications/s\n")
    L.append("- p50 / p90 / p99 / p99.9 / max per run: " + "; ".join(
        " / ".join(ms(get(r, f"latency.{k}")) for k in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]) for r in lat))
    L.append(f"- Lost / duplicated / out-of-order: " + "; ".join(f"{get(r,'deliveries.lost')} / {get(r,'deliveries.duplicated')} / {get(r,'deliveries.out_of_order')}" for r in lat))
    L.append(f"- Publisher max lag behind schedule (ms): {vals(lat, 'publish_max_lag_ms', f2)}")
    L.append(f"- Server CPU per delivery (us): {vals(lat, 'server_cpu_per_delivery_us', f3)}")
    L.extend(usage_lines(lat)); L.append("")
curve = runs("curve")
if curve:
    L.append("### Latency against load (100 channels, 1,000 notifications/s)\n")
    L.append("| Subscribers per channel | Deliveries/s | p50 | p99 | p99.9 | Server CPU per delivery | Generator CPU per delivery | Machine busy |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in curve:
        u = r.get("usage") or {}
        L.append(f"| {r['label'].split('#')[1]} | {f0(get(r,'deliveries_per_s'))} | {ms(get(r,'latency.p50_us'))} | {ms(get(r,'latency.p99_us'))} | "
                 f"{ms(get(r,'latency.p999_us'))} | {f2(get(r,'server_cpu_per_delivery_us'))} us | {f2(get(r,'generator_cpu_per_delivery_us'))} us | "
                 f"{100*u.get('machine_busy', 0):.0f}%{' (disturbed)' if u.get('disturbed') else ''} |")
    L.append("")
if ing:
    L.append("### Ingest\n")
    L.append(f"- Messages/s reaching PostgreSQL: {vals(ing, 'msgs_per_s', f0)}")
    L.append(f"- Client send rate (messages/s written by the writers): {vals(ing, 'send_rate', f0)}")
    L.append(f"- Arrived / expected / lost / duplicated / out-of-order: " + "; ".join(
        f"{get(r,'arrived.delivered'):,} / {get(r,'arrived.expected'):,} / {get(r,'arrived.lost')} / {get(r,'arrived.duplicated')} / {get(r,'arrived.out_of_order')}" for r in ing))
    L.append(f"- Latency send -> LISTEN p50 / p99: " + "; ".join(f"{ms(get(r,'latency.p50_us'))} / {ms(get(r,'latency.p99_us'))}" for r in ing))
    L.append(f"- Server CPU per message (us): {vals(ing, 'server_cpu_per_msg_us', f2)}; error frames: {vals(ing, 'error_frames', f0)}")
    L.extend(usage_lines(ing)); L.append("")
if st:
    s = st[0]
    L.append("### Steady load and memory\n")
    L.append(f"- Duration: {os.environ['STEADY']} s (parameter `BENCH_STEADY_SECONDS`, 600 by default).")
    L.append(f"- Server RSS samples (s, KiB): {get(s,'rss.series')}")
    L.append(f"- Deliveries lost / duplicated / out-of-order: {get(s,'deliveries.lost')} / {get(s,'deliveries.duplicated')} / {get(s,'deliveries.out_of_order')}; latency {ms(get(s,'latency.p50_us'))} p50, {ms(get(s,'latency.p99_us'))} p99")
    L.extend(usage_lines(st)); L.append("")

L.append("## Exact commands\n")
L.append("Each server: `target/release/pgws --embedded --port 0` (port and connection string read from its output; "
         "`ulimit -n` raised to the hard limit). Each generator run (`$PORT`, `$PGCONN`, `$PID` from that server):\n")
L.append("```")
L.extend(l.rstrip() for l in open(os.environ["COMMANDS"]))
L.append("```\n")
if peers:
    pc = os.path.join(os.path.dirname(os.environ["PEERS_RESULTS"]), "commands.txt")
    if os.path.exists(pc):
        L.append("The Node bridge (`scripts/bench-peers.sh`: `node bench/peers/node-bridge/bridge.js` on a database of its own in a `pgws --embedded` cluster; `$PID` is the node process):\n")
        L.append("```")
        L.extend(l.rstrip() for l in open(pc))
        L.append("```\n")
if bridge:
    bc = os.path.join(os.path.dirname(os.environ["BRIDGE_RESULTS"]), "commands.txt")
    if os.path.exists(bc):
        L.append("The minimal Rust bridge (`scripts/bench-peers.sh` with `PEERS=min-bridge`: `target/release/examples/min_bridge 0 \"$PGCONN\"` on a database of its own in a `pgws --embedded` cluster; `$PID` is the bridge process):\n")
        L.append("```")
        L.extend(l.rstrip() for l in open(bc))
        L.append("```\n")
L.append("Raw JSON lines: `target/bench/results.jsonl` (one per run), `target/bench/peers/results.jsonl` and `target/bench/bridge/results.jsonl`; human summaries in `target/bench/*.out`.\n")
L.append("## Reading the numbers\n")
L.append("- CPU figures come from `/proc/<pid>/stat` (utime+stime). \"Server CPU per delivery/message\" is the pgws process only; its embedded PostgreSQL (child processes) is listed separately, and \"other processes\" is the rest of the machine's busy time. RSS is `VmRSS`/`VmHWM` from `/proc/<pid>/status`.")
L.append("- Memory counts as flat when the least-squares RSS trend after the first quarter of the run, extrapolated over the run, is within max(1 MiB, 2% of RSS).")
L.append("- Latency is wall clock from the moment the publisher issues `pg_notify` (timestamp embedded in the payload) to the moment the generator parses the frame.")
L.append("- Before each run the script waits (up to `BENCH_QUIET_WAIT` s) for the machine to be < 15% busy; a run during which other processes used > 10% of the machine is marked `disturbed`.")
L.append("- The generator marks a run `generator saturated` when it used >= 85% of the cores it may use and `machine saturated` when all CPUs were >= 95% busy; such figures are lower bounds for throughput and upper bounds for latency.")
L.append("- The generator's own cost per received frame is 0.2-0.3 us when the server coalesces frames (bursts: many frames per `read`) and 13-15 us when every frame arrives alone (steady low-rate fan-out: one epoll wake-up and one `recv` per frame, which also sends the TCP ACK), about as much as the server spends sending it (see Observations). One publisher connection doing one `pg_notify` per transaction costs the generator about 20 us per notification (tokio-postgres round trip); `--batch N` puts N notifications in one transaction. The generator stays below 0.8 of its 2 threads in these runs, but it shares the 2 CPUs with the server and PostgreSQL, so throughput and latency figures are bounded by the machine, while CPU-per-delivery figures are not.")
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
