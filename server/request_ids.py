"""Server-assigned request ids (path-level: every reply, trace, shadow pair and logged prediction uses them):
a per-process prefix and a counter, cheap enough for every request.

Unique across restarts and replicas (the prefix holds the pid, start time and random bits), ordered within
one process; no uuid4 (and no system entropy) per request."""

from __future__ import annotations

import itertools
import os
import secrets
import time

_PREFIX = f"sk-{os.getpid():x}{int(time.time()) & 0xFFFFFF:06x}{secrets.token_hex(2)}-"
_counter = itertools.count(1)


def assign_id(client_id: str) -> str:
    """The client's id when it sent one, else a new server id."""
    return client_id or f"{_PREFIX}{next(_counter)}"


def _reseed_after_fork() -> None:
    global _PREFIX, _counter
    _PREFIX = f"sk-{os.getpid():x}{int(time.time()) & 0xFFFFFF:06x}{secrets.token_hex(2)}-"
    _counter = itertools.count(1)


os.register_at_fork(after_in_child=_reseed_after_fork)
