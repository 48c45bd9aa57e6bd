"""Failure alerts: webhook rules per company (``rules``), the run-outcome and staleness
evaluator (``evaluate``) and the webhook delivery that runs on the ``alerts`` queue
(``deliver``). Nothing here runs in beat's hot path."""
