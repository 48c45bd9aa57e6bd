"""``metrics``: print the Prometheus metrics once, or serve them over HTTP for scraping."""

from __future__ import annotations

import time

import click
from prometheus_client import start_http_server

from erp_sync.cli.context import Ctx, pass_ctx
from erp_sync.views.metrics import registry_for, render


@click.group("metrics", invoke_without_command=True)
@click.pass_context
def metrics(click_ctx: click.Context) -> None:
    """Prometheus metrics: beat, due backlog, queue lengths, last run per sync kind."""
    if click_ctx.invoked_subcommand is None:
        ctx: Ctx = click_ctx.obj
        click.echo(render(ctx.client, ctx.keys), nl=False)


@metrics.command("serve")
@click.option("--port", default=9808, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on (0.0.0.0 inside a container).",
)
@pass_ctx
def serve(ctx: Ctx, port: int, address: str) -> None:
    """Serve /metrics for Prometheus until interrupted."""
    client = ctx.client  # fail now, with one clear line, if Redis is unreachable
    start_http_server(port, addr=address, registry=registry_for(client, ctx.keys))
    click.echo(f"serving metrics on http://{address}:{port}/metrics", err=True)
    while True:
        time.sleep(3600)


COMMANDS = [metrics]
