#!/usr/bin/env bash
# The one command that sets up and runs the test suite (what .ci/run runs, and the README shows).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports --no-logo --no-cache
.venv/bin/pytest "$@"
