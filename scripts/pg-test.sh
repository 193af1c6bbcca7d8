#!/usr/bin/env bash
# Make a local PostgreSQL ready for podgate's storage tests, idempotently:
# installs Debian's postgresql if missing, starts a server on 127.0.0.1:5432 if none answers,
# creates a `podgate` role (allowed to create databases: each test makes its own) and a
# `podgate` database, then prints the URL to put in PODGATE_TEST_POSTGRES_URL.
set -euo pipefail

PG_PORT="${PG_PORT:-5432}"
PG_USER=podgate
PG_PASS=podgate
URL="postgres://${PG_USER}:${PG_PASS}@127.0.0.1:${PG_PORT}/podgate"

as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; fi
}

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    echo "pg-test: installing postgresql from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi

PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"

if ! "${PG_BIN}/pg_isready" -h 127.0.0.1 -p "${PG_PORT}" -q; then
    # Debian's package makes a cluster; use it when there is one, else make our own data dir.
    if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
        read -r VER NAME _ < <(pg_lsclusters -h | head -n1)
        pg_ctlcluster "${VER}" "${NAME}" start >&2 || true
    else
        DATA=/var/lib/postgresql/podgate-test
        if [ ! -f "${DATA}/PG_VERSION" ]; then
            install -d -o postgres -g postgres "${DATA}"
            as_postgres "${PG_BIN}/initdb" -D "${DATA}" -A trust -U postgres >&2
        fi
        as_postgres "${PG_BIN}/pg_ctl" -D "${DATA}" -l "${DATA}/server.log" \
            -o "-h 127.0.0.1 -p ${PG_PORT} -k /tmp" -w start >&2
    fi
    for _ in $(seq 1 30); do
        "${PG_BIN}/pg_isready" -h 127.0.0.1 -p "${PG_PORT}" -q && break
        sleep 1
    done
fi

psql_admin() {
    as_postgres psql -w -h 127.0.0.1 -p "${PG_PORT}" -U postgres -v ON_ERROR_STOP=1 -qtA "$@" 2>/dev/null \
        || as_postgres psql -w -p "${PG_PORT}" -v ON_ERROR_STOP=1 -qtA "$@"
}

if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '${PG_USER}'")" != 1 ]; then
    psql_admin -c "CREATE ROLE ${PG_USER} LOGIN CREATEDB PASSWORD '${PG_PASS}'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'podgate'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE podgate OWNER ${PG_USER}" >&2
fi

echo "${URL}"
