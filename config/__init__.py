"""Process configuration, the Redis key space, the stored models and the settings store."""
