"""The request key that sampling and canary assignment hash, and the hash itself.

The hash is keyed blake2b (not Python's ``hash``, which is salted per process) so a caller keeps its sample
and its arm across requests and server restarts; shadow and canary use different salts, so being mirrored
says nothing about which canary arm a caller is on.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from hashlib import blake2b
from typing import Any

_SCALE = float(1 << 64)


def key_of(params: Mapping[str, Any] | None, request_id: str, param: str) -> str:
    """The request parameter ``param`` when the request carries it (any scalar type), else the request id."""
    if param and params and param in params:
        value = params[param]
        which = getattr(value, "WhichOneof", None)  # a protobuf InferParameter
        if which is not None:
            choice = which("parameter_choice")
            value = getattr(value, choice) if choice else ""
        return str(value)
    return request_id


def unit_hash(key: str, salt: bytes) -> float:
    """A stable, uniform value in [0, 1) for ``key``."""
    digest = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "little") / _SCALE


def sampled(key: str, rate: float, salt: bytes) -> bool:
    """Whether ``key`` falls in the first ``rate`` of the hash range (rate 1: always, 0: never). A request with
    no key (no id, no key parameter) has no caller to be consistent for: it is drawn at random."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return (unit_hash(key, salt) if key else random.random()) < rate
