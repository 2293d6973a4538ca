#!/usr/bin/env bash
# A local PostgreSQL server for Optuna studies shared by several workers (and the test that runs two).
#
#   scripts/postgres.sh            # install if missing, init + start, create user and database; prints the URL
#   scripts/postgres.sh stop       # stop the server (the data folder stays)
#   url=$(scripts/postgres.sh) && xrdid tune --study s --n-trials 40 --storage "$url"
#
# Idempotent: a running server is left alone, an initialised one is only started. The URL is the only
# line on stdout; progress goes to stderr. Settings (environment):
#   XRDID_PG_PORT (55432, or the next free one when another checkout's server holds it)
#   XRDID_PG_DIR (.postgres in the checkout; gitignored)
#   XRDID_PG_USER / XRDID_PG_PASSWORD / XRDID_PG_DB (xrdid / xrdid / xrdid)
#   XRDID_PG_LISTEN (localhost): '*' serves other machines too (password login from any address; set
#     XRDID_PG_PASSWORD to something private) and the URL then names this host (XRDID_PG_HOST overrides).
# By default the server listens on localhost only. initdb refuses to run as root, so as root the server runs as
# the `postgres` system user (created by the Debian package); any other user runs it as themselves.
set -euo pipefail

PORT="${XRDID_PG_PORT:-55432}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${XRDID_PG_DIR:-$ROOT/.postgres}"
PGUSER_NAME="${XRDID_PG_USER:-xrdid}"
PGPASS="${XRDID_PG_PASSWORD:-xrdid}"
PGDB="${XRDID_PG_DB:-xrdid}"
DATA="$DIR/data"
SUPER=postgres  # superuser name given to initdb, whoever owns the server process
LISTEN="${XRDID_PG_LISTEN:-localhost}"
if [ "$LISTEN" = localhost ]; then HOST="${XRDID_PG_HOST:-localhost}"; else HOST="${XRDID_PG_HOST:-$(hostname -f)}"; fi

say() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    local d
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir
        return
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && { echo "$d"; return; }
    done
    if command -v initdb >/dev/null 2>&1; then dirname "$(readlink -f "$(command -v initdb)")"; fi
}

install_server() {
    # Debian/Ubuntu: the distribution's server package (bookworm: PostgreSQL 15). Its post-install may try
    # to start the default cluster on 5432; that cluster is not used here, so a failure to start is harmless.
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "no PostgreSQL server binaries found: install PostgreSQL (e.g. apt-get install postgresql) and rerun"
        exit 1
    fi
    say "installing PostgreSQL with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >&2 || true
    [ -n "$(find_bindir)" ] || { say "apt-get did not provide initdb"; exit 1; }
}

as_owner() {  # run a server command as the data folder's owner
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

is_up() { "$BIN/pg_isready" -q -h localhost -p "$PORT" >/dev/null 2>&1; }

psql_super() { "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U "$SUPER" -d postgres "$@"; }

BIN="$(find_bindir)"
[ -n "$BIN" ] || { install_server; BIN="$(find_bindir)"; }

if [ "${1:-}" = stop ]; then
    if [ -f "$DATA/PG_VERSION" ]; then as_owner "$BIN/pg_ctl" -D "$DATA" -m fast stop >&2 || true; fi
    exit 0
fi

mkdir -p "$DIR"
exec 9>"$DIR/.lock"  # one caller at a time (parallel `make test` runs)
flock 9
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    chown postgres: "$DIR"
    if ! runuser -u postgres -- test -w "$DIR"; then  # e.g. a checkout under /root: postgres cannot reach it
        DIR="/tmp/xrdid-postgres-$PORT"; DATA="$DIR/data"
        say "the checkout is not reachable by the postgres user; using $DIR"
        mkdir -p "$DIR" && chown postgres: "$DIR"
    fi
fi

# Another checkout's server on the default port: take the next port that is free or already ours
# (our server's socket lives in $DIR). An explicit XRDID_PG_PORT is used as given.
if [ -z "${XRDID_PG_PORT:-}" ]; then
    for _ in $(seq 20); do
        if ! is_up || [ -S "$DIR/.s.PGSQL.$PORT" ]; then break; fi
        say "port $PORT is served by another PostgreSQL; trying $((PORT + 1))"
        PORT=$((PORT + 1))
    done
fi

if ! is_up; then
    if [ ! -f "$DATA/PG_VERSION" ]; then
        say "initialising $DATA"
        as_owner "$BIN/initdb" -D "$DATA" -U "$SUPER" --auth-local=trust --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >&2 || as_owner "$BIN/initdb" -D "$DATA" -U "$SUPER" \
            --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >&2
    fi
    if [ "$LISTEN" != localhost ] && ! grep -q "^host all all 0.0.0.0/0" "$DATA/pg_hba.conf"; then
        as_owner sh -c "printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >> '$DATA/pg_hba.conf'"
    fi
    say "starting the server on $LISTEN:$PORT"
    # 9>&-: the server must not inherit the flock, or it would hold it for its whole life
    # the socket goes into the data folder's parent: /var/run/postgresql may be missing or not writable
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 \
        -o "-p $PORT -k $DIR -c listen_addresses='$LISTEN' -c max_connections=200" start >&2 9>&- \
        || { tail -n 20 "$DIR/server.log" >&2; exit 1; }
fi

# role and database: created once, the password reset each time (so the printed URL always works)
psql_super -c "DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PGUSER_NAME') THEN
        CREATE ROLE \"$PGUSER_NAME\" LOGIN;
    END IF;
END \$\$;" -c "ALTER ROLE \"$PGUSER_NAME\" PASSWORD '$PGPASS';" >&2
if [ -z "$(psql_super -tA -c "SELECT 1 FROM pg_database WHERE datname = '$PGDB'")" ]; then
    psql_super -c "CREATE DATABASE \"$PGDB\" OWNER \"$PGUSER_NAME\";" >&2
fi

# the driver is explicit: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project ships psycopg2
echo "postgresql+psycopg2://$PGUSER_NAME:$PGPASS@$HOST:$PORT/$PGDB"
