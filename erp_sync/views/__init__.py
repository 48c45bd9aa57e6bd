"""Read-only views of the fleet: ``status`` (one read of beats, lease, backlog, queues) and the
Prometheus ``metrics``. They change nothing."""
