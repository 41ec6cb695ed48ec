"""The canary and drift guardrails' statistics (server/telemetry/significance.py): p-values against tabulated
chi-square values, no verdict from samples too small for the bins, the server's own canary decision code
replayed on simulated canaries (benchmarks/guardrail_power.py, run small), a drift window too small for its
bins never alarming, and the shadow's host gate on injected /proc/stat readings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skewless.benchmarks import guardrail_power
from skewless.server.shadow.canary import Canary
from skewless.server.shadow.host_idle import BusyHostGate, HostIdle, read_proc_stat
from skewless.server.shadow.settings import CanaryGuardrails, CanarySettings
from skewless.server.telemetry.drift import significant
from skewless.server.telemetry.psi import psi
from skewless.server.telemetry.significance import (
    chi2_sf,
    homogeneity,
    hypergeom_upper,
    look_alpha,
    tail_increase,
    two_sample,
)


@pytest.mark.parametrize("x,dof,p", [(3.841459, 1, 0.05), (6.634897, 1, 0.01), (18.307038, 10, 0.05),
                                     (21.665994, 9, 0.01), (0.0158, 1, 0.9), (2.087901, 9, 0.99)])
def test_chi2_sf_matches_tables(x, dof, p):
    assert chi2_sf(x, dof) == pytest.approx(p, rel=2e-3)


def test_exact_tails():
    """Fisher's one-sided tail by hand: both marked items among 10 drawn of 20 is C(18,8)/C(20,10)."""
    assert hypergeom_upper(2, 20, 2, 10) == pytest.approx(43758 / 184756)
    assert hypergeom_upper(0, 10, 3, 4) == 1.0 and hypergeom_upper(4, 10, 3, 4) == 0.0
    rng = np.random.default_rng(3)
    same = [tail_increase(rng.lognormal(size=80), rng.lognormal(size=20)) < 0.05 for _ in range(2000)]
    assert np.mean(same) < 0.06
    assert tail_increase(rng.lognormal(size=400), 3 * rng.lognormal(size=200)) < 1e-6


def test_look_alpha_sums_to_alpha():
    assert sum(look_alpha(0.01, k) for k in range(1, 200_000)) == pytest.approx(0.01, rel=1e-4)


def test_too_few_samples_give_no_verdict():
    """Under 5 expected per cell in two bins there is no test at all, whatever the values."""
    assert two_sample(np.zeros(9), np.ones(9)) is None
    assert homogeneity(np.array([3, 0, 0]), np.array([0, 3, 3])) is None
    assert two_sample(np.ones(50), np.ones(50)) is None  # one value: one bin, nothing to compare
    shifted = two_sample(np.zeros(10), np.ones(10))
    assert shifted is not None and shifted.bins == 2 and shifted.p_value < 1e-4


def test_identical_small_arms_are_not_significant_where_psi_alarms():
    """The issue's case: 20 requests per arm of the same model. PSI over deciles is mostly noise (often
    > 0.25); the chi-square test on merged bins rejects at 5% in about 5% of draws."""
    rng = np.random.default_rng(7)
    psis, rejects = [], 0
    for _ in range(400):
        a, b = rng.normal(size=20), rng.normal(size=20)
        edges = np.quantile(a, np.linspace(0, 1, 11)[1:-1])
        psis.append(psi(np.bincount(np.searchsorted(edges, a, side="right"), minlength=10),
                        np.bincount(np.searchsorted(edges, b, side="right"), minlength=10)))
        rejects += two_sample(a, b).p_value < 0.05
    assert np.mean(np.array(psis) > 0.25) > 0.3
    assert rejects / 400 < 0.08


def test_canary_decides_only_on_new_samples_and_names_the_test():
    g = CanaryGuardrails(min_requests=20)
    canary = Canary("m", CanarySettings(2, 0.5, g), stable=1)
    for i in range(19):
        canary.arms["stable"].record(True, 0.001, 0.0, 1, now=float(i))
        canary.arms["candidate"].record(True, 0.001, 5.0, 2, now=float(i))
    assert canary.check(20.0) is None and canary.looks == 0  # 19 per arm: below min_requests
    canary.arms["stable"].record(True, 0.001, 0.0, 1, now=19.0)
    canary.arms["candidate"].record(True, 0.001, 5.0, 2, now=19.0)
    reason = canary.check(20.0)
    assert reason is not None and "chi-square test" in reason and "look 1" in reason
    assert canary.arms["stable"].version == 1


def test_guardrail_power_replays_canary_code(tmp_path):
    """The benchmark, small: identical candidates are (almost) never rolled back, a 1-sd shift nearly always;
    it writes its JSON and PNG."""
    out = tmp_path / "power"
    assert guardrail_power.main(["--canaries", "40", "--duration", "40", "--shifts", "0,1", "--out", str(out)]) == 0
    result = json.loads((out / "guardrail_power.json").read_text())
    rates = {r["case"]: r["rate"] for r in result["cases"]}
    assert max(rates["shift 0 sd"], rates["identical (3 classes)"], rates["identical (10% errors)"]) <= 0.05
    assert rates["shift 1 sd"] >= 0.9 and rates["3x slower"] >= 0.9
    drift = {(d["window_rows"], d["shift_sd"]): d for d in result["drift"]}
    assert result["drift_false_alarm_rate"] <= 0.05
    assert drift[(20, 0.0)]["psi_alone_rate"] > 0.5  # what PSI alone does on a small window
    assert drift[(1000, 1.0)]["alarm_rate"] == 1.0
    assert (out / "guardrail_power.png").stat().st_size > 0


def test_drift_window_too_small_for_bins_never_alarms():
    reference = np.array([100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 0])
    tiny = np.array([3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])  # PSI huge, 3 rows
    assert psi(reference, tiny) > 1
    assert not significant(reference, tiny, 0.001)
    shifted = np.array([60, 60, 60, 20, 0, 0, 0, 0, 0, 0, 0])
    assert significant(reference, shifted, 0.001)
    same = np.array([21, 19, 20, 22, 18, 20, 21, 19, 20, 20, 0])
    assert not significant(reference, same, 0.001)


def test_host_gate_from_injected_readings():
    """Under 10% host idle at most 5% of the sampled requests are admitted; on an idle host all are."""
    clock = [0.0]
    readings = [(0.0, 0.0)]

    def read():
        return readings[-1]

    host = HostIdle(read, window_s=1.0, clock=lambda: clock[0])
    gate = BusyHostGate(host)

    def step(idle_share: float, n: int) -> int:
        clock[0] += 1.0
        idle, total = readings[-1]
        readings.append((idle + 100 * idle_share, total + 100))
        return sum(gate.admit() for _ in range(n))

    assert step(0.5, 1) == 1  # the first window (from construction) has passed: 50% idle, open
    assert step(0.5, 200) == 200 and host.share == pytest.approx(0.5)
    assert step(0.05, 1000) <= 50 and host.share == pytest.approx(0.05) and gate.busy
    assert step(0.09, 1000) <= 50
    assert step(0.3, 100) == 100 and not gate.busy


def test_proc_stat_reading_is_real():
    idle, total = read_proc_stat()
    assert 0 <= idle <= total and total > 0
    host = HostIdle(window_s=0.0)
    host.idle()
    assert 0.0 <= host.idle() <= 1.0
