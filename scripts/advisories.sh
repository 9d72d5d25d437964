#!/usr/bin/env bash
# Checks the dependency graph against the RustSec advisory database (vulnerable, unmaintained,
# unsound and yanked crates), with the policy in deny.toml. Run it on a machine that can reach
# GitHub: cargo-deny fetches the database from https://github.com/rustsec/advisory-db on every
# run, and this fails (exit 1) when it cannot, instead of passing without a database. That is
# also why scripts/test.sh does not run it: the CI machine reaches only package registries.
#
#   scripts/advisories.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deny --version >/dev/null 2>&1; then
    echo "== installing cargo-deny"
    cargo install cargo-deny --locked
fi
cargo deny --locked check advisories
