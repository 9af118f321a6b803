#!/usr/bin/env bash
# The containers, proven: builds the images (production, `--target sim`, Postgres) with
# `docker compose build`, starts docker-compose.yml under a unique project name on free
# 127.0.0.1 ports, waits for /readyz, runs one export through the API (roles +
# authentication_methods) and compares every profile (all pages, single profiles, the NDJSON,
# JSON and CSV downloads) with auth0-sim's ground truth (scripts/compose-smoke-check.py), then
# tears the stack down (also on failure). Prints the time each step took.
# Docker comes from ../shared/tools/docker-up (no registry: base images are built locally).
# Environment: SMOKE_USERS (default 200) and SMOKE_RATE (default 200 requests/s) size the sim.
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$(date +%s)
last=$t0
lap() {
  local now
  now=$(date +%s)
  printf '== %s: %d s (total %d s)\n' "$1" "$((now - last))" "$((now - t0))"
  last=$now
}

up=../shared/tools/docker-up
if ! [ -x "$up" ]; then
  echo "compose-smoke: $up not found: it starts the Docker engine and makes the base images" \
       "on a machine without a registry; without it there is no Docker to test with" >&2
  exit 1
fi
"$up" >/dev/null
lap "docker up"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
EXPORTER_HOST_PORT=$(free_port)
SIM_HOST_PORT=$(free_port)
SIM_USERS=${SMOKE_USERS:-200}
SIM_RATE=${SMOKE_RATE:-200}
export EXPORTER_HOST_PORT SIM_HOST_PORT SIM_USERS SIM_RATE
# Compose builds with the engine's BuildKit directly (buildx, which Bake needs, is absent).
export COMPOSE_BAKE=false
project="auth0-exporter-smoke-$$"
compose=(docker compose -p "$project" -f docker-compose.yml)

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ]; then
    echo "compose-smoke: FAILED (exit $rc); the stack's last logs:" >&2
    "${compose[@]}" ps -a >&2 || true
    "${compose[@]}" logs --no-color --tail 40 >&2 || true
  fi
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command with its output shown only when it fails.
quiet() {
  local log status=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
  fi
  rm -f "$log"
  return "$status"
}

# Compose builds with BuildKit: the production and sim targets share one build stage, which
# runs once.
quiet "${compose[@]}" build
lap "build the images (production, --target sim, postgres)"
for image in auth0-exporter:dev auth0-exporter-sim:dev; do
  docker image inspect -f "{{index .RepoTags 0}}: {{.Size}} bytes, user {{.Config.User}}" "$image"
  [ "$(docker image inspect -f '{{.Config.User}}' "$image")" = 10001 ] || {
    echo "compose-smoke: $image does not run as uid 10001" >&2
    exit 1
  }
done
# The production image holds auth0-exporter and not the sim; the sim image the other way round.
docker run --rm --entrypoint /bin/sh auth0-exporter:dev -c \
  'test -x /usr/local/bin/auth0-exporter && ! test -e /usr/local/bin/auth0-sim'
docker run --rm --entrypoint /bin/sh auth0-exporter-sim:dev -c \
  'test -x /usr/local/bin/auth0-sim && ! test -e /usr/local/bin/auth0-exporter'

quiet "${compose[@]}" up -d --no-build
api="http://127.0.0.1:$EXPORTER_HOST_PORT"
sim="http://127.0.0.1:$SIM_HOST_PORT"
deadline=$((SECONDS + 180))
until curl -fs --max-time 5 -o /dev/null "$api/readyz"; do
  if [ "$SECONDS" -gt "$deadline" ]; then
    echo "compose-smoke: $api/readyz not ready after 180 s" >&2
    exit 1
  fi
  sleep 1
done
lap "compose up, /readyz ready ($SIM_USERS sim users, rate $SIM_RATE/s)"

worker_running() {
  local id
  id=$("${compose[@]}" ps -q exporter-worker)
  if [ -z "$id" ] || [ "$(docker inspect -f '{{.State.Running}}' "$id")" != true ]; then
    echo "compose-smoke: the worker container (serve --role worker) is not running" >&2
    exit 1
  fi
}
worker_running

python3 scripts/compose-smoke-check.py "$api" "$sim" compose-token
worker_running
lap "export checked against the sim's truth"

quiet "${compose[@]}" down -v --remove-orphans
trap - EXIT INT TERM
lap "compose down"
echo "compose-smoke: passed in $(($(date +%s) - t0)) s"
