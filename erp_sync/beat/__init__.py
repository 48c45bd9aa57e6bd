"""The parts of the Redis beat scheduler: lease, due index, change feed, messages, sweep."""
