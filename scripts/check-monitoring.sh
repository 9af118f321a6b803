#!/usr/bin/env bash
# Checks deploy/grafana offline: the dashboard is valid JSON, every metric the dashboard and
# the alerts name is one the service records (src/), the rules load (promtool check rules),
# their unit tests pass (promtool test rules) and the YAML is lint-clean.
# promtool comes from Debian's prometheus package, unpacked (not installed) under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=deploy/grafana

python3 -m json.tool "$dir/auth0-exporter.json" >/dev/null
echo "dashboard: valid JSON"

# Metric names are a contract: each family the dashboard or alerts query must appear as a
# string literal in src/ (histogram series end in _bucket/_count/_sum).
python3 - "$dir/auth0-exporter.json" "$dir/alerts.yaml" <<'PY'
import pathlib, re, sys
used = set()
for path in sys.argv[1:]:
    for name in re.findall(r"\bexporter_[a-z0-9_]+", pathlib.Path(path).read_text()):
        used.add(re.sub(r"_(bucket|count|sum)$", "", name))
source = "\n".join(p.read_text() for p in pathlib.Path("src").rglob("*.rs"))
recorded = set(re.findall(r'"(exporter_[a-z0-9_]+)"', source))
missing = sorted(used - recorded)
if missing:
    sys.exit(f"dashboard/alerts query metrics the service never records: {', '.join(missing)}")
print(f"metrics: all {len(used)} families queried are recorded in src/")
PY

promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
  promtool=$PWD/target/promtool/usr/bin/promtool
  if ! [ -x "$promtool" ]; then
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null); then
      apt-get update -qq
      (cd "$tmp" && apt-get download -qq prometheus)
    fi
    mkdir -p target/promtool
    dpkg-deb -x "$tmp"/prometheus_*.deb target/promtool
    rm -f target/promtool/usr/bin/prometheus
    rm -rf "$tmp"
  fi
fi
"$promtool" check rules "$dir/alerts.yaml"
(cd "$dir" && "$promtool" test rules alerts.test.yaml)

yamllint=${LINT_VENV:-/var/tmp/container-lint-venv}/bin/yamllint
if [ -x "$yamllint" ]; then
  "$yamllint" -d relaxed --strict "$dir"
  echo "yamllint: clean"
else
  echo "note: $yamllint not present (../shared/tools/lint-containers makes it); yamllint skipped"
fi
