"""How often the canary guardrails roll back an identical candidate, and how often they catch a real shift.

Replays the server's own decision code (``server/shadow/canary.py``: ``Canary`` with its ``Arm`` windows and
``check``) on simulated traffic, in simulated time: requests arrive as a Poisson stream at ``--rate`` per
second, a ``--weight`` share goes to the candidate, each request's output value is drawn from N(0, 1) on the
stable arm and N(shift, 1) on the candidate (``shift`` in standard deviations of the output), and ``check`` runs
every ``CHECK_INTERVAL_S`` of simulated time, as the traffic manager runs it, for ``--duration`` seconds. A
canary counts as rolled back when ``check`` returns a reason. Shift 0 is the identical model: its rollback share
is the false-rollback rate (target <= 1% with the default alpha 0.01). Two more identical cases: outputs
from 3 classes (ties: the binning must merge them, not alarm on them), and 10% failed requests on both arms
(the error-rate test's own false rollbacks). Latencies are heavy-tailed on both arms; a "3x slower" case
measures the latency guardrail's detection.

The drift alarm (``server/telemetry/drift.py``'s ``alarm_level``, on the server's own bins learnt from
1000 reference rows of one float output) is replayed the same way on windows of N(shift, 1) rows: the share of
windows at warn or above, next to the share a PSI threshold alone would have put there.

Writes guardrail_power.json and guardrail_power.png into --out and prints the table.

    python -m skewless.benchmarks.guardrail_power                       # 200 canaries per shift
    python -m skewless.benchmarks.guardrail_power --canaries 20 --duration 30   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from skewless.server.shadow.canary import Canary
from skewless.server.shadow.settings import CanaryGuardrails, CanarySettings
from skewless.server.shadow.traffic import CHECK_INTERVAL_S
from skewless.server.telemetry.drift import DriftSettings, alarm_level
from skewless.server.telemetry.psi import psi
from skewless.server.telemetry.reference import learn_prediction, prediction_bins, prediction_domain

from .loadgen import RESULTS_DIR

DEFAULT_SHIFTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
DRIFT_WINDOWS = (20, 50, 200, 1000)
DRIFT_SHIFTS = (0.0, 0.5, 1.0)
DRIFT_REFERENCE_ROWS = 1000
TARGET_FALSE_ROLLBACK = 0.01


def simulate(shift: float, rng: np.random.Generator, rate: float, weight: float, duration: float,
             guardrails: CanaryGuardrails, discrete: bool = False, errors: float = 0.0,
             slower: float = 1.0) -> tuple[str | None, float]:
    """One canary: the reason it was rolled back (None: it ran clean) and the simulated seconds it took."""
    canary = Canary("sim", CanarySettings(2, weight, guardrails), stable=1)
    stable, candidate = canary.arms["stable"], canary.arms["candidate"]
    t = 0.0
    while t < duration:
        n = rng.poisson(rate * CHECK_INTERVAL_S)
        times = t + np.sort(rng.uniform(0, CHECK_INTERVAL_S, n))
        to_candidate = rng.random(n) < weight
        values = rng.normal(0.0, 1.0, n) + np.where(to_candidate, shift, 0.0)
        if discrete:
            values = np.digitize(values, [-0.5, 0.5]).astype(np.float64)
        # heavy-tailed (lognormal, sigma 1: the p99 of 20 requests is often twice that of 80), the candidate's
        # ``slower`` times the stable arm's
        latency = 0.002 * rng.lognormal(0.0, 1.0, n) * np.where(to_candidate, slower, 1.0)
        ok = rng.random(n) >= errors  # the same error rate on both arms
        for at, cand, value, lat, good in zip(times.tolist(), to_candidate.tolist(), values.tolist(),
                                              latency.tolist(), ok.tolist(), strict=True):
            (candidate if cand else stable).record(good, lat, value if good else None, 2 if cand else 1, now=at)
        t += CHECK_INTERVAL_S
        reason = canary.check(t)
        if reason is not None:
            return reason, t
    return None, duration


def drift_alarms(window: int, shift: float, trials: int, rng: np.random.Generator) -> dict[str, Any]:
    """Share of windows the drift monitor's level puts at warn or above, and the share PSI alone would."""
    settings = DriftSettings()
    domain = prediction_domain("y", "FP32", [1])
    bins = prediction_bins(domain, learn_prediction(domain, rng.normal(size=(DRIFT_REFERENCE_ROWS, 1))))
    gated = alone = 0
    for _ in range(trials):
        served = bins.count(rng.normal(shift, 1.0, (window, 1)))
        _value, level = alarm_level(bins.reference, served, settings)
        gated += level != "ok"
        alone += settings.thresholds.level(psi(bins.reference, served)) != "ok"
    return {"window_rows": window, "shift_sd": shift, "windows": trials, "alarm_rate": gated / trials,
            "psi_alone_rate": alone / trials}


def run(shifts: list[float], canaries: int, rate: float, weight: float, duration: float, seed: int,
        guardrails: CanaryGuardrails) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    cases = [("identical (3 classes)", 0.0, True, 0.0, 1.0), ("identical (10% errors)", 0.0, False, 0.1, 1.0),
             ("3x slower", 0.0, False, 0.0, 3.0)]
    cases += [(f"shift {s:g} sd", s, False, 0.0, 1.0) for s in shifts]
    rows = []
    for label, shift, discrete, errors, slower in cases:
        outcomes = [simulate(shift, rng, rate, weight, duration, guardrails, discrete, errors, slower)
                    for _ in range(canaries)]
        rolled = [t for reason, t in outcomes if reason is not None]
        rows.append({"case": label, "shift_sd": shift, "discrete": discrete, "errors": errors, "slower": slower,
                     "canaries": canaries,
                     "rolled_back": len(rolled), "rate": len(rolled) / canaries,
                     "median_s_to_rollback": float(np.median(rolled)) if rolled else None,
                     "example_reason": next((r for r, _ in outcomes if r is not None), None)})
    identical = [r for r in rows if r["shift_sd"] == 0.0 and r["slower"] == 1.0]
    drift = [drift_alarms(w, sh, canaries, rng) for w in DRIFT_WINDOWS for sh in DRIFT_SHIFTS]
    return {
        "benchmark": "guardrail_power", "time": datetime.now().isoformat(timespec="seconds"),
        "setup": {"rate_rps": rate, "weight": weight, "duration_s": duration, "canaries_per_case": canaries,
                  "seed": seed, "check_interval_s": CHECK_INTERVAL_S,
                  "guardrails": {"window_s": guardrails.window_s, "min_requests": guardrails.min_requests,
                                 "max_psi": guardrails.max_psi, "alpha": guardrails.alpha}},
        "false_rollback_rate": max(r["rate"] for r in identical),
        "target_false_rollback_rate": TARGET_FALSE_ROLLBACK,
        "cases": rows,
        "drift": drift,
        "drift_false_alarm_rate": max(d["alarm_rate"] for d in drift if d["shift_sd"] == 0.0),
    }


def format_table(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [f"{s['canaries_per_case']} canaries per case, {s['rate_rps']:g} req/s, candidate weight "
             f"{s['weight']:g}, {s['duration_s']:g} s each, guardrails {s['guardrails']}",
             f"{'case':<24}{'rolled back':>12}{'rate':>8}{'median s':>10}"]
    for r in result["cases"]:
        t = f"{r['median_s_to_rollback']:.1f}" if r["median_s_to_rollback"] is not None else "-"
        lines.append(f"{r['case']:<24}{r['rolled_back']:>12}{r['rate']:>8.1%}{t:>10}")
    lines.append(f"false-rollback rate (identical models): {result['false_rollback_rate']:.1%} "
                 f"(target <= {result['target_false_rollback_rate']:.0%})")
    lines += ["", f"drift alarms (warn or above) per window, reference {DRIFT_REFERENCE_ROWS} rows:",
              f"{'window rows':>12}{'shift sd':>10}{'alarm':>8}{'PSI alone':>11}"]
    for d in result["drift"]:
        lines.append(f"{d['window_rows']:>12}{d['shift_sd']:>10g}{d['alarm_rate']:>8.1%}{d['psi_alone_rate']:>11.1%}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no PNG: matplotlib is missing (pip install 'skewless[report]')", file=sys.stderr)
        return None
    rows = [r for r in result["cases"] if not r["discrete"] and not r["errors"] and r["slower"] == 1.0]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot([r["shift_sd"] for r in rows], [r["rate"] for r in rows], marker="o", label="rolled back")
    ax.axhline(result["target_false_rollback_rate"], color="red", linestyle="--", label="false-rollback target")
    ax.set_xlabel("candidate output shift (standard deviations)")
    ax.set_ylabel("share of canaries rolled back")
    s = result["setup"]
    ax.set_title(f"canary: {s['canaries_per_case']} canaries per point, {s['duration_s']:g} s each", fontsize=10)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    for shift in sorted({d["shift_sd"] for d in result["drift"]}):
        pts = [d for d in result["drift"] if d["shift_sd"] == shift]
        line, = bx.plot([d["window_rows"] for d in pts], [d["alarm_rate"] for d in pts], marker="o",
                        label=f"shift {shift:g} sd")
        bx.plot([d["window_rows"] for d in pts], [d["psi_alone_rate"] for d in pts], linestyle=":",
                color=line.get_color())
    bx.set_xscale("log")
    bx.set_xlabel("drift window rows")
    bx.set_ylabel("share of windows alarming (dotted: PSI alone)")
    bx.set_title("drift alarms against a 1000-row reference", fontsize=10)
    bx.set_ylim(-0.02, 1.02)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--canaries", type=int, default=200, help="simulated canaries per case (default 200)")
    p.add_argument("--shifts", default=",".join(f"{s:g}" for s in DEFAULT_SHIFTS),
                   help="candidate output shifts in standard deviations, comma-separated")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second to the model (default 20)")
    p.add_argument("--weight", type=float, default=0.2, help="the candidate's share (default 0.2)")
    p.add_argument("--duration", type=float, default=120.0, help="simulated seconds per canary (default 120)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default benchmarks/results/guardrail_power-<time>)")
    args = p.parse_args(argv)
    guardrails = CanaryGuardrails()
    shifts = [float(x) for x in args.shifts.split(",") if x.strip()]
    result = run(shifts, args.canaries, args.rate, args.weight, args.duration, args.seed, guardrails)
    out = Path(args.out) if args.out else RESULTS_DIR / f"guardrail_power-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "guardrail_power.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "guardrail_power.png")
    print(format_table(result))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
