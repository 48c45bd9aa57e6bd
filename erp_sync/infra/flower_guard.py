"""The app's Flower never starts open, and its ``/metrics`` asks for the same login as its pages.

Flower (``celery -A worker flower``) starts without any login when no auth option is given, with
no warning; and it serves ``/metrics`` without checking the login even when one is set (every
other page and API handler of Flower 2.2 is ``@web.authenticated``, ``flower.views.monitor.
Metrics`` is not). Its task list shows every company's sync arguments and its API can revoke
tasks and shut workers down, so an open Flower is an open control panel.

When the check runs: Celery's ``import_modules`` signal, which Flower's app sends while it is
being built (``Flower.__init__`` calls ``capp.loader.import_default_modules()``). By then Flower
has read its options from every source (``FLOWER_*`` variables, the command line, its config
file), and it has not bound its port yet. Worker and beat send the same signal; the click
context says which command is running. The check is the app's, so it holds wherever the app is
started from (a check in ``flowerconfig.py`` would hold only in the directory that has it, and
not with ``--conf``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from config.env import get_settings
from config.errors import ConfigError

log = logging.getLogger("erp_sync.flower")
EXIT_REFUSED = 2
NO_LOGIN = (
    "no login configured: set FLOWER_BASIC_AUTH=user:password (or --basic-auth=user:password, "
    "or --auth with OAuth), or ERP_SYNC_FLOWER_ALLOW_OPEN=true to start it open"
)
BAD_BASIC_AUTH = (
    "FLOWER_BASIC_AUTH (or --basic-auth) must be user:password[,user:password], "
    "each with a user and a password"
)
_GUARDED = "_erp_sync_login_required"


def login_problem(basic_auth: Sequence[str] | None, oauth: str | None) -> str | None:
    """Why Flower with these options would have no usable login; ``None`` when it has one.

    A basic-auth entry without a password (``admin``, ``admin:``) is refused rather than taken
    as a login: Flower compares the whole ``user:password`` string, so such an entry is a typo.
    """
    entries = list(basic_auth or [])
    if entries:
        return None if all(_credential(e) for e in entries) else BAD_BASIC_AUTH
    return None if oauth else NO_LOGIN


def _credential(entry: str) -> bool:
    user, colon, password = entry.partition(":")
    return bool(user.strip() and colon and password)


def running_flower() -> bool:
    """Whether this process is running ``celery ... flower`` (the click command of Flower)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.info_name != "flower":
        return False
    from flower.command import flower as flower_command

    return ctx.command is flower_command


def check_flower_start(**_: Any) -> None:
    """Refuse to let Flower listen without a login unless ERP_SYNC_FLOWER_ALLOW_OPEN; guard
    ``/metrics``. A receiver of ``celery.signals.import_modules`` (worker.py connects it)."""
    if not running_flower():
        return
    from tornado.options import options

    problem = login_problem(options.basic_auth, options.auth)
    if problem == BAD_BASIC_AUTH:
        refuse(problem)
    if problem is not None:
        try:
            allow_open = get_settings().flower_allow_open
        except ConfigError as exc:
            refuse(str(exc))
        if not allow_open:
            refuse(problem)
        log.warning(
            "Flower starts with no login (ERP_SYNC_FLOWER_ALLOW_OPEN=true): anyone who reaches "
            "its port sees every task and can revoke tasks and shut workers down"
        )
    require_login_for_metrics()


def require_login_for_metrics() -> None:
    """Give Flower's ``/metrics`` handler the login check its other handlers have.

    Patched on the handler class (looked up per request, so it also holds for an app built
    before); refused when ``/metrics`` is no longer served by that class, so a Flower upgrade
    that moves it fails closed instead of serving it open.
    """
    from flower.urls import handlers
    from flower.views.monitor import Metrics
    from tornado import web

    served = [h for h in handlers if isinstance(h, tuple) and h[0] == r"/metrics"]
    if [h[1] for h in served] != [Metrics]:
        refuse("cannot put Flower's /metrics behind its login (Flower's routes changed)")
    if getattr(Metrics.get, _GUARDED, False):
        return
    guarded = web.authenticated(Metrics.get)
    setattr(guarded, _GUARDED, True)
    Metrics.get = guarded


def refuse(reason: str) -> NoReturn:
    """One line on stderr and a non-zero exit, before Flower binds its port."""
    print(f"flower not started: {reason}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_REFUSED)
