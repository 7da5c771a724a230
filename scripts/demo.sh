#!/usr/bin/env bash
# `make demo`: the whole stack — wxhub-sim (as WeChat), token-control, the gateway and the worker —
# on 127.0.0.1 against the local Redis and RabbitMQ, driven end to end:
#   1. WeChat pushes a component_verify_ticket  → gateway → RabbitMQ → token-control stores it
#   2. a merchant authorizes the platform        → authorize page → login page → redirect → exchange
#   3. tokens and authorizers from token-control (the `wxhub` CLI)
#   4. users message the accounts                 → gateway → RabbitMQ (deduplicated retries)
#   5. WeChat's full-network release check (全网发布), all five test groups
#   6. metrics, then a graceful shutdown
# Ports: sim 17000, gateway 17080, token-control 17051 (ops 17091), worker ops 17092, relay 17090.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
demo="$root/deploy/demo"
logs=$(mktemp -d /tmp/wxhub-demo.XXXXXX)
ns=wxhub-demo

say() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
fail() { printf '\033[1;31mdemo failed: %s\033[0m (logs in %s)\n' "$*" "$logs" >&2; exit 1; }

if ! command -v jq >/dev/null 2>&1; then
  echo "[demo] installing jq with apt" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq jq >/dev/null
fi
for port in 17000 17080 17051 17091 17092 17090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then fail "port $port is in use"; fi
done

say "building the binaries"
cargo build --locked -q --bins -p wxhub-sim -p wxhub-gateway -p wxhub-token-control -p wxhub-worker -p wxhub-relay -p wxhub-cli
bin="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug"

# A clean slate for the demo namespace: its Redis keys and queued messages from earlier runs.
redis-cli --scan --pattern "$ns:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
for q in token-control release-check unrouted dead; do
  rabbitmqctl purge_queue "$ns.$q" >/dev/null 2>&1 || true
done

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

export WXHUB_CONFIG="$demo/config.toml"
export WXHUB_TENANTS__FILE="$demo/tenants.toml"
export WXHUB_NAMESPACE="$ns"
start() { # name, api key, command...
  local name=$1 key=$2; shift 2
  WXHUB_CLIENT__API_KEY=$key "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  note "$name started (pid $!, log $logs/$name.log)"
}
wait_http() { # url, what
  for _ in $(seq 1 150); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  fail "$2 did not become ready ($1)"
}

say "starting the stack"
start wxhub-sim "" "$bin/wxhub-sim" serve --listen 127.0.0.1:17000 --seed "$demo/seed.toml"
wait_http http://127.0.0.1:17000/sim/health "wxhub-sim"
# The gateway first: token-control asks WeChat for a ticket push at start, and the push should
# find a gateway that is connected to the broker (otherwise it answers 503 and WeChat retries).
start gateway demo-gateway-key "$bin/wxhub-gateway"
wait_http http://127.0.0.1:17080/readyz "the gateway"
start token-control "" "$bin/wxhub-token-control"
start worker demo-worker-key "$bin/wxhub-worker"
wait_http http://127.0.0.1:17092/readyz "the worker"
wait_http http://127.0.0.1:17091/healthz "token-control"
start relay demo-relay-key "$bin/wxhub-relay"
wait_http http://127.0.0.1:17090/readyz "the relay"
export WXHUB_CLIENT__API_KEY=demo-ops-key
wxhub() { "$bin/wxhub" "$@"; }

say "1. WeChat pushes a component_verify_ticket"
push=$(curl -fsS http://127.0.0.1:17000/sim/push/ticket -H 'content-type: application/json' -d '{"component_appid":"wx0acme0component"}')
note "gateway answered: $(jq -r '.attempts[-1].status' <<<"$push") $(jq -r '.attempts[-1].body' <<<"$push")"
# /readyz is 200 without a ticket too (only that tenant is affected: "degraded"); wait until
# its ticket check turns ready.
for _ in $(seq 1 150); do
  if curl -fsS http://127.0.0.1:17091/readyz 2>/dev/null | jq -e '.tickets.status == "ready"' >/dev/null; then
    ticket_stored=1; break
  fi
  sleep 0.2
done
[ -n "${ticket_stored:-}" ] || fail "token-control did not store the ticket"
note "token-control has the ticket; the component_access_token:"
wxhub token get acme | jq -c '{access_token: (.access_token[0:16] + "…"), expires_at}'

say "2. a merchant authorizes the platform"
note "the authorization start page: http://127.0.0.1:17080/wx/acme/authorize"
page=$(curl -fsS http://127.0.0.1:17080/wx/acme/authorize)
pc_url=$(grep -o 'id="pc" href="[^"]*"' <<<"$page" | sed -e 's/.*href="//' -e 's/"$//' -e 's/&amp;/\&/g')
[ -n "$pc_url" ] || fail "no PC authorization link on the page"
note "PC link: ${pc_url:0:100}…"
# The merchant's admin picks the account on WeChat's login page (the sim's stand-in), which
# pushes `authorized` and redirects the browser to the gateway's /authorized page.
result=$(curl -fsSL "$pc_url&authorizer_appid=wx0demo0bakery")
grep -q '授权成功' <<<"$result" || fail "authorization page did not show success"
note "redirected to /wx/acme/authorized: $(grep -o 'id="account">[^<]*' <<<"$result" | sed 's/.*>//') authorized ($(grep -o 'id="appid">[^<]*' <<<"$result" | sed 's/.*>//'))"

say "3. tokens and authorizers (wxhub CLI → token-control)"
wxhub authorizers list acme | jq -r '.authorizers[] | "   \(.appid)  \(.status)  \(.nick_name)  refresh token held: \(.has_refresh_token)"'
wxhub token get acme wx0demo0bakery | jq -c '{authorizer: .appid, access_token: (.access_token[0:16] + "…"), expires_at}'

say "3b. a custom menu for the authorized account (wxhub CLI → relay → WeChat; no token leaves wxhub)"
wxhub menu create acme wx0demo0bakery --json "$demo/menu.json" | jq -c . | sed 's/^/   created: /'
wxhub menu get acme wx0demo0bakery | jq -r '.menu.button[] | "   button \(.name)\(if .sub_button then " → " + ([.sub_button[].name] | join(", ")) else "" end)"'
if wxhub menu create acme wx0demo0bakery --json "$demo/menu-invalid.json" 2>"$logs/menu-invalid.err"; then
  fail "an invalid menu was accepted"
fi
note "an invalid menu is refused before WeChat: $(cat "$logs/menu-invalid.err")"

say "4. users message the accounts (gateway → RabbitMQ)"
for body in \
  '{"component_appid":"wx0acme0component","appid":"wx0acme0shop0oa","openid":"o_acme_alice","message":{"msgtype":"text","content":"你好, where is my order?"}}' \
  '{"component_appid":"wx0acme0component","appid":"wx0acme0shop0oa","openid":"o_acme_bob","message":{"msgtype":"event","event":"subscribe"}}' \
  '{"appid":"wx0direct0oa","openid":"o_direct_dave","message":{"msgtype":"text","content":"hello direct"}}'; do
  r=$(curl -fsS http://127.0.0.1:17000/sim/push/message -H 'content-type: application/json' -d "$body")
  note "$(jq -r '.what' <<<"$r") → $(jq -r '.attempts[-1].status' <<<"$r") $(jq -r '.attempts[-1].body' <<<"$r")"
done
# WeChat's retry of the same callback is answered but not published twice.
retry=$(jq -r '.url' <<<"$r"); retry_body=$(jq -r '.body' <<<"$r")
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$retry" --data-binary "$retry_body")
note "the same callback again (a WeChat retry) → $status, not published again"
note "in RabbitMQ (no business queue is bound in the demo, so they wait in $ns.unrouted;"
note "\`wxhub events peek\` reads them without consuming):"
wxhub events peek unrouted | jq -r '"     \(.routing_key)  message_id=\(.message_id)  \(.body.msg_type) \(.body.event)"'

say "5. WeChat's full-network release check (全网发布)"
"$bin/wxhub-sim" release-check --sim http://127.0.0.1:17000 --component wx0acme0component \
  --gateway http://127.0.0.1:17080 --tenant acme || fail "the release check failed"

say "6. metrics (excerpt) and a graceful shutdown"
curl -fsS http://127.0.0.1:17080/metrics | grep -E '^wxhub_gateway_(requests_total|dedupe_total)' | sed 's/^/   /' | head -12
curl -fsS http://127.0.0.1:17091/metrics | grep -E '^wxhub_token_refresh_total' | sed 's/^/   /' | head -6
cleanup
trap - EXIT
note "all services stopped on SIGTERM; logs in $logs"
say "demo finished: every step passed"
