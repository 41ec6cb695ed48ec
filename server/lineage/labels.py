"""Delayed labels joined with the prediction log, by request id and row; idempotent per (request id, row).

A label finds its prediction in one of three places: the index of rows in the model's open prediction file
(in memory: rows written since the last rotation), the rotated Parquet files (read by request id), or not yet
anywhere, when it arrived before its prediction was logged: it then waits in a pending buffer (bounded:
``max_pending`` labels, each expiring after ``pending_ttl_s``; overflow and expiries are counted), and joins
when the writer logs the prediction.

Each (request id, row) has one label. The same value sent again (a client's retry) is a duplicate: nothing
changes. A different value is a correction: it replaces the old one in live quality, and the joined output gets
the row again with ``revision`` one higher and ``label_time`` the correction's time, so a reader takes, per
(model_name, request_id, row), the row with the highest revision (``skewless quality-report`` does). A label
gives one value per row of its request, or names the row it is for; any other count is refused.

Memory bound (measured with tracemalloc): the open-file index holds at most ``max_index_rows`` (200,000) rows
per model, ~340 bytes each with the id string (~70 MB per logged model at most; rows beyond it are found when
their file rotates); the pending buffer at most ``max_pending`` labels (100,000), ~500 bytes each with one
value and the id (~50 MB); the labels already joined, kept to recognise retries and corrections, at most
``max_labelled`` rows (200,000, ~200 bytes each: ~40 MB), oldest forgotten first (a retry of a forgotten
label joins again; coverage is capped at 1 all the same). Joined pairs wait for the writer thread (at most one
flush interval).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument
from ..hooks import ALL_ROWS

log = logging.getLogger(__name__)

JOINED_COLUMNS = ("model_name", "request_id", "row", "model_version", "prediction_time", "label_time",
                  "score", "label", "canary_arm", "revision")
OUTCOMES = ("joined", "duplicate", "corrected", "pending", "refused")


def _joined_schema():
    import pyarrow as pa

    return pa.schema([("model_name", pa.string()), ("request_id", pa.string()), ("row", pa.int32()),
                      ("model_version", pa.int64()), ("prediction_time", pa.timestamp("ns", tz="UTC")),
                      ("label_time", pa.timestamp("ns", tz="UTC")), ("score", pa.float64()),
                      ("label", pa.float64()), ("canary_arm", pa.string()), ("revision", pa.int32())])


def __getattr__(name: str):  # JOINED_SCHEMA, built on first use: pyarrow is optional
    if name == "JOINED_SCHEMA":
        return _joined_schema()
    raise AttributeError(name)


class LabelRefused(InvalidArgument):
    """A label that does not fit its request's rows."""


@dataclass
class LabelCounts:
    """What one submission did, label by label (a label: one request id's values, or one named row's)."""

    joined: int = 0  # joined for the first time
    pending: int = 0  # its prediction is not logged yet: held
    unknown: int = 0  # not found and not held (the pending buffer is full)
    duplicate: int = 0  # the same value again: nothing changed
    corrected: int = 0  # a different value: it replaced the old one

    def count(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


class LabelJoin:
    """Index of the open files' rows, lookup in rotated files, the pending buffer, the labels joined so far
    (for retries and corrections) and the joined pairs."""

    def __init__(self, directory: Path, max_pending: int = 100_000, pending_ttl_s: float = 86_400.0,
                 on_joined: Callable[..., None] | None = None, max_index_rows: int = 200_000,
                 max_labelled: int = 200_000) -> None:
        self.directory = directory
        self.max_index_rows = max_index_rows  # per model; rows beyond wait for their file's rotation
        self.max_pending = max_pending
        self.max_labelled = max_labelled
        self.pending_ttl_s = pending_ttl_s
        # (model, version, score, label, delay_s, arm, key): the quality monitor; key (request id, row) makes a
        # correction replace the pair it corrects
        self.on_joined = on_joined
        self._lock = threading.Lock()
        # model -> request id -> [(row, version, time ns, score, arm)] for rows in the open file
        self._open: dict[str, dict[str, list[tuple]]] = {}
        # (model, request id, row or ALL_ROWS) -> (values, arrival ns), oldest first
        self._pending: OrderedDict[tuple[str, str, int], tuple[list[float], int]] = OrderedDict()
        # (model, request id, row) -> (label, revision), oldest first
        self._labelled: OrderedDict[tuple[str, str, int], tuple[float, int]] = OrderedDict()
        self._joined: list[tuple] = []
        self.joined = 0
        self.expired = 0
        self.overflow = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)  # labels by outcome (skewless_labels_total)
        self.logged_rows: dict[tuple[str, int], int] = {}  # (model, version) -> rows logged (label coverage)
        self.joined_rows: dict[tuple[str, int], int] = {}  # (model, version) -> rows labelled (once each)

    # -- writer thread -----------------------------------------------------------------------------------
    def logged(self, model: str, ids: list, rows: list, versions: list, times: list, scores: list,
               arms: list) -> None:
        with self._lock:
            index = self._open.setdefault(model, {})
            cap = self.max_index_rows
            for rid, row, v, t, s, a in zip(ids, rows, versions, times, scores, arms, strict=True):
                if len(index) < cap or rid in index:
                    index.setdefault(rid, []).append((row, v, t, s, a))
                key = (model, v)
                self.logged_rows[key] = self.logged_rows.get(key, 0) + 1
            if self._pending:
                for rid in set(ids):
                    found = index.get(rid)
                    if found is not None:
                        self._join_pending(model, rid, found)

    def rotated(self, model: str, path: Path | None = None) -> None:
        """The model's open file was closed as ``path``: its index goes; labels still pending for the model
        (rows the full index left out) are looked up in that file."""
        with self._lock:
            self._open.pop(model, None)
            waiting = {rid for (m, rid, _) in self._pending if m == model} if path is not None else set()
        if not waiting:
            return
        found = self._lookup_files(model, waiting, [path])
        with self._lock:
            for rid, rows in found.items():
                self._join_pending(model, rid, rows)

    def take_joined(self) -> list[tuple]:
        with self._lock:
            out, self._joined = self._joined, []
        return out

    def expire(self, now_ns: int | None = None) -> None:
        now_ns = now_ns or time.time_ns()
        limit = now_ns - int(self.pending_ttl_s * 1e9)
        with self._lock:
            while self._pending:
                key, (_, arrived) = next(iter(self._pending.items()))
                if arrived > limit:
                    break
                del self._pending[key]
                self.expired += 1

    # -- label submission (a worker thread: it may read rotated files) ------------------------------------
    def submit(self, model: str, items: Sequence[tuple[str, Sequence[float], int]]) -> LabelCounts:
        """Join (request id, values, row) labels: ``row`` ALL_ROWS gives one value per row of the request, a row
        number one value for that row. Every label is checked against its prediction's rows before any is
        taken: one that does not fit refuses the whole call (LabelRefused, nothing changed)."""
        now = time.time_ns()
        ids = {rid for rid, _, _ in items}
        with self._lock:
            index = self._open.get(model, {})
            found = {rid: index[rid] for rid in ids if rid in index}
        missing = ids - found.keys()
        if missing:
            from_files = self._lookup_files(model, missing)
            found.update(from_files)
        problems = [p for rid, values, row in items if rid in found
                    for p in (_misfit(rid, found[rid], values, row),) if p]
        if problems:
            self.refused(len(items))
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise LabelRefused(f"{problems[0]}{more}; no label of this call was taken")
        counts = LabelCounts()
        with self._lock:
            for rid, values, row in items:
                rows = found.get(rid) or self._open.get(model, {}).get(rid)
                if rows is not None:
                    counts.count(self._join(model, rid, rows, values, row, now))
                elif len(self._pending) < self.max_pending or (model, rid, row) in self._pending:
                    self._pending[(model, rid, row)] = (list(values), now)
                    self._pending.move_to_end((model, rid, row))
                    counts.pending += 1
                    self.outcomes["pending"] += 1
                else:
                    self.overflow += 1
                    counts.unknown += 1
        return counts

    def _lookup_files(self, model: str, ids: set[str], paths: list[Path] | None = None) -> dict[str, list[tuple]]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        out: dict[str, list[tuple]] = {}
        directory = self.directory / model
        if paths is None and not directory.is_dir():
            return out
        wanted = pa.array(sorted(ids), pa.string())
        for path in paths or sorted(directory.glob("predictions-*.parquet"), reverse=True):
            try:
                t = pq.read_table(path, columns=["request_id", "row", "model_version", "time", "score",
                                                 "canary_arm"])
            except (OSError, ValueError):
                continue  # deleted by retention meanwhile, or not a prediction file
            t = t.filter(pc.is_in(t.column("request_id"), value_set=wanted))
            if t.num_rows == 0:
                continue
            times = t.column("time").cast(pa.int64()).to_pylist()
            for rid, row, v, tm, s, a in zip(t.column("request_id").to_pylist(), t.column("row").to_pylist(),
                                             t.column("model_version").to_pylist(), times,
                                             t.column("score").to_pylist(), t.column("canary_arm").to_pylist(),
                                             strict=True):
                out.setdefault(rid, []).append((row, v, tm, s, a))
            if len(out) == len(ids):
                break
        return out

    def _join_pending(self, model: str, rid: str, rows: list[tuple]) -> None:
        """Join what waits for ``rid`` (under the lock): a label for all rows, or for named rows."""
        for row in (ALL_ROWS, *(r[0] for r in rows)):
            entry = self._pending.pop((model, rid, row), None)
            if entry is None:
                continue
            problem = _misfit(rid, rows, entry[0], row)
            if problem:  # an early label whose count did not fit: it could not be refused when it came
                self.outcomes["refused"] += 1
                log.warning("model '%s': pending label dropped: %s", model, problem)
                continue
            self._join(model, rid, rows, entry[0], row, entry[1])

    def _join(self, model: str, rid: str, rows: list[tuple], values: Sequence[float], named: int,
              label_ns: int) -> str:
        """Join one label that fits (under the lock); its outcome: joined, duplicate or corrected."""
        new = changed = 0
        labelled = self._labelled
        for row, v, t, s, a in rows:
            if named == ALL_ROWS:
                label = float(values[row])
            elif row == named:
                label = float(values[0])
            else:
                continue
            key = (model, rid, row)
            before = labelled.get(key)
            if before is None:
                revision = 0
                new += 1
                counted = (model, v)
                self.joined_rows[counted] = self.joined_rows.get(counted, 0) + 1
            elif before[0] == label:
                continue  # a retry: nothing changes
            else:
                revision = before[1] + 1
                changed += 1
            labelled[key] = (label, revision)
            labelled.move_to_end(key)
            if len(labelled) > self.max_labelled:
                labelled.popitem(last=False)
            self._joined.append((model, rid, row, v, t, label_ns, s, label, a, revision))
            if self.on_joined is not None:
                self.on_joined(model, v, s, label, max(0.0, (label_ns - t) / 1e9), a, (rid, row))
        outcome = "corrected" if changed else "joined" if new else "duplicate"
        if outcome == "joined":
            self.joined += 1
        self.outcomes[outcome] += 1
        return outcome

    def refused(self, n: int) -> None:
        """``n`` labels refused (any thread)."""
        with self._lock:
            self.outcomes["refused"] += n

    def status(self) -> dict[str, Any]:
        """The join's counts (any thread): pending labels, outcomes, rows indexed per model's open file."""
        with self._lock:
            index_rows = {m: sum(len(v) for v in idx.values()) for m, idx in self._open.items()}
            return {"pending": len(self._pending), "joined": self.joined, "expired": self.expired,
                    "overflow": self.overflow, "outcomes": dict(self.outcomes), "index_rows": index_rows}

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def coverage(self) -> dict[tuple[str, int], float]:
        """Share of each (model, version)'s logged rows that have a label: never above 1."""
        return {key: min(1.0, self.joined_rows.get(key, 0) / n) if n else 0.0
                for key, n in list(self.logged_rows.items())}


def _misfit(rid: str, rows: list[tuple], values: Sequence[float], named: int) -> str | None:
    """Why a label does not fit its prediction's rows (None: it fits)."""
    n = len({r[0] for r in rows})
    if named == ALL_ROWS:
        if len(values) != n:
            return (f"request '{rid}' has {n} row{'s' * (n != 1)} and its label gives {len(values)} "
                    f"value{'s' * (len(values) != 1)}: give one value per row, or name the row the value is for")
        return None
    if len(values) != 1:
        return f"the label for row {named} of request '{rid}' gives {len(values)} values: a named row takes one"
    if not any(r[0] == named for r in rows):
        return f"request '{rid}' has {n} row{'s' * (n != 1)}: there is no row {named}"
    return None
