#!/usr/bin/env bash
# The main job on embedded defaults: a throwaway Postgres (unless DATABASE_URL is set), the
# bundled auth0-sim, the service, one complete export with a progress bar, then a check of every
# profile against the sim's ground truth. Extra arguments go to `auth0-exporter demo`
# (e.g. --users 10000 --rate 50 --exit).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
[ -n "${DATABASE_URL:-}" ] || ensure_postgres_installed
cargo run --release --locked --bin auth0-exporter -- demo "$@"
