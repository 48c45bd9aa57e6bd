"""The README's environment table is the one generated from the settings model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_the_readme_lists_every_variable_exactly_as_the_settings_model_defines_it() -> None:
    text = README.read_text()
    table = text.split("<!-- env:start -->\n", 1)[1].split("\n<!-- env:end -->", 1)[0]
    generated = subprocess.run(
        [sys.executable, "scripts/envdoc.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.rstrip("\n")
    assert table == generated, "README env table is stale: run .venv/bin/python scripts/envdoc.py"
