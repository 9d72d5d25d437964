#!/usr/bin/env bash
# The full test suite, as CI runs it: installs missing system packages, checks formatting and
# lints, builds, and runs every unit and integration test against a real SoftHSM2 token.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
cargo build --locked --all-targets
cargo test --locked --no-fail-fast -- --test-threads "${XKS_TEST_THREADS:-4}"
# A short, bounded fuzzing run of every target (XKS_FUZZ_SECONDS per target; 0 skips it).
# Long campaigns: docs/fuzzing.md.
if [ "${XKS_FUZZ_SECONDS:-30}" -gt 0 ]; then
  FUZZ_SEED="${FUZZ_SEED:-1}" scripts/fuzz.sh "${XKS_FUZZ_SECONDS:-30}"
fi
