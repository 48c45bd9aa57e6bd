"""The README's environment table is the one generated from the settings model."""

from __future__ import annotations

from pathlib import Path

from erp_sync.envdoc import env_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_lists_every_variable_exactly_as_the_settings_model_defines_it() -> None:
    text = README.read_text()
    table = text.split("<!-- env:start -->\n", 1)[1].split("\n<!-- env:end -->", 1)[0]
    assert table == env_table(), "README env table is stale: run python -m erp_sync.envdoc"
