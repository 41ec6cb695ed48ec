"""Divergent shadow samples (over the tolerance) written to Parquet, off the request path.

One writer thread per (primary, challenger) pair; the shadow worker offers records to a bounded queue
(``background.BackgroundWriter``) and a full queue drops (counted). Records gathered for up to a second become one complete file, written under a
``.tmp`` name and renamed, so a reader (``skewless shadow-report``) never sees half a file:
``DIR/<primary>/divergent-<UTC time>-<pid>-<seq>.parquet``.

Columns: ``time`` (ns, UTC), ``request_id``, ``primary_model``, ``primary_version``, ``challenger_model``,
``challenger_version``, ``max_abs_diff``, ``agree``, then per tensor ``input.NAME``, ``primary.NAME`` and
``challenger.NAME`` (values flattened to a list, float64 for numbers, binary for BYTES) with ``shape.NAME``.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..background import BackgroundWriter

log = logging.getLogger(__name__)

QUEUE = 1024
FLUSH_SECONDS = 1.0
FLUSH_ROWS = 10_000
_SEQ = itertools.count()


@dataclass
class Divergence:
    time_ns: int
    request_id: str
    primary: tuple[str, int]
    challenger: tuple[str, int]
    max_abs_diff: float
    agree: bool
    inputs: dict[str, np.ndarray]
    primary_outputs: dict[str, np.ndarray]
    challenger_outputs: dict[str, np.ndarray]


class DivergenceLog:
    def __init__(self, directory: Path, primary: str):
        self.directory = Path(directory) / primary
        self.written = 0
        self.dropped = 0
        self._writer: BackgroundWriter[Divergence] = BackgroundWriter(
            f"shadow-log-{primary}", self._write, capacity=QUEUE, batch=FLUSH_ROWS, max_delay=FLUSH_SECONDS,
            label=f"shadow divergence log {self.directory}")
        self._writer.start()

    @property
    def errors(self) -> int:
        return self._writer.errors

    def offer(self, record: Divergence) -> None:
        if not self._writer.offer(record):
            self.dropped += 1

    def close(self) -> None:
        """Write what is queued and stop (blocks: call it off the event loop)."""
        if not self._writer.close(timeout=30):
            log.error("shadow divergence log %s: writer stuck, %d records lost", self.directory, len(self._writer))

    def _write(self, records: list[Divergence]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, pa.Array] = {
            "time": pa.array([r.time_ns for r in records], pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
            "request_id": pa.array([r.request_id for r in records], pa.string()),
            "primary_model": pa.array([r.primary[0] for r in records], pa.string()),
            "primary_version": pa.array([r.primary[1] for r in records], pa.int64()),
            "challenger_model": pa.array([r.challenger[0] for r in records], pa.string()),
            "challenger_version": pa.array([r.challenger[1] for r in records], pa.int64()),
            "max_abs_diff": pa.array([r.max_abs_diff for r in records], pa.float64()),
            "agree": pa.array([r.agree for r in records], pa.bool_()),
        }
        for prefix, attr in (("input", "inputs"), ("primary", "primary_outputs"),
                             ("challenger", "challenger_outputs")):
            for name in getattr(records[0], attr):
                arrays = [getattr(r, attr).get(name) for r in records]
                columns[f"{prefix}.{name}"] = pa.array([_values(a) for a in arrays])
                if prefix != "challenger":
                    columns[f"shape.{prefix}.{name}"] = pa.array(
                        [list(a.shape) if a is not None else None for a in arrays], pa.list_(pa.int64()))
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        final = self.directory / f"divergent-{stamp}Z-{os.getpid()}-{next(_SEQ):05d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(pa.table(columns), tmp)
        os.replace(tmp, final)
        self.written += len(records)


def _values(arr: np.ndarray | None) -> list | None:
    if arr is None:
        return None
    if arr.dtype.kind in "OSU":
        return [v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel()]
    return arr.astype(np.float64, copy=False).ravel().tolist()
