"""Prediction log: each logged request's ids, version, inputs and outputs, as rotating Parquet files.

Per model, from config parameters (Triton's ``parameters`` map, string values)::

    parameters { key: "skewless.prediction_log_rate" value { string_value: "1" } }   # fraction of requests

and the server's ``--prediction-log DIR`` (off by default; a model without the parameter is not logged).
Files: ``DIR/<model>/predictions-<UTC time>-<pid>-<seq>.parquet``, written as ``.parquet.tmp`` and renamed
when rotated (``--prediction-log-rotate-mb`` / ``--prediction-log-rotate-seconds``), so readers only see
complete files; the oldest are deleted beyond ``--prediction-log-max-files`` per model.

Off the hot path: the data plane's hook puts one record (arrays the request already holds) on a bounded
queue (``background.BackgroundWriter``, polling) after the reply is handed over; a full queue drops the
record and counts it (``skewless_prediction_log_dropped``). One writer thread turns records into Arrow, writes them, hands each
row's score to the label join (lineage/labels.py) and writes joined pairs.

Schema (stable; one row per row of a request): ``request_id`` string, ``row`` int32, ``time``
timestamp[ns, UTC] (reply), ``model_name`` string, ``model_version`` int64, ``feature_spec_hash`` string
(null: no spec), ``canary_arm`` string (null, ``stable`` or ``candidate``), ``shadow`` bool (always false
for served replies), ``score`` float64 (the score output's value that quality metrics use), then one column
per input under its own name (the raw feature columns for a model with a feature spec, as the served-feature
log names them, so ``skewless skew-check`` reads them) and one per output as ``output.<name>``; scalars per
row are plain columns, wider tensors ``fixed_size_list``, BYTES ``large_binary``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import random
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..background import BackgroundWriter
from ..errors import ModelLoadError
from ..parameters import read

if TYPE_CHECKING:
    from ..models.version import ModelVersion
    from .labels import LabelJoin

log = logging.getLogger(__name__)

PARAM_RATE = "skewless.prediction_log_rate"
PARAM_SCORE_OUTPUT = "skewless.score_output"
PARAM_SCORE_INDEX = "skewless.score_index"
CONTEXT_COLUMNS = ("request_id", "row", "time", "model_name", "model_version", "feature_spec_hash",
                   "canary_arm", "shadow", "score")
OUTPUT_PREFIX = "output."
DRAIN_S = 0.05  # how often the writer takes what the request path queued
WRITE_RECORDS = 4096  # records gathered before they are written (else flush_seconds after the first)
_FILE_SEQ = itertools.count(1)


@dataclass(frozen=True)
class PredictionLogSettings:
    directory: Path
    queue_size: int = 4096
    rotate_bytes: int = 64 << 20
    rotate_seconds: float = 3600.0
    max_files: int = 100  # per model: the retention bound (oldest deleted first)
    flush_seconds: float = 1.0


def require_pyarrow() -> None:
    """At startup: pyarrow present, and its first conversion done (it imports pandas when installed: ~0.3 s
    that would otherwise hold the GIL against the event loop at the first write)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise SystemExit("--prediction-log writes Parquet and needs pyarrow: pip install 'skewless[features]'"
                         ) from None
    pa.array([0])


@dataclass(slots=True)
class Record:  # not frozen: a frozen dataclass's __init__ costs more on the request path
    request_id: str
    time_ns: int
    model: str
    version: int
    spec_hash: str | None
    arm: str | None
    feeds: dict
    names: list
    arrays: list
    rows: int
    score: tuple[str, int] | None


class ModelLineage:
    """What a model version's hook needs: its sampling rate, spec hash and score output (mv.lineage)."""

    __slots__ = ("log", "rate", "spec_hash", "score")

    def __init__(self, plog: PredictionLog, rate: float, spec_hash: str | None, score: tuple[str, int] | None):
        self.log = plog
        self.rate = rate
        self.spec_hash = spec_hash
        self.score = score

    def observe(self, mv: ModelVersion, feeds: dict, rows: int, names: list[str], request_id: str,
                arm: str | None, complete):
        """``complete`` wrapped to offer the request to the log after the reply is handed over (or itself,
        when this request is not sampled)."""
        if self.rate < 1.0 and random.random() >= self.rate:
            return complete
        return functools.partial(_logged, self, mv, feeds, rows, names, request_id, arm, complete)


def _logged(lin: ModelLineage, mv: ModelVersion, feeds: dict, rows: int, names: list[str], request_id: str,
            arm: str | None, complete, outcome, exc: BaseException | None, cancelled: bool) -> None:
    complete(outcome, exc, cancelled)
    if not cancelled and exc is None:
        lin.log.offer(Record(request_id, time.time_ns(), mv.name, mv.version, lin.spec_hash, arm, feeds, names,
                             outcome[0], rows, lin.score))


class PredictionLog:
    """The bounded queue and the writer thread shared by every logged model."""

    def __init__(self, settings: PredictionLogSettings, join: LabelJoin | None = None) -> None:
        self.settings = settings
        self.join = join
        # Polling, not a queue.Queue: a logged request costs one deque append and wakes nobody; the writer looks
        # every DRAIN_S and takes what is there (a Queue's notify woke the writer thread for every record: a
        # thread switch and a GIL hand-off per request).
        self._writer: BackgroundWriter[Record] = BackgroundWriter(
            "prediction-log", self._write, capacity=settings.queue_size, batch=WRITE_RECORDS,
            max_delay=settings.flush_seconds, poll=DRAIN_S, tick=self._tick, on_stop=self._stop,
            label="prediction log")
        self.offer = self._writer.offer  # request side (event loop): one call, no wrapper
        self.written_rows = 0
        self.rows_by_model: dict[str, int] = {}  # model -> rows written (the status snapshot)
        self.files_written = 0
        self._last_tick = time.monotonic()
        self._files: dict[str, tuple] = {}  # model -> (writer, tmp, final, opened monotonic, schema)
        self._joined: dict[str, tuple] = {}

    @property
    def queue(self) -> deque[Record]:
        """Records waiting for the writer."""
        return self._writer.buffer

    @property
    def dropped(self) -> int:
        """Records refused because the queue was full (``skewless_prediction_log_dropped``)."""
        return self._writer.dropped

    # -- the version hook (repository.version_hooks) ---------------------------------------------------
    def attach(self, mv: ModelVersion) -> None:
        rate = read(mv.config, PARAM_RATE, f"model '{mv.name}'")
        if rate is None:
            mv.lineage = None
            return
        spec_hash = mv.features.spec.sha256 if mv.features is not None else None
        mv.lineage = ModelLineage(self, rate, spec_hash, score_of(mv)) if rate > 0 else None

    def start(self) -> None:
        self._writer.start()

    def close(self) -> None:
        """Flush what is queued and close every file (server stop)."""
        if not self._writer.close(30):
            log.error("prediction log: the writer did not stop within 30 s; %d queued records lost",
                      len(self._writer))

    def status(self) -> dict[str, Any]:
        """Queue, drops, files written and, per model, rows written and the file now open (any thread)."""
        open_files = {m: str(f[1]) for m, f in list(self._files.items())}
        models = {m: {"rows_written": n, "current_file": open_files.get(m)}
                  for m, n in list(self.rows_by_model.items())}
        return {"directory": str(self.settings.directory), "queued": len(self.queue), "dropped": self.dropped,
                "rows_written": self.written_rows, "files_written": self.files_written, "models": models}

    def flush(self) -> None:
        """Rotate every open file now (tests, and before reading the directory)."""
        self._writer.flush(30)

    # -- writer thread ---------------------------------------------------------------------------------
    def _tick(self, flush: bool) -> float | None:
        """Every flush_seconds (and when flushed): rotate what is due, write the label join's pairs."""
        now = time.monotonic()
        left = self.settings.flush_seconds - (now - self._last_tick)
        if not flush and left > 0:
            return left
        self._last_tick = now
        self._rotate_due(force=flush)
        if self.join is not None:
            self._write_joined(self.join.take_joined())
            self.join.expire()
        return self.settings.flush_seconds

    def _stop(self) -> None:
        self._tick(True)
        self._drain_and_close()

    def _drain_and_close(self) -> None:
        for model in list(self._files):
            self._close(self._files.pop(model))
        for model in list(self._joined):
            self._close(self._joined.pop(model))

    def _write(self, records: list[Record]) -> None:
        import pyarrow as pa

        groups: dict[tuple, list[Record]] = {}
        for r in records:  # records of one layout (model, inputs, outputs) become one record batch
            groups.setdefault((r.model, tuple(r.feeds), tuple(r.names)), []).append(r)
        for (model, _, _), recs in groups.items():
            batch = _to_batch(recs)
            f = self._files.get(model)
            if f is not None and not f[4].equals(batch.schema):
                self._close(self._files.pop(model))
                f = None
            if f is None:
                f = self._files[model] = self._open(model, "predictions", batch.schema)
            f[0].write_batch(batch)
            self.written_rows += batch.num_rows
            self.rows_by_model[model] = self.rows_by_model.get(model, 0) + batch.num_rows
            if self.join is not None:
                col = batch.column
                self.join.logged(model, col(0).to_pylist(), col(1).to_pylist(), col(4).to_pylist(),
                                 col(2).cast(pa.int64()).to_pylist(), col(8).to_pylist(), col(6).to_pylist())

    def _write_joined(self, rows: list[tuple]) -> None:
        if not rows:
            return
        import pyarrow as pa

        from .labels import JOINED_SCHEMA

        by_model: dict[str, list[tuple]] = {}
        for r in rows:
            by_model.setdefault(r[0], []).append(r)
        for model, items in by_model.items():
            cols = list(zip(*items, strict=True))
            table = pa.table([pa.array(c, t.type) for c, t in zip(cols, JOINED_SCHEMA, strict=True)],
                             schema=JOINED_SCHEMA)
            f = self._joined.get(model)
            if f is None:
                f = self._joined[model] = self._open(model, "joined", JOINED_SCHEMA)
            f[0].write_table(table)

    def _open(self, model: str, kind: str, schema) -> tuple:
        import pyarrow.parquet as pq

        directory = self.settings.directory / model
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        final = directory / f"{kind}-{stamp}Z-{os.getpid()}-{next(_FILE_SEQ):05d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        return pq.ParquetWriter(tmp, schema), tmp, final, time.monotonic(), schema

    def _rotate_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for files in (self._files, self._joined):
            for model, f in list(files.items()):
                if force or now - f[3] >= self.settings.rotate_seconds or \
                        os.path.getsize(f[1]) >= self.settings.rotate_bytes:
                    self._close(files.pop(model))

    def _close(self, f: tuple) -> None:
        f[0].close()
        os.replace(f[1], f[2])
        self.files_written += 1
        if f[2].name.startswith("predictions-"):
            if self.join is not None:
                self.join.rotated(f[2].parent.name, f[2])
            self._retain(f[2].parent, "predictions-")
        else:
            self._retain(f[2].parent, "joined-")

    def _retain(self, directory: Path, prefix: str) -> None:
        files = sorted(p for p in directory.glob(f"{prefix}*.parquet"))
        for old in files[:max(0, len(files) - self.settings.max_files)]:
            with contextlib.suppress(OSError):  # already gone
                old.unlink()


def score_of(mv: ModelVersion) -> tuple[str, int] | None:
    """(output name, column) whose value quality metrics read: config ``skewless.score_output`` (default the
    first output) and ``skewless.score_index`` (default the last column: the positive class of a two-column
    probability output, the only column of a one-column one)."""
    name = read(mv.config, PARAM_SCORE_OUTPUT) or (mv.output_names[0] if mv.output_names else None)
    if name is None:
        return None
    if name not in mv.outputs:
        raise ModelLoadError(f"model '{mv.name}': config parameter '{PARAM_SCORE_OUTPUT}' names '{name}', which "
                             f"is not an output (outputs: {mv.output_names})")
    return name, read(mv.config, PARAM_SCORE_INDEX, f"model '{mv.name}'")


def _bytes_values(arr: np.ndarray) -> list[bytes]:
    """BYTES elements, from an object array or a feature model's wire bytes (4-byte length prefixes)."""
    if arr.dtype != np.uint8 or not hasattr(arr, "count"):
        return [bytes(v) if not isinstance(v, str) else v.encode() for v in arr.reshape(-1)]
    data = arr.tobytes()
    out, pos = [], 0
    for _ in range(arr.count):
        n = int.from_bytes(data[pos:pos + 4], "little")
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def _column(parts: list[np.ndarray], rows: list[int], n: int):
    """One column from every record's array of it: numeric ones concatenated (rows x width), BYTES decoded."""
    import pyarrow as pa

    if any(a.dtype == object or hasattr(a, "count") for a in parts):
        values = [v for a in parts for v in _bytes_values(a)]
        flat = pa.array(values, pa.large_binary())
        width = len(values) // n if n else 1
    else:
        joined = parts[0].reshape(rows[0], -1) if len(parts) == 1 else np.concatenate(
            [a.reshape(k, -1) for a, k in zip(parts, rows, strict=True)])
        width = joined.shape[1]
        flat = pa.array(np.ascontiguousarray(joined).reshape(-1))
    if width == 1:
        return flat
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _to_batch(recs: list[Record]):
    """The records of one layout as one Arrow record batch (column-wise: no per-row Python work)."""
    import pyarrow as pa

    rows = [r.rows for r in recs]
    counts = np.array(rows, dtype=np.int64)
    n = int(counts.sum())

    def repeat(values: list, kind) -> pa.Array:
        if len(values) == 1:
            return pa.array(values * n, kind)
        distinct = pa.array(values, kind)  # a list, not an object ndarray: pyarrow would import pandas for that
        return distinct if len(values) == n else distinct.take(pa.array(np.repeat(np.arange(len(values)), counts)))

    first = recs[0]
    score = np.full(n, np.nan)
    if first.score is not None and first.score[0] in first.names:
        k = first.names.index(first.score[0])
        parts = [r.arrays[k] for r in recs]
        if all(p.dtype != object for p in parts):
            out = np.concatenate([np.asarray(p, np.float64).reshape(c, -1) for p, c in zip(parts, rows, strict=True)])
            if -out.shape[1] <= first.score[1] < out.shape[1]:
                score = out[:, first.score[1]]
    arrays = [
        repeat([r.request_id for r in recs], pa.string()),
        pa.array(np.arange(n, dtype=np.int32) - np.repeat((np.cumsum(counts) - counts).astype(np.int32), counts)),
        pa.array(np.repeat(np.array([r.time_ns for r in recs], dtype=np.int64), counts)).cast(
            pa.timestamp("ns", tz="UTC")),
        pa.array([first.model] * n, pa.string()),
        pa.array(np.repeat(np.array([r.version for r in recs], dtype=np.int64), counts)),
        repeat([r.spec_hash for r in recs], pa.string()),
        repeat([r.arm for r in recs], pa.string()),
        pa.array(np.zeros(n, dtype=np.bool_)),
        pa.array(score),
    ]
    names = list(CONTEXT_COLUMNS)
    for name in sorted(first.feeds):
        arrays.append(_column([r.feeds[name] for r in recs], rows, n))
        names.append(name)
    for k, name in enumerate(first.names):
        arrays.append(_column([r.arrays[k] for r in recs], rows, n))
        names.append(OUTPUT_PREFIX + name)
    return pa.RecordBatch.from_arrays(arrays, names=names)
