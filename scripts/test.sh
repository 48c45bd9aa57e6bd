#!/usr/bin/env bash
# The one command that sets up and runs the test suite (what .ci/run runs, and the README shows).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-logo --no-cache
# Three workers on two cores: most tests wait on real processes, not the CPU (two workers left
# the cores 45 % idle). Four were at most 6 % faster and loaded the cores enough for the
# timing-sensitive chaos and clock tests to miss a slot. A test file stays on one worker, so the
# tests that start a whole stack with preferred ports never race each other for them.
.venv/bin/pytest -n 3 --dist loadfile "$@"
