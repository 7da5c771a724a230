#!/usr/bin/env bash
# Makes sure Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672, guest/guest) are running:
# installs them with apt when missing, starts them when stopped, waits until they answer.
# Idempotent; called by `make test`, `make demo` and `make bench`.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2 tries=${3:-120}
  for _ in $(seq 1 "$tries"); do
    if port_open "$port"; then return 0; fi
    sleep 0.5
  done
  log "$name did not open port $port in time"; return 1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server redis-tools)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} with apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! port_open 6379; then
  log "starting redis-server"
  dir=/var/lib/redis; logfile=/var/log/redis/ci.log
  if ! { $SUDO mkdir -p "$dir" /var/log/redis && $SUDO test -w "$dir"; } 2>/dev/null; then
    dir=$(mktemp -d); logfile="$dir/redis.log"
  fi
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$dir" --logfile "$logfile"
  wait_port 6379 redis
fi

if ! port_open 5672; then
  log "starting rabbitmq-server"
  $SUDO rabbitmq-server -detached
  wait_port 5672 rabbitmq 240
  # The port opens before the broker finishes booting its applications.
  $SUDO rabbitmqctl await_startup >/dev/null 2>&1 || true
fi

# A known broker fault (rabbitmq-server#16652): a burst of crashing dead-letter workers stops
# rabbit_fifo_dlx_sup, after which every quorum queue with at-least-once dead-lettering (all of
# wxhub's work queues) fails with INTERNAL_ERROR until the supervisor runs again. Restarting that
# one crashed supervisor in place repairs it without stopping or reconfiguring the broker.
if command -v rabbitmqctl >/dev/null 2>&1; then
  dlx=$($SUDO timeout 30 rabbitmqctl eval 'whereis(rabbit_fifo_dlx_sup).' 2>/dev/null | tail -n 1 || true)
  if [ "$dlx" = "undefined" ]; then
    log "rabbitmq's rabbit_fifo_dlx_sup is down (rabbitmq-server#16652); restarting it in place"
    $SUDO timeout 30 rabbitmqctl eval 'supervisor:restart_child(rabbit_sup, rabbit_fifo_dlx_sup).' >/dev/null 2>&1 || true
  fi
fi
log "redis and rabbitmq are up"
