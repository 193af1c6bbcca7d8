#!/usr/bin/env bash
# Installs what the real-browser test needs: Debian's Chromium and its matching chromedriver.
# Idempotent: does nothing when both are already there. Needs root (or sudo) for apt-get.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        echo "scripts/browser-deps.sh: need root to install ${missing[*]} (apt-get)" >&2
        exit 1
    fi
fi
echo "scripts/browser-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
/usr/bin/chromium --version >&2
/usr/bin/chromedriver --version >&2
