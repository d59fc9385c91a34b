#!/usr/bin/env bash
# A 3-node nats-server cluster on 127.0.0.1 for cluster mode's tests (PROTOCOL.md §19).
#
#   scripts/nats-cluster.sh start   # fresh cluster; prints the client URLs, comma-separated
#   scripts/nats-cluster.sh urls    # prints the URLs of the running cluster
#   scripts/nats-cluster.sh stop    # stops every node by its own pid
#   scripts/nats-cluster.sh resume  # starts the stopped nodes again, stores kept (fault tests)
#
# - The binary comes from scripts/setup-nats.sh (pinned, hash-checked).
# - Every node has `jetstream { sync_interval: always }`: a node fsyncs before it acks, so
#   an acknowledged write survives a crash of every node (see shared/design/scale-out.md).
# - Ports are free ones the kernel hands out, so two checkouts never collide; state lives
#   under target/nats/cluster/ (override with CAR_NATS_CLUSTER_DIR): per node its config,
#   store, log and pid file. `start` always begins from empty stores: this is a test
#   cluster, and tests name their own streams.
# - `start` waits, bounded, until every node's monitoring port answers
#   /healthz?js-enabled-only=true and the JetStream meta group has a leader; otherwise it
#   stops what it started and fails naming the node and its log.
# - Nodes are stopped by the pids this script recorded (SIGTERM, then SIGKILL after a grace
#   period), never by process name.
set -euo pipefail

NODES=3
# How long a start may take until every node is healthy: a cold start with an empty store
# takes 1-3 s here; the margin covers a loaded 2-core machine.
HEALTH_TIMEOUT_SECS=30
# How long a node gets to exit after SIGTERM before SIGKILL (JetStream flushes on TERM).
STOP_GRACE_SECS=10

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${CAR_NATS_CLUSTER_DIR:-$root/target/nats/cluster}"

usage() {
    echo "usage: $0 start|stop|resume|urls" >&2
    exit 64
}

alive() {
    local pid="$1"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

node_pid() {
    cat "$dir/n$1/pid" 2>/dev/null || true
}

# Free TCP ports on 127.0.0.1, one per line.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
PY
}

# GETs a URL; succeeds when the answer is 200. Prints the body.
http_ok() {
    python3 - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.stdout.write(r.read().decode())
        sys.exit(0 if r.status == 200 else 1)
except Exception as e:
    sys.stdout.write(str(e))
    sys.exit(1)
PY
}

# Whether the JetStream meta group (the cluster's JetStream API) has a leader, as node $1
# sees it.
meta_leader() {
    local body
    body="$(http_ok "http://127.0.0.1:$1/jsz")" || return 1
    python3 -c 'import json,sys; m=json.loads(sys.argv[1]).get("meta_cluster") or {}; sys.exit(0 if m.get("leader") else 1)' "$body"
}

stop_cluster() {
    local i pid deadline
    for i in $(seq 1 "$NODES"); do
        pid="$(node_pid "$i")"
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for i in $(seq 1 "$NODES"); do
        pid="$(node_pid "$i")"
        deadline=$((SECONDS + STOP_GRACE_SECS))
        while alive "$pid" && [ $SECONDS -lt $deadline ]; do
            sleep 0.1
        done
        if alive "$pid"; then
            echo "nats-cluster.sh: node n$i (pid $pid) did not stop in ${STOP_GRACE_SECS}s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$dir/n$i/pid"
    done
    rm -f "$dir/urls"
}

running() {
    local i
    [ -f "$dir/urls" ] || return 1
    for i in $(seq 1 "$NODES"); do
        alive "$(node_pid "$i")" || return 1
    done
}

start_cluster() {
    local nats i j ports client cluster monitor routes urls deadline pid
    nats="$("$root/scripts/setup-nats.sh")"
    stop_cluster
    rm -rf "$dir"
    mkdir -p "$dir"
    mapfile -t ports < <(free_ports $((NODES * 3)))
    urls=()
    for i in $(seq 1 "$NODES"); do
        client[i]="${ports[$(((i - 1) * 3))]}"
        cluster[i]="${ports[$(((i - 1) * 3 + 1))]}"
        monitor[i]="${ports[$(((i - 1) * 3 + 2))]}"
        urls+=("nats://127.0.0.1:${client[i]}")
    done
    for i in $(seq 1 "$NODES"); do
        mkdir -p "$dir/n$i/store"
        routes=""
        for j in $(seq 1 "$NODES"); do
            [ "$j" = "$i" ] && continue
            routes+="    nats-route://127.0.0.1:${cluster[j]}"$'\n'
        done
        cat >"$dir/n$i/nats.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${client[i]}
http: 127.0.0.1:${monitor[i]}
jetstream {
  store_dir: "$dir/n$i/store"
  sync_interval: always
}
cluster {
  name: car-test
  listen: 127.0.0.1:${cluster[i]}
  routes: [
$routes  ]
}
EOF
        echo "${monitor[i]}" >"$dir/n$i/monitor-port"
        launch_node "$nats" "$i"
    done
    (IFS=,; echo "${urls[*]}") >"$dir/cluster-urls"
    wait_healthy
}

# Starts node $2 from its config (its store as it is) with binary $1, recording its pid.
launch_node() {
    # setsid: the node is not in the caller's process group, so a ^C in the shell that
    # ran the tests does not kill it behind our back; `stop` ends it by its pid.
    setsid "$1" -c "$dir/n$2/nats.conf" >>"$dir/n$2/log" 2>&1 </dev/null &
    echo $! >"$dir/n$2/pid"
}

# Waits, bounded, until every node is healthy with a meta leader; then records and prints
# the URLs. Stops the cluster and fails otherwise.
wait_healthy() {
    local i pid monitor deadline
    deadline=$((SECONDS + HEALTH_TIMEOUT_SECS))
    for i in $(seq 1 "$NODES"); do
        monitor="$(cat "$dir/n$i/monitor-port")"
        until http_ok "http://127.0.0.1:$monitor/healthz?js-enabled-only=true" >/dev/null \
            && meta_leader "$monitor"; do
            pid="$(node_pid "$i")"
            if ! alive "$pid" || [ $SECONDS -ge $deadline ]; then
                echo "nats-cluster.sh: node n$i (pid $pid, monitoring port $monitor) is not healthy after ${HEALTH_TIMEOUT_SECS}s; its log ($dir/n$i/log) ends:" >&2
                tail -n 20 "$dir/n$i/log" >&2 || true
                stop_cluster
                exit 1
            fi
            sleep 0.2
        done
    done
    cp "$dir/cluster-urls" "$dir/urls"
    cat "$dir/urls"
}

# Starts again every stopped node of the cluster last started here, with its store: what
# it acknowledged before the stop is still there (a whole-cluster restart).
resume_cluster() {
    local nats i
    nats="$("$root/scripts/setup-nats.sh")"
    if [ ! -f "$dir/cluster-urls" ]; then
        echo "nats-cluster.sh: no cluster to resume in $dir (scripts/nats-cluster.sh start)" >&2
        exit 1
    fi
    for i in $(seq 1 "$NODES"); do
        alive "$(node_pid "$i")" || launch_node "$nats" "$i"
    done
    wait_healthy
}

case "${1:-}" in
    start) start_cluster ;;
    stop) stop_cluster ;;
    resume) resume_cluster ;;
    urls)
        if running; then
            cat "$dir/urls"
        else
            echo "nats-cluster.sh: no cluster is running (scripts/nats-cluster.sh start)" >&2
            exit 1
        fi
        ;;
    *) usage ;;
esac
