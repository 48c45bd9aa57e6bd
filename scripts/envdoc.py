"""The README's environment table, generated from the settings model so the two cannot drift.

``.venv/bin/python scripts/envdoc.py`` prints it; tests/test_docs.py checks that the README holds
exactly this table. Documentation tooling, so it lives with the scripts, not in the package.
"""

from __future__ import annotations

from config.env import ENV_PREFIX, Settings


def env_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = (
            "(the Redis URL)"
            if name == "broker_url"
            else f"`{default:g}`"
            if isinstance(default, float)
            else f"`{default}`"
        )
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(env_table())
