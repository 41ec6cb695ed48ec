"""A weighted, sticky split between a model's stable and candidate versions, guarded arm against arm.

Each arm keeps a sliding window of (time, ok, latency, one output value) per request, recorded after the
reply has been handed over. ``check`` (run every ``CHECK_INTERVAL_S`` by the traffic manager, on the event
loop: windows are small) compares the candidate with the stable arm and returns why it breaches, if it
does; the manager then sets the candidate's weight to 0. Nothing promotes silently: ``promote`` is a command,
or the ``promote_after_s`` policy when set.

The error-rate, latency and prediction-drift guardrails breach only when a test rejects "the arms are the same"
at the alpha this look may spend (telemetry/significance.py: Fisher's exact test, one-sided; an exact test of
the candidate's share of the latencies above the pooled p50 and p90; a chi-square test on output values binned at
pooled quantiles with >= 5 expected per cell) *and* the effect exceeds its limit (error-rate increase, p99
ratio, PSI).
A look is taken once the candidate has ``min_requests`` new requests since the last one, and look k spends
``alpha * 6 / (pi^2 k^2)``, shared between the three tests: an identical candidate is rolled back by them in at
most ``alpha`` of canaries however long it runs (benchmarks/guardrail_power.py measures it by replaying
this code). One value per request (the first of the first output): values of one request are not
independent samples.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..telemetry.significance import TestResult, hypergeom_upper, look_alpha, tail_increase, two_sample
from .keys import sampled
from .settings import CanarySettings

SALT = b"skewless-canary"
ARMS = ("stable", "candidate")
WINDOW_CAP = 20_000
DRIFT_BINS = 10  # at most; fewer when the arms are too small for 5 expected per cell


@dataclass
class Arm:
    served: int = 0
    failed: int = 0
    version: int = 0  # the version that served this arm last (0: none yet)
    window: deque = field(default_factory=lambda: deque(maxlen=WINDOW_CAP))  # (t, ok, latency_s, value)

    def record(self, ok: bool, latency_s: float, value: float | None, version: int = 0,
               now: float | None = None) -> None:
        self.served += 1
        self.failed += not ok
        if version:
            self.version = version
        self.window.append((time.monotonic() if now is None else now, ok, latency_s, value))

    def prune(self, since: float) -> None:
        w = self.window
        while w and w[0][0] < since:
            w.popleft()


@dataclass
class Event:
    at: float  # time.time()
    kind: str  # started, rollback, promoted, stopped
    reason: str


class Canary:
    def __init__(self, model: str, settings: CanarySettings, stable: int = 0):
        self.model = model
        self.settings = settings
        self.candidate = settings.candidate
        self.stable = stable  # 0: the highest other serving version, looked up per request
        self.weight = settings.weight
        self.state = "running"
        self.reason = ""
        self.arms = {a: Arm() for a in ARMS}
        self.rollbacks = 0
        self.started = time.monotonic()
        self.clean_since = self.started
        self.events: list[Event] = [Event(time.time(), "started", f"candidate {self.candidate} at {self.weight:.1%}")]
        # Labelled quality per arm since a time.time() (lineage's QualityMonitor.by_arm for this model), when the
        # server joins delayed labels; None: no quality guardrail.
        self.quality: Callable[[float], dict[str, dict[str, float]]] | None = None
        self.started_wall = time.time()
        self.looks = 0  # statistical looks taken so far (each spends its share of alpha)
        self._looked_at = 0  # candidate requests served at the last look

    def wants_candidate(self, key: str) -> bool:
        return sampled(key, self.weight, SALT)

    def arm_of(self, version: int) -> str | None:
        if version == self.candidate:
            return "candidate"
        return "stable" if self.stable == 0 or version == self.stable else None

    # -- guardrails --------------------------------------------------------------------------------------
    def check(self, now: float) -> str | None:
        """Why the candidate breaches its guardrails over the window now, or None."""
        g = self.settings.guardrails
        for arm in self.arms.values():
            arm.prune(now - g.window_s)
        s, c = self.arms["stable"].window, self.arms["candidate"].window
        if len(c) < g.min_requests or len(s) < g.min_requests:
            return None
        served = self.arms["candidate"].served
        if served - self._looked_at < g.min_requests:
            return None  # no look before min_requests new candidate requests: looks would only spend alpha
        self._looked_at = served
        self.looks += 1
        alpha = look_alpha(g.alpha, self.looks) / 3  # shared by the error-rate, latency and drift tests
        s_bad, c_bad = sum(not r[1] for r in s), sum(not r[1] for r in c)
        s_err, c_err = s_bad / len(s), c_bad / len(c)
        if c_err - s_err > g.max_error_rate_increase:
            p = hypergeom_upper(c_bad, len(s) + len(c), s_bad + c_bad, len(c))  # Fisher's exact, one-sided
            if p < alpha:
                return (f"error rate {c_err:.1%} on the candidate against {s_err:.1%} on the stable arm "
                        f"(limit +{g.max_error_rate_increase:.1%}; p={p:.2g} < {alpha:.2g} at look {self.looks}) "
                        f"over {len(c)}/{len(s)} requests")
        s_lat = np.fromiter((r[2] for r in s if r[1]), np.float64)
        c_lat = np.fromiter((r[2] for r in c if r[1]), np.float64)
        s_p99, c_p99 = _p99(s_lat), _p99(c_lat)
        if s_p99 > 0 and c_p99 / s_p99 > g.max_p99_ratio:
            p = tail_increase(s_lat, c_lat)
            if p < alpha:
                return (f"p99 latency {c_p99 * 1e3:.2f} ms on the candidate against {s_p99 * 1e3:.2f} ms on the "
                        f"stable arm (limit {g.max_p99_ratio:g}x; tail test p={p:.2g} < {alpha:.2g} at look "
                        f"{self.looks})")
        test = drift_test(s, c)
        if test is not None and test.p_value < alpha and test.psi > g.max_psi:
            return (f"prediction drift PSI {test.psi:.3f} of the candidate against the stable arm (limit "
                    f"{g.max_psi:g}); chi-square test p={test.p_value:.2g} < {alpha:.2g} at look {self.looks} over "
                    f"{test.bins} bins of {len(c)}/{len(s)} requests")
        return self.check_quality()

    def check_quality(self) -> str | None:
        """The quality guardrail: labelled accuracy (or MAE) of the arms since the canary started."""
        if self.quality is None:
            return None
        g = self.settings.guardrails
        arms = self.quality(self.started_wall)
        s, c = arms.get("stable", {}), arms.get("candidate", {})
        if s.get("n", 0) < g.min_labels or c.get("n", 0) < g.min_labels:
            return None
        if "accuracy" in s and "accuracy" in c and s["accuracy"] - c["accuracy"] > g.max_quality_drop:
            return (f"labelled accuracy {c['accuracy']:.1%} on the candidate against {s['accuracy']:.1%} on the "
                    f"stable arm (limit -{g.max_quality_drop:.1%}) over {c['n']}/{s['n']} labels")
        if "mae" in s and "mae" in c and s["mae"] > 0 and (c["mae"] - s["mae"]) / s["mae"] > g.max_quality_drop:
            return (f"labelled MAE {c['mae']:.4g} on the candidate against {s['mae']:.4g} on the stable arm "
                    f"(limit +{g.max_quality_drop:.0%}) over {c['n']}/{s['n']} labels")
        return None

    def promote_due(self, now: float) -> bool:
        after = self.settings.guardrails.promote_after_s
        return (self.state == "running" and after > 0 and now - self.clean_since >= after
                and self.arms["candidate"].served >= self.settings.guardrails.min_requests)

    def roll_back(self, reason: str) -> None:
        self.weight = 0.0
        self.state = "rolled_back"
        self.reason = reason
        self.rollbacks += 1
        self.events.append(Event(time.time(), "rollback", reason))

    def promote(self, reason: str) -> None:
        self.weight = 1.0
        self.state = "promoted"
        self.reason = reason
        self.events.append(Event(time.time(), "promoted", reason))


def _p99(values: np.ndarray) -> float:
    return float(np.quantile(values, 0.99)) if len(values) else 0.0


def drift_test(stable: deque, candidate: deque) -> TestResult | None:
    """The chi-square test of the candidate's output values against the stable arm's (None: too few to test)."""
    ref = np.fromiter((r[3] for r in stable if r[1] and r[3] is not None), np.float64)
    cur = np.fromiter((r[3] for r in candidate if r[1] and r[3] is not None), np.float64)
    return two_sample(ref, cur, DRIFT_BINS)


def first_value(outputs: list[np.ndarray]) -> float | None:
    """The first value of the first numeric output (one per request, for the drift comparison)."""
    if not outputs or outputs[0].dtype.kind not in "fiub" or outputs[0].size == 0:
        return None
    return float(outputs[0].flat[0])
