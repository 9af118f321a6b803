# Shared by the scripts: make sure PostgreSQL server binaries are installed, and start a
# throwaway cluster when no server answers. Source it; it defines functions only.

# Installs Debian's postgresql package when no server binaries are present.
ensure_postgres_installed() {
  if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    return 0
  fi
  echo "PostgreSQL server binaries missing: installing Debian's postgresql package" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
}

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1
}

# Starts a cluster in a temporary directory on port $1 and prints its admin URL.
# initdb and pg_ctl refuse to run as root: as root they run as the postgres user.
start_throwaway_postgres() {
  local port="$1" dir bin run=()
  dir="$(mktemp -d /tmp/auth0-exporter-pg.XXXXXX)"
  bin="$(pg_bin)"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" postgres
    chown -R postgres "$dir"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400" start >/dev/null
  THROWAWAY_PG_DIR="$dir"
  THROWAWAY_PG_RUN=("${run[@]}")
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

stop_throwaway_postgres() {
  [ -n "${THROWAWAY_PG_DIR:-}" ] || return 0
  "${THROWAWAY_PG_RUN[@]}" "$(pg_bin)/pg_ctl" -D "$THROWAWAY_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$THROWAWAY_PG_DIR"
}
