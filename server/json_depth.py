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


def _depths(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Per byte: +1 for an opening bracket, -1 for a closing one, 0 otherwise or inside a string; and the nesting
    depth after that byte."""
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
    return delta, np.cumsum(delta, dtype=np.int64)


def check_json_depth(data: bytes | memoryview, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise JsonTooDeep when ``data`` nests arrays/objects more than ``limit`` levels (brackets inside
    strings, escaped quotes included, do not count)."""
    raw = bytes(data) if isinstance(data, memoryview) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    if int(_depths(raw)[1].max()) > limit:
        raise JsonTooDeep(f"JSON nesting depth exceeds maximum allowed limit ({limit})")


def prune_deep_members(data: bytes, limit: int = MAX_JSON_DEPTH) -> bytes:
    """``data`` with each top-level member (or element) nested deeper than ``limit`` replaced by ``null``.

    Triton parses control requests at any depth and then looks at the members it reads: a repository index
    request whose ``ready`` is a 250,000-deep array is refused because ``ready`` is not a boolean, and a deep
    member it does not read is ignored. Pruning lets Python's recursive parser give the same answers. A body
    whose brackets do not balance is returned as is (the parser refuses it)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return data
    delta, depth = _depths(data)
    if int(depth.max()) <= limit:
        return data
    opens = np.flatnonzero((delta == 1) & (depth == 2))
    closes = np.flatnonzero((delta == -1) & (depth == 1))
    if opens.size == 0 or opens.size != closes.size or np.any(closes < opens):
        return data
    deepest = np.maximum.reduceat(depth, opens)  # each segment runs to the next member; between them depth is 1
    pieces, at = [], 0
    for o, c in zip(opens[deepest > limit].tolist(), closes[deepest > limit].tolist(), strict=True):
        pieces += [data[at:o], b"null"]
        at = c + 1
    pieces.append(data[at:])
    return b"".join(pieces)
