"""Served-feature log: sampled requests' raw inputs and transformed tensors, written to rotating Parquet files.

Turned on per model by config parameters (Triton's ``parameters`` map, string values)::

    parameters { key: "skewless.feature_log_rate" value { string_value: "0.01" } }   # fraction of requests
    parameters { key: "skewless.feature_log_dir"  value { string_value: "/var/log/skewless/features" } }

optional: ``skewless.feature_log_queue`` (batches held for the writer, default 1024),
``skewless.feature_log_rotate_rows`` (default 1000000) and ``skewless.feature_log_rotate_seconds``
(default 5). A relative directory is taken from the server's working directory. Sampling is per request
(all rows of a sampled request are logged), so a logged request can be replayed whole.

Off the hot path: the worker thread that ran the batch only copies the sampled rows of the model tensor
(its buffers are reused) and offers the record to a bounded queue (``background.BackgroundWriter``); when
the queue is full the record is dropped and counted, never waited for. One writer thread per model version
turns records into Arrow and writes them as ``DIR/<model>/<version>/features-<UTC time>-<pid>-<seq>.parquet``;
a file is written under a ``.parquet.tmp`` name and renamed when it is closed (after ``rotate_rows`` rows or
``rotate_seconds`` seconds, at ``flush``, unload and shutdown), so readers such as ``skewless skew-check --log
DIR`` only ever see complete files. A Parquet file is unreadable until closed, hence the short default
rotation: a logged row is readable within about ``rotate_seconds`` + 1 s (rows wait up to a second to be
written as one row group) while the server runs.

The layout is the one ``skewless.native.skew`` reads: one column per raw input (float64, int64, bool,
large_binary with the exact bytes received), one ``fixed_size_list`` column per output tensor holding the
served bytes, one float64 column per windowed aggregate of the spec (issue 29: the value the kernel read
for the row, which ``skew-check`` replays instead of recomputing the window), plus ``time`` (timestamp[ns, UTC], when the request was decoded), ``model_name``,
``model_version``, ``request_id`` and ``row`` (the row's index within its request); the schema metadata
carries the spec's SHA-256 under ``skewless.spec_sha256``.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skewless.native.spec import FeatureSpec
from skewless.protos import model_config_pb2 as mc

from ..background import BackgroundWriter
from ..errors import ModelLoadError
from ..parameters import read

log = logging.getLogger(__name__)

PARAM_RATE = "skewless.feature_log_rate"
PARAM_DIR = "skewless.feature_log_dir"
PARAM_QUEUE = "skewless.feature_log_queue"
PARAM_ROTATE_ROWS = "skewless.feature_log_rotate_rows"
PARAM_ROTATE_SECONDS = "skewless.feature_log_rotate_seconds"
CONTEXT_COLUMNS = ("time", "model_name", "model_version", "request_id", "row")
# Rows gathered before one Parquet row group is written, and the longest a row waits in memory.
FLUSH_ROWS = 16384
FLUSH_SECONDS = 1.0
# File sequence numbers shared by every logger of the process: a reloaded version's new logger never reuses
# a file name of the one it replaces, even within the same second.
_FILE_SEQ = itertools.count(1)


@dataclass(frozen=True)
class LogSettings:
    directory: Path
    rate: float
    queue_size: int = 1024
    rotate_rows: int = 1_000_000
    rotate_seconds: float = 5.0  # also the longest a logged row stays unreadable (issue 24)


def log_settings(cfg: mc.ModelConfig, where: str) -> LogSettings | None:
    """The feature-log parameters of a model config; None when logging is off (rate 0 or absent)."""
    rate = read(cfg, PARAM_RATE, where)
    if rate == 0.0:
        return None
    directory = read(cfg, PARAM_DIR, where)
    if not directory:
        raise ModelLoadError(f"{where}: config parameter '{PARAM_RATE}' is {rate:g} but '{PARAM_DIR}' is not set")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ModelLoadError(f"{where}: feature logging writes Parquet and needs pyarrow: "
                             "pip install 'skewless[features]'") from None
    return LogSettings(Path(directory).absolute(), rate, read(cfg, PARAM_QUEUE, where),
                       read(cfg, PARAM_ROTATE_ROWS, where), read(cfg, PARAM_ROTATE_SECONDS, where))


@dataclass
class _OpenFile:
    writer: Any  # pyarrow.parquet.ParquetWriter
    tmp: Path
    final: Path
    opened: float  # time.monotonic()
    rows: int = 0


def _rows(record: LogRecord) -> int:
    return sum(r[2] for r in record.requests)


@dataclass
class LogRecord:
    """Sampled requests of one batch: the batch's merged raw columns, which rows of them were sampled
    (None: all), copies of those rows of each model tensor, and (request id, time ns, rows) per request."""

    columns: dict[str, Any]
    rows: np.ndarray | None
    tensors: dict[str, np.ndarray]
    requests: list[tuple[str, int, int]]
    derived: dict[str, np.ndarray] | None = None  # the sampled rows' aggregate values, by aggregate name


class FeatureLogger:
    """The bounded background writer of one model version's feature log, and the file it writes."""

    def __init__(self, settings: LogSettings, spec: FeatureSpec, model_name: str, version: int) -> None:
        self.settings = settings
        self.spec = spec
        self.model_name = model_name
        self.version = version
        self.directory = settings.directory / model_name / str(version)
        self.aggregate_names = spec.aggregate_names  # derived float columns, logged beside the raw inputs
        named = [*spec.input_names, *spec.output_names, *self.aggregate_names]
        clash = {n for n in named if named.count(n) > 1} | (set(CONTEXT_COLUMNS) & set(named))
        if clash:
            raise ModelLoadError(f"model '{model_name}' version {version}: the feature log cannot hold columns "
                                 f"{sorted(clash)} twice (raw inputs, aggregates, output tensors and "
                                 f"{CONTEXT_COLUMNS} share one table)")
        self._rng = random.Random()
        self._file: _OpenFile | None = None  # the writer thread's
        self.writer: BackgroundWriter[LogRecord] = BackgroundWriter(
            f"feature-log-{model_name}-{version}", self._write, capacity=settings.queue_size,
            batch=self._batch_rows, max_delay=FLUSH_SECONDS, weight=_rows, tick=self._tick,
            on_stop=self._close_file, label=f"feature log of model '{model_name}' version {version}: writing")
        self.logged_rows = 0
        self.dropped_rows = 0
        self.files = 0

    @property
    def errors(self) -> int:
        return self.writer.errors

    # -- the worker-thread side: cheap and never blocking ----------------------------------------------
    def sample(self, n_requests: int) -> list[int]:
        """Indices of the requests of a batch to log."""
        rate = self.settings.rate
        if rate >= 1.0:
            return list(range(n_requests))
        r = self._rng.random
        return [i for i in range(n_requests) if r() < rate]

    def has_room(self) -> bool:
        return not self.writer.closed and not self.writer.full

    def drop(self, rows: int) -> None:
        self.dropped_rows += rows  # a racy counter is fine: it is a statistic

    def submit(self, record: LogRecord) -> None:
        if not self.writer.offer(record):
            self.drop(_rows(record))

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write what is queued and close the open file, so every row logged so far is readable now."""
        return self.writer.flush(timeout)

    def close(self) -> None:
        """Write what is queued, close the open file and stop the writer (blocks; not on the event loop)."""
        started = self.writer.started
        if not self.writer.close(timeout=60):
            log.error("feature log of model '%s' version %d: the writer is stuck; %d queued records lost",
                      self.model_name, self.version, len(self.writer))
        if not started:
            return
        log.info("feature log of model '%s' version %d: %d rows in %d files under %s, %d rows dropped "
                 "(queue full), %d write errors", self.model_name, self.version, self.logged_rows, self.files,
                 self.directory, self.dropped_rows, self.errors)

    # -- the writer thread -----------------------------------------------------------------------------
    def _batch_rows(self) -> int:
        """Rows gathered before they are written: one row group, or what completes the open file."""
        file_rows = self._file.rows if self._file is not None else 0
        return min(FLUSH_ROWS, self.settings.rotate_rows - file_rows)

    def _write(self, records: list[LogRecord]) -> None:
        import pyarrow as pa

        rows = sum(_rows(r) for r in records)
        try:
            table = pa.Table.from_batches([self._to_batch(r) for r in records])
            if self._file is None:
                self._file = self._open(table.schema)
            self._file.writer.write_table(table)
            self._file.rows += rows
            self.logged_rows += rows
            if self._file.rows >= self.settings.rotate_rows:
                self._close_file()
        except Exception:
            self.dropped_rows += rows
            file = self._file
            if file is not None:
                try:
                    self._close_file()
                except Exception:
                    log.exception("feature log: closing %s failed", file.tmp)
            raise

    def _tick(self, flush: bool) -> float | None:
        """Close the open file when asked or when it is rotate_seconds old; else the seconds left until then."""
        if self._file is None:
            return None
        left = self._file.opened + self.settings.rotate_seconds - time.monotonic()
        if flush or left <= 0:
            self._close_file()
            return None
        return left

    def _open(self, schema) -> _OpenFile:
        import pyarrow.parquet as pq

        from skewless.native.fileio import SPEC_HASH_KEY

        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        final = self.directory / f"features-{stamp}Z-{os.getpid()}-{next(_FILE_SEQ):05d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        writer = pq.ParquetWriter(tmp, schema.with_metadata({SPEC_HASH_KEY: self.spec.sha256.encode()}))
        return _OpenFile(writer, tmp, final, time.monotonic())

    def _close_file(self) -> None:
        """Close the open file (if any) under its final name: from then on readers see it."""
        file, self._file = self._file, None
        if file is None:
            return
        file.writer.close()
        os.replace(file.tmp, file.final)
        self.files += 1

    def _to_batch(self, rec: LogRecord):
        import pyarrow as pa

        from skewless.native.fileio import tensor_array

        counts = np.array([r[2] for r in rec.requests], dtype=np.int64)
        n = int(counts.sum())
        take = pa.array(rec.rows) if rec.rows is not None else None
        ids = np.array([r[0] for r in rec.requests], dtype=object)
        times = np.array([r[1] for r in rec.requests], dtype=np.int64)
        row_in_request = np.arange(n, dtype=np.int32) - np.repeat(
            (np.cumsum(counts) - counts).astype(np.int32), counts)
        arrays = [
            pa.array(np.repeat(times, counts)).cast(pa.timestamp("ns", tz="UTC")),
            pa.array(np.full(n, self.model_name, dtype=object), pa.string()),
            pa.array(np.full(n, self.version, dtype=np.int64)),
            pa.array(np.repeat(ids, counts), pa.string()),
            pa.array(row_in_request),
        ]
        names = list(CONTEXT_COLUMNS)
        for t in self.spec.inputs:
            col = rec.columns[t.name]
            if isinstance(col, tuple) and t.dtype != "string":  # (values, valid): missing marks as nulls
                arr = pa.array(col[0], mask=~col[1])
            elif isinstance(col, tuple):  # (int64 offsets, uint8 data[, bool valid])
                validity = pa.array(col[2]).buffers()[1] if len(col) > 2 else None
                arr = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(col[0]) - 1,
                                                       [validity, pa.py_buffer(col[0]), pa.py_buffer(col[1])])
            else:
                arr = pa.array(col)
            arrays.append(arr.take(take) if take is not None else arr)
            names.append(t.name)
        for name in self.aggregate_names:  # already the sampled rows (copied at batch time)
            arrays.append(pa.array(rec.derived[name]) if rec.derived is not None
                          else pa.nulls(n, pa.float64()))
            names.append(name)
        for t in self.spec.outputs:
            arrays.append(tensor_array(rec.tensors[t.name]))
            names.append(t.name)
        return pa.RecordBatch.from_arrays(arrays, names=names)
