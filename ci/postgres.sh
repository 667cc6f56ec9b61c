#!/usr/bin/env bash
# Start a PostgreSQL for the team-store tests: Debian's postgresql on port 5432 (and its unix socket), with a
# `launch` role and database (password `launch`). Idempotent: installs only what is missing, starts only what is
# stopped, creates only what does not exist. Runs as root (apt, pg_ctlcluster) or as a user who already has a
# running cluster. Prints the SQLAlchemy URL on its last line.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/apt.sh"
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
port=${LAUNCH_PG_PORT:-5432}

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "postgresql is not installed and this is not root: apt-get install postgresql" >&2; exit 1; }
  apt_get update -qq && apt_get install -y -qq postgresql >/dev/null
fi

version=$(pg_lsclusters -h | awk -v p="$port" '$3 == p {print $1; exit}')
cluster=$(pg_lsclusters -h | awk -v p="$port" '$3 == p {print $2; exit}')
if [ -z "$version" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  cluster=launch
  pg_createcluster -p "$port" "$version" "$cluster" >/dev/null
fi
status=$(pg_lsclusters -h | awk -v p="$port" '$3 == p {print $4; exit}')
if [ "$status" != online ]; then
  pg_ctlcluster "$version" "$cluster" start
fi

psql_pg() { runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -qtA "$@"; }
for _ in $(seq 50); do psql_pg -c 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
psql_pg -c 'select 1' >/dev/null
if [ "$(psql_pg -c "select 1 from pg_roles where rolname = 'launch'")" != 1 ]; then
  psql_pg -c "create role launch login password 'launch' createdb"
fi
if [ "$(psql_pg -c "select 1 from pg_database where datname = 'launch'")" != 1 ]; then
  psql_pg -c "create database launch owner launch"
fi
echo "postgresql://launch:launch@127.0.0.1:${port}/launch"
