"""Secrets at rest: encrypted with the deployment's key before they reach Redis.

Fernet (AES-128-CBC + HMAC-SHA256, from the ``cryptography`` package) under a ``MultiFernet`` of
the keys in ``ERP_SYNC_SECRET_KEY``: the first key encrypts, every key decrypts. Rotating is
putting a new key first, re-encrypting what is stored (``erp-sync connection rotate-key``: every
kind in the inventory of ``erp_sync.control.sealed``), then dropping the old key. Without a key
nothing can be stored: a clear error, never plaintext.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from config.env import get_settings
from erp_sync.errors import ConfigError, CorruptRecord


def new_key() -> str:
    """A fresh key for ``ERP_SYNC_SECRET_KEY``."""
    return Fernet.generate_key().decode()


class Vault:
    """Encrypts and decrypts small JSON secrets with the deployment's keys."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigError(
                "ERP_SYNC_SECRET_KEY is not set: stored secrets (ERP credentials, "
                "alert signing secrets) are encrypted "
                "and need it (generate one: erp-sync connection new-key)"
            )
        try:
            self._fernet = MultiFernet([Fernet(k.strip().encode()) for k in keys])
        except ValueError:
            raise ConfigError(
                "ERP_SYNC_SECRET_KEY must be Fernet keys (32 url-safe base64 "
                "bytes each, comma separated): generate one with "
                "erp-sync connection new-key"
            ) from None

    @classmethod
    def from_settings(cls) -> Vault:
        secret = get_settings().secret_key
        raw = secret.get_secret_value() if secret is not None else ""
        return cls([k for k in raw.split(",") if k.strip()])

    def seal(self, data: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(data, sort_keys=True).encode()).decode()

    def open(self, token: str, what: str) -> dict[str, Any]:
        try:
            data = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise CorruptRecord(
                f"{what} cannot be decrypted with ERP_SYNC_SECRET_KEY (was its "
                "key removed before `connection rotate-key` ran?)"
            ) from None
        if not isinstance(data, dict):
            raise CorruptRecord(f"{what} is not a secret record")
        return data

    def rotate(self, token: str) -> str:
        """The same secret, encrypted with the newest key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise CorruptRecord(
                "a stored secret cannot be decrypted with ERP_SYNC_SECRET_KEY"
            ) from None
