"""Checks auth0-sim with Auth0's own Python SDK (auth0-python 6.x).

Usage: check.py BASE_URL LIMITED_BASE_URL
  BASE_URL          a sim with the default scopes
  LIMITED_BASE_URL  a sim started with --scopes "read:users read:roles" (no read:role_members)

Every call the exporter makes goes through the SDK (the management client is pointed at
http://127.0.0.1:PORT/api/v2; GetToken takes protocol="http"), every response must parse into the
SDK's models, and the results must match the sim's ground truth (/__sim/truth). Exits non-zero on
the first failure.
"""

import gzip
import json
import sys
import time
import urllib.parse
import urllib.request
from decimal import Decimal

from auth0.authentication import GetToken
from auth0.management import Auth0
from auth0.management.core.api_error import ApiError

CLIENT_ID = "sim-client"
CLIENT_SECRET = "sim-secret"
ENRICHMENT = ("roles", "authentication_methods", "authenticators", "enrollments")


def fail(msg):
    sys.stdout.flush()
    print(f"sdk-check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def http_get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def truth(base):
    """user_id -> merged profile; floats as Decimal so numbers compare exactly."""
    out = {}
    for line in http_get(f"{base}/__sim/truth").decode("utf-8").split("\n"):
        if line:
            u = json.loads(line, parse_float=Decimal)
            out[u["user_id"]] = u
    return out


def lossy(v):
    """The value as the SDK's float-parsing JSON decoder sees it."""
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, list):
        return [lossy(x) for x in v]
    if isinstance(v, dict):
        return {k: lossy(x) for k, x in v.items()}
    return v


def client_for(base):
    domain = urllib.parse.urlparse(base).netloc
    tok = GetToken(domain, CLIENT_ID, client_secret=CLIENT_SECRET, protocol="http")
    resp = tok.client_credentials(f"{base}/api/v2/")
    check(resp.get("token_type") == "Bearer" and resp.get("access_token"), f"token response {resp}")
    check(int(resp["expires_in"]) > 0, "expires_in")
    return Auth0(base_url=f"{base}/api/v2", token=resp["access_token"]), resp


def export(mgmt):
    job = mgmt.jobs.users_exports.create(format="json")
    check(job.status == "pending" and job.type == "users_export", f"created job {job}")
    deadline = time.time() + 120
    while True:
        j = mgmt.jobs.get(job.id)
        if j.status == "completed":
            check(j.location, "completed job without location")
            break
        check(j.status in ("pending", "processing"), f"job status {j.status}")
        check(time.time() < deadline, "job did not complete")
        time.sleep(max(0.2, min(float(j.time_left_seconds or 1), 2.0)))
    raw = gzip.decompress(http_get(j.location)).decode("utf-8")
    lines = [line for line in raw.split("\n") if line]
    return [json.loads(line, parse_float=Decimal) for line in lines]


def main():
    base, limited = sys.argv[1], sys.argv[2]
    mgmt, tok = client_for(base)
    t = truth(base)
    check(len(t) > 0, "empty truth")

    # Export: every line parses and equals the truth minus the enrichment keys, numbers exact.
    users = export(mgmt)
    check(len(users) == len(t), f"export has {len(users)} users, truth {len(t)}")
    for u in users:
        want = {k: v for k, v in t[u["user_id"]].items() if k not in ENRICHMENT}
        check(u == want, f"export line differs from truth for {u['user_id']}")
    nasty = sum(1 for u in users if any(isinstance(v, int) and abs(v) > 2**64 for v in
                                        (u.get("app_metadata") or {}).values()))
    nasty += sum(1 for u in users if "\u0000" in json.dumps(u, default=str, ensure_ascii=False))
    check(nasty > 0, "no nasty values in the export")
    print(f"sdk-check: export of {len(users)} users matches the truth")

    # Roles, paged through the SDK pager.
    roles = list(mgmt.roles.list(per_page=7))
    check(len(roles) > 7, f"roles paging returned {len(roles)}")
    check(len({r.id for r in roles}) == len(roles), "duplicate roles")
    members = {}
    for uid, u in t.items():
        for r in u["roles"]:
            members.setdefault(r["id"], set()).add(uid)
    check({r.id for r in roles} >= set(members), "roles list misses roles")

    # Role users with checkpoint paging (from/take) through the SDK pager.
    pages_seen = 0
    for r in roles:
        pager = mgmt.roles.users.list(r.id, take=25)
        got = []
        for page in pager.iter_pages():
            pages_seen += 1
            got.extend(u.user_id for u in page.items)
        check(len(got) == len(set(got)), f"duplicates in role {r.id}")
        check(set(got) == members.get(r.id, set()), f"members of {r.id} differ from truth")
    check(pages_seen > len(roles), "checkpoint paging never went past one page")
    print(f"sdk-check: {len(roles)} roles and their members match ({pages_seen} pages)", flush=True)

    # Per-user endpoints for a few users (with and without MFA, with enrollments).
    sample = [u for u in t.values() if u["enrollments"]][:4]
    sample += [u for u in t.values() if not u["authentication_methods"]][:2]
    sample += [u for u in t.values() if len(u["authentication_methods"]) > 2][:3]
    check(len(sample) >= 6, "not enough sample users")
    for u in sample:
        uid = u["user_id"]
        roles_got = list(mgmt.users.roles.list(uid, per_page=100))
        check([r.id for r in roles_got] == [r["id"] for r in u["roles"]], f"roles of {uid}")
        methods = list(mgmt.users.authentication_methods.list(uid, per_page=100))
        check([m.id for m in methods] == [m["id"] for m in u["authentication_methods"]], f"methods of {uid}")
        check([m.type for m in methods] == [m["type"] for m in u["authentication_methods"]], f"method types of {uid}")
        enrollments = mgmt.users.enrollments.get(uid)
        check([e.id for e in enrollments] == [e["id"] for e in u["enrollments"]], f"enrollments of {uid}")
        for e, want in zip(enrollments, u["enrollments"]):
            check(e.status == want["status"] and e.type == want["type"], f"enrollment of {uid}")
            if "last_auth" in want:
                check(e.last_auth is not None, f"last_auth of {uid} did not parse")
        # No GET in the SDK: its HTTP client, with its auth headers.
        resp = mgmt._client_wrapper.httpx_client.request(
            f"users/{urllib.parse.quote(uid, safe='')}/authenticators", method="GET")
        check(resp.status_code == 200, f"authenticators of {uid}: {resp.status_code}")
        check(resp.json() == lossy(u["authenticators"]), f"authenticators of {uid}")
        full = mgmt.users.get(uid)
        check(full.user_id == uid, f"get user {uid}")
        for k in ("app_metadata", "user_metadata", "identities"):
            if k in u:
                got = getattr(full, k)
                got = [i.model_dump(by_alias=True, exclude_unset=True) for i in got] if k == "identities" else got
                check(lossy(got) == lossy(u[k]), f"{k} of {uid} via users.get")
        some = mgmt.users.with_raw_response.get(uid, fields="user_id,user_metadata", include_fields=True)
        keys = set(some.data.model_dump(exclude_unset=True))
        check(keys <= {"user_id", "user_metadata"} and "user_id" in keys, f"fields=... gave {keys}")
        rest = mgmt.users.get(uid, fields="user_metadata,app_metadata", include_fields=False)
        keys = set(rest.model_dump(exclude_unset=True))
        check(not keys & {"user_metadata", "app_metadata"} and "user_id" in keys, f"include_fields=false gave {keys}")
    print(f"sdk-check: per-user endpoints match for {len(sample)} users")

    # A token without read:role_members.
    lim, tok = client_for(limited)
    check("read:role_members" not in tok.get("scope", ""), f"limited sim granted {tok.get('scope')}")
    role = list(lim.roles.list(per_page=100))[0]
    try:
        list(lim.roles.users.list(role.id, take=10))
        fail("role users without read:role_members succeeded")
    except ApiError as e:
        check(e.status_code == 403, f"status {e.status_code}")
        check(e.body.get("errorCode") == "insufficient_scope", f"body {e.body}")
        check(e.body.get("message") == "Insufficient scope, expected any of: read:role_members", f"body {e.body}")
    print("sdk-check: missing read:role_members answers 403 insufficient_scope")
    print("sdk-check: OK")


if __name__ == "__main__":
    main()
