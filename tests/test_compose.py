"""docker-compose.yml and the Dockerfile: the file validates, the stack is safe to operate, and
every command in it names a real module, subcommand and option of this project's Celery app and CLI.
The database is PostgreSQL, migrated once before any worker starts; beat never waits for it.
The secret key reaches every container that opens sealed secrets, and only those, as a variable
compose requires; published ports listen on loopback unless a variable says otherwise; the
``alerts`` queue has workers of its own, so a slow webhook receiver never holds a sync's slot.

Options are checked against the real ``--help`` output of the installed Celery, Flower and
``manage.py``, so a renamed or misspelt option fails here instead of in a crash-looping container.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP_SERVICES = sorted(name for name in SERVICES if name not in ("redis", "postgres"))
WORKERS = ("worker-company", "worker-project", "worker-alerts")
# What opens sealed secrets (ERP credentials, alert signing secrets): the workers and the CLI.
SECRET_USERS = {*WORKERS, "manage", "seed"}
SECRET_KEY = "ERP_SYNC_SECRET_KEY"
# Needs only the database (`erp-sync db upgrade`), not Redis.
MIGRATE = "migrate"
# Compose's required-variable form: `${NAME:?message}` (refuses to run when NAME is unset).
REQUIRED = r"\$\{%s:\?[^}]+\}"
# Nothing in a --help run connects anywhere; these only satisfy the settings model.
HELP_ENV = {"ERP_SYNC_REDIS_URL": "redis://127.0.0.1:1/0", "ERP_SYNC_KEY_PREFIX": "compose_test"}


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ERP_SYNC_", "FLOWER_", "POSTGRES_", "COMPOSE_"))
    }
    return {**env, **extra}


@cache
def help_text(*args: str) -> str:
    """Output of ``python <args>`` run from the repo root (a ``--help`` or ``--list``)."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=_env(HELP_ENV),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"python {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout or done.stderr  # tornado (Flower) prints its help on stderr


def click_options(text: str) -> dict[str, tuple[bool, list[str]]]:
    """Each option of a click ``--help`` page: whether it takes a value, and its choices."""
    found: dict[str, tuple[bool, list[str]]] = {}
    for line in text.splitlines():
        match = re.match(r"^ {2}(-\S.*?)(?: {2,}|$)", line)
        if not match:
            continue
        words = match.group(1).replace(" / ", ", ").split(" ")
        names = [w.rstrip(",") for w in words if re.fullmatch(r"--?[\w-]+,?", w)]
        metavar = " ".join(words[len(names) :])
        choices = re.fullmatch(r"\[([\w|]+)\]", metavar)
        for name in names:
            found[name] = (bool(metavar), choices.group(1).split("|") if choices else [])
    return found


def listed_commands(text: str) -> set[str]:
    """Subcommand names under a click or Celery ``Commands:`` heading."""
    _, _, tail = text.partition("Commands:")
    return set(re.findall(r"^ {2}([\w-]+)(?: |$)", tail, re.MULTILINE))


def check_click_args(args: list[str], text: str, where: str) -> list[str]:
    """Check ``args`` against a help page; return the positional arguments left over."""
    options, positional, i = click_options(text), [], 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if not name.startswith("-"):
            positional.append(args[i])
        else:
            assert name in options, f"{where}: no option {name} in its --help"
            takes_value, choices = options[name]
            if takes_value and not eq:
                i += 1
                value = args[i]
            assert not choices or value in choices, f"{where}: {name} {value} not in {choices}"
        i += 1
    return positional


def check_celery(argv: list[str], where: str) -> None:
    assert argv[:3] == ["celery", "-A", "worker"], f"{where}: every celery command uses -A worker"
    assert "-A" in click_options(help_text("-m", "celery", "--help"))
    from celery import Celery

    assert isinstance(importlib.import_module("worker").app, Celery)
    sub, rest = argv[3], argv[4:]
    assert sub in listed_commands(help_text("-m", "celery", "--help")), f"{where}: celery {sub}?"
    base = ("-m", "celery", "-A", "worker", sub)
    if sub == "flower":
        # Flower's own options are tornado options: its help is behind `--`.
        known = set(re.findall(r"^ +--([\w-]+)", help_text(*base, "--", "--help"), re.MULTILINE))
        for arg in rest:
            name, eq, _ = arg.partition("=")
            assert eq and name.removeprefix("--").replace("_", "-") in known, f"{where}: {arg}"
        return
    if sub in ("inspect", "control"):
        assert rest[0] in listed_commands(help_text(*base, "--list")), f"{where}: {rest[0]}?"
        rest = rest[1:]
    for extra in check_click_args(rest, help_text(*base, "--help"), where):
        # `worker.soft_shutdown_timeout=30`: Celery applies trailing key=value as configuration.
        from celery.app.defaults import NAMESPACES

        assert sub in ("worker", "beat"), f"{where}: unexpected argument {extra}"
        key, eq, value = extra.partition("=")
        namespace, _, setting = key.partition(".")
        assert eq and setting in NAMESPACES.get(namespace, {}), f"{where}: no setting {key}"
        NAMESPACES[namespace][setting].to_python(value)


def check_manage(argv: list[str], where: str) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get(argv[0]) == "manage:main", f"{where}: {argv[0]} is not the console script"
    path: list[str] = []
    rest = argv[1:]
    text = help_text("manage.py", "--help")
    while rest and not rest[0].startswith("-") and listed_commands(text):
        wanted = " ".join([*path, rest[0]])
        assert rest[0] in listed_commands(text), f"{where}: no subcommand {wanted}"
        path.append(rest.pop(0))
        text = help_text("manage.py", *path, "--help")
    positional = check_click_args(rest, text, where)
    usage = text.splitlines()[0].partition("[OPTIONS]")[2]
    assert len(positional) <= len(re.findall(r"\b[A-Z]+\b", usage)), f"{where}: {positional}"


def argv_of(service: dict[str, Any]) -> list[str]:
    def as_list(value: str | list[str] | None) -> list[str]:
        return shlex.split(value) if isinstance(value, str) else list(value or [])

    return as_list(service.get("entrypoint")) + as_list(service.get("command"))


def commands() -> Iterator[tuple[str, list[str]]]:
    for name, service in SERVICES.items():
        if argv_of(service):
            yield f"{name}.command", argv_of(service)
        test = service.get("healthcheck", {}).get("test")
        if test:
            argv = shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:]
            yield f"{name}.healthcheck", argv
    cmd = re.search(r"^CMD (.*)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert cmd, "the Dockerfile has a default CMD"
    yield "Dockerfile.CMD", json.loads(cmd.group(1))


@pytest.mark.parametrize(("where", "argv"), list(commands()), ids=[w for w, _ in commands()])
def test_every_command_names_a_real_module_subcommand_and_option(
    where: str, argv: list[str]
) -> None:
    if argv[0] == "celery":
        check_celery(argv, where)
    elif argv[0] == "erp-sync":
        check_manage(argv, where)
    elif argv[0] == "python":
        compile(argv[argv.index("-c") + 1], where, "exec")
    else:
        assert argv[0] in ("redis-server", "redis-cli", "pg_isready"), (
            f"{where}: unknown program {argv[0]}"
        )


def _walk(node: object) -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key), value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def seconds(duration: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration}"
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in parts)


def option_value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def test_no_service_has_a_fixed_container_name_so_every_service_scales() -> None:
    assert "container_name" not in {key for key, _ in _walk(COMPOSE)}
    assert [name for name in SERVICES if SERVICES[name].get("ports")] == ["flower"]


def test_flower_is_never_open_without_basic_auth_from_a_required_variable() -> None:
    flower = SERVICES["flower"]
    required = flower["environment"]["FLOWER_BASIC_AUTH"]
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", required)
    assert "FLOWER_UNAUTHENTICATED_API" not in {key for key, _ in _walk(COMPOSE)}
    assert "FLOWER_UNAUTHENTICATED_API" not in COMPOSE_FILE.read_text()
    assert argv_of(flower)[-1] == "--port=5555"
    assert flower["ports"] == ["${FLOWER_BIND:-127.0.0.1}:5555:5555"]
    assert ":5555/" in flower["healthcheck"]["test"][-1]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_published_port_listens_on_loopback_unless_its_bind_variable_says_otherwise(
    name: str,
) -> None:
    # `HOST:PUBLISHED:TARGET` with HOST `${<SERVICE>_BIND:-127.0.0.1}`: a port without a host
    # address (`5555:5555`) would be published on every interface of the Docker host.
    variable = name.upper().replace("-", "_") + "_BIND"
    for port in SERVICES[name].get("ports", []):
        host, _, rest = str(port).rpartition(":")
        host, _, _published = host.rpartition(":")
        assert host == f"${{{variable}:-127.0.0.1}}", f"{name}: {port}"
        assert rest.isdigit()


def test_the_secret_key_goes_to_every_container_that_opens_secrets_and_to_no_other() -> None:
    having = {name for name in SERVICES if SECRET_KEY in SERVICES[name].get("environment", {})}
    assert having == SECRET_USERS
    for name in having:
        value = SERVICES[name]["environment"][SECRET_KEY]
        assert re.fullmatch(REQUIRED % SECRET_KEY, value), f"{name}: {value}"
        assert "erp-sync connection new-key" in value  # the error says how to make one


def test_redis_persists_with_aof_never_evicts_and_has_a_healthcheck() -> None:
    redis = SERVICES["redis"]
    argv = argv_of(redis)
    assert redis["image"].startswith("redis:7")
    assert option_value(argv, "--appendonly") == "yes"
    assert option_value(argv, "--maxmemory-policy") == "noeviction"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in COMPOSE["volumes"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_app_service_waits_for_a_healthy_redis_and_names_only_known_settings(
    name: str,
) -> None:
    from config.env import Settings

    service = SERVICES[name]
    if name != MIGRATE:  # migrating the schema needs the database only
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    env = service["environment"]
    known = {"ERP_SYNC_" + field.upper() for field in Settings.model_fields}
    assert {k for k in env if k.startswith("ERP_SYNC_")} <= known
    # Beat refuses to start unless the broker is its Redis: leave the broker URL unset.
    assert "ERP_SYNC_BROKER_URL" not in env
    assert env["ERP_SYNC_SECONDS_PER_HOUR"] == "${ERP_SYNC_SECONDS_PER_HOUR:-3600}"
    defaults = {
        k.removeprefix("ERP_SYNC_").lower(): re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", str(v))
        for k, v in env.items()
        if k.startswith("ERP_SYNC_")
    }
    assert defaults["redis_url"] == "redis://redis:6379/0"
    assert defaults["database_url"] == DATABASE_URL
    Settings.model_validate(defaults)


DATABASE_URL = "postgresql+psycopg://erp_sync:${POSTGRES_PASSWORD}@postgres:5432/erp_sync"


def test_postgres_has_a_healthcheck_a_named_volume_and_a_password_compose_requires() -> None:
    postgres = SERVICES["postgres"]
    assert postgres["image"] == "postgres:16"
    env = postgres["environment"]
    assert re.fullmatch(REQUIRED % "POSTGRES_PASSWORD", env["POSTGRES_PASSWORD"])
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == ("erp_sync", "erp_sync")
    volume = postgres["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in COMPOSE["volumes"]
    check = shlex.split(postgres["healthcheck"]["test"][1])
    assert check[0] == "pg_isready"
    # Over TCP: the image's first-start init server listens on the Unix socket only.
    assert option_value(check, "-h") == "127.0.0.1"
    assert (option_value(check, "-U"), option_value(check, "-d")) == ("erp_sync", "erp_sync")
    assert postgres["restart"] == "unless-stopped" and not postgres.get("ports")


def test_the_database_url_names_the_postgres_service_its_user_database_and_password() -> None:
    from sqlalchemy.engine import make_url

    env = SERVICES["postgres"]["environment"]
    for name in APP_SERVICES:
        assert SERVICES[name]["environment"]["ERP_SYNC_DATABASE_URL"] == DATABASE_URL, name
    url = make_url(DATABASE_URL)
    assert (url.drivername, url.host, url.port) == ("postgresql+psycopg", "postgres", 5432)
    assert (url.username, url.database) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
    assert url.password == "${POSTGRES_PASSWORD}"


def test_migrate_upgrades_the_schema_once_after_postgres_is_healthy() -> None:
    migrate = SERVICES[MIGRATE]
    assert argv_of(migrate) == ["erp-sync", "db", "upgrade"]
    assert migrate["restart"] == "no" and "profiles" not in migrate  # runs on every `up`
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}


@pytest.mark.parametrize("name", WORKERS)
def test_workers_start_only_once_postgres_is_healthy_and_migrate_completed(name: str) -> None:
    depends = SERVICES[name]["depends_on"]
    assert depends[MIGRATE]["condition"] == "service_completed_successfully"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["beat", "flower", "seed"])
def test_beat_and_the_others_that_never_use_the_database_do_not_wait_for_it(name: str) -> None:
    # Beat keeps the schedule running while the database is down or being migrated.
    assert set(SERVICES[name]["depends_on"]) == {"redis"}


def test_the_file_holds_no_secret_only_references_to_variables_compose_requires() -> None:
    text = COMPOSE_FILE.read_text()
    for key, value in _walk(COMPOSE):
        if re.search(r"PASSWORD|SECRET|TOKEN|AUTH", key, re.IGNORECASE):
            assert re.fullmatch(REQUIRED % re.escape(key), str(value)), f"{key}: {value}"
    # A password inside a URL is only ever the required variable, never a literal.
    for userinfo in re.findall(r"://([^/@\s]*)@", text):
        assert userinfo.partition(":")[2] in ("", "${POSTGRES_PASSWORD}"), userinfo
    assert "POSTGRES_HOST_AUTH_METHOD" not in text  # no `trust`: the password is required


def test_beat_runs_two_replicas_and_is_healthy_only_while_it_answers_ping() -> None:
    beat = SERVICES["beat"]
    assert beat["deploy"]["replicas"] == 2
    assert argv_of(beat)[3] == "beat" and "-n" not in argv_of(beat)
    assert "celerybeat@%h" in help_text("-m", "celery", "-A", "worker", "beat", "--help")
    ping = shlex.split(beat["healthcheck"]["test"][1])
    assert ping[3:5] == ["inspect", "ping"] and option_value(ping, "-d") == "celerybeat@$$HOSTNAME"


@pytest.mark.parametrize("name", WORKERS)
def test_workers_have_unique_node_names_and_a_healthcheck_on_their_own_node(name: str) -> None:
    worker = SERVICES[name]
    argv, queue = argv_of(worker), name.removeprefix("worker-")
    assert option_value(argv, "-Q").split(",")[0] == queue
    assert option_value(argv, "-n") == f"{queue}@%h"
    ping = shlex.split(worker["healthcheck"]["test"][1])
    assert option_value(ping, "-d") == f"{queue}@$$HOSTNAME"


def test_the_workers_consume_every_sync_queue_and_the_housekeeping_one() -> None:
    from config.env import Settings
    from erp_sync.infra.celery_config import celery_config
    from erp_sync.infra.slots import TASK_NAMES, queue_for

    consumed = {
        queue
        for name in WORKERS
        for queue in option_value(argv_of(SERVICES[name]), "-Q").split(",")
    }
    assert {queue_for(kind) for kind in TASK_NAMES} <= consumed
    periodic = celery_config(Settings()).get("beat_schedule", {}).values()
    assert {entry["options"]["queue"] for entry in periodic} <= consumed
    assert "alerts" in consumed  # webhooks and housekeeping


def test_the_alerts_queue_has_workers_of_its_own_that_run_no_sync() -> None:
    from erp_sync.infra.slots import TASK_NAMES, queue_for

    queues = {name: option_value(argv_of(SERVICES[name]), "-Q").split(",") for name in WORKERS}
    sync_queues = {queue_for(kind) for kind in TASK_NAMES}
    # A webhook receiver that trickles its answer holds a slot of the worker that consumes
    # `alerts`; that worker must run no sync (tests/test_alert_isolation.py measures it).
    assert [name for name, q in queues.items() if "alerts" in q] == ["worker-alerts"]
    assert queues["worker-alerts"] == ["alerts"]
    assert not sync_queues & set(queues["worker-alerts"])


@pytest.mark.parametrize("name", WORKERS)
def test_a_stopping_worker_gets_its_soft_shutdown_before_docker_kills_it(name: str) -> None:
    worker = SERVICES[name]
    soft = [a for a in argv_of(worker) if a.startswith("worker.soft_shutdown_timeout=")]
    assert len(soft) == 1, "workers set a soft shutdown timeout"
    # Soft shutdown is part of Celery's cold shutdown: SIGTERM must be remapped to reach it.
    assert worker["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    assert seconds(worker["stop_grace_period"]) > float(soft[0].partition("=")[2]) > 0


def test_the_manage_and_seed_services_run_the_cli_only_on_request() -> None:
    assert SERVICES["manage"]["profiles"] == ["manage"]
    assert SERVICES["manage"]["entrypoint"] == ["erp-sync"]
    assert SERVICES["seed"]["profiles"] == ["demo"] and argv_of(SERVICES["seed"])[1] == "demo"
    for name in APP_SERVICES:
        one_shot = "profiles" in SERVICES[name] or name == MIGRATE
        assert SERVICES[name]["restart"] == ("no" if one_shot else "unless-stopped")


def test_the_image_copies_every_installed_module_runs_as_non_root_and_bakes_no_secrets() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = {
        s.rstrip("/")
        for line in re.findall(r"^COPY (.*)$", text, re.MULTILINE)
        for s in line.split()[:-1]
    }
    wanted = {f"{m}.py" for m in setuptools["py-modules"]}
    wanted |= {p.rstrip("*") for p in setuptools["packages"]["find"]["include"]}
    assert wanted | {"pyproject.toml", "README.md"} <= copied
    ignored = [
        p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")
    ]
    assert {".env", ".venv", ".git"} <= set(ignored)
    assert not [(s, p) for s in copied for p in ignored if fnmatch.fnmatch(s, p)]
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert not re.search(
        r"^(ENV|ARG)\b.*(PASSWORD|SECRET|TOKEN|AUTH|REDIS_URL)", text, re.MULTILINE | re.IGNORECASE
    )


@pytest.fixture(scope="module")
def compose_cli() -> list[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=60, check=False
        ).returncode
        == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    if os.environ.get("CI"):
        pytest.fail("docker compose or docker-compose is required in CI (scripts/setup.sh)")
    pytest.skip("neither docker compose nor docker-compose is installed")


def compose_config(
    cli: list[str], tmp_path: Path, env: dict[str, str], quiet: bool = True
) -> subprocess.CompletedProcess[str]:
    empty = tmp_path / "empty.env"  # so a developer's .env cannot change the outcome
    empty.write_text("")
    args = [
        *cli,
        "--env-file",
        str(empty),
        "-f",
        str(COMPOSE_FILE),
        "--profile",
        "manage",
        "--profile",
        "demo",
        "config",
        *(["-q"] if quiet else []),
    ]
    return subprocess.run(
        args, cwd=tmp_path, env=_env(env), capture_output=True, text=True, timeout=120, check=False
    )


REQUIRED_ENV = {
    "FLOWER_BASIC_AUTH": "x:y",
    "POSTGRES_PASSWORD": "pw0123456789",
    SECRET_KEY: "a-fernet-key-from-erp-sync-connection-new-key",
}


def test_the_compose_file_validates(compose_cli: list[str], tmp_path: Path) -> None:
    done = compose_config(compose_cli, tmp_path, REQUIRED_ENV)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("missing", sorted(REQUIRED_ENV))
def test_the_compose_file_refuses_to_run_without_each_required_secret(
    compose_cli: list[str], tmp_path: Path, missing: str
) -> None:
    done = compose_config(
        compose_cli, tmp_path, {k: v for k, v in REQUIRED_ENV.items() if k != missing}
    )
    assert done.returncode != 0
    assert missing in done.stderr


def test_compose_resolves_the_database_url_and_the_start_order_as_intended(
    compose_cli: list[str], tmp_path: Path
) -> None:
    done = compose_config(compose_cli, tmp_path, REQUIRED_ENV, quiet=False)
    assert done.returncode == 0, done.stderr
    resolved: dict[str, dict[str, Any]] = yaml.safe_load(done.stdout)["services"]
    password = REQUIRED_ENV["POSTGRES_PASSWORD"]
    assert resolved["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    for name in WORKERS:
        worker = resolved[name]
        assert worker["environment"]["ERP_SYNC_DATABASE_URL"] == DATABASE_URL.replace(
            "${POSTGRES_PASSWORD}", password
        )
        assert worker["depends_on"][MIGRATE]["condition"] == "service_completed_successfully"
        assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert set(resolved["beat"]["depends_on"]) == {"redis"}
    for name, service in resolved.items():
        assert service.get("environment", {}).get(SECRET_KEY) == (
            REQUIRED_ENV[SECRET_KEY] if name in SECRET_USERS else None
        ), name


@pytest.mark.parametrize(("bind", "host"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_flower_is_published_on_loopback_unless_flower_bind_names_another_address(
    compose_cli: list[str], tmp_path: Path, bind: str | None, host: str
) -> None:
    env = {**REQUIRED_ENV, **({"FLOWER_BIND": bind} if bind else {})}
    done = compose_config(compose_cli, tmp_path, env, quiet=False)
    assert done.returncode == 0, done.stderr
    resolved: dict[str, dict[str, Any]] = yaml.safe_load(done.stdout)["services"]
    published = [
        (p.get("host_ip", "*"), str(p["published"]), p["target"]) if isinstance(p, dict) else p
        for name, service in resolved.items()
        for p in service.get("ports", [])
    ]
    # docker-compose v1 prints `IP:PUBLISHED:TARGET/tcp`; the compose plugin a mapping.
    assert published in ([f"{host}:5555:5555/tcp"], [(host, "5555", 5555)]), published


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_operator_can_set_the_outbound_allow_list_and_the_replica_wait_in_every_container(
    name: str,
) -> None:
    """An on-premises ERP on the private network is allowed by setting ERP_SYNC_OUTBOUND_ALLOW
    for compose, not by editing this file; unset, every container gets the model's default
    (nothing internal allowed; one replica acknowledgement when replicas exist)."""
    from config.env import Settings

    env = SERVICES[name]["environment"]
    for setting in ("outbound_allow", "redis_wait_replicas", "redis_wait_timeout_ms"):
        variable = "ERP_SYNC_" + setting.upper()
        default = Settings.model_fields[setting].default
        assert env.get(variable) == f"${{{variable}:-{default}}}", f"{name}: {variable}"
