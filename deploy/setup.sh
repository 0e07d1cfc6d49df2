#!/usr/bin/env bash
# deploy/setup.sh - local services for the DFE provisioner (Debian bookworm, run as root).
#
# Installs (if missing) and starts, without systemd:
#   Docker      dockerd on unix:///var/run/docker.sock (log /var/log/dfe-dockerd.log)
#   PostgreSQL  cluster 15/main on port 5432, listening on 127.0.0.1 and the docker0 address,
#               max_connections 300, scram-sha-256 from 127.0.0.1/32, 172.16.0.0/12 and samehost;
#               superuser role dfe (password dfe), registry database dfe owned by it
#   RabbitMQ    amqp://guest:guest@127.0.0.1:5672/%2f, all feature flags (quorum_queue) enabled
#   MariaDB     port 3306 on 127.0.0.1 and the docker0 address, admin dfe/dfe (deploy/setup-mariadb.sh)
#   Cluster     a 3-node RabbitMQ cluster on 5681-5683 (deploy/cluster-rabbitmq.sh) and a registry
#               primary with a synchronous streaming standby on 5441/5442
#               (deploy/registry-standby.sh), both beside the services above, for the cluster
#               fault tests and for trying a cluster out
#   Image       dfe/test-instance:latest built FROM scratch from deploy/images/test-instance
#               with Debian's static busybox (rebuilt only when its inputs change)
# and finishes with a smoke test (HTTP from the image, container -> PostgreSQL over docker0).
# Safe to run again: a second run finds everything in place and changes nothing.
#
# Environment (all optional):
#   DFE_DOCKERD_FLAGS   extra flags for dockerd when this script has to start it; when unset,
#                       plain `dockerd` is tried first, then with --iptables=false, then also
#                       with --storage-driver=vfs (for restricted sandboxes)
set -Eeuo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE_DIR="$SCRIPT_DIR/images/test-instance"

IMAGE="dfe/test-instance:latest"
PG_VERSION=15
PG_CLUSTER=main
PG_PORT=5432
DB_ADMIN_USER=dfe
DB_ADMIN_PASSWORD=dfe
DB_REGISTRY=dfe
DOCKERD_LOG=/var/log/dfe-dockerd.log
PACKAGES=(rabbitmq-server postgresql docker.io busybox-static curl ca-certificates iproute2 openssh-server openssl
          mariadb-server mariadb-client python3-venv python3-pip iptables)

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export DOCKER_BUILDKIT=0   # docker.io 20.10 has no buildx; the legacy builder is what works

STEP="start"
CLEANUP=()

say()  { printf '%s\n' "$*"; }
step() { STEP="$1"; }
die()  { printf 'setup.sh: FAILED in step "%s": %s\n' "$STEP" "$*" >&2; exit 1; }
on_err() { printf 'setup.sh: FAILED in step "%s": command failed (line %s): %s\n' \
               "$STEP" "$1" "$2" >&2; }
cleanup() { local c; for c in "${CLEANUP[@]}"; do eval "$c" >/dev/null 2>&1 || true; done; }
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR
trap cleanup EXIT

[[ $(id -u) -eq 0 ]] || { echo "setup.sh: must run as root" >&2; exit 1; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
tcp_open() { timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# ---------------------------------------------------------------------------------------
step "1/6 packages"
missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
    say "[1/6] packages: installing ${missing[*]}"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed"
else
    say "[1/6] packages: all present (${PACKAGES[*]})"
fi

# ---------------------------------------------------------------------------------------
step "2/6 docker"
start_dockerd() {   # $@: extra flags; returns 0 once `docker info` answers
    local pid i
    : >>"$DOCKERD_LOG"
    printf '\n==== %s setup.sh: dockerd %s\n' "$(date -u +%FT%TZ)" "$*" >>"$DOCKERD_LOG"
    setsid nohup dockerd "$@" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    pid=$!
    for ((i = 0; i < 60; i++)); do
        if timeout 5 docker info >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then return 1; fi   # dockerd exited
        sleep 1
    done
    kill "$pid" 2>/dev/null || true
    return 1
}
if timeout 10 docker info >/dev/null 2>&1; then
    docker_how="already running"
else
    # cgroup v1 hierarchies are normally mounted by the init system; mount them if nothing is.
    if ! mountpoint -q /sys/fs/cgroup && command -v cgroupfs-mount >/dev/null; then
        cgroupfs-mount || true
    fi
    if [[ -n ${DFE_DOCKERD_FLAGS:-} ]]; then
        # shellcheck disable=SC2086
        start_dockerd $DFE_DOCKERD_FLAGS \
            || die "dockerd $DFE_DOCKERD_FLAGS did not come up in 60 s; see $DOCKERD_LOG"
        docker_how="started (dockerd $DFE_DOCKERD_FLAGS)"
    elif start_dockerd; then
        docker_how="started (dockerd)"
    elif tail -n 60 "$DOCKERD_LOG" | grep -q 'libnetwork.*reservePools' \
        && mv /var/lib/docker/network/files/local-kv.db "/var/lib/docker/network/files/local-kv.db.broken-$(date +%s)" \
        && start_dockerd; then
        # Docker 20.10 can panic restoring user-defined networks after an unclean stop
        # (libnetwork reservePools); its network store is moved aside and rebuilt.
        docker_how="started (dockerd, after setting aside a network store it could not restore)"
    elif start_dockerd --iptables=false --ip6tables=false; then
        docker_how="started (dockerd --iptables=false: no NAT for containers)"
    elif start_dockerd --iptables=false --ip6tables=false --storage-driver=vfs; then
        docker_how="started (dockerd --iptables=false --storage-driver=vfs)"
    else
        tail -n 15 "$DOCKERD_LOG" >&2 || true
        die "dockerd does not start; see $DOCKERD_LOG"
    fi
fi
docker_version="$(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?')"
DOCKER0_IP="$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1 || true)"
[[ -n $DOCKER0_IP ]] || die "no IPv4 address on the docker0 bridge (ip -4 -o addr show docker0)"
say "[2/6] docker: $docker_how, engine $docker_version, docker0 $DOCKER0_IP"
# The kernel's neighbour table takes an entry per container on a bridge, and past its ceiling
# (gc_thresh3, 1,024 by default) new containers are reached late or not at all (README, "The
# fleet"). Only ever raised, the ceiling first; a read-only /proc/sys is left as it is.
raise_sysctl() {   # raise_sysctl KEY MIN
    local file="/proc/sys/${1//.//}" now
    now="$(cat "$file" 2>/dev/null)" || return 0
    if [[ $now =~ ^[0-9]+$ ]] && (( now < $2 )); then
        if echo "$2" >"$file" 2>/dev/null; then say "[2/6] docker: $1 raised from $now to $2"
        else say "[2/6] docker: $1 stays $now (read-only here; raise it for hosts of >1,000 instances)"; fi
    fi
}
raise_sysctl net.ipv4.neigh.default.gc_thresh3 16384
raise_sysctl net.ipv4.neigh.default.gc_thresh2 8192
raise_sysctl net.ipv4.neigh.default.gc_thresh1 4096

# ---------------------------------------------------------------------------------------
step "3/6 postgresql"
PG_ETC="/etc/postgresql/$PG_VERSION/$PG_CLUSTER"
pg_notes=()
psql_admin() { (cd / && runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"); }
pg_running() { pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" status >/dev/null 2>&1; }

if ! pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {f=1} END {exit !f}'; then
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER" >/dev/null || die "pg_createcluster $PG_VERSION $PG_CLUSTER failed"
    pg_notes+=("cluster created")
fi
cluster_port="$(pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $3}')"
[[ $cluster_port == "$PG_PORT" ]] \
    || die "cluster $PG_VERSION/$PG_CLUSTER uses port $cluster_port, expected $PG_PORT (see $PG_ETC/postgresql.conf)"

listen="127.0.0.1"
if ip -6 -o addr show dev lo 2>/dev/null | grep -q ' ::1/'; then listen+=",::1"; fi
listen+=",$DOCKER0_IP"
conf_file="$PG_ETC/conf.d/dfe.conf"
conf_want="# Managed by deploy/setup.sh (DFE provisioner): reachable from the host and from
# containers on the default Docker bridge.
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
# samehost: the host itself connecting to the docker0 address may use another source address
# (here eth0's), which neither 127.0.0.1/32 nor 172.16.0.0/12 would match.
for net in 127.0.0.1/32 172.16.0.0/12 samehost; do
    re="^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+${net//./\\.}[[:space:]]+scram-sha-256([[:space:]]|$)"
    if ! grep -Eq "$re" "$hba"; then
        printf 'host    all             all             %-23s scram-sha-256   # deploy/setup.sh\n' "$net" >>"$hba"
        pg_changed=1
        pg_notes+=("pg_hba: added $net")
    fi
done

if pg_running; then
    if ((pg_changed)); then
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart || die "pg_ctlcluster $PG_VERSION $PG_CLUSTER restart failed"
        pg_notes+=("restarted")
    fi
else
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start \
        || die "pg_ctlcluster $PG_VERSION $PG_CLUSTER start failed; see /var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"
    pg_notes+=("started")
fi
for ((i = 0; i < 30; i++)); do
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL does not accept connections on 127.0.0.1:$PG_PORT"

# Settings actually in effect (ALTER SYSTEM / postgresql.auto.conf could override conf.d).
[[ "$(psql_admin -c 'SHOW max_connections')" == 300 ]] \
    || die "max_connections is not 300 (overridden in postgresql.auto.conf?)"
[[ "$(psql_admin -c 'SHOW listen_addresses')" == "$listen" ]] \
    || die "listen_addresses is not '$listen' (overridden in postgresql.auto.conf?)"

role="$(psql_admin -c "SELECT rolsuper::text || ',' || rolcanlogin::text FROM pg_roles WHERE rolname = '$DB_ADMIN_USER'")"
if [[ -z $role ]]; then
    psql_admin -c "CREATE ROLE $DB_ADMIN_USER LOGIN SUPERUSER PASSWORD '$DB_ADMIN_PASSWORD'"
    pg_notes+=("role $DB_ADMIN_USER created")
elif [[ $role != "true,true" ]]; then
    psql_admin -c "ALTER ROLE $DB_ADMIN_USER LOGIN SUPERUSER"
    pg_notes+=("role $DB_ADMIN_USER made login superuser")
fi
if [[ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_REGISTRY'")" ]]; then
    psql_admin -c "CREATE DATABASE $DB_REGISTRY OWNER $DB_ADMIN_USER"
    pg_notes+=("database $DB_REGISTRY created")
fi
pg_login() { PGPASSWORD="$DB_ADMIN_PASSWORD" PGCONNECT_TIMEOUT=5 psql -X -q -A -t -w \
                 -h 127.0.0.1 -p "$PG_PORT" -U "$DB_ADMIN_USER" -d "$DB_REGISTRY" -c 'SELECT 1' >/dev/null 2>&1; }
if ! pg_login; then   # role existed with another password
    psql_admin -c "ALTER ROLE $DB_ADMIN_USER PASSWORD '$DB_ADMIN_PASSWORD'"
    pg_notes+=("password of $DB_ADMIN_USER reset")
    pg_login || die "cannot log in as $DB_ADMIN_USER over TCP at 127.0.0.1:$PG_PORT (check $hba)"
fi
((${#pg_notes[@]})) || pg_notes=("already configured and running")
say "[3/6] postgresql $PG_VERSION/$PG_CLUSTER: $(IFS=,; echo "${pg_notes[*]}" | sed 's/,/, /g') (listen $listen port $PG_PORT)"

# ---------------------------------------------------------------------------------------
step "4/6 rabbitmq"
rmq_notes=()
rmq_up() { timeout 60 rabbitmqctl -q status >/dev/null 2>&1; }
if rmq_up; then
    rmq_notes+=("already running")
else
    if timeout 180 service rabbitmq-server start >/dev/null 2>&1; then
        rmq_notes+=("started (service rabbitmq-server start)")
    else
        # The Debian wrapper switches to the rabbitmq user itself.
        rabbitmq-server -detached >/dev/null 2>&1 || die "rabbitmq-server -detached failed; see /var/log/rabbitmq/"
        rmq_notes+=("started (rabbitmq-server -detached)")
    fi
    ok=0
    for ((i = 0; i < 24; i++)); do
        if timeout 15 rabbitmqctl -q await_startup --timeout 10 >/dev/null 2>&1; then ok=1; break; fi
        sleep 2
    done
    ((ok)) || die "RabbitMQ did not finish starting (rabbitmqctl await_startup); see /var/log/rabbitmq/"
fi
flags="$(timeout 30 rabbitmqctl -s list_feature_flags name state)" || die "rabbitmqctl list_feature_flags failed"
if awk '$2 != "enabled" {f=1} END {exit !f}' <<<"$flags"; then
    timeout 60 rabbitmqctl -q enable_feature_flag all >/dev/null || die "rabbitmqctl enable_feature_flag all failed"
    rmq_notes+=("feature flags enabled")
    flags="$(timeout 30 rabbitmqctl -s list_feature_flags name state)" || die "rabbitmqctl list_feature_flags failed"
fi
grep -Eq '^quorum_queue[[:space:]]+enabled' <<<"$flags" || die "feature flag quorum_queue is not enabled"
users="$(timeout 30 rabbitmqctl -s list_users)" || die "rabbitmqctl list_users failed"
if ! awk '{print $1}' <<<"$users" | grep -qx guest; then
    timeout 30 rabbitmqctl -q add_user guest guest >/dev/null
    timeout 30 rabbitmqctl -q set_user_tags guest administrator >/dev/null
    timeout 30 rabbitmqctl -q set_permissions -p / guest '.*' '.*' '.*' >/dev/null
    rmq_notes+=("user guest re-created")
fi
tcp_open 127.0.0.1 5672 || die "nothing listens on 127.0.0.1:5672 (AMQP)"
say "[4/6] rabbitmq: $(IFS=,; echo "${rmq_notes[*]}" | sed 's/,/, /g') (amqp://guest:guest@127.0.0.1:5672/%2f)"

# ---------------------------------------------------------------------------------------
step "5/6 image"
BUSYBOX=/bin/busybox
[[ -x $BUSYBOX ]] || die "$BUSYBOX missing (package busybox-static)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; install busybox-static (it replaces busybox)"
fi
for f in Dockerfile entrypoint.sh; do
    [[ -f $IMAGE_DIR/$f ]] || die "$IMAGE_DIR/$f missing"
done
ctx="$(mktemp -d /tmp/dfe-test-instance.XXXXXX)"
CLEANUP+=("rm -rf '$ctx'")
cp "$IMAGE_DIR/Dockerfile" "$IMAGE_DIR/entrypoint.sh" "$ctx/"
cp "$BUSYBOX" "$ctx/busybox"
chmod 0755 "$ctx/busybox" "$ctx/entrypoint.sh"
image_hash="$(cd "$ctx" && sha256sum Dockerfile entrypoint.sh busybox | sha256sum | cut -c1-64)"
old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
old_hash="$(docker image inspect -f '{{index .Config.Labels "dfe.image-hash"}}' "$IMAGE" 2>/dev/null || true)"
if [[ -n $old_id && $old_hash == "$image_hash" ]]; then
    image_how="up to date"
else
    build_log="$ctx/build.log"
    if ! docker build --pull=false --force-rm --label "dfe.image-hash=$image_hash" -t "$IMAGE" "$ctx" >"$build_log" 2>&1; then
        tail -n 20 "$build_log" >&2
        die "docker build of $IMAGE failed"
    fi
    image_how="built"
    if [[ -n $old_id ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true   # keeps it if a container still uses it
        image_how="rebuilt (inputs changed)"
    fi
fi
[[ "$(docker image inspect -f '{{index .Config.Labels "dfe.test-image"}}' "$IMAGE")" == true ]] \
    || die "$IMAGE lacks the label dfe.test-image=true"
image_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -d: -f2 | cut -c1-12)"
say "[5/6] image $IMAGE: $image_how ($image_id, dfe.image-hash ${image_hash:0:12})"

step "mariadb"; "$SCRIPT_DIR/setup-mariadb.sh" || die "deploy/setup-mariadb.sh failed"

# ---------------------------------------------------------------------------------------
step "6/6 smoke test"
cid="$(docker run --rm -d -p 127.0.0.1::80 \
        -e DFE_INSTANCE_ID=smoke -e DB_DATABASE=dfe_smoke -e DB_PASSWORD=smoke-secret-pw \
        --label dfe.smoke=true "$IMAGE")" || die "docker run $IMAGE failed"
CLEANUP+=("docker rm -f '$cid'")
hostport="$(docker port "$cid" 80/tcp | grep -E '^127\.0\.0\.1:' | head -n1 || true)"
[[ -n $hostport ]] || die "container port 80 was not published on 127.0.0.1"
body=""
for ((i = 0; i < 20; i++)); do
    body="$(curl -fsS --max-time 2 "http://$hostport/api/v2/system" 2>/dev/null)" && break
    body=""
    sleep 0.5
done
[[ -n $body ]] || { docker logs "$cid" >&2 || true; die "GET http://$hostport/api/v2/system did not answer 200"; }
[[ $body == '{"service":"dfe-test-instance","instance-id":"smoke","db-database":"dfe_smoke","db-connection":""}' ]] \
    || die "unexpected /api/v2/system body: $body"
[[ "$(curl -fsS --max-time 2 "http://$hostport/healthz")" == ok ]] || die "GET /healthz did not answer ok"
marker="$(docker exec "$cid" cat /storage/.dfe-instance 2>/dev/null || true)"
grep -qx 'instance-id=smoke' <<<"$marker" || die "the container did not write /storage/.dfe-instance"
t0=$SECONDS
docker stop -t 10 "$cid" >/dev/null || die "docker stop failed"
stop_secs=$((SECONDS - t0))
((stop_secs < 5)) || die "the container took $stop_secs s to stop on SIGTERM"
# From a container: send a PostgreSQL startup packet (user dfe, database dfe) with busybox nc.
# An authentication request ('R') means TCP works and pg_hba admits the bridge network;
# an error ('E') means pg_hba rejects it; nothing means no TCP connection at all.
pg_probe='body="\0\3\0\0user\0'"$DB_ADMIN_USER"'\0database\0'"$DB_REGISTRY"'\0\0"
len=$((4 + $(printf "$body" | wc -c)))
{ printf "\0\0\0\\$(printf %o "$len")"; printf "$body"; sleep 1; } | nc -w 3 "$1" "$2" | head -c 1'
pg_reply="$(docker run --rm --entrypoint /bin/sh "$IMAGE" -c "$pg_probe" probe "$DOCKER0_IP" "$PG_PORT" 2>/dev/null || true)"
case $pg_reply in
    R) ;;
    E) die "PostgreSQL at $DOCKER0_IP:$PG_PORT rejects containers (pg_hba.conf: $hba)" ;;
    *) die "a container cannot reach PostgreSQL at $DOCKER0_IP:$PG_PORT" ;;
esac
say "[6/6] smoke test: HTTP $hostport/api/v2/system ok, storage written, stopped in ${stop_secs} s, container -> $DOCKER0_IP:$PG_PORT ok"

say "OK: docker $docker_version (docker0 $DOCKER0_IP), postgresql $PG_VERSION on 127.0.0.1:$PG_PORT + $DOCKER0_IP:$PG_PORT" \
    "(superuser $DB_ADMIN_USER/$DB_ADMIN_PASSWORD, registry db $DB_REGISTRY), rabbitmq amqp://guest:guest@127.0.0.1:5672/%2f," \
    "image $IMAGE ready"
step "fleet" && "$SCRIPT_DIR/setup-fleet.sh" || die "deploy/setup-fleet.sh failed (the extra engines and servers of the fleet tests; see above)"
# chromium, node and playwright-core for the console's browser tests.
step "console" && "$SCRIPT_DIR/setup-console.sh" || die "deploy/setup-console.sh failed (the console's browser tests; see above)"
step "s3" && "$SCRIPT_DIR/setup-s3.sh" || die "deploy/setup-s3.sh failed (the S3-compatible server of the snapshot tests; see above)"
step "cluster" && "$SCRIPT_DIR/cluster-rabbitmq.sh" start && "$SCRIPT_DIR/registry-standby.sh" start \
    || die "the clustered broker or registry did not start (deploy/cluster-rabbitmq.sh, deploy/registry-standby.sh; see above)"
