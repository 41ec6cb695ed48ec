"""Online drift monitoring of one model version: feature PSI against the spec's references, prediction PSI
against a reference output distribution, over sliding windows of sampled served rows.

Installed as ``ModelVersion.batch_observer`` (by the telemetry wiring), so ``__call__`` runs on the thread
that ran the batch and must return at once: it decides how many rows to keep (a fraction of batches, capped
in rows per second by a token bucket), copies those rows of the tensors it needs (the feature stage reuses
its buffers for the next batch) and offers them to a bounded queue; a full queue drops the batch and counts
it, never waits. One daemon thread per monitor bins the rows (``reference.Bins``), slides the windows
(``window.SlidingCounts``) and recomputes PSI (``psi.psi``) at most every ``interval`` seconds.

Config parameters (``config.pbtxt``, string values; a bad value fails the load with ModelLoadError):

* ``skewless.drift`` (1): 0 switches drift monitoring off for the model;
* ``skewless.drift_warn`` (0.1), ``skewless.drift_alert`` (0.25): PSI levels, warn < alert;
* ``skewless.drift_window_rows`` (10000): rows in the sliding window; PSI is reported once half are in;
* ``skewless.drift_sample_rate`` (1): fraction of batches looked at;
* ``skewless.drift_max_rows_per_s`` (2000): rows kept per second at most (token bucket, 1 s burst);
* ``skewless.drift_max_batches_per_s`` (20): batches sampled per second at most: a sampled batch costs its
  thread ~11-23 us and the worker's binning holds the GIL, so at small batches the row cap alone let drift
  take ~15% of the server's CPU (telemetry report, example MLP at 64 clients); at 20 batches/s a window fills
  in seconds under load, in minutes for a lone 1-row client;
* ``skewless.drift_interval_s`` (5): PSI recomputed at most this often;
* ``skewless.drift_alpha`` (0.001): a warn or alert level also needs a chi-square test of the window's counts against
  the reference's to reject "same distribution" at this level, on bins merged until each cell expects >= 5
  rows: PSI alone on a small window is noise (an empty bin adds ~0.7), so a window too small for the bins
  never alarms, whatever its PSI;
* ``skewless.drift_queue`` (256): sampled batches waiting for the worker; more are dropped and counted;
* ``skewless.prediction_reference`` (``auto``): ``auto`` is the version's own ``drift_reference.json``
  (``REFERENCE_FILE``, written by ``skewless export`` from the held-out rows) when it ships one, else
  ``learn:1000``; ``learn:N`` learns it from the first N sampled output rows after load, a log line stating
  the window (rows, requests' time span) once learnt; a file name is a JSON file in the version folder
  (format: ``reference.prediction_reference_document``); ``off`` switches prediction drift off. Which one is
  in use, and from how many rows, is the ``skewless_drift_reference_rows{source="file|learnt"}`` gauge.

Why 2000 rows/s: a PSI over ~10 bins from a few thousand rows has sampling noise near 0.01 (its expected
value under no drift is about bins * (1/window + 1/reference rows)), far below the 0.1 threshold, so more
rows buy nothing but CPU; at 2000 rows/s the window of 10000 turns over in 5 s under load, and copying the
churn example's 22 tensor values per row costs ~200 KB/s.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..background import BackgroundWriter
from ..errors import ModelLoadError
from ..parameters import read
from .psi import BinShift, Thresholds, psi, top_shifts
from .reference import (
    Bins,
    PredictionDomain,
    ReferenceFormatError,
    feature_bins,
    learn_prediction,
    prediction_bins,
    prediction_domain,
    read_prediction_reference,
)
from .significance import homogeneity
from .window import SlidingCounts

if TYPE_CHECKING:
    from skewless.protos import model_config_pb2 as mc

    from ..models.version import ModelVersion

log = logging.getLogger(__name__)

PARAM_DRIFT = "skewless.drift"
PARAM_WARN = "skewless.drift_warn"
PARAM_ALERT = "skewless.drift_alert"
PARAM_WINDOW = "skewless.drift_window_rows"
PARAM_SAMPLE = "skewless.drift_sample_rate"
PARAM_MAX_ROWS = "skewless.drift_max_rows_per_s"
PARAM_MAX_BATCHES = "skewless.drift_max_batches_per_s"
PARAM_INTERVAL = "skewless.drift_interval_s"
PARAM_QUEUE = "skewless.drift_queue"
PARAM_PREDICTION = "skewless.prediction_reference"
PARAM_ALPHA = "skewless.drift_alpha"
DEFAULT_PREDICTION = "auto"
REFERENCE_FILE = "drift_reference.json"  # the prediction reference a version ships (``auto``)
LEARN_ROWS = 1000  # rows learnt from under ``auto`` when the version ships no reference
TOP_BINS = 3


@dataclass(frozen=True)
class DriftSettings:
    thresholds: Thresholds = Thresholds()
    window_rows: int = 10_000
    sample_rate: float = 1.0
    max_rows_per_s: float = 2000.0
    max_batches_per_s: float = 20.0
    interval_s: float = 5.0
    queue_size: int = 256
    prediction: str = DEFAULT_PREDICTION  # 'auto', 'learn:N', a file name, or 'off'
    alpha: float = 0.001  # a level above ok also needs the chi-square test against the reference to reject at this

    @property
    def min_rows(self) -> int:
        """Rows the window needs before its PSI is reported: below that, sampling noise dominates."""
        return max(1, self.window_rows // 2)

    @property
    def learn_rows(self) -> int | None:
        if self.prediction == "auto":
            return LEARN_ROWS
        return int(self.prediction[6:]) if self.prediction.startswith("learn:") else None


def drift_settings(cfg: mc.ModelConfig, where: str) -> DriftSettings | None:
    """The drift parameters of a model config; None when ``skewless.drift`` is 0. Raises ModelLoadError."""
    if not read(cfg, PARAM_DRIFT, where):
        return None
    warn, alert = read(cfg, PARAM_WARN, where), read(cfg, PARAM_ALERT, where)
    if not warn < alert:
        raise ModelLoadError(f"{where}: config parameter '{PARAM_WARN}' ({warn:g}) must be below "
                             f"'{PARAM_ALERT}' ({alert:g})")
    prediction = read(cfg, PARAM_PREDICTION, where).strip()
    return DriftSettings(
        thresholds=Thresholds(warn, alert),
        window_rows=read(cfg, PARAM_WINDOW, where),
        sample_rate=read(cfg, PARAM_SAMPLE, where),
        max_rows_per_s=read(cfg, PARAM_MAX_ROWS, where),
        max_batches_per_s=read(cfg, PARAM_MAX_BATCHES, where),
        interval_s=read(cfg, PARAM_INTERVAL, where),
        queue_size=read(cfg, PARAM_QUEUE, where),
        prediction=prediction,
        alpha=read(cfg, PARAM_ALPHA, where),
    )


@dataclass(frozen=True)
class DriftEvent:
    """A feature or prediction output whose level changed (ok -> warn -> alert, or back)."""

    model: str
    version: int
    kind: str  # 'feature' | 'prediction'
    name: str
    psi: float
    level: str  # 'ok' | 'warn' | 'alert'
    previous: str
    top_bins: tuple[BinShift, ...]
    window_rows: int
    time: float = field(default_factory=time.time)


DriftSubscriber = Callable[[DriftEvent], None]


class _Series:
    """The bins of one kind (features or predictions), concatenated into one sliding window."""

    def __init__(self, kind: str, bins: list[Bins], window_rows: int) -> None:
        self.kind = kind
        self.bins = bins
        self.bounds = np.cumsum([0, *(b.n_bins for b in bins)])
        self.window = SlidingCounts(int(self.bounds[-1]), window_rows)
        self.tensors = sorted({b.tensor for b in bins})

    def add(self, tensors: dict[str, np.ndarray], rows: int) -> None:
        counts = np.concatenate([b.count(tensors[b.tensor]) for b in self.bins])
        self.window.add(counts, rows)


class DriftMonitor:
    """Drift of one model version's features and predictions; a ``BatchObserver``. Thread-safe."""

    def __init__(self, model: str, version: int, settings: DriftSettings, features: list[Bins],
                 skipped: dict[str, str], domains: list[PredictionDomain],
                 prediction_reference: dict[str, Bins] | None) -> None:
        self.model, self.version, self.settings = model, version, settings
        self.where = f"model '{model}' version {version}"
        self.skipped = dict(skipped)  # feature or output name -> why it is not monitored
        self._features = _Series("feature", features, settings.window_rows) if features else None
        self._domains = {d.output: d for d in domains}
        self._predictions: _Series | None = None
        self._learnt: dict[str, Any] | None = None
        self._learning: dict[str, list[np.ndarray]] = {d.output: [] for d in domains}
        self._learning_since: float | None = None  # time.time() of the first row learnt from
        # (source, rows) of the prediction reference in use: 'file' or 'learnt' (None: none yet)
        self.reference_source: tuple[str, int] | None = None
        if prediction_reference is not None:
            self._install_predictions(list(prediction_reference.values()))
            self.reference_source = ("file", max(int(b.reference.sum()) for b in prediction_reference.values()))
        self._feature_tensors = self._features.tensors if self._features else []
        self._lock = threading.Lock()
        self._subscribers: list[DriftSubscriber] = []
        self._writer: BackgroundWriter[tuple] = BackgroundWriter(
            f"drift-{model}-{version}", self._absorb_all, capacity=settings.queue_size, tick=self._tick,
            label=f"{self.where}: drift update")
        self._due = time.monotonic() + settings.interval_s  # PSI recomputed at most every interval_s
        self._dirty = False  # rows binned since the last recompute
        self._rng = random.Random()
        self._tokens = settings.max_rows_per_s  # a full 1 s burst
        self._last = time.monotonic()
        self._min_gap = 1.0 / settings.max_batches_per_s
        self._next_sample = 0.0  # monotonic time before which batches are not looked at
        self._psi: dict[str, dict[str, float]] = {"feature": {}, "prediction": {}}
        self._levels: dict[tuple[str, str], str] = {}
        # statistics (updated without locks: racy by a count at worst)
        self.sampled_batches = 0
        self.sampled_rows = 0
        self.dropped_batches = 0

    @property
    def errors(self) -> int:
        return self._writer.errors

    # -- load time ------------------------------------------------------------------------------------------
    @classmethod
    def for_version(cls, mv: ModelVersion) -> DriftMonitor | None:
        """The monitor of a loaded version, or None when there is nothing to monitor (switched off, or no
        feature spec and no prediction drift). Cheap (no thread starts); raises ModelLoadError on bad config."""
        where = f"model {mv.label}"
        settings = drift_settings(mv.config, where)
        if settings is None:
            return None
        features: list[Bins] = []
        skipped: dict[str, str] = {}
        if mv.features is not None:
            features, skipped = feature_bins(mv.features.spec)
        domains: list[PredictionDomain] = []
        reference: dict[str, Bins] | None = None
        if settings.prediction != "off":
            batching = mv.max_batch_size > 0
            for name, spec in mv.outputs.items():
                dims = list(spec.reshape if spec.reshape is not None else spec.dims)
                domain = prediction_domain(name, spec.datatype.name, dims if batching else dims[1:])
                if isinstance(domain, str):
                    skipped[name] = domain
                else:
                    domains.append(domain)
            if domains and settings.prediction == "auto" and (mv.path.parent / REFERENCE_FILE).is_file():
                settings = replace(settings, prediction=REFERENCE_FILE)
            if domains and settings.learn_rows is None:
                reference = _read_reference_file(mv, settings.prediction, domains, where)
                domains = [d for d in domains if d.output in reference]
        if not features and not domains:
            return None
        monitor = cls(mv.name, mv.version, settings, features, skipped, domains, reference)
        for name, reason in skipped.items():  # once, at load
            log.info("%s: drift of '%s' is not monitored: %s", where, name, reason)
        if not domains:
            source = "no prediction drift"
        elif reference is None:
            source = (f"no {REFERENCE_FILE} shipped with the version: its prediction reference will be learnt from "
                      f"the first {settings.learn_rows} sampled output rows served (a window stated once learnt)"
                      if settings.prediction == "auto" else
                      f"prediction reference learnt from the first {settings.learn_rows} sampled outputs")
        else:
            source = f"prediction reference {settings.prediction}"
        log.info("%s: drift monitoring %d features and %d outputs, %s", where, len(features), len(domains),
                 source)
        return monitor

    # -- the batch thread: cheap, never blocking -------------------------------------------------------------
    def __call__(self, inputs: dict[str, np.ndarray], output_names: list[str], outputs: list[np.ndarray]) -> None:
        if self._writer.closed:
            return
        if self.settings.sample_rate < 1.0 and self._rng.random() >= self.settings.sample_rate:
            return
        now = time.monotonic()
        if now < self._next_sample:  # the common case under load: one comparison
            return
        self._next_sample = now + self._min_gap
        n = outputs[0].shape[0] if outputs else next(iter(inputs.values())).shape[0]
        # Token bucket without a lock: batches of several instances may race on it, costing at most one
        # batch's rows over the cap; a lock would put the instances' threads in line for a statistic.
        rate = self.settings.max_rows_per_s
        tokens = min(rate, self._tokens + (now - self._last) * rate)
        self._last = now
        k = min(n, int(tokens))
        self._tokens = tokens - k
        if k <= 0:
            return
        start = self._rng.randrange(n - k + 1) if k < n else 0  # a random run of rows: cheap, unbiased
        rows = slice(start, start + k)
        feats = {name: inputs[name][rows].copy() for name in self._feature_tensors}
        preds = {}
        if self._domains:
            for name, arr in zip(output_names, outputs, strict=False):
                if name in self._domains:
                    preds[name] = arr[rows].reshape(k, -1).copy()
        if not self._writer.offer((feats, preds, k)):
            self.dropped_batches += 1
            return
        self.sampled_batches += 1
        self.sampled_rows += k

    # -- reading ---------------------------------------------------------------------------------------------
    def feature_psi(self) -> dict[str, float]:
        """PSI per monitored feature over the current window (empty until the window holds enough rows)."""
        return dict(self._psi["feature"])

    def prediction_psi(self) -> dict[str, float]:
        """PSI per monitored output (empty while the reference is being learnt or the window fills)."""
        return dict(self._psi["prediction"])

    def state(self, name: str, kind: str | None = None) -> str:
        """'ok', 'warn' or 'alert' of a feature or output (``kind`` 'feature'/'prediction' when a name is
        both); 'ok' until its PSI is known. KeyError for a name that is not monitored."""
        kinds = [kind] if kind else [k for k in ("feature", "prediction") if name in self.monitored(k)]
        if not kinds or (kind and name not in self.monitored(kind)):
            raise KeyError(f"{self.where}: '{name}' is not monitored")
        if len(kinds) > 1:
            raise ValueError(f"{self.where}: '{name}' is both a feature and an output: pass kind=")
        return self._levels.get((kinds[0], name), "ok")

    def monitored(self, kind: str) -> list[str]:
        if kind == "feature":
            return [b.name for b in self._features.bins] if self._features else []
        return list(self._domains)

    def counters(self) -> dict[str, int]:
        return {"sampled_batches": self.sampled_batches, "sampled_rows": self.sampled_rows,
                "dropped_batches": self.dropped_batches, "errors": self.errors}

    def status(self) -> dict[str, Any]:
        """The window, where the references come from, the last PSI per feature and output, and the names
        whose level is warn or alert (any thread; the PSI is as of the last recompute)."""
        levels = dict(self._levels)
        return {"window_rows": self.settings.window_rows, "feature_reference": "feature spec" if self._features else None,
                "prediction_reference": self.settings.prediction, "feature_psi": self.feature_psi(),
                "prediction_psi": self.prediction_psi(),
                "alarms": [{"kind": k, "name": n, "level": lv} for (k, n), lv in sorted(levels.items()) if lv != "ok"],
                "skipped": dict(self.skipped), **self.counters()}

    def learnt_prediction_reference(self) -> dict[str, Any] | None:
        """The reference learnt from the first outputs, as a prediction reference file (None if not learnt):
        save it beside the model to keep comparing with the same reference after a reload."""
        return json.loads(json.dumps(self._learnt)) if self._learnt is not None else None

    def subscribe(self, callback: DriftSubscriber) -> Callable[[], None]:
        """Call ``callback(event)`` on each level change; returns the function that unsubscribes. Callbacks
        run on the monitor's worker thread: hand slow work off (a slow callback only delays drift updates
        and, once the queue is full, drops sampled batches; the batch path never waits)."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything queued so far is binned, then recompute PSI now (tests, offline use).
        False if the worker did not get there within ``timeout``."""
        return self._writer.flush(timeout)

    def close(self) -> None:
        """Stop the worker (when the version unloads); later batches are ignored. Idempotent."""
        if not self._writer.close(timeout=5):
            log.warning("%s: drift worker did not drain its queue; stopping it anyway", self.where)

    # -- the worker thread -------------------------------------------------------------------------------------
    def _absorb_all(self, items: list[tuple]) -> None:
        for feats, preds, rows in items:
            self._absorb(feats, preds, rows)
            self._dirty = True
            self._tick(False)

    def _tick(self, flush: bool) -> float | None:
        """Recompute PSI when asked (flush) or when due with new rows; the seconds until due while rows wait.
        A drift bug raising here is logged and counted by the writer, which goes on (its queue would else
        just fill up)."""
        now = time.monotonic()
        if flush:
            self._recompute()
            self._dirty = False
        elif self._dirty and now >= self._due:
            self._recompute()
            self._dirty = False
            self._due = time.monotonic() + self.settings.interval_s
        return max(0.0, self._due - now) if self._dirty else None

    def _absorb(self, feats: dict[str, np.ndarray], preds: dict[str, np.ndarray], rows: int) -> None:
        with self._lock:
            if self._features is not None and feats:
                self._features.add(feats, rows)
            if not preds:
                return
            if self._predictions is not None:
                if all(name in preds for name in self._predictions.tensors):
                    self._predictions.add(preds, rows)
                return
            if self._learning_since is None:
                self._learning_since = time.time()
            for name, block in preds.items():  # still learning the reference
                self._learning[name].append(block)
            need = self.settings.learn_rows or 0
            if all(sum(len(b) for b in parts) >= need for parts in self._learning.values()):
                self._learn(need)

    def _learn(self, rows: int) -> None:
        entries = {}
        for name, parts in self._learning.items():
            block = np.concatenate(parts)[:rows]
            entries[name] = learn_prediction(self._domains[name], block)
        self._learnt = {"format": "skewless.prediction_reference", "format_version": 1, "outputs": entries}
        self._learning = {}
        self._install_predictions([prediction_bins(self._domains[n], e) for n, e in entries.items()])
        self.reference_source = ("learnt", rows)
        since = time.strftime("%H:%M:%S", time.localtime(self._learning_since or time.time()))
        log.warning("%s: prediction reference learnt from the first %d sampled output rows, served from %s to %s "
                    "(ship %s with the version to compare with held-out outputs instead)", self.where, rows,
                    since, time.strftime("%H:%M:%S"), REFERENCE_FILE)

    def _install_predictions(self, bins: list[Bins]) -> None:
        self._predictions = _Series("prediction", bins, self.settings.window_rows)

    def _recompute(self) -> None:
        events: list[DriftEvent] = []
        with self._lock:
            for series in (self._features, self._predictions):
                if series is None or series.window.rows < self.settings.min_rows:
                    continue
                totals = series.window.totals()
                values: dict[str, float] = {}
                for i, b in enumerate(series.bins):
                    served = totals[series.bounds[i]:series.bounds[i + 1]]
                    value, level = alarm_level(b.reference, served, self.settings)
                    values[b.name] = value
                    key = (series.kind, b.name)
                    previous = self._levels.get(key, "ok")
                    if level != previous:
                        self._levels[key] = level
                        top = tuple(top_shifts(b.labels, b.reference, served, TOP_BINS))
                        events.append(DriftEvent(self.model, self.version, series.kind, b.name, value, level,
                                                 previous, top, series.window.rows))
                self._psi[series.kind] = values
            subscribers = list(self._subscribers)
        for ev in events:
            self._announce(ev)
            for callback in subscribers:
                try:
                    callback(ev)
                except Exception:
                    log.exception("%s: drift subscriber %r failed", self.where, callback)

    def _announce(self, ev: DriftEvent) -> None:
        t = self.settings.thresholds
        bins = "; ".join(str(b) for b in ev.top_bins)
        if ev.level != "ok" and (ev.previous == "ok" or ev.level == "alert"):
            threshold = t.alert if ev.level == "alert" else t.warn
            log.warning("%s: %s '%s' drifted: PSI %.3f >= %s %g over %d rows; top bins: %s", self.where,
                        ev.kind, ev.name, ev.psi, ev.level, threshold, ev.window_rows, bins)
        else:
            log.info("%s: %s '%s' drift now %s (PSI %.3f, was %s)", self.where, ev.kind, ev.name, ev.level,
                     ev.psi, ev.previous)


def alarm_level(reference: np.ndarray, served: np.ndarray, settings: DriftSettings) -> tuple[float, str]:
    """(PSI, level) of served counts against the reference: the PSI's level, but 'ok' where the chi-square test
    does not reject at ``settings.alpha`` (a PSI this window's size cannot tell from sampling noise)."""
    value = psi(reference, served)
    level = settings.thresholds.level(value)
    if level != "ok" and not significant(reference, served, settings.alpha):
        level = "ok"
    return value, level


def significant(reference: np.ndarray, served: np.ndarray, alpha: float) -> bool:
    """Whether the served counts differ from the reference's by a chi-square test at ``alpha`` (bins merged to >= 5
    expected per cell; a window too small for two such bins is never significant)."""
    test = homogeneity(reference, served)
    return test is not None and test.p_value < alpha


def _read_reference_file(mv: ModelVersion, name: str, domains: list[PredictionDomain],
                         where: str) -> dict[str, Bins]:
    """The prediction reference named in the config, from the version folder; raises ModelLoadError."""
    path = mv.path.parent / name
    try:
        entries = read_prediction_reference(json.loads(path.read_text()))
        bins = {d.output: prediction_bins(d, entries[d.output]) for d in domains if d.output in entries}
    except (OSError, ValueError) as exc:  # JSONDecodeError and ReferenceFormatError are ValueErrors
        raise ModelLoadError(f"{where}: cannot use the prediction reference {path}: {exc}") from None
    unknown = sorted(set(entries) - {d.output for d in domains})
    if unknown:
        raise ModelLoadError(f"{where}: the prediction reference {path} names outputs {unknown} that are not "
                             "monitored outputs of the model")
    if not bins:
        raise ModelLoadError(f"{where}: the prediction reference {path} has no entry for any output")
    return bins


__all__ = ["DriftEvent", "DriftMonitor", "DriftSettings", "ReferenceFormatError", "drift_settings"]
