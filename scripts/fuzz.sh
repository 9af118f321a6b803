#!/usr/bin/env bash
# Property-based contract run of the service's OpenAPI document with schemathesis: builds the
# binaries (debug), starts auth0-sim and `auth0-exporter serve` on a fresh database, creates
# completed exports (one the read routes use, one for DELETE, one for cancel, an incremental one
# for /changes) and runs `st run /openapi.json` with every check on every operation, real
# export ids, user id and cursors in the parameters that take them. Exits non-zero on any
# failure of any check, any server error or any panic in the service log; stops everything and
# drops the database on exit.
#
# Usage: scripts/fuzz.sh [--no-build] [-- extra `st run` options]
# Environment:
#   FUZZ_MAX_EXAMPLES  generated test cases per operation in the fuzzing phase (default 100)
#   FUZZ_WORKERS       concurrent schemathesis workers (default 1: with more, schemathesis 4.32.5
#                      on CPython 3.11 crashes now and then in its coverage phase, `ast.parse`
#                      from several threads: "AST constructor recursion depth mismatch")
#   FUZZ_SEED          schemathesis seed (default: random; the run prints it)
#   FUZZ_TIME_LIMIT    seconds schemathesis may run before it is stopped and the run fails (default 600)
#   FUZZ_PHASES        schemathesis phases (default examples,coverage,fuzzing,stateful; pass them
#                      here, not as --phases after --)
#   TEST_DATABASE_URL  admin URL of the Postgres to use (else 127.0.0.1:5432, else a throwaway cluster)
# Logs and reports stay in target/fuzz/ (service.log, sim.log, schemathesis.toml, report/).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh

ST_VERSION=4.32.5
venv=target/fuzz-venv
out=target/fuzz
max_examples=${FUZZ_MAX_EXAMPLES:-100}
workers=${FUZZ_WORKERS:-1}
time_limit=${FUZZ_TIME_LIMIT:-600}
phases=${FUZZ_PHASES:-examples,coverage,fuzzing,stateful}
build=1
st_extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --) shift; st_extra=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# --- schemathesis, pinned, in a venv of its own (reused when it holds the pinned version) ---
scripts/python-venv.sh "$venv" "schemathesis==$ST_VERSION" >/dev/null
py="$venv/bin/python"

if [ "$build" -eq 1 ]; then
  cargo build --workspace --bins --locked
fi
exporter=target/debug/auth0-exporter
sim=target/debug/auth0-sim
for bin in "$exporter" "$sim"; do
  [ -x "$bin" ] || { echo "$bin is missing: run without --no-build" >&2; exit 1; }
done

free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- everything started below is undone here ---
rm -rf "$out"
mkdir -p "$out"
sim_pid=""
service_pid=""
st_pid=""
admin_url=""
db=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$st_pid" ]; then
    kill -TERM "$st_pid" 2>/dev/null
    wait "$st_pid" 2>/dev/null
  fi
  if [ -n "$service_pid" ] && kill -0 "$service_pid" 2>/dev/null; then
    kill -TERM "$service_pid"
    # The service drains (readiness off) for a few seconds before it closes.
    for _ in $(seq 1 300); do kill -0 "$service_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$service_pid" 2>/dev/null
    wait "$service_pid" 2>/dev/null
  fi
  if [ -n "$sim_pid" ]; then
    kill -TERM "$sim_pid" 2>/dev/null
    wait "$sim_pid" 2>/dev/null
  fi
  if [ -n "$db" ]; then
    psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 ||
      psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 ||
      echo "could not drop database $db" >&2
  fi
  stop_throwaway_postgres
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Postgres: TEST_DATABASE_URL, else 127.0.0.1:5432, else a throwaway cluster; a fresh database ---
command -v psql >/dev/null || ensure_postgres_installed
admin_url=${TEST_DATABASE_URL:-}
if [ -z "$admin_url" ]; then
  if pg_isready -q -h 127.0.0.1 -p 5432 -U postgres 2>/dev/null &&
     psql -q -h 127.0.0.1 -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
    admin_url="postgres://postgres@127.0.0.1:5432/postgres"
  else
    ensure_postgres_installed
    pg_port=$(free_port)
    start_throwaway_postgres "$pg_port" >/dev/null # not in $(...): it records the cluster to stop
    admin_url="postgres://postgres@127.0.0.1:$pg_port/postgres"
    echo "no Postgres on 127.0.0.1:5432: using a throwaway cluster on port $pg_port"
  fi
fi
db="fuzz_$(date +%s)_$$"
psql -q -v ON_ERROR_STOP=1 "$admin_url" -c "CREATE DATABASE $db" >/dev/null
database_url=$("$py" -c 'import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$admin_url" "$db")

# --- auth0-sim: a small tenant, fast jobs, a rate limit that never slows the run ---
"$sim" --host 127.0.0.1 --port 0 --users 50 --roles 8 --rate 1000 \
  --job-base-ms 200 --job-per-user-us 0 >"$out/sim.log" 2>&1 &
sim_pid=$!
sim_url=""
for _ in $(seq 1 100); do
  sim_url=$(sed -n 's/^auth0-sim listening on //p' "$out/sim.log")
  [ -n "$sim_url" ] && break
  kill -0 "$sim_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$sim_url" ] || { echo "auth0-sim did not start:" >&2; cat "$out/sim.log" >&2; exit 1; }

# --- the service, with a clean environment (nothing of the caller's AUTH0_* leaks in) ---
token=$("$py" -c 'import secrets; print(secrets.token_hex(24))')
port=$(free_port)
base="http://127.0.0.1:$port"
env -i PATH="$PATH" HOME="${HOME:-/tmp}" RUST_BACKTRACE=1 RUST_LOG="${RUST_LOG:-info,sqlx=warn}" \
  DATABASE_URL="$database_url" \
  LISTEN_ADDR="127.0.0.1:$port" \
  AUTH0_BASE_URL="$sim_url" \
  AUTH0_TENANT=sim \
  AUTH0_CLIENT_ID=sim-client \
  AUTH0_CLIENT_SECRET=sim-secret \
  AUTH0_RATE_LIMIT=500 \
  API_TOKENS="fuzz:$token:read+write" \
  "$exporter" serve >"$out/service.log" 2>&1 &
service_pid=$!
for _ in $(seq 1 300); do
  curl -fsS -o /dev/null "$base/readyz" 2>/dev/null && break
  kill -0 "$service_pid" 2>/dev/null || { echo "the service exited:" >&2; tail -n 30 "$out/service.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -o /dev/null "$base/readyz" || { echo "the service is not ready:" >&2; tail -n 30 "$out/service.log" >&2; exit 1; }

api() { # METHOD PATH [BODY]: prints the response body, fails on a non-2xx status
  local args=(-sS -o "$out/api-body" -w '%{http_code}' -X "$1" -H "Authorization: Bearer $token") code
  [ $# -lt 3 ] || args+=(-H 'Content-Type: application/json' --data "$3")
  code=$(curl "${args[@]}" "$base$2")
  if [[ $code != 2* ]]; then
    echo "$1 $2 answered $code: $(cat "$out/api-body")" >&2
    return 1
  fi
  cat "$out/api-body"
}
json_field() { # FIELD (dotted path, numbers index lists) from JSON on stdin
  "$py" -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v)' "$1"
}
toml_str() { "$py" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
wait_completed() { # ID
  local status=""
  for _ in $(seq 1 240); do
    status=$(api GET "/v1/exports/$1" | json_field status)
    case "$status" in
      completed) return 0 ;;
      failed | cancelled) break ;;
    esac
    sleep 0.5
  done
  echo "export $1 ended $status instead of completed:" >&2
  api GET "/v1/exports/$1" >&2 || true
  return 1
}

# --- exports with real data: one the read routes use, one for DELETE, one for cancel, and an
# incremental one (after the sim changed some users) for /changes when the document has it ---
doc=$(curl -fsS "$base/openapi.json")
has_path() { "$py" -c 'import json, sys; sys.exit(0 if sys.argv[1] in json.load(sys.stdin)["paths"] else 1)' "$1" <<<"$doc"; }
# Webhooks first, so the exports below leave deliveries to list (to an endpoint that refuses
# connections: they stay pending, retried); schedules due once a year.
webhook_body='{"url":"https://127.0.0.1:9/hook","events":["export.completed","export.failed"]}'
webhook_id=$(api POST /v1/webhooks "$webhook_body" | json_field id)
webhook_delete_id=$(api POST /v1/webhooks "$webhook_body" | json_field id)
schedule_body='{"cron":"0 0 1 1 *","timezone":"Europe/Berlin","export":{"fields":["user_id","email"]}}'
schedule_id=$(api POST /v1/schedules "$schedule_body" | json_field id)
schedule_delete_id=$(api POST /v1/schedules "$schedule_body" | json_field id)
export_id=$(api POST /v1/exports '{}' | json_field id)
delete_id=$(api POST /v1/exports '{}' | json_field id)
cancel_id=$(api POST /v1/exports '{}' | json_field id)
for id in "$export_id" "$delete_id" "$cancel_id"; do wait_completed "$id"; done
first_page=$(api GET "/v1/exports/$export_id/profiles?limit=1")
user_id=$(json_field data.0.user_id <<<"$first_page")
profiles_cursor=$(json_field next_cursor <<<"$first_page")
exports_cursor=$(api GET "/v1/exports?limit=1" | json_field next_cursor)
schedules_cursor=$(api GET "/v1/schedules?limit=1" | json_field next_cursor)
webhooks_cursor=$(api GET "/v1/webhooks?limit=1" | json_field next_cursor)
first_delivery=$(api GET "/v1/webhooks/$webhook_id/deliveries?limit=1")
delivery_id=$(json_field data.0.id <<<"$first_delivery")
deliveries_cursor=$(json_field next_cursor <<<"$first_delivery")
latest_cursor=$(api GET "/v1/tenants/sim/latest/profiles?limit=1" | json_field next_cursor)
for c in "$profiles_cursor" "$exports_cursor" "$schedules_cursor" "$webhooks_cursor" "$deliveries_cursor" "$latest_cursor"; do
  if [ "$c" = None ]; then
    echo "a first page (limit=1) has no next_cursor" >&2
    exit 1
  fi
done
changes_id=""
changes_cursor=""
if has_path "/v1/exports/{id}/changes"; then
  # A fifth of the users added, deleted or changed, so the diff has pages.
  curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' \
    --data '{"share": 0.2, "seed": 7}' "$sim_url/__sim/mutate"
  changes_id=$(api POST /v1/exports "{\"base\": \"$export_id\"}" | json_field id)
  wait_completed "$changes_id"
  changes_cursor=$(api GET "/v1/exports/$changes_id/changes?limit=1" | json_field next_cursor)
  [ "$changes_cursor" != None ] || { echo "the incremental export $changes_id has no second page of changes" >&2; exit 1; }
fi
echo "fuzzing $base: export $export_id (read routes), $delete_id (DELETE), $cancel_id (cancel)," \
  "${changes_id:+$changes_id (changes), }user $user_id"

# --- schemathesis configuration: real ids and cursors where the routes take them ---
# Two runs: the unit phases (examples, coverage, fuzzing) with every {id} and {user_id} fixed to
# a real one; then the stateful phase without them, as schemathesis applies configured values
# over the ids it takes from the Location of the exports it creates (it would cancel, delete
# and read the fixed exports instead of those).
common_cfg() { # PATH_IDS (1 or 0)
  cat <<EOF
# Failures found by earlier runs are replayed first; kept under target/, not in the work tree.
[cache]
directory = $(toml_str "$PWD/target/fuzz-cache")

# The Authorization header stays filtered (an exact key); the default markers "key" and "auth"
# would also hide Idempotency-Key and enrich.authentication_methods / authenticators, leaving
# the reproducing curl commands wrong.
[output.sanitization]
sensitive-markers = ["token", "secret", "password", "passwd", "credential", "session"]

# Cursors are opaque (base64url of versioned JSON): no schema can tell a valid one from
# garbage, so the list routes get real ones, the second page of each list.
[[operations]]
include-name = "GET /v1/exports"
parameters = { "query.cursor" = $(toml_str "$exports_cursor") }

[[operations]]
include-name = "GET /v1/exports/{id}/profiles"
parameters = { "query.cursor" = $(toml_str "$profiles_cursor") }

[[operations]]
include-name = "GET /v1/schedules"
parameters = { "query.cursor" = $(toml_str "$schedules_cursor") }

[[operations]]
include-name = "GET /v1/webhooks"
parameters = { "query.cursor" = $(toml_str "$webhooks_cursor") }

[[operations]]
include-name = "GET /v1/webhooks/{id}/deliveries"
parameters = { "path.id" = $(toml_str "$webhook_id"), "query.cursor" = $(toml_str "$deliveries_cursor") }

# The latest view of the sim tenant; its cursors are pinned to the export they started on.
[[operations]]
include-name = "GET /v1/tenants/{tenant}/latest/profiles"
parameters = { "path.tenant" = "sim", "query.cursor" = $(toml_str "$latest_cursor") }

[[operations]]
include-name = ["GET /v1/tenants/{tenant}/latest", "GET /v1/tenants/{tenant}/latest/download",
                "GET /v1/tenants/{tenant}/latest/profiles/{user_id}"]
parameters = { "path.tenant" = "sim" }

# (An operation takes its parameters from the first entry here that sets any.)
# A valid cron expression or webhook URL is more than a pattern can say (which dates a cron
# names, which hosts a URL may have): schema-valid bodies may still be refused with a 400 that
# names the field, so positive-data acceptance also accepts a 400 here (`--checks all` keeps
# the check on; every other check is unchanged).
[[operations]]
include-name = ["POST /v1/schedules", "PATCH /v1/schedules/{id}", "POST /v1/webhooks", "PATCH /v1/webhooks/{id}"]
checks = { positive_data_acceptance = { expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"] } }
EOF
  if [ -n "$changes_id" ]; then
    local changes_id_param=""
    [ "$1" -eq 0 ] || changes_id_param="\"path.id\" = $(toml_str "$changes_id"), "
    cat <<EOF

[[operations]]
include-name = "GET /v1/exports/{id}/changes"
parameters = { $changes_id_param"query.cursor" = $(toml_str "$changes_cursor") }
EOF
  fi
}
unit_cfg="$out/schemathesis.toml"
stateful_cfg="$out/schemathesis-stateful.toml"
{
  echo "# Written by scripts/fuzz.sh for the unit phases of one run."
  echo "# Every {id} and {user_id} is a real one unless an operation below says otherwise."
  echo "parameters = { \"path.id\" = $(toml_str "$export_id"), \"path.user_id\" = $(toml_str "$user_id") }"
  echo
  common_cfg 1
  cat <<EOF

# Destructive routes get exports of their own, never the one the read routes use: DELETE
# removes its export (204 once, then 404), cancel finds its export finished (409). Queued and
# running exports are cancelled and deleted in the stateful run, which creates them.
[[operations]]
include-name = "DELETE /v1/exports/{id}"
parameters = { "path.id" = $(toml_str "$delete_id") }

[[operations]]
include-name = "POST /v1/exports/{id}/cancel"
parameters = { "path.id" = $(toml_str "$cancel_id") }

# Schedules and webhooks: real ids of their own; DELETE gets one it may remove.
[[operations]]
include-name = ["GET /v1/schedules/{id}", "PATCH /v1/schedules/{id}"]
parameters = { "path.id" = $(toml_str "$schedule_id") }

[[operations]]
include-name = "DELETE /v1/schedules/{id}"
parameters = { "path.id" = $(toml_str "$schedule_delete_id") }

[[operations]]
include-name = ["GET /v1/webhooks/{id}", "PATCH /v1/webhooks/{id}",
                "POST /v1/webhooks/{id}/deliveries/{delivery_id}/redeliver"]
parameters = { "path.id" = $(toml_str "$webhook_id"), "path.delivery_id" = $(toml_str "$delivery_id") }

[[operations]]
include-name = "DELETE /v1/webhooks/{id}"
parameters = { "path.id" = $(toml_str "$webhook_delete_id") }
EOF
} >"$unit_cfg"
{
  echo "# Written by scripts/fuzz.sh for the stateful phase of one run: ids come from the"
  echo "# Location of the exports it creates."
  common_cfg 0
} >"$stateful_cfg"

# --- the runs, each under a watchdog: schemathesis can spin for ever generating data for some
# schemas (e.g. its coverage phase on a uniqueItems array longer than 64 items of a pattern with
# nested repetition). Past the budget it is interrupted (twice: the first interrupt waits for
# the busy worker), then terminated, and the run fails. ---
st_common=(
  --checks all
  --header "Authorization: Bearer $token"
  --max-examples "$max_examples"
  --workers "$workers"
  --continue-on-failure
  --report "junit,ndjson"
  --no-color
)
[ -z "${FUZZ_SEED:-}" ] || st_common+=(--seed "$FUZZ_SEED")
started=$(date +%s)
deadline=$((started + time_limit))
st_rc=0
run_st() { # CONFIG NAME PHASES
  "$venv/bin/st" --config-file "$1" run "$base/openapi.json" "${st_common[@]}" --phases "$3" \
    --report-junit-path "$out/report/$2.xml" --report-ndjson-path "$out/report/$2.ndjson" "${st_extra[@]}" &
  st_pid=$!
  (
    while [ "$(date +%s)" -lt "$deadline" ]; do
      kill -0 "$st_pid" 2>/dev/null || exit 0
      sleep 1
    done
    echo "schemathesis is still running ${time_limit}s after the first run started: interrupting it" >&2
    for sig in INT INT TERM KILL; do
      kill "-$sig" "$st_pid" 2>/dev/null || exit 0
      sleep 15
    done
  ) &
  local watchdog_pid=$! rc=0
  wait "$st_pid" || rc=$?
  wait "$watchdog_pid" 2>/dev/null || true
  st_pid=""
  [ "$rc" -eq 0 ] || st_rc=$rc
}
unit_phases=$(tr ',' '\n' <<<"$phases" | grep -xE 'examples|coverage|fuzzing' | paste -sd, - || true)
[ -z "$unit_phases" ] || run_st "$unit_cfg" unit "$unit_phases"
if tr ',' '\n' <<<"$phases" | grep -qx stateful && [ "$(date +%s)" -lt "$deadline" ]; then
  run_st "$stateful_cfg" stateful stateful
fi
elapsed=$(($(date +%s) - started))

# --- summary from the NDJSON event stream (complete even when the run was cut off) ---
echo
echo "== fuzz summary =="
echo "schemathesis $ST_VERSION, phases $phases, $max_examples examples per operation, $workers workers: ${elapsed}s"
"$py" - "$out"/report/*.ndjson <<'PY'
import collections, json, sys
selected = total = None
cases, phases, ops = 0, collections.Counter(), set()
failures = collections.defaultdict(set)  # (check, operation, problem) -> case ids
checks_run = 0
statuses = collections.defaultdict(collections.Counter)  # operation -> status -> responses
labels = set()  # the documented operations (unsupported_method's cases use other methods)
lines = []
for path in sys.argv[1:]:
    try:
        lines += open(path).readlines()
    except OSError as e:
        print(f"no event stream: {e}")
for line in lines:
    try:
        event = json.loads(line)
    except ValueError:
        continue
    for kind, body in event.items():
        if kind == "LoadingFinished" and selected is None:
            stat = body.get("statistic", {}).get("operations", {})
            selected, total = stat.get("selected"), stat.get("total")
        elif kind == "ScenarioFinished":
            recorder = body.get("recorder") or {}
            n = len(recorder.get("cases") or {})
            cases += n
            phases[body.get("phase")] += n
            if n and body.get("phase") != "stateful":
                ops.add(recorder.get("label"))
            labels.add(recorder.get("label"))
            for case_id, interaction in (recorder.get("interactions") or {}).items():
                case = ((recorder.get("cases") or {}).get(case_id) or {}).get("value") or {}
                request = interaction.get("request") or {}
                # Requests the checks add (other methods, no auth) are not the generated case.
                if case.get("method") and request.get("method") == case.get("method"):
                    status = (interaction.get("response") or {}).get("status_code", "error")
                    statuses[f"{case['method']} {case['path']}"][status] += 1
            for case_id, results in (recorder.get("checks") or {}).items():
                for check in results:
                    checks_run += 1
                    if check.get("status") == "failure":
                        failure = (check.get("failure_info") or {}).get("failure") or {}
                        key = (check.get("name"), failure.get("operation") or recorder.get("label"),
                               failure.get("title") or failure.get("type"))
                        failures[key].add(case_id)
print(f"operations: {selected} selected of {total} in the document, {len(ops)} tested outside the stateful phase")
print(f"test cases: {cases} ({', '.join(f'{p} {n}' for p, n in phases.items())}); check results: {checks_run}")
print("responses by operation:")
for op in sorted(op for op in statuses if op in labels):
    print(f"  {op}: " + ", ".join(f"{code} x{n}" for code, n in sorted(statuses[op].items(), key=lambda kv: str(kv[0]))))
print(f"failures: {len(failures)} distinct (check, operation, problem)")
for (check, op, title), ids in sorted(failures.items(), key=lambda kv: tuple(map(str, kv[0]))):
    print(f"  {check}: {op}: {title} ({len(ids)} case{'s' if len(ids) > 1 else ''})")
PY
panics=$(grep -c 'panicked' "$out/service.log" || true)
echo "service panics: $panics (log: $out/service.log)"
echo "schemathesis exit code: $st_rc (reports: $out/report/)"
if [ "$st_rc" -ne 0 ] || [ "$panics" -ne 0 ]; then
  echo "FUZZ FAILED"
  exit 1
fi
echo "FUZZ PASSED"
