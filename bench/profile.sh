#!/bin/bash
# Profiles a noop run: starts `dfe-bench -n N -c 64 -w 1 --via VIA --no-reference` from the
# release build, attaches `perf record -F 999 --call-graph dwarf` to its dfe-api and
# dfe-worker for 6 s once the warm-up is over, and writes to OUT (default /tmp/dfe-profile):
# perf data, folded stacks, flame graphs (inferno: `cargo install inferno`) and shares by crate.
#   bench/profile.sh api 8000      # through REST
#   bench/profile.sh queue 12000   # straight onto dfe.jobs (the api idles: only the worker counts)
set -euo pipefail
VIA=${1:-api}
N=${2:-8000}
OUT=${OUT:-/tmp/dfe-profile}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
target/release/dfe-bench -n "$N" -c 64 -w 1 --via "$VIA" --no-reference > "$OUT/bench-$VIA.txt" 2>&1 &
BENCH=$!
API= WRK=
for _ in $(seq 1 150); do
  API=$(pgrep -P $BENCH -f 'release/dfe-api' | head -1 || true)
  WRK=$(pgrep -P $BENCH -f 'release/dfe-worker' | head -1 || true)
  [ -n "$API" ] && [ -n "$WRK" ] && break
  sleep 0.2
done
[ -n "$API" ] && [ -n "$WRK" ] || { echo "dfe-bench did not start its api and worker" >&2; exit 1; }
sleep 4   # the 100 warm-up jobs
perf record -F 999 --call-graph dwarf,16384 -p "$API" -o "$OUT/api-$VIA.data" -- sleep 6 >/dev/null 2>&1 &
P1=$!
perf record -F 999 --call-graph dwarf,16384 -p "$WRK" -o "$OUT/worker-$VIA.data" -- sleep 6 >/dev/null 2>&1 &
P2=$!
wait $P1 $P2
wait $BENCH
cat "$OUT/bench-$VIA.txt"
for p in api worker; do
  perf script -i "$OUT/$p-$VIA.data" 2>/dev/null | inferno-collapse-perf > "$OUT/$p-$VIA.folded"
  inferno-flamegraph --title "dfe-$p, noop via $VIA" --minwidth 0.2 < "$OUT/$p-$VIA.folded" > "$OUT/$p-$VIA.svg"
  python3 bench/profile-shares.py "$OUT/$p-$VIA.folded"
done
