#!/usr/bin/env bash
# The full test suite, as CI runs it: installs missing system packages, checks formatting, lints
# and the dependency policy, builds, runs every unit and integration test against a real
# SoftHSM2 token, and ends with the deterministic fuzzing gate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
# Dependency policy (deny.toml): licences, duplicate versions, sources. Advisories need the
# RustSec database from GitHub, which CI cannot reach: scripts/advisories.sh.
if ! cargo deny --version >/dev/null 2>&1; then
  cargo install cargo-deny --locked
fi
cargo deny --locked check bans licenses sources
cargo build --locked --all-targets
cargo test --locked --no-fail-fast -- --test-threads "${XKS_TEST_THREADS:-4}"
# Every fuzz target: the committed corpus replayed, then a fixed-size search with a fixed seed,
# so the verdict depends on the commit only (XKS_FUZZ_GATE=0 skips it). Campaigns:
# scripts/fuzz.sh and docs/fuzzing.md.
if [ "${XKS_FUZZ_GATE:-1}" != 0 ]; then
  scripts/fuzz-gate.sh
fi
