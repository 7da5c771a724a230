#!/usr/bin/env bash
# A local three-node RabbitMQ cluster beside the machine's broker (which it never touches):
# own node names (wxhub-r1..3@localhost), AMQP and distribution ports, data and log dirs, an
# Erlang cookie of its own, an empty plugins file.
#
#   scripts/rabbitmq-cluster.sh start   # starts and joins the three nodes, prints their URLs
#   scripts/rabbitmq-cluster.sh urls    # the AMQP URLs, comma-separated (for WXHUB_TEST_AMQP_URLS)
#   scripts/rabbitmq-cluster.sh stop    # stops the nodes and deletes their data
#   scripts/rabbitmq-cluster.sh kill N  # SIGKILLs node N (fault injection); start-node N restarts it
#   scripts/rabbitmq-cluster.sh pause N / resume N   # SIGSTOP / SIGCONT node N
#   scripts/rabbitmq-cluster.sh conns N # client connections on node N
#   scripts/rabbitmq-cluster.sh leader QUEUE         # the node number of QUEUE's quorum leader
#
# Ports: AMQP 5681..5683 and distribution 25681..25683 unless WXHUB_RMQ_CLUSTER_PORT sets the
# first AMQP port. State lives in ${WXHUB_RMQ_CLUSTER_DIR:-/tmp/wxhub-rmq-cluster}.
set -euo pipefail

dir=${WXHUB_RMQ_CLUSTER_DIR:-/tmp/wxhub-rmq-cluster}
base=${WXHUB_RMQ_CLUSTER_PORT:-5681}
nodes=(1 2 3)
server=/usr/lib/rabbitmq/bin/rabbitmq-server
ctl=/usr/lib/rabbitmq/bin/rabbitmqctl

log() { printf '[rabbitmq-cluster] %s\n' "$*" >&2; }
name() { echo "wxhub-r$1@localhost"; }
port() { echo $((base + $1 - 1)); }
# The nodes and the CLI find the cluster's cookie in $HOME.
node_env() {
  local n=$1 d="$dir/$1"
  export HOME="$dir" RABBITMQ_NODENAME="$(name "$n")" RABBITMQ_NODE_PORT="$(port "$n")" \
    RABBITMQ_DIST_PORT=$((20000 + $(port "$n"))) RABBITMQ_MNESIA_BASE="$d/mnesia" \
    RABBITMQ_LOG_BASE="$d/log" RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" RABBITMQ_CONF_ENV_FILE="$d/env.conf" \
    ERL_EPMD_ADDRESS=127.0.0.1
}
ctl() { local n=$1; shift; (node_env "$n"; "$ctl" -n "$(name "$n")" "$@"); }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

urls() {
  local out=()
  for n in "${nodes[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(port "$n")/%2f"); done
  (IFS=,; echo "${out[*]}")
}

ensure_installed() {
  if [ ! -x "$server" ]; then
    log "installing rabbitmq-server with apt"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rabbitmq-server >/dev/null
  fi
}

start_node() {
  local n=$1 d="$dir/$1"
  mkdir -p "$d/mnesia" "$d/log"
  printf 'listeners.tcp.1 = 127.0.0.1:%s\nloopback_users.guest = true\n' "$(port "$n")" >"$d/rabbitmq.conf"
  printf '[].\n' >"$d/enabled_plugins"
  : >"$d/env.conf"
  if port_open "$(port "$n")"; then
    log "node $n already listens on $(port "$n")"
    return
  fi
  (node_env "$n"; "$server" -detached >"$d/log/startup.log" 2>&1)
  for _ in $(seq 1 240); do
    if ctl "$n" await_startup >/dev/null 2>&1; then return; fi
    sleep 0.5
  done
  log "node $n did not start; see $d/log"; exit 1
}

start() {
  ensure_installed
  mkdir -p "$dir"
  if [ ! -f "$dir/.erlang.cookie" ]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/.erlang.cookie"
    chmod 400 "$dir/.erlang.cookie"
  fi
  for n in "${nodes[@]}"; do start_node "$n"; done
  for n in 2 3; do
    if ! ctl "$n" cluster_status 2>/dev/null | grep -q "$(name 1)"; then
      ctl "$n" stop_app >/dev/null 2>&1
      ctl "$n" join_cluster "$(name 1)" >/dev/null 2>&1
      ctl "$n" start_app >/dev/null 2>&1
    fi
  done
  local running
  running=$(ctl 1 cluster_status --formatter json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["running_nodes"]))')
  [ "$running" = 3 ] || { log "only $running node(s) running"; exit 1; }
  log "three nodes running: $(urls)"
  urls
}

stop() {
  for n in "${nodes[@]}"; do
    if [ -d "$dir/$n" ]; then ctl "$n" stop >/dev/null 2>&1 || true; fi
  done
  rm -rf "$dir"
  log "stopped"
}

# The node's Erlang VM: its command line does not name the node, its pid file does.
node_pid() {
  cat "$dir/$1/mnesia/$(name "$1").pid" 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  urls) urls ;;
  kill)
    pid=$(node_pid "$2")
    [ -n "$pid" ] && kill -9 "$pid" && log "killed node $2 (pid $pid)" ;;
  pause)
    pid=$(node_pid "$2")
    [ -n "$pid" ] && kill -STOP "$pid" && log "paused node $2 (pid $pid)" ;;
  resume)
    pid=$(node_pid "$2")
    [ -n "$pid" ] && kill -CONT "$pid" && log "resumed node $2 (pid $pid)" ;;
  conns)
    # Connections are listed cluster-wide; the server port a client reached names its node.
    for n in "${nodes[@]}"; do
      if out=$(ctl "$n" list_connections --no-table-headers --quiet port 2>/dev/null); then
        grep -cx "$(port "$2")" <<<"$out" || true
        exit 0
      fi
    done
    echo 0 ;;
  leader)
    for n in "${nodes[@]}"; do
      l=$(ctl "$n" list_queues --no-table-headers --quiet name leader 2>/dev/null | awk -v q="$2" '$1 == q {print $2}')
      if [ -n "$l" ]; then echo "${l#wxhub-r}" | cut -d@ -f1; exit 0; fi
    done
    exit 1 ;;
  start-node) start_node "$2" ;;
  *) echo "usage: $0 start|stop|urls|kill N|pause N|resume N|conns N|leader QUEUE|start-node N" >&2; exit 2 ;;
esac
