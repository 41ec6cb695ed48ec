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


def _agreement(a: np.ndarray, b: np.ndarray) -> bool:
    """Classifier-style agreement: argmax over the last axis for score vectors, a 0.5 threshold for single
    scores, equality for anything not floating point."""
    if a.dtype.kind not in "fc":
        return bool(np.array_equal(a, b))
    if a.ndim >= 2 and a.shape[-1] > 1:
        return bool(np.array_equal(a.argmax(axis=-1), b.argmax(axis=-1)))
    return bool(np.array_equal(a > 0.5, b > 0.5))


def compare(names: Sequence[str], primary: Sequence[np.ndarray], challenger: Sequence[np.ndarray]) -> Comparison:
    """Compare outputs of the same request. A shape mismatch is infinite difference and disagreement."""
    abs_diff: dict[str, float] = {}
    rel_diff: dict[str, float] = {}
    agree = True
    for name, a, b in zip(names, primary, challenger, strict=True):
        if a.shape != b.shape or a.dtype.kind in "OSU" or b.dtype.kind in "OSU":
            same = a.shape == b.shape and bool(np.array_equal(a, b))
            abs_diff[name] = rel_diff[name] = 0.0 if same else float("inf")
            agree = agree and same
            continue
        a64 = a.astype(np.float64, copy=False)
        d = np.abs(a64 - b.astype(np.float64, copy=False))
        abs_diff[name] = float(d.max()) if d.size else 0.0
        rel_diff[name] = float((d / np.maximum(np.abs(a64), 1e-12)).max()) if d.size else 0.0
        agree = agree and _agreement(a, b)
    return Comparison(abs_diff, rel_diff, agree)


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
