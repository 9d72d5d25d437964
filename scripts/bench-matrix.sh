#!/usr/bin/env bash
# The BENCHMARKS.md table, rerunnable: raw token ceiling (1 and 2 threads), proxy Encrypt and
# Decrypt at 1/8/64 connections with 1 key and with 1000 keys on the token, each RUNS times
# (min/median/max), server CPU-µs per request (from /proc/<pid>/stat), RSS at 64 connections
# and start-to-ready time. Needs python3 for the arithmetic. Release build, 32-byte payloads.
#   scripts/bench-matrix.sh [SECONDS_PER_RUN] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
runs=${2:-3}
cargo build --release --quiet
bin=$PWD/target/release/xks-bridge
work=$(mktemp -d /tmp/xks-matrix.XXXXXX)
tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
field() { python3 -c "import json,sys; d=json.load(open('$1')); print(d$2)"; }
stats() { python3 -c "import sys,statistics as s; v=sorted(float(x) for x in sys.argv[1:]); print(f'{v[0]:.0f} / {s.median(v):.0f} / {v[-1]:.0f}')" "$@"; }

start_proxy() { # dir -> sets pid and ready_ms (start to listening line)
  local t0 t1
  t0=$(date +%s%N)
  "$bin" quickstart --dir "$1" --listen 127.0.0.1:0 >"$1.out" 2>/dev/null &
  pid=$!
  until grep -q "listening on" "$1.out" 2>/dev/null; do sleep 0.005; done
  t1=$(date +%s%N)
  for _ in $(seq 200); do [ -f "$1/quickstart.json" ] && break; sleep 0.01; done
  ready_ms=$(( (t1 - t0) / 1000000 ))
}

raw() { # op threads
  local out=() i
  for i in $(seq "$runs"); do
    "$bin" bench --raw-token --config "$work/k1/config.toml" --key-id quickstart-aes --mix "$1=1" \
      --threads "$2" --duration "$secs" --json >"$work/raw.json"
    out+=("$(field "$work/raw.json" "['throughput_per_s']")")
  done
  echo "| raw $1, $2 thread(s) | $(stats "${out[@]}") ops/s | | |"
}

proxy() { # dir op conns keyid
  local tps=() p99=() cpu=() i before after total
  for i in $(seq "$runs"); do
    before=$(cpu_ticks "$pid")
    "$bin" bench --quickstart "$1/quickstart.json" --key-id "$4" --mix "$2=1" --connections "$3" \
      --duration "$secs" --warmup 1 --json >"$work/p.json" || true
    after=$(cpu_ticks "$pid")
    total=$(field "$work/p.json" "['total']")
    tps+=("$(field "$work/p.json" "['throughput_per_s']")")
    p99+=("$(field "$work/p.json" "['latency_us']['p99']")")
    # CPU over warmup + run, divided by measured requests: a slight overestimate.
    cpu+=("$(python3 -c "print(($after - $before) / $tick * 1e6 / max(1, $total * ($secs + 1) / $secs))")")
  done
  echo "| proxy $2, $3 conn, key $4 | $(stats "${tps[@]}") req/s | $(stats "${p99[@]}") µs | $(stats "${cpu[@]}") µs |"
}

echo "machine: $(nproc) cores, $(uname -r), load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| run | throughput min / median / max | p99 min / median / max | server CPU per request |"
echo "|---|---|---|---|"
start_proxy "$work/k1"
kill "$pid"; wait "$pid" 2>/dev/null || true
for op in encrypt decrypt; do raw "$op" 1; raw "$op" 2; done
rm -f "$work/k1.out"
start_proxy "$work/k1"
ready=$ready_ms
for op in encrypt decrypt; do for c in 1 8 64; do proxy "$work/k1" "$op" "$c" quickstart-aes; done; done
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
kill "$pid"; wait "$pid" 2>/dev/null || true
# 1000 keys on the token (996 more, through the running daemon's admin socket), then the same
# runs against a key in the middle of the set.
rm -f "$work/k1.out"
start_proxy "$work/k1"
for i in $(seq 1 996); do "$bin" keys create --id "bulk-$i" --config "$work/k1/config.toml" >/dev/null; done
kill "$pid"; wait "$pid" 2>/dev/null || true
sed -i 's/^allowed_keys = \[/key_pattern = "*"\nallowed_keys = [/' "$work/k1/config.toml"
rm -f "$work/k1.out"
start_proxy "$work/k1"
for op in encrypt decrypt; do for c in 1 8 64; do proxy "$work/k1" "$op" "$c" bulk-500; done; done
kill "$pid"; wait "$pid" 2>/dev/null || true
echo "keys on the token for the last block: $("$bin" keys list --json --config "$work/k1/config.toml" | grep -c '"id"')"
echo "RSS after the 64-connection runs (1 key): ${rss} KiB; start-to-ready: ${ready} ms"
