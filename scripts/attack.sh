#!/usr/bin/env bash
# Connection-exhaustion attack on a local quickstart instance, with fresh signed probes measured
# throughout. Prints the probes' success ratio and latency percentiles (examples/attack.rs), the
# daemon's peak RSS and open descriptors during the attack (from /proc/<pid>), and its
# connection-budget metrics afterwards.
#   scripts/attack.sh [--daemon BIN] [--no-build] [--idle N] [--pipeliners N] [--probes N] [--ramp S] [--reconnect]
#                     [--probe-source IP] [--handshake-timeout-ms MS]
# --daemon runs another build of xks-bridge (e.g. an older one, for a before/after comparison);
# the attack tool is always built from this tree. --probe-source IP (e.g. 127.0.0.2) probes from
# another loopback address than the attackers and turns the per-source caps on for loopback
# (server.per_source_limits_on_loopback), as for an attacker and KMS on different addresses.
set -euo pipefail
cd "$(dirname "$0")/.."

daemon=target/release/xks-bridge
build=1
attack_args=()
probe_source=""

while [ $# -gt 0 ]; do
    case "$1" in
        --daemon) daemon="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --idle|--pipeliners|--probes|--ramp|--probe-interval-ms|--handshake-timeout-ms) attack_args+=("$1" "$2"); shift 2 ;;
        --reconnect) attack_args+=("$1"); shift ;;
        --probe-source) attack_args+=("$1" "$2"); probe_source="$2"; shift 2 ;;
        *) echo "attack.sh: unknown option $1" >&2; exit 64 ;;
    esac
done

# Thousands of sockets on each side: lift the soft open-file limit to the hard one.
ulimit -n "$(ulimit -Hn)"
if [ "$build" = 1 ]; then
    cargo build --release --quiet --bin xks-bridge --example attack
fi
attack=target/release/examples/attack

dir=$(mktemp -d /tmp/xks-attack.XXXXXX)
log="$dir/daemon.log"
if [ -n "$probe_source" ]; then
    "$daemon" quickstart --dir "$dir/qs" --listen 127.0.0.1:0 --setup-only >/dev/null
    sed -i 's/^\[server\]$/[server]\nper_source_limits_on_loopback = true/' "$dir/qs/config.toml"
    grep -q '^per_source_limits_on_loopback = true' "$dir/qs/config.toml" || { echo "attack.sh: cannot enable per-source caps" >&2; exit 1; }
fi
"$daemon" quickstart --dir "$dir/qs" --listen 127.0.0.1:0 >"$log" 2>&1 &
pid=$!
sampler=""
cleanup() {
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

for _ in $(seq 1 300); do
    [ -s "$dir/qs/quickstart.json" ] && grep -q "quickstart is serving" "$log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "attack.sh: the daemon exited" >&2; exit 1; }
    sleep 0.2
done
metrics=$(sed -n 's/^ *metrics *\(http:[^ ]*\).*/\1/p' "$log" | head -1)
echo "daemon pid $pid ($daemon), open-file limit $(ulimit -n)"

# Peak RSS (kB) and descriptor count, sampled every 0.5 s while the attack runs.
(
    peak_rss=0 peak_fds=0
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
        [ "${rss:-0}" -gt "$peak_rss" ] && peak_rss=$rss
        [ "$fds" -gt "$peak_fds" ] && peak_fds=$fds
        echo "$peak_rss $peak_fds" >"$dir/peak"
        sleep 0.5
    done
) &
sampler=$!

"$attack" --quickstart "$dir/qs/quickstart.json" "${attack_args[@]}"

read -r peak_rss peak_fds <"$dir/peak"
echo "daemon during the attack: peak RSS $((peak_rss / 1024)) MiB, peak open descriptors $peak_fds"
if [ -n "$metrics" ] && command -v curl >/dev/null; then
    echo "daemon connection metrics after the attack:"
    curl -fsS "$metrics" | grep -E '^xks_bridge_connection' || echo "  (none exported by this build)"
fi
