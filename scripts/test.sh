#!/usr/bin/env bash
# The full test suite, as CI runs it: installs missing system packages, checks formatting, lints
# and the dependency policy, builds, runs every unit and integration test against a real
# SoftHSM2 token, and ends with the deterministic fuzzing gate.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step prints how long it took, so a slow CI run shows where the time went.
step() {
  local name="$1" t0
  shift
  echo "== $name"
  t0=$(date +%s)
  "$@"
  echo "== $name: $(($(date +%s) - t0)) s"
}
# The suite builds once from a clean tree: incremental caches would only cost disk.
export CARGO_INCREMENTAL=0
# A build that runs out of disk fails in the linker with an obscure signal (SIGBUS), so say up
# front how much room there is: a clean run, fuzz gate included, fills about 3.3 GiB (1.9 GiB
# in target/, 1.4 GiB in fuzz/target/).
disk() {
  local free_kib
  free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
  echo "free disk under $(pwd): $((free_kib / 1024)) MiB"
  if [ "$free_kib" -lt $((5 * 1024 * 1024)) ]; then
    echo "warning: less than 5 GiB free; a clean run fills about 3.5 GiB and may fail for want of disk" >&2
  fi
}
step "disk" disk
step "system packages" scripts/install-deps.sh
step "format" cargo fmt --all -- --check
step "clippy" cargo clippy --all-targets --locked -- -D warnings
# The fuzz targets are a crate of their own that only the fuzzing gate builds, minutes later:
# a library change that breaks them fails here, in seconds.
step "fuzz targets: format and clippy" bash -c \
  'cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check &&
   cargo clippy --manifest-path fuzz/Cargo.toml --bins --locked -- -D warnings'
step "rustdoc" env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --locked --quiet
# Dependency policy (deny.toml): licences, duplicate versions, sources. Advisories need the
# RustSec database from GitHub, which CI cannot reach: scripts/advisories.sh.
if ! cargo deny --version >/dev/null 2>&1; then
  step "install cargo-deny" cargo install cargo-deny --locked
fi
step "cargo deny" cargo deny --locked check bans licenses sources
step "build" cargo build --locked --all-targets
step "tests" cargo test --locked --no-fail-fast -- --test-threads "${XKS_TEST_THREADS:-4}"
# Every fuzz target: the committed corpus replayed, then a fixed-size search with a fixed seed,
# so the verdict depends on the commit only (XKS_FUZZ_GATE=0 skips it). Campaigns:
# scripts/fuzz.sh and docs/fuzzing.md.
if [ "${XKS_FUZZ_GATE:-1}" != 0 ]; then
  step "fuzz gate" scripts/fuzz-gate.sh
fi
