#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: unlike throughput and CPU time,
# the count is the same from run to run whatever else the machine is doing, so it compares two
# builds on a shared machine. Starts a quickstart (its own SoftHSM2 token) under callgrind,
# warms it up, counts only while `bench` (run natively, from the same binary) sends Encrypt,
# then prints the instructions per request (the daemon's every thread: the request path, the
# HSM worker, SoftHSM2, the log and audit writers) and the functions that executed most.
#   scripts/callgrind.sh BINARY [SECONDS] [CONNECTIONS] [OP]
# OP is encrypt (default) or decrypt. Needs valgrind (Debian package valgrind).
# Valgrind does not emulate the SHA-NI instructions, so SHA-256 (SigV4, the audit chain) runs
# the sha2 crate's portable code under it and counts several times what it costs natively.
set -euo pipefail
bin=$(readlink -f "$1"); secs=${2:-10}; conns=${3:-1}; op=${4:-encrypt}
for tool in valgrind callgrind_control callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: $tool is not installed" >&2; exit 69; }
done
work=$(mktemp -d /tmp/xks-callgrind.XXXXXX)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; true' EXIT
qs() { # [launcher...]: a quickstart on $work/qs, until it has written quickstart.json
  rm -f "$work/qs/quickstart.json"
  "$@" "$bin" quickstart --dir "$work/qs" --listen 127.0.0.1:0 >"$work/qs.out" 2>"$work/qs.err" &
  pid=$!
  for _ in $(seq 1200); do [ -f "$work/qs/quickstart.json" ] && return; sleep 0.1; done
  echo "callgrind.sh: the quickstart did not start; $work/qs.err says:" >&2
  tail -5 "$work/qs.err" >&2
  exit 1
}
# The token, keys and certificate are made natively; the daemon then serves them under callgrind.
qs
kill -TERM "$pid"; wait "$pid" || true
# With the token's module environment already set, the daemon does not restart itself to apply
# it (src/module_env.rs), which a process under valgrind cannot do.
qs env SOFTHSM2_CONF="$work/qs/softhsm2.conf" \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out"
run() { # seconds
  "$bin" bench --quickstart "$work/qs/quickstart.json" --mix "$op=1" --connections "$conns" \
    --duration "$1" --warmup 0 --json
}
# Start-up is not instrumented; the warm-up is, then its counts are zeroed: the dump holds the
# measured run alone.
callgrind_control -i on "$pid" >/dev/null 2>&1
run 3 >/dev/null
callgrind_control -z "$pid" >/dev/null 2>&1
run "$secs" >"$work/bench.json"
callgrind_control -d "$pid" >/dev/null 2>&1
kill -TERM "$pid"; wait "$pid" || true
pid=""
dump="$work/callgrind.out.1"
[ -f "$dump" ] || { echo "callgrind.sh: no dump in $work" >&2; exit 1; }
requests=$(python3 -c "import json; print(json.load(open('$work/bench.json'))['total'])")
errors=$(python3 -c "import json; print(sum(json.load(open('$work/bench.json')).get('errors', {}).values()))")
ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
echo "$op at $conns connection(s), ${secs} s under callgrind: $requests requests ($errors errors)"
echo "instructions per request: $((ir / requests)) ($ir in all)"
callgrind_annotate --inclusive=no "$dump" 2>/dev/null | sed -n '/^Ir/,$p' | head -28
echo "callgrind output: $dump (callgrind_annotate --inclusive=yes for totals by caller)"
