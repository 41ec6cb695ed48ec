"""A nesting-depth limit checked before any JSON is parsed: Python's parser recurses once per level, so a body
nested thousands of levels deep would exhaust the stack (RecursionError) instead of getting a 400.

The check is vectorised (numpy over the bytes, no per-character Python loop) and skipped outright when the
body has fewer brackets than the limit, which is every ordinary control request.
"""

from __future__ import annotations

import numpy as np

# Triton's HTTP_MAX_JSON_NESTING_DEPTH, and its wording
MAX_JSON_DEPTH = 100

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


class JsonTooDeep(ValueError):
    """A JSON document nested deeper than ``MAX_JSON_DEPTH``."""


def check_json_depth(data: bytes | memoryview, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise JsonTooDeep when ``data`` nests arrays/objects more than ``limit`` levels (brackets inside
    strings, escaped quotes included, do not count)."""
    raw = bytes(data) if isinstance(data, memoryview) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    buf = np.frombuffer(raw, np.uint8)
    delta = _OPEN[buf]
    quotes = np.flatnonzero(buf == _QUOTE)
    if quotes.size:
        if raw.find(b"\\") >= 0:  # drop quotes escaped by an odd run of backslashes
            idx = np.arange(buf.size)
            last_plain = np.maximum.accumulate(np.where(buf != _BACKSLASH, idx, -1))
            before = quotes - 1
            run = np.where(before >= 0, before - last_plain[np.maximum(before, 0)], 0)
            quotes = quotes[run % 2 == 0]
        inside = np.zeros(buf.size + 1, np.int8)
        inside[quotes] = 1
        in_string = (np.cumsum(inside[:-1], dtype=np.int64) & 1).astype(bool)  # from an opening quote on
        delta = np.where(in_string, 0, delta)
    if int(np.cumsum(delta, dtype=np.int64).max()) > limit:
        raise JsonTooDeep(f"JSON nesting depth exceeds maximum allowed limit ({limit})")
