#!/usr/bin/env bash
# Makes sure Debian's Chromium and ChromeDriver are installed (the browser test of the
# authorization pages drives them). Idempotent; called by `make test`.
set -euo pipefail
log() { printf '[browser] %s\n' "$*" >&2; }
# The pages are bilingual: without a CJK font the screenshots show boxes instead of Chinese.
have_cjk() { command -v fc-list >/dev/null 2>&1 && fc-list :lang=zh 2>/dev/null | grep -q .; }
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && have_cjk; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
log "installing chromium, chromium-driver and a CJK font with apt"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver fonts-wqy-microhei >/dev/null
command -v chromedriver >/dev/null 2>&1 || { log "chromedriver is still missing"; exit 1; }
