"""The management command: a click group of thin subcommands over one context object.

``Cli.main`` is the single place errors become output: any ``ErpSyncError``, usage error or Redis
failure prints one line on stderr and exits non-zero (2 for usage, 1 otherwise), never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
import redis

from erp_sync.cli.context import Ctx
from erp_sync.cli.restore_cmd import copy_after_command
from erp_sync.control.unit import changes_through
from erp_sync.errors import ErpSyncError
from erp_sync.infra.redis_client import redact


class Cli(click.Group):
    """A group whose ``main`` turns every expected failure into one line on stderr."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            _fail("aborted", 1)
        except click.exceptions.NoArgsIsHelpError as exc:  # `erp-sync` or `erp-sync company`
            if exc.ctx is not None:
                click.echo(exc.ctx.get_help())
            _fail("missing command (see the commands above)", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except ErpSyncError as exc:
            _fail(str(exc), 1)
        except redis.RedisError as exc:
            _fail(f"Redis failed during the command: {redact(str(exc).splitlines()[0])}", 1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str, code: int) -> None:
    # Some click messages span lines (e.g. "Choose from:\n\tnone,..."): the contract is one line.
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    click.echo(f"error: {one_line}", err=True)
    sys.exit(code)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Manage erp-sync: companies, projects, permissions, sync settings and schedules."""
    if ctx.obj is None:  # tests pass a Ctx holding their own client
        ctx.obj = Ctx()
    ctx.call_on_close(ctx.obj.close)
    # Registered last, so it runs first (before Redis closes): whatever the command changed is
    # copied to the database right away (erp_sync/cli/restore_cmd.py).
    before = changes_through(getattr(ctx.obj, "_client", None))  # a client a test passed in
    ctx.call_on_close(lambda: copy_after_command(ctx.obj, before))


def _register() -> None:
    from erp_sync.cli import (
        alert_cmd,
        beat_cmd,
        companies,
        connect_cmd,
        db_cmd,
        doctor_cmd,
        metrics_cmd,
        pause_cmd,
        restore_cmd,
        runs,
        settings_cmd,
    )

    for module in (
        companies,
        settings_cmd,
        beat_cmd,
        doctor_cmd,
        runs,
        metrics_cmd,
        db_cmd,
        connect_cmd,
        pause_cmd,
        alert_cmd,
        restore_cmd,
    ):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point (``erp-sync``) and ``python manage.py``."""
    cli.main(prog_name="erp-sync")
