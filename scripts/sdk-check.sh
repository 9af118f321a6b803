#!/usr/bin/env bash
# Checks auth0-sim with Auth0's own Python SDK (auth0-python): builds the sim, starts two small
# tenants on free ports (one with the default scopes, one without read:role_members) and runs
# sim/sdk/check.py against them. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/sdk-venv
scripts/python-venv.sh "$venv" auth0-python==6.8.0 >/dev/null

cargo build -q -p auth0-sim
bin=target/debug/auth0-sim
logs=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap cleanup EXIT

# Starts a sim on a free port; prints its base URL.
start_sim() {
  local name=$1; shift
  "$bin" --host 127.0.0.1 --port 0 --users 300 --roles 20 --rate 1000 \
    --job-base-ms 300 --job-per-user-us 0 "$@" >"$logs/$name.out" 2>"$logs/$name.err" &
  pids+=($!)
  for _ in $(seq 1 100); do
    local url
    url=$(sed -n 's/^auth0-sim listening on //p' "$logs/$name.out")
    if [ -n "$url" ]; then echo "$url"; return 0; fi
    sleep 0.1
  done
  echo "auth0-sim ($name) did not start:" >&2
  cat "$logs/$name.err" >&2
  return 1
}

full=$(start_sim full)
limited=$(start_sim limited --scopes "read:users read:roles")
"$venv/bin/python" sim/sdk/check.py "$full" "$limited"
