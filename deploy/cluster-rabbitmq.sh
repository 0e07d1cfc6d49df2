#!/usr/bin/env bash
# deploy/cluster-rabbitmq.sh - a 3-node RabbitMQ cluster on this one machine, beside the main
# broker (Debian's rabbitmq-server, run as root).
#
#   node               AMQP              distribution      data, config and logs
#   dfe-rabbit-1@localhost  127.0.0.1:5681   127.0.0.1:25681   /var/lib/dfe-cluster/rabbitmq/dfe-rabbit-1/
#   dfe-rabbit-2@localhost  127.0.0.1:5682   127.0.0.1:25682   …/dfe-rabbit-2/
#   dfe-rabbit-3@localhost  127.0.0.1:5683   127.0.0.1:25683   …/dfe-rabbit-3/
#
# with their own Erlang cookie (/var/lib/dfe-cluster/rabbitmq/.erlang.cookie), no plugins (no
# management listener), user guest/guest from loopback, cluster_partition_handling =
# pause_minority and net_ticktime = 10 s (a node cut off from the others notices within
# ~10 s and stops serving clients until it can see a majority again). The main broker
# (rabbit@<host>, 5672/25672) and epmd, which all nodes of the machine share, are never
# stopped or changed. No systemd is needed.
#
# Usage: deploy/cluster-rabbitmq.sh COMMAND [ARGS]
#   start              start the nodes that are not running and form the cluster (idempotent;
#                      a second run only checks, in a few seconds); restarts a killed node,
#                      which rejoins with its data
#   status             each node (running, pid, AMQP port), the running members, partitions
#   urls [VHOST]       the AMQP URLs of the nodes, comma-separated (VHOST default %2f), for
#                      DFE__AMQP__URL
#   kill N             kill -9 the Erlang VM of node N (1-3): a crash, not a clean stop
#   stop-node N        stop node N cleanly (it stays a member; `start` brings it back)
#   pause N | resume N SIGSTOP / SIGCONT node N's VM (a hung node)
#   partition N        cut node N off from the other nodes (iptables on loopback: its
#                      distribution traffic is dropped; its clients still reach it)
#   heal               remove every partition rule
#   ctl N ARGS...      rabbitmqctl ARGS against node N (e.g. `ctl 1 list_queues name members`)
#   queues N ARGS...   rabbitmq-queues ARGS against node N (e.g. `queues 1 quorum_status Q`)
#   stop               stop every node and remove all of it (data, config, rules)
set -Eeuo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

NODES=3
BASE=/var/lib/dfe-cluster/rabbitmq
AMQP_BASE_PORT=5680        # node N: AMQP 5680+N, distribution 25680+N
RMQ_BIN=/usr/lib/rabbitmq/bin
CHAIN=DFE-RMQ-PARTITION    # iptables chain of the partition rules

die() { printf 'cluster-rabbitmq.sh: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || die "must run as root"

node_name() { echo "dfe-rabbit-$1@localhost"; }
amqp_port() { echo $((AMQP_BASE_PORT + $1)); }
dist_port() { echo $((AMQP_BASE_PORT + 20000 + $1)); }
node_dir()  { echo "$BASE/dfe-rabbit-$1"; }
check_n()   { [[ ${1:-} =~ ^[1-9][0-9]*$ ]] && (($1 <= NODES)) || die "no node ${1:-(none)}: nodes are 1-$NODES"; }

# The environment of everything that runs as or talks to node N: its own files only, never
# /etc/rabbitmq (the main broker's), and HOME where the cluster's cookie is.
node_env() {
    local n=$1 dir
    dir="$(node_dir "$n")"
    printf '%s\0' \
        "PATH=$PATH" "HOME=$BASE" "LANG=C.UTF-8" "LC_ALL=C.UTF-8" \
        "RABBITMQ_CONF_ENV_FILE=$BASE/rabbitmq-env.conf" \
        "RABBITMQ_NODENAME=$(node_name "$n")" \
        "RABBITMQ_DIST_PORT=$(dist_port "$n")" \
        "RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf" \
        "RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config" \
        "RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins" \
        "RABBITMQ_MNESIA_BASE=$dir/mnesia" \
        "RABBITMQ_LOG_BASE=$dir/log" \
        "RABBITMQ_PID_FILE=$dir/pid" \
        "RABBITMQ_SCHEDULER_BUSY_WAIT_THRESHOLD=none"
    # (no busy-waiting schedulers: three idle nodes should not eat a shared 2-core machine)
}

# rabbitmqctl (or another CLI tool, $1) against node N ($2), run as root with the cluster's
# cookie; a CLI call that hangs (a paused or cut-off node) gives up after 60 s.
cli() {
    local tool=$1 n=$2
    shift 2
    local env=()
    mapfile -d '' env < <(node_env "$n")
    timeout 60 env -i "${env[@]}" "$RMQ_BIN/$tool" -n "$(node_name "$n")" "$@"
}
ctl() { cli rabbitmqctl "$@"; }

vm_pid() {   # the pid of node N's Erlang VM, when it runs
    local pid
    pid="$(cat "$(node_dir "$1")/pid" 2>/dev/null || true)"
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ "$(ps -o comm= -p "$pid" 2>/dev/null)" == beam* ]] || return 1
    echo "$pid"
}

amqp_open() { timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

write_files() {   # the cookie and each node's configuration (rewritten: they are ours alone)
    install -d -o rabbitmq -g rabbitmq -m 0750 "$BASE"
    if [[ ! -s $BASE/.erlang.cookie ]]; then
        # Random, 32 letters: the cookie lets anyone who has it run code on the nodes.
        (umask 077; set +o pipefail; tr -dc 'A-Z' </dev/urandom | head -c 32 >"$BASE/.erlang.cookie")
    fi
    chown rabbitmq:rabbitmq "$BASE/.erlang.cookie"
    chmod 0400 "$BASE/.erlang.cookie"
    : >"$BASE/rabbitmq-env.conf"
    local n dir
    for ((n = 1; n <= NODES; n++)); do
        dir="$(node_dir "$n")"
        install -d -o rabbitmq -g rabbitmq -m 0750 "$dir" "$dir/mnesia" "$dir/log"
        cat >"$dir/rabbitmq.conf" <<EOF
# Written by deploy/cluster-rabbitmq.sh: node $n of the dfe test cluster.
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
# A node that cannot see a majority of the cluster stops serving (closes its clients'
# connections) until it can again: the minority never accepts what the majority cannot see.
cluster_partition_handling = pause_minority
cluster_name = dfe-cluster
log.file.level = info
log.console = false
EOF
        # The distribution listens on loopback only; node N connects to the others from its
        # own loopback address 127.0.1.N, which is what lets `partition N` drop exactly its
        # traffic. net_ticktime 10 s: a silent peer counts as down after ~10 s, not 60.
        cat >"$dir/advanced.config" <<EOF
[{kernel, [{net_ticktime, 10},
           {inet_dist_use_interface, {127,0,0,1}},
           {inet_dist_connect_options, [{ip, {127,0,1,$n}}]}]}].
EOF
        echo '[].' >"$dir/enabled_plugins"
        chown rabbitmq:rabbitmq "$dir/rabbitmq.conf" "$dir/advanced.config" "$dir/enabled_plugins"
    done
}

start_node() {   # starts node N in the background (as the rabbitmq user)
    local n=$1 dir env=()
    dir="$(node_dir "$n")"
    mapfile -d '' env < <(node_env "$n")
    ! amqp_open "$(amqp_port "$n")" || die "port $(amqp_port "$n") is taken by another process (ss -ltnp)"
    printf '\n==== %s cluster-rabbitmq.sh: starting %s\n' "$(date -u +%FT%TZ)" "$(node_name "$n")" >>"$dir/log/startup.log"
    chown rabbitmq:rabbitmq "$dir/log/startup.log"
    # exec: no shell of this script stays behind holding its output open.
    (cd "$dir" && exec setsid runuser -u rabbitmq -- env -i "${env[@]}" "$RMQ_BIN/rabbitmq-server" \
        >>"$dir/log/startup.log" 2>&1 </dev/null) &
}

await_node() {   # waits until node N has booted: one CLI call waits for a booting node, but
                 # fails at once while its VM is not up yet
    local n=$1 t0=$SECONDS
    while ((SECONDS - t0 < 120)); do
        if ctl "$n" -q await_startup --timeout 60 >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    tail -n 20 "$(node_dir "$n")/log/startup.log" >&2 || true
    die "$(node_name "$n") did not start; see $(node_dir "$n")/log/"
}

# "<members>|<running members>" as node N sees them (space-separated node names), in one
# CLI call: each call boots the Erlang CLI, which takes seconds on a busy machine.
cluster_view() {
    ctl "$1" -q eval 'J = fun(Ns) -> string:join([atom_to_list(N) || N <- Ns], " ") end,
        io:format("~s|~s~n", [J(rabbit_mnesia:cluster_nodes(all)), J(rabbit_nodes:all_running())]).' \
        2>/dev/null | grep '|' | head -n 1 || true
}
members_of() { cluster_view "$1" | cut -d'|' -f1 | tr ' ' '\n' | grep . || true; }
running_of() { cluster_view "$1" | cut -d'|' -f2 | tr ' ' '\n' | grep . || true; }

quietly() {   # runs a CLI call, showing its output only when it fails
    local out
    out="$("$@" 2>&1)" || { printf '%s\n' "$out" >&2; return 1; }
}

cmd_start() {
    for f in "$RMQ_BIN/rabbitmq-server" "$RMQ_BIN/rabbitmqctl"; do
        [[ -x $f ]] || die "$f missing: install rabbitmq-server (deploy/setup.sh does)"
    done
    write_files
    local n started=() joined=()
    # Every stopped node starts at once: after a full stop each waits for the others.
    for ((n = 1; n <= NODES; n++)); do
        if ! vm_pid "$n" >/dev/null; then start_node "$n"; started+=("$n"); fi
    done
    for n in "${started[@]}"; do await_node "$n"; done
    for ((n = 1; n <= NODES; n++)); do
        amqp_open "$(amqp_port "$n")" || unpause_stuck "$n" 30
    done
    # Fresh nodes join node 1's cluster; a member that was killed or stopped finds it again
    # on its own when it starts.
    local first members
    first="$(node_name 1)"
    members="$(members_of 1)"
    for ((n = 2; n <= NODES; n++)); do
        if ! grep -qx "$(node_name "$n")" <<<"$members"; then
            quietly ctl "$n" -q stop_app
            quietly ctl "$n" -q reset
            quietly ctl "$n" -q join_cluster "$first" || die "$(node_name "$n") could not join $first"
            quietly ctl "$n" -q start_app
            await_node "$n"
            joined+=("$n")
        fi
    done
    # A joining node takes the cluster's feature flags; turn on any it left off. (A member
    # that restarts has them already; a first node has all of them from the start.)
    if ((${#joined[@]})); then
        quietly ctl 1 -q enable_feature_flag all || die "rabbitmqctl enable_feature_flag all failed"
    fi
    local running=0 i
    for ((i = 0; i < 30; i++)); do
        running="$(running_of 1 | grep -c . || true)"
        ((running == NODES)) && break
        sleep 1
    done
    ((running == NODES)) || die "only $running of $NODES nodes run in the cluster (deploy/cluster-rabbitmq.sh status)"
    local how="already running"
    ((${#started[@]} == 0)) || how="started node(s) ${started[*]}"
    ((${#joined[@]} == 0)) || how+=", node(s) ${joined[*]} joined"
    say "cluster-rabbitmq: $how; $NODES of $NODES nodes running in dfe-cluster ($(cmd_urls))"
}

cmd_status() {
    local n pid rc=0
    for ((n = 1; n <= NODES; n++)); do
        if pid="$(vm_pid "$n")"; then
            local state="running"
            [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == T* ]] && state="paused (SIGSTOP)"
            local amqp
            amqp="AMQP $(amqp_port "$n") closed"
            amqp_open "$(amqp_port "$n")" && amqp="AMQP $(amqp_port "$n") open"
            say "$(node_name "$n"): $state, pid $pid, $amqp"
        else
            say "$(node_name "$n"): not running"
            rc=1
        fi
    done
    for ((n = 1; n <= NODES; n++)); do
        if vm_pid "$n" >/dev/null && [[ "$(ps -o stat= -p "$(vm_pid "$n")")" != T* ]]; then
            say "running members seen by node $n: $(running_of "$n" | tr '\n' ' ')"
            local parts
            parts="$(ctl "$n" -q eval 'rabbit_node_monitor:partitions().' 2>/dev/null || echo '?')"
            [[ $parts == "[]" ]] || say "partitions seen by node $n: $parts"
            break
        fi
    done
    if iptables -S "$CHAIN" >/dev/null 2>&1 && iptables -S "$CHAIN" | grep -q -- '-j DROP'; then
        say "partition rules in place (iptables chain $CHAIN): heal with deploy/cluster-rabbitmq.sh heal"
    fi
    return $rc
}

cmd_urls() {
    local vhost=${1:-%2f} n urls=()
    for ((n = 1; n <= NODES; n++)); do urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/$vhost"); done
    (IFS=,; echo "${urls[*]}")
}

cmd_kill() {
    check_n "${1:-}"
    local pid
    pid="$(vm_pid "$1")" || die "$(node_name "$1") is not running"
    kill -KILL "$pid"
    say "killed $(node_name "$1") (pid $pid, SIGKILL)"
}

cmd_stop_node() {
    check_n "${1:-}"
    vm_pid "$1" >/dev/null || { say "$(node_name "$1") is not running"; return 0; }
    ctl "$1" -q stop >/dev/null || die "rabbitmqctl stop of $(node_name "$1") failed"
    say "stopped $(node_name "$1")"
}

cmd_signal() {   # $1 STOP|CONT, $2 node
    check_n "${2:-}"
    local pid
    pid="$(vm_pid "$2")" || die "$(node_name "$2") is not running"
    kill "-$1" "$pid"
    say "sent SIG$1 to $(node_name "$2") (pid $pid)"
}

ensure_chain() {
    command -v iptables >/dev/null || die "iptables is missing: apt-get install iptables"
    iptables -N "$CHAIN" 2>/dev/null || true
    iptables -C INPUT -i lo -j "$CHAIN" 2>/dev/null || iptables -I INPUT 1 -i lo -j "$CHAIN"
}

cmd_partition() {
    check_n "${1:-}"
    ensure_chain
    local port src
    port="$(dist_port "$1")"
    src="127.0.1.$1"
    # Its listener (both directions) and the connections it makes from its own address:
    # exactly node N's distribution traffic. Its AMQP port stays open to clients.
    for rule in "-p tcp --dport $port" "-p tcp --sport $port" "-s $src" "-d $src"; do
        # shellcheck disable=SC2086
        iptables -C "$CHAIN" $rule -j DROP 2>/dev/null || iptables -A "$CHAIN" $rule -j DROP
    done
    say "$(node_name "$1") is cut off from the other nodes (heal with: deploy/cluster-rabbitmq.sh heal)"
}

# A node that pause_minority paused resumes by itself once it sees the majority again, but
# RabbitMQ 3.10 (Debian's) sometimes leaves it paused for good after a partition healed:
# its VM runs, it lists every member as running, and its rabbit app and listener stay
# stopped (and `start_app` hangs). Such a node gets `grace` seconds to resume, then its VM
# is killed and started again, which rejoins it with its data as after a crash.
unpause_stuck() {   # N grace
    local n=$1 grace=$2 t0=$SECONDS pid
    pid="$(vm_pid "$n")" || return 0
    [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == T* ]] && return 0   # SIGSTOPped on purpose
    while ((SECONDS - t0 < grace)); do
        amqp_open "$(amqp_port "$n")" && return 0
        sleep 1
    done
    say "$(node_name "$n") stayed paused after the partition healed: restarting it"
    kill -KILL "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    start_node "$n"
    await_node "$n"
}

cmd_heal() {
    if iptables -S "$CHAIN" >/dev/null 2>&1; then
        iptables -D INPUT -i lo -j "$CHAIN" 2>/dev/null || true
        iptables -F "$CHAIN"
        iptables -X "$CHAIN"
    fi
    say "no partition rules in place"
    local n
    for ((n = 1; n <= NODES; n++)); do unpause_stuck "$n" 30; done
}

cmd_stop() {
    cmd_heal >/dev/null
    local n pid
    for ((n = 1; n <= NODES; n++)); do
        if pid="$(vm_pid "$n")"; then
            kill -CONT "$pid" 2>/dev/null || true
            ctl "$n" -q stop >/dev/null 2>&1 || true
            local i
            for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$BASE"
    rmdir /var/lib/dfe-cluster 2>/dev/null || true
    say "cluster-rabbitmq: stopped; $BASE removed"
}

cmd=${1:-}
shift || true
case $cmd in
    start) cmd_start ;;
    status) cmd_status ;;
    urls) cmd_urls "$@" ;;
    kill) cmd_kill "$@" ;;
    stop-node) cmd_stop_node "$@" ;;
    pause) cmd_signal STOP "$@" ;;
    resume) cmd_signal CONT "$@" ;;
    partition) cmd_partition "$@" ;;
    heal) cmd_heal ;;
    ctl) check_n "${1:-}"; n=$1; shift; ctl "$n" "$@" ;;
    queues) check_n "${1:-}"; n=$1; shift; cli rabbitmq-queues "$n" "$@" ;;
    stop) cmd_stop ;;
    *) sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
