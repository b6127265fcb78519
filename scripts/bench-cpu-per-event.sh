#!/usr/bin/env bash
# CPU per event of the full pipeline, below saturation: the pipeline phase of `hookgate-bench standard` alone (ingest
# at RATE events/s for SECS seconds with delivery on), and the CPU time PostgreSQL (every process of the local
# server, exited backends included through the postmaster's counters of reaped children), hookgate and Redis spent
# over the whole run, divided by the events ingested. Unlike rates on a saturated box, these figures do not depend on
# queueing; compare builds run alternately on a quiet machine, three runs each.
#
#   scripts/bench-cpu-per-event.sh [HOOKGATE_BIN] [BENCH_BIN]     # RATE=2000 SECS=30 OUT=cpu-per-event.json
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-target}
HOOKGATE_BIN=${1:-$TARGET/release/hookgate}
BENCH_BIN=${2:-$TARGET/release/hookgate-bench}
RATE=${RATE:-2000}
SECS=${SECS:-30}
OUT=${OUT:-cpu-per-event.json}
for bin in "$HOOKGATE_BIN" "$BENCH_BIN"; do
    [ -x "$bin" ] || { echo "$bin not found: cargo build --release -p hookgate -p hookgate-bench" >&2; exit 1; }
done
data_dir=$(psql -h 127.0.0.1 -U postgres -Atc 'SHOW data_directory')
postmaster=$(head -1 "$data_dir/postmaster.pid") # reading it needs the server's user or root
redis=$(pgrep -x redis-server | head -1)

# utime + stime (+ cutime + cstime with $2 = all) of a process, in clock ticks.
ticks() { awk -v all="${2:-}" '{print $14 + $15 + (all ? $16 + $17 : 0)}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_ticks() {
    local t; t=$(ticks "$postmaster" all)
    for child in $(pgrep -P "$postmaster"); do t=$((t + $(ticks "$child"))); done
    echo "$t"
}

pg0=$(pg_ticks); redis0=$(ticks "$redis")
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH_BIN" standard --hookgate-bin "$HOOKGATE_BIN" --delivery-only --sweep 0 --pipeline-rates "$RATE" \
    --pipeline-secs "$SECS" --out "$OUT" &
bench=$!
hookgate_ticks=0
# hookgate is the bench's child: its counters are read until it exits.
while kill -0 "$bench" 2>/dev/null; do
    node=$(pgrep -P "$bench" -f -- "--config .* serve" | head -1 || true)
    if [ -n "$node" ]; then
        now=$(ticks "$node"); [ "$now" -gt 0 ] && hookgate_ticks=$now
    fi
    sleep 0.2
done
wait "$bench"
sleep 1 # the server reaps the bench's backends
pg1=$(pg_ticks); redis1=$(ticks "$redis")

python3 - "$OUT" $((pg1 - pg0)) "$hookgate_ticks" $((redis1 - redis0)) "$(getconf CLK_TCK)" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
phase = out["pipeline"][0]
pg, node, redis, hz = (int(x) for x in sys.argv[2:6])
events = phase["ok"]
per_event = lambda ticks: ticks / hz / events * 1000
print(f"ingested {events}, backlog left {phase['backlog_left']}, "
      f"ingest-to-delivered p99 {phase['delivery_latency']['p99_ms']} ms")
print(f"CPU per event (ms): PostgreSQL {per_event(pg):.3f}, hookgate {per_event(node):.3f}, Redis {per_event(redis):.4f}")
PY
