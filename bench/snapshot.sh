#!/usr/bin/env bash
# Benchmark of export and import: provisions an instance, fills its storage with SIZE_MB of
# random data and its database with ROWS rows, then, for each destination — the local
# directory and the S3 server of deploy/setup.sh (moto, 127.0.0.1:9000), each plain and
# encrypted to an age key — exports it there, imports the snapshot as a new instance, and
# prints the time of each and the peak memory (VmHWM, reset before each run through
# /proc/PID/clear_refs) of the worker that ran them. Uses the services deploy/setup.sh
# started, with a RabbitMQ vhost and a registry database of its own, its own dfe-api and a
# single dfe-worker (so the peak belongs to the job), release build. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB="${SIZE_MB:-200}"
ROWS="${ROWS:-100000}"
DESTINATIONS="${DESTINATIONS:-localplain localage s3plain s3age}"
BIN="$PWD/target/release"
RUN_DIR="$PWD/target/dfe-bench"
S3="http://127.0.0.1:${DFE_S3_PORT:-9000}"
export DFE_TOKEN="${DFE_TOKEN:-dfe-local-demo-token}"

deploy/setup.sh >/dev/null
command -v age-keygen >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q age >/dev/null
echo "==> building release binaries"
cargo build --release --workspace --bins --locked 2>&1 | tail -1
deploy/down.sh --quiet
rm -rf "$RUN_DIR/store-plain" "$RUN_DIR/store-age" "$RUN_DIR/work" "$RUN_DIR/key.txt"
mkdir -p "$RUN_DIR/store-plain" "$RUN_DIR/store-age" "$RUN_DIR/work" /var/lib/dfe/snapshots
age-keygen -o "$RUN_DIR/key.txt" 2>/dev/null
RECIPIENT="$(age-keygen -y "$RUN_DIR/key.txt")"
BUCKET="dfe-bench-$RANDOM"
curl -fsS -X PUT "$S3/$BUCKET" >/dev/null || { echo "no S3 server at $S3: run deploy/setup.sh" >&2; exit 1; }
CONFIG="$RUN_DIR/dfe.toml"
s3dest() {   # name, encrypt-to line
    printf '\n[snapshots.destinations.%s]\nkind = "s3"\nendpoint = "%s"\nbucket = "%s"\nprefix = "%s"\naccess-key-id = "bench"\nsecret-access-key = "bench"\n%s\n' \
        "$1" "$S3" "$BUCKET" "$1" "$2"
}
{
    cat deploy/config/dfe.toml
    printf '\n[snapshots.destinations.localplain]\npath = "%s"\n' "$RUN_DIR/store-plain"
    printf '\n[snapshots.destinations.localage]\npath = "%s"\nencrypt-to = ["%s"]\n' "$RUN_DIR/store-age" "$RECIPIENT"
    s3dest s3plain ""
    s3dest s3age "encrypt-to = [\"$RECIPIENT\"]"
} >"$CONFIG"
VHOST=dfe-bench-snapshots
rabbitmqctl -q add_vhost "$VHOST" 2>/dev/null || true
rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*'
PGPASSWORD=dfe psql -qAt -h 127.0.0.1 -U dfe postgres -c "SELECT 1 FROM pg_database WHERE datname = 'dfe_bench_snapshots'" | grep -q 1 \
    || PGPASSWORD=dfe psql -q -h 127.0.0.1 -U dfe postgres -c "CREATE DATABASE dfe_bench_snapshots"
export DFE__AMQP__URL="amqp://guest:guest@127.0.0.1:5672/$VHOST" DFE__API__LISTEN=127.0.0.1:0
export DFE__REGISTRY__URL="postgres://dfe:dfe@127.0.0.1:5432/dfe_bench_snapshots"
export DFE__SNAPSHOTS__IDENTITY_FILE="$RUN_DIR/key.txt" DFE__SNAPSHOTS__WORK_DIR="$RUN_DIR/work"
setsid nohup "$BIN/dfe-api" --config "$CONFIG" >"$RUN_DIR/api.log" 2>&1 </dev/null & API=$!
setsid nohup "$BIN/dfe-worker" --config "$CONFIG" --worker-id bench-worker >"$RUN_DIR/worker.log" 2>&1 </dev/null & WORKER=$!
trap 'kill $API $WORKER 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "consuming" "$RUN_DIR/worker.log" && grep -q "listening on" "$RUN_DIR/api.log" && break; sleep 0.1; done
export DFE_API_URL="$(sed -n 's/^dfe-api listening on //p' "$RUN_DIR/api.log")"

A="bench-src-$RANDOM"
"$BIN/dfe" provision --wait 1 "$A" >/dev/null
echo "==> filling $A: ${SIZE_MB} MB of storage, $ROWS rows"
docker exec "dfe-$A" sh -c "dd if=/dev/urandom of=/storage/blob bs=1M count=$SIZE_MB 2>/dev/null"
PW="$(docker inspect "dfe-$A" --format '{{range .Config.Env}}{{println .}}{{end}}' | sed -n 's/^DB_PASSWORD=//p')"
DB="dfe_${A//-/_}"
PGPASSWORD="$PW" psql -q -h 127.0.0.1 -U "$DB" "$DB" -c \
  "CREATE TABLE rows (id bigint PRIMARY KEY, body text); INSERT INTO rows SELECT g, md5(g::text) || md5((g*7)::text) FROM generate_series(1, $ROWS) g;"
rss() { awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$WORKER/status"; }
reset_peak() { echo 5 >"/proc/$WORKER/clear_refs"; }
elapsed() { awk "BEGIN {printf \"%.2f\", $2 - $1}"; }
echo "worker peak memory at rest: $(rss) MB"

RESULTS=()
for D in $DESTINATIONS; do
    B="bench-dst-$RANDOM"
    reset_peak
    t0=$(date +%s.%N)
    OUT="$("$BIN/dfe" export --wait --destination "$D" "$A")"
    t1=$(date +%s.%N)
    export_peak="$(rss)"
    SNAP="$(echo "$OUT" | awk '$1 == "snapshot-id" {print $2}')"
    SIZE="$(echo "$OUT" | awk '$1 == "size" {print $2}')"
    reset_peak
    t2=$(date +%s.%N)
    "$BIN/dfe" import --wait 1 "$B" "$SNAP" >/dev/null
    t3=$(date +%s.%N)
    import_peak="$(rss)"
    PW="$(docker inspect "dfe-$B" --format '{{range .Config.Env}}{{println .}}{{end}}' | sed -n 's/^DB_PASSWORD=//p')"
    rows="$(PGPASSWORD="$PW" psql -Atq -h 127.0.0.1 -U "dfe_${B//-/_}" "dfe_${B//-/_}" -c 'SELECT count(*) FROM rows')"
    blob="$(docker exec "dfe-$B" du -m /storage/blob | cut -f1)"
    RESULTS+=("$(printf '%-11s %9s s %9s s %8s MB %11s MB %11s MB   %s rows, %s MB blob' "$D" \
        "$(elapsed "$t0" "$t1")" "$(elapsed "$t2" "$t3")" "$((SIZE / 1024 / 1024))" "$export_peak" "$import_peak" "$rows" "$blob")")
    echo "${RESULTS[-1]}"
    "$BIN/dfe" deprovision --wait "$B" >/dev/null
    "$BIN/dfe" snapshots delete "$SNAP" >/dev/null
done

echo
echo "==> $SIZE_MB MB of storage + $ROWS rows, one worker, release build"
printf '%-11s %11s %11s %11s %14s %14s   %s\n' destination export import archive "export peak" "import peak" check
printf '%s\n' "${RESULTS[@]}"
"$BIN/dfe" deprovision --wait "$A" >/dev/null
