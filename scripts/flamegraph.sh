#!/usr/bin/env bash
# A CPU flame graph of one xks-bridge binary under load: starts a quickstart (its own SoftHSM2
# token), drives Encrypt at 8 connections with `bench` from the same binary, records the
# daemon with `perf record -g` (DWARF unwinding, so frames inside SoftHSM2 and the kernel show
# too) and folds the samples into an SVG with inferno. Used for docs/perf/.
#   scripts/flamegraph.sh BINARY OUT.svg [SECONDS]
# BENCH=OTHER_BINARY takes the load generator from another build (the same one for a
# before/after pair).
# Needs linux-perf and inferno (`cargo install inferno`); it says so if either is missing.
set -euo pipefail
bin=$(readlink -f "$1"); out=$2; secs=${3:-10}; bench_bin=${BENCH:-$bin}
for tool in perf inferno-collapse-perf inferno-flamegraph; do
  command -v "$tool" >/dev/null || { echo "flamegraph.sh: $tool is not installed" >&2; exit 69; }
done
work=$(mktemp -d /tmp/xks-flame.XXXXXX)
"$bin" quickstart --dir "$work/qs" --listen 127.0.0.1:0 >"$work/qs.out" 2>"$work/qs.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until grep -q "listening on" "$work/qs.out" 2>/dev/null; do sleep 0.05; done
for _ in $(seq 400); do [ -f "$work/qs/quickstart.json" ] && break; sleep 0.05; done
"$bench_bin" bench --quickstart "$work/qs/quickstart.json" --mix encrypt=1 --connections 8 \
  --duration $((secs + 4)) --json >"$work/bench.json" &
bench=$!
sleep 2
perf record -F 999 -g --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep "$secs" \
  2>"$work/perf.err"
wait "$bench"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/folded"
title="xks-bridge $("$bin" --version | awk '{print $2}'), Encrypt, 8 connections, ${secs} s"
inferno-flamegraph --title "$title" <"$work/folded" >"$out"
python3 - "$work/bench.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"bench: {round(d['throughput_per_s'])} req/s over {d['total']} requests, errors {d.get('errors')}")
PY
echo "flame graph: $out (folded stacks: $work/folded)"
