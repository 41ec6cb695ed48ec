"""Plain-Python reference of windowed aggregate features: the semantics, written to be read, not to be fast.

The native engine (``skewless.native.aggregates``), the Redis store and the offline backfill are tested
against this file: for the same ordered events they must give the same float64 values, bit for bit.

Definitions (``docs/features/aggregates.md`` says the same in prose):

* An aggregate belongs to a *group*: the same key inputs, event-time input and bucket width. Times are int64
  in the spec's unit; bucket ``b(t) = floor(t / bucket)``; ``n = window / bucket`` whole buckets.
* A row at time ``t`` with key ``k`` sees the events of ``k`` in buckets ``b(t) - n .. b(t) - 1``: the ``n``
  whole buckets before its own. Events of its own bucket (itself, ties, and anything that arrives in the
  same bucket in any interleaving) are never seen, so a row can never see its own label and arrival order
  within a bucket cannot change a value.
* After its read, every row whose keys and time are all present is recorded as an event (rows are read and
  recorded one at a time, in order: a batch is the same as its rows one by one). Ingested events are recorded
  without a read.
* Retention ``R`` = the group's largest ``n``. A bucket ``j`` of key ``k`` is visible only while
  ``j >= top(k) - R`` and ``j >= G - R`` (``top(k)``: newest bucket recorded for ``k``; ``G``: newest bucket
  recorded in the group), both taken before the row. An event older than that when it arrives is dropped
  (counted as late). Hidden buckets and keys can be freed at any time without changing any value.
* Operations over the visible window: count (events, with or without a value), sum, mean, min, max, last
  (the value with the greatest event time; ties: the greatest value) and distinct (distinct values: exact
  below K = 256, beyond that a K-minimum-values estimate). A missing or NaN value is an event without a value.
  -0.0 is recorded as +0.0. Sums are exact: each value is rounded to a multiple of 2**-32 (ties to even) and
  the integers are added, so any order gives the same sum; a value with ``|v| >= 2**40`` (or infinite) is left
  out of sum and mean and counted. Empty window: count, sum, distinct 0; mean, min, max, last missing (NaN).
  A row with a missing key or time gets NaN for every aggregate of that group and is not recorded.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skewless.native.feature_kernel import murmurhash3_32

K = 256  # distinct-count sketch size
SUM_FRACTION_BITS = 32
SUM_LIMIT = 2.0**40
HASH_SEEDS = (0x9747B28C, 0x85EBCA6B)


def key_bytes(values: Sequence[Any], dtypes: Sequence[str]) -> bytes | None:
    """The bytes of a (possibly composite) key; None when any part is missing."""
    out = b""
    for v, dt in zip(values, dtypes, strict=True):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if dt == "string":
            raw = v.encode("utf-8") if isinstance(v, str) else bytes(v)
            out += struct.pack("<I", len(raw)) + raw
        elif dt == "int":
            out += struct.pack("<q", int(v))
        elif dt == "bool":
            out += b"\x01" if v else b"\x00"
        else:
            x = float(v)
            out += struct.pack("<d", 0.0 if x == 0 else x)
    return out


def hash53(raw: bytes) -> int:
    """53-bit hash of a value's bytes (exact as a double: the Redis store keeps it as a sorted-set score)."""
    return (murmurhash3_32(raw, HASH_SEEDS[0]) << 21) | (murmurhash3_32(raw, HASH_SEEDS[1]) >> 11)


def order_key(x: float) -> int:
    """IEEE total order as an integer (used to break ties of ``last``)."""
    (u,) = struct.unpack("<q", struct.pack("<d", x))
    return u if u >= 0 else -(u & 0x7FFFFFFFFFFFFFFF) - 1


def fixed(x: float) -> int:
    """x rounded to the nearest multiple of 2**-32 (ties to even), as an integer count of 2**-32."""
    return round(math.ldexp(x, SUM_FRACTION_BITS))  # exact: ldexp scales by a power of two; round() is half-even


@dataclass
class Bucket:
    """One key's events of one bucket, for one value input (None: events without a value input)."""

    count: int = 0  # events, with or without a value
    n: int = 0  # events with a value
    ns: int = 0  # values inside the sum's range (|v| < 2**40)
    fsum: int = 0  # their exact sum, in units of 2**-32
    min: float = math.inf
    max: float = -math.inf
    last: tuple[int, int, float] | None = None  # (time, order_key(value), value)
    hashes: set[int] = field(default_factory=set)  # the K smallest hash53 of the values

    def add_number(self, t: int, x: float) -> None:
        x = 0.0 if x == 0 else x
        self.n += 1
        if abs(x) < SUM_LIMIT:
            self.ns += 1
            self.fsum += fixed(x)
        self.min = min(self.min, x)
        self.max = max(self.max, x)
        cand = (t, order_key(x), x)
        if self.last is None or cand[:2] > self.last[:2]:
            self.last = cand


@dataclass
class Group:
    keys: tuple[str, ...]
    time: str
    bucket: int
    retention: int
    aggs: list[dict[str, Any]]
    state: dict[bytes, dict[int, dict[str | None, Bucket]]] = field(default_factory=dict)
    top: dict[bytes, int] = field(default_factory=dict)
    watermark: int | None = None
    late: int = 0


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


class ReferenceState:
    """``plan``: the spec's ``aggregates`` entries; ``dtypes``: raw input name -> float/int/bool/string."""

    def __init__(self, plan: Sequence[Mapping[str, Any]], dtypes: Mapping[str, str]) -> None:
        self.dtypes = dict(dtypes)
        self.groups: dict[tuple, Group] = {}
        self.names = [a["name"] for a in plan]
        for a in plan:
            gk = (tuple(a["keys"]), a["time"], int(a["bucket"]))
            n = int(a["window"]) // int(a["bucket"])
            g = self.groups.get(gk)
            if g is None:
                g = self.groups[gk] = Group(gk[0], gk[1], gk[2], n, [])
            g.retention = max(g.retention, n)
            g.aggs.append(dict(a))

    def _read(self, g: Group, k: bytes, b: int) -> dict[str, float]:
        out: dict[str, float] = {}
        top = g.top.get(k)
        for a in g.aggs:
            n = int(a["window"]) // g.bucket
            lo = b - n
            if top is not None:
                lo = max(lo, top - g.retention)
            if g.watermark is not None:
                lo = max(lo, g.watermark - g.retention)
            buckets = [bk.get(a.get("value")) for j, bk in g.state.get(k, {}).items() if lo <= j <= b - 1]
            buckets = [x for x in buckets if x is not None]
            out[a["name"]] = _finalize(a["op"], buckets)
        return out

    def _record(self, g: Group, k: bytes, t: int, row: Mapping[str, Any]) -> None:
        b = t // g.bucket
        top = g.top.get(k)
        if (top is not None and b < top - g.retention) or (g.watermark is not None and b < g.watermark - g.retention):
            g.late += 1
            return
        g.top[k] = b if top is None else max(top, b)
        g.watermark = b if g.watermark is None else max(g.watermark, b)
        slot = g.state.setdefault(k, {}).setdefault(b, {})
        for vname in {a.get("value") for a in g.aggs}:
            bucket = slot.setdefault(vname, Bucket())
            bucket.count += 1
            v = row.get(vname) if vname is not None else None
            if vname is None or _is_missing(v):
                continue
            dt = self.dtypes[vname]
            if dt == "float":
                v = float(v)
                v = 0.0 if v == 0 else v
                bucket.add_number(t, v)
            elif dt in ("int", "bool"):
                bucket.add_number(t, float(int(v)))
            else:
                bucket.n += 1
            bucket.hashes.add(hash53(key_bytes([v], [dt])))
            if len(bucket.hashes) > K:
                bucket.hashes.remove(max(bucket.hashes))

    def _rows(self, rows: Mapping[str, Sequence[Any]]) -> int:
        lengths = {len(v) for v in rows.values()}
        if len(lengths) != 1:
            raise ValueError("columns of different lengths")
        return lengths.pop()

    def score(self, rows: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """Read each row's aggregates, then record the row as an event (in order)."""
        n_rows = self._rows(rows)
        out = {name: np.full(n_rows, np.nan) for name in self.names}
        for i in range(n_rows):
            row = {name: col[i] for name, col in rows.items()}
            for g in self.groups.values():
                k = key_bytes([row[c] for c in g.keys], [self.dtypes[c] for c in g.keys])
                t = row[g.time]
                if k is None or _is_missing(t):
                    continue
                for name, v in self._read(g, k, int(t) // g.bucket).items():
                    out[name][i] = v
                self._record(g, k, int(t), row)
        return out

    def ingest(self, rows: Mapping[str, Sequence[Any]]) -> int:
        """Record events without reading; groups whose key or time inputs are absent are not touched.

        Returns the number of rows recorded in at least one group (late events are dropped and counted).
        """
        n_rows = self._rows(rows)
        applied = 0
        for i in range(n_rows):
            row = {name: col[i] for name, col in rows.items()}
            recorded = False
            for g in self.groups.values():
                if g.time not in row or any(c not in row for c in g.keys):
                    continue
                k = key_bytes([row[c] for c in g.keys], [self.dtypes[c] for c in g.keys])
                t = row[g.time]
                if k is None or _is_missing(t):
                    continue
                before = g.late
                self._record(g, k, int(t), row)
                recorded = recorded or g.late == before
            applied += recorded
        return applied


def _finalize(op: str, buckets: list[Bucket]) -> float:
    if op == "count":
        return float(sum(b.count for b in buckets))
    n = sum(b.n for b in buckets)
    if op == "distinct":
        union = sorted(set().union(*[b.hashes for b in buckets])) if buckets else []
        if len(union) < K:
            return float(len(union))
        return float(K - 1) * 2.0**53 / float(union[K - 1] + 1)
    if op == "sum":
        return sum(b.fsum for b in buckets) / 2**SUM_FRACTION_BITS  # int / int: correctly rounded
    ns = sum(b.ns for b in buckets)
    if op == "mean":
        return (sum(b.fsum for b in buckets) / 2**SUM_FRACTION_BITS) / ns if ns else math.nan
    if n == 0:
        return math.nan
    if op == "min":
        return min(b.min for b in buckets if b.n)
    if op == "max":
        return max(b.max for b in buckets if b.n)
    if op == "last":
        return max((b.last for b in buckets if b.last is not None), key=lambda c: c[:2])[2]
    raise ValueError(f"unknown op {op!r}")
