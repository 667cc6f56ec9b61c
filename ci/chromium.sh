#!/usr/bin/env bash
# Install Debian's Chromium (the browser the UI tests drive through Python playwright) when it is missing.
# Never `npx playwright install`: the tests use /usr/bin/chromium.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/apt.sh"
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  /usr/bin/chromium --version 2>/dev/null | grep -v 'unexpected operator' || true
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt_get update -qq
apt_get install -y -qq chromium >/dev/null
/usr/bin/chromium --version 2>/dev/null | grep -v 'unexpected operator' || true
