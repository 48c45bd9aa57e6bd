"""The management command in-process, through click's ``CliRunner``, on a client the test gives."""

from __future__ import annotations

from typing import Protocol

import redis
from click.testing import CliRunner

from erp_sync.cli import cli
from erp_sync.cli.context import Ctx
from erp_sync.infra.publish import Publisher


class Invoke(Protocol):
    """Runs ``erp-sync <args>``; returns (exit code, stdout, stderr)."""

    def __call__(self, *args: str) -> tuple[int, str, str]: ...


def invoker(client: redis.Redis, publisher: Publisher | None = None) -> Invoke:
    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(cli, list(args), obj=Ctx(_client=client, _publisher=publisher))
        return result.exit_code, result.stdout, result.stderr

    return invoke
