#!/usr/bin/env bash
# The BENCHMARKS.md matrix, rerunnable: the raw token (1 and 2 threads), then the proxy's
# Encrypt and Decrypt at 1/8/64 connections in three set-ups: the quickstart as generated
# (INFO request log to a file and the audit trail on), the same with both off (level "warn",
# no [audit]), and the quickstart with 1,000 keys on the token (raw token again there too).
# Each run RUNS times: throughput and server CPU-µs per request (utime + stime from
# /proc/<pid>/stat) as min / median / max, latency percentiles as medians of the runs, and
# the daemon's RSS after each set-up. Release build, 32-byte payloads, TLS 1.3, keep-alive.
#   scripts/bench-matrix.sh [SECONDS_PER_RUN] [RUNS]
# BLOCKS="raw on off bulk" (the default) picks the set-ups to run, e.g. BLOCKS=bulk.
set -euo pipefail
blocks=" ${BLOCKS:-raw on off bulk} "
want() { [[ $blocks == *" $1 "* ]]; }
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
median() { python3 -c "import sys,statistics as s; print(f'{s.median(float(x) for x in sys.argv[1:]):.0f}')" "$@"; }

start_proxy() { # dir [config] -> sets pid and ready_ms (process start to the listening line)
  local t0 t1
  rm -f "$1.out"
  t0=$(date +%s%N)
  if [ $# -gt 1 ]; then
    "$bin" serve --config "$2" >"$1.out" 2>&1 &
  else
    "$bin" quickstart --dir "$1" --listen 127.0.0.1:0 >"$1.out" 2>/dev/null &
  fi
  pid=$!
  until grep -q "listening on" "$1.out" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "the daemon did not start:" >&2; cat "$1.out" >&2; exit 1; }
    sleep 0.005
  done
  t1=$(date +%s%N)
  for _ in $(seq 200); do [ -f "$1/quickstart.json" ] && break; sleep 0.01; done
  ready_ms=$(( (t1 - t0) / 1000000 ))
}
stop_proxy() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
rss() { echo "$(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024 )) MiB"; }

raw() { # config op threads label
  local out=() i
  for i in $(seq "$runs"); do
    "$bin" bench --raw-token --config "$1" --key-id quickstart-aes --mix "$2=1" \
      --threads "$3" --duration "$secs" --json >"$work/raw.json"
    out+=("$(field "$work/raw.json" "['throughput_per_s']")")
  done
  echo "| raw $2, $3 thread(s), $4 | $(stats "${out[@]}") ops/s | | | | |"
}

proxy() { # quickstart-dir op conns keyid label
  local tps=() p50=() p99=() p999=() cpu=() i before after total endpoint
  endpoint=$(grep -o 'listening on [^ ]*' "$1.out" | head -1 | awk '{print $3}')
  for i in $(seq "$runs"); do
    before=$(cpu_ticks "$pid")
    "$bin" bench --quickstart "$1/quickstart.json" --endpoint "$endpoint" --key-id "$4" \
      --mix "$2=1" --connections "$3" --duration "$secs" --warmup 1 --json >"$work/p.json" || true
    after=$(cpu_ticks "$pid")
    total=$(field "$work/p.json" "['total']")
    tps+=("$(field "$work/p.json" "['throughput_per_s']")")
    p50+=("$(field "$work/p.json" "['latency_us']['p50']")")
    p99+=("$(field "$work/p.json" "['latency_us']['p99']")")
    p999+=("$(field "$work/p.json" "['latency_us']['p99_9']")")
    # CPU over warm-up + run, divided by the requests of both (the warm-up at the run's rate).
    cpu+=("$(python3 -c "print(($after - $before) / $tick * 1e6 / max(1, $total * ($secs + 1) / $secs))")")
  done
  echo "| $2, $3 conn, $5 | $(stats "${tps[@]}") req/s | $(median "${p50[@]}") | $(median "${p99[@]}") | $(median "${p999[@]}") | $(stats "${cpu[@]}") |"
}

all_proxy() { # quickstart-dir keyid label
  local op c
  for op in encrypt decrypt; do for c in 1 8 64; do proxy "$1" "$op" "$c" "$2" "$3"; done; done
}

echo "machine: $(nproc) cores, $(uname -r), load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| run | throughput min / median / max | p50 µs | p99 µs | p99.9 µs | server CPU-µs / request min / median / max |"
echo "|---|---|---|---|---|---|"
qs=$work/k1
start_proxy "$qs"
ready=$ready_ms
stop_proxy
rss_on=-; rss_off=-; rss_bulk=-
if want raw; then
  for op in encrypt decrypt; do for t in 1 2; do raw "$qs/config.toml" "$op" "$t" "4 keys"; done; done
fi

if want on; then
  start_proxy "$qs" "$qs/config.toml"
  all_proxy "$qs" quickstart-aes "log+audit on"
  rss_on=$(rss)
  stop_proxy
fi

# The same token and key with the request log and the audit trail off (relative paths in a
# config are relative to its directory: the copy sits beside the original).
python3 - "$qs/config.toml" "$qs/quiet.toml" <<'EOF'
import re, sys
cfg = open(sys.argv[1]).read()
cfg = cfg.replace('level = "info"', 'level = "warn"')
cfg = re.sub(r'\n\[audit\]\n[^\[]*', '\n', cfg)
open(sys.argv[2], "w").write(cfg)
EOF
if want off; then
  start_proxy "$qs" "$qs/quiet.toml"
  all_proxy "$qs" quickstart-aes "log+audit off"
  rss_off=$(rss)
  stop_proxy
fi

# 1,000 keys on the token (996 more, through the running daemon's admin socket), then the same
# runs against a key in the middle of the set.
if want bulk; then
  start_proxy "$qs" "$qs/config.toml"
  for i in $(seq 1 996); do "$bin" keys create --id "bulk-$i" --config "$qs/config.toml" >/dev/null; done
  stop_proxy
  sed -i 's/^allowed_keys = \[/key_pattern = "*"\nallowed_keys = [/' "$qs/config.toml"
  for op in encrypt decrypt; do for t in 1 2; do raw "$qs/config.toml" "$op" "$t" "1,000 keys"; done; done
  start_proxy "$qs" "$qs/config.toml"
  all_proxy "$qs" bulk-500 "1,000 keys, log+audit on"
  rss_bulk=$(rss)
  stop_proxy
  echo
  echo "keys on the token for the last block: $("$bin" keys list --json --config "$qs/config.toml" | grep -c '"id"')"
fi
echo "RSS after each set-up's 64-connection runs: log+audit on ${rss_on}, off ${rss_off}, 1,000 keys ${rss_bulk}"
echo "start to ready (process start to the listening line, token login included): ${ready} ms"
