#!/usr/bin/env bash
# A/B comparison of two xks-bridge binaries: each serves its own quickstart (own SoftHSM2
# token), and `bench` (from the second binary, the same load generator for both) drives Encrypt
# at 8 connections (CONNECTIONS=N in the environment to change) against them in turn, RUNS
# times each, alternating so that a change in the machine's load hits both. Prints throughput,
# p99 and the daemon's CPU-µs per request (utime + stime from /proc/<pid>/stat over the run).
#   scripts/bench-ab.sh BEFORE_BINARY AFTER_BINARY [SECONDS_PER_RUN] [RUNS]
set -euo pipefail
before=$1; after=$2; secs=${3:-10}; runs=${4:-3}
work=$(mktemp -d /tmp/xks-ab.XXXXXX)
pids=()
start() { # bin dir
  "$1" quickstart --dir "$2" --listen 127.0.0.1:0 >"$2.out" 2>"$2.err" &
  pids+=($!)
  until grep -q "listening on" "$2.out" 2>/dev/null; do sleep 0.05; done
  for _ in $(seq 400); do [ -f "$2/quickstart.json" ] && break; sleep 0.05; done
}
start "$before" "$work/before"; pid_before=${pids[0]}
start "$after" "$work/after"; pid_after=${pids[1]}
tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for i in $(seq "$runs"); do
  for which in before after; do
    pidvar=pid_$which; pid=${!pidvar}
    t0=$(cpu_ticks "$pid")
    "$after" bench --quickstart "$work/$which/quickstart.json" --mix encrypt=1 --connections "${CONNECTIONS:-8}" --duration "$secs" --json >"$work/$which-$i.json"
    t1=$(cpu_ticks "$pid")
    python3 -c "import json; d=json.load(open('$work/$which-$i.json')); n=d['total']; print('$which', $i, round(d['throughput_per_s']), 'req/s', 'p99_us', round(d.get('latency_us',{}).get('p99',0)) if isinstance(d.get('latency_us'),dict) else '-', 'cpu_us_per_req', round(($t1-$t0)/$tick*1e6/n), 'errors', d.get('errors'))"
  done
done
kill "${pids[@]}"
echo "work dir: $work"
