#!/usr/bin/env python3
"""Refresh economy (issue 12): a full export of N users, then a share of them changed at the sim
(factors enrolled, removed and renamed, roles, profile edits, users added and deleted, each with
the log records Auth0 writes), then an incremental export on the first. Prints and writes into
docs/benchmarks.md the Auth0 calls and wall time of each, and the incremental export's calls as
a share of the full one's (target: at most 5 %), plus the wall time both would take at a real
tenant's rate limit (calls / 16 per second).

Usage: bench/incremental.py [--users 100000] [--share 0.01] [--rate 2000] [--no-build] [--no-doc]
The database URL (default $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres) names an
existing database to connect to; the run creates and drops its own.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid

from common import free_port, wait_http
from scale import ROOT, db_url_for, get_json, http, log, psql, write_doc

TOKEN = "bench-token"
SECTION = "## Incremental refresh (bench/incremental.py)"
REAL_RATE = 16.0  # requests/s of an Enterprise tenant's Management API, for the wall-time estimate


def run_export(api, body):
    status, raw = http("POST", f"{api}/v1/exports", body, TOKEN)
    if status != 202:
        raise RuntimeError(f"POST /v1/exports {body}: {status} {raw[:300]!r}")
    export_id = json.loads(raw)["id"]
    started, last_log = time.time(), 0.0
    while True:
        e = get_json(f"{api}/v1/exports/{export_id}", TOKEN)
        if e["status"] in ("completed", "failed", "cancelled"):
            break
        if time.time() - last_log > 15:
            p = e["progress"]
            log(f"export {e['stage']}: downloaded {p['users_downloaded']:,}, enriched {p['users_enriched']:,}")
            last_log = time.time()
        time.sleep(0.2)
    if e["status"] != "completed":
        raise RuntimeError(f"export {export_id} ended {e['status']}: {e['error']}")
    return e, time.time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--share", type=float, default=0.01, help="share of users changed between the exports")
    parser.add_argument("--rate", type=int, default=2_000, help="sim and service rate limit, requests/s")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL",
                                                                 "postgres://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "auth0-sim", "--bin", "auth0-sim"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "--bin", "auth0-exporter"], cwd=ROOT, check=True)
    bins = {b: os.path.join(ROOT, "target", "release", b) for b in ("auth0-exporter", "auth0-sim")}
    tmp = tempfile.mkdtemp(prefix="auth0-exporter-incremental-")
    sim_port, api_port = free_port(), free_port()
    sim = subprocess.Popen(
        [bins["auth0-sim"], "--port", str(sim_port), "--users", str(args.users), "--roles", "20",
         "--rate", str(args.rate), "--burst", str(args.rate), "--mfa-share", "0.3"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "sim.log"), "w"))
    sim_url = f"http://127.0.0.1:{sim_port}"
    db = f"bench_incr_{uuid.uuid4().hex[:10]}"
    psql(args.database_url, f"CREATE DATABASE {db}")
    service = None
    api = f"http://127.0.0.1:{api_port}"
    try:
        wait_http(f"{sim_url}/__sim/stats", timeout=600)
        env = dict(os.environ, DATABASE_URL=db_url_for(args.database_url, db), LISTEN_ADDR=f"127.0.0.1:{api_port}",
                   AUTH0_BASE_URL=sim_url, AUTH0_TENANT="sim", AUTH0_CLIENT_ID="sim-client",
                   AUTH0_CLIENT_SECRET="sim-secret", AUTH0_RATE_LIMIT=str(args.rate),
                   API_TOKENS=f"bench:{TOKEN}:read+write", RUST_LOG="warn")
        service = subprocess.Popen([bins["auth0-exporter"], "serve"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=open(os.path.join(tmp, "service.log"), "w"))
        wait_http(f"{api}/readyz", timeout=120)

        log(f"full export of {args.users:,} users")
        full, full_secs = run_export(api, {})
        status, raw = http("POST", f"{sim_url}/__sim/mutate", {"share": args.share, "seed": 1})
        if status != 200:
            raise RuntimeError(f"mutating the sim: {status} {raw[:300]!r}")
        m = json.loads(raw)
        changed = {k: len(v) for k, v in m.items()}
        log(f"changed at the sim: {changed}")
        log("incremental export")
        incr, incr_secs = run_export(api, {"base": full["id"]})
    finally:
        for p in (service, sim):
            if p:
                p.terminate()
                p.wait(timeout=30)
        psql(args.database_url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

    inc = incr["incremental"]
    if inc["mode"] != "incremental":
        raise RuntimeError(f"the second export ran in full: {inc['full_reason']}")
    full_calls, incr_calls = full["stats"]["api_calls"], incr["stats"]["api_calls"]
    share = incr_calls / full_calls
    rows = [
        ("users", f"{full['progress']['users_total']:,}", f"{incr['progress']['users_total']:,}", ""),
        ("Auth0 calls", f"{full_calls:,}", f"{incr_calls:,}", f"{share:.1%} (target ≤ 5 %: {'PASS' if share <= 0.05 else 'MISS'})"),
        ("wall time here (rate limit {:,}/s)".format(args.rate), f"{full_secs:.0f} s", f"{incr_secs:.0f} s",
         f"{incr_secs / full_secs:.1%}"),
        (f"wall time at {REAL_RATE:.0f} requests/s (calls / rate)", f"{full_calls / REAL_RATE / 3600:.1f} h",
         f"{incr_calls / REAL_RATE / 60:.0f} min", ""),
        ("MFA fetched for", f"{full['progress']['users_total']:,} users", f"{inc['mfa_refetched']:,} users", ""),
        ("per-user calls saved (`stats.calls_saved`)", "—", f"{incr['stats']['calls_saved']:,}", ""),
        ("added / deleted / changed (export) vs at the sim", "—",
         f"{inc['users_added']} / {inc['users_deleted']} / {inc['users_changed']}",
         f"{changed.get('added', 0)} / {changed.get('deleted', 0)} / "
         f"{changed.get('fields_changed', 0) + changed.get('mfa_changed', 0) + changed.get('roles_changed', 0)}"),
    ]
    lines = ["| figure | full export | incremental export | share |", "|---|---:|---:|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    result = "\n".join(lines)
    print(result)
    if args.no_doc:
        return
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    cmd = "bench/incremental.py" + ("" if args.users == 100_000 else f" --users {args.users}") + \
          ("" if args.share == 0.01 else f" --share {args.share}")
    write_doc(f"""{SECTION}

Issue 12: a full export of {args.users:,} users (roles and authentication methods), then
{args.share:.0%} of the users changed at the sim in every way the issue names (each change writing
the tenant log records Auth0 would), then an incremental export built on the first. Calls are
Auth0 requests counted by the service (token, jobs, logs, roles, per-user). Measured {when} on
{platform.machine()} ({os.cpu_count()} cores), commit `{commit}`, with `{cmd}`.

{result}
""", SECTION)


if __name__ == "__main__":
    main()
