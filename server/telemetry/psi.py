"""Population Stability Index: the one implementation the online monitor and ``skewless drift-report`` share.

``PSI = sum_i (s_i - r_i) * ln(s_i / r_i)`` over bins, where ``r_i`` and ``s_i`` are the reference and served
shares of bin ``i``. A bin empty on one side would make the term infinite, so each share is floored at
``EPSILON = 1e-4`` (one row in ten thousand) before the sum: a category the reference never saw that takes
1% of served rows then adds ``(0.01 - 1e-4) * ln(100) ~= 0.046``, 10% adds ``~0.46``. Smaller floors make a
handful of rows in a reference-empty bin look like drift; larger ones hide real new categories.

Levels use the conventional thresholds by default: below 0.1 no significant change (``ok``), 0.1 to 0.25 a
moderate one (``warn``), 0.25 and above a significant one (``alert``); models set their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPSILON = 1e-4
DEFAULT_WARN = 0.1
DEFAULT_ALERT = 0.25
LEVELS = ("ok", "warn", "alert")


@dataclass(frozen=True)
class Thresholds:
    warn: float = DEFAULT_WARN
    alert: float = DEFAULT_ALERT

    def level(self, psi: float) -> str:
        """'alert' at or above the alert threshold, 'warn' at or above warn, else 'ok' (NaN: 'ok')."""
        if psi >= self.alert:
            return "alert"
        if psi >= self.warn:
            return "warn"
        return "ok"


@dataclass(frozen=True)
class BinShift:
    """One bin's part in a PSI: its label, reference and served shares (unfloored), and its PSI term."""

    label: str
    reference: float
    served: float
    term: float

    def to_dict(self) -> dict[str, object]:
        return {"bin": self.label, "reference": self.reference, "served": self.served, "psi": self.term}

    def __str__(self) -> str:
        return f"{self.label}: {self.reference:.1%} -> {self.served:.1%} (+{self.term:.3f})"


def shares(counts: np.ndarray) -> np.ndarray:
    """Counts as fractions of their total (all zeros when the total is zero)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def psi_terms(reference_counts: np.ndarray, served_counts: np.ndarray) -> np.ndarray:
    """Each bin's term of the PSI, shares floored at EPSILON; NaN everywhere when either side is empty."""
    ref = np.asarray(reference_counts, dtype=np.float64)
    served = np.asarray(served_counts, dtype=np.float64)
    if ref.shape != served.shape:
        raise ValueError(f"bins differ: reference {ref.shape}, served {served.shape}")
    if ref.sum() <= 0 or served.sum() <= 0:
        return np.full(ref.shape, np.nan)
    r = np.maximum(shares(ref), EPSILON)
    s = np.maximum(shares(served), EPSILON)
    return (s - r) * np.log(s / r)


def psi(reference_counts: np.ndarray, served_counts: np.ndarray) -> float:
    """Population Stability Index of served counts against reference counts over the same bins."""
    return float(psi_terms(reference_counts, served_counts).sum())


def top_shifts(labels: tuple[str, ...] | list[str], reference_counts: np.ndarray, served_counts: np.ndarray,
               k: int = 3) -> list[BinShift]:
    """The ``k`` bins contributing most to the PSI, largest first: what a drift log line names."""
    terms = psi_terms(reference_counts, served_counts)
    if not np.isfinite(terms).all():
        return []
    r, s = shares(reference_counts), shares(served_counts)
    order = np.argsort(-terms, kind="stable")[:k]
    return [BinShift(labels[i], float(r[i]), float(s[i]), float(terms[i])) for i in order.tolist()]
