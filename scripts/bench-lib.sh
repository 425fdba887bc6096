# shellcheck shell=bash
# Shared by scripts/bench.sh, scripts/bench-v2.sh and scripts/bench-peers.sh (sourced, not run):
# cpu_busy_pct, wait_quiet, stop_pid, and (for scripts that set WORK, SERVER, GEN, RESULTS,
# COMMANDS) stop_server, start_server, run_bench.

# Percentage of all CPUs busy over two seconds.
cpu_busy_pct() {
    local a b c d e f g h t1 i1 t2 i2
    read -r _ a b c d e f g h _ </proc/stat
    t1=$((a + b + c + d + e + f + g + h))
    i1=$((d + e))
    sleep 2
    read -r _ a b c d e f g h _ </proc/stat
    t2=$((a + b + c + d + e + f + g + h))
    i2=$((d + e))
    echo $((100 * ((t2 - t1) - (i2 - i1)) / (t2 - t1 + 1)))
}

# Waits (bounded by BENCH_QUIET_WAIT seconds) until other work on the shared machine has calmed
# down.
wait_quiet() {
    local waited=0 busy
    while [ "$waited" -lt "${BENCH_QUIET_WAIT:-300}" ]; do
        busy=$(cpu_busy_pct)
        if [ "$busy" -lt 15 ]; then
            return 0
        fi
        echo "machine ${busy}% busy; waiting for it to quieten" >&2
        waited=$((waited + 2))
    done
    echo "machine still busy after ${BENCH_QUIET_WAIT:-300} s; running anyway" >&2
}

# stop_pid PID: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "process $pid did not stop within 30 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}
# start_server NAME [VAR=value ...]: starts pgws --embedded on a free port.
start_server() {
    launch_embedded "$@"
}

# launch_embedded NAME [VAR=value ...]: what start_server does (scripts that override
# start_server call it with more variables).
launch_embedded() {
    local name=$1
    shift
    local log="$WORK/server-$name.log"
    # The abuse limits would throttle the load generator itself: off for benchmarks.
    env PGWS_RATE_CONNECTIONS=0 PGWS_RATE_MESSAGES=0 PGWS_RATE_BYTES=0 "$@" \
        "$SERVER" --embedded --port 0 >"$log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        if grep -qs '^Listening on port' "$log" && grep -qs '^Embedded PostgreSQL:' "$log"; then
            break
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "server exited during start-up:" >&2
            cat "$log" >&2
            SERVER_PID=""
            return 1
        fi
        sleep 0.2
    done
    PORT=$(sed -n 's/^Listening on port \([0-9]*\).*/\1/p' "$log" | head -n1)
    PGCONN=$(sed -n 's/^Embedded PostgreSQL: //p' "$log" | head -n1)
    if [ -z "$PORT" ] || [ -z "$PGCONN" ]; then
        echo "server did not report its port and database within 60 s" >&2
        cat "$log" >&2
        return 1
    fi
    echo "server $name: pid $SERVER_PID port $PORT ($*)" >&2
    sleep 1
}


# run_bench LABEL SCENARIO-ARGS...: one generator run; keeps its JSON line.
run_bench() {
    local label=$1
    shift
    wait_quiet
    echo "pgws-bench --port \$PORT --pg \"\$PGCONN\" --server-pid \$PID --label $label $*" >>"$COMMANDS"
    "$GEN" --port "$PORT" --pg "$PGCONN" --server-pid "$SERVER_PID" --label "$label" "$@" \
        >"$WORK/$label.out" 2>"$WORK/$label.err" || {
        echo "generator failed for $label:" >&2
        cat "$WORK/$label.err" >&2
    }
    grep -v '^{' "$WORK/$label.out" >&2 || true
    grep '^{' "$WORK/$label.out" >>"$RESULTS" || true
}

# record_commit: sets COMMIT and DIRTY to what the runs measure, kept in $WORK/commit.txt so that
# a report-only pass (BENCH_REPORT_ONLY) names the commit that was measured, not today's tree.
record_commit() {
    if [ -n "${BENCH_REPORT_ONLY:-}" ] && [ -f "$WORK/commit.txt" ]; then
        { read -r COMMIT; read -r DIRTY || DIRTY=""; } <"$WORK/commit.txt"
    else
        COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "uncommitted")
        DIRTY=$(git status --porcelain 2>/dev/null | head -n1)
        printf '%s\n%s\n' "$COMMIT" "$DIRTY" >"$WORK/commit.txt"
    fi
}
