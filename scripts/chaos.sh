#!/usr/bin/env bash
# The chaos run (issue 13): `pgws-bench chaos` in WAL mode, then in NOTIFY mode. Each run starts
# its own PostgreSQL cluster and pgws process, sends numbered messages on many channels to
# websocket and SSE subscribers that resume after every disconnection, injects faults at random
# (subscribers cut, walsender or LISTEN connection killed, PostgreSQL restarted, pgws restarted,
# the network to the database cut), and checks per-channel continuity. Exits non-zero when a
# run finds a violation (WAL: any loss, duplicate or reordering; NOTIFY: a loss without a Gap).
#
#   scripts/chaos.sh                  the long run: 600 s per mode, release build
#   scripts/chaos.sh --ci             the short run of scripts/test: 60 s WAL, 30 s NOTIFY, debug
#
# Knobs (environment): CHAOS_WAL_S, CHAOS_NOTIFY_S (seconds of traffic per mode, 0 skips a mode),
# CHAOS_PROFILE=release|debug, CHAOS_NOTIFY_FAULTS (NOTIFY mode's fault list), CHAOS_ARGS (more pgws-bench chaos flags, e.g. "--rate 400
# --subscribers 40"), CHAOS_SEED, CHAOS_OUT (directory for the outputs, default target/chaos).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--ci" ]; then
    : "${CHAOS_WAL_S:=60}" "${CHAOS_NOTIFY_S:=30}" "${CHAOS_PROFILE:=debug}"
    : "${CHAOS_ARGS:=--channels 8 --subscribers 16 --rate 100 --fault-every 3}"
fi
WAL_S=${CHAOS_WAL_S:-600}
NOTIFY_S=${CHAOS_NOTIFY_S:-600}
PROFILE=${CHAOS_PROFILE:-release}
ARGS=${CHAOS_ARGS:---channels 16 --writer-channels 4 --sql-publishers 3 --subscribers 40 --channels-per-subscriber 3 --rate 200 --fault-every 5}

# Build what runs, and ask cargo where it put it (CARGO_TARGET_DIR, a config file, ...).
build=(cargo build --locked -p pgws -p pgws-bench)
[ "$PROFILE" = release ] && build+=(--release)
"${build[@]}"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BIN="$TARGET_DIR/$PROFILE"
OUT=${CHAOS_OUT:-$TARGET_DIR/chaos}
mkdir -p "$OUT"

status=0
for mode in wal notify; do
    secs=$WAL_S
    [ "$mode" = notify ] && secs=$NOTIFY_S
    [ "$secs" -gt 0 ] || continue
    seed=()
    [ -n "${CHAOS_SEED:-}" ] && seed=(--seed "$CHAOS_SEED")
    [ "$mode" = notify ] && [ -n "${CHAOS_NOTIFY_FAULTS:-}" ] && seed+=(--faults "$CHAOS_NOTIFY_FAULTS")
    echo "== chaos run: $mode mode, $secs s ($PROFILE build)"
    # shellcheck disable=SC2086 # CHAOS_ARGS is a list of flags
    if "$BIN/pgws-bench" --source "$mode" --max-duration $((secs + 600)) --label "$mode" chaos \
        --pgws-bin "$BIN/pgws" --duration "$secs" --log "$OUT/pgws-$mode.log" "${seed[@]}" \
        $ARGS >"$OUT/$mode.out" 2>"$OUT/$mode.err"; then
        grep -v '^{' "$OUT/$mode.out"
    else
        status=1
        echo "chaos run ($mode) FAILED; outputs in $OUT ($mode.out, $mode.err, pgws-$mode.log)" >&2
        cat "$OUT/$mode.out" "$OUT/$mode.err" >&2
    fi
done
exit $status
