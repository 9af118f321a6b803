#!/usr/bin/env bash
# Makes (or reuses) a Python venv holding exactly the pinned packages; prints its python.
# Usage: scripts/python-venv.sh DIR NAME==VERSION...
set -euo pipefail
venv=$1
shift
have() { # every pinned requirement is installed at its version
  [ -x "$venv/bin/python" ] || return 1
  local frozen req
  frozen=$("$venv/bin/pip" freeze 2>/dev/null | tr '[:upper:]_' '[:lower:]-')
  for req in "$@"; do
    grep -qxF "$(tr '[:upper:]_' '[:lower:]-' <<<"$req")" <<<"$frozen" || return 1
  done
}
if ! have "$@"; then
  # Debian ships venv (ensurepip) as a package of its own.
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$@" >&2
fi
echo "$(cd "$venv" && pwd)/bin/python"
