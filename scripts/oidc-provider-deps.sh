#!/usr/bin/env bash
# Installs the real OpenID provider the identity tests run: npm `oidc-provider`, pinned in
# tests/oidc-provider/package-lock.json, into tests/oidc-provider/node_modules (git-ignored).
# Idempotent: does nothing when node_modules was installed from the same lock file. Needs Node.js
# and npm, Node 20 or later (oidc-provider 9 does not run on Debian 12's Node 18: use NodeSource's
# nodejs package or another Node 20+).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../tests/oidc-provider"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "scripts/oidc-provider-deps.sh: needs node (20 or later) and npm" >&2
    exit 1
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
    echo "scripts/oidc-provider-deps.sh: node $(node --version) is too old for oidc-provider 9; install Node 20 or later" >&2
    exit 1
fi
stamp=node_modules/.podgate-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f node_modules/oidc-provider/package.json ]; then
    exit 0
fi
echo "scripts/oidc-provider-deps.sh: npm ci in tests/oidc-provider" >&2
npm ci --no-audit --no-fund --loglevel=error >&2
echo "$want" > "$stamp"
