#!/usr/bin/env bash
# The reference for the real provisioners: what an operator would do by hand for each
# instance, with the same parallelism as the benchmark — docker volume create, psql CREATE
# ROLE and DATABASE (CONNECT revoked from PUBLIC), docker run of dfe/test-instance:latest
# with its port on 127.0.0.1, curl until /api/v2/system answers. Then it removes everything.
#
#   bench/baseline.sh N PARALLEL
#
# Prints one line per instance, `instance NAME volume-ms V database-ms D container-ms C
# health-ms H total-ms T` (container-ms includes the health wait, like the worker's
# instance step), and `elapsed-ms E` for all N.
#
#   KEEP=1 bench/baseline.sh N PARALLEL     keeps what it made (a crowd of N instances to
#                                           measure beside) and prints `kept RUN N`
#   bench/baseline.sh --remove RUN N        removes such a crowd
set -euo pipefail
N="${1:-10}"
PAR="${2:-4}"
PG="${PG_ADMIN_URL:-postgres://dfe:dfe@127.0.0.1:5432/postgres}"
IMAGE="${IMAGE:-dfe/test-instance:latest}"
RUN="base$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"

now_ms() { date +%s%3N; }

one() {
  local name="$RUN-$1" t0 t1 t2 t3 t4 db pw port
  db="dfe_${name//-/_}"
  pw="$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
  t0=$(now_ms)
  docker volume create --label dfe.managed=true "dfe-$name-storage" >/dev/null
  t1=$(now_ms)
  psql "$PG" -qAt -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE ROLE "$db" LOGIN PASSWORD '$pw';
CREATE DATABASE "$db" OWNER "$db";
REVOKE CONNECT ON DATABASE "$db" FROM PUBLIC;
SQL
  t2=$(now_ms)
  docker run -d --name "dfe-$name" --label dfe.managed=true --memory 64m --cpus 0.5 --pids-limit 64 \
    -e DB_CONNECTION=pgsql -e DB_HOST=172.17.0.1 -e DB_PORT=5432 -e DB_DATABASE="$db" \
    -e DB_USERNAME="$db" -e DB_PASSWORD="$pw" -v "dfe-$name-storage:/storage" \
    -p 127.0.0.1::80 "$IMAGE" >/dev/null
  port="$(docker port "dfe-$name" 80/tcp | head -1 | sed 's/.*://')"
  t3=$(now_ms)
  until curl -fsS -o /dev/null "http://127.0.0.1:$port/api/v2/system"; do sleep 0.05; done
  t4=$(now_ms)
  echo "instance $name volume-ms $((t1 - t0)) database-ms $((t2 - t1)) container-ms $((t4 - t2)) health-ms $((t4 - t3)) total-ms $((t4 - t0))"
}

cleanup() {
  for i in $(seq 0 $((N - 1))); do
    local name="$RUN-$i" db
    db="dfe_${name//-/_}"
    docker rm -f "dfe-$name" >/dev/null 2>&1 || true
    docker volume rm -f "dfe-$name-storage" >/dev/null 2>&1 || true
    psql "$PG" -qAt -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    psql "$PG" -qAt -c "DROP ROLE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
  done
}
if [ "${1:-}" = "--remove" ]; then
  RUN="$2" N="$3"
  cleanup
  exit 0
fi
if [ "${KEEP:-}" = 1 ]; then
  trap 'echo "kept $RUN $N"' EXIT
else
  trap cleanup EXIT
fi

export -f one now_ms
export RUN PG IMAGE
start=$(now_ms)
seq 0 $((N - 1)) | xargs -P "$PAR" -I{} bash -c 'one {}'
echo "elapsed-ms $(($(now_ms) - start))"
