#!/usr/bin/env bash
# Benchmark of export and import (issue: portable instance snapshots): provisions an
# instance, fills its storage with SIZE_MB of random data and its database with ROWS rows,
# exports it, imports the snapshot as a new instance, and prints the time of each and the
# peak memory (VmHWM) of the worker that ran them. Uses the system deploy/up.sh started,
# restarted with a single worker so the peak belongs to the job. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB="${SIZE_MB:-200}"
ROWS="${ROWS:-100000}"
BIN="$PWD/target/release"
RUN_DIR="$PWD/target/dfe-bench"
CONFIG="$PWD/deploy/config/dfe.toml"
export DFE_TOKEN="${DFE_TOKEN:-dfe-local-demo-token}"

deploy/setup.sh >/dev/null
echo "==> building release binaries"
cargo build --release --workspace --bins --locked 2>&1 | tail -1
deploy/down.sh --quiet
mkdir -p "$RUN_DIR" /var/lib/dfe/snapshots
setsid nohup "$BIN/dfe-api" --config "$CONFIG" >"$RUN_DIR/api.log" 2>&1 </dev/null & API=$!
setsid nohup "$BIN/dfe-worker" --config "$CONFIG" --worker-id bench-worker >"$RUN_DIR/worker.log" 2>&1 </dev/null & WORKER=$!
trap 'kill $API $WORKER 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "consuming" "$RUN_DIR/worker.log" && grep -q "listening on" "$RUN_DIR/api.log" && break; sleep 0.1; done
export DFE_API_URL="$(sed -n 's/^dfe-api listening on //p' "$RUN_DIR/api.log")"

A="bench-src-$RANDOM"; B="bench-dst-$RANDOM"
"$BIN/dfe" provision --wait 1 "$A" >/dev/null
echo "==> filling $A: ${SIZE_MB} MB of storage, $ROWS rows"
docker exec "dfe-$A" sh -c "dd if=/dev/urandom of=/storage/blob bs=1M count=$SIZE_MB 2>/dev/null"
PW="$(docker inspect "dfe-$A" --format '{{range .Config.Env}}{{println .}}{{end}}' | sed -n 's/^DB_PASSWORD=//p')"
DB="dfe_${A//-/_}"
PGPASSWORD="$PW" psql -q -h 127.0.0.1 -U "$DB" "$DB" -c \
  "CREATE TABLE rows (id bigint PRIMARY KEY, body text); INSERT INTO rows SELECT g, md5(g::text) || md5((g*7)::text) FROM generate_series(1, $ROWS) g;"
rss() { awk '/VmHWM/ {print $2/1024 " MB"}' "/proc/$WORKER/status"; }
echo "worker peak memory before: $(rss)"

t0=$(date +%s.%N)
OUT="$("$BIN/dfe" export --wait "$A")"
t1=$(date +%s.%N)
SNAP="$(echo "$OUT" | awk '$1 == "snapshot-id" {print $2}')"
SIZE="$(echo "$OUT" | awk '$1 == "size" {print $2}')"
echo "export: $(awk "BEGIN {printf \"%.2f\", $t1 - $t0}") s, archive $((SIZE / 1024 / 1024)) MB, worker peak memory $(rss)"

t0=$(date +%s.%N)
"$BIN/dfe" import --wait 1 "$B" "$SNAP" >/dev/null
t1=$(date +%s.%N)
echo "import (new instance): $(awk "BEGIN {printf \"%.2f\", $t1 - $t0}") s, worker peak memory $(rss)"
PW="$(docker inspect "dfe-$B" --format '{{range .Config.Env}}{{println .}}{{end}}' | sed -n 's/^DB_PASSWORD=//p')"
echo "check: $(PGPASSWORD="$PW" psql -Atq -h 127.0.0.1 -U "dfe_${B//-/_}" "dfe_${B//-/_}" -c 'SELECT count(*) FROM rows') rows, $(docker exec "dfe-$B" du -m /storage/blob | cut -f1) MB blob in $B"

"$BIN/dfe" deprovision --wait "$A" >/dev/null
"$BIN/dfe" deprovision --wait "$B" >/dev/null
rm -f "/var/lib/dfe/snapshots/$SNAP.snapshot.tar.gz"
