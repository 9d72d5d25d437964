#!/usr/bin/env bash
# The fuzzing step of CI (scripts/test.sh): a fixed amount of work, so the same commit gets the
# same verdict on any machine, however fast. For every target in fuzz/fuzz_targets (or the ones
# named):
#
#   1. replays every seed and regression input in fuzz/corpus/<target>, one by one;
#   2. runs a bounded coverage-guided search: a fixed number of executions (RUNS below),
#      libFuzzer seed 1, one process, starting from exactly those seeds, in an empty working
#      directory (fuzz/gate/<target>, wiped first), never from what earlier runs found, and
#      with address space randomisation off for the fuzzing process (setarch -R), and without
#      comparison-guided mutations (-use_cmp=0). Which code runs, and so what the search keeps,
#      depended on addresses, and comparison-guided mutations copy compared pointers into
#      inputs; addresses differ from run to run (ASLR) and, for pointers into the stack, with
#      the size of the environment and the arguments, so the search also runs in an empty
#      environment with paths relative to the repository.
#
# Fails if any input crashes (a panic, including a broken invariant), hangs (FUZZ_TIMEOUT s,
# default 10) or exceeds FUZZ_RSS_MB (default 2048). Prints, per target, the time taken, the
# executions, the inputs the search kept and a fingerprint of them: two runs of one commit
# print the same executions, corpus and fingerprint. Open-ended, time-boxed campaigns are
# scripts/fuzz.sh (docs/fuzzing.md); they do not gate CI.
#
#   scripts/fuzz-gate.sh [TARGET...]
#
# Logs: fuzz/logs/gate-<target>.log; a crashing input of the search: fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

# Executions of the bounded search per target, chosen so that each takes roughly 20 s on the
# project's 2-core CI machine (docs/fuzzing.md has the measurements). A new target needs an
# entry: the script stops if one is missing. 0 = replay only: `config` and `policy` parse TOML,
# whose tables (toml_edit's IndexMap) hash with a per-process random seed, so coverage, and
# with it what a search explores, differs between two runs of the same commit; the gate replays
# their corpus and regression inputs exactly and leaves their search to campaigns
# (scripts/fuzz.sh), so that the verdict is the same on every machine.
declare -A RUNS=(
    [request_json]=400000
    [sigv4_header]=400000
    [routing]=8000000
    [config]=0
    [policy]=0
    [audit_verify]=40000
)
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
for t in "${targets[@]}"; do
    if [ -z "${RUNS[$t]:-}" ]; then
        echo "fuzz target $t has no run count in $0 (RUNS)" >&2
        exit 64
    fi
done

# The same build as scripts/fuzz.sh (release with debug assertions, no sanitizer), so the two
# share fuzz/target.
gate_start=$(date +%s)
echo "== building ${#targets[@]} fuzz targets"
cargo fuzz build --sanitizer none
bin_dir="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
echo "== build took $(($(date +%s) - gate_start)) s"

# The seeds a run starts from: the corpus files of this checkout (committed, or new and not
# ignored), never inputs a direct `cargo fuzz run` left behind (ignored by git), in name order.
# libFuzzer shuffles the seeds with its seeded random generator, then sorts them by size; a
# fixed list in a fixed order makes that the same everywhere, while a directory would be read
# in the file system's order.
seeds() {
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files --cached --others --exclude-standard -- "fuzz/corpus/$1"
    else
        find "fuzz/corpus/$1" -type f
    fi | LC_ALL=C sort
}

# personality(ADDR_NO_RANDOMIZE); some container sandboxes refuse it.
norand=(setarch "$(uname -m)" -R)
if ! "${norand[@]}" true 2>/dev/null; then
    echo "WARNING: cannot turn address space randomisation off (setarch -R refused): the searches" >&2
    echo "WARNING: run the same number of executions, but what they explore can differ between runs" >&2
    norand=()
fi

mkdir -p fuzz/logs fuzz/gate
failed=()
summary=()
for t in "${targets[@]}"; do
    bin="$bin_dir/$t"
    log="fuzz/logs/gate-$t.log"
    work="fuzz/gate/$t"
    list="fuzz/gate/$t.seeds"
    runs="${RUNS[$t]}"
    rm -rf "$work"
    mkdir -p "$work" "fuzz/artifacts/$t"
    mapfile -t files < <(seeds "$t")
    nseeds=${#files[@]}
    # libFuzzer reads -seed_inputs=@FILE as one comma-separated list and silently skips names
    # it cannot read and empty files (it always runs the empty input anyway).
    if printf '%s\n' "${files[@]}" | grep -q ,; then
        echo "fuzz/corpus/$t: a file name holds a comma, which -seed_inputs cannot carry" >&2
        exit 64
    fi
    (IFS=,; printf '%s' "${files[*]}") >"$list"
    nonempty=0
    for f in "${files[@]}"; do
        [ ! -s "$f" ] || nonempty=$((nonempty + 1))
    done
    seed_flag=()
    [ "$nseeds" -eq 0 ] || seed_flag=(-seed_inputs=@"$list")
    t0=$(date +%s)
    rc=0
    {
        echo "== replay: $nseeds inputs of fuzz/corpus/$t"
        if [ "$nseeds" -gt 0 ]; then
            "$bin" -timeout="$timeout" -rss_limit_mb="$rss" "${files[@]}"
        fi
    } >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ] && [ "$runs" -gt 0 ]; then
        echo "== search: $runs executions, seed 1" >>"$log"
        # -reload=0: never re-read the working directory on a timer (wall-clock dependent).
        env -i RUST_BACKTRACE=1 "${norand[@]}" "$bin" -runs="$runs" -seed=1 -use_cmp=0 -reload=0 \
            -timeout="$timeout" -rss_limit_mb="$rss" -print_final_stats=1 \
            -artifact_prefix="fuzz/artifacts/$t/" "${seed_flag[@]}" "$work" >>"$log" 2>&1 || rc=$?
    fi
    if [ "$rc" -eq 0 ] && [ "$runs" -gt 0 ] && [ "$nonempty" -gt 0 ] &&
        ! grep -q "INFO: seed corpus: files: $nonempty " "$log"; then
        echo "$t: the search did not start from the $nonempty seeds of fuzz/corpus/$t" >>"$log"
        rc=65
    fi
    took=$(($(date +%s) - t0))
    execs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -n 1)
    corpus=$(find "$work" -type f | wc -l)
    # libFuzzer names each kept input by the SHA-1 of its content.
    fingerprint=$(find "$work" -type f -printf '%f\n' | LC_ALL=C sort | sha1sum | cut -c1-12)
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $rc)"
        failed+=("$t")
        echo "---- $t: last lines of $log"
        tail -n 40 "$log"
        ls -1 "fuzz/artifacts/$t" 2>/dev/null | sed "s|^|artifact: fuzz/artifacts/$t/|" || true
    fi
    line=$(printf '%-14s %5ss %6s seeds %10s execs %6s corpus %s  %s' \
        "$t" "$took" "$nseeds" "${execs:-?}" "$corpus" "$fingerprint" "$result")
    echo "$line"
    summary+=("$line")
done

echo "== fuzzing gate summary (took $(($(date +%s) - gate_start)) s with the build)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing gate failed: ${failed[*]} (docs/fuzzing.md: reproduce, minimise, add a regression test)" >&2
    exit 1
fi
