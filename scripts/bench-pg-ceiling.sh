#!/usr/bin/env bash
# What PostgreSQL itself costs per WAL-mode message, without pgws: the CPU time of the backends
# that write `pg_logical_emit_message` (batched as pgws's publisher batches them: one statement of
# BATCH messages per transaction) and of the walsender that decodes them with pgoutput
# (`messages 'true'`), read from the postmaster's reaped-children CPU counters (cutime + cstime of
# /proc/<postmaster>/stat), so the figures are CPU seconds, not wall time, and hold on a busy
# machine. Also the wall-clock rates, which do not.
#
# The ingest ceiling of one machine follows: every ingested message costs emit + decode CPU in
# PostgreSQL before pgws and the load generator spend anything, and one slot is decoded by one
# walsender process (one CPU at most).
#
# Usage: scripts/bench-pg-ceiling.sh [MESSAGES] [PAYLOAD_BYTES] [BATCH]
#   defaults: 512000 messages of 100 bytes, batches of 256. Needs the PostgreSQL 15 server
#   binaries, pgbench and pg_recvlogical; run as root (the cluster runs as the postgres user).
set -euo pipefail
MESSAGES=${1:-512000}
PAYLOAD=${2:-100}
BATCH=${3:-256}
BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DIR=$(mktemp -d /tmp/pgws-pg-ceiling.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chown postgres "$DIR"
cleanup() {
    su postgres -c "$BIN/pg_ctl -D $DIR/data -m immediate stop" >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

su postgres -c "$BIN/initdb -D $DIR/data -A trust" >/dev/null
# The embedded cluster's settings (src/embedded.rs).
su postgres -c "$BIN/pg_ctl -D $DIR/data -l $DIR/log -w -o '-k $DIR -p $PORT -c listen_addresses= \
  -c wal_level=logical -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c wal_writer_delay=10ms -c max_wal_senders=10 -c max_replication_slots=10' start" >/dev/null
PSQL=(psql -h "$DIR" -p "$PORT" -U postgres -d postgres -Atq)
"${PSQL[@]}" -c "SELECT pg_create_logical_replication_slot('ceiling', 'pgoutput')" >/dev/null
"${PSQL[@]}" -c "CREATE PUBLICATION ceiling"

PM=$(head -n1 "$DIR/data/postmaster.pid")
TCK=$(getconf CLK_TCK)
children_cpu() { awk -v t="$TCK" '{ printf "%.3f\n", ($16 + $17) / t }' "/proc/$PM/stat"; }

ROUNDS=$((MESSAGES / BATCH / 2))
echo "SELECT count(pg_logical_emit_message(true, 'p', repeat('x', $PAYLOAD))) FROM generate_series(1, $BATCH);" >"$DIR/emit.sql"
start=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn()")
"${PSQL[@]}" -c "SELECT pg_replication_slot_advance('ceiling', '$start')" >/dev/null

a=$(children_cpu)
t0=$(date +%s.%N)
pgbench -h "$DIR" -p "$PORT" -U postgres -n -f "$DIR/emit.sql" -c 2 -j 2 -t "$ROUNDS" postgres >/dev/null 2>&1
t1=$(date +%s.%N)
b=$(children_cpu)
end=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn()")
sent=$((ROUNDS * 2 * BATCH))

c=$(children_cpu)
t2=$(date +%s.%N)
pg_recvlogical -h "$DIR" -p "$PORT" -U postgres -d postgres -S ceiling --start -E "$end" \
    -o proto_version=1 -o publication_names=ceiling -o messages=true -f /dev/null --no-loop
t3=$(date +%s.%N)
# The walsender's CPU is counted once the postmaster has reaped it.
for _ in $(seq 1 50); do
    [ -z "$("${PSQL[@]}" -c "SELECT 1 FROM pg_stat_replication")" ] && break
    sleep 0.1
done
sleep 0.2
d=$(children_cpu)

python3 - "$sent" "$PAYLOAD" "$BATCH" "$a" "$b" "$c" "$d" "$t0" "$t1" "$t2" "$t3" <<'EOF'
import sys
n, payload, batch = map(int, sys.argv[1:4])
a, b, c, d, t0, t1, t2, t3 = map(float, sys.argv[4:12])
emit, decode = (b - a) / n * 1e6, (d - c) / n * 1e6
print(f"messages: {n} of {payload} B, {batch} per transaction")
print(f"emit:   {emit:.2f} us CPU per message ({n / (t1 - t0):,.0f}/s wall, 2 sessions)")
print(f"decode: {decode:.2f} us CPU per message ({n / (t3 - t2):,.0f}/s wall, one walsender)")
print(f"one slot's decoding ceiling (one CPU): {1e6 / decode:,.0f} messages/s")
print(f"2-CPU ceiling with pgws and the generator costing nothing: "
      f"{min(2e6 / (emit + decode), 1e6 / decode):,.0f} messages/s")
print(f"CPU left per message for pgws + generator at 200,000/s on 2 CPUs: "
      f"{1e6 * 2 / 200000 - emit - decode:.2f} us")
EOF
