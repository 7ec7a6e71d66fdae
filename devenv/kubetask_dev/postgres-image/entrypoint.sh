#!/bin/bash
# Entrypoint of the local PostgreSQL image (Debian's PostgreSQL 15), honouring
# the official postgres image's contract that the kubetask chart relies on:
#   POSTGRES_PASSWORD (required), POSTGRES_USER (default postgres),
#   POSTGRES_DB (default POSTGRES_USER), PGDATA (default /var/lib/postgresql/data).
# On an empty PGDATA it runs initdb with that superuser and password, creates
# the database, runs the scripts of /docker-entrypoint-initdb.d (*.sh executed,
# *.sql through psql, in name order, against POSTGRES_DB on the local socket)
# and allows password (scram-sha-256) logins from anywhere; then, and on every
# later start, it execs the server as PID 1 so the
# kubelet's SIGTERM/SIGINT reaches it. Runs as whatever uid the pod chooses,
# provided /etc/passwd knows it (the image has uid 65532).
set -euo pipefail

if [ "${1:-postgres}" != postgres ] && [ "${1#-}" = "${1:-}" ]; then
    exec "$@"   # another command (psql, bash …): run it as it is
fi
[ "${1:-}" = postgres ] && shift

: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set (the superuser password)}"
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    pwfile="$(mktemp)"
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
    if [ "$POSTGRES_DB" != postgres ]; then
        psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres \
            --set=db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sh) echo "docker-entrypoint.sh: running $script"; "$script" ;;
            *.sql) echo "docker-entrypoint.sh: running $script"
                   psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" \
                       --dbname="$POSTGRES_DB" --file="$script" ;;
            *) if [ -e "$script" ]; then echo "docker-entrypoint.sh: ignoring $script"; fi ;;
        esac
    done
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
    echo "docker-entrypoint.sh: initialised $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
fi

exec postgres -c listen_addresses='*' "$@"
