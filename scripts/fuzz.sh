#!/usr/bin/env bash
# Fuzzing campaigns (cargo-fuzz + libFuzzer) of the proxy's parsers and verifiers, for people:
# runs every target in fuzz/fuzz_targets (or the ones named) for SECONDS_PER_TARGET seconds
# each, one after the other, one fuzzing process at a time, and fails if any target crashes (a
# panic, including a broken invariant), hangs on one input or runs out of memory. Prints
# executions per target.
#
# It does not gate CI: how much a time box explores depends on the machine, so its verdict is
# not a property of the commit. CI runs scripts/fuzz-gate.sh (the committed corpus, then a fixed
# number of executions with a fixed seed). What a campaign finds becomes a regression test and a
# corpus entry in fuzz/corpus/<target>, which the gate then replays on every run; minimising and
# turning a crash into a regression test: docs/fuzzing.md.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 30 seconds, every target)
#
# Environment:
#   FUZZ_SANITIZER  none (default) or address. The crate forbids unsafe code, so AddressSanitizer
#                   only watches dependencies; `none` runs four to five times as many inputs.
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (default 10)
#   FUZZ_RSS_MB     memory limit in MiB (default 2048)
#   FUZZ_SEED       libFuzzer random seed, to repeat a search on this machine (unset: a new
#                   random seed each run, as campaigns want)
#
# Inputs the fuzzer finds go to fuzz/work/<target> (not committed); the seeds in
# fuzz/corpus/<target> are only read. Crashes land in fuzz/artifacts/<target>/, logs in
# fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-30}"
shift || true
case "$secs" in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 64
    ;;
esac
sanitizer="${FUZZ_SANITIZER:-none}"
timeout="${FUZZ_TIMEOUT:-10}"
rss="${FUZZ_RSS_MB:-2048}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes -Z flags (sanitizer coverage) to rustc; RUSTC_BOOTSTRAP=1 lets a stable
# toolchain accept them, so no nightly toolchain is needed.
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Release build with debug assertions and overflow checks (cargo-fuzz's default).
build=(--sanitizer "$sanitizer")
echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
start=$(date +%s)
cargo fuzz build "${build[@]}"
echo "== build took $(($(date +%s) - start)) s"

mkdir -p fuzz/logs
failed=()
summary=()
for t in "${targets[@]}"; do
    work="fuzz/work/$t"
    log="fuzz/logs/$t.log"
    mkdir -p "$work" "fuzz/corpus/$t"
    echo "== $t: ${secs} s"
    t0=$(date +%s)
    rc=0
    cargo fuzz run "${build[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout="$timeout" -rss_limit_mb="$rss" \
        -print_final_stats=1 ${FUZZ_SEED:+-seed="$FUZZ_SEED"} >"$log" 2>&1 || rc=$?
    took=$(($(date +%s) - t0))
    execs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -n 1)
    execs="${execs:-?}"
    rate=$(awk '/stat::average_exec_per_sec:/ {print $2}' "$log" | tail -n 1)
    corpus=$(find "$work" -type f | wc -l)
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $rc)"
        failed+=("$t")
        echo "---- $t: last lines of $log"
        tail -n 40 "$log"
        ls -1 "fuzz/artifacts/$t" 2>/dev/null | sed "s|^|artifact: fuzz/artifacts/$t/|" || true
    fi
    summary+=("$(printf '%-14s %6ss %14s execs %9s/s %7s corpus  %s' "$t" "$took" "$execs" "${rate:-?}" "$corpus" "$result")")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found problems in: ${failed[*]} (see docs/fuzzing.md: reproduce, minimise, add a regression test)" >&2
    exit 1
fi
