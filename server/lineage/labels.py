"""Delayed labels joined with the prediction log, by request id (and row).

A label finds its prediction in one of three places: the index of rows in the model's open prediction file
(in memory: rows written since the last rotation), the rotated Parquet files (read by request id), or not yet
anywhere, when it arrived before its prediction was logged: it then waits in a pending buffer (bounded:
``max_pending`` labels, each expiring after ``pending_ttl_s``; overflow and expiries are counted), and joins
when the writer logs the prediction.

Memory bound (measured with tracemalloc): the open-file index holds at most ``max_index_rows`` (200,000) rows
per model, ~340 bytes each with the id string (~70 MB per logged model at most; rows beyond it are found when
their file rotates); the pending buffer at most ``max_pending`` labels (100,000), ~500 bytes each with one
value and the id (~50 MB). Joined pairs wait for the writer thread (at most one flush interval).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

JOINED_COLUMNS = ("model_name", "request_id", "row", "model_version", "prediction_time", "label_time",
                  "score", "label", "canary_arm")


def _joined_schema():
    import pyarrow as pa

    return pa.schema([("model_name", pa.string()), ("request_id", pa.string()), ("row", pa.int32()),
                      ("model_version", pa.int64()), ("prediction_time", pa.timestamp("ns", tz="UTC")),
                      ("label_time", pa.timestamp("ns", tz="UTC")), ("score", pa.float64()),
                      ("label", pa.float64()), ("canary_arm", pa.string())])


def __getattr__(name: str):  # JOINED_SCHEMA, built on first use: pyarrow is optional
    if name == "JOINED_SCHEMA":
        return _joined_schema()
    raise AttributeError(name)


class LabelJoin:
    """Index of the open files' rows, lookup in rotated files, the pending buffer and the joined pairs."""

    def __init__(self, directory: Path, max_pending: int = 100_000, pending_ttl_s: float = 86_400.0,
                 on_joined: Callable[[str, int, float, float, float, str | None], None] | None = None,
                 max_index_rows: int = 200_000) -> None:
        self.directory = directory
        self.max_index_rows = max_index_rows  # per model; rows beyond wait for their file's rotation
        self.max_pending = max_pending
        self.pending_ttl_s = pending_ttl_s
        self.on_joined = on_joined  # (model, version, score, label, delay_s, arm): the quality monitor
        self._lock = threading.Lock()
        # model -> request id -> [(row, version, time ns, score, arm)] for rows in the open file
        self._open: dict[str, dict[str, list[tuple]]] = {}
        self._pending: OrderedDict[tuple[str, str], tuple[list[float], int]] = OrderedDict()
        self._joined: list[tuple] = []
        self.joined = 0
        self.expired = 0
        self.overflow = 0
        self.logged_rows: dict[tuple[str, int], int] = {}  # (model, version) -> rows logged (label coverage)
        self.joined_rows: dict[tuple[str, int], int] = {}

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
                    if (model, rid) in self._pending and rid in index:
                        waiting = self._pending.pop((model, rid))
                        self._join(model, rid, index[rid], waiting[0], waiting[1])

    def rotated(self, model: str, path: Path | None = None) -> None:
        """The model's open file was closed as ``path``: its index goes; labels still pending for the model
        (rows the full index left out) are looked up in that file."""
        with self._lock:
            self._open.pop(model, None)
            waiting = {rid for (m, rid) in self._pending if m == model} if path is not None else set()
        if not waiting:
            return
        found = self._lookup_files(model, waiting, [path])
        with self._lock:
            for rid, rows in found.items():
                entry = self._pending.pop((model, rid), None)
                if entry is not None:
                    self._join(model, rid, rows, entry[0], entry[1])

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
    def submit(self, model: str, items: Sequence[tuple[str, Sequence[float]]]) -> tuple[int, int, int]:
        """Join (request id, label values per row) pairs; returns (joined, pending, unknown). Unknown: not
        found and not kept because the pending buffer is full."""
        now = time.time_ns()
        joined = pending = unknown = 0
        missing: list[tuple[str, Sequence[float]]] = []
        with self._lock:
            index = self._open.get(model, {})
            for rid, values in items:
                rows = index.get(rid)
                if rows is not None:
                    self._join(model, rid, rows, values, now)
                    joined += 1
                else:
                    missing.append((rid, values))
        if missing:
            found = self._lookup_files(model, {rid for rid, _ in missing})
            with self._lock:
                for rid, values in missing:
                    rows = found.get(rid) or self._open.get(model, {}).get(rid)
                    if rows is not None:
                        self._join(model, rid, rows, values, now)
                        joined += 1
                    elif len(self._pending) < self.max_pending:
                        self._pending[(model, rid)] = (list(values), now)
                        pending += 1
                    else:
                        self.overflow += 1
                        unknown += 1
        return joined, pending, unknown

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

    def _join(self, model: str, rid: str, rows: list[tuple], values: Sequence[float], label_ns: int) -> None:
        self.joined += 1
        for row, v, t, s, a in rows:
            if row >= len(values):
                continue
            label = float(values[row])
            self._joined.append((model, rid, row, v, t, label_ns, s, label, a))
            key = (model, v)
            self.joined_rows[key] = self.joined_rows.get(key, 0) + 1
            if self.on_joined is not None:
                self.on_joined(model, v, s, label, max(0.0, (label_ns - t) / 1e9), a)

    @property
    def pending_count(self) -> int:
        return len(self._pending)
