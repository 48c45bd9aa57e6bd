#!/usr/bin/env bash
# Set up a development machine: a virtualenv in .venv with the project and its dev extras, and
# redis-server and PostgreSQL (from apt) if they are missing. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Exactly the versions in constraints.txt (the lock file; scripts/lock.sh refreshes it), so a
# clean clone installs what CI passed with, not whatever was released since.
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
if ! command -v redis-server >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is missing: install it (sudo apt-get install redis-server)" >&2
    exit 1
  fi
fi
# The tests start a private PostgreSQL cluster (tests/support/pgproc.py) with initdb and pg_ctl,
# which Debian keeps out of PATH, under /usr/lib/postgresql/<version>/bin. Only the tests need it
# (the stack runs on an SQLite file), so without root it is a warning, not a failure.
if ! command -v initdb >/dev/null 2>&1 \
    && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "PostgreSQL's initdb is missing: the PostgreSQL tests will fail until it is" \
      "installed (sudo apt-get install postgresql); scripts/run.sh does not need it" >&2
  fi
fi
# docker-compose validates docker-compose.yml offline (tests/test_compose.py); no engine needed,
# so skip the recommended docker.io.
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends docker-compose >/dev/null
  else
    echo "docker-compose is missing: the compose file test will skip" \
      "(sudo apt-get install --no-install-recommends docker-compose)" >&2
  fi
fi
