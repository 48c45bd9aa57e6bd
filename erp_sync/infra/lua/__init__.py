"""The Lua scripts, one ``.lua`` file each, and the one loader that registers them.

Every script opens with a header that names each ``KEYS[n]`` and ``ARGV[n]`` it reads and what
it returns; ``tests/test_lua.py`` checks that every index a script uses is named there and runs
every script on a real redis-server. A line ``--#include _NAME`` is replaced by ``_NAME.lua``: a
shared Lua function (a leading underscore: not a script of its own), written once for every
script that uses it.
Scripts are registered with ``register_script`` (EVALSHA, falling back to EVAL after a Redis
restart or SCRIPT FLUSH), so loading one costs no round trip.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script

_INCLUDE = re.compile(r"^--#include (_\w+)$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The text of ``NAME.lua`` with its includes expanded."""
    text = resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: source(m.group(1)), text)


def load(client: redis.Redis, name: str) -> Script:
    """``NAME.lua`` registered on ``client``: call it as ``script(keys=[...], args=[...])``."""
    return client.register_script(source(name))
