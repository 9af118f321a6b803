#!/usr/bin/env python3
"""The API half of scripts/compose-smoke.sh: runs one export through a running compose stack and
compares everything it serves with auth0-sim's ground truth.

usage: compose-smoke-check.py API_URL SIM_URL TOKEN

JSON is compared exactly as the integration tests do (tests/api/helpers.rs `exact`): numbers by
their text (every digit), strings decoded, object keys unordered (the last of a repeated key
wins), whitespace ignored.
"""

import csv
import io
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# What the export asks for; the sim's truth holds every enrichment, the others must be absent.
ENRICH = {"roles": True, "authentication_methods": True}
ALL_ENRICHMENTS = ("roles", "authentication_methods", "authenticators", "enrollments")
POLL_TIMEOUT_S = 300


class Num(str):
    """A JSON number, kept as its text."""

    def __eq__(self, other):
        return isinstance(other, Num) and str.__eq__(self, other)

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = str.__hash__


def reject_constant(name):
    raise ValueError(f"not JSON: {name}")


def exact(text):
    return json.loads(text, parse_int=Num, parse_float=Num, parse_constant=reject_constant, object_pairs_hook=dict)


def csv_safe(cell):
    """The CSV cell the service writes for a text (src/document.rs `csv_safe`): one a spreadsheet
    would run as a formula (leading =, +, -, @, tab or CR, and not a plain number) gets a leading '."""
    if cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not is_plain_number(cell):
        return "'" + cell
    return cell


def is_plain_number(text):
    """-12, +3.5, -1e9: a number as spreadsheets and JSON write it, nothing else."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    mantissa, _, exponent = digits.replace("E", "e").partition("e")
    if "e" in digits.replace("E", "e"):
        exponent = exponent[1:] if exponent[:1] in ("+", "-") else exponent
        if not exponent or not exponent.isascii() or not exponent.isdigit():
            return False
    whole, _, fraction = mantissa.partition(".")
    def all_digits(s):
        return all(c in "0123456789" for c in s)
    return bool(whole or fraction) and all_digits(whole) and all_digits(fraction)


def has_nul(value):
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return isinstance(value, str) and "\x00" in value


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def request(method, url, token=None, body=None, expect=200):
    headers = {"Accept": "*/*"}
    data = None
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, payload, resp_headers = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        status, payload, resp_headers = e.code, e.read(), e.headers
    if status != expect:
        fail(f"{method} {url} answered {status}, expected {expect}: {payload[:500]!r}")
    if resp_headers.get("Content-Encoding"):
        fail(f"{method} {url} came {resp_headers['Content-Encoding']}-encoded though gzip was not accepted")
    return payload, resp_headers


class Clock:
    def __init__(self):
        self.start = self.last = time.monotonic()

    def lap(self, what):
        now = time.monotonic()
        print(f"  {what}: {now - self.last:.1f} s")
        self.last = now


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    api, sim, token = sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/"), sys.argv[3]
    clock = Clock()

    # Ground truth: one line per live user, sorted by user_id, every enrichment included.
    truth_text = request("GET", f"{sim}/__sim/truth")[0].decode("utf-8")
    truth = []
    for line in truth_text.split("\n"):
        if not line:
            continue
        doc = exact(line)
        for key in ALL_ENRICHMENTS:
            if not ENRICH.get(key):
                doc.pop(key, None)
        truth.append(doc)
    if not truth:
        fail("the sim's truth is empty")
    ids = [t["user_id"] for t in truth]
    by_id = dict(zip(ids, truth))
    if len(by_id) != len(truth):
        fail("the sim's truth repeats a user_id")
    print(f"truth: {len(truth)} users from {sim}/__sim/truth")

    # Auth is enforced before anything else.
    request("GET", f"{api}/v1/exports", expect=401)

    body, headers = request("POST", f"{api}/v1/exports", token, {"enrich": ENRICH}, expect=202)
    export = json.loads(body)
    export_id = export["id"]
    if not headers.get("Location"):
        fail("POST /v1/exports answered 202 without a Location")
    print(f"export {export_id} created (Location {headers['Location']})")

    deadline = time.monotonic() + POLL_TIMEOUT_S
    last_stage = None
    while True:
        export = json.loads(request("GET", f"{api}/v1/exports/{export_id}", token)[0])
        if export.get("stage") != last_stage:
            last_stage = export.get("stage")
            print(f"  status {export['status']}, stage {last_stage}")
        if export["status"] == "completed":
            break
        if export["status"] in ("failed", "cancelled"):
            fail(f"export ended {export['status']}: {export.get('error')}")
        if time.monotonic() > deadline:
            fail(f"export not completed after {POLL_TIMEOUT_S} s: {export}")
        time.sleep(0.5)
    print(f"completed: progress {export.get('progress')}, stats {export.get('stats')}")
    clock.lap("export")

    def same_documents(served, what):
        if len(served) != len(truth):
            fail(f"{what}: {len(served)} profiles, the sim has {len(truth)}")
        for position, (s, t) in enumerate(zip(served, truth)):
            if not isinstance(s, dict):
                fail(f"{what}: item {position} is not an object")
            if s.get("user_id") != t["user_id"]:
                fail(f"{what}: item {position} is {s.get('user_id')!r}, expected {t['user_id']!r} (order by user_id)")
            if s != t:
                keys = sorted(k for k in set(s) | set(t) if s.get(k, "<absent>") != t.get(k, "<absent>"))
                fail(f"{what}: profile {t['user_id']!r} differs from the sim's truth in {keys}")
        print(f"  {what}: {len(served)} profiles equal the truth")

    # Every page, following next_cursor.
    served, cursor, pages = [], None, 0
    while True:
        url = f"{api}/v1/exports/{export_id}/profiles?limit=1000"
        if cursor is not None:
            url += "&cursor=" + urllib.parse.quote(cursor, safe="")
        page = exact(request("GET", url, token)[0].decode("utf-8"))
        pages += 1
        served.extend(page["data"])
        cursor = page.get("next_cursor")
        if cursor is None:
            break
        if pages > len(truth) + 1:
            fail("pagination does not end")
    same_documents(served, f"profiles ({pages} page(s) of up to 1000)")

    # Single profiles: the first, the last and the nastiest (a real U+0000, the longest).
    singles = {ids[0], ids[-1], max(ids, key=lambda i: len(json.dumps(by_id[i])))}
    singles.update([i for i in ids if has_nul(by_id[i])][:3])
    for user_id in sorted(singles):
        path = f"/v1/exports/{export_id}/profiles/{urllib.parse.quote(user_id, safe='')}"
        if exact(request("GET", api + path, token)[0].decode("utf-8")) != by_id[user_id]:
            fail(f"single profile {user_id!r} differs from the sim's truth")
    print(f"  single profiles: {len(singles)} equal the truth (first, last, longest, real U+0000)")
    clock.lap("profiles")

    # Downloads.
    base = f"{api}/v1/exports/{export_id}/download"
    ndjson = request("GET", f"{base}?format=ndjson", token)[0].decode("utf-8")
    if not ndjson:
        fail("the NDJSON download is empty")
    if not ndjson.endswith("\n"):
        fail("the NDJSON download does not end with a newline")
    # Split on \n only: documents may hold a raw U+2028, which str.splitlines() would split on.
    same_documents([exact(line) for line in ndjson[:-1].split("\n")], "download ndjson")

    array = request("GET", f"{base}?format=json", token)[0].decode("utf-8")
    parsed = exact(array) if array else fail("the JSON download is empty")
    if not isinstance(parsed, list):
        fail("the JSON download is not one array")
    same_documents(parsed, "download json")

    text = request("GET", f"{base}?format=csv", token)[0].decode("utf-8")
    if not text:
        fail("the CSV download is empty")
    csv.field_size_limit(sys.maxsize)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, rows = rows[0], rows[1:]
    if len(rows) != len(truth):
        fail(f"CSV: {len(rows)} rows, the sim has {len(truth)} users")
    if "user_id" not in header or len(set(header)) != len(header):
        fail(f"CSV: bad header {header}")
    cells = neutralised = 0
    for number, (row, t) in enumerate(zip(rows, truth), start=2):
        if len(row) != len(header):
            fail(f"CSV line {number}: {len(row)} cells, the header has {len(header)}")
        for column, cell in zip(header, row):
            value = t.get(column)
            if value is None:
                ok = cell == ""
            elif isinstance(value, (str, Num)):
                # Strings decoded, numbers in their exported spelling; formula-like text behind a '.
                expected = csv_safe(str(value))
                neutralised += expected != str(value)
                ok = cell == expected
            else:
                ok = exact(cell) == value  # booleans, arrays and objects as JSON
            if not ok:
                fail(f"CSV {t['user_id']!r}.{column}: {cell[:200]!r} differs from the sim's truth")
            cells += 1
    print(f"  download csv: {len(rows)} rows, {cells} cells equal the truth ({neutralised} formula-like, behind a ')")
    clock.lap("downloads")

    # Metrics: Prometheus text with the families the dashboard reads from every API replica.
    metrics = request("GET", f"{api}/metrics")[0].decode("utf-8")
    for family in ("exporter_queue_depth", 'exporter_exports{status="completed"}', "exporter_http_request_duration_seconds_bucket"):
        if family not in metrics:
            fail(f"/metrics has no {family}")
    print("  /metrics: queue depth, exports by status and HTTP latency present")
    print(f"checks passed in {time.monotonic() - clock.start:.1f} s")


if __name__ == "__main__":
    main()
