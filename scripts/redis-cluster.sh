#!/usr/bin/env bash
# A local six-node Redis Cluster (three primaries, three replicas) beside the machine's Redis on
# 6379, which it never touches: its own ports, config files, data and logs under one directory,
# redis-server and redis-cli from Debian's packages (installed with apt when missing).
#
#   scripts/redis-cluster.sh start        # starts (or finds running) the six nodes, prints their URLs
#   scripts/redis-cluster.sh urls         # the node URLs, comma-separated (for WXHUB_TEST_REDIS_CLUSTER)
#   scripts/redis-cluster.sh stop         # stops the nodes and deletes their directory
#   scripts/redis-cluster.sh kill N       # SIGKILLs node N (1..6; fault injection)
#   scripts/redis-cluster.sh start-node N # starts node N again (it rejoins with its nodes.conf)
#   scripts/redis-cluster.sh primary-of KEY  # the node number serving KEY's slot now
#
# Ports: six consecutive free ports from WXHUB_REDIS_CLUSTER_PORT (default 7101), each with its
# cluster bus port (+10000) free too; the block found is kept in the directory, so `urls`, `kill`
# and `start-node` agree with `start`. State lives in ${WXHUB_REDIS_CLUSTER_DIR:-/tmp/wxhub-redis-cluster}.
# Failover is quick on purpose (cluster-node-timeout 1000 ms): a killed primary's replica takes
# over in about two seconds.
set -euo pipefail

dir=${WXHUB_REDIS_CLUSTER_DIR:-/tmp/wxhub-redis-cluster}
first=${WXHUB_REDIS_CLUSTER_PORT:-7101}
nodes=(1 2 3 4 5 6)

log() { printf '[redis-cluster] %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base() {
  if [ -f "$dir/base" ]; then cat "$dir/base"; else echo "$first"; fi
}
port() { echo $(($(base) + $1 - 1)); }
cli() { local n=$1; shift; redis-cli -h 127.0.0.1 -p "$(port "$n")" "$@"; }

urls() {
  local out=()
  for n in "${nodes[@]}"; do out+=("redis://127.0.0.1:$(port "$n")"); done
  (IFS=,; echo "${out[*]}")
}

ensure_installed() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing redis-server and redis-tools with apt"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools >/dev/null
  fi
}

# The first block of six ports from $first whose ports and bus ports are all free.
find_base() {
  local b=$first
  while [ "$b" -lt 20000 ]; do
    local free=1
    for n in "${nodes[@]}"; do
      local p=$((b + n - 1))
      if port_open "$p" || port_open $((p + 10000)); then free=0; break; fi
    done
    if [ "$free" = 1 ]; then echo "$b"; return; fi
    b=$((b + 10))
  done
  log "no six free ports from $first"; exit 1
}

start_node() {
  local n=$1 d="$dir/$1" p
  p=$(port "$n")
  mkdir -p "$d"
  if port_open "$p" && [ "$(cli "$n" ping 2>/dev/null)" = PONG ]; then
    return
  fi
  cat >"$d/redis.conf" <<EOF
bind 127.0.0.1
port $p
dir $d
daemonize yes
pidfile $d/redis.pid
logfile $d/redis.log
cluster-enabled yes
cluster-config-file $d/nodes.conf
cluster-node-timeout 1000
cluster-replica-validity-factor 0
save ""
appendonly no
EOF
  redis-server "$d/redis.conf"
  for _ in $(seq 1 100); do
    if [ "$(cli "$n" ping 2>/dev/null)" = PONG ]; then return; fi
    sleep 0.1
  done
  log "node $n did not start; see $d/redis.log"; exit 1
}

cluster_ok() {
  for n in "${nodes[@]}"; do
    local info
    info=$(cli "$n" cluster info 2>/dev/null) || return 1
    grep -q '^cluster_state:ok' <<<"$info" || return 1
    grep -q '^cluster_known_nodes:6' <<<"$info" || return 1
  done
}

start() {
  ensure_installed
  mkdir -p "$dir"
  if [ ! -f "$dir/base" ]; then find_base >"$dir/base"; fi
  for n in "${nodes[@]}"; do start_node "$n"; done
  if ! cluster_ok; then
    # A fresh set of nodes (no slots assigned anywhere): create the cluster.
    if [ "$(cli 1 cluster info | sed -n 's/^cluster_slots_assigned:\([0-9]*\).*/\1/p')" = 0 ]; then
      local addrs=()
      for n in "${nodes[@]}"; do addrs+=("127.0.0.1:$(port "$n")"); done
      redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
        || { log "cluster create failed; see $dir/create.log"; exit 1; }
    fi
    for _ in $(seq 1 150); do
      if cluster_ok; then break; fi
      sleep 0.2
    done
    cluster_ok || { log "cluster not ok; see $dir/*/redis.log"; exit 1; }
  fi
  log "six nodes running: $(urls)"
  urls
}

stop() {
  if [ -f "$dir/base" ]; then
    for n in "${nodes[@]}"; do
      if [ -f "$dir/$n/redis.pid" ]; then
        kill -9 "$(cat "$dir/$n/redis.pid")" 2>/dev/null || true
      fi
    done
  fi
  rm -rf "$dir"
  log "stopped"
}

kill_node() {
  local n=$1
  [ -f "$dir/$n/redis.pid" ] || { log "node $n has no pid file"; exit 1; }
  kill -9 "$(cat "$dir/$n/redis.pid")"
  rm -f "$dir/$n/redis.pid"
  log "killed node $n (port $(port "$n"))"
}

# The node number whose port serves KEY's slot, per a live node's CLUSTER SHARDS-free view:
# CLUSTER KEYSLOT, then CLUSTER SLOTS.
primary_of() {
  local key=$1 live slot
  for n in "${nodes[@]}"; do
    if [ "$(cli "$n" ping 2>/dev/null)" = PONG ]; then live=$n; break; fi
  done
  [ -n "${live:-}" ] || { log "no node answers"; exit 1; }
  slot=$(cli "$live" cluster keyslot "$key")
  cli "$live" --no-raw cluster slots 2>/dev/null | python3 -c '
import re, sys
slot, base = int(sys.argv[1]), int(sys.argv[2])
text = sys.stdin.read()
# Each range: "1) 1) (integer) start 2) (integer) end 3) 1) "ip" 2) (integer) port ..."
blocks = re.split(r"\n(?=\d+\) 1\) \(integer\))", text)
for b in blocks:
    nums = re.findall(r"\(integer\) (\d+)", b)
    if len(nums) >= 3 and int(nums[0]) <= slot <= int(nums[1]):
        print(int(nums[2]) - base + 1)
        break
' "$slot" "$(base)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  urls) urls ;;
  kill) kill_node "$2" ;;
  start-node) start_node "$2" ;;
  primary-of) primary_of "$2" ;;
  *) echo "usage: $0 start|stop|urls|kill N|start-node N|primary-of KEY" >&2; exit 2 ;;
esac
