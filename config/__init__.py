"""Configuration only: process settings, the Redis key space, the stored models and their
validation. Imports nothing from ``erp_sync`` (the layer above); ``lint-imports`` checks it."""
