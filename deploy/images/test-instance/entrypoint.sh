#!/bin/sh
# Entrypoint of dfe/test-instance (see deploy/setup.sh and /work/shared/DESIGN.md).
#   GET /api/v2/system -> 200 {"service":"dfe-test-instance","instance-id":...,"db-database":...,
#                               "db-connection":...}   (DB_CONNECTION: pgsql, mysql, …)
#   GET /healthz       -> 200 ok
# At start it records itself in the storage mount ($DFE_STORAGE_PATH, default /storage):
#   .dfe-instance (instance id + start time, rewritten) and boot.log (one line appended per start).
# DB_PASSWORD is never written anywhere. SIGTERM/SIGINT stop it at once.
set -eu

instance_id="${DFE_INSTANCE_ID:-unknown}"
db_database="${DB_DATABASE:-}"
db_connection="${DB_CONNECTION:-}"
storage="${DFE_STORAGE_PATH:-/storage}"
started_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# JSON string escaping: backslash and double quote; control characters dropped.
json_str() {
    printf '%s' "$1" | tr -d '\000-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'
}

mkdir -p /www/api/v2
printf '{"service":"dfe-test-instance","instance-id":"%s","db-database":"%s","db-connection":"%s"}' \
    "$(json_str "$instance_id")" "$(json_str "$db_database")" "$(json_str "$db_connection")" > /www/api/v2/system
printf 'ok' > /www/healthz

if ! mkdir -p "$storage" \
    || ! printf 'instance-id=%s\nstarted-at=%s\n' "$instance_id" "$started_at" > "$storage/.dfe-instance" \
    || ! printf '%s start instance-id=%s\n' "$started_at" "$instance_id" >> "$storage/boot.log"; then
    echo "dfe-test-instance: cannot write to storage path $storage" >&2
    exit 1
fi

httpd -f -p 80 -h /www &
httpd_pid=$!

stop() {
    kill -TERM "$httpd_pid" 2>/dev/null || true
    wait "$httpd_pid" 2>/dev/null || true
    echo "dfe-test-instance: $instance_id stopped"
    exit 0
}
trap stop TERM INT

echo "dfe-test-instance: $instance_id listening on :80 (storage $storage)"
# wait returns early when a trapped signal arrives; the trap then exits.
set +e
wait "$httpd_pid"
status=$?
echo "dfe-test-instance: httpd exited with status $status" >&2
exit "$status"
