#!/usr/bin/env bash
# Side-by-side comparison of xks-bridge with another XKS proxy that is already running (any
# implementation of the XKS Proxy API). Starts an xks-bridge quickstart (own SoftHSM2 token,
# 127.0.0.1, random port), then drives both with the same load generator (`xks-bridge bench`,
# same options), alternating target and order run by run so that a change in the machine's
# load hits both. Per run it prints throughput, p50/p99/p99.9 latency, errors and the server's
# CPU-µs per request: utime + stime of the server's PID from /proc/<pid>/stat over the bench
# invocation, divided by the requests it sent (warm-up and measured; the 16 setup Encrypts of a
# decrypt run are left out of the count). Then min / median / max per case and target, and the
# ratio of the medians (xks-bridge / other). Needs python3. Does not build anything: build
# xks-bridge first (cargo build --release) and start the other proxy yourself.
#
#   scripts/bench-vs.sh --endpoint https://127.0.0.1:PORT --uri-prefix /PREFIX \
#     --access-key-id ID --secret-file FILE --ca CA.pem --key-id LABEL --pid PID \
#     [--name NAME] [--seconds 10] [--runs 3] [--cases "encrypt:8 encrypt:1 encrypt:64 decrypt:8"] \
#     [--bin target/release/xks-bridge] [--region us-east-1]
#
# Every option may also be given in the environment: VS_ENDPOINT, VS_URI_PREFIX,
# VS_ACCESS_KEY_ID, VS_SECRET_FILE, VS_CA, VS_KEY_ID, VS_PID, VS_NAME, VS_SECONDS, VS_RUNS,
# VS_CASES, XKS_BRIDGE, VS_REGION. The URI prefix is what precedes /kms/xks/v1 (may be empty).
# A case is OPERATION:CONNECTIONS, OPERATION one of encrypt, decrypt, metadata, health.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

endpoint=${VS_ENDPOINT:-}
prefix=${VS_URI_PREFIX:-}
akid=${VS_ACCESS_KEY_ID:-}
secret_file=${VS_SECRET_FILE:-}
ca=${VS_CA:-}
key_id=${VS_KEY_ID:-}
other_pid=${VS_PID:-}
name=${VS_NAME:-other}
secs=${VS_SECONDS:-10}
runs=${VS_RUNS:-3}
cases=${VS_CASES:-"encrypt:8 encrypt:1 encrypt:64 decrypt:8"}
bin=${XKS_BRIDGE:-$root/target/release/xks-bridge}
region=${VS_REGION:-us-east-1}
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --endpoint) endpoint=$2; shift 2 ;;
    --uri-prefix) prefix=$2; shift 2 ;;
    --access-key-id) akid=$2; shift 2 ;;
    --secret-file) secret_file=$2; shift 2 ;;
    --ca) ca=$2; shift 2 ;;
    --key-id) key_id=$2; shift 2 ;;
    --pid) other_pid=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --cases) cases=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --region) region=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "bench-vs: unknown argument $1" >&2; usage ;;
  esac
done
for v in endpoint akid secret_file ca key_id other_pid; do
  [ -n "${!v}" ] || { echo "bench-vs: missing $v" >&2; usage; }
done
[ -x "$bin" ] || { echo "bench-vs: $bin not found (cargo build --release)" >&2; exit 2; }
[ -r "/proc/$other_pid/stat" ] || { echo "bench-vs: no process $other_pid" >&2; exit 2; }
command -v python3 >/dev/null || { echo "bench-vs: needs python3" >&2; exit 2; }

work=$(mktemp -d /tmp/xks-vs.XXXXXX)
"$bin" quickstart --dir "$work/bridge" --listen 127.0.0.1:0 >"$work/bridge.out" 2>"$work/bridge.err" &
bridge_pid=$!
# The quickstart directory and its log are scratch (the audit trail grows by ~1 kB a request).
trap 'kill "$bridge_pid" 2>/dev/null || true; wait "$bridge_pid" 2>/dev/null || true; rm -rf "$work/bridge" "$work/bridge.err"' EXIT
for _ in $(seq 600); do grep -q "listening on" "$work/bridge.out" 2>/dev/null && break; sleep 0.05; done
for _ in $(seq 400); do [ -f "$work/bridge/quickstart.json" ] && break; sleep 0.05; done
[ -f "$work/bridge/quickstart.json" ] || { echo "bench-vs: quickstart did not start:" >&2; cat "$work/bridge.err" >&2; exit 1; }

tick=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
target_args() { # which -> bench options naming the target
  if [ "$1" = bridge ]; then
    echo --quickstart "$work/bridge/quickstart.json"
  else
    echo --endpoint "$endpoint" --uri-path "$prefix/kms/xks/v1" --access-key-id "$akid" \
      --secret-file "$secret_file" --ca-file "$ca" --key-id "$key_id" --region "$region"
  fi
}
one() { # which case run -> one result line, appended to $work/results.tsv
  local which=$1 op=${2%%:*} conns=${2##*:} run=$3 pid t0 t1 out
  pid=$bridge_pid; [ "$which" = other ] && pid=$other_pid
  out="$work/$which-$op-$conns-$run.json"
  t0=$(cpu_ticks "$pid")
  # shellcheck disable=SC2046 # target_args is split on purpose (no spaces in its values)
  "$bin" bench $(target_args "$which") --mix "$op=1" --connections "$conns" --duration "$secs" \
    --warmup 1 --json >"$out" || true
  t1=$(cpu_ticks "$pid")
  python3 - "$out" "$which" "$op" "$conns" "$run" "$t0" "$t1" "$tick" >>"$work/results.tsv" <<'EOF'
import json, sys
out, which, op, conns, run, t0, t1, tick = sys.argv[1:]
try:
    d = json.load(open(out))
except Exception:
    print("\t".join([which, op, conns, run, "0", "0", "0", "0", "-1", "nan"]))
    sys.exit()
lat = d["latency_us"]
sent = d["total"] + d["warmup"]["requests"]
cpu = (int(t1) - int(t0)) / int(tick) * 1e6 / max(1, sent)
print("\t".join(str(x) for x in [which, op, conns, run, d["throughput_per_s"], lat["p50"], lat["p99"],
                                 lat["p99_9"], d["errors_total"] + d["warmup"]["errors"], round(cpu, 1)]))
EOF
  tail -n 1 "$work/results.tsv" | awk -F'\t' -v n="$name" '{
    printf "%-8s %-7s c=%-3s run %s: %9.1f req/s  p50 %8.0f µs  p99 %8.0f µs  p99.9 %8.0f µs  errors %s  server CPU %s µs/req\n",
      ($1 == "bridge" ? "xks-bridge" : n), $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
}

echo "xks-bridge: $("$bin" --version 2>/dev/null || echo "$bin"), pid $bridge_pid, $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['endpoint'])" "$work/bridge/quickstart.json")"
echo "$name: $endpoint$prefix/kms/xks/v1 pid $other_pid"
echo "machine: $(nproc) cores, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "runs: $runs x ${secs}s per case and target, 1 s warm-up, cases: $cases"
: >"$work/results.tsv"
for c in $cases; do
  for i in $(seq "$runs"); do
    if [ $((i % 2)) = 1 ]; then order="bridge other"; else order="other bridge"; fi
    for which in $order; do one "$which" "$c" "$i"; done
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$work/results.tsv" "$name" <<'EOF'
import statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
name = sys.argv[2]
cases = []
for r in rows:
    if (r[1], r[2]) not in cases:
        cases.append((r[1], r[2]))
cols = [("throughput req/s", 4, "{:.0f}"), ("p50 µs", 5, "{:.0f}"), ("p99 µs", 6, "{:.0f}"),
        ("p99.9 µs", 7, "{:.0f}"), ("errors", 8, "{:.0f}"), ("CPU µs/req", 9, "{:.0f}")]
def mmm(vals, fmt):
    v = sorted(vals)
    return " / ".join(fmt.format(x) for x in (v[0], st.median(v), v[-1]))
print("summary (min / median / max over runs)")
print("| case | proxy | " + " | ".join(c[0] for c in cols) + " |")
print("|---|---|" + "---|" * len(cols))
med = {}
for op, conns in cases:
    for which in ("bridge", "other"):
        sel = [r for r in rows if r[0] == which and r[1] == op and r[2] == conns]
        if not sel:
            continue
        cells = []
        for _, i, fmt in cols:
            vals = [float(r[i]) for r in sel]
            med[(op, conns, which, i)] = st.median(vals)
            cells.append(mmm(vals, fmt))
        label = "xks-bridge" if which == "bridge" else name
        print(f"| {op} c={conns} | {label} | " + " | ".join(cells) + " |")
print()
print(f"ratio of medians, xks-bridge / {name}")
print("| case | throughput | p50 | p99 | p99.9 | CPU µs/req |")
print("|---|---|---|---|---|---|")
def ratio(op, conns, i):
    a, b = med.get((op, conns, "bridge", i)), med.get((op, conns, "other", i))
    return f"{a / b:.2f}" if a is not None and b else "-"
for op, conns in cases:
    print(f"| {op} c={conns} | " + " | ".join(ratio(op, conns, i) for i in (4, 5, 6, 7, 9)) + " |")
EOF
echo
echo "results: $work/results.tsv (raw bench JSON beside it)"
