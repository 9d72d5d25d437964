#!/usr/bin/env bash
# A/B comparison of two xks-bridge binaries: each serves its own quickstart (own SoftHSM2
# token), and `bench` (from the second binary, the same load generator for both) drives Encrypt
# at 8 connections (CONNECTIONS=N in the environment to change) against them in turn, RUNS
# times each, alternating so that a change in the machine's load hits both. Prints throughput,
# p99 and the daemon's CPU-µs per request (utime + stime from /proc/<pid>/stat over the run).
# BEFORE_KEYSTORE / AFTER_KEYSTORE (environment): a TOML line added to that instance's
# [[keystores]] table, to compare two settings of one binary, e.g. the cost of counting:
#   AFTER_KEYSTORE='count_encryptions = false' scripts/bench-ab.sh BIN BIN 10 5
# AFTER_EXTRA_KEYS=N creates N more keys on the second instance's token (through its admin
# socket) before the runs: the cost of many objects on the token, e.g.
#   AFTER_EXTRA_KEYS=996 OP=decrypt CONNECTIONS=64 scripts/bench-ab.sh BIN BIN 10 5
# OP=decrypt (or metadata, health) drives that operation instead of Encrypt.
#   scripts/bench-ab.sh BEFORE_BINARY AFTER_BINARY [SECONDS_PER_RUN] [RUNS]
set -euo pipefail
before=$1; after=$2; secs=${3:-10}; runs=${4:-3}
work=$(mktemp -d /tmp/xks-ab.XXXXXX)
pids=()
serve() { # bin dir: a quickstart on dir, until it has written quickstart.json
  rm -f "$2/quickstart.json"
  "$1" quickstart --dir "$2" --listen 127.0.0.1:0 >"$2.out" 2>"$2.err" &
  pid=$!
  until grep -q "listening on" "$2.out" 2>/dev/null; do sleep 0.05; done
  for _ in $(seq 400); do [ -f "$2/quickstart.json" ] && break; sleep 0.05; done
}
start() { # bin dir [keystore line]: the quickstart reuses its directory, edited config included
  serve "$1" "$2"
  if [ -n "${3:-}" ]; then
    kill -TERM "$pid"; wait "$pid" || true
    sed -i "s/^\[\[keystores\]\]\$/[[keystores]]\n$3/" "$2/config.toml"
    grep -qxF "$3" "$2/config.toml"
    serve "$1" "$2"
  fi
  pids+=("$pid")
}
start "$before" "$work/before" "${BEFORE_KEYSTORE:-}"; pid_before=${pids[0]}
start "$after" "$work/after" "${AFTER_KEYSTORE:-}"; pid_after=${pids[1]}
for i in $(seq 1 "${AFTER_EXTRA_KEYS:-0}"); do
  "$after" keys create --id "bulk-$i" --config "$work/after/config.toml" >/dev/null
done
tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for i in $(seq "$runs"); do
  for which in before after; do
    pidvar=pid_$which; pid=${!pidvar}
    t0=$(cpu_ticks "$pid")
    "$after" bench --quickstart "$work/$which/quickstart.json" --mix "${OP:-encrypt}=1" --connections "${CONNECTIONS:-8}" --duration "$secs" --json >"$work/$which-$i.json"
    t1=$(cpu_ticks "$pid")
    python3 -c "import json; d=json.load(open('$work/$which-$i.json')); n=d['total']; print('$which', $i, round(d['throughput_per_s']), 'req/s', 'p99_us', round(d.get('latency_us',{}).get('p99',0)) if isinstance(d.get('latency_us'),dict) else '-', 'cpu_us_per_req', round(($t1-$t0)/$tick*1e6/n), 'errors', d.get('errors'))"
  done
done
kill "${pids[@]}"
echo "work dir: $work"
