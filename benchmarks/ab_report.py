"""Two installs of skewless side by side: one load point, rounds alternating between them, one table.

A change's before/after on a shared, noisy machine: both servers run at once, each from its own Python (for
example the virtual environments of two checkouts), and the rounds alternate between them so that both
sample the same spells of noise; the medians over rounds are compared. Server CPU is each server process
tree's own.

    python -m skewless.benchmarks.ab_report --before ../old-checkout/.venv/bin/python --rounds 5

Writes ab.json, ab.txt and ab.png into --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from . import servers
from .loadgen import BenchConfig, run_bench

FIGURES = ("req/s", "server CPU µs/req", "mean batch", "p50 ms", "p99 ms")


def _figures(point: dict[str, Any]) -> dict[str, float | None]:
    stats = point.get("server_stats") or {}
    cpu = point.get("server_cpu") or {}
    lat = point["latency_ms"]
    return {"req/s": point["throughput_rps"], "server CPU µs/req": cpu.get("us_per_request"),
            "mean batch": stats.get("mean_batch_size"), "p50 ms": lat["p50"], "p99 ms": lat["p99"],
            "errors": point["error_count"]}


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    pythons = {"before": args.before, "after": args.after}
    started = {}
    rounds: dict[str, list[dict[str, float | None]]] = {k: [] for k in pythons}
    try:
        for side, python in pythons.items():
            started[side] = servers.start_skewless(args.model_repository, python=python).__enter__()
        for r in range(args.rounds):
            order = list(pythons) if r % 2 == 0 else list(reversed(pythons))  # neither side always goes first
            for side in order:
                srv = started[side]
                cfg = BenchConfig(target=srv.target, model=args.model, concurrency=[args.clients], rows=args.rows,
                                  duration=args.duration, warmup=args.warmup, server_pid=srv.pid, plot=False,
                                  progress=False)
                rounds[side].append(_figures(run_bench(cfg)["points"][0]))
                print(f"[ab] round {r + 1}/{args.rounds} {side}: " + ", ".join(
                    f"{k} {v:.3g}" for k, v in rounds[side][-1].items() if v is not None), file=sys.stderr, flush=True)
    finally:
        for srv in started.values():
            srv.__exit__(None, None, None)
    medians = {side: {k: _median([x[k] for x in rs]) for k in FIGURES} for side, rs in rounds.items()}
    return {"benchmark": "ab_report", "time": datetime.now().astimezone().isoformat(timespec="seconds"),
            "setup": {"model": args.model, "clients": args.clients, "rows": args.rows, "duration_s": args.duration,
                      "warmup_s": args.warmup, "rounds": args.rounds, "before": args.before, "after": args.after},
            "rounds": rounds, "medians": medians,
            "after_over_before": {k: (medians["after"][k] / medians["before"][k]
                                      if medians["after"][k] is not None and medians["before"][k] else None)
                                  for k in FIGURES}}


def table(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [f"A/B: {s['model']}, {s['clients']} clients, {s['rows']} row(s)/request, unary gRPC, {s['rounds']} "
             f"alternating rounds of {s['duration_s']:g} s (medians); {result['time']}",
             f"  before: {s['before']}", f"  after:  {s['after']}",
             f"{'':16}" + "".join(f"{k:>20}" for k in FIGURES)]
    for side in ("before", "after"):
        lines.append(f"{side:16}" + "".join(f"{v:>20.4g}" if v is not None else f"{'-':>20}"
                                           for v in result["medians"][side].values()))
    lines.append(f"{'after ÷ before':16}" + "".join(f"{v:>20.3f}" if v is not None else f"{'-':>20}"
                                                        for v in result["after_over_before"].values()))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("req/s", "server CPU µs/req"), strict=True):
        for side, marker in (("before", "o"), ("after", "s")):
            values = [x[key] for x in result["rounds"][side]]
            ax.plot(range(1, len(values) + 1), values, marker=marker, label=side)
        ax.set_title(key)
        ax.set_xlabel("round")
        ax.set_ylim(bottom=0)
        ax.legend()
    s = result["setup"]
    fig.suptitle(f"before vs after: {s['model']}, {s['clients']} clients, per alternating round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.ab_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the Python of the install to compare against (its venv's bin/python)")
    p.add_argument("--after", default=sys.executable, help="the Python of the other install (default: this one)")
    p.add_argument("--model-repository", default=str(servers.EXAMPLE_MODELS))
    p.add_argument("--model", default="mlp")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point (default 5)")
    p.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds per point (default 1.5)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", help="output directory (default benchmarks/results/ab-<timestamp>)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.clients < 1 or args.duration <= 0:
        p.error("--rounds and --clients must be >= 1 and --duration > 0")
    out = Path(args.out or Path(__file__).parent / "results" / f"ab-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    text = table(result)
    (out / "ab.json").write_text(json.dumps(result, indent=2))
    (out / "ab.txt").write_text(text + "\n")
    try:
        plot(result, out / "ab.png")
    except ImportError:
        print("no PNG: matplotlib is missing (pip install 'skewless[bench]')", file=sys.stderr)
    print(text)
    print(f"wrote {out}/ab.json, ab.txt and ab.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
