# shellcheck shell=bash
# Shared by scripts/bench.sh and scripts/bench-peers.sh (sourced, not run): cpu_busy_pct,
# wait_quiet, stop_pid.

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
