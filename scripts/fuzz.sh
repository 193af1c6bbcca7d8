#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds each (default 60), one job at a time, and prints a
# summary table. Exits non-zero if any target crashed (or failed to build).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Only the stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z flags.
# Environment:
#   CARGO_TARGET_DIR        build directory (default: <repo>/target-fuzz)
#   PODGATE_FUZZ_SANITIZER  address (default) or none
#   PODGATE_FUZZ_WASM_SANITIZER  the same for filter_wasm (default: PODGATE_FUZZ_SANITIZER);
#                           CI's smoke uses none there: wasmtime under ASan takes 15-25 min to build
#   PODGATE_FUZZ_RSS_MB     libFuzzer -rss_limit_mb (default 512; filter_wasm gets 2048, see below)
#   PODGATE_FUZZ_RUNS       stop each target after this many executions instead of after SECONDS
#                           (SECONDS then only bounds the run: give it room)
#
# Inputs: seeds from fuzz/corpus/<target>/ (committed, read only here); what libFuzzer finds
# goes to fuzz/work/<target>/ (git-ignored, kept between runs). Crashers land in
# fuzz/artifacts/<target>/: minimize with `cargo fuzz tmin`, commit the result under
# fuzz/regressions/<target>/ (replayed by `cargo test -p podgate-protocol --test fuzz_regressions`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

seconds="${1:-60}"
shift || true
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac
all_targets=(host cookie token redirect gate response credentials filter_wasm)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-fuzz}"
sanitizer="${PODGATE_FUZZ_SANITIZER:-address}"
rss_mb="${PODGATE_FUZZ_RSS_MB:-512}"
runs_limit=()
if [ -n "${PODGATE_FUZZ_RUNS:-}" ]; then runs_limit=(-runs="$PODGATE_FUZZ_RUNS"); fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

# Per target: the longest input and an optional dictionary.
max_len() {
    case "$1" in
        host) echo 512 ;;
        token | redirect) echo 4608 ;;
        *) echo 4096 ;;
    esac
}

logs="$CARGO_TARGET_DIR/fuzz-logs"
mkdir -p "$logs"
declare -A runs=() secs=() result=()
failed=0

for target in "${targets[@]}"; do
    features=()
    rss="$rss_mb"
    san="$sanitizer"
    if [ "$target" = filter_wasm ]; then
        features=(--features wasm)
        san="${PODGATE_FUZZ_WASM_SANITIZER:-$sanitizer}"
        # wasmtime's compiled module and two VMs live next to the fuzzer's own memory.
        rss=$((rss_mb > 2048 ? rss_mb : 2048))
        if [ -z "${PODGATE_FILTER_WASM:-}" ]; then
            echo "fuzz: building podgate_filter.wasm" >&2
            env -u RUSTC_BOOTSTRAP cargo build -q -p podgate-filter --target wasm32-wasip1 --profile wasm-release
            export PODGATE_FILTER_WASM="$CARGO_TARGET_DIR/wasm32-wasip1/wasm-release/podgate_filter.wasm"
        fi
    fi
    work="fuzz/work/$target"
    mkdir -p "$work" "fuzz/corpus/$target" "fuzz/artifacts/$target"
    dict=()
    if [ -f "fuzz/dict/$target.dict" ]; then dict=("-dict=$root/fuzz/dict/$target.dict"); fi
    log="$logs/$target.log"
    echo "fuzz: $target for ${seconds}s (sanitizer: $san, log: $log)" >&2
    set +e
    (cd fuzz && cargo fuzz run --sanitizer "$san" --debug-assertions "${features[@]}" \
        "$target" "$root/$work" "$root/fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb="$rss" \
        -max_len="$(max_len "$target")" -print_final_stats=1 "${runs_limit[@]}" "${dict[@]}") >"$log" 2>&1
    status=$?
    set -e
    runs[$target]="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)"
    secs[$target]="$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 | awk '{print $5}' || true)"
    if [ -z "${runs[$target]}" ]; then
        runs[$target]="$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | awk '{print $2}' || true)"
    fi
    if [ "$status" -eq 0 ]; then
        result[$target]=ok
    else
        failed=1
        if grep -q 'Test unit written to' "$log"; then
            result[$target]="CRASH: $(grep -o 'Test unit written to .*' "$log" | tail -1 | sed 's/Test unit written to //')"
        else
            result[$target]="FAILED (exit $status, see $log)"
        fi
        tail -n 40 "$log" >&2
    fi
done

printf '\n%-12s %14s %8s %8s  %s\n' target executions seconds exec/s result
for target in "${targets[@]}"; do
    n="${runs[$target]:-?}"
    s="${secs[$target]:-?}"
    rate='?'
    if [[ "$n" =~ ^[0-9]+$ && "$s" =~ ^[0-9]+$ && "$s" -gt 0 ]]; then rate=$((n / s)); fi
    printf '%-12s %14s %8s %8s  %s\n' "$target" "$n" "$s" "$rate" "${result[$target]}"
done
exit "$failed"
