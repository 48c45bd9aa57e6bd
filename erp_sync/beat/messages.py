"""Celery task messages built by beat itself, ready to push onto kombu's Redis queues.

Why not ``apply_async``: beat pushes the messages of a due batch *inside* the same fenced Lua
script that advances the due index, so "this slot is dispatched" and "its message is queued" are
one atomic step. A beat killed mid-burst leaves no slot half-done (neither lost nor re-sent by the
next leader), and a paused ex-leader cannot enqueue anything. It is also much faster: one round
trip per batch instead of one per task (RedBeat tops out near 1,000 dispatches/s).

What this copies is private to kombu and Celery: the JSON that kombu's Redis transport stores in
a queue's list (``Channel._put`` LPUSHes it, ``_brpop_read`` pops it; the envelope made by
``virtual.Channel.prepare_message`` and ``_inplace_augment_message``: the body base64-encoded,
a uuid4 delivery tag) around Celery's protocol-2 message. The headers come from Celery's own
``amqp.as_task_v2`` once per task name, so protocol details stay Celery's, and only the fields
that differ per message (id, root_id, kwargsrepr, body, delivery tag) are filled in.

``tests/test_celery_seam.py`` holds this to what Celery 5.7 / kombu 5.7 write for the same task
through the deployment's configuration (``app.send_task``, on a real redis-server): every field
equal but a short allow-list (delivery tag, origin, reply_to, kombu's unused ``expiration``),
then byte for byte, and a kombu consumer plus Celery's worker ``Request`` read beat's bytes as
the task. docs/upgrading-celery.md says what to check before the ``< 5.8`` pins move.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from celery import Celery

from config.keys import KeySpace
from config.models import SyncKind
from erp_sync.infra.slots import TASK_NAMES, queue_for, task_id, task_kwargs

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
# The ``ignore_result`` header: null, as ``send_task`` writes it, so the worker applies the
# task's own setting (task_ignore_result). ``as_task_v2``'s default, False, would override it:
# the worker would treat beat's tasks as keeping results while every other sender's do not.
IGNORE_RESULT = None
_ID, _KWARGSREPR, _BODY, _TAG = "\x00id\x00", "\x00kw\x00", "\x00body\x00", "\x00tag\x00"


class _Template:
    """``envelope`` of one task name with holes for the fields that differ per message."""

    def __init__(self, headers: dict[str, Any], queue: str) -> None:
        marked = {**headers, "id": _ID, "root_id": _ID, "kwargsrepr": _KWARGSREPR}
        text = envelope(marked, [], {}, queue, tag=_TAG)
        body = json.dumps(_BODY)  # the body is filled in whole (base64 of the JSON below)
        text = text.replace(
            json.dumps(base64.b64encode(json.dumps([[], {}, EMBED]).encode()).decode()), body
        )
        self.parts: list[str] = []
        self.holes: list[str] = []
        for piece in _split(text, [json.dumps(h)[1:-1] for h in (_ID, _KWARGSREPR, _BODY, _TAG)]):
            (self.holes if piece in _HOLES else self.parts).append(piece)

    def fill(self, tid: str, kwargs: dict[str, Any], tag: str) -> str:
        body = base64.b64encode(json.dumps([[], kwargs, EMBED]).encode()).decode()
        values = {
            _HOLES[0]: _escaped(tid),
            _HOLES[1]: _escaped(repr(kwargs)),
            _HOLES[2]: body,
            _HOLES[3]: tag,
        }
        out = [self.parts[0]]
        for hole, part in zip(self.holes, self.parts[1:], strict=True):
            out += (values[hole], part)
        return "".join(out)


_HOLES = [json.dumps(h)[1:-1] for h in (_ID, _KWARGSREPR, _BODY, _TAG)]


def _escaped(value: str) -> str:
    """``value`` as it appears inside a JSON string (what ``json.dumps`` writes)."""
    return json.dumps(value)[1:-1]


def _split(text: str, holes: list[str]) -> list[str]:
    """``text`` cut into literal parts and the holes between them, in order."""
    out: list[str] = []
    while True:
        found = [(text.find(h), h) for h in holes if h in text]
        if not found:
            return [*out, text]
        at, hole = min(found)
        out += (text[:at], hole)
        text = text[at + len(hole) :]


class MessageFactory:
    """Builds (queue key, raw message) pairs for scheduled slots."""

    def __init__(self, app: Celery, keys: KeySpace, origin: str) -> None:
        self.app, self.keys, self.origin = app, keys, origin
        self._headers: dict[SyncKind, dict[str, Any]] = {}
        for kind, name in TASK_NAMES.items():
            template = app.amqp.as_task_v2(
                "template", name, args=(), kwargs={}, origin=origin, ignore_result=IGNORE_RESULT
            )
            self._headers[kind] = dict(template.headers)
        self._queue = {kind: keys.queue(queue_for(kind)) for kind in SyncKind}
        self._templates: dict[SyncKind, _Template] = {}

    def queue_key(self, kind: SyncKind) -> str:
        return self._queue[kind]

    def build_many(
        self, company: str, kind: SyncKind, projects: Sequence[str | None], slot_ts: float
    ) -> list[str]:
        """The messages of one slot, one per target (``None``: the company-level task).

        Exactly what ``envelope`` makes, filled into a per-kind template instead of serialising
        the whole envelope for each message: a burst builds tens of thousands a second.
        """
        template = self._templates.get(kind)
        if template is None:
            template = self._templates[kind] = _Template(self._headers[kind], queue_for(kind))
        tags = os.urandom(16 * len(projects))
        return [
            template.fill(
                task_id(company, kind, p, slot_ts),
                task_kwargs(company, kind, p, slot_ts),
                str(uuid.UUID(bytes=tags[16 * n : 16 * n + 16], version=4)),
            )
            for n, p in enumerate(projects)
        ]

    def build_task(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        tid: str,
        queue: str,
        expires: datetime | None = None,
    ) -> str:
        """Any task's message (the app's own ``beat_schedule`` entries): headers made afresh."""
        template = self.app.amqp.as_task_v2(
            tid,
            name,
            args=tuple(args),
            kwargs=kwargs,
            origin=self.origin,
            expires=expires,
            ignore_result=IGNORE_RESULT,
        )
        return envelope(dict(template.headers), list(args), kwargs, queue)


def envelope(
    headers: dict[str, Any],
    args: list[Any],
    kwargs: dict[str, Any],
    queue: str,
    tag: str | None = None,
) -> str:
    """The message exactly as kombu's Redis transport stores it for ``queue``."""
    tid = headers["id"]
    body = json.dumps([args, kwargs, EMBED])
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": tid,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": tag or str(uuid.uuid4()),
            },
        }
    )
