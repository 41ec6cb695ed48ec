"""The lineage hub the server wires: prediction log, label join, quality monitor, and label submission.

Per model config parameters: ``skewless.prediction_log_rate`` (prediction_log.py), ``skewless.task``
(``classification`` or ``regression``: turns on live quality), ``skewless.score_output`` /
``skewless.score_index`` (which value is the score) and ``skewless.quality_thresholds``
(``metric:value`` pairs, e.g. ``accuracy:0.8,log_loss:0.6``: breaches reach ``QualityMonitor.on_breach``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument, ModelLoadError, NotFound
from ..hooks import ALL_ROWS
from ..models.repository import ModelRepository
from ..models.version import ModelVersion
from ..parameters import read
from .labels import LabelCounts, LabelJoin
from .prediction_log import PredictionLog, PredictionLogSettings
from .quality import CLASSIFIER_METRICS, REGRESSOR_METRICS, QualityMonitor

log = logging.getLogger(__name__)

PARAM_TASK = "skewless.task"
PARAM_THRESHOLDS = "skewless.quality_thresholds"
MAX_LABELS_PER_CALL = 100_000


class Lineage:
    def __init__(self, repository: ModelRepository, settings: PredictionLogSettings,
                 windows_s: tuple[float, ...] = (300.0, 3600.0), max_pending: int = 100_000,
                 pending_ttl_s: float = 86_400.0, check_interval_s: float = 10.0) -> None:
        self.repository = repository
        self.quality = QualityMonitor(windows_s)
        self.join = LabelJoin(Path(settings.directory), max_pending, pending_ttl_s, self.quality.add)
        self.log = PredictionLog(settings, self.join)
        self.check_interval_s = check_interval_s
        self._task: asyncio.Task | None = None

    def attach(self, mv: ModelVersion) -> None:
        """Version hook: the prediction log's per-model settings and the quality task."""
        self.log.attach(mv)
        task = read(mv.config, PARAM_TASK, f"model '{mv.name}'")
        if task is None:
            return
        self.quality.configure(mv.name, task, _thresholds(mv, task))

    def status(self) -> dict[str, Any]:
        """The prediction log and the label join, as ``GET /v2/status/lineage`` shows them."""
        return {"prediction_log": self.log.status(), "labels": self.join.status()}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._check_loop())

    async def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.check_interval_s)
            try:
                await loop.run_in_executor(None, self.quality.check)
            except Exception:
                log.exception("quality check failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.get_running_loop().run_in_executor(None, self.log.close)

    async def submit(self, model: str, items: Sequence[tuple[str, Sequence[float], int]]) -> LabelCounts:
        """Labels (request id, values, row: ALL_ROWS for one value per row, else the row the one value is for)
        for ``model``: what became of them. Values outside the model's task (a classifier takes 0 or 1, a
        regressor any finite number) or counts that do not fit the request refuse the whole call
        (InvalidArgument, nothing taken). Reads rotated files in a worker thread."""
        if model not in self.repository.models:
            raise NotFound(f"unknown model '{model}'")
        if not items:
            raise InvalidArgument("no labels given: expected one or more (request id, values)")
        if len(items) > MAX_LABELS_PER_CALL:
            raise InvalidArgument(f"{len(items)} labels in one call; at most {MAX_LABELS_PER_CALL}")
        try:
            for rid, values, row in items:
                check_label(model, self.quality.tasks.get(model), rid, values, row)
        except InvalidArgument:
            self.join.refused(len(items))
            raise
        return await asyncio.get_running_loop().run_in_executor(None, self.join.submit, model, items)


def check_label(model: str, task: str | None, rid: str, values: Sequence[float], row: int) -> None:
    """A label's own shape and value domain (its count against the request's rows is checked at the join)."""
    if not rid:
        raise InvalidArgument("every label needs the request id its prediction's reply carried")
    if not values:
        raise InvalidArgument(f"label for request '{rid}' has no values: expected one per row")
    if row < ALL_ROWS:
        raise InvalidArgument(f"label for request '{rid}' names row {row}: rows are numbered from 0")
    for v in values:
        if not math.isfinite(v):
            raise InvalidArgument(f"label for request '{rid}' has the value {v}: labels are finite numbers")
        if task == "classification" and v not in (0.0, 1.0):
            raise InvalidArgument(f"label for request '{rid}' has the value {v:g}, but model '{model}' is a "
                                  "binary classifier (skewless.task classification): a label is 0 or 1")


def _thresholds(mv: ModelVersion, task: str) -> dict[str, float]:
    raw = read(mv.config, PARAM_THRESHOLDS)
    if not raw:
        return {}
    allowed = CLASSIFIER_METRICS if task == "classification" else REGRESSOR_METRICS
    out = {}
    for part in raw.split(","):
        name, _, value = part.strip().partition(":")
        try:
            out[name] = float(value)
        except ValueError:
            name = ""
        if name not in allowed:
            raise ModelLoadError(f"model '{mv.name}': config parameter '{PARAM_THRESHOLDS}' takes metric:value "
                                 f"pairs with metrics among {allowed}, got '{part}'")
    return out
