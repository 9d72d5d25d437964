#!/usr/bin/env bash
# Creates, idempotently, a private SoftHSM2 token with the test keys, TLS material, SigV4
# credentials and a config under DIR (default: target/hsm-fixture). Nothing touches the system's
# default SoftHSM2 token directory: the token lives in DIR/tokens and DIR/softhsm2.conf points
# there. Prints the path of DIR/quickstart-layout files on success.
#
#   hsm-fixtures/setup.sh [DIR]          # XKS_BRIDGE_BIN overrides the binary used
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/target/hsm-fixture}
bin=${XKS_BRIDGE_BIN:-$root/target/debug/xks-bridge}
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --quiet)
fi
"$bin" quickstart --dir "$dir" --listen 127.0.0.1:0 --setup-only
