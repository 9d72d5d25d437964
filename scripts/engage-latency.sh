#!/usr/bin/env bash
# Measures how long `xks-bridge kill-switch engage` takes while the proxy is under full load:
# a release-build quickstart, the built-in load generator at N connections, and ROUNDS
# engage/release cycles. Prints, per action, the command's wall time (process start to exit,
# what an operator waits) and the daemon's own elapsed time (flag flip + fsync'd state write),
# as p50 / p99 / max in milliseconds.
#   scripts/engage-latency.sh [ROUNDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-25}
conns=${2:-8}
cargo build --release --quiet
bin=target/release/xks-bridge
dir=$(mktemp -d /tmp/xks-engage.XXXXXX)
$bin quickstart --dir "$dir" --listen 127.0.0.1:0 >"$dir/stdout" 2>"$dir/stderr" &
pid=$!
trap 'kill $pid $load 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -f "$dir/quickstart.json" ] && break; sleep 0.1; done
load=""
$bin bench --quickstart "$dir/quickstart.json" --connections "$conns" --duration $((rounds + 10)) \
  --warmup 0 --json >"$dir/bench.json" 2>/dev/null &
load=$!
sleep 2
: >"$dir/engage.txt"; : >"$dir/release.txt"
for _ in $(seq "$rounds"); do
  for action in engage release; do
    t0=$(date +%s%N)
    out=$($bin kill-switch "$action" --reason "latency drill" --config "$dir/config.toml")
    t1=$(date +%s%N)
    inner=$(sed -n 's/.*(\([0-9.]*\) ms).*/\1/p' <<<"$out")
    echo "$(( (t1 - t0) / 1000 )) $inner" >>"$dir/$action.txt"
    sleep 0.3
  done
done
summary() { # column file -> p50 p99 max (ms)
  awk -v c="$1" '{print $c}' "$2" | sort -n | awk '{a[NR]=$1} END {
    p50=a[int((NR-1)*0.5)+1]; p99=a[int((NR-1)*0.99+0.5)+1];
    printf "p50 %.2f  p99 %.2f  max %.2f", p50, p99, a[NR] }'
}
for action in engage release; do
  echo "$action ($rounds rounds under $conns-connection load):"
  echo "  command wall time (ms):  $(awk '{print $1/1000}' "$dir/$action.txt" > "$dir/$action.wall"; summary 1 "$dir/$action.wall")"
  echo "  in-daemon time (ms):     $(summary 2 "$dir/$action.txt")"
done
wait $load || true
echo "load during the run: $(grep -o '"throughput_per_s":[0-9.]*' "$dir/bench.json" || echo 'see '"$dir"'/bench.json')"
