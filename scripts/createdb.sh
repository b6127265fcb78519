#!/usr/bin/env bash
# Creates the database named in $1 (default: hookgate) when it does not exist. Uses hookgate's own migrations later.
set -euo pipefail
name=${1:-hookgate}
url=${HOOKGATE_ADMIN_PG:-postgres://postgres@127.0.0.1:5432/postgres}
if ! command -v psql >/dev/null 2>&1; then
  echo "createdb: psql not found (install postgresql-client)" >&2; exit 1
fi
if [ -z "$(psql "$url" -Atc "SELECT 1 FROM pg_database WHERE datname = '$name'")" ]; then
  psql "$url" -qc "CREATE DATABASE \"$name\"" && echo "createdb: created $name" >&2
fi
