#!/usr/bin/env bash
# Brings the whole system up on this machine and shows it doing its main job:
# installs and starts RabbitMQ, PostgreSQL and Docker (deploy/setup.sh), builds the
# binaries, starts dfe-api and two dfe-workers in the background, then provisions a demo
# instance end to end through the REST API, printing the events seen and its resource-uri.
# The api and workers keep running afterwards; deploy/down.sh stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
RUN_DIR="${DFE_RUN_DIR:-$ROOT/target/dfe-run}"
CONFIG="${DFE_CONFIG:-$ROOT/deploy/config/dfe.toml}"
BIN="$ROOT/target/debug"
export DFE_CONFIG="$CONFIG"
export DFE_TOKEN="${DFE_TOKEN:-dfe-local-demo-token}"   # the demo client of deploy/config/dfe.toml

deploy/setup.sh
echo "==> building dfe-api, dfe-worker and dfe"
cargo build --workspace --bins --locked

deploy/down.sh --quiet
mkdir -p "$RUN_DIR" /var/lib/dfe/snapshots

start() { # name, command...
    local name="$1"; shift
    setsid nohup "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
}
wait_for_log() { # name, text, seconds
    for _ in $(seq 1 $(( $3 * 10 ))); do
        grep -q "$2" "$RUN_DIR/$1.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "up.sh: $1 did not start; its log ($RUN_DIR/$1.log):" >&2
    tail -20 "$RUN_DIR/$1.log" >&2
    exit 1
}

echo "==> starting dfe-api and two dfe-workers (logs in $RUN_DIR)"
start dfe-api "$BIN/dfe-api" --config "$CONFIG"
wait_for_log dfe-api "listening on" 30
API_URL="$(sed -n 's/^dfe-api listening on //p' "$RUN_DIR/dfe-api.log" | head -1)"
export DFE_API_URL="$API_URL"
for i in 1 2; do
    start "dfe-worker-$i" "$BIN/dfe-worker" --config "$CONFIG" --worker-id "dfe-worker-$i"
done
for i in 1 2; do wait_for_log "dfe-worker-$i" "consuming dfe.jobs" 60; done

INSTANCE="demo-$(date +%H%M%S)"
echo "==> provisioning demo instance $INSTANCE through $API_URL"
"$BIN/dfe" events >"$RUN_DIR/demo-events.txt" 2>&1 &
EVENTS_PID=$!
sleep 1
status=0
"$BIN/dfe" provision --wait 1 "$INSTANCE" || status=$?
sleep 0.5
kill "$EVENTS_PID" 2>/dev/null || true
wait "$EVENTS_PID" 2>/dev/null || true

echo
echo "==> events seen on dfe.events"
grep -v '^listening' "$RUN_DIR/demo-events.txt" || true
if [[ $status -ne 0 ]]; then
    echo "up.sh: the demo provision failed (exit $status); logs are in $RUN_DIR" >&2
    exit "$status"
fi
URI="$("$BIN/dfe" instances "$INSTANCE" --json | sed -n 's/^  "resource-uri": "\(.*\)",\{0,1\}$/\1/p')"
echo
echo "==> $INSTANCE is provisioned; its resource-uri $URI answers:"
curl -fsS "$URI"
echo
echo
cat <<EOT
The system is up: dfe-api at $API_URL, workers dfe-worker-1 and dfe-worker-2.
Try:
  export DFE_TOKEN=$DFE_TOKEN DFE_API_URL=$API_URL
  $BIN/dfe instances
  $BIN/dfe deprovision --wait $INSTANCE
  $BIN/dfe events            # tail every event
Stop the api and workers with deploy/down.sh.
EOT
