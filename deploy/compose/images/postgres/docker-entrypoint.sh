#!/bin/bash
# Entrypoint of the local postgres:15 stand-in (deploy/compose/build-local-images.sh):
# the part of the official image's docker-entrypoint.sh that compose files rely on.
set -Eeuo pipefail

log() { printf 'docker-entrypoint: %s\n' "$*" >&2; }

if [[ ${1:-} == -* ]]; then set -- postgres "$@"; fi

if [[ ${1:-} != postgres ]]; then exec "$@"; fi

if [[ $(id -u) == 0 ]]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    : "${POSTGRES_USER:=postgres}"
    : "${POSTGRES_DB:=$POSTGRES_USER}"
    : "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
    if [[ -z ${POSTGRES_PASSWORD:-} && $POSTGRES_HOST_AUTH_METHOD != trust ]]; then
        log "the database is uninitialized and POSTGRES_PASSWORD is not set"
        log "set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust, which allows anyone in)"
        exit 1
    fi
    log "initializing $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    # shellcheck disable=SC2086
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" ${POSTGRES_INITDB_ARGS:-} >/dev/null
    rm -f "$pwfile"
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

    # A server on the socket only, for the database and the init scripts.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start >/dev/null
    psql=(psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
    if [[ $POSTGRES_DB != postgres ]]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" -q <<<'CREATE DATABASE :"db";'
    fi
    shopt -s nullglob
    for f in /docker-entrypoint-initdb.d/*; do
        # shellcheck disable=SC1090  # init scripts are the user's
        case $f in
            *.sh)     log "running $f"; if [[ -x $f ]]; then "$f"; else . "$f"; fi ;;
            *.sql)    log "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -q -f "$f" ;;
            *.sql.gz) log "running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" -q ;;
            *)        log "ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    log "initialization complete"
fi

exec "$@"
