#!/usr/bin/env bash
# Runs the fault scenarios (tests/api/faults.rs and the fault tests of tests/api/exports.rs)
# and prints the figure line each one reports; docs/reliability.md is written from this output.
# Needs the same Postgres as scripts/test.sh (TEST_DATABASE_URL or 127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cargo test --locked -p auth0-exporter --test api -- \
  faults:: exports::expired_links exports::server_errors reliability::kill_9 --nocapture --test-threads=2 2>&1 |
  grep -E '^RELIABILITY|^test result|^takeover|FAILED|panicked'
