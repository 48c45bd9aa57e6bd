"""Running one sync on a worker: from the delivered task to the run's record.

``delivery`` checks a delivery before it runs (company removed or paused, slot already
executed, a sync of the same slot still running); ``runner`` runs it under its lock, kept alive
by ``keepalive``; ``syncs`` are the syncs themselves (connector in, database out); ``records``
keeps each run's working record in Redis. ``facts`` and ``locks`` own the replies of the run
scripts and the run lock's value (named results, one parser each). No Celery here: ``tasks/``
wraps it.
"""
