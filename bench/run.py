#!/usr/bin/env python3
"""Enrichment benchmark: release builds of auth0-sim and auth0-exporter, one export per run.

Each run starts a fresh simulated tenant (20 roles, 30 % of users with MFA, 50-200 ms of added
latency on every Management API call) with the sim's rate limit set to the run's limit, a fresh
database, and one `auth0-exporter serve` process with AUTH0_RATE_LIMIT set to the same limit. It
creates one export with the default enrichments (roles + authentication_methods), waits for it,
and prints one Markdown table row:

  users | limit | Auth0 calls | naive calls | call bound | lower bound s | elapsed s |
  elapsed / lower bound | 429s | peak RSS

- Auth0 calls: the sim's count of /api/v2 requests (token requests not included).
- naive calls: users x per-user enrichments (one /users/{id}/roles and one
  /users/{id}/authentication-methods call per user).
- call bound: the target of issue 4: MFA calls (one per user) + ceil(roles/100) +
  sum over roles of ceil(members/100) + job polls + 5.
- lower bound: Auth0 calls / limit, the fastest any client could make those calls.
- peak RSS: the service process's VmHWM.

Usage: bench/run.py [--runs 10000x50,1000x10,...] [--database-url URL]
Runs default to the matrix in docs/benchmarks.md.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

from common import free_port, peak_rss_mib, wait_http

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RUNS = "1000x10,1000x50,10000x50,100000x500,10000x10"
TOKEN = "bench-token"


def http(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.read()


def psql(admin_url, sql):
    subprocess.run(["psql", "-q", admin_url, "-c", sql], check=True, stdout=subprocess.DEVNULL)


def call_bound(sim_url, users, polls):
    """Issue 4's ceiling, computed from the sim's ground truth of role memberships."""
    members = {}
    roles = set()
    with urllib.request.urlopen(f"{sim_url}/__sim/truth", timeout=600) as resp:
        for line in resp:
            if not line.strip():
                continue
            for role in json.loads(line)["roles"]:
                roles.add(role["id"])
                members[role["id"]] = members.get(role["id"], 0) + 1
    role_pages = sum(math.ceil(m / 100) for m in members.values())
    return users + math.ceil(max(len(roles), 1) / 100) + role_pages + polls + 5


def run(users, limit, admin_url, bins, log_dir):
    sim_port, api_port = free_port(), free_port()
    sim = subprocess.Popen(
        [bins["auth0-sim"], "--port", str(sim_port), "--users", str(users), "--roles", "20",
         "--rate", str(limit), "--burst", str(max(1, math.ceil(limit))), "--mfa-share", "0.3",
         "--latency-ms", "50-200"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(log_dir, f"sim-{users}-{limit}.log"), "w"))
    sim_url = f"http://127.0.0.1:{sim_port}"
    db = f"bench_{uuid.uuid4().hex[:12]}"
    psql(admin_url, f"CREATE DATABASE {db}")
    db_url = admin_url.rsplit("/", 1)[0] + "/" + db
    env = dict(os.environ, DATABASE_URL=db_url, LISTEN_ADDR=f"127.0.0.1:{api_port}", AUTH0_BASE_URL=sim_url,
               AUTH0_TENANT="bench", AUTH0_CLIENT_ID="sim-client", AUTH0_CLIENT_SECRET="sim-secret",
               AUTH0_RATE_LIMIT=str(limit), API_TOKENS=f"bench:{TOKEN}:read+write", RUST_LOG="warn")
    service = subprocess.Popen([bins["auth0-exporter"], "serve"], env=env, stdout=subprocess.DEVNULL,
                               stderr=open(os.path.join(log_dir, f"service-{users}-{limit}.log"), "w"))
    api = f"http://127.0.0.1:{api_port}"
    try:
        wait_http(f"{sim_url}/__sim/stats", timeout=300)
        wait_http(f"{api}/readyz")
        started = time.time()
        export = json.loads(http("POST", f"{api}/v1/exports", {}, TOKEN))
        while True:
            export = json.loads(http("GET", f"{api}/v1/exports/{export['id']}", token=TOKEN))
            if export["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.2)
        elapsed = time.time() - started
        if export["status"] != "completed":
            raise RuntimeError(f"export ended {export['status']}: {export['error']}")
        rss = peak_rss_mib(service.pid)
        stats = json.loads(http("GET", f"{sim_url}/__sim/stats"))
        calls = stats["api_calls"]
        polls = stats["by_endpoint"].get("GET /api/v2/jobs/{id}", 0)
        bound = call_bound(sim_url, users, polls)
        naive = users * 2
        lower = calls / limit
        return (f"| {users:,} | {limit:g} | {calls:,} | {naive:,} | {bound:,} | {lower:.1f} | {elapsed:.1f} | "
                f"{elapsed / lower:.3f} | {stats['rate_limited']} | {rss:.0f} MiB |")
    finally:
        service.terminate()
        sim.terminate()
        service.wait()
        sim.wait()
        psql(admin_url, f"DROP DATABASE IF EXISTS {db}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated USERSxLIMIT")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL",
                                                                 "postgres://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    args = parser.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "--workspace", "--bins"],
                       cwd=ROOT, check=True)
    bins = {b: os.path.join(ROOT, "target", "release", b) for b in ("auth0-exporter", "auth0-sim")}
    log_dir = tempfile.mkdtemp(prefix="auth0-exporter-bench-")
    print(f"logs: {log_dir}", file=sys.stderr)
    print("| users | limit (req/s) | Auth0 calls | naive calls | call bound | lower bound s | elapsed s "
          "| elapsed / lower bound | 429s | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for spec in args.runs.split(","):
        users, limit = spec.split("x")
        print(run(int(users), float(limit), args.database_url, bins, log_dir), flush=True)


if __name__ == "__main__":
    main()
