#!/usr/bin/env bash
# CPU per event of the full pipeline, below saturation: the pipeline phase of `hookgate-bench standard` alone (ingest
# at RATE events/s for SECS seconds with delivery on), and the CPU time PostgreSQL (every process of the local
# server, exited backends included through the postmaster's counters of reaped children), hookgate and Redis spent
# from the phase's start until every event it accepted was delivered, divided by the events ingested. Unlike rates on a saturated box, these figures do not depend on
# queueing; compare builds run alternately on a quiet machine, three runs each.
#
#   scripts/bench-cpu-per-event.sh [HOOKGATE_BIN] [BENCH_BIN]   # default: target/release; RATE=2000 SECS=30 OUT=…
set -euo pipefail
# Paths given are taken from where the script was called; the defaults from the repository.
HOOKGATE_BIN=${1:+$(realpath -m "$1")}
BENCH_BIN=${2:+$(realpath -m "$2")}
OUT=$(realpath -m "${OUT:-cpu-per-event.json}")
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-target}
HOOKGATE_BIN=${HOOKGATE_BIN:-$TARGET/release/hookgate}
BENCH_BIN=${BENCH_BIN:-$TARGET/release/hookgate-bench}
RATE=${RATE:-2000}
SECS=${SECS:-30}
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

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH_BIN" standard --hookgate-bin "$HOOKGATE_BIN" --delivery-only --sweep 0 --pipeline-rates "$RATE" \
    --pipeline-secs "$SECS" --out "$OUT" > "$log" 2>&1 &
bench=$!
# The counters are read when the bench starts the phase and when every event it accepted has been delivered
# (start-up, the database's creation and the receiver's own phase stay out); hookgate is the bench's child.
node_ticks() {
    local node; node=$(pgrep -P "$bench" -f -- "--config .* serve" | head -1 || true)
    if [ -n "$node" ]; then ticks "$node"; else echo 0; fi
}
phase=before
while kill -0 "$bench" 2>/dev/null; do
    if [ $phase = before ] && grep -q 'full pipeline, open loop' "$log"; then
        pg0=$(pg_ticks); redis0=$(ticks "$redis"); node0=$(node_ticks); phase=running
    elif [ $phase = running ] && grep -q 'full pipeline at .* over' "$log"; then
        pg1=$(pg_ticks); redis1=$(ticks "$redis"); node1=$(node_ticks); phase=done
    fi
    sleep 0.1
done
wait "$bench" || { cat "$log"; exit 1; }
[ $phase = done ] || { cat "$log"; echo "the pipeline phase was not seen" >&2; exit 1; }
grep -E '^pipeline at' "$log"

python3 - "$OUT" $((pg1 - pg0)) $((node1 - node0)) $((redis1 - redis0)) "$(getconf CLK_TCK)" <<'PY'
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
