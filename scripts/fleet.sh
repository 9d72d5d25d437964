#!/usr/bin/env bash
# A fleet on one machine: N xks-bridge instances on one SoftHSM2 token behind HAProxy, all on
# loopback, to try rolling restarts, `xks-bridge drain` and the kill switch against a real load
# balancer. HAProxy runs the shipped deploy/haproxy/haproxy.cfg with only its `site:` lines and
# server list rewritten. Ctrl-C drains every instance (SIGTERM) and stops HAProxy.
#
#   scripts/fleet.sh [N] [--port P] [--dir DIR]
#     N        instances (default 3)
#     --port   HAProxy's port on 127.0.0.1 (default 8443); instance i listens on P+i
#     --dir    where the token, configs and logs go (default: a new temp dir, removed on exit)
#   XKS_BRIDGE_BIN overrides the binary (default: a release build of this checkout).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=3 port=8443 dir="" keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --dir) dir=$2; keep=1; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *[!0-9]*|'') echo "fleet.sh: unknown argument $1" >&2; exit 64 ;;
    *) n=$1; shift ;;
  esac
done
[ "$n" -ge 1 ] || { echo "fleet.sh: N must be at least 1" >&2; exit 64; }

"$root/scripts/install-deps.sh"
bin=${XKS_BRIDGE_BIN:-}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --quiet)
  bin=$root/target/release/xks-bridge
fi
if [ -z "$dir" ]; then
  dir=$(mktemp -d -t xks-fleet-XXXXXX)
fi
base=$dir/base
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping: SIGTERM to every instance (each drains: /ping 503, then closes) and HAProxy"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$keep" -eq 0 ]; then rm -rf "$dir"; else echo "files kept in $dir"; fi
}
trap cleanup INT TERM EXIT

# One token, TLS material and SigV4 credential, made by the quickstart; every instance config
# is derived from its config.toml and lives next to it (relative paths resolve there).
[ -f "$base/config.toml" ] || "$bin" quickstart --dir "$base" --listen 127.0.0.1:0 --setup-only >/dev/null
servers=""
for i in $(seq 1 "$n"); do
  p=$((port + i))
  sed -e "s#^listen = \[\"127.0.0.1:0\"\]#listen = [\"127.0.0.1:$p\"]\nfleet_size = $n#" \
      -e '/^# No load balancer in front/d' -e '/^drain_delay_ms = 0$/d' \
      -e "s#^directory = \"state\"#directory = \"state-$i\"#" \
      -e "s#^socket = \"admin.sock\"#socket = \"admin-$i.sock\"#" \
      -e "s#^file = \"audit/audit.jsonl\"#file = \"audit-$i/audit.jsonl\"#" \
      "$base/config.toml" > "$base/instance-$i.toml"
  grep -q "127.0.0.1:$p" "$base/instance-$i.toml" || { echo "fleet.sh: cannot derive instance-$i.toml" >&2; exit 1; }
  "$bin" serve --config "$base/instance-$i.toml" > "$dir/instance-$i.out" 2> "$dir/instance-$i.log" &
  pids+=($!)
  servers+="    server xks$i 127.0.0.1:$p"$'\n'
done

# The shipped HAProxy config, its site: lines set for loopback; no chroot or user switch.
sed -e "s#log /dev/log local0 info#log stdout format raw local0 info#" \
    -e "s#stats socket /run/haproxy/admin.sock#stats socket $dir/haproxy.sock#" \
    -e "s#bind :443#bind 127.0.0.1:$port#" \
    -e "s#/etc/haproxy/xks-bridge-ca.pem#$base/tls/ca.pem#" \
    -e "s#check-sni xks.example.com#check-sni localhost#" \
    -e '/^ *chroot /d' -e '/^ *user /d' -e '/^ *group /d' -e '/^ *server /d' \
    "$root/deploy/haproxy/haproxy.cfg" > "$dir/haproxy.cfg"
printf '%s' "$servers" >> "$dir/haproxy.cfg"
haproxy -c -q -f "$dir/haproxy.cfg"
haproxy -db -f "$dir/haproxy.cfg" > "$dir/haproxy.log" 2>&1 &
pids+=($!)

# Ready when HAProxy answers /ping (it has at least one instance up) and every instance printed
# its metrics address.
for _ in $(seq 1 150); do
  up=0
  for i in $(seq 1 "$n"); do grep -q "metrics on" "$dir/instance-$i.out" 2>/dev/null && up=$((up + 1)); done
  if [ "$up" -eq "$n" ] && curl -fsS --cacert "$base/tls/ca.pem" "https://127.0.0.1:$port/ping" >/dev/null 2>&1; then
    break
  fi
  sleep 0.2
done
curl -fsS --cacert "$base/tls/ca.pem" "https://127.0.0.1:$port/ping" >/dev/null || {
  echo "fleet.sh: the fleet did not come up; logs in $dir" >&2; keep=1; exit 1; }

access_key_id=$(sed -n 's/.*access_key_id = "\([^"]*\)".*/\1/p' "$base/config.toml")
metrics_args=""
echo
echo "xks-bridge fleet: $n instances on one SoftHSM2 token behind HAProxy"
echo "  endpoint       https://127.0.0.1:$port  (TLS passthrough to the instances)"
echo "  URI path       /quickstart/kms/xks/v1   key quickstart-aes"
echo "  access key id  $access_key_id"
echo "  secret         $base/secrets/sigv4-secret"
echo "  CA             $base/tls/ca.pem"
for i in $(seq 1 "$n"); do
  m=$(sed -n 's#^xks-bridge metrics on \(.*\)$#\1#p' "$dir/instance-$i.out")
  metrics_args+=" --instance-metrics $m"
  echo "  instance $i     https://127.0.0.1:$((port + i))  config $base/instance-$i.toml  metrics $m  pid ${pids[$((i - 1))]}"
done
echo "  HAProxy        runtime API $dir/haproxy.sock (echo 'show stat' | socat - $dir/haproxy.sock), log $dir/haproxy.log"
echo
echo "Try:"
echo "  $bin bench --endpoint https://127.0.0.1:$port --uri-path /quickstart/kms/xks/v1 \\"
echo "      --access-key-id $access_key_id --secret-file $base/secrets/sigv4-secret \\"
echo "      --ca-file $base/tls/ca.pem --key-id quickstart-aes --duration 30$metrics_args"
echo "  $bin drain --config $base/instance-1.toml     # out of rotation, then exits 0"
echo "  $bin serve --config $base/instance-1.toml &   # and back"
echo
echo "Ctrl-C stops the fleet."
wait "${pids[@]}"
