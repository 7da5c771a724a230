#!/usr/bin/env bash
# Runs each fuzz target briefly: ./scripts/fuzz.sh [seconds-per-target]
# Longer campaigns: cargo +nightly fuzz run <target> fuzz/corpus/<target> fuzz/seeds/<target>
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "[fuzz] installing the nightly toolchain (cargo-fuzz needs it)" >&2
  rustup toolchain install nightly --profile minimal
fi
for target in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
  mkdir -p "fuzz/corpus/$target"
  echo "[fuzz] $target for ${seconds}s" >&2
  cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 2>&1 | grep -E '^(stat::number_of_executed_units|stat::new_units_added|Done|INFO: -max_total_time)|ERROR|panicked' || true
  if ls "fuzz/artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "[fuzz] $target found a crash: fuzz/artifacts/$target" >&2; exit 1
  fi
done
echo "[fuzz] all targets ran without a crash" >&2
