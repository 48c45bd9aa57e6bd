#!/usr/bin/env bash
# The main job on one machine: set up (virtualenv, project, redis-server if missing), then run
# the whole stack with demo data (two beats, a company and a project worker, Flower). Ctrl-C stops.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/devstack.py "$@"
