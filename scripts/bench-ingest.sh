#!/usr/bin/env bash
# Ingest benchmark: wrk against a release hookgate (one HMAC source, 1 KiB JSON, unique idempotency keys), then,
# in the same run, raw PostgreSQL COPY of the same rows into a table of the same shape, and the ratio of the two.
#
#   scripts/bench-ingest.sh            # defaults: 64 connections, 20 s
#   CONNS=16 DURATION=30s scripts/bench-ingest.sh
#
# Needs wrk, psql and openssl. Uses a scratch database (hookgate_bench), dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
DURATION=${DURATION:-20s}
PORT=${PORT:-18080}
DB=hookgate_bench
ADMIN=${HOOKGATE_ADMIN_PG:-postgres://postgres@127.0.0.1:5432/postgres}
BIN=${CARGO_TARGET_DIR:-target}/release/hookgate
SECRET=bench-secret
work=$(mktemp -d)
PREFIX="hookgate-bench-$$"
cleanup() {
  kill "${HG:-}" 2>/dev/null || true; wait 2>/dev/null || true
  psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
  command -v redis-cli >/dev/null && redis-cli --scan --pattern "$PREFIX:*" | xargs -r -n 1000 redis-cli del >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

. scripts/need-tools.sh
need_tools wrk psql openssl
[ -x "$BIN" ] || cargo build --release

psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
cat > "$work/bench.toml" <<TOML
[server]
port = $PORT
[database]
url = "postgres://postgres@127.0.0.1:5432/$DB?sslmode=disable"
[redis]
key_prefix = "$PREFIX"
dedupe_ttl_secs = 600
[[sources]]
slug = "bench"
require_json = true
idempotency = { from = "header", header = "X-Request-Id" }
verification = { kind = "hmac_sha256", header = "X-Signature", prefix = "sha256=", secret = "$SECRET" }
TOML

# 1 KiB JSON body and its signature.
python3 -c 'import json; d={"type":"bench.event","data":""}; n=1024-len(json.dumps(d,separators=(",",":"))); d["data"]="x"*n; print(json.dumps(d,separators=(",",":")),end="")' > "$work/body.json"
SIGNATURE="sha256=$(openssl dgst -sha256 -hmac "$SECRET" -r < "$work/body.json" | cut -d' ' -f1)"

RUST_LOG=warn "$BIN" --config "$work/bench.toml" serve > "$work/hookgate.log" 2>&1 &
HG=$!
for _ in $(seq 1 100); do curl -fs "localhost:$PORT/readyz" >/dev/null && break; sleep 0.1; done

# Warm-up, then the measured run.
BODY_FILE="$work/body.json" SIGNATURE="$SIGNATURE" RUN_ID=warm wrk -t"$THREADS" -c"$CONNS" -d3s -s scripts/wrk-ingest.lua "http://127.0.0.1:$PORT" >/dev/null
before=$(psql "postgres://postgres@127.0.0.1:5432/$DB" -Atc "SELECT count(*) FROM events")
BODY_FILE="$work/body.json" SIGNATURE="$SIGNATURE" RUN_ID=run wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s scripts/wrk-ingest.lua "http://127.0.0.1:$PORT" | tee "$work/wrk.txt"
rss_kb=$(awk '/VmRSS/{print $2}' /proc/$HG/status)
kill $HG; wait $HG 2>/dev/null || true
after=$(psql "postgres://postgres@127.0.0.1:5432/$DB" -Atc "SELECT count(*) FROM events")
stored=$((after - before))

rps=$(awk '/Requests\/sec/{print $2}' "$work/wrk.txt")
p50=$(awk '$1=="50%"{print $2}' "$work/wrk.txt")
p99=$(awk '$1=="99%"{print $2}' "$work/wrk.txt")
non2xx=$(awk '/Non-2xx/{print $5}' "$work/wrk.txt"); non2xx=${non2xx:-0}

# Baseline: the same rows, COPYed by PostgreSQL itself into a table of the same shape (same unique index).
PG="postgres://postgres@127.0.0.1:5432/$DB"
psql "$PG" -qc "\\copy (SELECT * FROM events) TO '$work/rows.copy'"
psql "$PG" -qc "CREATE TABLE baseline (LIKE events INCLUDING ALL)"
copy_ms=$(psql "$PG" -qAt -c '\timing on' -c "\\copy baseline FROM '$work/rows.copy'" | awk '/Time:/{print $2}')
copy_rows=$after
copy_rps=$(awk -v n="$copy_rows" -v ms="$copy_ms" 'BEGIN{printf "%.0f", n/(ms/1000)}')
ratio=$(awk -v a="$rps" -v b="$copy_rps" 'BEGIN{printf "%.2f", a/b}')

echo
echo "| measure | value |"
echo "|---|---|"
echo "| connections | $CONNS |"
echo "| hookgate ingest (events/s, durable, 202) | $rps |"
echo "| latency p50 / p99 | $p50 / $p99 |"
echo "| non-2xx answers | $non2xx |"
echo "| rows stored in the measured run | $stored |"
echo "| raw PostgreSQL COPY of the same $copy_rows rows (rows/s) | $copy_rps |"
echo "| hookgate / COPY | $ratio |"
echo "| hookgate RSS after the run | $((rss_kb / 1024)) MiB |"
