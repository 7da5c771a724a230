#!/usr/bin/env bash
# `make demo`: the whole stack — wxhub-sim (as WeChat), token-control, the gateway and the worker —
# on 127.0.0.1 against the local Redis and RabbitMQ, driven end to end:
#   1. WeChat pushes a component_verify_ticket  → gateway → RabbitMQ → token-control stores it
#   2. a merchant authorizes the platform        → authorize page → login page → redirect → exchange
#   3. tokens and authorizers from token-control (the `wxhub` CLI)
#   4. users message the accounts                 → gateway → RabbitMQ (deduplicated retries)
#   5. WeChat's full-network release check (全网发布), all five test groups
#   6. messages sent through the messaging service (worker): customer-service and template sends,
#      a rejected token (40001) healed, a permanent failure, WeChat's delivery report, a campaign
#   7. a custom menu created through the relay, without holding a token
#   8. metrics
#   9. token refreshes across two simulated hours (60 s tokens standing for WeChat's 2 hours)
#      while every credential is read, then a graceful shutdown
# Ports: sim 17000, gateway 17080, token-control 17051 (ops 17091), worker 17052 (ops 17092),
# relay 17090.
#
# `scripts/demo.sh up` (`make up`) starts the same stack, gives it a ticket, prints every address
# and leaves it running; `scripts/demo.sh down` (`make down`) stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
demo="$root/deploy/demo"
mode=${1:-demo}
state=${TMPDIR:-/tmp}/wxhub-up
ns=wxhub-demo

case "$mode" in
  demo|up) ;;
  down)
    if [ ! -f "$state/pids" ]; then echo "[down] no stack started by 'make up' is running"; exit 0; fi
    while read -r pid name; do
      if kill "$pid" 2>/dev/null; then echo "[down] stopped $name (pid $pid)"; fi
    done <"$state/pids"
    # Graceful: each service drains on SIGTERM; wait until they are gone (bounded).
    for _ in $(seq 1 100); do
      alive=0
      while read -r pid _; do if kill -0 "$pid" 2>/dev/null; then alive=1; fi; done <"$state/pids"
      [ "$alive" = 0 ] && break
      sleep 0.1
    done
    rm -f "$state/pids"
    echo "[down] logs kept in $(cat "$state/logs" 2>/dev/null || echo "$state")"
    exit 0 ;;
  *) echo "usage: $0 [demo|up|down]" >&2; exit 2 ;;
esac
if [ "$mode" = up ] && [ -f "$state/pids" ]; then
  echo "[up] a stack is already running (make down stops it)" >&2; exit 1
fi
logs=$(mktemp -d /tmp/wxhub-demo.XXXXXX)

say() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
fail() { printf '\033[1;31mdemo failed: %s\033[0m (logs in %s)\n' "$*" "$logs" >&2; exit 1; }

if ! command -v jq >/dev/null 2>&1; then
  echo "[demo] installing jq with apt" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq jq >/dev/null
fi
for port in 17000 17080 17051 17052 17090 17091 17092; do
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
  if [ "$mode" = up ]; then
    # Its own session: it outlives this script and make, until `make down`.
    WXHUB_CLIENT__API_KEY=$key setsid "$@" >"$logs/$name.log" 2>&1 < /dev/null &
    mkdir -p "$state" && echo "$! $name" >>"$state/pids" && echo "$logs" >"$state/logs"
  else
    WXHUB_CLIENT__API_KEY=$key "$@" >"$logs/$name.log" 2>&1 &
  fi
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
# Token time runs 120x faster in the demo: WeChat's 7,200 s tokens (and JS-SDK tickets) are granted
# for 60 s, so the demo's few minutes cover hours of refreshes (step 9). `make up` keeps real lifetimes.
ttl=7200; [ "$mode" = demo ] && ttl=60
start wxhub-sim "" "$bin/wxhub-sim" serve --listen 127.0.0.1:17000 --seed "$demo/seed.toml" --delivery-report-ms 500 --token-ttl "$ttl"
wait_http http://127.0.0.1:17000/sim/health "wxhub-sim"
# The gateway first: token-control asks WeChat for a ticket push at start, and the push should
# find a gateway that is connected to the broker (otherwise it answers 503 and WeChat retries).
start gateway demo-gateway-key "$bin/wxhub-gateway"
wait_http http://127.0.0.1:17080/readyz "the gateway"
start token-control "" "$bin/wxhub-token-control"
start worker demo-worker-key "$bin/wxhub-worker"
start relay demo-relay-key "$bin/wxhub-relay"
wait_http http://127.0.0.1:17092/readyz "the worker"
wait_http http://127.0.0.1:17091/healthz "token-control"
wait_http http://127.0.0.1:17090/readyz "the relay"
export WXHUB_CLIENT__API_KEY=demo-ops-key
wxhub() { "$bin/wxhub" "$@"; }

say "1. WeChat pushes a component_verify_ticket to each of the two platforms"
for component in wx0acme0component wx0globex0component; do
  push=$(curl -fsS http://127.0.0.1:17000/sim/push/ticket -H 'content-type: application/json' -d "{\"component_appid\":\"$component\"}")
  note "$component: gateway answered $(jq -r '.attempts[-1].status' <<<"$push") $(jq -r '.attempts[-1].body' <<<"$push")"
done
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

if [ "$mode" = up ]; then
  trap - EXIT
  say "the stack is up (make down stops it)"
  cat <<ADDRESSES
   wxhub-sim (WeChat)      http://127.0.0.1:17000   (/sim/health, /sim/push/*, /sim/messages)
   gateway                 http://127.0.0.1:17080   (/readyz, /metrics, callbacks under /wx/{tenant}/...)
   authorization page      http://127.0.0.1:17080/wx/acme/authorize
   token-control gRPC      127.0.0.1:17051          (grpcurl -plaintext -H 'authorization: Bearer demo-ops-key' 127.0.0.1:17051 list)
   token-control ops       http://127.0.0.1:17091   (/healthz, /readyz, /metrics)
   worker (messaging gRPC) 127.0.0.1:17052          (wxhub send custom acme wx0acme0shop0oa --to o_acme_alice --text hi)
   worker ops              http://127.0.0.1:17092   (/healthz, /readyz, /metrics)
   relay                   http://127.0.0.1:17090   (/v1/{tenant}/{appid}/{wechat path}, Bearer demo-ops-key)
   Redis                   redis://127.0.0.1:6379   (keys under $ns:*)
   RabbitMQ                amqp://127.0.0.1:5672    (queues $ns.*)
   CLI                     export WXHUB_CONFIG=$demo/config.toml WXHUB_TENANTS__FILE=$demo/tenants.toml
                           export WXHUB_NAMESPACE=$ns WXHUB_CLIENT__API_KEY=demo-ops-key
                           $bin/wxhub authorizers list acme
   logs                    $logs
ADDRESSES
  exit 0
fi

say "2. merchants authorize the platforms (three accounts, through the pages)"
authorize() { # tenant, authorizer appid
  local page pc_url result
  page=$(curl -fsS "http://127.0.0.1:17080/wx/$1/authorize")
  pc_url=$(grep -o 'id="pc" href="[^"]*"' <<<"$page" | sed -e 's/.*href="//' -e 's/"$//' -e 's/&amp;/\&/g')
  [ -n "$pc_url" ] || fail "no PC authorization link on /wx/$1/authorize"
  # The merchant's admin picks the account on WeChat's login page (the sim's stand-in), which
  # pushes `authorized` and redirects the browser to the gateway's /authorized page.
  result=$(curl -fsSL "$pc_url&authorizer_appid=$2")
  grep -q '授权成功' <<<"$result" || fail "authorizing $2 for $1: the page did not show success"
  note "/wx/$1/authorize → WeChat's login page → /wx/$1/authorized: $(grep -o 'id="account">[^<]*' <<<"$result" | sed 's/.*>//') ($(grep -o 'id="appid">[^<]*' <<<"$result" | sed 's/.*>//'))"
}
note "the authorization start page: http://127.0.0.1:17080/wx/acme/authorize"
authorize acme wx0demo0bakery
authorize acme wx0demo0cafe
authorize globex wx0globex0store

say "3. tokens and authorizers (wxhub CLI → token-control)"
for t in acme globex; do
  wxhub authorizers list "$t" | jq -r --arg t "$t" '.authorizers[] | "   \($t)  \(.appid)  \(.status)  \(.nick_name)  refresh token held: \(.has_refresh_token)"'
done
wxhub token get acme wx0demo0bakery | jq -c '{authorizer: .appid, access_token: (.access_token[0:16] + "…"), expires_at}'

say "4. users message the accounts (gateway → RabbitMQ)"
for body in \
  '{"component_appid":"wx0acme0component","appid":"wx0acme0shop0oa","openid":"o_acme_alice","message":{"msgtype":"text","content":"你好, where is my order?"}}' \
  '{"component_appid":"wx0acme0component","appid":"wx0acme0shop0oa","openid":"o_acme_bob","message":{"msgtype":"event","event":"subscribe"}}' \
  '{"appid":"wx0direct0oa","openid":"o_direct_dave","message":{"msgtype":"text","content":"hello direct"}}'; do
  r=$(curl -fsS http://127.0.0.1:17000/sim/push/message -H 'content-type: application/json' -d "$body")
  note "$(jq -r '.what' <<<"$r") → $(jq -r '.attempts[-1].status' <<<"$r") $(jq -r '.attempts[-1].body' <<<"$r")"
done
# One of every other kind a user can send, and the usual events.
for m in \
  '{"msgtype":"image"}' '{"msgtype":"voice","recognition":"你好"}' '{"msgtype":"video"}' '{"msgtype":"shortvideo"}' \
  '{"msgtype":"location","location_x":23.134521,"location_y":113.358803,"label":"广州"}' \
  '{"msgtype":"link","title":"wxhub","url":"https://example.com/wxhub"}' \
  '{"msgtype":"event","event":"unsubscribe"}' '{"msgtype":"event","event":"CLICK","event_key":"V1001_TODAY"}' \
  '{"msgtype":"event","event":"VIEW","event_key":"https://example.com/"}' '{"msgtype":"event","event":"SCAN","event_key":"123"}' \
  '{"msgtype":"event","event":"LOCATION","fields":{"Latitude":"23.137466","Longitude":"113.352425","Precision":"119.385040"}}'; do
  r=$(curl -fsS http://127.0.0.1:17000/sim/push/message -H 'content-type: application/json' \
    -d "{\"component_appid\":\"wx0acme0component\",\"appid\":\"wx0acme0shop0oa\",\"openid\":\"o_acme_bob\",\"message\":$m}")
  [ "$(jq -r '.attempts[-1].status' <<<"$r")" = 200 ] || fail "push of $m: $(jq -c '.attempts[-1]' <<<"$r")"
done
note "11 more kinds pushed (image, voice, video, shortvideo, location, link and six events), each answered 200"
# WeChat's retry of the same callback is answered but not published twice.
retry=$(jq -r '.url' <<<"$r"); retry_body=$(jq -r '.body' <<<"$r")
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$retry" --data-binary "$retry_body")
note "the same callback again (a WeChat retry) → $status, not published again"
note "in RabbitMQ (no business queue is bound in the demo, so they wait in $ns.unrouted;"
note "\`wxhub events peek\` reads them without consuming):"
note "messages per routing key:"
wxhub events peek unrouted --count 100 | jq -rs 'group_by(.routing_key)[] | "     \(length)  \(.[0].routing_key)"'
[ "$(wxhub events peek unrouted --count 100 | jq -s 'length')" -ge 14 ] || fail "not every callback is in RabbitMQ"

say "5. WeChat's full-network release check (全网发布)"
"$bin/wxhub-sim" release-check --sim http://127.0.0.1:17000 --component wx0acme0component \
  --gateway http://127.0.0.1:17080 --tenant acme || fail "the release check failed"

say "6. messages through the messaging service (wxhub send → worker → WeChat)"
shop=wx0acme0shop0oa
job_line() { # job JSON → one line
  jq -r '"   job \(.job_id[0:12])… \(.kind) to \(.touser): \(.state)\(if .errcode != 0 then " (errcode \(.errcode): \(.reason))" else "" end); attempts \(.attempts | length)\(if .delivery_status != "" then "; delivery report: \(.delivery_status)" else "" end)"'
}
settle() { # job id, expected state
  local j
  j=$(wxhub job "$1" --wait 30) || fail "wxhub job $1"
  job_line <<<"$j"
  [ "$(jq -r .state <<<"$j")" = "$2" ] || fail "job $1 ended $(jq -r .state <<<"$j"), expected $2"
}
id=$(wxhub send custom acme "$shop" --to o_acme_alice --text "Your order has shipped 📦" | jq -r .job_id)
settle "$id" sent
# WeChat rejects the next token once (40001): the worker reports it to token-control, gets a
# fresh one and sends again at once.
curl -fsS http://127.0.0.1:17000/sim/faults -H 'content-type: application/json' \
  -d '{"path":"/cgi-bin/message/custom/send","errcode":40001,"times":1}' >/dev/null
id=$(wxhub send custom acme "$shop" --to o_acme_alice --text "A second message, after a token rejection" | jq -r .job_id)
settle "$id" sent
healed=$(curl -fsS http://127.0.0.1:17092/metrics | awk '/^wxhub_worker_token_invalidations_total/ {print $2}')
[ "${healed:-0}" != 0 ] || fail "the worker did not report the rejected token"
note "WeChat answered 40001 once; the worker reported the token (wxhub_worker_token_invalidations_total $healed) and sent with the fresh one"
# Frank never wrote to the account: outside the 48-hour window WeChat refuses (45015), a
# permanent failure that is not retried.
id=$(wxhub send custom acme "$shop" --to o_acme_frank --text "Hello Frank" | jq -r .job_id)
settle "$id" failed
# A template message; WeChat later pushes TEMPLATESENDJOBFINISH, which the worker matches by msgid.
printf '%s' '{"touser":"o_acme_bob","template_id":"TMPL_order_shipped","url":"https://shop.example/orders/42","data":{"order":{"value":"#42"},"status":{"value":"shipped"}}}' >"$logs/template.json"
id=$(wxhub send template acme "$shop" --json "$logs/template.json" | jq -r .job_id)
settle "$id" delivered
# A batch (EnqueueBatch): each message answered as a single Enqueue would be — here a
# customer-service message and a template queued, and a malformed OpenID refused alone.
cat >"$logs/batch.json" <<JSON
[{"type":"custom","appid":"$shop","touser":"o_acme_alice","msgtype":"text","text":{"content":"In a batch"}},
 {"type":"template","appid":"$shop","touser":"o_acme_bob","template_id":"TMPL_order_shipped","data":{"order":{"value":"#43"},"status":{"value":"packed"}}},
 {"type":"custom","appid":"$shop","touser":"not an openid","msgtype":"text","text":{"content":"x"}}]
JSON
batch=$(wxhub send batch acme --json "$logs/batch.json") || fail "wxhub send batch"
jq -r '.results[] | "   \(.job_id // .error)"' <<<"$batch"
[ "$(jq '[.results[] | select(.job_id)] | length' <<<"$batch")" = 2 ] || fail "the batch did not queue its two good messages"
jq -e '.results[2].error | test("InvalidArgument")' <<<"$batch" >/dev/null || fail "the batch's bad OpenID was not refused"
settle "$(jq -r '.results[0].job_id' <<<"$batch")" sent
settle "$(jq -r '.results[1].job_id' <<<"$batch")" delivered

# A campaign: one template to several recipients, fed to the send queue at the account's rate.
printf '%s' '{"template_id":"TMPL_order_shipped","data":{"order":{"value":"spring sale"},"status":{"value":"started"}}}' >"$logs/campaign.json"
printf '%s\n' o_acme_alice o_acme_bob o_acme_frank >"$logs/recipients.txt"
campaign=$(wxhub campaign create acme "$shop" --kind template --json "$logs/campaign.json" --recipients "$logs/recipients.txt" | jq -r .campaign_id)
for _ in $(seq 1 150); do
  c=$(wxhub campaign get "$campaign")
  # Done: every recipient fed and every job final (remaining counts only the not yet fed).
  [ "$(jq -r .state <<<"$c")" = done ] && break
  sleep 0.2
done
jq -r '"   campaign \(.campaign_id[0:12])…: \(.state); total \(.total), sent \(.sent), failed \(.failed), unknown \(.unknown), remaining \(.remaining)"' <<<"$c"
[ "$(jq -r .sent <<<"$c")" = 3 ] || fail "the campaign did not send to its three recipients"

say "7. a custom menu through the relay (wxhub CLI → relay → WeChat; no token leaves wxhub)"
wxhub menu create acme wx0demo0bakery --json "$demo/menu.json" | jq -c . | sed 's/^/   created: /'
wxhub menu get acme wx0demo0bakery | jq -r '.menu.button[] | "   button \(.name)\(if .sub_button then " → " + ([.sub_button[].name] | join(", ")) else "" end)"'
if wxhub menu create acme wx0demo0bakery --json "$demo/menu-invalid.json" 2>"$logs/menu-invalid.err"; then
  fail "an invalid menu was accepted"
fi
note "an invalid menu is refused before WeChat: $(cat "$logs/menu-invalid.err")"

say "8. metrics (excerpt)"
curl -fsS http://127.0.0.1:17080/metrics | grep -E '^wxhub_gateway_(requests_total|dedupe_total)' | sed 's/^/   /' | head -12
curl -fsS http://127.0.0.1:17092/metrics | grep -E '^wxhub_messaging_' | sed 's/^/   /' | head -8

say "9. token refreshes across two simulated hours (1 real second = 2 simulated minutes)"
# Every credential is read once per simulated 10 minutes (5 s) for two simulated hours (60 s);
# token-control refreshes each one ahead of its expiry (at ~80 % of its lifetime ± 5 %; stable_token
# at its expiry), once per lifetime, however many readers: 1 or 2 issues per credential, no storm.
creds=("acme" "globex" "acme wx0demo0bakery" "acme wx0demo0cafe" "globex wx0globex0store" "direct" "acme-corp")
sim_now() { curl -fsS http://127.0.0.1:17000/sim/clock | jq .now_ms; }
t0=$(sim_now)
reads=0
while [ $(($(sim_now) - t0)) -lt 62000 ]; do
  for cred in "${creds[@]}"; do
    # shellcheck disable=SC2086 # a tenant and, for an authorizer, its appid
    wxhub token get $cred >/dev/null || fail "reading the token of $cred"
    reads=$((reads + 1))
  done
  wxhub menu get acme wx0demo0bakery >/dev/null || fail "a relayed call during the refreshes"
  sleep 5
done
calls=$(curl -fsS http://127.0.0.1:17000/sim/calls | jq --argjson t0 "$t0" '[.calls[] | select(.sim_time_ms >= $t0)]')
issues=$(jq '[.[] | select(.errcode == 0 and (.path | test("api_component_token|api_authorizer_token|^/cgi-bin/(stable_)?token$|^/cgi-bin/gettoken$")))]' <<<"$calls")
shown='["wx0acme0component","wx0globex0component","wx0demo0bakery","wx0demo0cafe","wx0globex0store","wx0direct0oa","ww0acme0corp"]'
note "tokens WeChat issued in the window (simulated minutes after its start):"
jq -r --argjson t0 "$t0" --argjson shown "$shown" 'group_by(.appid)[] | select(.[0].appid as $a | $shown | index($a)) | "     \(.[0].appid) (\(.[0].path | split("/") | last)): \([.[] | ((.sim_time_ms - $t0) / 500 | floor | tostring) + " min"] | join(", "))"' <<<"$issues"
others=$(jq --argjson shown "$shown" '[group_by(.appid)[] | select(.[0].appid as $a | $shown | index($a) | not)] | length' <<<"$issues")
note "and $others more authorizers token-control holds (the release check's test accounts, the seed's), refreshed alike"
expired=$(jq '[.[] | select(.errcode == 42001 or .errcode == 40001)] | length' <<<"$calls")
per_cred=$(jq 'group_by(.appid) | map(length)' <<<"$issues")
note "$reads token reads and a relayed call every 10 simulated minutes; WeChat refused a token (40001/42001) $expired times"
[ "$expired" = 0 ] || fail "a token WeChat no longer accepts was used"
missing=$(jq -c --argjson shown "$shown" '$shown - [.[].appid]' <<<"$issues")
[ "$missing" = "[]" ] || fail "not refreshed in two simulated hours: $missing"
jq -e 'min >= 1 and max <= 2' <<<"$per_cred" >/dev/null || fail "tokens issued per credential: $(jq -c . <<<"$per_cred") (expected 1 or 2 each)"
note "all $(jq length <<<"$per_cred") credentials refreshed, 1 or 2 issues each in the window: never a storm; each ahead of"
note "expiry, but the OA's stable_token at its expiry (normal mode repeats a token until then; docs/token-control.md)"
curl -fsS http://127.0.0.1:17091/metrics | grep -E '^wxhub_token_refresh_total' | sed 's/^/   /' | head -8

say "10. a graceful shutdown"
cleanup
trap - EXIT
note "all services stopped on SIGTERM; logs in $logs"
say "demo finished: every step passed"
