#!/usr/bin/env bash
# Runs every test: unit tests, the auth0-sim tests and the integration suite, which talks to a
# real Postgres and to auth0-sim over real HTTP. Uses the server on 127.0.0.1:5432 when one
# answers (or TEST_DATABASE_URL), else starts a throwaway cluster for the run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh

if [ -z "${TEST_DATABASE_URL:-}" ]; then
  if pg_isready -q -h 127.0.0.1 -p 5432 -U postgres 2>/dev/null &&
     psql -q -h 127.0.0.1 -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
    export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  else
    ensure_postgres_installed
    trap stop_throwaway_postgres EXIT
    start_throwaway_postgres 55432 >/dev/null
    export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:55432/postgres"
    echo "no Postgres on 127.0.0.1:5432: using a throwaway cluster ($TEST_DATABASE_URL)"
  fi
fi

# Each test creates its own database t_<uuid>; drop those earlier runs left behind.
if command -v psql >/dev/null; then
  for db in $(psql -Atq "$TEST_DATABASE_URL" -c "SELECT datname FROM pg_database WHERE datname LIKE 't\_%'" 2>/dev/null); do
    psql -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  done
fi

cargo test --workspace --all-targets --locked "$@"
scripts/sdk-check.sh
