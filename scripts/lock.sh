#!/usr/bin/env bash
# Refresh constraints.txt, the lock file that scripts/setup.sh, CI and the Dockerfile install
# from: every dependency of pyproject.toml (and its dev and bench extras) resolved to one exact
# version. Run it after changing a dependency in pyproject.toml, then run scripts/test.sh and
# commit both files. `--upgrade` moves every pin to the newest release pyproject.toml allows.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/uv ]]; then
  .venv/bin/python -m pip install --quiet uv
fi
.venv/bin/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
  --quiet --custom-compile-command scripts/lock.sh --output-file constraints.txt "$@"
