"""Primary against challenger, per (primary, challenger) pair: counters and recent values the metrics read.

Written by the shadow worker thread, read by metric callbacks; each update is a single assignment or a
deque append, so readers see a consistent enough view without a lock on the worker's path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

RECENT = 4096  # values kept per series for quantiles
QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class Comparison:
    """One mirrored request: per output, the largest absolute and relative difference; overall agreement."""

    abs_diff: dict[str, float]
    rel_diff: dict[str, float]
    agree: bool

    @property
    def max_abs(self) -> float:
        return max(self.abs_diff.values(), default=0.0)


def _row_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, classifier-style agreement: argmax over the last axis for score vectors, a 0.5 threshold for
    single scores, equality for anything not floating point."""
    n = a.shape[0]
    if a.dtype.kind not in "fc":
        return (a.reshape(n, -1) == b.reshape(n, -1)).all(axis=1)
    if a.ndim >= 2 and a.shape[-1] > 1:
        return (a.argmax(axis=-1) == b.argmax(axis=-1)).reshape(n, -1).all(axis=1)
    return ((a > 0.5) == (b > 0.5)).reshape(n, -1).all(axis=1)


def compare_batch(names: Sequence[str], primary: Sequence[Sequence[np.ndarray]],
                  challenger: Sequence[Sequence[np.ndarray]], rows: Sequence[int]) -> list[Comparison]:
    """Compare the outputs of several requests at once (``primary[i]``: request i's outputs in ``names``
    order), vectorised over the batch so the shadow thread holds the GIL briefly. Per request: the largest
    absolute and relative difference per output and whether every row agrees. A shape mismatch or
    non-numeric output counts as infinite difference (unless equal) and disagreement."""
    n = len(rows)
    starts = np.concatenate(([0], np.cumsum(rows)[:-1])).astype(np.intp)
    abs_d = {name: np.zeros(n) for name in names}
    rel_d = {name: np.zeros(n) for name in names}
    agree = np.ones(n, dtype=bool)
    for k, name in enumerate(names):
        ps = [p[k] for p in primary]
        cs = [c[k] for c in challenger]
        if any(p.shape != c.shape or p.dtype.kind in "OSU" or c.dtype.kind in "OSU" or p.ndim == 0
               for p, c in zip(ps, cs, strict=True)):
            same = np.array([p.shape == c.shape and bool(np.array_equal(p, c)) for p, c in zip(ps, cs, strict=True)])
            abs_d[name] = rel_d[name] = np.where(same, 0.0, np.inf)
            agree &= same
            continue
        a = np.concatenate(ps)
        b = np.concatenate(cs)
        a64 = a.astype(np.float64, copy=False).reshape(a.shape[0], -1)
        d = np.abs(a64 - b.astype(np.float64, copy=False).reshape(b.shape[0], -1))
        if d.size == 0:
            continue
        row_abs = d.max(axis=1)
        row_rel = (d / np.maximum(np.abs(a64), 1e-12)).max(axis=1)
        abs_d[name] = np.maximum.reduceat(row_abs, starts)
        rel_d[name] = np.maximum.reduceat(row_rel, starts)
        agree &= np.logical_and.reduceat(_row_agreement(a, b), starts)
    return [Comparison({m: float(abs_d[m][i]) for m in names}, {m: float(rel_d[m][i]) for m in names},
                       bool(agree[i])) for i in range(n)]


def compare(names: Sequence[str], primary: Sequence[np.ndarray], challenger: Sequence[np.ndarray]) -> Comparison:
    """One request's outputs against the challenger's (see compare_batch)."""
    rows = primary[0].shape[0] if primary and primary[0].ndim else 1
    return compare_batch(names, [primary], [challenger], [rows])[0]


@dataclass
class PairStats:
    """What one (primary, challenger) pair has seen since the server started."""

    primary: str
    challenger: str
    mirrored: int = 0  # handed to the challenger and compared or failed
    shed: int = 0  # dropped before running: queue full, too old, or the server busy
    errors: int = 0  # the challenger failed (its error never reaches the caller)
    agreed: int = 0
    compared: int = 0
    divergent: int = 0  # over the tolerance
    abs_diff: dict[str, deque] = field(default_factory=dict)
    rel_diff: dict[str, deque] = field(default_factory=dict)
    latency_s: deque = field(default_factory=lambda: deque(maxlen=RECENT))

    def record(self, c: Comparison, latency_s: float, tolerance: float) -> bool:
        """Count one comparison; returns whether it is divergent (to be logged)."""
        for name, v in c.abs_diff.items():
            self.abs_diff.setdefault(name, deque(maxlen=RECENT)).append(v)
            self.rel_diff.setdefault(name, deque(maxlen=RECENT)).append(c.rel_diff[name])
        self.latency_s.append(latency_s)
        self.compared += 1
        self.mirrored += 1
        self.agreed += c.agree
        divergent = c.max_abs > tolerance
        self.divergent += divergent
        return divergent

    def fail(self) -> None:
        self.mirrored += 1
        self.errors += 1

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else float("nan")


def quantiles(values: Sequence[float] | deque) -> dict[float, float]:
    """The QUANTILES of recent values (empty when there are none)."""
    if not values:
        return {}
    arr = np.fromiter(list(values), dtype=np.float64)
    return {q: float(v) for q, v in zip(QUANTILES, np.quantile(arr, QUANTILES), strict=True)}
