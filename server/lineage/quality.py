"""Quality figures from joined (score, label) pairs: classifier and regressor metrics, numpy only.

Used live (QualityMonitor, rolling windows per model version) and offline (``skewless quality-report``), so
both compute the same numbers. Classification is binary: the score is the positive class's probability (or
any score; accuracy thresholds it at 0.5), the label 0 or 1.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

CLASSIFIER_METRICS = ("accuracy", "auc", "log_loss", "ece")
REGRESSOR_METRICS = ("mae", "rmse")
_EPS = 1e-15


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic with average ranks for ties; nan with a single class."""
    pos = label > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average rank of each run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def ece(score: np.ndarray, label: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |mean label - mean score| per equal-width score bin, weighted by count."""
    p = np.clip(score, 0.0, 1.0)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf = np.bincount(idx, p, bins)
    acc = np.bincount(idx, label, bins)
    nz = count > 0
    return float(np.abs(acc[nz] - conf[nz]).sum() / max(1, len(p)))


def classifier_metrics(score: np.ndarray, label: np.ndarray) -> dict[str, float]:
    p = np.clip(score, _EPS, 1 - _EPS)
    y = (label > 0.5).astype(np.float64)
    return {
        "accuracy": float(((score >= 0.5) == (y > 0.5)).mean()),
        "auc": auc(score, y),
        "log_loss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()),
        "ece": ece(score, y),
    }


def regressor_metrics(score: np.ndarray, label: np.ndarray) -> dict[str, float]:
    err = score - label
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err * err).mean()))}


def metrics(task: str, score: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """The task's metrics over finite pairs, plus ``n`` (pairs used)."""
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    ok = np.isfinite(score) & np.isfinite(label)
    score, label = score[ok], label[ok]
    if score.size == 0:
        return {"n": 0}
    out = classifier_metrics(score, label) if task == "classification" else regressor_metrics(score, label)
    out["n"] = int(score.size)
    return out


@dataclass(frozen=True)
class Breach:
    """A rolling metric past its configured threshold (the observer seam for alert hooks)."""

    kind: str  # "quality"
    model: str
    version: int
    metric: str
    value: float
    threshold: float
    window_s: float
    active: bool = True  # False: the metric is back within its threshold (the episode ends)


# A metric breaches when it falls below (accuracy, auc) or rises above (the others) its threshold.
HIGHER_IS_BETTER = {"accuracy", "auc"}


class QualityMonitor:
    """Rolling joined pairs per model (bounded), figures per version and window, threshold breaches.

    Each model keeps at most ``max_pairs`` recent pairs (32 bytes each in numpy terms; a dict of tuples
    here, ~150 bytes each: 100,000 pairs ≈ 15 MB per model). A pair added with the key of one it already
    holds (a corrected label: same request id and row) replaces it, keeping its place and time."""

    def __init__(self, windows_s: tuple[float, ...] = (300.0, 3600.0), max_pairs: int = 100_000) -> None:
        self.windows_s = windows_s
        self.max_pairs = max_pairs
        self.tasks: dict[str, str] = {}  # model -> classification | regression
        self.thresholds: dict[str, dict[str, float]] = {}  # model -> metric -> threshold
        self._pairs: dict[str, OrderedDict] = {}
        self._lock = threading.Lock()
        self._observers: list[Callable[[Breach], None]] = []
        self._breached: set[tuple] = set()
        self._unkeyed = itertools.count()

    def configure(self, model: str, task: str, thresholds: dict[str, float] | None = None) -> None:
        self.tasks[model] = task
        self.thresholds[model] = dict(thresholds or {})

    def on_breach(self, callback: Callable[[Breach], None]) -> None:
        """Call ``callback(Breach)`` when a window's metric crosses its threshold and when it comes back (once each)."""
        self._observers.append(callback)

    def add(self, model: str, version: int, score: float, label: float, delay_s: float,
            arm: str | None = None, key: Hashable | None = None) -> None:
        """One joined pair; ``key`` (request id, row) identifies it, so that a correction replaces it."""
        if model not in self.tasks:
            return
        with self._lock:
            pairs = self._pairs.get(model)
            if pairs is None:
                pairs = self._pairs[model] = OrderedDict()
            if key is None:
                key = next(self._unkeyed)
            before = pairs.get(key)
            when = time.time() if before is None else before[0]
            pairs[key] = (when, version, score, label, delay_s, arm)
            if len(pairs) > self.max_pairs:
                pairs.popitem(last=False)

    def figures(self, model: str, now: float | None = None) -> dict[tuple[int, float], dict[str, float]]:
        """(version, window seconds) -> metrics, label count and delay quantiles."""
        now = now or time.time()
        task = self.tasks.get(model)
        with self._lock:
            rows = list(self._pairs.get(model, {}).values())
        if not rows or task is None:
            return {}
        t, v, s, y, d = (np.array([r[i] for r in rows], dtype=np.float64) for i in range(5))
        out = {}
        for version in np.unique(v):
            for w in self.windows_s:
                sel = (v == version) & (t >= now - w)
                if not sel.any():
                    continue
                fig = metrics(task, s[sel], y[sel])
                q = np.quantile(d[sel], [0.5, 0.9, 0.99])
                fig.update(delay_p50_s=float(q[0]), delay_p90_s=float(q[1]), delay_p99_s=float(q[2]))
                out[(int(version), w)] = fig
        return out

    def by_arm(self, model: str, since: float) -> dict[str, dict[str, float]]:
        """Metrics per canary arm since ``since`` (time.time()): for the canary's quality guardrail."""
        task = self.tasks.get(model)
        with self._lock:
            rows = [r for r in self._pairs.get(model, {}).values() if r[0] >= since and r[5] is not None]
        out: dict[str, dict[str, float]] = {}
        for arm in {r[5] for r in rows}:
            sel = [r for r in rows if r[5] == arm]
            out[arm] = metrics(task or "classification", np.array([r[2] for r in sel]), np.array([r[3] for r in sel]))
        return out

    def check(self, now: float | None = None) -> list[Breach]:
        """Compare every window's figures with the thresholds; observers hear each new breach once."""
        found = []
        for model, limits in self.thresholds.items():
            if not limits:
                continue
            for (version, w), fig in self.figures(model, now).items():
                for metric, threshold in limits.items():
                    value = fig.get(metric)
                    if value is None or not np.isfinite(value):
                        continue
                    bad = value < threshold if metric in HIGHER_IS_BETTER else value > threshold
                    key = (model, version, w, metric)
                    if bad and key not in self._breached:
                        self._breached.add(key)
                        found.append(Breach("quality", model, version, metric, value, threshold, w))
                    elif not bad and key in self._breached:
                        self._breached.discard(key)
                        found.append(Breach("quality", model, version, metric, value, threshold, w, active=False))
        for b in found:
            for cb in self._observers:
                with contextlib.suppress(Exception):  # an observer's failure never stops the monitor
                    cb(b)
        return found
