"""Tests with a known false-positive rate, which the canary and drift guardrails gate on.

PSI has no usable null distribution at small samples: over 10 decile bins from 20 requests per arm its
expected value under *no* change is near 1 (an empty bin alone adds ~0.69), so a PSI limit rolls back
identical models. A guardrail here alarms only when a test rejects "both samples come from the same
distribution" at a stated alpha:

* ``homogeneity``: Pearson's chi-square test of a 2 x B table of counts, after merging adjacent bins until
  every cell's expected count is at least ``MIN_EXPECTED`` (Cochran's rule, under which the chi-square
  approximation holds). Too few samples for two such bins: no test at all (None). Pearson's statistic, not
  the G statistic: at 20 requests per arm the G-test rejected slightly more often than its alpha (0.0034 at
  0.003 on 3 classes), Pearson's slightly less (0.0019).
* ``two_sample``: the same test on raw values binned at pooled quantiles (so each bin holds about the same
  share of both arms), at most ``max_bins`` bins.
* ``hypergeom_upper``: the exact tail behind Fisher's test (error rates: of all failed requests, does the
  candidate hold more than drawing without replacement gives?) and ``tail_increase`` (latencies above the
  pooled median and p90). Exact, so calibrated at the tiny alphas late looks spend, where a z-test on 20 requests with
  10% errors rejected several times too often.
* ``look_alpha``: alpha spent on the k-th look of a sequence, ``alpha * 6 / (pi^2 k^2)``: the shares sum to
  ``alpha`` over any number of looks, so repeated checks of a running canary keep the overall
  false-alarm rate at or below ``alpha`` whatever the correlation between looks (a union bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_EXPECTED = 5.0
_EPS = 1e-15
_TINY = 1e-300


@dataclass(frozen=True)
class TestResult:
    statistic: float
    dof: int
    p_value: float
    bins: int  # bins after merging
    psi: float  # the PSI of the second row against the first over the same bins (an effect size, reported)


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X chi-square with ``dof`` degrees of freedom (the regularized upper gamma Q(dof/2, x/2))."""
    if x <= 0:
        return 1.0
    a, z = dof / 2.0, x / 2.0
    log_front = -z + a * math.log(z) - math.lgamma(a)
    if z < a + 1.0:  # the series of the lower function converges fast here
        term = total = 1.0 / a
        n = 0
        while abs(term) > abs(total) * _EPS and n < 10_000:
            n += 1
            term *= z / (a + n)
            total += term
        return max(0.0, 1.0 - total * math.exp(log_front))
    # the continued fraction of the upper function, evaluated by Lentz's method
    b = z + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < _EPS:
            break
    return min(1.0, math.exp(log_front) * h)


def look_alpha(alpha: float, look: int) -> float:
    """The share of ``alpha`` spent on look number ``look`` (1, 2, ...): the shares sum to ``alpha``."""
    return alpha * 6.0 / (math.pi ** 2 * look ** 2)


def merge_bins(table: np.ndarray, min_expected: float = MIN_EXPECTED) -> np.ndarray:
    """Adjacent columns of a 2 x B count table summed until each cell's expected count is >= ``min_expected``
    (a short last group joins the one before it). Bins empty on both sides are dropped."""
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    total = rows.sum()
    if total <= 0 or rows.min() <= 0:
        return table[:, :0]
    need = min_expected * total / rows.min()  # column total that gives the smaller row its expected count
    groups: list[np.ndarray] = []
    acc = np.zeros(2)
    for col in table.T:
        acc = acc + col
        if acc.sum() >= need:
            groups.append(acc)
            acc = np.zeros(2)
    if acc.sum() > 0:
        if groups:
            groups[-1] = groups[-1] + acc
        else:
            groups.append(acc)
    return np.array(groups, dtype=np.float64).T


def homogeneity(first: np.ndarray, second: np.ndarray, min_expected: float = MIN_EXPECTED) -> TestResult | None:
    """Chi-square test that two count vectors over the same bins come from one distribution; None when the
    samples are too small for two bins with ``min_expected`` expected counts per cell (no verdict either way)."""
    table = merge_bins(np.vstack([np.asarray(first, np.float64), np.asarray(second, np.float64)]), min_expected)
    if table.shape[1] < 2:
        return None
    rows = table.sum(axis=1, keepdims=True)
    cols = table.sum(axis=0, keepdims=True)
    expected = rows * cols / rows.sum()
    x2 = float(np.sum((table - expected) ** 2 / expected))
    dof = table.shape[1] - 1
    shares = table / rows
    r, s = np.maximum(shares[0], 1e-4), np.maximum(shares[1], 1e-4)
    return TestResult(x2, dof, chi2_sf(x2, dof), table.shape[1], float(np.sum((s - r) * np.log(s / r))))


def two_sample(first: np.ndarray, second: np.ndarray, max_bins: int = 10,
               min_expected: float = MIN_EXPECTED) -> TestResult | None:
    """``homogeneity`` of two samples of values, binned at quantiles of both together (ties share a bin)."""
    first = np.asarray(first, np.float64)
    second = np.asarray(second, np.float64)
    first, second = first[np.isfinite(first)], second[np.isfinite(second)]
    if min(len(first), len(second)) < 2 * min_expected:
        return None
    pooled = np.concatenate([first, second])
    edges = np.unique(np.quantile(pooled, np.linspace(0, 1, max_bins + 1)[1:-1]))
    n = len(edges) + 1
    a = np.bincount(np.searchsorted(edges, first, side="right"), minlength=n)
    b = np.bincount(np.searchsorted(edges, second, side="right"), minlength=n)
    return homogeneity(a, b, min_expected)


def hypergeom_upper(k: int, total: int, marked: int, drawn: int) -> float:
    """P(X >= k) for X the marked items among ``drawn`` taken without replacement from ``total``."""
    hi = min(marked, drawn)
    lo = max(k, drawn - (total - marked), 0)
    if lo > hi:
        return 0.0 if k > hi else 1.0

    def log_comb(n: int, r: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)

    base = log_comb(total, drawn)
    return min(1.0, sum(math.exp(log_comb(marked, x) + log_comb(total - marked, drawn - x) - base)
                        for x in range(lo, hi + 1)))


def tail_increase(first: np.ndarray, second: np.ndarray, quantiles: tuple[float, ...] = (0.5, 0.9)) -> float:
    """One-sided p-value that the second sample's values run larger: of the values above a pooled quantile, do
    more come from the second sample than drawing without replacement would give? Exact (hypergeometric) under
    "one distribution", whatever it is, since a pooled threshold does not depend on which sample a value came
    from; the smallest p over ``quantiles`` (the median: a candidate slower throughout; p90: one slower in its
    tail), Bonferroni-corrected for their number."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if not len(first) or not len(second):
        return 1.0
    pooled = np.concatenate([first, second])
    best = 1.0
    for threshold in np.quantile(pooled, quantiles).tolist():
        marked = int(np.count_nonzero(pooled > threshold))
        k = int(np.count_nonzero(second > threshold))
        best = min(best, hypergeom_upper(k, len(pooled), marked, len(second)))
    return min(1.0, best * len(quantiles))
