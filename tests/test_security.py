"""Security (issue 6, item 8): Redis with a password and over TLS end to end, a wrong password
refused with one clear line, no secret in any output or log, and a refused ``settings set``
audited as refused.

Also part of item 8, tested elsewhere: Flower refuses unauthenticated requests
(tests/test_flower.py, and tests/test_compose.py checks that compose requires FLOWER_BASIC_AUTH);
beat logs an error when Redis's maxmemory-policy could evict schedule keys
(tests/test_beat_engine.py::test_beat_warns_when_redis_may_evict_schedule_keys).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from config.keys import KeySpace
from erp_sync.runs.records import RunRecords
from tests.support import procs
from tests.support.redisproc import RedisServer, free_port, skip_unless_ci

PASSWORD = f"pw-{uuid.uuid4().hex}"
Manage = Callable[..., subprocess.CompletedProcess[str]]
FIGURES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def figures(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None and FIGURES:
        with capture.global_and_fixture_disabled():  # shown without -s
            reporter.write_line("")
            reporter.write_line(
                f"security figures: CLI runs over password/TLS URLs {FIGURES['cli']}, "
                f"celery processes {FIGURES['processes']}, refused runs "
                f"{FIGURES['refused']} (wrong/missing password, plain text to TLS, untrusted "
                f"CA, non-admin; each exit 1 with one line), outputs and logs grepped "
                f"{FIGURES['grepped']}, password found {FIGURES['leaks']} times"
            )


def manage_in(env: dict[str, str]) -> Manage:
    def manage(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
        run_env = {**env, **({"ERP_SYNC_REDIS_URL": url} if url else {})}
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=procs.ROOT,
            env=procs.process_env(run_env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return manage


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    FIGURES["refused"] += 1
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == "" and done.stderr.startswith("error: "), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own that requires a password."""
    if shutil.which("redis-server") is None:
        skip_unless_ci("redis-server not installed")
    server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    yield server
    server.kill()


@pytest.mark.integration
@pytest.mark.processes
def test_a_password_protected_redis_works_end_to_end_and_the_password_never_shows(
    locked: RedisServer, prefix: str, tmp_path: Path
) -> None:
    env = {
        "ERP_SYNC_REDIS_URL": locked.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SETTINGS_WAIT_SECONDS": "20",
    }
    assert PASSWORD in locked.url
    manage = manage_in(env)
    outputs: list[str] = []

    def ok(*args: str) -> str:
        FIGURES["cli"] += 1
        done = manage(*args)
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == 0, done.stderr
        return done.stdout

    beat = procs.beat("beat", env, tmp_path)
    worker = procs.worker("worker", env, tmp_path)
    try:
        # (beat and the worker start up while these run)
        ok("company", "add", "acme", "--erp", "xero", "--admin", "alice")
        ok("project", "add", "acme", "p1")
        ok("user", "grant", "acme", "rita", "--level", "read_only", "--as", "alice")
        worker.wait_for(" ready.", 30)
        changed = json.loads(
            ok(
                "settings",
                "set",
                "acme",
                "--as",
                "alice",
                "--payments-frequency",
                "hourly",
                "--json",
            )
        )
        assert changed["version"] == 2 and isinstance(changed["applied_ms"], float)  # beat
        shown = ok("settings", "show", "acme") + ok("settings", "show", "acme", "--json")
        assert "hourly" in shown
        assert "source" in ok("schedule", "acme", "--json")
        task = ok("sync-now", "acme", "vendors", "--as", "alice").rsplit(": ", 1)[1].strip()
        with locked.client() as client:
            history = RunRecords(client, KeySpace(prefix))
            procs.wait_until(
                lambda: (r := history.get("acme", task)) is not None and r.status == "succeeded",
                30,
                f"{task} never succeeded (worker)",
            )
        ok("history", "acme"), ok("audit", "acme"), ok("status")

        refused = manage("settings", "set", "acme", "--as", "rita", "--no-refresh-jobs")
        outputs.append(refused.stdout + refused.stderr)
        assert "'read_only'" in one_error_line(refused)
        assert "rita" in ok("audit", "acme", "--denied")
    finally:
        procs.stop_all([beat, worker])
    logs = {"beat": beat.output(), "worker": worker.output()}
    assert "applied companies=1: acme@2(" in logs["beat"]
    assert "redis://:**@" in logs["worker"] or "redis://:***@" in logs["worker"]
    FIGURES["processes"] += 2
    for name, text in [*logs.items(), *(("cli", o) for o in outputs)]:
        FIGURES["grepped"] += 1
        FIGURES["leaks"] += text.count(PASSWORD)
        assert PASSWORD not in text, f"the Redis password leaked into the {name} output"


@pytest.mark.integration
@pytest.mark.processes
def test_a_wrong_or_missing_password_is_one_clear_line_and_never_echoed(
    locked: RedisServer, prefix: str, tmp_path: Path
) -> None:
    manage = manage_in({"ERP_SYNC_KEY_PREFIX": prefix})
    wrong = f"wrong-{uuid.uuid4().hex}"
    base = f"127.0.0.1:{locked.port}/0"
    for url in (f"redis://:{wrong}@{base}", f"redis://default:{wrong}@{base}"):
        err = one_error_line(manage("company", "list", url=url))
        FIGURES["grepped"] += 1
        FIGURES["leaks"] += err.count(PASSWORD) + err.count(wrong)
        assert "refused our credentials" in err
        assert wrong not in err and PASSWORD not in err and ":***@" in err
    err = one_error_line(manage("settings", "show", "acme", url=f"redis://{base}"))
    assert "Authentication required" in err or "refused our credentials" in err
    # A beat given the wrong password says so and keeps retrying, without echoing it.
    beat = procs.beat(
        "beat-wrong",
        {"ERP_SYNC_REDIS_URL": f"redis://:{wrong}@{base}", "ERP_SYNC_KEY_PREFIX": prefix},
        tmp_path,
    )
    try:
        beat.wait_for("invalid username-password pair", 30)
        assert beat.alive()
    finally:
        beat.stop()
    FIGURES["processes"] += 1
    FIGURES["grepped"] += 1
    FIGURES["leaks"] += beat.output().count(wrong)
    assert wrong not in beat.output() and ":***@" in beat.output()


def _certificates(where: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True, timeout=60)

    where.mkdir(parents=True, exist_ok=True)
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=erp-sync test CA",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    )
    return {"ca": where / "ca.crt", "cert": where / "server.crt", "key": where / "server.key"}


def _tls_server(tmp_path: Path) -> tuple[RedisServer, int, Path]:
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        skip_unless_ci("redis-server or openssl not installed")
    certs = _certificates(tmp_path / "certs")
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "redis",
        password=PASSWORD,
        extra=[
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(certs["cert"]),
            "--tls-key-file",
            str(certs["key"]),
            "--tls-ca-cert-file",
            str(certs["ca"]),
            "--tls-auth-clients",
            "no",
        ],
    )
    try:
        server.start()
    except RuntimeError:
        log = tmp_path / "redis" / "redis.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        server.kill()
        if "tls" in text.lower() or not text:
            skip_unless_ci(f"this redis-server was built without TLS support: {text[-200:]}")
        raise
    return server, tls_port, certs["ca"]


@pytest.mark.integration
def test_rediss_urls_work_end_to_end_for_the_cli(tmp_path: Path, prefix: str) -> None:
    server, tls_port, ca = _tls_server(tmp_path)
    try:
        url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
        manage = manage_in(
            {
                "ERP_SYNC_REDIS_URL": url,
                "ERP_SYNC_KEY_PREFIX": prefix,
                "ERP_SYNC_SETTINGS_WAIT_SECONDS": "0",
            }
        )
        outputs = []
        for args in (
            ["company", "add", "acme", "--erp", "xero", "--admin", "alice"],
            ["user", "grant", "acme", "rita", "--level", "read_only", "--as", "alice"],
            ["settings", "set", "acme", "--as", "alice", "--no-refresh-jobs", "--json"],
            ["settings", "show", "acme", "--json"],
        ):
            FIGURES["cli"] += 1
            done = manage(*args)
            outputs.append(done.stdout + done.stderr)
            assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["settings"]["refresh_erp_job_list"] is False
        # The data went over TLS into this very server.
        with server.client() as client:
            assert client.get(KeySpace(prefix).settings("acme")) is not None
        # Plain text to the TLS port, or TLS with an untrusted CA, fails with one line.
        plain = one_error_line(
            manage("company", "list", url=f"redis://:{PASSWORD}@127.0.0.1:{tls_port}/0")
        )
        assert "cannot reach Redis" in plain
        untrusted = one_error_line(
            manage("company", "list", url=f"rediss://:{PASSWORD}@127.0.0.1:{tls_port}/0")
        )
        assert "cannot reach Redis" in untrusted
        for text in [*outputs, plain, untrusted]:
            FIGURES["grepped"] += 1
            FIGURES["leaks"] += text.count(PASSWORD)
            assert PASSWORD not in text
    finally:
        server.kill()


@pytest.mark.integration
def test_a_refused_settings_change_touches_only_the_security_log(
    real: redis.Redis, prefix: str
) -> None:
    from erp_sync.control.store import SettingsStore
    from erp_sync.errors import PermissionDenied
    from tests.support.snapshot import snapshot

    keys = KeySpace(prefix)
    store = SettingsStore(real, keys)
    store.add_company("acme", "xero")
    store.grant("acme", "alice", "admin")
    store.grant("acme", "sam", "standard")
    before = snapshot(real, prefix)
    with pytest.raises(PermissionDenied):
        store.update_settings("acme", "sam", {"payments_for_synced_invoices": "hourly"})
    after = snapshot(real, prefix)
    [entry] = after.pop(keys.denied("acme"))
    assert after == before  # settings, version, audit and change stream untouched
    assert json.loads(entry)["new"] == {"payments_for_synced_invoices": "hourly"}


@pytest.mark.integration
@pytest.mark.processes
def test_a_password_given_as_a_query_parameter_works_for_the_cli_and_a_worker_and_never_shows(
    locked: RedisServer, prefix: str, tmp_path: Path
) -> None:
    """``redis://host:port/0?password=...`` (redis-py reads it) was a traceback in every
    worker (kombu takes ``password`` for its own keyword) and shown in error lines."""
    url = f"redis://127.0.0.1:{locked.port}/0?password={PASSWORD}"
    env = {"ERP_SYNC_REDIS_URL": url, "ERP_SYNC_KEY_PREFIX": prefix}
    manage = manage_in(env)
    FIGURES["cli"] += 1
    added = manage("company", "add", "acme", "--erp", "xero", "--admin", "alice")
    assert added.returncode == 0, added.stderr
    worker = procs.worker("worker-query-password", env, tmp_path, pool="solo", concurrency=1)
    try:
        worker.wait_for(" ready.", 60)
    finally:
        worker.stop()
    wrong = f"redis://127.0.0.1:{locked.port}/0?password=wrong-{PASSWORD}"
    err = one_error_line(manage("company", "list", url=wrong))
    FIGURES["processes"] += 1
    for text in (added.stdout + added.stderr, worker.output(), err):
        FIGURES["grepped"] += 1
        FIGURES["leaks"] += text.count(PASSWORD)
        assert PASSWORD not in text
