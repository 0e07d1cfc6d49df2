#!/usr/bin/env bash
# deploy/setup-fleet.sh - extra local engines and servers for the fleet tests (Debian bookworm,
# run as root, after deploy/setup.sh, which calls it as its last step).
#
# Starts, without systemd, next to the main engine and the main PostgreSQL cluster (which it
# never stops, restarts or reconfigures):
#   engine a   dockerd on unix:///run/dfe-docker-a.sock and, with TLS and client certificates,
#              tcp://127.0.0.1:23761; bridge dfe-br-a 172.31.1.1/24; data-root /var/lib/dfe-docker-a,
#              exec-root /run/dfe-docker-a, pidfile /run/dfe-docker-a.pid, log /var/log/dfe-dockerd-a.log
#   engine b   dockerd on unix:///run/dfe-docker-b.sock (group dfe-docker); bridge dfe-br-b
#              172.31.2.1/24; /var/lib/dfe-docker-b, /run/dfe-docker-b, ..., /var/log/dfe-dockerd-b.log;
#              reached as ssh://dfe-docker@127.0.0.1:2222
#   sshd       127.0.0.1:2222 only, config /etc/dfe/fleet/ssh/sshd_config, key-only, user dfe-docker
#              alone, DOCKER_HOST=unix:///run/dfe-docker-b.sock forced for its sessions;
#              log /var/log/dfe-fleet-sshd.log
#   postgresql cluster 15/fleet on port 5433 (127.0.0.1 and the docker0 address), superuser dfe/dfe,
#              the same pg_hba rules as 15/main
# and makes (once, kept across --stop):
#   /etc/dfe/fleet/tls/  ca.pem, server-cert.pem, server-key.pem (127.0.0.1, localhost),
#                        client-cert.pem, client-key.pem; other-ca.pem, other-client-cert.pem,
#                        other-client-key.pem (an unrelated CA and a client signed by it)
#   /etc/dfe/fleet/ssh/  id_ed25519 (the client key of dfe-docker), known_hosts (the sshd's host key
#                        for [127.0.0.1]:2222), known_hosts.wrong (another key for [127.0.0.1]:2222),
#                        known_hosts.unknown (no entry for it), ssh_config (client options for
#                        `ssh -F`), bin/ssh (ssh with that config, for the docker CLI's ssh://)
# loads dfe/test-instance:latest from the main engine into both, and checks each engine's HTTP
# publishing on its bridge address, containers on every engine reaching both PostgreSQL ports,
# TLS (and the refusal of the other CA and the other client certificate), SSH (and the refusal
# of a wrong host key and of root), and that docker0 keeps its address.
#
# The extra engines run with --iptables=false: every dockerd with iptables on flushes the shared
# DOCKER and DOCKER-ISOLATION-* chains when it starts (libnetwork's removeIPChains), so an extra
# engine with iptables would wipe the main engine's rules, and each restart of the main engine
# the extra ones'. Without iptables their published ports are served by docker-proxy on the
# bridge address, and containers reach the host's addresses (PostgreSQL on docker0) directly.
# (Containers on different engines cannot reach each other: the host's FORWARD policy is the
# main engine's DROP. The instances need only the host.) They run dockerd under the process
# names dfe-dockerd-a and dfe-dockerd-b, so that `pidof dockerd` finds the main engine alone.
#
# Safe to run again: a second run finds everything up, changes nothing, and re-checks.
#
#   deploy/setup-fleet.sh           start (or check) everything
#   deploy/setup-fleet.sh --stop    stop and remove what it started: both engines with their
#                                   containers, volumes, images and data-roots, their bridges,
#                                   the sshd, the cluster 15/fleet (pg_dropcluster); keeps
#                                   /etc/dfe/fleet and the user dfe-docker
#   deploy/setup-fleet.sh --stop --purge   also removes /etc/dfe/fleet and the user dfe-docker
#
# Environment (optional):
#   DFE_FLEET_DOCKERD_FLAGS   extra flags appended to both extra engines' dockerd command lines
set -Eeuo pipefail

SCRIPT_NAME="setup-fleet.sh"
IMAGE="dfe/test-instance:latest"
FLEET_ETC=/etc/dfe/fleet
TLS_DIR=$FLEET_ETC/tls
SSH_DIR=$FLEET_ETC/ssh
TLS_PORT=23761
SSH_PORT=2222
SSH_USER=dfe-docker
SSH_HOME=/home/dfe-docker
SSHD_CONFIG=$SSH_DIR/sshd_config
SSHD_PIDFILE=/run/dfe-fleet-sshd.pid
SSHD_LOG=/var/log/dfe-fleet-sshd.log
PG_VERSION=15
PG_CLUSTER=fleet
PG_PORT=5433
PG_MAIN_PORT=5432
DB_ADMIN_USER=dfe
DB_ADMIN_PASSWORD=dfe
ENGINES=(a b)
declare -A BRIDGE=([a]=dfe-br-a [b]=dfe-br-b)
declare -A BRIDGE_IP=([a]=172.31.1.1 [b]=172.31.2.1)
# Pools for networks created on the extra engines: inside 172.16.0.0/12 (so pg_hba admits
# them) and apart from each other's and the main engine's usual 172.17-172.30 networks.
declare -A ADDR_POOL=([a]=172.31.64.0/18 [b]=172.31.128.0/18)
PACKAGES=(docker.io postgresql openssh-server openssl busybox-static curl iproute2)

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
unset DOCKER_HOST DOCKER_TLS_VERIFY DOCKER_CERT_PATH DOCKER_CONTEXT

STEP="start"
CLEANUP=()
say()  { printf '%s\n' "$*"; }
step() { STEP="$1"; }
die()  { printf '%s: FAILED in step "%s": %s\n' "$SCRIPT_NAME" "$STEP" "$*" >&2; exit 1; }
on_err() { printf '%s: FAILED in step "%s": command failed (line %s): %s\n' \
               "$SCRIPT_NAME" "$STEP" "$1" "$2" >&2; }
cleanup() { local c; for c in "${CLEANUP[@]}"; do eval "$c" >/dev/null 2>&1 || true; done; }
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR
trap cleanup EXIT
joined() { local out="" x; for x in "$@"; do out+="${out:+, }$x"; done; echo "$out"; }

[[ $(id -u) -eq 0 ]] || { echo "$SCRIPT_NAME: must run as root" >&2; exit 1; }

MODE=start PURGE=0
for arg in "$@"; do
    case $arg in
        --stop) MODE=stop ;;
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,/^set -Eeuo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "$SCRIPT_NAME: unknown argument $arg (use --stop [--purge])" >&2; exit 2 ;;
    esac
done
((PURGE == 0)) || [[ $MODE == stop ]] || { echo "$SCRIPT_NAME: --purge goes with --stop" >&2; exit 2; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
tcp_open() { timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
pid_of() { [[ -s $1 ]] && tr -dc '0-9' <"$1"; return 0; }   # the pid in a pidfile, or nothing

sock()     { echo "/run/dfe-docker-$1.sock"; }
data_root() { echo "/var/lib/dfe-docker-$1"; }
exec_root() { echo "/run/dfe-docker-$1"; }
pidfile()  { echo "/run/dfe-docker-$1.pid"; }
logfile()  { echo "/var/log/dfe-dockerd-$1.log"; }
# Each extra engine runs dockerd through a symlink of its own name, so that its process is
# "dfe-dockerd-<n>": `pidof dockerd` (as the fault tests use to stop the main engine) and the
# like still find the main engine alone.
LIBEXEC=/usr/local/libexec/dfe-fleet
engine_bin() { echo "$LIBEXEC/dfe-dockerd-$1"; }
edocker()  { local n=$1; shift; docker -H "unix://$(sock "$n")" "$@"; }
engine_up() { timeout 5 docker -H "unix://$(sock "$1")" version -f '{{.Server.Version}}' >/dev/null 2>&1; }
docker0_ip() { ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1 || true; }

# The dockerd command line of engine $1 (without argv[0]), in ENGINE_ARGS.
engine_args() {
    local n=$1
    ENGINE_ARGS=(
        --config-file "$FLEET_ETC/dockerd-$n.json"
        --data-root "$(data_root "$n")" --exec-root "$(exec_root "$n")" --pidfile "$(pidfile "$n")"
        --containerd-namespace "dfe-docker-$n" --containerd-plugins-namespace "dfe-docker-$n-plugins"
        -H "unix://$(sock "$n")"
        --bridge "${BRIDGE[$n]}" --ip "${BRIDGE_IP[$n]}"
        --default-address-pool "base=${ADDR_POOL[$n]},size=24"
        --iptables=false --ip6tables=false --ip-masq=false
        --storage-driver "$STORAGE_DRIVER"
    )
    case $n in
        a) ENGINE_ARGS+=(-H "tcp://127.0.0.1:$TLS_PORT" --tlsverify --tlscacert "$TLS_DIR/ca.pem"
                         --tlscert "$TLS_DIR/server-cert.pem" --tlskey "$TLS_DIR/server-key.pem") ;;
        b) ENGINE_ARGS+=(--group "$SSH_USER") ;;
    esac
    if [[ -n ${DFE_FLEET_DOCKERD_FLAGS:-} ]]; then
        # shellcheck disable=SC2206
        ENGINE_ARGS+=($DFE_FLEET_DOCKERD_FLAGS)
    fi
}

# True when engine $1 runs with exactly the command line engine_args gives.
engine_current() {
    local n=$1 pid
    pid="$(pid_of "$(pidfile "$n")")"
    pid_alive "$pid" || return 1
    engine_args "$n"
    [[ "$(tr '\0' '\n' <"/proc/$pid/cmdline")" == "$(printf '%s\n' "$(engine_bin "$n")" "${ENGINE_ARGS[@]}")" ]] || return 1
    [[ "$(readlink "$(engine_bin "$n")")" == "$(command -v dockerd)" ]] || return 1
    engine_up "$n"
}

# Stops engine $1 (its own dockerd only: the pid in its pidfile, checked to be a dockerd with
# its data-root) and unmounts what it may have left mounted. $2=purge also removes every
# container and volume first and then its data-root and exec-root.
stop_engine() {
    local n=$1 purge=${2:-} pid i m cpid
    pid="$(pid_of "$(pidfile "$n")")"
    if pid_alive "$pid" && tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qx -- "$(data_root "$n")"; then
        if [[ $purge == purge ]] && engine_up "$n"; then
            local ids
            ids="$(edocker "$n" ps -aq 2>/dev/null || true)"
            # shellcheck disable=SC2086
            [[ -z $ids ]] || timeout 60 docker -H "unix://$(sock "$n")" rm -f -v $ids >/dev/null 2>&1 || true
            timeout 60 docker -H "unix://$(sock "$n")" volume prune -f >/dev/null 2>&1 || true
        fi
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 60; i++)); do pid_alive "$pid" || break; sleep 0.5; done
        if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; sleep 1; fi
    fi
    # Its own containerd (supervised by dockerd under the exec-root) and shims, if left over.
    for cpid in $(pgrep -f -- "$(exec_root "$n")/containerd" || true); do
        kill -TERM "$cpid" 2>/dev/null || true
    done
    # dockerd bind-mounts its data-root onto itself (mount propagation) and leaves that, and
    # after an unclean stop also overlay and netns mounts, behind: deepest first.
    for ((i = 0; i < 10; i++)); do
        m="$(findmnt -rn -o TARGET | grep -E "^($(data_root "$n")|$(exec_root "$n"))(/|$)" | sort -r || true)"
        [[ -n $m ]] || break
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done <<<"$m"
    done
    rm -f "$(pidfile "$n")" "$(sock "$n")"
    if [[ $purge == purge ]]; then
        rm -rf --one-file-system "$(data_root "$n")" "$(exec_root "$n")"
    fi
}

sshd_pid() {   # the pid of this script's sshd, or nothing
    local pid
    pid="$(pid_of "$SSHD_PIDFILE")"
    pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$SSHD_CONFIG" && echo "$pid"
    return 0
}

pg_cluster_exists() {
    pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {f=1} END {exit !f}'
}

# =======================================================================================
if [[ $MODE == stop ]]; then
    notes=()
    step "stop engines"
    stopping=()
    for n in "${ENGINES[@]}"; do   # both at once
        if [[ -e $(pidfile "$n") || -d $(data_root "$n") || -d $(exec_root "$n") ]]; then
            stop_engine "$n" purge &
            stopping+=("$!")
            notes+=("engine $n stopped, its data-root removed")
        fi
    done
    for pid in "${stopping[@]}"; do wait "$pid" || die "stopping an engine failed"; done
    for n in "${ENGINES[@]}"; do
        if ip link show "${BRIDGE[$n]}" >/dev/null 2>&1; then
            ip link del "${BRIDGE[$n]}" && notes+=("bridge ${BRIDGE[$n]} removed")
        fi
    done
    step "stop sshd"
    pid="$(sshd_pid)"
    if [[ -n $pid ]]; then
        kill -TERM "$pid"
        for ((i = 0; i < 20; i++)); do pid_alive "$pid" || break; sleep 0.25; done
        notes+=("sshd stopped")
    fi
    rm -f "$SSHD_PIDFILE"
    step "drop postgresql $PG_VERSION/$PG_CLUSTER"
    if command -v pg_lsclusters >/dev/null && pg_cluster_exists; then
        pg_dropcluster "$PG_VERSION" "$PG_CLUSTER" --stop || die "pg_dropcluster $PG_VERSION $PG_CLUSTER --stop failed"
        rm -rf "/etc/postgresql/$PG_VERSION/$PG_CLUSTER"   # pg_dropcluster leaves conf.d/dfe.conf behind
        notes+=("cluster $PG_VERSION/$PG_CLUSTER dropped")
    fi
    if ((PURGE)); then
        step "purge"
        if [[ -d $FLEET_ETC ]]; then rm -rf "$FLEET_ETC"; notes+=("$FLEET_ETC removed"); fi
        rm -rf "$LIBEXEC"
        if id "$SSH_USER" >/dev/null 2>&1; then
            userdel -r "$SSH_USER" 2>/dev/null || userdel "$SSH_USER"
            notes+=("user $SSH_USER removed")
        fi
        if getent group "$SSH_USER" >/dev/null; then groupdel "$SSH_USER" || true; fi
    fi
    ((${#notes[@]})) || notes=("nothing was running")
    say "OK: stopped: $(joined "${notes[@]}")"
    exit 0
fi

# =======================================================================================
T0=$SECONDS
step "1/8 packages"
missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
    say "[1/8] packages: installing ${missing[*]}"
    # Only this script's sshd may run: keep the package's own ssh service from starting.
    policy_made=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
        policy_made=1
        CLEANUP+=("rm -f /usr/sbin/policy-rc.d")
    fi
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
    ((policy_made == 0)) || rm -f /usr/sbin/policy-rc.d
else
    say "[1/8] packages: all present (${PACKAGES[*]})"
fi

# ---------------------------------------------------------------------------------------
step "2/8 main services"
timeout 10 docker info >/dev/null 2>&1 || die "the main Docker engine does not answer on /var/run/docker.sock; run deploy/setup.sh"
DOCKER0_IP="$(docker0_ip)"
[[ -n $DOCKER0_IP ]] || die "no IPv4 address on docker0 (the main engine's bridge); run deploy/setup.sh"
STORAGE_DRIVER="$(docker info -f '{{.Driver}}')"
IMAGE_ID="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null)" \
    || die "the main engine has no $IMAGE; run deploy/setup.sh (it builds it)"
pg_isready -q -h 127.0.0.1 -p "$PG_MAIN_PORT" || die "the main PostgreSQL cluster does not answer on 127.0.0.1:$PG_MAIN_PORT; run deploy/setup.sh"
say "[2/8] main services: engine up (docker0 $DOCKER0_IP, storage $STORAGE_DRIVER), $IMAGE ${IMAGE_ID:7:12}, postgresql :$PG_MAIN_PORT up"

# ---------------------------------------------------------------------------------------
step "3/8 tls certificates"
mkdir -p "$TLS_DIR"
chmod 0755 "$FLEET_ETC" "$TLS_DIR"
tls_ok() {
    local f
    for f in ca.pem ca-key.pem server-cert.pem server-key.pem client-cert.pem client-key.pem \
             other-ca.pem other-ca-key.pem other-client-cert.pem other-client-key.pem; do
        [[ -s $TLS_DIR/$f ]] || return 1
    done
    for f in ca server-cert client-cert other-ca other-client-cert; do   # valid for 30 days more
        openssl x509 -noout -checkend 2592000 -in "$TLS_DIR/$f.pem" >/dev/null 2>&1 || return 1
    done
    openssl verify -CAfile "$TLS_DIR/ca.pem" -purpose sslserver "$TLS_DIR/server-cert.pem" >/dev/null 2>&1 || return 1
    openssl verify -CAfile "$TLS_DIR/ca.pem" -purpose sslclient "$TLS_DIR/client-cert.pem" >/dev/null 2>&1 || return 1
    openssl verify -CAfile "$TLS_DIR/other-ca.pem" -purpose sslclient "$TLS_DIR/other-client-cert.pem" >/dev/null 2>&1 || return 1
    ! openssl verify -CAfile "$TLS_DIR/ca.pem" "$TLS_DIR/other-client-cert.pem" >/dev/null 2>&1 || return 1
    openssl x509 -noout -ext subjectAltName -in "$TLS_DIR/server-cert.pem" 2>/dev/null \
        | grep -q 'IP Address:127.0.0.1' || return 1
    # each key belongs to its certificate
    for f in ca:ca-key server-cert:server-key client-cert:client-key other-ca:other-ca-key \
             other-client-cert:other-client-key; do
        [[ "$(openssl x509 -noout -pubkey -in "$TLS_DIR/${f%%:*}.pem")" == \
           "$(openssl pkey -pubout -in "$TLS_DIR/${f##*:}.pem" 2>/dev/null)" ]] || return 1
    done
}
TLS_CHANGED=0
if tls_ok; then
    tls_how="present and valid"
else
    work="$(mktemp -d /tmp/dfe-fleet-tls.XXXXXX)"
    CLEANUP+=("rm -rf '$work'")
    cat >"$work/ext.cnf" <<'EOF'
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    (
        umask 077
        cd "$work"
        key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
        serial() { echo "0x$(openssl rand -hex 16)"; }
        ca() {   # $1 name, $2 CN
            key "$1-key.pem"
            openssl req -new -key "$1-key.pem" -subj "/O=DFE provisioner tests/CN=$2" -out "$1.csr"
            openssl x509 -req -in "$1.csr" -signkey "$1-key.pem" -days 3650 -sha256 -set_serial "$(serial)" \
                -extfile ext.cnf -extensions ca -out "$1.pem" 2>/dev/null
        }
        leaf() { # $1 name, $2 CN, $3 ca name, $4 extensions
            key "$1-key.pem"
            openssl req -new -key "$1-key.pem" -subj "/O=DFE provisioner tests/CN=$2" -out "$1.csr"
            openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3-key.pem" -days 3650 -sha256 \
                -set_serial "$(serial)" -extfile ext.cnf -extensions "$4" -out "$1-cert.pem" 2>/dev/null
        }
        ca ca "DFE fleet test CA"
        leaf server 127.0.0.1 ca server
        leaf client "dfe-worker (fleet tests)" ca client
        ca other-ca "DFE fleet test: an unrelated CA"
        leaf other-client "dfe-worker (signed by the unrelated CA)" other-ca client
    ) || die "openssl failed making the certificates in $work"
    for f in ca.pem ca-key.pem server-cert.pem server-key.pem client-cert.pem client-key.pem \
             other-ca.pem other-ca-key.pem other-client-cert.pem other-client-key.pem; do
        install -o root -g root -m "$([[ $f == *key.pem ]] && echo 0600 || echo 0644)" "$work/$f" "$TLS_DIR/$f"
    done
    tls_ok || die "the certificates made in $TLS_DIR do not verify"
    TLS_CHANGED=1
    tls_how="made (CA, server 127.0.0.1/localhost, client; unrelated CA and client)"
fi
chmod 0600 "$TLS_DIR"/*key.pem
say "[3/8] tls: $tls_how in $TLS_DIR"

# ---------------------------------------------------------------------------------------
step "4/8 user and ssh keys"
ssh_notes=()
getent group "$SSH_USER" >/dev/null || { groupadd --system "$SSH_USER"; ssh_notes+=("group $SSH_USER created"); }
if ! id "$SSH_USER" >/dev/null 2>&1; then
    useradd --system --gid "$SSH_USER" --home-dir "$SSH_HOME" --create-home --shell /bin/sh \
        --comment "DFE fleet tests, engine b over ssh" "$SSH_USER"
    ssh_notes+=("user $SSH_USER created")
fi
# Key-only logins; sshd without PAM refuses a locked account ('!' password), so: no password.
if [[ "$(getent shadow "$SSH_USER" | cut -d: -f2)" != '*' ]]; then
    usermod -p '*' "$SSH_USER"
    ssh_notes+=("$SSH_USER: no password (key logins only)")
fi
mkdir -p "$SSH_HOME" "$SSH_DIR/bin"
chown "$SSH_USER:$SSH_USER" "$SSH_HOME"
chmod 0755 "$SSH_DIR" "$SSH_DIR/bin"
newkey() {   # $1 path, $2 comment
    if [[ ! -s $1 || ! -s $1.pub ]] || ! ssh-keygen -y -f "$1" >/dev/null 2>&1; then
        rm -f "$1" "$1.pub"
        ssh-keygen -q -t ed25519 -N '' -C "$2" -f "$1"
        ssh_notes+=("made $1")
    fi
    chmod 0600 "$1"; chmod 0644 "$1.pub"
}
newkey "$SSH_DIR/ssh_host_ed25519_key" "dfe fleet sshd host key"
newkey "$SSH_DIR/id_ed25519" "dfe-worker -> $SSH_USER (fleet tests)"
# write_if_changed FILE MODE CONTENT: rewrites FILE only when its content differs.
write_if_changed() {
    if [[ ! -f $1 || "$(cat "$1")"$'\n' != "$3" ]]; then
        printf '%s' "$3" >"$1"
        ssh_notes+=("wrote $1")
        WROTE=1
    fi
    chmod "$2" "$1"
}
WROTE=0
write_if_changed "$SSH_DIR/authorized_keys" 0644 \
    "restrict $(cut -d' ' -f1,2 "$SSH_DIR/id_ed25519.pub") dfe-worker (fleet tests)
"
host_pub="$(cut -d' ' -f1,2 "$SSH_DIR/ssh_host_ed25519_key.pub")"
write_if_changed "$SSH_DIR/known_hosts" 0644 "[127.0.0.1]:$SSH_PORT $host_pub
"
# Another key under the same name (ssh: host key changed) and a file that knows only another
# host (ssh: host unknown). Both fail with StrictHostKeyChecking=yes.
wrong_line="$(cat "$SSH_DIR/known_hosts.wrong" 2>/dev/null || true)"
if [[ $wrong_line != "[127.0.0.1]:$SSH_PORT ssh-ed25519 "* || $wrong_line == *"$host_pub"* \
      || ! -s $SSH_DIR/known_hosts.unknown ]]; then
    tmpk="$(mktemp -u /tmp/dfe-fleet-wrongkey.XXXXXX)"
    ssh-keygen -q -t ed25519 -N '' -C "not the fleet sshd" -f "$tmpk"
    other_pub="$(cut -d' ' -f1,2 "$tmpk.pub")"
    rm -f "$tmpk" "$tmpk.pub"
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$other_pub" >"$SSH_DIR/known_hosts.wrong"
    printf '[127.0.0.1]:%s %s\n' "$((SSH_PORT + 1))" "$other_pub" >"$SSH_DIR/known_hosts.unknown"
    chmod 0644 "$SSH_DIR/known_hosts.wrong" "$SSH_DIR/known_hosts.unknown"
    ssh_notes+=("wrote known_hosts.wrong and known_hosts.unknown")
fi
write_if_changed "$SSH_DIR/ssh_config" 0644 "# Managed by deploy/setup-fleet.sh: client options for engine b, for \`ssh -F $SSH_DIR/ssh_config\`.
Host *
    User $SSH_USER
    Port $SSH_PORT
    IdentityFile $SSH_DIR/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $SSH_DIR/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    BatchMode yes
    ConnectTimeout 10
"
write_if_changed "$SSH_DIR/bin/ssh" 0755 "#!/bin/sh
# Managed by deploy/setup-fleet.sh: ssh with the fleet's client options, for the docker CLI:
#   PATH=$SSH_DIR/bin:\$PATH docker -H ssh://$SSH_USER@127.0.0.1:$SSH_PORT info
exec /usr/bin/ssh -F $SSH_DIR/ssh_config \"\$@\"
"
((${#ssh_notes[@]})) || ssh_notes=("present")
say "[4/8] ssh keys and user $SSH_USER: $(joined "${ssh_notes[@]}")"

# ---------------------------------------------------------------------------------------
# Engines. Starting one: its bridge, an empty network store (Docker 20.10 restoring a saved
# one can delete the host's docker0 when an engine with --bridge restarts), dockerd in the
# background, then a check that docker0 still has its address.
start_engine() {   # $1 engine; returns 0 once it answers
    local n=$1 pid i br=${BRIDGE[$1]} brip=${BRIDGE_IP[$1]} before log
    log="$(logfile "$n")"
    if ! ip link show "$br" >/dev/null 2>&1; then
        ip link add "$br" type bridge || die "ip link add $br type bridge failed"
    fi
    if ! ip -4 -o addr show dev "$br" | awk '{print $4}' | grep -qx "$brip/24"; then
        ip -4 addr flush dev "$br"
        ip addr add "$brip/24" dev "$br" || die "ip addr add $brip/24 dev $br failed"
    fi
    ip link set "$br" up
    mkdir -p "$(data_root "$n")" "$(exec_root "$n")"
    rm -f "$(data_root "$n")/network/files/local-kv.db" "$(pidfile "$n")"
    before="$(docker0_ip)"
    engine_args "$n"
    mkdir -p "$LIBEXEC"
    ln -sfn "$(command -v dockerd)" "$(engine_bin "$n")"
    : >>"$log"
    printf '\n==== %s setup-fleet.sh: %s %s\n' "$(date -u +%FT%TZ)" "$(engine_bin "$n")" "${ENGINE_ARGS[*]}" >>"$log"
    setsid nohup "$(engine_bin "$n")" "${ENGINE_ARGS[@]}" >>"$log" 2>&1 </dev/null &
    pid=$!
    for ((i = 0; i < 120; i++)); do
        if engine_up "$n"; then break; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 15 "$log" >&2 || true
            die "dockerd for engine $n exited; see $log"
        fi
        sleep 0.5
    done
    engine_up "$n" || { tail -n 15 "$log" >&2 || true; die "dockerd for engine $n did not answer in 60 s; see $log"; }
    if [[ "$(docker0_ip)" != "$before" ]]; then
        die "docker0 lost its address $before when engine $n started: the main engine's bridge is gone." \
            "Restart the main engine (stop its dockerd, then run deploy/setup.sh), then run this again"
    fi
}

# load_image $1: loads the main engine's test image into engine $1 when its id differs there.
load_image() {
    local n=$1 have
    have="$(edocker "$n" image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
    [[ $have != "$IMAGE_ID" ]] || return 1
    docker save "$IMAGE" | edocker "$n" load -q >/dev/null || die "loading $IMAGE into engine $n failed"
    [[ "$(edocker "$n" image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null)" == "$IMAGE_ID" ]] \
        || die "engine $n has another $IMAGE after docker load"
    [[ -z $have ]] || edocker "$n" image rm "$have" >/dev/null 2>&1 || true   # kept if still in use
    return 0
}

engine_step() {   # $1 engine, $2 step number
    local n=$1 notes=() how
    step "$2/8 engine $n"
    # Its own daemon.json (never /etc/docker/daemon.json, the main engine's), with its own
    # identity key: without one, every engine reports the ID of /etc/docker/key.json.
    local conf="$FLEET_ETC/dockerd-$n.json" want conf_changed=0
    want="{ \"deprecated-key-path\": \"$(data_root "$n")/key.json\" }"
    if [[ ! -f $conf || "$(cat "$conf")" != "$want" ]]; then
        printf '%s\n' "$want" >"$conf"
        conf_changed=1
    fi
    if engine_current "$n" && ((conf_changed == 0)) && ! { [[ $n == a ]] && ((TLS_CHANGED)); }; then
        notes+=("already running")
    else
        how="started"
        if pid_alive "$(pid_of "$(pidfile "$n")")"; then
            stop_engine "$n"
            how="restarted (its command line, configuration or certificates changed)"
        fi
        start_engine "$n"
        notes+=("$how")
    fi
    if load_image "$n"; then notes+=("$IMAGE loaded"); fi
    local extra=""
    [[ $n == a ]] && extra=" + tcp://127.0.0.1:$TLS_PORT (TLS)"
    [[ $n == b ]] && extra=" (group $SSH_USER)"
    say "[$2/8] engine $n: $(joined "${notes[@]}"), engine $(edocker "$n" version -f '{{.Server.Version}}')," \
        "unix://$(sock "$n")$extra, bridge ${BRIDGE[$n]} ${BRIDGE_IP[$n]}"
}
engine_step a 5
engine_step b 6

# ---------------------------------------------------------------------------------------
step "7/8 sshd and postgresql $PG_VERSION/$PG_CLUSTER"
sshd_notes=()
WROTE=0
ssh_notes=()
write_if_changed "$SSHD_CONFIG" 0644 "# Managed by deploy/setup-fleet.sh: the sshd in front of engine b (fleet tests).
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SSH_DIR/ssh_host_ed25519_key
PidFile $SSHD_PIDFILE
AllowUsers $SSH_USER
PermitRootLogin no
AuthenticationMethods publickey
PubkeyAuthentication yes
AuthorizedKeysFile $SSH_DIR/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
StrictModes yes
# Every session of $SSH_USER talks to engine b: \`docker system dial-stdio\` (the ssh transport
# of bollard and of the docker CLI) then reaches its socket, not the main engine's.
PermitUserEnvironment no
SetEnv DOCKER_HOST=unix://$(sock b)
AllowAgentForwarding no
AllowTcpForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
PrintMotd no
LogLevel INFO
"
config_changed=$WROTE
mkdir -p /run/sshd && chmod 0755 /run/sshd   # its privilege separation directory
/usr/sbin/sshd -t -f "$SSHD_CONFIG" || die "sshd -t -f $SSHD_CONFIG rejects the configuration"
pid="$(sshd_pid)"
if [[ -n $pid ]] && ((config_changed == 0)) && tcp_open 127.0.0.1 "$SSH_PORT"; then
    sshd_notes+=("already running")
else
    if [[ -n $pid ]]; then
        kill -TERM "$pid"
        for ((i = 0; i < 20; i++)); do pid_alive "$pid" || break; sleep 0.25; done
        sshd_notes+=("restarted")
    else
        sshd_notes+=("started")
    fi
    /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$SSHD_LOG" || die "sshd did not start; see $SSHD_LOG"
    for ((i = 0; i < 20; i++)); do tcp_open 127.0.0.1 "$SSH_PORT" && break; sleep 0.25; done
    tcp_open 127.0.0.1 "$SSH_PORT" || die "nothing listens on 127.0.0.1:$SSH_PORT; see $SSHD_LOG"
fi

PG_ETC="/etc/postgresql/$PG_VERSION/$PG_CLUSTER"
pg_notes=()
psql_admin() { (cd / && runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"); }
if ! pg_cluster_exists; then
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER" -p "$PG_PORT" >/dev/null \
        || die "pg_createcluster $PG_VERSION $PG_CLUSTER -p $PG_PORT failed"
    pg_notes+=("cluster created")
fi
cluster_port="$(pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $3}')"
[[ $cluster_port == "$PG_PORT" ]] \
    || die "cluster $PG_VERSION/$PG_CLUSTER uses port $cluster_port, expected $PG_PORT (see $PG_ETC/postgresql.conf)"
listen="127.0.0.1"
if ip -6 -o addr show dev lo 2>/dev/null | grep -q ' ::1/'; then listen+=",::1"; fi
listen+=",$DOCKER0_IP"
conf_file="$PG_ETC/conf.d/dfe.conf"
conf_want="# Managed by deploy/setup-fleet.sh (DFE provisioner): the second database server of the
# fleet tests, reachable from the host and from containers on every local engine.
listen_addresses = '$listen'
max_connections = 300
"
pg_changed=0
mkdir -p "$PG_ETC/conf.d"
if [[ ! -f $conf_file || "$(cat "$conf_file")"$'\n' != "$conf_want" ]]; then
    printf '%s' "$conf_want" >"$conf_file"
    chown postgres:postgres "$conf_file"
    pg_changed=1
    pg_notes+=("wrote $conf_file")
fi
hba="$PG_ETC/pg_hba.conf"
for net in 127.0.0.1/32 172.16.0.0/12 samehost; do   # as deploy/setup.sh does for 15/main
    re="^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+${net//./\\.}[[:space:]]+scram-sha-256([[:space:]]|$)"
    if ! grep -Eq "$re" "$hba"; then
        printf 'host    all             all             %-23s scram-sha-256   # deploy/setup-fleet.sh\n' "$net" >>"$hba"
        pg_changed=1
        pg_notes+=("pg_hba: added $net")
    fi
done
if pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" status >/dev/null 2>&1; then
    if ((pg_changed)); then
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart || die "pg_ctlcluster $PG_VERSION $PG_CLUSTER restart failed"
        pg_notes+=("restarted")
    fi
else
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start \
        || die "pg_ctlcluster $PG_VERSION $PG_CLUSTER start failed; see /var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"
    pg_notes+=("started")
fi
for ((i = 0; i < 60; i++)); do pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.5; done
pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL $PG_VERSION/$PG_CLUSTER does not accept connections on 127.0.0.1:$PG_PORT"
[[ "$(psql_admin -c 'SHOW listen_addresses')" == "$listen" ]] \
    || die "listen_addresses of $PG_VERSION/$PG_CLUSTER is not '$listen' (overridden in postgresql.auto.conf?)"
role="$(psql_admin -c "SELECT rolsuper::text || ',' || rolcanlogin::text FROM pg_roles WHERE rolname = '$DB_ADMIN_USER'")"
if [[ -z $role ]]; then
    psql_admin -c "CREATE ROLE $DB_ADMIN_USER LOGIN SUPERUSER PASSWORD '$DB_ADMIN_PASSWORD'"
    pg_notes+=("role $DB_ADMIN_USER created")
elif [[ $role != "true,true" ]]; then
    psql_admin -c "ALTER ROLE $DB_ADMIN_USER LOGIN SUPERUSER"
    pg_notes+=("role $DB_ADMIN_USER made login superuser")
fi
pg_login() { PGPASSWORD="$DB_ADMIN_PASSWORD" PGCONNECT_TIMEOUT=5 psql -X -q -A -t -w \
                 -h 127.0.0.1 -p "$PG_PORT" -U "$DB_ADMIN_USER" -d postgres -c 'SELECT 1' >/dev/null 2>&1; }
if ! pg_login; then
    psql_admin -c "ALTER ROLE $DB_ADMIN_USER PASSWORD '$DB_ADMIN_PASSWORD'"
    pg_notes+=("password of $DB_ADMIN_USER reset")
    pg_login || die "cannot log in as $DB_ADMIN_USER over TCP at 127.0.0.1:$PG_PORT (check $hba)"
fi
((${#pg_notes[@]})) || pg_notes=("already configured and running")
say "[7/8] sshd 127.0.0.1:$SSH_PORT: $(joined "${sshd_notes[@]}");" \
    "postgresql $PG_VERSION/$PG_CLUSTER: $(joined "${pg_notes[@]}") (listen $listen port $PG_PORT)"

# ---------------------------------------------------------------------------------------
step "8/8 checks"
[[ "$(docker0_ip)" == "$DOCKER0_IP" ]] || die "docker0 no longer has $DOCKER0_IP: the main engine's bridge was disturbed"
# A PostgreSQL startup packet sent with busybox nc (as in deploy/setup.sh; its nc has no -z),
# to each port given at once; prints PORT:REPLY lines. 'R' (an authentication request) means
# TCP works and pg_hba admits the container's network, 'E' that pg_hba refuses it.
pg_probe='probe() {
    body="\0\3\0\0user\0'"$DB_ADMIN_USER"'\0database\0postgres\0\0"
    len=$((4 + $(printf "$body" | wc -c)))
    { printf "\0\0\0\\$(printf %o "$len")"; printf "$body"; sleep 0.5; } | nc -w 3 "$1" "$2" | head -c 1
}
host=$1; shift
for port in "$@"; do (r="$(probe "$host" "$port")"; echo "$port:$r") & done
wait'
pg_verdict() {   # $1 probe output, $2 what, $3... ports
    local out=$1 what=$2 port reply
    shift 2
    for port in "$@"; do
        reply="$(sed -n "s/^$port://p" <<<"$out")"
        case $reply in
            R) ;;
            E) die "PostgreSQL at $DOCKER0_IP:$port rejects $what (pg_hba.conf)" ;;
            *) die "$what cannot reach PostgreSQL at $DOCKER0_IP:$port (no TCP connection)" ;;
        esac
    done
}
# Each check runs in its own subshell, all at once; each prints one line or dies.
check_engine() {   # $1 engine: HTTP on its bridge address, container -> both PostgreSQL ports
    local n=$1 brip=${BRIDGE_IP[$1]} cid hostport body reply i old
    old="$(edocker "$n" ps -aq --filter label=dfe.fleet-check=true)"   # left by an interrupted run
    # shellcheck disable=SC2086
    [[ -z $old ]] || edocker "$n" rm -f $old >/dev/null 2>&1 || true
    cid="$(edocker "$n" run -d --rm -p "$brip::80" -e "DFE_INSTANCE_ID=fleet-check-$n" \
            --label dfe.fleet-check=true "$IMAGE")" || die "docker run on engine $n failed"
    # shellcheck disable=SC2064   # the values now: the trap runs after this function returned
    trap "docker -H 'unix://$(sock "$n")' rm -f '$cid' >/dev/null 2>&1 || true" EXIT
    hostport="$(edocker "$n" port "$cid" 80/tcp | grep -E "^${brip//./\\.}:" | head -n1 || true)"
    [[ -n $hostport ]] || die "engine $n did not publish port 80 on $brip"
    body=""
    for ((i = 0; i < 20; i++)); do
        body="$(curl -fsS --max-time 2 "http://$hostport/api/v2/system" 2>/dev/null)" && break
        body=""; sleep 0.25
    done
    [[ $body == *'"instance-id":"fleet-check-'$n'"'* ]] \
        || die "GET http://$hostport/api/v2/system (engine $n) did not answer as the test instance: '$body'"
    reply="$(edocker "$n" exec "$cid" sh -c "$pg_probe" probe "$DOCKER0_IP" "$PG_MAIN_PORT" "$PG_PORT" 2>/dev/null || true)"
    pg_verdict "$reply" "a container on engine $n" "$PG_MAIN_PORT" "$PG_PORT"
    echo "engine $n: http://$hostport ok, container -> $DOCKER0_IP:$PG_MAIN_PORT,$PG_PORT ok"
}
check_main() {   # a container on the main engine -> the new cluster
    local reply
    reply="$(docker run --rm --label dfe.fleet-check=true --entrypoint /bin/sh "$IMAGE" -c "$pg_probe" probe "$DOCKER0_IP" "$PG_PORT" 2>/dev/null || true)"
    pg_verdict "$reply" "a container on the main engine" "$PG_PORT"
    echo "main engine: container -> $DOCKER0_IP:$PG_PORT ok"
}
check_tls() {   # the right client is served; the other CA, the other client and no client are refused
    tls_get() { curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$@" "https://127.0.0.1:$TLS_PORT/_ping" 2>/dev/null; }
    [[ "$(tls_get --cacert "$TLS_DIR/ca.pem" --cert "$TLS_DIR/client-cert.pem" --key "$TLS_DIR/client-key.pem")" == 200 ]] \
        || die "GET https://127.0.0.1:$TLS_PORT/_ping with the fleet client certificate failed"
    [[ "$(tls_get --cacert "$TLS_DIR/other-ca.pem" --cert "$TLS_DIR/client-cert.pem" --key "$TLS_DIR/client-key.pem" || true)" != 200 ]] \
        || die "a client trusting only other-ca.pem accepted engine a's certificate"
    [[ "$(tls_get --cacert "$TLS_DIR/ca.pem" --cert "$TLS_DIR/other-client-cert.pem" --key "$TLS_DIR/other-client-key.pem" || true)" != 200 ]] \
        || die "engine a accepted other-client-cert.pem (signed by the unrelated CA)"
    [[ "$(tls_get --cacert "$TLS_DIR/ca.pem" || true)" != 200 ]] || die "engine a accepted a client without a certificate"
    echo "tls: client ok, other CA / other client / no client refused"
}
check_ssh() {   # the docker CLI's ssh transport (docker system dial-stdio on the remote) reaches engine b
    local id_b id_ssh
    ssh_try() { timeout 15 ssh -F "$SSH_DIR/ssh_config" "$@" 127.0.0.1 true >/dev/null 2>&1; }
    id_b="$(edocker b info -f '{{.ID}}')"
    id_ssh="$(PATH="$SSH_DIR/bin:$PATH" timeout 30 docker -H "ssh://$SSH_USER@127.0.0.1:$SSH_PORT" info -f '{{.ID}}' 2>/dev/null || true)"
    [[ -n $id_ssh ]] || die "docker -H ssh://$SSH_USER@127.0.0.1:$SSH_PORT info failed (see $SSHD_LOG)"
    [[ $id_ssh == "$id_b" ]] || die "over ssh the docker CLI reached engine $id_ssh, not engine b ($id_b): DOCKER_HOST is not in effect"
    ! ssh_try -o UserKnownHostsFile="$SSH_DIR/known_hosts.wrong" || die "ssh accepted the host key in known_hosts.wrong"
    ! ssh_try -o UserKnownHostsFile="$SSH_DIR/known_hosts.unknown" || die "ssh accepted an unknown host key"
    ! ssh_try -l root || die "sshd let root in"
    echo "ssh: docker over ssh reaches engine b, wrong/unknown host key and root refused"
}
cdir="$(mktemp -d /tmp/dfe-fleet-checks.XXXXXX)"
CLEANUP+=("rm -rf '$cdir'")
names=(engine-a engine-b main tls ssh)
declare -A cpid=()
for c in "${names[@]}"; do
    case $c in
        engine-*) ( check_engine "${c#engine-}" ) >"$cdir/$c.out" 2>"$cdir/$c.err" & ;;
        *)        ( "check_$c" ) >"$cdir/$c.out" 2>"$cdir/$c.err" & ;;
    esac
    cpid[$c]=$!
done
checks=() failed=0
for c in "${names[@]}"; do
    if wait "${cpid[$c]}"; then
        checks+=("$(cat "$cdir/$c.out")")
    else
        if [[ -s $cdir/$c.err ]]; then cat "$cdir/$c.err" >&2; else echo "$SCRIPT_NAME: check $c failed" >&2; fi
        failed=1
    fi
done
((failed == 0)) || exit 1
[[ "$(docker0_ip)" == "$DOCKER0_IP" ]] || die "docker0 no longer has $DOCKER0_IP: the main engine's bridge was disturbed"
say "[8/8] checks: $(joined "${checks[@]}"), docker0 $DOCKER0_IP intact"

say "OK in $((SECONDS - T0)) s: engine a unix://$(sock a) + tcp://127.0.0.1:$TLS_PORT (TLS, $TLS_DIR)," \
    "engine b unix://$(sock b) + ssh://$SSH_USER@127.0.0.1:$SSH_PORT ($SSH_DIR), publish on ${BRIDGE_IP[a]} / ${BRIDGE_IP[b]}," \
    "postgresql $PG_VERSION/$PG_CLUSTER on 127.0.0.1:$PG_PORT + $DOCKER0_IP:$PG_PORT ($DB_ADMIN_USER/$DB_ADMIN_PASSWORD)"
