#!/usr/bin/env bash
# Run a command beside a throwaway PostgreSQL cluster, then stop the cluster and delete it, whatever happens.
#
#   tests/postgres/run.sh .venv/bin/python -m pytest -q tests/ledger
#   tests/postgres/run.sh --durable sh -c '.venv/bin/python benchmarks/ledger.py --database-url "$TALLY_BENCH_POSTGRES"'
#
# The cluster lives in a new temporary directory and listens only on a Unix socket there (no TCP). The command
# sees TALLY_TEST_POSTGRES, the URL of the cluster's `postgres` database (tests/conftest.py gives every test its
# own new database there), and TALLY_BENCH_POSTGRES, an empty database `bench`. initdb and postgres refuse to run
# as root: as root the cluster runs as the `postgres` user that Debian's package creates. For tests durability is
# off (fsync, synchronous_commit: nothing outlives the run); --durable keeps PostgreSQL's defaults, for timings.
set -euo pipefail

durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
if [ "${1:-}" = "--durable" ]; then
    durability=""
    shift
fi
if [ "$#" -eq 0 ]; then
    echo "usage: $0 [--durable] COMMAND [ARG...]" >&2
    exit 2
fi

bindir=""
for candidate in /usr/lib/postgresql/*/bin; do  # Debian's layout; the glob sorts, so the newest version wins
    if [ -x "$candidate/initdb" ]; then bindir=$candidate; fi
done
if [ -z "$bindir" ] && command -v initdb >/dev/null 2>&1; then
    bindir=$(dirname "$(command -v initdb)")
fi
if [ -z "$bindir" ]; then
    echo "$0: PostgreSQL is not installed (no initdb); on Debian: apt-get install -y postgresql" >&2
    exit 1
fi
root=""
if [ "$(id -u)" -eq 0 ]; then
    root=yes
    if ! id postgres >/dev/null 2>&1; then
        echo "$0: running as root needs the 'postgres' user (Debian's postgresql package creates it)" >&2
        exit 1
    fi
fi

# A short path: a Unix socket's path must stay under 108 bytes.
dir=$(mktemp -d /tmp/tally-pg.XXXXXX)
started=""
# Server commands run as the postgres user when root, from the cluster's directory (it may not enter the caller's).
server() {
    if [ -n "$root" ]; then
        runuser -u postgres -- env -C "$dir" "$@"
    else
        env -C "$dir" "$@"
    fi
}
cleanup() {
    if [ -n "$started" ]; then
        server "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "$root" ]; then chown postgres "$dir"; fi
server "$bindir/initdb" -D "$dir/data" -U tally --auth=trust --encoding=UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    exit 1
}
started=yes
server "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses='' -c unix_socket_directories='$dir' -c max_connections=200 $durability" start >/dev/null || {
    cat "$dir/server.log" >&2
    exit 1
}
"$bindir/createdb" -h "$dir" -U tally bench

export TALLY_TEST_POSTGRES="postgresql+psycopg://tally@/postgres?host=$dir"
export TALLY_BENCH_POSTGRES="postgresql+psycopg://tally@/bench?host=$dir"
echo "$("$bindir/postgres" --version) at $dir (Unix socket only)" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
