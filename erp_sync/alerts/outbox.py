"""Webhook deliveries recorded with their incident and not yet queued: the alert outbox.

An incident and the deliveries it calls for (payload with its delivery id) are written in one
MULTI: the deliveries into the company's ``alert_outbox`` (``stage``), the company into the
fleet's index ``alert_outbox_due``. Each is queued right after and taken out (``send``). A worker
that dies in between leaves it there, and ``resend`` (run by the periodic stale check) queues
what waited longer than ``GRACE``, reading only the companies whose oldest waiting delivery is
due. The delivery task then posts a delivery once, whichever copy comes first
(``erp_sync.alerts.retries.claim``). Removing a company deletes its outbox with it.

The step before has the same shape: a finished run's outcome waits in the same outbox to be
evaluated (field ``run:<task id>``), written by ``run_finish.lua`` in the run's commit point and
indexed the same way. The worker evaluates it right after (``Evaluator.on_run`` takes it out in
the incident's MULTI); a worker killed in between, or a Redis error during the evaluation,
leaves it, and ``resend`` hands what waited past ``GRACE`` to ``evaluate``. Evaluating a run
twice counts it once (``KeySpace.alert_evaluated``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import redis

from config.alerts import AlertRule
from config.keys import KeySpace
from config.models import parse

Send = Callable[[AlertRule, dict[str, Any]], None]
# Evaluates a waiting run outcome (its JSON as run_finish.lua wrote it) and takes it out.
Evaluate = Callable[[dict[str, Any]], object]
RUN_FIELD = "run:"
Delivery = tuple[AlertRule, dict[str, Any]]
# A delivery still waiting this long after its incident was written lost its sender (queueing
# takes milliseconds): the periodic check queues it again.
GRACE = 10.0


class AlertOutbox:
    """The deployment's waiting webhook deliveries (client passed in)."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client, self.keys = client, keys

    def stage(
        self, pipe: redis.client.Pipeline, company: str, deliveries: Sequence[Delivery], now: float
    ) -> None:
        """Put ``deliveries`` in the company's outbox inside the caller's MULTI (the one that
        writes the incident calling for them), and index the company for ``resend``."""
        if not deliveries:
            return
        pipe.hset(
            self.keys.alert_outbox(company),
            mapping={
                str(m["delivery"]): json.dumps({"alert": r.id, "message": m, "at": now})
                for r, m in deliveries
            },
        )
        pipe.zadd(self.keys.alert_outbox_due, {company: now + GRACE}, nx=True)

    def send(self, send: Send, company: str, deliveries: Sequence[Delivery]) -> None:
        """Queue staged deliveries, each taken out once it is queued."""
        for rule, message in deliveries:
            send(rule, message)
            self.client.hdel(self.keys.alert_outbox(company), str(message["delivery"]))

    def pending(self, company: str, task_id: str) -> dict[str, Any] | None:
        """Run ``task_id``'s outcome if it still waits to be evaluated (None: evaluated, or
        never written)."""
        raw = self.client.hget(self.keys.alert_outbox(company), RUN_FIELD + task_id)
        try:
            return _run(raw) if raw is not None else None
        except (ValueError, KeyError, TypeError):
            self.client.hdel(self.keys.alert_outbox(company), RUN_FIELD + task_id)
            return None

    def evaluated(self, pipe: redis.client.Pipeline, company: str, task_id: str) -> None:
        """Take run ``task_id``'s waiting outcome out inside the caller's MULTI (the one that
        writes the incident counting it)."""
        pipe.hdel(self.keys.alert_outbox(company), RUN_FIELD + task_id)

    def taken(self, company: str, task_id: str) -> None:
        """Take run ``task_id``'s waiting outcome out (nothing of it to count)."""
        self.client.hdel(self.keys.alert_outbox(company), RUN_FIELD + task_id)

    def resend(
        self, send: Send, now: float, limit: int = 100, evaluate: Evaluate | None = None
    ) -> int:
        """Queue again the deliveries that waited past ``GRACE`` (their sender died); a rule
        removed meanwhile drops its delivery unposted; hand a run outcome that waited past it to
        ``evaluate`` (its worker died before evaluating it). Returns how many were queued."""
        queued = 0
        due = self.client.zrangebyscore(self.keys.alert_outbox_due, "-inf", now, start=0, num=limit)
        for company in (str(c) for c in due):
            box = self.keys.alert_outbox(company)
            for delivery, raw in self.client.hgetall(box).items():
                is_run = str(delivery).startswith(RUN_FIELD)
                try:
                    entry = json.loads(raw)
                    waited = now - float(entry["at"])
                    if is_run:
                        run = _run(raw)
                    else:
                        alert, message = str(entry["alert"]), dict(entry["message"])
                except (ValueError, KeyError, TypeError):
                    self.client.hdel(box, delivery)  # unreadable: it can never be sent
                    continue
                if waited < GRACE:
                    continue  # its sender may be queueing it right now
                if is_run:
                    if evaluate is not None:
                        evaluate(run)  # takes it out (a Redis error leaves it for next time)
                    continue
                rule = self.client.hget(self.keys.alerts(company), alert)
                if rule is not None:
                    send(parse(AlertRule, str(rule), "alert rule"), message)
                    queued += 1
                self.client.hdel(box, delivery)
            self._reindex(company)
        return queued

    def _reindex(self, company: str) -> None:
        """The company's place in the index: its oldest waiting delivery's, or none (under
        WATCH, so a delivery staged meanwhile is never left unindexed)."""
        box = self.keys.alert_outbox(company)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(box)  # type: ignore[no-untyped-call]
                    ats = [_at(str(v)) for v in pipe.hvals(box)]
                    pipe.multi()
                    if ats:
                        pipe.zadd(self.keys.alert_outbox_due, {company: min(ats) + GRACE})
                    else:
                        pipe.zrem(self.keys.alert_outbox_due, company)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue


def _run(raw: object) -> dict[str, Any]:
    """A waiting run outcome's fields (``ValueError``/``KeyError``/``TypeError`` if unreadable)."""
    run = json.loads(str(raw))["run"]
    if not isinstance(run, dict) or not run.get("task_id") or not run.get("company"):
        raise ValueError("not a run outcome")
    return run


def _at(raw: str) -> float:
    """When a waiting delivery was recorded (0: unreadable, so it is looked at at once)."""
    try:
        return float(json.loads(raw)["at"])
    except (ValueError, KeyError, TypeError):
        return 0.0
