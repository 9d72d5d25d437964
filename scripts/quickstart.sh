#!/usr/bin/env bash
# One command from a fresh Debian/Ubuntu machine to a running xks-bridge on a local SoftHSM2
# token: installs what is missing, builds, and runs `xks-bridge quickstart` in the foreground.
#   scripts/quickstart.sh [--dir DIR] [--listen 127.0.0.1:PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet
exec target/release/xks-bridge quickstart "$@"
