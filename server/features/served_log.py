"""Served-feature log: sampled requests' raw inputs and transformed tensors, written to rotating Parquet files.

Turned on per model by config parameters (Triton's ``parameters`` map, string values)::

    parameters { key: "skewless.feature_log_rate" value { string_value: "0.01" } }   # fraction of requests
    parameters { key: "skewless.feature_log_dir"  value { string_value: "/var/log/skewless/features" } }

optional: ``skewless.feature_log_queue`` (batches held for the writer, default 1024),
``skewless.feature_log_rotate_rows`` (default 1000000) and ``skewless.feature_log_rotate_seconds``
(default 300). A relative directory is taken from the server's working directory. Sampling is per request
(all rows of a sampled request are logged), so a logged request can be replayed whole.

Off the hot path: the worker thread that ran the batch only copies the sampled rows of the model tensor
(its buffers are reused) and offers the record to a bounded queue; when the queue is full the record is
dropped and counted, never waited for. One writer thread per model version turns records into Arrow and
writes them as ``DIR/<model>/<version>/features-<UTC time>-<pid>-<seq>.parquet``; a file is written under a
``.parquet.tmp`` name and renamed when it is closed (rotation, unload, shutdown), so readers such as
``skewless skew-check --log DIR`` only ever see complete files.

The layout is the one ``skewless.native.skew`` reads: one column per raw input (float64, int64, bool,
large_binary with the exact bytes received), one ``fixed_size_list`` column per output tensor holding the
served bytes, plus ``time`` (timestamp[ns, UTC], when the request was decoded), ``model_name``,
``model_version``, ``request_id`` and ``row`` (the row's index within its request); the schema metadata
carries the spec's SHA-256 under ``skewless.spec_sha256``.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skewless.native.spec import FeatureSpec
from skewless.protos import model_config_pb2 as mc

from ..errors import ModelLoadError
from ..models.config import parameter

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
_STOP = object()
# File sequence numbers shared by every logger of the process: a reloaded version's new logger never reuses
# a file name of the one it replaces, even within the same second.
_FILE_SEQ = itertools.count(1)


@dataclass(frozen=True)
class LogSettings:
    directory: Path
    rate: float
    queue_size: int = 1024
    rotate_rows: int = 1_000_000
    rotate_seconds: float = 300.0


def log_settings(cfg: mc.ModelConfig, where: str) -> LogSettings | None:
    """The feature-log parameters of a model config; None when logging is off (rate 0 or absent)."""

    def number(key: str, default: float, kind: type, lo: float, hi: float = float("inf")) -> Any:
        raw = parameter(cfg, key)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise ModelLoadError(f"{where}: config parameter '{key}' must be a {kind.__name__} in [{lo:g}, "
                                 f"{hi:g}], got '{raw}'")
        return value

    rate = number(PARAM_RATE, 0.0, float, 0.0, 1.0)
    if rate == 0.0:
        return None
    directory = parameter(cfg, PARAM_DIR)
    if not directory:
        raise ModelLoadError(f"{where}: config parameter '{PARAM_RATE}' is {rate:g} but '{PARAM_DIR}' is not set")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ModelLoadError(f"{where}: feature logging writes Parquet and needs pyarrow: "
                             "pip install 'skewless[features]'") from None
    return LogSettings(Path(directory).absolute(), rate, number(PARAM_QUEUE, 1024, int, 1),
                       number(PARAM_ROTATE_ROWS, 1_000_000, int, 1), number(PARAM_ROTATE_SECONDS, 300.0, float, 0.001))


@dataclass
class LogRecord:
    """Sampled requests of one batch: the batch's merged raw columns, which rows of them were sampled
    (None: all), copies of those rows of each model tensor, and (request id, time ns, rows) per request."""

    columns: dict[str, Any]
    rows: np.ndarray | None
    tensors: dict[str, np.ndarray]
    requests: list[tuple[str, int, int]]


class FeatureLogger:
    """Bounded queue plus one lazily started writer thread, for one model version."""

    def __init__(self, settings: LogSettings, spec: FeatureSpec, model_name: str, version: int) -> None:
        self.settings = settings
        self.spec = spec
        self.model_name = model_name
        self.version = version
        self.directory = settings.directory / model_name / str(version)
        clash = set(spec.input_names) & set(spec.output_names) | (
            set(CONTEXT_COLUMNS) & (set(spec.input_names) | set(spec.output_names)))
        if clash:
            raise ModelLoadError(f"model '{model_name}' version {version}: the feature log cannot hold columns "
                                 f"{sorted(clash)} twice (raw inputs, output tensors and {CONTEXT_COLUMNS} "
                                 "share one table)")
        self._queue: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.logged_rows = 0
        self.dropped_rows = 0
        self.files = 0
        self.errors = 0

    # -- the worker-thread side: cheap and never blocking ----------------------------------------------
    def sample(self, n_requests: int) -> list[int]:
        """Indices of the requests of a batch to log."""
        rate = self.settings.rate
        if rate >= 1.0:
            return list(range(n_requests))
        r = self._rng.random
        return [i for i in range(n_requests) if r() < rate]

    def has_room(self) -> bool:
        return not self._closed and not self._queue.full()

    def drop(self, rows: int) -> None:
        self.dropped_rows += rows  # a racy counter is fine: it is a statistic

    def submit(self, record: LogRecord) -> None:
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.drop(sum(r[2] for r in record.requests))

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"feature-log-{self.model_name}-{self.version}")
                self._thread.start()

    def close(self) -> None:
        """Write what is queued, close the open file and stop the writer (blocks; not on the event loop)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=30)  # the writer is draining, so room appears
        except queue.Full:
            log.error("feature log of model '%s' version %d: the writer is stuck; %d queued records lost",
                      self.model_name, self.version, self._queue.qsize())
        thread.join(timeout=60)
        log.info("feature log of model '%s' version %d: %d rows in %d files under %s, %d rows dropped "
                 "(queue full), %d write errors", self.model_name, self.version, self.logged_rows, self.files,
                 self.directory, self.dropped_rows, self.errors)

    # -- the writer thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        import pyarrow as pa

        pending: list = []
        pending_rows = 0
        first_pending = 0.0
        file = None  # (ParquetWriter, tmp path, final path, opened at, rows)
        stop = False
        while not stop:
            try:
                item = self._queue.get(timeout=FLUSH_SECONDS if (pending or file) else None)
            except queue.Empty:
                item = None
            try:
                if item is _STOP:
                    stop = True
                elif item is not None:
                    if not pending:
                        first_pending = time.monotonic()
                    pending_rows += sum(r[2] for r in item.requests)  # counted as dropped if anything fails
                    pending.append(self._to_batch(item))
                now = time.monotonic()
                file_rows = file[4] if file else 0
                rotate = file is not None and (now - file[3] >= self.settings.rotate_seconds)
                full = file_rows + pending_rows >= self.settings.rotate_rows
                if pending and (stop or full or pending_rows >= FLUSH_ROWS or now - first_pending >= FLUSH_SECONDS):
                    if file is None:
                        file = self._open(pending[0].schema)
                    file[0].write_table(pa.Table.from_batches(pending))
                    file = (*file[:4], file[4] + pending_rows)
                    self.logged_rows += pending_rows
                    pending, pending_rows = [], 0
                    full = file[4] >= self.settings.rotate_rows
                if file is not None and (stop or rotate or full):
                    self._close_file(file)
                    file = None
            except Exception:
                self.errors += 1
                self.dropped_rows += pending_rows
                pending, pending_rows = [], 0
                log.exception("feature log of model '%s' version %d: write failed; records dropped",
                              self.model_name, self.version)
                if file is not None:
                    try:
                        self._close_file(file)
                    except Exception:
                        log.exception("feature log: closing %s failed", file[1])
                    file = None

    def _open(self, schema) -> tuple:
        import pyarrow.parquet as pq

        from skewless.native.fileio import SPEC_HASH_KEY

        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        final = self.directory / f"features-{stamp}Z-{os.getpid()}-{next(_FILE_SEQ):05d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        writer = pq.ParquetWriter(tmp, schema.with_metadata({SPEC_HASH_KEY: self.spec.sha256.encode()}))
        return writer, tmp, final, time.monotonic(), 0

    def _close_file(self, file: tuple) -> None:
        file[0].close()
        os.replace(file[1], file[2])
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
        for t in self.spec.outputs:
            arrays.append(tensor_array(rec.tensors[t.name]))
            names.append(t.name)
        return pa.RecordBatch.from_arrays(arrays, names=names)
