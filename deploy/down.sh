#!/usr/bin/env bash
# Stops the dfe-api and dfe-workers that deploy/up.sh started (SIGTERM: running jobs finish
# first). RabbitMQ, PostgreSQL and Docker keep running; instances stay as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${DFE_RUN_DIR:-$PWD/target/dfe-run}"
quiet=false
[[ "${1:-}" == "--quiet" ]] && quiet=true
shopt -s nullglob
for pidfile in "$RUN_DIR"/*.pid; do
    pid="$(cat "$pidfile")"
    name="$(basename "$pidfile" .pid)"
    if kill -0 "$pid" 2>/dev/null; then
        $quiet || echo "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
done
