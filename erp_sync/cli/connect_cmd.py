"""``connect``, ``connection show|rotate-key|new-key`` and ``disconnect``: real ERP credentials.

Secrets come from files (``-`` reads stdin), never from the command line, where ``ps`` and shell
history would show them, and at most ``MAX_SECRET`` bytes of each are read; they are encrypted
before they reach Redis (``erp_sync.control.vault``) and no output, log line or audit entry ever
shows them (URLs are shown masked, ``config.urls``). Connecting and disconnecting need admin on
the company, checked early (so a non-admin's secret files are never read) and again in the
write's own transaction; a refusal of either is a row of the security log. ``rotate-key``
re-encrypts everything sealed (``erp_sync.control.sealed``) and is a row of the operator log.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime

import click

from config.models import AuditEntry, Erp, PermissionLevel
from config.urls import mask_url
from erp_sync.cli.context import Ctx, echo_json, pass_ctx
from erp_sync.cli.restore_cmd import Copied, copy_changed
from erp_sync.connectors.qbo import PRODUCTION_API, TOKEN_URL
from erp_sync.control.connections import Connection, ConnectionStore, Secrets
from erp_sync.control.inputs import user_id
from erp_sync.control.sealed import SealedSecrets, newest_key_only, unopenable
from erp_sync.control.unit import Denied
from erp_sync.control.vault import Vault, new_key
from erp_sync.db.config_copy import ConfigCopy
from erp_sync.errors import CorruptRecord, DatabaseError, InvalidInput, PermissionDenied
from erp_sync.infra.egress import erp_url

CONNECTABLE = (Erp.QUICKBOOKS_ONLINE.value,)
_REALM = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CLIENT_ID = re.compile(r"[\x21-\x7e]{1,200}")
MAX_SECRET = 4096
READ_LIMIT = MAX_SECRET + 2  # the longest secret and a line ending (``\r\n``)


def _secret(path: str, what: str, stdin_used: list[bool]) -> str:
    """A secret read from a file (``-``: stdin, once), trimmed; validated without echoing it.

    At most ``MAX_SECRET`` bytes and a line ending are read, from a file as from stdin: an
    endless input (``< /dev/zero``) is refused at once as too long instead of being read until
    memory runs out."""
    if path == "-":
        if stdin_used:
            raise InvalidInput("only one of the secret files can be - (stdin)")
        stdin_used.append(True)
        raw = sys.stdin.buffer.read(READ_LIMIT)
    else:
        try:
            with open(path, "rb") as handle:
                raw = handle.read(READ_LIMIT)
        except OSError as exc:
            raise InvalidInput(
                f"cannot read the {what} file {path[:100]!r}: {type(exc).__name__}"
            ) from None
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        value = "\x00"  # not text (or cut inside a character at the limit): refused below
    if not value:
        raise InvalidInput(f"the {what} file is empty")
    if len(value) > MAX_SECRET or any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidInput(
            f"the {what} must be one line of at most {MAX_SECRET} printable "
            "characters without spaces"
        )
    return value


@click.command("connect")
@click.argument("company_id", metavar="COMPANY")
@click.option("--as", "actor", required=True, metavar="USER", help="Acting user (admin).")
@click.option("--erp", required=True, type=click.Choice(CONNECTABLE), help="The ERP family.")
@click.option("--realm-id", required=True, help="The QuickBooks Online company (realm) id.")
@click.option("--client-id", required=True, help="The app's OAuth client id.")
@click.option(
    "--client-secret-file",
    required=True,
    metavar="FILE",
    help="File holding the OAuth client secret (- for stdin).",
)
@click.option(
    "--refresh-token-file",
    required=True,
    metavar="FILE",
    help="File holding the refresh token from the authorization (- for stdin).",
)
@click.option(
    "--base-url",
    default=PRODUCTION_API,
    show_default=True,
    help="The Accounting API (Intuit's sandbox, or a fake for tests and demos).",
)
@click.option(
    "--token-url", default=TOKEN_URL, show_default=True, help="The OAuth 2.0 token endpoint."
)
@pass_ctx
def connect(
    ctx: Ctx,
    company_id: str,
    actor: str,
    erp: str,
    realm_id: str,
    client_id: str,
    client_secret_file: str,
    refresh_token_file: str,
    base_url: str,
    token_url: str,
) -> None:
    """Connect COMPANY to its real ERP: its syncs then read it over HTTP."""
    user_id(actor)  # the one validator: it is written to the audit log
    company = ctx.store.get_company(company_id)
    requested: dict[str, object] = {
        "erp": erp,
        "realm_id": realm_id,
        "client_id": client_id,
        "base_url": mask_url(base_url),
        "token_url": mask_url(token_url),
    }
    # Early, so a non-admin's secret files are never read; checked again with the write.
    _require_admin(ctx, company_id, actor, "connection.connect", requested)
    if company.erp.value != erp:
        raise InvalidInput(
            f"{company_id!r} is on {company.erp.value}: only a {erp} company "
            f"can be connected to {erp}"
        )
    if not _REALM.fullmatch(realm_id):
        raise InvalidInput("--realm-id must be 1-64 letters, digits, '-' or '_'")
    if not _CLIENT_ID.fullmatch(client_id):
        raise InvalidInput("--client-id must be 1-200 printable characters without spaces")
    base, token = erp_url(base_url, "--base-url"), erp_url(token_url, "--token-url")
    stdin: list[bool] = []
    secrets = Secrets(
        client_secret=_secret(client_secret_file, "client secret", stdin),
        refresh_token=_secret(refresh_token_file, "refresh token", stdin),
    )
    store = ConnectionStore(
        ctx.client,
        ctx.keys,
        Vault.from_settings(),  # no key: no write
        store=ctx.store,
    )
    now = datetime.now(UTC)
    connection = Connection(
        company=company_id,
        erp=company.erp,
        realm_id=realm_id,
        client_id=client_id,
        base_url=base,
        token_url=token,
        connected_by=actor,
        connected_at=now,
    )
    old = store.get(company_id)
    store.save(
        connection,
        secrets,
        AuditEntry(
            at=now,
            actor=actor,
            action="connection.connect",
            company=company_id,
            old=_public(old) if old else {},
            new=_public(connection),
        ),
        requested,
    )
    click.echo(
        f"{company_id} connected to {erp} realm {realm_id} (client id {client_id}); "
        "its next syncs read it over HTTP"
    )


def _require_admin(
    ctx: Ctx, company_id: str, actor: str, action: str, requested: dict[str, object]
) -> None:
    """The CLI's early admin check; a refusal is written to the security log like the one
    the write's own transaction makes when a revocation races it."""
    try:
        ctx.store.require(company_id, actor, PermissionLevel.ADMIN)
    except PermissionDenied:
        ctx.store.record_denied(Denied(company_id, actor, action, requested))
        raise


def _public(connection: Connection) -> dict[str, str]:
    """What the audit log keeps of a connection: no secret, its URLs masked."""
    return {
        "erp": connection.erp.value,
        "realm_id": connection.realm_id,
        "client_id": connection.client_id,
        "base_url": mask_url(connection.base_url),
        "token_url": mask_url(connection.token_url),
    }


@click.group("connection")
def connection() -> None:
    """ERP connections: show one, rotate the encryption key."""


@connection.command("show")
@click.argument("company_id", metavar="COMPANY")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def connection_show(ctx: Ctx, company_id: str, as_json: bool) -> None:
    """COMPANY's connection, secrets masked (needs no key: nothing is decrypted)."""
    ctx.store.get_company(company_id)
    found = ConnectionStore(ctx.client, ctx.keys).require(company_id)
    shown = {
        **found.model_dump(mode="json"),
        "base_url": mask_url(found.base_url),
        "token_url": mask_url(found.token_url),
        "client_secret": "********",
        "refresh_token": "********",
    }
    if as_json:
        echo_json(shown)
        return
    for name, value in shown.items():
        click.echo(f"{name + ':':16} {value if value is not None else '-'}")


@connection.command("rotate-key")
@pass_ctx
def connection_rotate_key(ctx: Ctx) -> None:
    """Re-encrypt every stored secret (ERP credentials, cached access tokens, alert signing
    secrets) with the first key of ERP_SYNC_SECRET_KEY; recorded in the operator log. Then
    copy them to the database's copy of the configuration: only once the copy holds nothing
    the first key alone cannot open may the older keys go (a restore-from-db would otherwise
    bring back secrets no key opens)."""
    vault = Vault.from_settings()
    done = SealedSecrets(ctx.store, vault).rotate()
    counts = done.counts
    click.echo(
        f"re-encrypted {counts['connections']} connection(s), {counts['alert_secrets']} alert "
        f"signing secret(s) and {counts['access_tokens']} cached access token(s) with the "
        "newest key of ERP_SYNC_SECRET_KEY"
    )
    if done.unreadable:
        named = ", ".join(done.unreadable[:5]) + (", ..." if len(done.unreadable) > 5 else "")
        raise CorruptRecord(
            f"{len(done.unreadable)} stored secret(s) no key of ERP_SYNC_SECRET_KEY opens "
            f"({named}): keep the old key until they are replaced (connect, alert add)"
        )
    behind = _copy_rotated(ctx)
    if behind is not None:
        raise DatabaseError(
            f"the database's copy of the configuration {behind}: keep the old key in "
            "ERP_SYNC_SECRET_KEY (a restore-from-db would bring back secrets only it opens) and "
            "run rotate-key again once the database accepts writes"
        )
    click.echo("the database's copy holds them too: the older keys can now be removed")


def _copy_rotated(ctx: Ctx) -> str | None:
    """Copy what the rotation changed to the database now, then check the copy: None if
    everything sealed in it opens with the newest key alone, else what is wrong."""
    copied = Copied()
    for _ in range(1000):  # 1000 scopes a pass: a million companies at most
        copied = copy_changed(ctx.client, ctx.keys, ctx.db)
        if copied.error is not None or not copied.copied:
            break
    if copied.error is not None:
        return f"was not updated ({copied.error})"
    newest = newest_key_only()
    try:
        left = unopenable(ConfigCopy(ctx.db).all(), newest)
    except DatabaseError as exc:
        return f"cannot be read ({exc})"
    if left:
        named = ", ".join(left[:3]) + (", ..." if len(left) > 3 else "")
        return f"still holds {len(left)} secret(s) sealed with an older key ({named})"
    return None


@connection.command("new-key")
def connection_new_key() -> None:
    """Print a new key for ERP_SYNC_SECRET_KEY (store it like a password)."""
    click.echo(new_key())


@click.command("disconnect")
@click.argument("company_id", metavar="COMPANY")
@click.option("--as", "actor", required=True, metavar="USER", help="Acting user (admin).")
@pass_ctx
def disconnect(ctx: Ctx, company_id: str, actor: str) -> None:
    """Forget COMPANY's ERP credentials: its syncs go back to the sandbox ERP."""
    user_id(actor)
    ctx.store.get_company(company_id)
    store = ConnectionStore(ctx.client, ctx.keys, store=ctx.store)
    connected = store.get(company_id)
    requested: dict[str, object] = {"realm_id": connected.realm_id} if connected else {}
    _require_admin(ctx, company_id, actor, "connection.disconnect", requested)
    found = store.require(company_id)
    store.delete(
        company_id,
        AuditEntry(
            at=datetime.now(UTC),
            actor=actor,
            action="connection.disconnect",
            company=company_id,
            old=_public(found),
        ),
    )
    click.echo(
        f"{company_id} disconnected from {found.erp.value}; its syncs use the sandbox ERP again"
    )


COMMANDS = [connect, connection, disconnect]
