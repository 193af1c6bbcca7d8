#!/usr/bin/env bash
# Where Envoy's CPU goes, case by case: runs the side-by-side bench (B, W, W-calls and one
# podgate case, long saturation rounds) while `perf record` samples the CPU Envoy is pinned to,
# then splits each Envoy worker's samples by where the code lives: Envoy's binary (its own C++,
# V8's runtime and call stubs, the proxy-wasm host functions), the kernel, libc, and V8's JIT
# code (the compiled Wasm module itself). Each line is also turned into µs per request with the
# bench's own Envoy CPU figure for that case.
#
#   scripts/bench-perf.sh [CASE]        (CASE defaults to D-cache-EdDSA; run via `just bench-perf`)
#
# Needs `perf` and permission to sample CPU 0 (root, or kernel.perf_event_paranoid <= 0). The
# figures are inflated by perf's own overhead; compare cases within one run, not across runs.
set -euo pipefail

case_name="${1:-D-cache-EdDSA}"
: "${PODGATE_ENVOY:?set by just}" "${PODGATE_FILTER_WASM:?set by just}" "${PODGATE_NOOP_WASM:?set by just}"
command -v perf >/dev/null || { echo "bench-perf: perf is not installed" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
bench="$root/target/release/podgate-bench"
cargo build --quiet --release -p podgate-bench

"$bench" --no-scale --dry-run --rounds 1 --warmup-secs 1 --saturation-secs 8 --latency-secs 1 \
    --only "$case_name" >"$work/bench.log" 2>&1 &
bench_pid=$!
# Every Envoy is started before the first round; each names its case in its bootstrap path
# (`<tmp>/podgate-e2e-<pid>-<n>-<label>/bootstrap.yaml`). Wait until all eight run a worker.
envoys_with_a_worker() {
    local n=0
    for pid in $(pgrep -f 'podgate-e2e-.*/bootstrap.yaml'); do
        grep -qx 'wrk:worker_0' /proc/"$pid"/task/*/comm 2>/dev/null && n=$((n + 1))
    done
    echo "$n"
}
for _ in $(seq 1 300); do
    [ "$(envoys_with_a_worker)" -ge 8 ] && break
    sleep 0.1
done
perf record --quiet -o "$work/perf.data" -C 0 -- sleep 45 >/dev/null 2>&1 &
perf_pid=$!
declare -A label_of=()
for pid in $(pgrep -f 'podgate-e2e-.*/bootstrap.yaml'); do
    label=$(tr '\0' ' ' <"/proc/$pid/cmdline" | sed -E 's|.*podgate-e2e-[0-9]+-[0-9]+-([a-z-]+)/bootstrap.yaml.*|\1|')
    for task in /proc/"$pid"/task/*; do
        [ "$(cat "$task/comm")" = "wrk:worker_0" ] && label_of[$(basename "$task")]=$label
    done
done
wait "$bench_pid" || { cat "$work/bench.log" >&2; exit 1; }
wait "$perf_pid" || true

# The bench's Envoy CPU µs/req per case, by the label its Envoy was started with.
declare -A cpu_of=()
row() { grep -E "^\| $1 \|" "$work/bench.log" | awk -F'|' '{gsub(/ /, "", $5); print $5}'; }
cpu_of[plain]=$(row B)
cpu_of[wasm-noop]=$(row W)
cpu_of[wasm-calls]=$(row W-calls)
case "$case_name" in
    C-cache-*) cpu_of[jwt-cache]=$(row "$case_name") ;;
    C-nocache-*) cpu_of[jwt-nocache]=$(row "$case_name") ;;
    *) cpu_of[podgate]=$(row "$case_name") ;;
esac

perf report -i "$work/perf.data" --sort pid,dso --no-children -g none --stdio 2>/dev/null |
    awk '/^ +[0-9.]+%/ { pct=$1; sub(/%/, "", pct); split($2, t, ":"); dso=$0; sub(/^ +[0-9.]+% +[0-9]+:[^ ]+ +/, "", dso); print t[1] "\t" pct "\t" dso }' \
    >"$work/split.tsv"

echo "Envoy CPU per request by where the code lives (perf on CPU 0, case $case_name)"
printf '%-12s %8s  %-32s %7s %8s\n' envoy "µs/req" where share "µs/req"
for label in plain wasm-noop wasm-calls podgate jwt-cache jwt-nocache; do
    cpu=${cpu_of[$label]:-}
    [ -n "$cpu" ] || continue
    tid=""
    for t in "${!label_of[@]}"; do [ "${label_of[$t]}" = "$label" ] && tid=$t; done
    [ -n "$tid" ] || continue
    awk -F'\t' -v tid="$tid" -v label="$label" -v cpu="$cpu" '
        $1 == tid {
            where = $3
            if (where ~ /^\[JIT\]/) where = "V8 JIT (the Wasm module)"
            else if (where ~ /^envoy/) where = "envoy binary (C++, V8 runtime)"
            sum[where] += $2; total += $2
        }
        END {
            if (total == 0) exit
            for (w in sum) if (sum[w] / total >= 0.005)
                printf "%-12s %8s  %-32s %6.1f%% %8.1f\n", label, cpu, w, 100 * sum[w] / total, cpu * sum[w] / total
        }' "$work/split.tsv"
done
