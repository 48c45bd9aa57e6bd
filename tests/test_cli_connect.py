"""``erp-sync connect``, ``connection show|rotate-key|new-key`` and ``disconnect``.

In-process through click's ``CliRunner`` (``Cli.main``'s one-line errors included) and, for the
paths an admin types (a secret on stdin, no key configured), as a real ``manage.py`` subprocess.
Syncs after connecting run against the fake QuickBooks Online server over HTTP.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import httpx
import pytest
import redis
from click.testing import CliRunner
from cryptography.fernet import Fernet

from config.env import get_settings
from config.keys import KeySpace
from config.models import AuditEntry, Erp, SyncKind
from erp_sync.cli import cli
from erp_sync.cli.connect_cmd import _public
from erp_sync.cli.context import Ctx
from erp_sync.connectors import connector_for
from erp_sync.connectors.qbo import QboConnector, oauth
from erp_sync.connectors.qbo import http as qbo_http
from erp_sync.connectors.qbo.oauth import TokenManager
from erp_sync.connectors.sandbox import SandboxErp
from erp_sync.control.connections import Connection, ConnectionStore, Secrets
from erp_sync.control.lifecycle import Lifecycle
from erp_sync.control.permissions import Permissions
from erp_sync.control.store import SettingsStore
from erp_sync.control.vault import Vault
from erp_sync.db import Database, RecordStore
from erp_sync.errors import CorruptRecord, ErpServerError
from erp_sync.runs.delivery import Delivery
from erp_sync.runs.runner import Runner
from tests.support import procs
from tests.support.fake_qbo.client import FakeQbo, Seed
from tests.support.manage import manage
from tests.support.qbo import QboRealm, leaked, new_realm, qbo_company, sync, tokens
from tests.support.redisproc import RedisServer

pytestmark = pytest.mark.integration


class Invoke(Protocol):
    """Runs ``erp-sync <args>`` in-process; returns (exit code, stdout, stderr)."""

    def __call__(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]: ...


@pytest.fixture(scope="module")
def qbo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeQbo]:
    server = FakeQbo.start(tmp_path_factory.mktemp("fake_qbo"))
    yield server
    assert server.stop() == 0, server.log.read_text()


def set_key(env: pytest.MonkeyPatch, value: str | None) -> None:
    """Point ERP_SYNC_SECRET_KEY at ``value`` (None: unset) for this process's settings."""
    if value is None:
        env.delenv("ERP_SYNC_SECRET_KEY", raising=False)
    else:
        env.setenv("ERP_SYNC_SECRET_KEY", value)
    get_settings.cache_clear()


@pytest.fixture
def key(real: redis.Redis, env: pytest.MonkeyPatch) -> str:
    value = Fernet.generate_key().decode()
    set_key(env, value)
    return value


@pytest.fixture
def invoke(real: redis.Redis) -> Invoke:
    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        result = CliRunner().invoke(cli, list(args), input=stdin, obj=Ctx(_client=real))
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.fixture
def realm(real: redis.Redis, keys: KeySpace, qbo: FakeQbo) -> QboRealm:
    """A seeded realm and company ``acme`` on quickbooks_online (admin alice), not connected."""
    made = new_realm(qbo, Seed(vendors=40))
    qbo_company(real, keys)
    return made


def secret_files(tmp_path: Path, realm: QboRealm) -> tuple[str, str]:
    (tmp_path / "client_secret").write_text(realm.client_secret + "\n")
    (tmp_path / "refresh_token").write_text(realm.refresh_token + "\n")
    return str(tmp_path / "client_secret"), str(tmp_path / "refresh_token")


def connect_args(
    realm: QboRealm, secret: str, refresh: str, company: str = "acme", actor: str = "alice"
) -> list[str]:
    return [
        "connect",
        company,
        "--as",
        actor,
        "--erp",
        "quickbooks_online",
        "--realm-id",
        realm.realm_id,
        "--client-id",
        realm.client_id,
        "--client-secret-file",
        secret,
        "--refresh-token-file",
        refresh,
        "--base-url",
        realm.qbo.url,
        "--token-url",
        realm.qbo.token_url,
    ]


def nothing_written(
    client: redis.Redis, keys: KeySpace, audit_before: int, company: str = "acme"
) -> bool:
    return (
        not client.exists(keys.connection(company))
        and client.llen(keys.audit(company)) == audit_before
    )


def one_line_error(code: int, out: str, err: str) -> str:
    assert code != 0 and out == "", (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# --- connecting --------------------------------------------------------------------------------


def test_connect_stores_encrypted_secrets_and_no_output_shows_them(
    real: redis.Redis,
    keys: KeySpace,
    key: str,
    db: Database,
    realm: QboRealm,
    invoke: Invoke,
    tmp_path: Path,
) -> None:
    code, out, err = invoke(*connect_args(realm, *secret_files(tmp_path, realm)))
    assert (code, err) == (0, ""), err
    assert f"acme connected to quickbooks_online realm {realm.realm_id}" in out
    assert isinstance(
        connector_for(real, keys, SettingsStore(real, keys).get_company("acme")), QboConnector
    )
    # At rest: no secret in any Redis value of the connection.
    stored = json.dumps(real.hgetall(keys.connection("acme")))
    assert leaked(stored, {realm.client_secret, realm.refresh_token}) == []

    runner = Runner(real, keys, db=db, rng=random.Random(1))
    record = runner.execute(
        Delivery(
            task_id="v1",
            company="acme",
            kind=SyncKind.VENDORS,
            project=None,
            slot="2026-01-01T00:00:00+00:00",
        )
    )
    assert record.record is not None and record.record.status == "succeeded"
    assert len(RecordStore(db, "acme").all("vendors")) == 40
    seen = {realm.client_secret, realm.refresh_token} | tokens(real, keys)
    assert len(seen) == 4  # the secret, the first and the rotated refresh token, an access token

    outputs = {"connect": out}
    for args in (
        ["connection", "show", "acme"],
        ["connection", "show", "acme", "--json"],
        ["audit", "acme"],
        ["audit", "acme", "--json"],
        ["history", "acme", "--json"],
        ["history", "acme"],
    ):
        code, shown, err = invoke(*args)
        assert (code, err) == (0, ""), (args, err)
        outputs[" ".join(args)] = shown
    for name, text in outputs.items():
        assert leaked(text, seen) == [], name
    shown_json = json.loads(outputs["connection show acme --json"])
    assert shown_json["client_secret"] == shown_json["refresh_token"] == "********"
    assert (shown_json["status"], shown_json["realm_id"]) == ("connected", realm.realm_id)
    audit = json.loads(outputs["audit acme --json"])
    assert audit[0]["action"] == "connection.connect" and audit[0]["actor"] == "alice"
    assert audit[0]["os_user"]  # who ran the command on the host, in its own field
    assert audit[0]["new"]["client_id"] == realm.client_id


def test_connect_without_a_secret_key_is_one_clear_error_and_writes_nothing(
    real: redis.Redis,
    keys: KeySpace,
    env: pytest.MonkeyPatch,
    realm: QboRealm,
    invoke: Invoke,
    tmp_path: Path,
) -> None:
    set_key(env, None)
    before = real.llen(keys.audit("acme"))
    err = one_line_error(*invoke(*connect_args(realm, *secret_files(tmp_path, realm))))
    assert "ERP_SYNC_SECRET_KEY is not set" in err
    assert leaked(err, {realm.client_secret, realm.refresh_token}) == []
    assert nothing_written(real, keys, before)


def test_a_secret_cannot_come_from_the_command_line(
    real: redis.Redis, keys: KeySpace, key: str, realm: QboRealm, invoke: Invoke
) -> None:
    help_text = invoke("connect", "--help")[1]
    assert "--client-secret-file" in help_text and "--refresh-token-file" in help_text
    options = [w for w in help_text.split() if w.startswith("--")]
    assert not [
        o
        for o in options
        if ("secret" in o or "token" in o) and not o.endswith("-file") and o != "--token-url"
    ], options
    before = real.llen(keys.audit("acme"))
    for option in ("--client-secret", "--refresh-token"):
        code, _, err = invoke(
            "connect",
            "acme",
            "--as",
            "alice",
            "--erp",
            "quickbooks_online",
            "--realm-id",
            realm.realm_id,
            "--client-id",
            realm.client_id,
            option,
            realm.client_secret,
        )
        assert code == 2 and "No such option" in err and err.count("\n") == 1, err
        assert realm.client_secret not in err
    assert nothing_written(real, keys, before)


@pytest.mark.parametrize("case", ["empty", "missing", "two stdins", "spaces"])
def test_a_bad_secret_file_is_a_one_line_error_and_writes_nothing(
    real: redis.Redis,
    keys: KeySpace,
    key: str,
    realm: QboRealm,
    invoke: Invoke,
    tmp_path: Path,
    case: str,
) -> None:
    secret, refresh = secret_files(tmp_path, realm)
    stdin = None
    if case == "empty":
        (tmp_path / "empty").write_text("\n  \n")
        secret, expected = str(tmp_path / "empty"), "the client secret file is empty"
    elif case == "missing":
        refresh, expected = str(tmp_path / "nope"), "cannot read the refresh token file"
    elif case == "two stdins":
        secret = refresh = "-"
        stdin, expected = f"{realm.client_secret}\n", "only one of the secret files can be -"
    else:
        (tmp_path / "spaced").write_text(f"{realm.client_secret} and more\n")
        secret, expected = str(tmp_path / "spaced"), "must be one line"
    before = real.llen(keys.audit("acme"))
    err = one_line_error(*invoke(*connect_args(realm, secret, refresh), stdin=stdin))
    assert expected in err
    assert leaked(err, {realm.client_secret, realm.refresh_token}) == []
    assert nothing_written(real, keys, before)


def test_only_an_admin_can_connect_and_only_a_quickbooks_online_company(
    real: redis.Redis, keys: KeySpace, key: str, realm: QboRealm, invoke: Invoke, tmp_path: Path
) -> None:
    files = secret_files(tmp_path, realm)
    store = SettingsStore(real, keys)
    store.grant("acme", "sam", "standard")
    before = real.llen(keys.audit("acme"))
    err = one_line_error(*invoke(*connect_args(realm, *files, actor="sam")))
    assert "sam" in err
    assert nothing_written(real, keys, before)

    store.add_company("steel", "xero")
    store.grant("steel", "alice", "admin")
    before = real.llen(keys.audit("steel"))
    err = one_line_error(*invoke(*connect_args(realm, *files, company="steel")))
    assert "'steel' is on xero" in err
    assert nothing_written(real, keys, before, "steel")


# --- keys, reconnects and disconnecting --------------------------------------------------------


def test_rotate_key_re_encrypts_so_syncs_work_with_only_the_new_key(
    real: redis.Redis,
    keys: KeySpace,
    key: str,
    env: pytest.MonkeyPatch,
    db: Database,
    realm: QboRealm,
    invoke: Invoke,
    tmp_path: Path,
) -> None:
    assert invoke(*connect_args(realm, *secret_files(tmp_path, realm)))[0] == 0
    assert sync(real, keys, db, SyncKind.VENDORS).created == 40
    code, new_key, _ = invoke("connection", "new-key")
    new_key = new_key.strip()
    assert code == 0 and Vault([new_key]) is not None and new_key != key

    set_key(env, f"{new_key},{key}")  # the new key first: it encrypts, both decrypt
    code, out, err = invoke("connection", "rotate-key")
    assert (code, err) == (0, ""), err
    assert "re-encrypted 1 connection(s)" in out

    sealed = str(real.hget(keys.connection("acme"), "secret"))
    with pytest.raises(CorruptRecord):
        Vault([key]).open(sealed, "secret")  # the old key alone can no longer read it
    set_key(env, new_key)  # the old key dropped
    realm.qbo.change(realm.realm_id, "Vendor", "3", {"DisplayName": "After Rotation LLC"})
    counts = sync(real, keys, db, SyncKind.VENDORS)
    assert counts.updated == 1
    assert RecordStore(db, "acme").all("vendors")["3"]["name"] == "After Rotation LLC"
    secrets, _ = ConnectionStore(real, keys).secrets("acme")
    assert secrets.refresh_token == realm.live_refresh_token()  # rotations kept being stored


def test_a_revoked_connection_shows_reconnect_required_and_reconnecting_clears_it(
    real: redis.Redis,
    keys: KeySpace,
    key: str,
    db: Database,
    realm: QboRealm,
    invoke: Invoke,
    tmp_path: Path,
) -> None:
    assert invoke(*connect_args(realm, *secret_files(tmp_path, realm)))[0] == 0
    realm.qbo.switches(realm.realm_id, revoke_refresh_token=True)
    runner = Runner(real, keys, db=db, rng=random.Random(1))
    outcome = runner.execute(
        Delivery(
            task_id="r1",
            company="acme",
            kind=SyncKind.VENDORS,
            project=None,
            slot="2026-01-01T00:00:00+00:00",
        )
    )
    assert outcome.record is not None and outcome.record.status == "failed"
    code, out, _ = invoke("connection", "show", "acme")
    assert code == 0 and "reconnect_required" in out
    assert "reconnect QuickBooks Online for acme" in out

    # A new authorization (a fresh refresh token) and `connect` again: syncs work again.
    fresh = f"rt-again-{realm.realm_id}"
    realm.qbo.switches(realm.realm_id, set_refresh_token=fresh)
    (tmp_path / "refresh_token").write_text(fresh)
    assert (
        invoke(
            *connect_args(realm, str(tmp_path / "client_secret"), str(tmp_path / "refresh_token"))
        )[0]
        == 0
    )
    assert json.loads(invoke("connection", "show", "acme", "--json")[1])["status"] == "connected"
    assert sync(real, keys, db, SyncKind.VENDORS).created == 40


def test_disconnect_puts_the_company_back_on_the_sandbox_and_is_audited(
    real: redis.Redis, keys: KeySpace, key: str, realm: QboRealm, invoke: Invoke, tmp_path: Path
) -> None:
    assert invoke(*connect_args(realm, *secret_files(tmp_path, realm)))[0] == 0
    SettingsStore(real, keys).grant("acme", "sam", "standard")
    one_line_error(*invoke("disconnect", "acme", "--as", "sam"))
    assert real.exists(keys.connection("acme"))
    code, out, err = invoke("disconnect", "acme", "--as", "alice")
    assert (code, err) == (0, ""), err
    assert "sandbox" in out
    company = SettingsStore(real, keys).get_company("acme")
    assert isinstance(connector_for(real, keys, company), SandboxErp)
    assert not real.exists(keys.connection("acme"), keys.access_token("acme"))
    one_line_error(*invoke("connection", "show", "acme"))
    audit = json.loads(invoke("audit", "acme", "--json")[1])
    actions = [e["action"] for e in audit if e["action"].startswith("connection.")]
    assert actions == ["connection.disconnect", "connection.connect"]
    assert leaked(json.dumps(audit), {realm.client_secret, realm.refresh_token}) == []


# --- as an admin types it: a real subprocess ---------------------------------------------------


def test_connect_reads_a_secret_from_stdin_and_refuses_without_a_key_in_a_real_process(
    real: redis.Redis,
    keys: KeySpace,
    key: str,
    redis_server: RedisServer,
    realm: QboRealm,
    prefix: str,
    tmp_path: Path,
) -> None:
    _, refresh = secret_files(tmp_path, realm)
    env = {"ERP_SYNC_REDIS_URL": redis_server.url, "ERP_SYNC_KEY_PREFIX": prefix}
    args = connect_args(realm, "-", refresh)
    before = real.llen(keys.audit("acme"))
    refused = manage(env, *args, stdin=realm.client_secret)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: ERP_SYNC_SECRET_KEY is not set")
    assert refused.stderr.count("\n") == 1
    assert nothing_written(real, keys, before)

    env["ERP_SYNC_SECRET_KEY"] = key
    done = manage(env, *args, stdin=realm.client_secret + "\n")
    assert done.returncode == 0, done.stderr
    secrets, _ = ConnectionStore(real, keys).secrets("acme")
    assert (secrets.client_secret, secrets.refresh_token) == (
        realm.client_secret,
        realm.refresh_token,
    )
    shown = manage(env, "connection", "show", "acme", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["client_secret"] == "********"
    for result in (refused, done, shown):
        assert (
            leaked(result.stdout + result.stderr, {realm.client_secret, realm.refresh_token}) == []
        )


def _limited_memory() -> None:
    """In the child: at most 2 GiB of address space, so an unbounded read of /dev/zero fails
    there (a MemoryError traceback) instead of exhausting the machine's memory."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_a_secret_on_stdin_is_read_only_up_to_its_limit_so_dev_zero_is_one_error_line(
    real: redis.Redis,
    keys: KeySpace,
    key: str,
    redis_server: RedisServer,
    realm: QboRealm,
    prefix: str,
    tmp_path: Path,
) -> None:
    _, refresh = secret_files(tmp_path, realm)
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SECRET_KEY": key,
    }
    before = real.llen(keys.audit("acme"))
    with open("/dev/zero", "rb") as zero:
        done = subprocess.run(
            [sys.executable, "manage.py", *connect_args(realm, "-", refresh)],
            cwd=procs.ROOT,
            env=procs.process_env(env),
            stdin=zero,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            preexec_fn=_limited_memory,
        )
    err = one_line_error(done.returncode, done.stdout, done.stderr)
    assert "the client secret must be one line of at most 4096 printable characters" in err
    assert nothing_written(real, keys, before)


# --- refused and raced: the check is in the same step as the write ---------------------------


def denied_actions(invoke: Invoke, company: str = "acme") -> list[str]:
    code, out, err = invoke("audit", company, "--denied", "--json")
    assert code == 0, err
    return [str(e["action"]) for e in json.loads(out)]


def test_a_refused_connect_or_disconnect_leaves_a_row_in_the_security_log(
    real: redis.Redis, keys: KeySpace, key: str, realm: QboRealm, invoke: Invoke, tmp_path: Path
) -> None:
    SettingsStore(real, keys).grant("acme", "sam", "standard")
    files = secret_files(tmp_path, realm)
    one_line_error(*invoke(*connect_args(realm, *files, actor="sam")))
    assert denied_actions(invoke) == ["connection.connect.denied"]
    assert invoke(*connect_args(realm, *files))[0] == 0
    one_line_error(*invoke("disconnect", "acme", "--as", "sam"))
    assert denied_actions(invoke) == ["connection.disconnect.denied", "connection.connect.denied"]
    _, out, _ = invoke("audit", "acme", "--denied", "--json")
    row = json.loads(out)[1]
    assert row["actor"] == "sam" and row["new"]["realm_id"] == realm.realm_id
    assert leaked(out, {realm.client_secret, realm.refresh_token}) == []
    assert real.exists(keys.connection("acme"))


def _open_fifo_for_writing(path: Path, child: subprocess.Popen[str]) -> int:
    """Open ``path`` (a FIFO) once ``child`` opened it to read (so it is past its early
    checks and waiting for the secret); fails if the child exits first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        assert child.poll() is None, child.communicate()
        time.sleep(0.02)
    raise AssertionError("connect never opened its secret file")


@pytest.mark.parametrize("meanwhile", ["revoked", "company removed"])
def test_connect_checks_admin_and_company_in_the_same_step_as_the_write(
    real: redis.Redis,
    keys: KeySpace,
    key: str,
    redis_server: RedisServer,
    realm: QboRealm,
    prefix: str,
    tmp_path: Path,
    meanwhile: str,
) -> None:
    """A real ``connect`` passes its early checks and waits on its secret file (a FIFO); the
    admin is demoted, or the company removed, before the secret arrives: nothing is written."""
    _, refresh = secret_files(tmp_path, realm)
    fifo = tmp_path / "client_secret.fifo"
    os.mkfifo(fifo)
    env = {
        "ERP_SYNC_REDIS_URL": redis_server.url,
        "ERP_SYNC_KEY_PREFIX": prefix,
        "ERP_SYNC_SECRET_KEY": key,
    }
    store = SettingsStore(real, keys)
    store.grant("acme", "bob", "admin")
    before = real.llen(keys.audit("acme"))
    child = subprocess.Popen(
        [sys.executable, "manage.py", *connect_args(realm, str(fifo), refresh)],
        cwd=procs.ROOT,
        env=procs.process_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        writer = _open_fifo_for_writing(fifo, child)
        if meanwhile == "revoked":
            Permissions(store).revoke("acme", "alice", "bob")
            before += 1  # the revocation's own audit entry
        else:
            Lifecycle(store).remove_company("acme", "bob")
        os.write(writer, f"{realm.client_secret}\n".encode())
        os.close(writer)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    one_line_error(child.returncode, out, err)
    assert not real.exists(keys.connection("acme"), keys.access_token("acme"))
    if meanwhile == "revoked":
        assert "alice" in err and "admin" in err
        assert nothing_written(real, keys, before)
        denied = [json.loads(e)["action"] for e in real.lrange(keys.denied("acme"), 0, -1)]
        assert denied == ["connection.connect.denied"]
    else:
        assert "unknown company 'acme'" in err
        actions = [json.loads(e)["action"] for e in real.lrange(keys.audit("acme"), 0, -1)]
        assert "connection.connect" not in actions


@pytest.mark.parametrize("meanwhile", ["revoked", "company removed"])
def test_disconnect_checks_admin_and_company_in_the_same_step_as_the_write(
    real: redis.Redis,
    keys: KeySpace,
    key: str,
    realm: QboRealm,
    invoke: Invoke,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: str,
) -> None:
    assert invoke(*connect_args(realm, *secret_files(tmp_path, realm)))[0] == 0
    store = SettingsStore(real, keys)
    store.grant("acme", "bob", "admin")
    read = ConnectionStore.require

    def racing(self: ConnectionStore, company: str) -> Connection:
        """The CLI's read between its early checks and the write: the race happens here."""
        found = read(self, company)
        if meanwhile == "revoked":
            Permissions(store).revoke("acme", "alice", "bob")
        else:
            Lifecycle(store).remove_company("acme", "bob")
        return found

    monkeypatch.setattr(ConnectionStore, "require", racing)
    err = one_line_error(*invoke("disconnect", "acme", "--as", "alice"))
    audit = [json.loads(e)["action"] for e in real.lrange(keys.audit("acme"), 0, -1)]
    assert "connection.disconnect" not in audit
    if meanwhile == "revoked":
        assert "alice" in err
        assert real.exists(keys.connection("acme"))  # still connected: nothing written
        denied = [json.loads(e)["action"] for e in real.lrange(keys.denied("acme"), 0, -1)]
        assert denied == ["connection.disconnect.denied"]
    else:
        assert "unknown company 'acme'" in err


def test_connection_show_and_the_audit_mask_secrets_in_the_erp_urls(
    real: redis.Redis, keys: KeySpace, key: str, realm: QboRealm, invoke: Invoke
) -> None:
    """However a URL with a secret got stored (an older release took any URL), what is shown
    has it masked: the userinfo password and secret-bearing query parameters."""
    hidden = "pw-in-the-url"
    connection = Connection(
        company="acme",
        erp=Erp.QUICKBOOKS_ONLINE,
        realm_id=realm.realm_id,
        client_id=realm.client_id,
        base_url=f"https://u:{hidden}@erp.example/v3?api_key={hidden}",
        token_url=f"https://erp.example/token?Token={hidden}",
        connected_by="alice",
        connected_at=datetime.now(UTC),
    )
    store = ConnectionStore(real, keys, Vault([key]))
    store.save(
        connection,
        Secrets(client_secret=realm.client_secret, refresh_token=realm.refresh_token),
        AuditEntry(
            at=datetime.now(UTC),
            actor="alice",
            action="connection.connect",
            company="acme",
            new=_public(connection),
        ),
    )
    outputs = [
        invoke("connection", "show", "acme")[1],
        invoke("connection", "show", "acme", "--json")[1],
        invoke("audit", "acme", "--json")[1],
    ]
    for out in outputs:
        assert hidden not in out and "***" in out, out
    shown = json.loads(outputs[1])
    assert shown["base_url"] == "https://u:***@erp.example/v3?api_key=***"


def test_a_token_refresh_in_flight_during_a_reconnect_does_not_undo_it(
    real: redis.Redis,
    keys: KeySpace,
    key: str,
    qbo: FakeQbo,
    realm: QboRealm,
    invoke: Invoke,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker's refresh gets Intuit's answer (a rotated refresh token of the old realm) just
    after an admin reconnected the company to another realm: the answer is not stored, the new
    connection's secrets stay (``connect`` used to restart the generation at 1, so the old
    refresh's compare-and-set passed and stored the old realm's token beside the new secret)."""
    assert invoke(*connect_args(realm, *secret_files(tmp_path, realm)))[0] == 0
    other = new_realm(qbo, Seed(vendors=3))
    (tmp_path / "other").mkdir()
    reconnect = connect_args(other, *secret_files(tmp_path / "other", other))
    real_request = qbo_http.request

    def answered_then_reconnected(method: str, url: str, **kwargs: object) -> httpx.Response:
        answer = real_request(method, url, **kwargs)
        if url == realm.qbo.token_url:  # Intuit answered the old realm's refresh
            assert invoke(*reconnect)[0] == 0  # the admin reconnects meanwhile
        return answer

    monkeypatch.setattr(oauth, "request", answered_then_reconnected)
    manager = TokenManager(real, keys, ConnectionStore(real, keys), "acme")
    with pytest.raises(ErpServerError, match="changed during a token refresh"):
        manager.token()
    secrets, _ = ConnectionStore(real, keys).secrets("acme")
    assert (secrets.client_secret, secrets.refresh_token) == (
        other.client_secret,
        other.refresh_token,
    )
    assert ConnectionStore(real, keys).require("acme").realm_id == other.realm_id
    assert realm.live_refresh_token() != realm.refresh_token  # the old realm did rotate


@pytest.mark.parametrize("rotated", [True, False], ids=["token rotated", "same token"])
def test_a_token_refresh_in_flight_during_a_company_remove_writes_nothing_back(
    rotated: bool,
    real: redis.Redis,
    keys: KeySpace,
    key: str,
    realm: QboRealm,
    invoke: Invoke,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Intuit answers a worker's refresh just after the company was removed: neither the
    rotated refresh token nor the access token is stored for the removed id (the access token
    was cached with a plain SET, which a company added later under the id would have used)."""
    assert invoke(*connect_args(realm, *secret_files(tmp_path, realm)))[0] == 0
    real_request = qbo_http.request

    def answered_then_removed(method: str, url: str, **kwargs: object) -> httpx.Response:
        answer = real_request(method, url, **kwargs)
        if url != realm.qbo.token_url:
            return answer
        assert invoke("company", "remove", "acme", "--as", "alice", "--yes")[0] == 0
        if not rotated:  # Intuit may answer with the same refresh token (it rotates daily)
            body = {**answer.json(), "refresh_token": realm.refresh_token}
            return httpx.Response(answer.status_code, json=body, request=answer.request)
        return answer

    monkeypatch.setattr(oauth, "request", answered_then_removed)
    manager = TokenManager(real, keys, ConnectionStore(real, keys), "acme")
    if rotated:
        with pytest.raises(ErpServerError, match="changed during a token refresh"):
            manager.token()
    else:
        manager.token()  # this sync's token is good; it is only not kept for the removed id
    assert not real.exists(keys.connection("acme"), keys.access_token("acme"))


@pytest.mark.parametrize(
    ("option", "url", "expected"),
    [
        ("--base-url", "http://169.254.169.254/latest/meta-data", "internal"),
        ("--base-url", "http://10.0.0.5/v3", "internal"),
        ("--token-url", "http://[::ffff:10.0.0.5]/token", "internal"),
        ("--token-url", "http://0x0a000005/token", "internal"),
        ("--base-url", "http://u:hunter2x@erp.example/v3", "credentials"),
        ("--base-url", "https://erp.example/v3?", "?"),
        ("--token-url", "https://erp.example/token#", "#"),
        ("--base-url", "ftp://erp.example/v3", "http(s)"),
    ],
)
def test_an_erp_url_aimed_inside_or_carrying_secrets_or_a_chosen_path_is_refused(
    real: redis.Redis,
    keys: KeySpace,
    key: str,
    realm: QboRealm,
    invoke: Invoke,
    tmp_path: Path,
    option: str,
    url: str,
    expected: str,
) -> None:
    """``connect`` checks its URLs with the outbound policy (``erp_sync.infra.egress.erp_url``)
    before anything is read or written: an internal target, a password in the URL (printed by
    ``connection show`` and httpx's log, and turning the Bearer token into Basic auth), and a
    trailing ``?``/``#`` (letting the admin pick the exact path requested) are one line each."""
    args = connect_args(realm, *secret_files(tmp_path, realm))
    args[args.index(option) + 1] = url
    before = real.llen(keys.audit("acme"))
    err = one_line_error(*invoke(*args))
    assert option in err and expected in err, err
    assert "hunter2x" not in err  # the password is not echoed
    assert nothing_written(real, keys, before)
