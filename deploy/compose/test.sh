#!/usr/bin/env bash
# deploy/compose/test.sh - the docker compose stack, end to end, on this machine.
#
#   1. builds the images: local stand-ins for debian/rabbitmq/postgres where they cannot be
#      pulled (build-local-images.sh), and the dfe images (build-dfe-images.sh); both keep
#      what is up to date, so a second run builds nothing unless the code changed
#   2. brings docker-compose.yml up (two workers) and waits until every container is healthy
#   3. binds a queue to the stack's dfe.events exchange (RabbitMQ management API)
#   4. provisions an instance through the api port the stack publishes, follows the job to
#      `succeeded`, and checks the container, volume and database the workers made
#   5. sees dfe.provisioned for it on the stack's broker
#   6. exports it and imports the snapshot into a second instance (the worker image's pg_dump
#      and psql, the snapshot volume), seeing dfe.exported and dfe.imported
#   7. deprovisions both, following the jobs, sees dfe.deprovisioned, checks all is gone
#   8. takes the stack down with its volumes and checks that no container, volume or
#      network of the project, and no instance container or volume, is left
# The last line is `1 passed, 0 failed` (exit 0) or `0 passed, 1 failed` (exit 1).
#
# It runs as its own compose project (dfe-compose-test), network (dfe-compose-test), naming
# prefix (dfect) and free host ports, with random broker and database passwords, so it
# touches neither a compose stack an operator runs with the defaults, nor the native
# services of deploy/setup.sh, nor the dfe-* containers of the Rust tests.
#
# Environment (optional):
#   DFE_COMPOSE_CMD        "docker compose" or "docker-compose" (default: the first that works;
#                          docker-compose is installed with apt-get when neither does)
#   DFE_COMPOSE_TEST_KEEP=1  leave the stack up after a failure, for inspection
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export DOCKER_BUILDKIT=0

PROJECT=dfe-compose-test
TOKEN=dfe-compose-demo-token   # its SHA-256 is in deploy/compose/dfe.toml
T_START=$SECONDS
STEP=start
STACK_UP=0
INSTANCE=""
QUEUE=""

say()  { printf '[compose-test %4ss] %s\n' "$((SECONDS - T_START))" "$*"; }
step() { STEP="$1"; say "== $1"; }
fail() { printf 'compose test: FAILED in step "%s": %s\n' "$STEP" "$*" >&2; exit 1; }
trap 'printf "compose test: command failed in step \"%s\" (line %s): %s\n" "$STEP" "$LINENO" "$BASH_COMMAND" >&2' ERR

# ------------------------------------------------------------------------------ helpers
free_port() {   # a port nothing listens on, chosen by the kernel
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"; }
project_containers() { docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"; }
project_volumes() { docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT"; }
prefixed_containers() { docker ps -a --format '{{.Names}}' | grep -E "^$PREFIX-" || true; }
prefixed_volumes() { docker volume ls --format '{{.Name}}' | grep -E "^$PREFIX-" || true; }

api() {   # $1 method, $2 path, [$3 body]; prints "<status> <body>"
    local out
    out="$(curl -sS --max-time 10 -X "$1" -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' ${3:+--data "$3"} \
        -w '\n%{http_code}' "$API$2")" || return 1
    printf '%s %s\n' "${out##*$'\n'}" "${out%$'\n'*}"
}
mgmt() {  # $1 method, $2 path, [$3 body]: RabbitMQ management API of the stack's broker
    curl -fsS --max-time 10 -u "$DFE_RABBITMQ_USER:$DFE_RABBITMQ_PASSWORD" -X "$1" \
        -H 'Content-Type: application/json' ${3:+--data "$3"} "$MGMT/api$2"
}
psql_stack() {
    compose exec -T postgres psql -X -q -A -t -U "$DFE_POSTGRES_USER" -d postgres -c "$1"
}

wait_job() {   # $1 job id; prints the final job JSON, fails on timeout
    local id="$1" deadline=$((SECONDS + 240)) resp state
    while ((SECONDS < deadline)); do
        resp="$(api GET "/api/v1/ops/jobs/$id")" || { sleep 1; continue; }
        state="$(jq -r '.state // empty' <<<"${resp#* }" 2>/dev/null || true)"
        case $state in
            succeeded | failed) printf '%s\n' "${resp#* }"; return 0 ;;
        esac
        sleep 1
    done
    fail "job $id did not finish in 240 s (last answer: $resp)"
}

submit() {   # $1 operation, $2 body; prints the job id (answer must be 202)
    local resp status body id
    resp="$(api POST "/api/v1/ops/$1" "$2")" || fail "POST /api/v1/ops/$1: no answer from $API"
    status="${resp%% *}"
    body="${resp#* }"
    [[ $status == 202 ]] || fail "POST /api/v1/ops/$1 answered $status: $body"
    id="$(jq -r '."job-id" // empty' <<<"$body")"
    [[ -n $id ]] || fail "POST /api/v1/ops/$1: 202 without job-id: $body"
    printf '%s\n' "$id"
}

run_job() {   # $1 operation, $2 body; follows the job, fails unless it succeeded; prints its result
    local t=$SECONDS job final state
    job="$(submit "$1" "$2")"
    say "POST /api/v1/ops/$1: 202, job $job" >&2
    final="$(wait_job "$job")"
    state="$(jq -r .state <<<"$final")"
    [[ $state == succeeded ]] || fail "$1 job $job ended $state: $(jq -c '.error' <<<"$final")"
    say "$1 job $job succeeded in $((SECONDS - t)) s" >&2
    jq -c '.result' <<<"$final"
}

SEEN=""
await_event() {   # $1 event name, $2 instance id: waits for it on the test's queue
    local deadline=$((SECONDS + 30))
    until grep -qx "$1 $2" <<<"$SEEN"; do
        ((SECONDS < deadline)) || fail "no $1 for $2 on dfe.events; seen: $(tr '\n' ',' <<<"$SEEN")"
        SEEN+="$(events_of)"$'\n'
        sleep 1
    done
}
events_for() { grep " $1\$" <<<"$SEEN" | cut -d' ' -f1 | tr '\n' ' '; }

events_of() {  # drains the event queue; prints "<routing-key> <instance-id>" lines
    mgmt POST "/queues/%2f/$QUEUE/get" '{"count": 1000, "ackmode": "ack_requeue_false", "encoding": "auto"}' \
        | jq -r '.[] | .routing_key + " " + ((.payload | fromjson? | ."instance-id") // "?")'
}

dump_logs() {
    say "container states:"
    docker ps -a --filter "label=com.docker.compose.project=$PROJECT" \
        --format '  {{.Names}}  {{.Status}}' >&2 || true
    local c
    for c in $(project_containers); do
        printf -- '---- logs of %s (last 40 lines)\n' "$(docker inspect -f '{{.Name}}' "$c" | tr -d /)" >&2
        docker logs --tail 40 "$c" 2>&1 | sed 's/^/  /' >&2 || true
    done
}

teardown() {   # idempotent: the stack, then what the workers may have left of our instance
    local i
    # The engine may be restarting (other work on the machine restarts it); wait for it, as
    # the containers' restart policy brings the stack back with it.
    for ((i = 0; i < 60; i++)); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 2; done
    compose down -v --remove-orphans --timeout 45 >/dev/null 2>&1 || true
    # What `down` could not remove (e.g. the engine went away half-way), by the project label.
    local c v
    for c in $(project_containers); do docker rm -f -v "$c" >/dev/null 2>&1 || true; done
    for v in $(project_volumes); do docker volume rm -f "$v" >/dev/null 2>&1 || true; done
    if [[ -n $INSTANCE ]]; then
        docker rm -f "$PREFIX-$INSTANCE" >/dev/null 2>&1 || true
        docker volume rm -f "$PREFIX-$INSTANCE-storage" >/dev/null 2>&1 || true
    fi
    # Instances of an earlier, interrupted run of this test (only this test uses the prefix).
    local n
    for n in $(prefixed_containers); do docker rm -f "$n" >/dev/null 2>&1 || true; done
    for n in $(prefixed_volumes); do docker volume rm -f "$n" >/dev/null 2>&1 || true; done
    if docker network inspect "$NETWORK" >/dev/null 2>&1; then
        # Containers the workers attached to the network keep it alive.
        for n in $(docker network inspect -f '{{range .Containers}}{{.Name}} {{end}}' "$NETWORK"); do
            if [[ $n == "$PREFIX"-* ]]; then docker rm -f "$n" >/dev/null 2>&1 || true; fi
        done
        docker network rm "$NETWORK" >/dev/null 2>&1 || true
    fi
}

finish() {
    local rc=$?
    trap - ERR
    if ((rc != 0)); then
        ((STACK_UP)) && dump_logs
        if [[ ${DFE_COMPOSE_TEST_KEEP:-0} == 1 ]]; then
            say "DFE_COMPOSE_TEST_KEEP=1: stack $PROJECT left up (${COMPOSE[*]} -p $PROJECT down -v to remove)"
        else
            teardown
        fi
        say "total $((SECONDS - T_START)) s"
        echo "0 passed, 1 failed"
        exit 1
    fi
}
trap finish EXIT

# ------------------------------------------------------------------------ preconditions
step "preconditions"
[[ $(id -u) -eq 0 ]] || fail "must run as root (it builds images with debootstrap)"
timeout 20 docker info >/dev/null 2>&1 || fail "Docker does not answer; run deploy/setup.sh"
missing=()
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [[ -n ${DFE_COMPOSE_CMD:-} ]]; then
    read -ra COMPOSE <<<"$DFE_COMPOSE_CMD"
elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    COMPOSE=(docker-compose)
    missing+=(docker-compose)
fi
if ((${#missing[@]})); then
    say "installing ${missing[*]} (apt-get)"
    apt-get update -qq || fail "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
        || fail "apt-get install ${missing[*]} failed"
fi
"${COMPOSE[@]}" version >/dev/null 2>&1 || fail "${COMPOSE[*]} does not run"
if ! docker image inspect dfe/test-instance:latest >/dev/null 2>&1; then
    say "dfe/test-instance:latest missing: running deploy/setup.sh"
    deploy/setup.sh || fail "deploy/setup.sh failed"
fi

# The stack's settings for this run (docker-compose.yml reads them).
export DFE_COMPOSE_NETWORK="$PROJECT"
export DFE_COMPOSE_PREFIX=dfect
export DFE_COMPOSE_BIND=127.0.0.1
DFE_COMPOSE_API_PORT="$(free_port)"
DFE_COMPOSE_AMQP_PORT="$(free_port)"
DFE_COMPOSE_RABBITMQ_UI_PORT="$(free_port)"
export DFE_COMPOSE_API_PORT DFE_COMPOSE_AMQP_PORT DFE_COMPOSE_RABBITMQ_UI_PORT
export DFE_RABBITMQ_USER=dfe DFE_POSTGRES_USER=dfe
DFE_RABBITMQ_PASSWORD="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DFE_POSTGRES_PASSWORD="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export DFE_RABBITMQ_PASSWORD DFE_POSTGRES_PASSWORD
DFE_DOCKER_GID="$(stat -c %g /var/run/docker.sock)"
export DFE_DOCKER_GID
unset DFE_IMAGE_PREFIX DFE_IMAGE_TAG
NETWORK="$DFE_COMPOSE_NETWORK"
PREFIX="$DFE_COMPOSE_PREFIX"
API="http://127.0.0.1:$DFE_COMPOSE_API_PORT"
MGMT="http://127.0.0.1:$DFE_COMPOSE_RABBITMQ_UI_PORT"
say "compose: $("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -n1) (${COMPOSE[*]})," \
    "project $PROJECT, api $API, amqp 127.0.0.1:$DFE_COMPOSE_AMQP_PORT, ui $MGMT, socket gid $DFE_DOCKER_GID"

if [[ -n "$(project_containers)$(project_volumes)" ]] || docker network inspect "$NETWORK" >/dev/null 2>&1; then
    say "removing leftovers of an earlier run of this test"
    teardown
fi

# ------------------------------------------------------------------------------- images
step "images"
t=$SECONDS
deploy/compose/build-local-images.sh || fail "build-local-images.sh failed"
deploy/compose/build-dfe-images.sh || fail "build-dfe-images.sh failed"
say "images ready in $((SECONDS - t)) s"

# ------------------------------------------------------------------------------------ up
step "up"
t=$SECONDS
compose config -q || fail "docker-compose.yml does not validate"
STACK_UP=1
timeout 600 "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" up -d --scale dfe-worker=2 \
    || fail "${COMPOSE[*]} up failed"
deadline=$((SECONDS + 240))
while :; do
    ids="$(project_containers)"
    total=0 healthy=0 states=""
    for c in $ids; do
        total=$((total + 1))
        s="$(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}={{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck/{{.State.Status}}{{end}}' "$c" 2>/dev/null || true)"
        states+=" $s"
        [[ $s == *=healthy ]] && healthy=$((healthy + 1))
    done
    if ((total == 5 && healthy == 5)); then break; fi
    ((SECONDS < deadline)) || fail "not all 5 containers healthy after 240 s:$states"
    sleep 2
done
say "stack healthy in $((SECONDS - t)) s:$states"
workers="$(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=dfe-worker" | wc -l)"
((workers == 2)) || fail "expected 2 dfe-worker containers, found $workers"
for c in $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=dfe-api") \
         $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=dfe-worker"); do
    uid="$(docker exec "$c" id -u)"
    [[ $uid == 10001 ]] || fail "container $(docker inspect -f '{{.Name}}' "$c") runs as uid $uid, expected 10001 (dfe)"
done
say "dfe-api and dfe-workers run as uid 10001 (the workers with the socket's group $DFE_DOCKER_GID)"
resp="$(curl -sS --max-time 5 "$API/healthz")" || fail "GET $API/healthz: no answer"
say "GET /healthz: $resp"
resp="$(api GET /api/v1/ops/provisioners)"
[[ ${resp%% *} == 200 ]] || fail "GET /api/v1/ops/provisioners with the compose token answered: $resp"
resp="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$API/api/v1/ops/provisioners")"
[[ $resp == 401 ]] || fail "GET /api/v1/ops/provisioners without a token answered $resp, expected 401"

# --------------------------------------------------------------------------- event queue
step "events queue"
QUEUE="compose-test-$$"
mgmt GET /exchanges/%2f/dfe.events >/dev/null || fail "the stack's broker has no exchange dfe.events"
mgmt PUT "/queues/%2f/$QUEUE" '{"durable": false, "auto_delete": false, "arguments": {"x-expires": 900000}}' >/dev/null \
    || fail "declaring queue $QUEUE on the stack's broker"
mgmt POST "/bindings/%2f/e/dfe.events/q/$QUEUE" '{"routing_key": "dfe.#"}' >/dev/null \
    || fail "binding $QUEUE to dfe.events"
say "queue $QUEUE bound to dfe.events with dfe.#"

# ----------------------------------------------------------------------------- provision
step "provision"
INSTANCE="compose-demo-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
COPY="$INSTANCE-copy"
db_of() { local id="${PREFIX}_$1"; printf '%s\n' "${id//-/_}"; }
check_instance() {   # $1 instance id: its container runs on the network, volume, database, role
    local c="$PREFIX-$1" db
    db="$(db_of "$1")"
    [[ "$(docker inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" == true ]] || fail "container $c is not running"
    [[ "$(docker inspect -f '{{index .Config.Labels "dfe.instance-id"}}' "$c")" == "$1" ]] \
        || fail "container $c lacks the label dfe.instance-id=$1"
    docker inspect -f '{{range $n, $_ := .NetworkSettings.Networks}}{{$n}} {{end}}' "$c" | grep -qw -- "$NETWORK" \
        || fail "container $c is not on the stack's network $NETWORK"
    docker volume inspect "$c-storage" >/dev/null 2>&1 || fail "volume $c-storage missing"
    [[ "$(psql_stack "SELECT count(*) FROM pg_database WHERE datname = '$db'")" == 1 ]] \
        || fail "database $db missing on the stack's PostgreSQL"
    [[ "$(psql_stack "SELECT count(*) FROM pg_roles WHERE rolname = '$db'")" == 1 ]] \
        || fail "role $db missing on the stack's PostgreSQL"
    # The instance reaches the stack's PostgreSQL over the network: a startup packet for its
    # database answered with an authentication request ('R') proves TCP and pg_hba admit it.
    # shellcheck disable=SC2016  # expanded by the instance's shell, not here
    local probe='body="\0\3\0\0user\0'"$db"'\0database\0'"$db"'\0\0"
len=$((4 + $(printf "$body" | wc -c)))
{ printf "\0\0\0\\$(printf %o "$len")"; printf "$body"; sleep 1; } | nc -w 3 postgres 5432 | head -c 1'
    local reply
    reply="$(docker exec "$c" /bin/sh -c "$probe" 2>/dev/null || true)"
    [[ $reply == R ]] || fail "instance $c cannot reach postgres:5432 over $NETWORK (reply '${reply}')"
    local resp
    resp="$(api GET "/api/v1/instances/$1")"
    [[ ${resp%% *} == 200 ]] || fail "GET /api/v1/instances/$1 answered: $resp"
    say "instance $1: container $c running on $NETWORK, volume $c-storage, database and role $db (reachable from the instance)"
}
check_gone() {   # $1 instance id
    local c="$PREFIX-$1" db
    db="$(db_of "$1")"
    docker inspect "$c" >/dev/null 2>&1 && fail "container $c still exists after deprovision"
    docker volume inspect "$c-storage" >/dev/null 2>&1 && fail "volume $c-storage still exists after deprovision"
    [[ "$(psql_stack "SELECT count(*) FROM pg_database WHERE datname = '$db'") $(psql_stack "SELECT count(*) FROM pg_roles WHERE rolname = '$db'")" == "0 0" ]] \
        || fail "database or role $db still exists after deprovision"
    say "container, volume, database and role of $1 are gone"
}

result="$(run_job provision "{\"owner-id\": 1, \"instance-id\": \"$INSTANCE\"}")"
say "result: $result"
check_instance "$INSTANCE"

step "dfe.provisioned on the stack's broker"
await_event dfe.provisioned "$INSTANCE"
say "events of $INSTANCE: $(events_for "$INSTANCE")"

# ------------------------------------------------------------------------ export, import
# The worker image's pg_dump and psql, and the snapshot volume shared by api and workers.
step "export and import"
result="$(run_job export "{\"instance-id\": \"$INSTANCE\"}")"
snapshot="$(jq -r '."snapshot-id" // .snapshot // empty' <<<"$result")"
[[ -n $snapshot ]] || fail "export result names no snapshot: $result"
await_event dfe.exported "$INSTANCE"
resp="$(api GET "/api/v1/snapshots/$snapshot")"
[[ ${resp%% *} == 200 ]] || fail "GET /api/v1/snapshots/$snapshot answered: $resp"
say "snapshot $snapshot ($(jq -r '.size // "?"' <<<"$result") bytes)"
run_job import "{\"owner-id\": 1, \"instance-id\": \"$COPY\", \"snapshot\": \"$snapshot\"}" >/dev/null
await_event dfe.imported "$COPY"
check_instance "$COPY"
docker exec "$PREFIX-$COPY" grep -q "instance-id=$INSTANCE" /storage/boot.log \
    || fail "the storage of $COPY does not hold what $INSTANCE wrote"
say "events of $COPY: $(events_for "$COPY")"

# --------------------------------------------------------------------------- deprovision
step "deprovision"
for id in "$INSTANCE" "$COPY"; do
    run_job deprovision "{\"instance-id\": \"$id\"}" >/dev/null
    await_event dfe.deprovisioned "$id"
    check_gone "$id"
done

# ----------------------------------------------------------------------------------- down
step "down"
t=$SECONDS
timeout 300 "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" down -v --remove-orphans --timeout 45 \
    || fail "${COMPOSE[*]} down -v failed"
STACK_UP=0
say "down in $((SECONDS - t)) s"
left=()
[[ -z "$(project_containers)" ]] || left+=("containers: $(project_containers | tr '\n' ' ')")
[[ -z "$(project_volumes)" ]] || left+=("volumes: $(project_volumes | tr '\n' ' ')")
docker network inspect "$NETWORK" >/dev/null 2>&1 && left+=("network $NETWORK")
[[ -z "$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")" ]] \
    || left+=("networks labelled $PROJECT")
[[ -z "$(prefixed_containers)" ]] || left+=("instance containers: $(prefixed_containers | tr '\n' ' ')")
[[ -z "$(prefixed_volumes)" ]] || left+=("instance volumes: $(prefixed_volumes | tr '\n' ' ')")
((${#left[@]} == 0)) || fail "left behind: ${left[*]}"
say "nothing left: no container, volume or network of $PROJECT, no $PREFIX-* container or volume"

say "total $((SECONDS - T_START)) s"
echo "1 passed, 0 failed"
