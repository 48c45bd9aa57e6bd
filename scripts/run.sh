#!/usr/bin/env bash
# The main job on one machine: set up (virtualenv, project, redis-server if missing), then run
# the whole stack with demo data (two beats, a company, a project and an alerts worker, Flower)
# through scripts/devstack.py, which prints a banner once everything is ready. Ctrl-C (or
# SIGINT/SIGTERM to this process, also when started in the background) stops everything. The
# demo's loopback targets (its fake QuickBooks Online server, a webhook receiver of yours) are
# allowed explicitly by devstack.py (ERP_SYNC_OUTBOUND_ALLOW=127.0.0.1,::1 unless set).
#
# Setup runs on the first start and again when pyproject.toml or scripts/setup.sh changed (or
# redis-server went missing), so later starts need no network; run scripts/setup.sh to force it.
# A private Redis keeps its data and port in .run/redis, so a second start finds the same demo
# data on the same URL. Options go to devstack.py: --run-dir DIR, --ready-timeout SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.setup-done
if [[ ! -f $stamp || pyproject.toml -nt $stamp || scripts/setup.sh -nt $stamp ]] \
    || ! command -v redis-server >/dev/null 2>&1; then
  scripts/setup.sh
  touch "$stamp"
fi
exec .venv/bin/python scripts/devstack.py "$@"
