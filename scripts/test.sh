#!/usr/bin/env bash
# The whole test suite: formatting, lints, build, doc tests, and every unit
# and integration test (against real PostgreSQL 15 and 18 servers) with
# cargo-nextest. Exits non-zero on any failure.
#
# DBBACKUP_TEST_FILTER: extra arguments for `cargo nextest run`, e.g.
#   DBBACKUP_TEST_FILTER='-E test(/wal/)' scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

step() { printf '\n==> %s\n' "$*"; }
failed=()

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -q -- -D warnings
step "cargo build"
cargo build --workspace --all-targets --locked -q

# Doc tests, then the suite; both run even if the other fails.
step "doc tests"
cargo test --doc --workspace --locked -q || failed+=("doc tests")
step "tests (real PostgreSQL servers)"
# shellcheck disable=SC2086 # the filter is a list of arguments
cargo nextest run --workspace --locked --no-fail-fast ${DBBACKUP_TEST_FILTER:-} || failed+=("cargo nextest")
# The README's first command: the main job end to end (about 10 s).
if [ -z "${DBBACKUP_TEST_FILTER:-}" ]; then
  step "scripts/demo.sh"
  ./scripts/demo.sh >target/demo.log 2>&1 || { tail -n 40 target/demo.log >&2; failed+=("demo.sh (log: target/demo.log)"); }
fi

if [ ${#failed[@]} -gt 0 ]; then
  printf '\ntest.sh: FAILED: %s\n' "${failed[*]}" >&2
  exit 1
fi
