#!/usr/bin/env bash
# `make bench`: runs every benchmark and prints its figures.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== protocol core: verify + decrypt + parse of a ~1.2 KB encrypted text callback (one core)"
cargo bench --locked --workspace --bench callback 2>/dev/null | grep -E '^callback/|thrpt|time:' | grep -v '^ *change' || true

echo "== gateway: floor (Redis claim + confirmed publish + complete, no HTTP/crypto) vs wxhub-loadgen at max and at half rate"
cargo bench --locked --workspace --bench gateway 2>/dev/null | grep -E '^(rounds|floor|gateway)'

echo "== token-control: gRPC token reads from a warm store (cache on / off), and 100,000 authorizers over a token lifetime on 3 replicas (virtual time)"
cargo bench --locked --workspace --bench token_reads 2>/dev/null | grep -E '^token_reads/'
cargo bench --locked --workspace --bench refresh_scale 2>/dev/null | grep -E '^refresh_scale:'

echo "== messaging: template sends/s enqueue → RabbitMQ → worker → sim vs the sim's bare accept rate (same run), latency at half rate; a 100,000-recipient campaign over 10 tenants; a tenant holding 1,000,000 jobs"
cargo bench --locked --workspace --bench messaging 2>/dev/null | grep -E '^messaging:'

echo "== relay: the same WeChat call (sim menu/get) direct vs through wxhub-relay, at max and at half the relay's max rate"
cargo bench --locked --workspace --bench relay 2>/dev/null | grep -E '^relay '

echo "== capacity (docs/scaling.md#capacity): confirmed publishes/s of one broker node; per callback the release gateway's CPU time, Redis commands and memory (and instructions, under callgrind); per messaging job Redis commands and memory"
# The wxhub-gateway binary in target/release (cargo builds a package's binaries with its benches).
cargo bench --locked --workspace --bench gateway --no-run 2>/dev/null
cargo bench --locked --workspace --bench capacity 2>/dev/null | grep -E '^capacity'
