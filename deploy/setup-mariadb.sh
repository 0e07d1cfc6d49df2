#!/usr/bin/env bash
# deploy/setup-mariadb.sh - the local MariaDB server for the `mysql` database provisioner
# (Debian bookworm, run as root; deploy/setup.sh calls it after Docker is up).
#
# Installs (if missing) Debian's mariadb-server and mariadb-client and starts, without
# systemd (mysqld_safe in the background, log /var/log/dfe-mariadb.log):
#   MariaDB 10.11 on port 3306, listening on 127.0.0.1 and the docker0 address (so containers
#   reach it), data dir /var/lib/mysql, skip-name-resolve (accounts match by address),
#   max_connections 300, TLS offered with a self-signed certificate made once
#   (/etc/mysql/dfe-tls/), admin user dfe (password dfe) from 127.0.0.1 and 172.16.0.0/12
#   with ALL PRIVILEGES ON *.* WITH GRANT OPTION (create databases and users, grant, kill
#   sessions)
# and checks that the admin logs in over TCP and that a container reaches the server.
# Safe to run again: a second run finds it up and configured and changes nothing.
set -Eeuo pipefail

MARIADB_PORT=3306
ADMIN_USER=dfe
ADMIN_PASSWORD=dfe
CONF=/etc/mysql/mariadb.conf.d/90-dfe.cnf
TLS_DIR=/etc/mysql/dfe-tls
LOG=/var/log/dfe-mariadb.log
IMAGE="dfe/test-instance:latest"
PACKAGES=(mariadb-server mariadb-client)

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

die() { printf 'setup-mariadb.sh: FAILED: %s\n' "$*" >&2; exit 1; }
trap 'printf "setup-mariadb.sh: FAILED: command failed (line %s): %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR
[[ $(id -u) -eq 0 ]] || die "must run as root"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
notes=()
checked=""

missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
    notes+=("installed ${missing[*]}")
fi

DOCKER0_IP="$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1 || true)"
[[ -n $DOCKER0_IP ]] || die "no IPv4 address on the docker0 bridge: start Docker first (deploy/setup.sh does)"
bind="127.0.0.1,$DOCKER0_IP"

# TLS: offered to clients that ask (the provisioner does when the server offers it). A
# self-signed certificate, made once; replace it with one of your CA anywhere but here.
if [[ ! -s $TLS_DIR/server-cert.pem || ! -s $TLS_DIR/server-key.pem ]]; then
    install -d -m 0750 -o root -g mysql "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=dfe-mariadb" \
        -keyout "$TLS_DIR/server-key.pem" -out "$TLS_DIR/server-cert.pem" >/dev/null 2>&1 \
        || die "openssl could not make a certificate in $TLS_DIR"
    chown root:mysql "$TLS_DIR/server-key.pem" "$TLS_DIR/server-cert.pem"
    chmod 0640 "$TLS_DIR/server-key.pem"
    notes+=("TLS certificate made")
fi

conf_want="# Managed by deploy/setup-mariadb.sh (DFE provisioner): reachable from the host and
# from containers on the default Docker bridge; accounts match by address.
[mysqld]
port = $MARIADB_PORT
bind-address = $bind
skip-name-resolve
max_connections = 300
ssl-cert = $TLS_DIR/server-cert.pem
ssl-key = $TLS_DIR/server-key.pem
"
changed=0
if [[ ! -f $CONF || "$(cat "$CONF")"$'\n' != "$conf_want" ]]; then
    printf '%s' "$conf_want" >"$CONF"
    changed=1
    notes+=("wrote $CONF")
fi

# As root over the unix socket (Debian's root@localhost uses unix_socket authentication).
sql() { mariadb --protocol=socket -u root -N -B -e "$1"; }
up() { mariadb-admin --protocol=socket -u root ping >/dev/null 2>&1; }
start() {
    install -d -m 0755 -o mysql -g mysql /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >>"$LOG" 2>&1 \
            || die "mariadb-install-db failed; see $LOG"
        notes+=("data dir /var/lib/mysql initialised")
    fi
    printf '\n==== %s setup-mariadb.sh: mysqld_safe\n' "$(date -u +%FT%TZ)" >>"$LOG"
    setsid nohup mysqld_safe >>"$LOG" 2>&1 </dev/null &
    for ((i = 0; i < 60; i++)); do
        up && return 0
        sleep 1
    done
    tail -n 20 "$LOG" >&2 || true
    die "MariaDB did not come up in 60 s; see $LOG and /var/log/mysql/"
}
stop() {
    mariadb-admin --protocol=socket -u root shutdown >/dev/null 2>&1 || die "mariadb-admin shutdown failed"
    for ((i = 0; i < 60; i++)); do
        up || return 0
        sleep 1
    done
    die "MariaDB did not stop in 60 s"
}

if up; then
    # Settings actually in effect (the server may have been started by hand or by the package).
    effective="$(sql "SELECT CONCAT_WS(' ', @@port, @@bind_address, @@skip_name_resolve, @@have_ssl)")"
    if ((changed)) || [[ $effective != "$MARIADB_PORT $bind ON YES" ]]; then
        stop
        start
        notes+=("restarted (was: $effective)")
    fi
else
    start
    notes+=("started (mysqld_safe)")
fi
effective="$(sql "SELECT CONCAT_WS(' ', @@port, @@bind_address, @@skip_name_resolve, @@have_ssl)")"
[[ $effective == "$MARIADB_PORT $bind ON YES" ]] \
    || die "settings in effect are '$effective', not '$MARIADB_PORT $bind ON YES' (another option file overrides $CONF?)"

# The admin user, from the host and from the Docker networks.
for host in 127.0.0.1 172.16.0.0/255.240.0.0; do
    if [[ -z "$(sql "SELECT 1 FROM mysql.user WHERE User = '$ADMIN_USER' AND Host = '$host'")" ]]; then
        sql "CREATE USER '$ADMIN_USER'@'$host' IDENTIFIED BY '$ADMIN_PASSWORD'"
        notes+=("user $ADMIN_USER@$host created")
    fi
    if ! sql "SHOW GRANTS FOR '$ADMIN_USER'@'$host'" | grep -q '^GRANT ALL PRIVILEGES ON \*\.\* TO .* WITH GRANT OPTION'; then
        sql "GRANT ALL PRIVILEGES ON *.* TO '$ADMIN_USER'@'$host' WITH GRANT OPTION"
        notes+=("$ADMIN_USER@$host granted ALL")
    fi
done
login() { MYSQL_PWD="$ADMIN_PASSWORD" mariadb --protocol=tcp -h 127.0.0.1 -P "$MARIADB_PORT" -u "$ADMIN_USER" \
              --connect-timeout=5 -N -B -e 'SELECT 1' >/dev/null 2>&1; }
if ! login; then   # the user existed with another password
    for host in 127.0.0.1 172.16.0.0/255.240.0.0; do
        sql "ALTER USER '$ADMIN_USER'@'$host' IDENTIFIED BY '$ADMIN_PASSWORD'"
    done
    notes+=("password of $ADMIN_USER reset")
    login || die "cannot log in as $ADMIN_USER over TCP at 127.0.0.1:$MARIADB_PORT"
fi

# From a container: the server's first packet is its handshake (protocol version 10 in the
# fifth byte); an error packet (0xff) means it refuses the bridge network's addresses.
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    probe='nc -w 3 "$1" "$2" </dev/null | head -c 5 | od -An -tx1 | tr -d " \n"'
    reply="$(docker run --rm --entrypoint /bin/sh "$IMAGE" -c "$probe" probe "$DOCKER0_IP" "$MARIADB_PORT" 2>/dev/null || true)"
    case ${reply:8:2} in
        0a) checked=", container -> $DOCKER0_IP:$MARIADB_PORT ok" ;;
        ff) die "MariaDB at $DOCKER0_IP:$MARIADB_PORT refuses containers (reply $reply)" ;;
        *) die "a container cannot reach MariaDB at $DOCKER0_IP:$MARIADB_PORT (reply '$reply')" ;;
    esac
fi

version="$(sql 'SELECT VERSION()')"
((${#notes[@]})) || notes=("already configured and running")
printf '[mariadb] %s: %s (listen %s port %s, admin %s/%s, TLS offered%s)\n' "$version" \
    "$(IFS=,; echo "${notes[*]}" | sed 's/,/, /g')" "$bind" "$MARIADB_PORT" "$ADMIN_USER" "$ADMIN_PASSWORD" "$checked"
