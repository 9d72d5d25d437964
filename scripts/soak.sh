#!/usr/bin/env bash
# Soak run (not part of CI): a release-build quickstart under steady mixed load for DURATION
# seconds (default 600), sampling the daemon's RSS and open file descriptors every 10 s. A
# healthy daemon shows flat RSS and fd counts after warm-up.
#   scripts/soak.sh [DURATION_SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-600}
conns=${2:-16}
cargo build --release --quiet
dir=$(mktemp -d /tmp/xks-soak.XXXXXX)
target/release/xks-bridge quickstart --dir "$dir" --listen 127.0.0.1:0 >"$dir/stdout" 2>"$dir/stderr" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -f "$dir/quickstart.json" ] && break; sleep 0.1; done
target/release/xks-bridge bench --quickstart "$dir/quickstart.json" --connections "$conns" \
  --duration "$duration" --mix encrypt=4,decrypt=4,metadata=1,health=1 --json >"$dir/bench.json" &
bench=$!
echo "time_s rss_kib fds"
start=$(date +%s)
while kill -0 $bench 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  fds=$(ls /proc/$pid/fd | wc -l)
  echo "$(( $(date +%s) - start )) $rss $fds"
  sleep 10
done
wait $bench || { echo "bench reported errors"; cat "$dir/bench.json"; exit 1; }
cat "$dir/bench.json"
