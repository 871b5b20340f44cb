#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and integration tests
# against real PostgreSQL 15 and 18 servers. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

step() { printf '\n==> %s\n' "$*"; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -q -- -D warnings
step "doc tests"
cargo test --doc --workspace --locked -q
step "tests (real PostgreSQL servers)"
# shellcheck disable=SC2086
cargo nextest run --workspace --locked --no-fail-fast --retries 0 ${DBBACKUP_TEST_FILTER:-}
