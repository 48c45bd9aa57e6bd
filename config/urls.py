"""The one way a URL is shown: every secret-bearing part masked.

A URL can carry a secret in two places: the password of its userinfo (``redis://:pw@h``) and its
query or fragment parameters (``?password=``, ``&access_token=``, ``#sig=``, S3's
``X-Amz-Signature``). Redis, SQLAlchemy, kombu and httpx all accept the query form, and masking
only the userinfo (what ``make_url(...).render_as_string(hide_password=True)`` and Celery's
``maybe_sanitize_url`` do) printed ``?password=`` in error lines. Every place that shows a URL
(error lines about ``ERP_SYNC_REDIS_URL`` and ``ERP_SYNC_DATABASE_URL``, ``connection show``,
the audit log) calls ``mask_url``; a message that may hold URLs calls ``mask_urls``. A webhook
URL (alert lists and audit, outgoing request log lines) is shown by ``mask_webhook_url``, which
also hides its path: some receivers carry their secret there.

It works on the text, not on a parse: a malformed URL (a bad port, an unknown dialect, a
password with a ``#`` in it) is masked too, never raises, and everything that is not a secret is
shown as it was given, so the operator still sees which URL is wrong. In ``config`` because the
stored models' public views (``config.alerts``) need it as much as ``erp_sync`` does.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"

# Parameter names that carry a secret, compared without case, ``-`` read as ``_``; a name ending
# in ``_`` and one of these (``client_secret``, ``x_amz_signature``) carries one too.
SECRET_NAMES = frozenset(
    {
        "password",
        "pass",
        "passwd",
        "pwd",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "secret",
        "client_secret",
        "key",
        "api_key",
        "apikey",
        "sig",
        "signature",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "session",
    }
)
_SECRET_SUFFIXES = (
    "_password",
    "_passwd",
    "_pwd",
    "_token",
    "_secret",
    "_key",
    "_sig",
    "_signature",
    "_auth",
    "_credential",
)

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# A parameter: its separator, its name and its value (up to the next separator).
_PARAM = re.compile(r"([?&;#])([^=&;#?]*)=([^&;#]*)")
# A URL inside a message: a scheme and everything up to whitespace or a quote, less the
# punctuation that ends a sentence ("cannot reach Redis at redis://h/0: refused").
_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*[^\s'\"<>:.,;)\]]")


def secret_name(name: str) -> bool:
    """Whether a query or fragment parameter called ``name`` carries a secret."""
    plain = unquote(name).strip().lower().replace("-", "_")
    return plain in SECRET_NAMES or plain.endswith(_SECRET_SUFFIXES)


def mask_url(url: str) -> str:
    """``url`` with its userinfo password and every secret-bearing parameter's value replaced
    by ``***`` (``redis://u:***@h/0?password=***&db=1``); nothing else changes."""
    found = _SCHEME.match(url)
    start = found.end() if found else 0
    rest = url[start:]
    # The userinfo ends at the last "@" before the query: a password holding an unescaped
    # "/" or "#" (which a parser would take for the path or the fragment) is masked too.
    query = rest.find("?")
    at = rest.rfind("@", 0, query if query >= 0 else len(rest))
    if found and at >= 0:
        user, colon, _password = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{MASK}{rest[at:]}"
    return url[:start] + _PARAM.sub(_mask_param, rest)


def _mask_param(found: re.Match[str]) -> str:
    separator, name, value = found.groups()
    if value and secret_name(name):
        value = MASK
    return f"{separator}{name}={value}"


def mask_urls(text: str) -> str:
    """``text`` (an error message, a log line) with every URL in it masked like ``mask_url``."""
    return _IN_TEXT.sub(lambda found: mask_url(found.group(0)), text)


_TOKEN = re.compile(r"[A-Za-z0-9._~%+=-]{20,}")


def _looks_secret(segment: str) -> bool:
    """A long token-like path segment (a UUID, a base64 key) is treated as a secret."""
    return bool(_TOKEN.fullmatch(segment)) and any(c.isdigit() for c in segment)


def mask_webhook_url(url: str) -> str:
    """A webhook ``url`` as lists, audit entries and logs show it: stricter than ``mask_url``,
    since webhooks such as Slack's carry their secret in the path (``/services/T000/B000/XXXX``),
    others in a query value or a long first segment: only the scheme, the host (with the user
    and port) and the first path segment stay; a password, the rest of the path, the query and
    the fragment become ``***``."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    user = ""
    if parts.username is not None:
        user = parts.username + (":***" if parts.password is not None else "") + "@"
    segments = parts.path.split("/")
    first = segments[1] if len(segments) > 1 else ""
    path = "/" + ("***" if _looks_secret(first) else first) if parts.path else ""
    if any(segments[2:]):
        path += "/***"
    query = "***" if parts.query else ""
    fragment = "***" if parts.fragment else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", path, query, fragment))
