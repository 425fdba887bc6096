#!/usr/bin/env bash
# End-to-end test of deploy/nginx.conf: two pgws instances sharing one PostgreSQL behind nginx with
# TLS, real websocket clients, and a check that no log contains the token.
#
#   1. pgws #1 runs with --embedded (a throwaway PostgreSQL); pgws #2 uses that PostgreSQL through
#      PGWS_DB_URI. Both on 127.0.0.1, port 0.
#   2. A self-signed certificate for 127.0.0.1; a copy of deploy/nginx.conf rendered with the test
#      ports, certificate and log paths; nginx started from a temporary prefix.
#   3. A restart storm: pgws #2 is restarted, and STORM (3000) websockets are opened at once through
#      nginx, from 250 client addresses (127.0.1.x); all must open, none may get 429. Both instances
#      run with the documented proxy set-up, PGWS_TRUSTED_PROXIES=127.0.0.1, and with
#      PGWS_RATE_CONNECTIONS_EXEMPT=none so that the loopback client addresses count as public ones
#      (each has its own budget; the rate is lowered to 20/s so that the client's pace exceeds it).
#      A control storm from one client address, as every client was before, must collect 429s.
#   4. A Python websockets client (in a venv in the temporary directory): one reader directly on each
#      instance, two clients through wss://127.0.0.1:<nginx>/chat/<token> (least_conn puts them on
#      different instances); messages sent through nginx must reach every socket on both instances;
#      a bad token gets 400 through nginx; SIGTERM to both instances closes every socket with 1001.
#   5. The nginx access log has the two websocket requests on two different upstreams, with the
#      token redacted; neither nginx's logs nor pgws's stderr contain the token; both pgws exit 0.
#
# Needs root for `apt-get install nginx` when nginx is missing (Debian/Ubuntu), python3 with venv,
# openssl, curl, and PostgreSQL server binaries for --embedded. Uses target/release/pgws, else
# target/debug/pgws, else builds it; PGWS_BIN=/path/to/pgws overrides. Traffic stays on 127.0.0.1.
# Environment: PGWS_BIN, KEEP_TMP=1 (keep the temporary directory), TEST_TIMEOUT (seconds, 300),
# TEST_PYTHON (a python3 that already has `websockets`: skips the venv and pip), STORM (3000: the
# websockets of the restart storm), CONTROL (300: those of the control storm from one address).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEV_SECRET=auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe
TEST_TIMEOUT="${TEST_TIMEOUT:-300}"
STORM="${STORM:-3000}"
CONTROL="${CONTROL:-300}"

log() { printf '[test-nginx] %s\n' "$*"; }
fail() { printf '[test-nginx] FAIL: %s\n' "$*" >&2; exit 1; }

TMP="$(mktemp -d /tmp/pgws-test-nginx.XXXXXX)"
chmod 755 "$TMP"   # nginx workers run unprivileged and must reach their temp paths
PGWS1_PID="" PGWS2_PID="" NGINX_PID="" WATCHDOG_PID=""
STATUS=1

# Stops what this script started, by PID: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
  local pid="$1" _
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  set +e
  [ -n "$WATCHDOG_PID" ] && kill "$WATCHDOG_PID" 2>/dev/null
  stop_pid "$NGINX_PID"
  stop_pid "$PGWS2_PID"
  stop_pid "$PGWS1_PID"
  if [ "$STATUS" -ne 0 ]; then
    for f in pgws1.out pgws1.err pgws2.out pgws2.err nginx-error.log pgws.error.log pgws.access.log \
      storm.log client.log; do
      [ -s "$TMP/$f" ] || continue
      echo "----- $f (last 30 lines)" >&2
      tail -n 30 "$TMP/$f" >&2
    done
  fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then
    log "kept $TMP"
  else
    rm -rf "$TMP"
  fi
  if [ "$STATUS" -eq 0 ]; then log "PASS"; else log "FAILED"; fi
  exit "$STATUS"
}
trap cleanup EXIT
trap 'fail "interrupted or over TEST_TIMEOUT (${TEST_TIMEOUT}s)"' TERM INT

# Whole-run time limit: the watchdog signals this script, whose trap cleans up. (bash runs the
# trap once its current foreground command ends; each of those has its own, shorter limit.)
(
  trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
  sleep "$TEST_TIMEOUT" & sleeper=$!
  wait "$sleeper" && kill -TERM $$ 2>/dev/null
) &
WATCHDOG_PID=$!

# wait_for FILE PATTERN SECONDS [PID]: waits until FILE has a line matching PATTERN (grep -E).
wait_for() {
  local file="$1" pattern="$2" seconds="$3" pid="${4:-}" deadline=$((SECONDS + $3))
  while [ "$SECONDS" -lt "$deadline" ]; do
    grep -Eq -- "$pattern" "$file" 2>/dev/null && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      fail "process $pid exited while waiting for /$pattern/ in $(basename "$file")"
    fi
    sleep 0.2
  done
  fail "timed out after ${seconds}s waiting for /$pattern/ in $(basename "$file")"
}

# wait_exit PID SECONDS: waits for a child of this shell to exit; sets EXIT_CODE.
wait_exit() {
  local pid="$1" deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "process $pid did not exit within $2 s"
    sleep 0.1
  done
  EXIT_CODE=0
  wait "$pid" || EXIT_CODE=$?
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------------------------------------- tools
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    fail "nginx is not installed (and cannot apt-get install it: not root or no apt-get)"
  fi
  log "installing nginx (apt-get)"
  timeout 300 apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq nginx >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
for t in openssl curl python3; do
  command -v "$t" >/dev/null 2>&1 || fail "$t is required"
done

if [ -n "${PGWS_BIN:-}" ]; then
  PGWS="$PGWS_BIN"
elif [ -x "$ROOT/target/release/pgws" ]; then
  PGWS="$ROOT/target/release/pgws"
elif [ -x "$ROOT/target/debug/pgws" ]; then
  PGWS="$ROOT/target/debug/pgws"
else
  log "building pgws (cargo build --release --bin pgws)"
  (cd "$ROOT" && nice -n 10 cargo build --release --locked --bin pgws)
  PGWS="$ROOT/target/release/pgws"
fi
[ -x "$PGWS" ] || fail "no pgws binary at $PGWS"
log "pgws: $PGWS ($("$PGWS" --version 2>/dev/null | head -n 1))"
log "nginx: $("$NGINX" -v 2>&1)"

if [ -n "${TEST_PYTHON:-}" ]; then
  PY="$TEST_PYTHON"
else
  log "creating a venv with websockets in $TMP/venv"
  python3 -m venv "$TMP/venv"
  timeout 300 "$TMP/venv/bin/pip" install -q --disable-pip-version-check websockets \
    || fail "pip install websockets failed"
  PY="$TMP/venv/bin/python"
fi
"$PY" -c 'import websockets' || fail "$PY cannot import websockets"

# The storm: every socket is a descriptor in the client and two in nginx.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
[ "$NOFILE" = unlimited ] || [ "$NOFILE" -ge $((2 * STORM + 1024)) ] \
  || fail "ulimit -n is $NOFILE: a storm of $STORM websockets needs $((2 * STORM + 1024)) (lower STORM)"

# ------------------------------------------------------------------------------------------- pgws x2
export NO_COLOR=1 RUST_LOG=info
# docs/DEPLOYMENT.md's set-up behind a proxy on the same host, with every address limited so that
# the storm's loopback client addresses stand for public ones, and a connection rate (20/s, burst
# 40) below the pace of the Python client over TLS (about 150 handshakes/s on 2 cores), so that the
# limit is reached when it applies.
export PGWS_TRUSTED_PROXIES=127.0.0.1 PGWS_RATE_CONNECTIONS_EXEMPT=none PGWS_RATE_CONNECTIONS=20
log "starting pgws #1 with --embedded"
"$PGWS" --embedded --host 127.0.0.1 --port 0 >"$TMP/pgws1.out" 2>"$TMP/pgws1.err" &
PGWS1_PID=$!
wait_for "$TMP/pgws1.out" '^Development token: ' 90 "$PGWS1_PID"
wait_for "$TMP/pgws1.err" 'listening for notifications' 30 "$PGWS1_PID"
DB_URI="$(sed -n 's/^Embedded PostgreSQL: //p' "$TMP/pgws1.out" | head -n 1)"
PORT1="$(sed -n 's/^Listening on port //p' "$TMP/pgws1.out" | head -n 1)"
TOKEN="$(sed -n 's/^Development token: //p' "$TMP/pgws1.out" | head -n 1)"
EMBEDDED_DIR="$(printf '%s' "$DB_URI" | sed -n 's/^host=\([^ ]*\) .*/\1/p')"
if [ -z "$DB_URI" ] || [ -z "$PORT1" ] || [ -z "$TOKEN" ]; then
  fail "could not read pgws #1's output"
fi
log "pgws #1: port $PORT1, database: $DB_URI"

# pgws #2 on a fixed port, so that it can be restarted behind nginx.
PORT2="$(free_port)"
start_pgws2() {
  PGWS_DB_URI="$DB_URI" PGWS_JWT_SECRET="$DEV_SECRET" \
    "$PGWS" --host 127.0.0.1 --port "$PORT2" >>"$TMP/pgws2.out" 2>>"$TMP/pgws2.err" &
  PGWS2_PID=$!
}
log "starting pgws #2 on the same PostgreSQL"
start_pgws2
wait_for "$TMP/pgws2.out" "^Listening on port $PORT2\$" 30 "$PGWS2_PID"
# The port opens before the LISTEN connection is up: wait for it, or early messages are missed.
wait_for "$TMP/pgws2.err" 'listening for notifications' 30 "$PGWS2_PID"
log "pgws #2: port $PORT2"

# A token signed with another key: refused with 400, and must not be logged either.
HP="${TOKEN%.*}"
BAD_SIG="$(printf '%s' "$HP" | openssl dgst -sha256 -hmac "not-the-secret-not-the-secret-not-the" -binary \
  | openssl base64 -A | tr '+/' '-_' | tr -d '=')"
BAD_TOKEN="$HP.$BAD_SIG"

# ---------------------------------------------------------------------------------------------- nginx
log "generating a self-signed certificate for 127.0.0.1"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=127.0.0.1" \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1 || fail "openssl req failed"

NGX_TLS="$(free_port)"
NGX_HTTP="$(free_port)"
while [ "$NGX_HTTP" = "$NGX_TLS" ]; do NGX_HTTP="$(free_port)"; done
mkdir -p "$TMP/nginx/logs" "$TMP/nginx/temp"
# Render deploy/nginx.conf: only ports, certificate paths, log path and upstream addresses change.
sed -e "s|^\([[:space:]]*\)listen 443 ssl;|\1listen 127.0.0.1:$NGX_TLS ssl;|" \
    -e "s|^\([[:space:]]*\)listen 80;|\1listen 127.0.0.1:$NGX_HTTP;|" \
    -e '/^[[:space:]]*listen \[::\]:/d' \
    -e "s|/etc/ssl/pgws/fullchain.pem|$TMP/cert.pem|" \
    -e "s|/etc/ssl/pgws/privkey.pem|$TMP/key.pem|" \
    -e "s|/var/log/nginx/pgws.access.log|$TMP/pgws.access.log|" \
    -e "s|/var/log/nginx/pgws.error.log|$TMP/pgws.error.log|" \
    -e "s|server 127.0.0.1:3001 |server 127.0.0.1:$PORT1 |" \
    -e "s|server 127.0.0.1:3002 |server 127.0.0.1:$PORT2 |" \
    "$ROOT/deploy/nginx.conf" >"$TMP/nginx/pgws.conf"
# Every substitution must have happened: a change of shape in deploy/nginx.conf fails here.
for want in "listen 127.0.0.1:$NGX_TLS ssl;" "listen 127.0.0.1:$NGX_HTTP;" \
            "ssl_certificate     $TMP/cert.pem;" "ssl_certificate_key $TMP/key.pem;" \
            "server 127.0.0.1:$PORT1 " "server 127.0.0.1:$PORT2 "; do
  grep -qF -- "$want" "$TMP/nginx/pgws.conf" || fail "rendering deploy/nginx.conf: no '$want'"
done
[ "$(grep -cF "access_log $TMP/pgws.access.log pgws_redacted;" "$TMP/nginx/pgws.conf")" = 2 ] \
  || fail "rendering deploy/nginx.conf: expected 2 redacted access_log lines"
[ "$(grep -cF "error_log $TMP/pgws.error.log crit;" "$TMP/nginx/pgws.conf")" = 2 ] \
  || fail "rendering deploy/nginx.conf: expected 2 error_log lines"
if sed 's/#.*//' "$TMP/nginx/pgws.conf" | grep -Eq 'listen (80|443)|/etc/ssl/pgws|/var/log/nginx|:300[12] '; then
  fail "rendering deploy/nginx.conf: a placeholder was left"
fi

cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx-error.log info;
worker_rlimit_nofile $((2 * STORM + 1024));
events { worker_connections $((2 * STORM + 512)); }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/temp/body;
    proxy_temp_path $TMP/nginx/temp/proxy;
    fastcgi_temp_path $TMP/nginx/temp/fastcgi;
    uwsgi_temp_path $TMP/nginx/temp/uwsgi;
    scgi_temp_path $TMP/nginx/temp/scgi;
    include $TMP/nginx/pgws.conf;
}
EOF
"$NGINX" -t -q -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" || fail "nginx -t refused the rendered config"
log "starting nginx: https on 127.0.0.1:$NGX_TLS, http on 127.0.0.1:$NGX_HTTP"
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx.out" 2>&1 &
NGINX_PID=$!
deadline=$((SECONDS + 20))
until curl -s -o /dev/null --max-time 2 --cacert "$TMP/cert.pem" "https://127.0.0.1:$NGX_TLS/"; do
  kill -0 "$NGINX_PID" 2>/dev/null || fail "nginx exited"
  [ "$SECONDS" -lt "$deadline" ] || fail "nginx did not answer within 20 s"
  sleep 0.2
done

# ------------------------------------------------------------------------------------- plain HTTP
log "plain requests through nginx"
body="$(curl -sS --max-time 10 --cacert "$TMP/cert.pem" "https://127.0.0.1:$NGX_TLS/")"
[ -n "$body" ] || fail "GET / through nginx returned nothing"
check="$(curl -sS --max-time 10 --cacert "$TMP/cert.pem" -H 'pgws-check: 1' \
  "https://127.0.0.1:$NGX_TLS/chat/$TOKEN")"
printf '%s' "$check" | grep -q '"mode":"rw"' || fail "pgws-check through nginx: $check"
redirect="$(curl -sS --max-time 10 -o /dev/null -w '%{http_code} %{redirect_url}' \
  "http://127.0.0.1:$NGX_HTTP/chat/$TOKEN")"
case "$redirect" in
  "301 https://127.0.0.1/chat/$TOKEN") ;;
  *) fail "plain http did not redirect to https: $redirect" ;;
esac

# ---------------------------------------------------------------------------------- restart storm
cat >"$TMP/storm.py" <<'PYEOF'
import asyncio, os, ssl, time
from collections import Counter
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

env = os.environ
URL = f"wss://127.0.0.1:{env['NGX_TLS']}/chat/{env['TOKEN']}"
TLS = ssl.create_default_context(cafile=env["CERT"])

async def one(source):
    """Opens a websocket from `source`; returns ("open", ws), (status, None) or (error, None)."""
    try:
        ws = await connect(URL, ssl=TLS, local_addr=(source, 0), open_timeout=60,
                           ping_interval=None, close_timeout=5)
        return "open", ws
    except InvalidStatus as e:
        return e.response.status_code, None
    except Exception as e:  # reported, and failed below
        return f"{type(e).__name__}: {e}", None

async def storm(name, n, source):
    """n websockets at once, kept open until every one is answered; returns the outcomes."""
    t0 = time.monotonic()
    results = await asyncio.gather(*(one(source(i)) for i in range(n)))
    took = time.monotonic() - t0
    outcomes = Counter(str(r) for r, _ in results)
    print(f"[storm] {name}: {n} websockets at once through nginx, answered in {took:.1f} s: "
          f"{dict(outcomes)}", flush=True)
    await asyncio.gather(*(ws.close() for _, ws in results if ws is not None))
    return outcomes

async def main():
    n, control = int(env["STORM"]), int(env["CONTROL"])
    # 250 clients (127.0.1.1-250), as many browsers reconnecting after a restart.
    got = await storm("restart storm from 250 client addresses", n,
                      lambda i: f"127.0.1.{i % 250 + 1}")
    assert got == Counter({"open": n}), f"restart storm: {dict(got)}"
    # Control: the same from one client address is limited (20/s, burst 40), which is what every
    # client behind nginx got before, when pgws saw only nginx's address.
    got = await storm("control from one client address", control, lambda i: "127.0.2.1")
    assert got["429"] > 0 and got["open"] >= 40, f"control: {dict(got)}"
    assert set(got) <= {"open", "429"}, f"control: {dict(got)}"

asyncio.run(main())
PYEOF
log "restarting pgws #2, then a storm of $STORM websockets through nginx"
stop_pid "$PGWS2_PID"
wait_exit "$PGWS2_PID" 30; PGWS2_PID=""
[ "$EXIT_CODE" = 0 ] || fail "pgws #2 exited with $EXIT_CODE after SIGTERM, expected 0"
starts="$(grep -c "^Listening on port $PORT2\$" "$TMP/pgws2.out")"
start_pgws2
deadline=$((SECONDS + 30))
until [ "$(grep -c "^Listening on port $PORT2\$" "$TMP/pgws2.out")" -gt "$starts" ]; do
  kill -0 "$PGWS2_PID" 2>/dev/null || fail "pgws #2 did not start again"
  [ "$SECONDS" -lt "$deadline" ] || fail "pgws #2 did not listen again within 30 s"
  sleep 0.1
done
# No wait for its LISTEN connection: the storm starts with the port, as the clients would.
TOKEN="$TOKEN" NGX_TLS="$NGX_TLS" CERT="$TMP/cert.pem" STORM="$STORM" CONTROL="$CONTROL" \
  timeout 150 "$PY" "$TMP/storm.py" 2>&1 | tee "$TMP/storm.log" || fail "the restart storm failed"
wait_for "$TMP/pgws2.err" 'listening for notifications' 30 "$PGWS2_PID"
# nginx logs a websocket when it closes: wait for the storm's lines, then leave them out of the
# checks of the two clients below.
deadline=$((SECONDS + 30))
until [ "$(grep -Ec '" (101|429) ' "$TMP/pgws.access.log" 2>/dev/null || true)" -ge $((STORM + CONTROL)) ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "nginx did not log the storm's $((STORM + CONTROL)) requests"
  sleep 0.2
done
STORM_LINES="$(wc -l <"$TMP/pgws.access.log")"
log "nginx logged the storm: $(grep -c '" 101 ' "$TMP/pgws.access.log") x 101, $(grep -c '" 429 ' "$TMP/pgws.access.log" || true) x 429 (all from the control)"

# ------------------------------------------------------------------------------------- websockets
cat >"$TMP/client.py" <<'EOF'
import asyncio, json, os, signal, ssl, sys, time
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

env = os.environ
TOKEN, BAD = env["TOKEN"], env["BAD_TOKEN"]
NGX = f"wss://127.0.0.1:{env['NGX_TLS']}"
TLS = ssl.create_default_context(cafile=env["CERT"])   # verifies the certificate and 127.0.0.1
STEP = 10.0  # seconds allowed for each network step

def log(*a):
    print("[client]", *a, flush=True)

async def expect(ws, name, payload):
    """Reads frames from ws until the chat message with `payload` arrives."""
    deadline = time.monotonic() + STEP
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{name}: no message {payload!r} within {STEP}s")
        msg = json.loads(await asyncio.wait_for(ws.recv(), left))
        if msg.get("payload") != payload:
            log(f"{name}: skipping {msg}")
            continue
        assert msg["channel"] == "chat", msg
        assert msg["event"] == "WebsocketMessage", msg
        assert msg["claims"]["mode"] == "rw", msg
        assert isinstance(msg["claims"]["message_delivered_at"], (int, float)), msg
        return

async def main():
    socks = {}
    socks["direct1"] = await connect(f"ws://127.0.0.1:{env['PORT1']}/chat/{TOKEN}", open_timeout=STEP)
    socks["direct2"] = await connect(f"ws://127.0.0.1:{env['PORT2']}/chat/{TOKEN}", open_timeout=STEP)
    # Opened one after the other and both kept open: least_conn sends them to different instances.
    socks["nginxA"] = await connect(f"{NGX}/chat/{TOKEN}", ssl=TLS, open_timeout=STEP)
    socks["nginxB"] = await connect(f"{NGX}/chat/{TOKEN}", ssl=TLS, open_timeout=STEP)
    log("4 sockets open: direct1, direct2, nginxA, nginxB")

    for sender in ("nginxA", "nginxB"):
        payload = f"hello from {sender} {os.getpid()}"
        await socks[sender].send(payload)
        await asyncio.gather(*(expect(ws, name, payload) for name, ws in socks.items()))
        log(f"message from {sender} reached all 4 sockets on both instances")

    try:
        async with connect(f"{NGX}/chat/{BAD}", ssl=TLS, open_timeout=STEP):
            raise AssertionError("a token signed with another key was accepted")
    except InvalidStatus as e:
        status = e.response.status_code
        body = e.response.body.decode(errors="replace")
        assert status == 400 and body.startswith("Error:"), (status, body)
        log(f"bad token refused through nginx: {status} {body!r}")

    # Graceful shutdown: SIGTERM to both instances; every socket, through nginx or not, must get
    # a 1001 close frame. Instance 2 first: instance 1 owns the embedded PostgreSQL.
    os.kill(int(env["PGWS2_PID"]), signal.SIGTERM)
    os.kill(int(env["PGWS1_PID"]), signal.SIGTERM)

    async def closed(name, ws):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
        code = ws.close_code
        assert code == 1001, f"{name}: close code {code} {ws.close_reason!r}, expected 1001"
        return f"{name}={code}"

    codes = await asyncio.wait_for(
        asyncio.gather(*(closed(n, ws) for n, ws in socks.items())), 20)
    log("after SIGTERM: " + ", ".join(codes))

asyncio.run(main())
EOF
log "websocket clients (Python websockets)"
TOKEN="$TOKEN" BAD_TOKEN="$BAD_TOKEN" NGX_TLS="$NGX_TLS" CERT="$TMP/cert.pem" PORT1="$PORT1" \
  PORT2="$PORT2" PGWS1_PID="$PGWS1_PID" PGWS2_PID="$PGWS2_PID" \
  timeout 120 "$PY" "$TMP/client.py" 2>&1 | tee "$TMP/client.log" \
  || fail "websocket client failed"

# ---------------------------------------------------------------------------------- exits and logs
wait_exit "$PGWS2_PID" 30; PGWS2_PID=""
[ "$EXIT_CODE" = 0 ] || fail "pgws #2 exited with $EXIT_CODE after SIGTERM, expected 0"
wait_exit "$PGWS1_PID" 30; PGWS1_PID=""
[ "$EXIT_CODE" = 0 ] || fail "pgws #1 exited with $EXIT_CODE after SIGTERM, expected 0"
log "both pgws exited 0 after SIGTERM"
if [ -n "$EMBEDDED_DIR" ] && [ -e "$EMBEDDED_DIR" ]; then
  fail "the embedded cluster directory $EMBEDDED_DIR is still there"
fi

# Both instances are down now: a websocket request through nginx fails (502), which nginx reports
# in the error log with the request line. The server's error_log level must keep the token out.
code="$(curl -sS --max-time 10 --cacert "$TMP/cert.pem" -o /dev/null -w '%{http_code}' \
  -H 'Upgrade: websocket' -H 'Connection: Upgrade' -H 'Sec-WebSocket-Version: 13' \
  -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "https://127.0.0.1:$NGX_TLS/chat/$TOKEN")"
[ "$code" = 502 ] || fail "with both instances stopped, nginx answered $code, expected 502"
log "with both instances stopped nginx answers 502"

# nginx writes a websocket's access-log line when the connection ends: wait for both.
client_log() { tail -n +"$((STORM_LINES + 1))" "$TMP/pgws.access.log"; }
deadline=$((SECONDS + 15))
until [ "$(client_log | grep -c '" 101 ' || true)" -ge 2 ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "nginx did not log the two websocket requests"
  sleep 0.2
done
log "nginx access log (after the storm):"
client_log | sed 's/^/    /'

upstreams="$(client_log | grep '" 101 ' | sed -n 's/.* upstream=\([^ ]*\) .*/\1/p' | sort -u)"
for port in "$PORT1" "$PORT2"; do
  printf '%s\n' "$upstreams" | grep -qx "127.0.0.1:$port" \
    || fail "no websocket went through nginx to 127.0.0.1:$port (upstreams: ${upstreams//$'\n'/ })"
done
log "the two websockets through nginx went to both instances"
client_log | grep -q '"GET /chat/<redacted> HTTP/1.1" 101 ' \
  || fail "the access log has no redacted websocket request line"
client_log | grep -q '"GET /chat/<redacted> HTTP/1.1" 400 ' \
  || fail "the access log has no redacted refused request (400)"
grep -q '"GET /chat/<redacted> HTTP/1.1" 301 ' "$TMP/pgws.access.log" \
  || fail "the access log has no redacted redirect (301)"

SIG="${TOKEN##*.}"
for f in pgws.access.log pgws.error.log nginx-error.log pgws1.err pgws2.err; do
  [ -e "$TMP/$f" ] || continue
  for secret in "$TOKEN" "$SIG" "$BAD_TOKEN" "$BAD_SIG"; do
    if grep -qF -- "$secret" "$TMP/$f"; then
      fail "$f contains a token (or its signature)"
    fi
  done
done
log "no token in the nginx access log, the nginx error log, or pgws's logs"

stop_pid "$NGINX_PID"; NGINX_PID=""
STATUS=0
