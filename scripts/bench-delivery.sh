#!/usr/bin/env bash
# Delivery benchmark, three figures from one run:
#   1. the sink's own capacity: wrk straight at the fast receiver (the baseline);
#   2. drain: N events ingested with delivery off, then a node with delivery on empties the backlog (deliveries/s);
#   3. ingest-to-delivered latency (p50/p99) at about 1,000 events/s, from the database's timestamps.
#
#   scripts/bench-delivery.sh                      # defaults: backlog from 5 s of ingest, 20 s latency run
#   INGEST_SECS=10 LATENCY_SECS=30 scripts/bench-delivery.sh
set -euo pipefail
cd "$(dirname "$0")/.."

INGEST_SECS=${INGEST_SECS:-5}
LATENCY_SECS=${LATENCY_SECS:-20}
PORT=${PORT:-18081}
SINK_PORT=${SINK_PORT:-19090}
DB=hookgate_bench_delivery
ADMIN=${HOOKGATE_ADMIN_PG:-postgres://postgres@127.0.0.1:5432/postgres}
PG="postgres://postgres@127.0.0.1:5432/$DB"
TARGET=${CARGO_TARGET_DIR:-target}
SECRET=bench-secret
PREFIX="hookgate-bench-$$"
work=$(mktemp -d)
cleanup() {
  kill "${HG:-}" "${SINK:-}" 2>/dev/null || true; wait 2>/dev/null || true
  psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
  command -v redis-cli >/dev/null && redis-cli --scan --pattern "$PREFIX:*" | xargs -r -n 1000 redis-cli del >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. scripts/need-tools.sh
need_tools wrk psql openssl python3
[ -x "$TARGET/release/hookgate" ] && [ -x "$TARGET/release/hookgate-bench" ] || cargo build --release -p hookgate -p hookgate-bench

psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
cat > "$work/bench.toml" <<TOML
[server]
port = $PORT
[database]
url = "$PG?sslmode=disable"
[redis]
key_prefix = "$PREFIX"
dedupe_ttl_secs = 600
[delivery]
allow_private = ["127.0.0.1/32"]
max_in_flight = 512
[[sources]]
slug = "bench"
require_json = true
idempotency = { from = "header", header = "X-Request-Id" }
verification = { kind = "hmac_sha256", header = "X-Signature", prefix = "sha256=", secret = "$SECRET" }
[[destinations]]
slug = "sink"
url = "http://127.0.0.1:$SINK_PORT/hook"
max_in_flight = 256
signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[[routes]]
slug = "bench-to-sink"
source = "bench"
destination = "sink"
TOML
python3 -c 'import json; d={"type":"bench.event","data":""}; n=1024-len(json.dumps(d,separators=(",",":"))); d["data"]="x"*n; print(json.dumps(d,separators=(",",":")),end="")' > "$work/body.json"
export BODY_FILE="$work/body.json"
export SIGNATURE="sha256=$(openssl dgst -sha256 -hmac "$SECRET" -r < "$work/body.json" | cut -d' ' -f1)"

start_hookgate() { # extra env...
  env "$@" RUST_LOG=warn "$TARGET/release/hookgate" --config "$work/bench.toml" serve >> "$work/hookgate.log" 2>&1 &
  HG=$!
  for _ in $(seq 1 100); do curl -fs "localhost:$PORT/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "bench: hookgate did not start" >&2; cat "$work/hookgate.log" >&2; exit 1
}
stop_hookgate() { kill "$HG"; wait "$HG" 2>/dev/null || true; HG=; }
q() { psql "$PG" -Atc "$1"; }

"$TARGET/release/hookgate-bench" sink --port "$SINK_PORT" > "$work/sink.log" 2>&1 &
SINK=$!
for _ in $(seq 1 50); do curl -fs -X POST "localhost:$SINK_PORT/" >/dev/null && break; sleep 0.1; done

# 1. Baseline: the sink's own capacity, POSTing the same body.
cat > "$work/sink.lua" <<'LUA'
local f = assert(io.open(os.getenv("BODY_FILE"), "rb")); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "application/json"
LUA
sink_rps=$(wrk -t2 -c64 -d5s -s "$work/sink.lua" "http://127.0.0.1:$SINK_PORT/hook" | awk '/Requests\/sec/{printf "%.0f", $2}')

# 2. Drain: a backlog ingested with delivery off, then delivered by one node.
start_hookgate HOOKGATE_DELIVERY__ENABLED=false
RUN_ID=drain wrk -t2 -c64 -d"${INGEST_SECS}s" -s scripts/wrk-ingest.lua "http://127.0.0.1:$PORT" > /dev/null
stop_hookgate
backlog=$(q "SELECT count(*) FROM deliveries WHERE state = 'pending'")
start_hookgate
t0=$(date +%s.%N)
while [ "$(q "SELECT count(*) FROM deliveries WHERE state = 'pending'")" -gt 0 ]; do sleep 0.2; done
t1=$(date +%s.%N)
drain_rps=$(awk -v n="$backlog" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')

# 3. Latency at ~1,000 events/s: 14 connections, each pausing 10 ms between requests.
mark=$(q "SELECT now()")
DELAY_MS=10 RUN_ID=lat wrk -t2 -c14 -d"${LATENCY_SECS}s" -s scripts/wrk-ingest.lua "http://127.0.0.1:$PORT" > "$work/lat.txt"
while [ "$(q "SELECT count(*) FROM deliveries WHERE state = 'pending'")" -gt 0 ]; do sleep 0.2; done
read -r n rate p50 p99 <<<"$(q "
  SELECT count(*), round(count(*) / greatest(extract(epoch FROM max(received_at) - min(received_at)), 1)),
         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)
  FROM (SELECT e.received_at,
               extract(epoch FROM a.started_at - e.received_at) * 1000 + a.latency_ms AS ms
        FROM events e JOIN deliveries d ON d.event_id = e.id JOIN attempts a ON a.delivery_id = d.id
        WHERE e.received_at >= '$mark' AND a.status BETWEEN 200 AND 299) x" | tr '|' ' ')"
stop_hookgate

echo
echo "| measure | value |"
echo "|---|---|"
echo "| sink capacity, wrk straight at it (requests/s) | $sink_rps |"
echo "| drain of $backlog pending deliveries (deliveries/s) | $drain_rps |"
echo "| drain / sink capacity | $(awk -v a="$drain_rps" -v b="$sink_rps" 'BEGIN{printf "%.2f", a/b}') |"
echo "| latency run: events, ingest rate (events/s) | $n, $rate |"
echo "| ingest-to-delivered p50 / p99 (ms) | $p50 / $p99 |"
