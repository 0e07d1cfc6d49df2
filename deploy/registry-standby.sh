#!/usr/bin/env bash
# deploy/registry-standby.sh - a PostgreSQL primary and its streaming standby for the registry,
# beside the main cluster 15/main (Debian's postgresql, run as root, no systemd needed).
#
#   15/dfe-primary   127.0.0.1:5441   data /var/lib/dfe-cluster/postgresql/15/dfe-primary
#   15/dfe-standby   127.0.0.1:5442   data /var/lib/dfe-cluster/postgresql/15/dfe-standby,
#                                     made with pg_basebackup, streaming from dfe-primary
#                                     (replication slot and application_name dfe_standby)
#
# Superuser dfe/dfe and a registry database dfe on both (the standby has what the primary
# has). Replication is synchronous (synchronous_standby_names = 'dfe_standby',
# synchronous_commit = on): a commit the primary acknowledged is on the standby's disk too,
# so a promotion loses no acknowledged write; while the standby is away the primary's
# commits wait for it. DFE_STANDBY_ASYNC=1 at `start` makes it asynchronous instead.
# The main cluster (15/main, port 5432) is never touched.
#
# Usage: deploy/registry-standby.sh COMMAND
#   start                   create and start what is missing (idempotent; quick when all is up)
#   status                  each cluster: running, primary or standby, replication state
#   url [DB]                the registry URL listing both, target_session_attrs=read-write
#   stop-primary [MODE]     stop dfe-primary (pg_ctl MODE: fast, or immediate = a crash)
#   promote                 promote dfe-standby to primary (it stops following dfe-primary)
#   failover [MODE]         stop-primary MODE (default immediate), then promote
#   reset                   after a failover: dfe-primary is the primary again (with what it
#                           held when it stopped) and dfe-standby is rebuilt from it; what was
#                           written to the promoted standby meanwhile is discarded
#   stop                    stop and remove both clusters and their data
set -Eeuo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

V=15
PRIMARY=dfe-primary
STANDBY=dfe-standby
PRIMARY_PORT=5441
STANDBY_PORT=5442
DATA=/var/lib/dfe-cluster/postgresql
SLOT=dfe_standby
ADMIN_USER=dfe
ADMIN_PASSWORD=dfe
REPL_USER=dfe_replication

die() { printf 'registry-standby.sh: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || die "must run as root"

exists()  { pg_lsclusters -h 2>/dev/null | awk -v v="$V" -v c="$1" '$1==v && $2==c {f=1} END {exit !f}'; }
running() { pg_ctlcluster "$V" "$1" status >/dev/null 2>&1; }
port_of() { if [[ $1 == "$PRIMARY" ]]; then echo $PRIMARY_PORT; else echo $STANDBY_PORT; fi; }
psql_on() {   # psql_on CLUSTER SQL: as postgres over the cluster's socket, one value per line
    local c=$1
    shift
    (cd / && runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -p "$(port_of "$c")" -d postgres -c "$@")
}
in_recovery() { [[ "$(psql_on "$1" 'SELECT pg_is_in_recovery()' 2>/dev/null)" == t ]]; }
await_ready() {
    local i
    for ((i = 0; i < 60; i++)); do
        pg_isready -q -h 127.0.0.1 -p "$(port_of "$1")" && return 0
        sleep 0.5
    done
    die "$V/$1 does not accept connections on 127.0.0.1:$(port_of "$1"); see /var/log/postgresql/postgresql-$V-$1.log"
}

write_conf() {   # write_conf CLUSTER: settings of ours, in conf.d (never ALTER SYSTEM: those
                 # would be copied to the standby by pg_basebackup)
    local c=$1 sync=${2:-}
    cat >"/etc/postgresql/$V/$c/conf.d/dfe.conf" <<EOF
# Managed by deploy/registry-standby.sh.
listen_addresses = '127.0.0.1'
max_connections = 300
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
hot_standby = on
wal_sender_timeout = 10s
wal_receiver_timeout = 10s
$sync
EOF
    chown postgres:postgres "/etc/postgresql/$V/$c/conf.d/dfe.conf"
}

sync_settings() {
    if [[ ${DFE_STANDBY_ASYNC:-} == 1 ]]; then
        printf '%s\n' "# asynchronous replication (DFE_STANDBY_ASYNC=1): a promotion may lose the last commits" \
            "synchronous_standby_names = ''"
    else
        printf '%s\n' "# A commit returns once the standby has it on disk." \
            "synchronous_standby_names = '$SLOT'" "synchronous_commit = on"
    fi
}

create_primary() {
    install -d -o postgres -g postgres -m 0700 "$DATA/$V"
    pg_createcluster "$V" "$PRIMARY" -p "$PRIMARY_PORT" -d "$DATA/$V/$PRIMARY" --start-conf=manual \
        -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null \
        || die "pg_createcluster $V $PRIMARY failed"
    # Without the synchronous settings until the standby exists: a synchronous primary
    # alone would wait forever on its first commit.
    write_conf "$PRIMARY"
    pg_ctlcluster "$V" "$PRIMARY" start || die "starting $V/$PRIMARY failed"
    await_ready "$PRIMARY"
    psql_on "$PRIMARY" "CREATE ROLE $ADMIN_USER LOGIN SUPERUSER PASSWORD '$ADMIN_PASSWORD'"
    psql_on "$PRIMARY" "CREATE DATABASE dfe OWNER $ADMIN_USER"
}

create_standby() {
    # The replication role's password is used once, here: pg_basebackup -R writes it into
    # the standby's primary_conninfo (postgresql.auto.conf, readable by postgres alone).
    local repl_password
    repl_password="$(set +o pipefail; tr -dc 'a-zA-Z0-9' </dev/urandom | head -c 32)"
    psql_on "$PRIMARY" "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$REPL_USER') THEN
            CREATE ROLE $REPL_USER LOGIN REPLICATION;
        END IF; END \$\$"
    psql_on "$PRIMARY" "ALTER ROLE $REPL_USER PASSWORD '$repl_password'" >/dev/null
    psql_on "$PRIMARY" "SELECT pg_drop_replication_slot('$SLOT') FROM pg_replication_slots WHERE slot_name = '$SLOT'" >/dev/null
    # An existing standby keeps its configuration and gets new data; a new one is created
    # (its initdb data is replaced by the base backup).
    if exists "$STANDBY"; then
        if running "$STANDBY"; then pg_ctlcluster "$V" "$STANDBY" stop -m immediate; fi
    else
        pg_createcluster "$V" "$STANDBY" -p "$STANDBY_PORT" -d "$DATA/$V/$STANDBY" --start-conf=manual >/dev/null \
            || die "pg_createcluster $V $STANDBY failed"
    fi
    write_conf "$STANDBY"
    rm -rf "${DATA:?}/$V/$STANDBY"
    (cd / && PGPASSWORD="$repl_password" runuser -u postgres -- pg_basebackup -D "$DATA/$V/$STANDBY" \
        -d "host=127.0.0.1 port=$PRIMARY_PORT user=$REPL_USER application_name=$SLOT" \
        -X stream -C -S "$SLOT" -R -c fast) || die "pg_basebackup from $V/$PRIMARY failed"
    pg_ctlcluster "$V" "$STANDBY" start || die "starting $V/$STANDBY failed"
    await_ready "$STANDBY"
}

await_streaming() {
    local i state
    for ((i = 0; i < 60; i++)); do
        state="$(psql_on "$PRIMARY" "SELECT state || ' ' || sync_state FROM pg_stat_replication WHERE application_name = '$SLOT'" 2>/dev/null || true)"
        [[ $state == streaming* ]] && { echo "$state"; return 0; }
        sleep 0.5
    done
    die "$V/$STANDBY does not stream from $V/$PRIMARY; see /var/log/postgresql/postgresql-$V-$STANDBY.log"
}

cmd_start() {
    command -v pg_createcluster >/dev/null || die "pg_createcluster missing: install postgresql (deploy/setup.sh does)"
    local notes=()
    if exists "$STANDBY" && running "$STANDBY" && ! in_recovery "$STANDBY"; then
        die "$V/$STANDBY was promoted and is a primary now: \`deploy/registry-standby.sh reset\` makes a fresh pair (what was written since is discarded)"
    fi
    if ! exists "$PRIMARY"; then
        if exists "$STANDBY"; then pg_dropcluster --stop "$V" "$STANDBY"; fi
        create_primary
        notes+=("$PRIMARY created")
    elif ! running "$PRIMARY"; then
        pg_ctlcluster "$V" "$PRIMARY" start || die "starting $V/$PRIMARY failed"
        notes+=("$PRIMARY started")
    fi
    await_ready "$PRIMARY"
    in_recovery "$PRIMARY" && die "$V/$PRIMARY is in recovery (a standby): \`deploy/registry-standby.sh reset\` makes a fresh pair"
    if ! exists "$STANDBY"; then
        create_standby
        notes+=("$STANDBY made with pg_basebackup")
    elif ! running "$STANDBY"; then
        pg_ctlcluster "$V" "$STANDBY" start || die "starting $V/$STANDBY failed"
        await_ready "$STANDBY"
        notes+=("$STANDBY started")
    fi
    local want
    want="$(sync_settings)"
    if ! grep -qxF "$(tail -n 1 <<<"$want")" "/etc/postgresql/$V/$PRIMARY/conf.d/dfe.conf"; then
        write_conf "$PRIMARY" "$want"
        pg_ctlcluster "$V" "$PRIMARY" reload
        notes+=("replication set to $([[ ${DFE_STANDBY_ASYNC:-} == 1 ]] && echo asynchronous || echo synchronous)")
    fi
    local state
    state="$(await_streaming)"
    ((${#notes[@]})) || notes=("already running")
    say "registry-standby: $(IFS=,; echo "${notes[*]}" | sed 's/,/, /g'); $STANDBY $state ($(cmd_url))"
}

cmd_status() {
    local c rc=0
    for c in "$PRIMARY" "$STANDBY"; do
        if ! exists "$c"; then say "$V/$c: not created"; rc=1; continue; fi
        if ! running "$c"; then say "$V/$c: stopped (port $(port_of "$c"))"; rc=1; continue; fi
        if in_recovery "$c"; then
            say "$V/$c: standby on port $(port_of "$c"), receiving: $(psql_on "$c" "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'no WAL receiver')")"
        else
            say "$V/$c: primary (read-write) on port $(port_of "$c")"
            local reps
            reps="$(psql_on "$c" "SELECT application_name || ' ' || state || ' ' || sync_state FROM pg_stat_replication")"
            [[ -z $reps ]] || say "  replicas: $reps"
        fi
    done
    return $rc
}

cmd_url() {
    echo "postgres://$ADMIN_USER:$ADMIN_PASSWORD@127.0.0.1:$PRIMARY_PORT,127.0.0.1:$STANDBY_PORT/${1:-dfe}?target_session_attrs=read-write&connect_timeout=5"
}

cmd_stop_primary() {
    local mode=${1:-fast}
    [[ $mode == fast || $mode == immediate ]] || die "stop-primary: mode is fast or immediate, not $mode"
    running "$PRIMARY" || { say "$V/$PRIMARY is not running"; return 0; }
    pg_ctlcluster "$V" "$PRIMARY" stop -m "$mode" || die "stopping $V/$PRIMARY failed"
    say "$V/$PRIMARY stopped ($mode)"
}

cmd_promote() {
    running "$STANDBY" || die "$V/$STANDBY is not running"
    in_recovery "$STANDBY" || { say "$V/$STANDBY is a primary already"; return 0; }
    pg_ctlcluster "$V" "$STANDBY" promote || die "promoting $V/$STANDBY failed"
    local i
    for ((i = 0; i < 60; i++)); do
        in_recovery "$STANDBY" || { say "$V/$STANDBY promoted: the primary is 127.0.0.1:$STANDBY_PORT"; return 0; }
        sleep 0.5
    done
    die "$V/$STANDBY did not leave recovery within 30 s"
}

cmd_reset() {   # dfe-primary the primary again, dfe-standby rebuilt from it
    if ! exists "$PRIMARY"; then cmd_start; return; fi
    if running "$PRIMARY" && in_recovery "$PRIMARY"; then
        die "$V/$PRIMARY is a standby: \`deploy/registry-standby.sh stop\` and \`start\` make a fresh pair"
    fi
    # Stopped first: the standby may have been promoted, and two primaries must not run at once.
    if exists "$STANDBY" && running "$STANDBY"; then pg_ctlcluster "$V" "$STANDBY" stop -m immediate; fi
    running "$PRIMARY" || pg_ctlcluster "$V" "$PRIMARY" start || die "starting $V/$PRIMARY failed"
    await_ready "$PRIMARY"
    # Asynchronous while the standby is rebuilt: a synchronous primary without its standby
    # would wait on every commit, the base backup's own included.
    write_conf "$PRIMARY"
    pg_ctlcluster "$V" "$PRIMARY" reload
    create_standby
    cmd_start
}

cmd_stop() {
    local c
    for c in "$STANDBY" "$PRIMARY"; do
        if exists "$c"; then pg_dropcluster --stop "$V" "$c"; fi
    done
    rm -rf "${DATA:?}"
    rmdir /var/lib/dfe-cluster 2>/dev/null || true
    say "registry-standby: both clusters stopped and removed"
}

cmd=${1:-}
shift || true
case $cmd in
    start) cmd_start ;;
    status) cmd_status ;;
    url) cmd_url "$@" ;;
    stop-primary) cmd_stop_primary "$@" ;;
    promote) cmd_promote ;;
    failover) cmd_stop_primary "${1:-immediate}"; cmd_promote ;;
    reset) cmd_reset ;;
    stop) cmd_stop ;;
    *) sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
