"""The docs state what the code decides: each fact they give (a cap, a default, a queue, a command,
a path) is checked here against the code, so the two cannot drift apart unnoticed.

The environment table is generated (``scripts/envdoc.py``); the rest is read out of the Markdown
and compared with the constants, models and configuration it describes. No servers: fakeredis
at most.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import click
import pytest
import redis

from config.env import Settings
from config.keys import RESERVED_IDS, KeySpace
from config.models import Erp, SyncKind
from erp_sync.alerts.deliver import LOG_CAP
from erp_sync.cli import cli
from erp_sync.control.pause import parse_until
from erp_sync.control.unit import AUDIT_CAP
from erp_sync.db.engine import head_revision
from erp_sync.errors import ErpSyncError, InvalidInput
from erp_sync.infra.celery_config import celery_config
from erp_sync.infra.slots import TASK_NAMES, queue_for
from erp_sync.runs.records import HISTORY_CAP
from erp_sync.views.metrics import FleetCollector

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
ADMIN = DOCS / "admin-guide.md"
OPERATOR = DOCS / "operator-guide.md"
DATABASE = DOCS / "database.md"
ARCHITECTURE = DOCS / "architecture.md"
ALL_DOCS = [README, *sorted(DOCS.rglob("*.md"))]

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
# A path the docs name is checked when it starts at a top-level entry of the repo, or when it
# has a directory and ends like a file of the repo; generated places (.venv, .run) are not.
TOP = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")} - {"erp_sync.egg-info"}
TOP.add(".ci")
TASK_ON_QUEUE = r"`((?:tasks|erp_sync)\.[a-z_.]+)`[^`.;]{0,40}on the `([a-z]+)` queue"
FILE_ENDINGS = (".py", ".md", ".sh", ".lua", ".toml", ".yml", ".txt", ".cfg")


def read(path: Path) -> str:
    return path.read_text()


def prose(text: str) -> str:
    """The text without its fenced code blocks."""
    return FENCE.sub("", text)


def section(text: str, heading: str) -> str:
    """From the heading (any level) to the next heading of the same or a higher level; a ``#``
    line inside a fenced block is code, not a heading."""
    lines = text.splitlines(keepends=True)
    level, body, fenced = 0, [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        heading_level = 0 if fenced else len(line) - len(line.lstrip("#"))
        if level and heading_level and line[heading_level] == " " and heading_level <= level:
            break
        if level:
            body.append(line)
        elif heading_level and line.rstrip("\n") == "#" * heading_level + " " + heading:
            level = heading_level
    assert level, f"no heading {heading!r}"
    return "".join(body)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text`` (header and rule rows left out)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    return rows


def number(text: str) -> float:
    return float(text.replace(",", ""))


def numbers(pattern: str, text: str) -> list[float]:
    return [number(m) for m in re.findall(pattern, text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", prose(read(path)), re.M)}


# --- generated ------------------------------------------------------------------------------


def test_the_readme_lists_every_variable_exactly_as_the_settings_model_defines_it() -> None:
    text = read(README)
    table = text.split("<!-- env:start -->\n", 1)[1].split("\n<!-- env:end -->", 1)[0]
    generated = subprocess.run(
        [sys.executable, "scripts/envdoc.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.rstrip("\n")
    assert table == generated, "README env table is stale: run .venv/bin/python scripts/envdoc.py"


# --- the README's first screen --------------------------------------------------------------


def test_the_readme_first_screen_has_the_two_commands_the_banner_and_how_to_stop() -> None:
    first = "\n".join(read(README).splitlines()[:40])
    for needed in ("scripts/run.sh", "scripts/test.sh", "erp-sync is running", "Flower:", "Ctrl-C"):
        assert needed in first, f"the README's first 40 lines lack {needed!r}"


def test_the_readme_banner_is_the_one_devstack_prints() -> None:
    source = read(ROOT / "scripts" / "devstack.py")
    template = source.split('f"""\nerp-sync is running', 1)[1].split('""",', 1)[0]
    lines = ["erp-sync is running" + template.splitlines()[0], *template.splitlines()[1:]]
    patterns = [
        re.compile("".join(".+" if i % 2 else re.escape(part) for i, part in enumerate(parts)))
        for parts in (re.split(r"\{[^}]*\}", line) for line in lines)
    ]
    readme = read(README)
    start = readme.index("erp-sync is running (")
    shown = readme[start : readme.index("```", start)].rstrip("\n").splitlines()
    assert len(shown) == len(patterns), "the README's banner has other lines than devstack's"
    for line, pattern in zip(shown, patterns, strict=True):
        assert pattern.fullmatch(line), f"README banner line {line!r} is not what devstack prints"


# --- caps and defaults ----------------------------------------------------------------------


def test_the_docs_state_the_run_record_cap_the_code_keeps() -> None:
    pattern = r"(\d[\d,]*)\s+(?:working\s+)?run\s+records\b"
    for doc in ALL_DOCS:
        for said in numbers(pattern, read(doc)):
            assert said == HISTORY_CAP, f"{doc.name} says {said:g} run records, not {HISTORY_CAP}"
    for doc in (OPERATOR, DATABASE, ARCHITECTURE):
        assert f"newest {HISTORY_CAP} working run records" in re.sub(r"\s+", " ", read(doc))


def test_the_docs_state_the_audit_cap_and_keep_the_code_uses() -> None:
    keep = Settings.model_fields["audit_keep"].default
    for doc in ALL_DOCS:
        text = re.sub(r"\s+", " ", read(doc))
        for said in numbers(r"hard cap of (\d[\d,]*)", text):
            assert said == AUDIT_CAP, f"{doc.name} says a hard cap of {said:g}, not {AUDIT_CAP}"
        for said in numbers(r"`ERP_SYNC_AUDIT_KEEP` \((\d[\d,]*)\)", text):
            assert said == keep, f"{doc.name} gives ERP_SYNC_AUDIT_KEEP {said:g}, not {keep}"
    admin = re.sub(r"\s+", " ", read(ADMIN))
    assert f"hard cap of {AUDIT_CAP:,} entries" in admin
    assert f"`ERP_SYNC_AUDIT_KEEP` ({keep})" in admin


def test_every_default_the_docs_give_beside_a_variable_is_the_settings_default() -> None:
    fields = {f"ERP_SYNC_{name.upper()}": field for name, field in Settings.model_fields.items()}
    found = 0
    for doc in ALL_DOCS:
        text = re.sub(r"\s+", " ", read(doc))
        for name, said in re.findall(r"`(ERP_SYNC_[A-Z_]+)` \((\d[\d,.]*)", text):
            assert name in fields, f"{doc.name} names {name}, which the settings model lacks"
            default = fields[name].default
            assert number(said) == default, f"{doc.name}: {name} ({said}), default is {default}"
            found += 1
    assert found >= 10


def test_the_key_space_table_states_the_caps_the_code_applies() -> None:
    keys = section(read(ARCHITECTURE), "Key space")
    (log_row,) = [r for r in table_rows(keys) if r[0] == "`alerts:<c>:log`"]
    assert numbers(r"capped at (\d[\d,]*)", log_row[3]) == [LOG_CAP]


def test_the_key_space_table_names_every_kind_of_key() -> None:
    space = KeySpace("p")
    kinds = set()
    for name, member in inspect.getmembers(KeySpace):
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            value = getattr(space, name)
        elif inspect.isfunction(member) and inspect.signature(member).return_annotation == "str":
            params = list(inspect.signature(member).parameters)[1:]
            value = member(space, *["c"] * len(params))
        else:
            continue
        if isinstance(value, str) and "*" not in value:
            kinds.add(value.split(":")[1])
    cells = [r[0] for r in table_rows(section(read(ARCHITECTURE), "Key space"))]
    documented = {m for cell in cells for m in re.findall(r"`([a-z]+)[:`]", cell)}
    assert kinds - documented == set(), "key kinds missing from docs/architecture.md's table"


def test_the_database_guide_names_the_schema_revision_this_code_needs() -> None:
    assert f"this code needs {head_revision()}: run" in read(DATABASE)


# --- queues ---------------------------------------------------------------------------------


def test_the_docs_name_the_queue_each_task_runs_on() -> None:
    config = celery_config(Settings())
    routes: dict[str, dict[str, str]] = config["task_routes"]

    def route(task: str) -> str:
        (queue,) = {r["queue"] for pattern, r in routes.items() if fnmatch.fnmatch(task, pattern)}
        return queue

    rows = table_rows(section(read(OPERATOR), "Tasks and queues"))
    documented = {row[0].strip("`"): row[-1].strip("`") for row in rows[1:]}
    for task, queue in documented.items():
        assert route(task) == queue, f"{task} runs on {route(task)}, the guide says {queue}"
    every = {p for p in routes if "*" not in p} | set(TASK_NAMES.values())
    every |= {entry["task"] for entry in config["beat_schedule"].values()}
    assert every - set(documented) == set(), "tasks missing from the operator guide's table"
    for entry in config["beat_schedule"].values():
        assert entry["options"]["queue"] == documented[entry["task"]]
    said = 0
    for doc in ALL_DOCS:  # prose: "the task `erp_sync.prune_history` on the `alerts` queue"
        text = re.sub(r"\s+", " ", prose(read(doc)))
        for task, queue in re.findall(TASK_ON_QUEUE, text):
            assert route(task) == queue, f"{doc.name}: {task} runs on {route(task)}, not {queue}"
            said += 1
    assert said >= 3


def test_the_admin_guide_names_the_queue_of_each_sync() -> None:
    rows = table_rows(section(read(ADMIN), "The syncs"))
    documented = {row[0].strip("`"): row[-1].strip("`") for row in rows[1:]}
    assert documented == {kind.value: queue_for(kind) for kind in SyncKind}


# --- commands -------------------------------------------------------------------------------


def test_the_admin_guide_lists_every_command_of_the_cli_and_no_other() -> None:
    real: set[str] = set()

    def walk(group: click.Group, path: list[str]) -> None:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                if command.invoke_without_command:
                    real.add(" ".join([*path, name]))
                walk(command, [*path, name])
            else:
                real.add(" ".join([*path, name]))

    walk(cli, [])
    documented = set()
    for row in table_rows(section(read(ADMIN), "Every command"))[1:]:
        for span in INLINE.findall(row[0]):
            words = []
            for token in span.split():
                if not re.fullmatch(r"[a-z][a-z-]*", token):
                    break
                words.append(token)
            documented.add(" ".join(words))
    assert documented == real


def test_every_pause_until_in_the_docs_is_one_the_code_accepts() -> None:
    now = time.time()
    tried = 0
    for doc in ALL_DOCS:
        for value in re.findall(r"--until\s+([^\s`\]]+)", read(doc)):
            if value.isupper():  # a placeholder: --until T
                continue
            try:
                parse_until(value, now)
            except InvalidInput as exc:
                pytest.fail(f"{doc.name}: --until {value}: {exc}")
            tried += 1
    assert tried >= 2


def test_every_beat_and_worker_command_in_the_docs_logs_at_info() -> None:
    found = 0
    for doc in ALL_DOCS:
        for command in re.findall(r"celery -A \S+ (?:beat|worker)\b[^\n`#]*", read(doc)):
            assert "-l INFO" in command, f"{doc.name}: {command!r} logs at WARNING"
            found += 1
    assert found >= 4


# --- names ----------------------------------------------------------------------------------


def test_the_admin_guide_names_the_erps_the_models_know() -> None:
    text = read(ADMIN)
    listed = text[text.index("ERP keys:") :].split(". ", 1)[0]
    assert set(INLINE.findall(listed)) == {erp.value for erp in Erp}


def test_the_admin_guide_names_the_reserved_company_ids() -> None:
    text = re.sub(r"\s+", " ", read(ADMIN))
    said = text[: text.index(" are reserved")].rsplit(". ", 1)[1]
    assert set(INLINE.findall(said)) == set(RESERVED_IDS)


def test_the_operator_guide_lists_every_metric_the_exporter_serves(
    fake: redis.Redis, keys: KeySpace
) -> None:
    served = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in FleetCollector(fake, keys).collect()
    }
    listed = set(re.findall(r"`(erp_sync_[a-z_]+)", section(read(OPERATOR), "Monitoring")))
    assert listed == served
    assert set(re.findall(r"`(erp_sync_[a-z_]+)", read(ADMIN))) <= served


def test_the_architecture_states_the_layers_of_the_import_contract() -> None:
    contracts = tomllib.loads(read(ROOT / "pyproject.toml"))["tool"]["importlinter"]["contracts"]
    (rooms,) = [c for c in contracts if c.get("containers") == ["erp_sync"]]
    text = read(ARCHITECTURE)
    assert " > ".join(rooms["layers"]) in text
    for layer in rooms["layers"]:
        for package in (p.strip() for p in layer.split("|")):
            owner = f"`erp_sync/{package}.py`" if package == "errors" else f"`erp_sync/{package}/`"
            assert f"**{owner}**" in text, f"docs/architecture.md has no paragraph on {owner}"


def test_the_architecture_names_every_error_of_the_hierarchy() -> None:
    import erp_sync.errors

    errors = {
        name
        for name, value in inspect.getmembers(erp_sync.errors, inspect.isclass)
        if issubclass(value, ErpSyncError)
    }
    tree = FENCE.findall(section(read(ARCHITECTURE), "Errors"))[0]
    named = {line.split()[0] for line in tree.splitlines()[1:-1] if line.strip()}
    assert named == errors


# --- paths and links ------------------------------------------------------------------------


def named_paths(text: str) -> list[str]:
    """Every repo path written in backticks in ``text``'s prose."""
    paths = []
    for span in INLINE.findall(prose(text)):
        for token in re.split(r"[\s,()\[\]\"'=]+", span):
            token = token.split("::")[0].rstrip(".:;")
            if not token or "://" in token or token[0] in "/~$<" or token.startswith("-"):
                continue
            if "/" in token and (token.split("/")[0] in TOP or token.endswith(FILE_ENDINGS)):
                paths.append(token)
    return paths


def test_every_repo_path_the_docs_name_exists() -> None:
    missing = []
    for doc in ALL_DOCS:
        for path in named_paths(read(doc)):
            found = list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()
            if not found:
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert missing == []


def test_every_link_between_the_docs_reaches_a_file_and_heading() -> None:
    broken = []
    for doc in ALL_DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(read(doc))):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []
