"""What the alternating-rounds reports share (transport_report.py for gRPC, rest_report.py for REST).

Those reports run their servers at once and alternate closed-loop points between them over rounds, so every
server samples the same spells of a shared machine's noise, then print the medians of the rounds, ratios
and goals. This module holds their command-line options, the figures taken from a point, the medians, the
table's body, the bar chart and the write-out; each report keeps what it measures and judges.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .report import median

FIGURES = ("req/s", "p50 ms", "p99 ms", "server CPU µs/req")


def point_figures(point: dict[str, Any]) -> dict[str, float | None]:
    """The figures of one load-generator point, plus its errors."""
    lat = point["latency_ms"]
    return {"req/s": point["throughput_rps"], "p50 ms": lat["p50"], "p99 ms": lat["p99"],
            "server CPU µs/req": (point.get("server_cpu") or {}).get("us_per_request"),
            "errors": point["error_count"]}


def add_arguments(p: argparse.ArgumentParser, results_name: str) -> None:
    p.add_argument("--clients", default="1,16,64", help="closed-loop client counts (default 1,16,64)")
    p.add_argument("--duration", type=float, help="measured seconds per point (default 8; 1 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 1.5; 0.3 with --quick)")
    p.add_argument("--rounds", type=int, help="alternating rounds per client count (default 3; 1 with --quick)")
    p.add_argument("--processes", type=int, default=1,
                   help="client processes (they share the machine's cores with the servers)")
    p.add_argument("--quick", action="store_true", help="short points, one round: a smoke run")
    p.add_argument("--out", help=f"output directory (default benchmarks/results/{results_name}-<timestamp>)")


def resolve_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in the defaults add_arguments() names; exits with the parser's error on bad values."""
    args.clients = [int(c) for c in args.clients.split(",") if c]
    args.duration = args.duration or (1.0 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.5)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if not args.clients or min(args.clients) < 1 or args.duration <= 0:
        p.error("--clients must be >= 1 and --duration > 0")


def medians_of(rounds: dict[int, dict[str, list[dict[str, Any]]]], keys: tuple[str, ...]
               ) -> dict[int, dict[str, dict[str, float | None]]]:
    return {c: {s: {k: median([x.get(k) for x in rs]) for k in keys} for s, rs in by.items()}
            for c, by in rounds.items()}


def figure_lines(result: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The table under a report's head line: medians per client count and server (``labels`` names them,
    in order), the ratios, then each goal with its verdict."""
    width = max(12, *(len(v) for v in labels.values()), *(len(r) for by in result["ratios"].values() for r in by))
    lines = [f"{'clients':>8} {'server':>{width}}" + "".join(f"{k:>20}" for k in FIGURES) + f"{'errors':>8}"]
    for c, by in result["medians"].items():
        for name, label in labels.items():
            m = by[name]
            lines.append(f"{c:>8} {label:>{width}}" + "".join(
                f"{m[k]:>20.4g}" if m[k] is not None else f"{'-':>20}" for k in FIGURES) + f"{m['errors'] or 0:>8.0f}")
        for name_of_ratio, values in result["ratios"][c].items():
            lines.append(f"{c:>8} {name_of_ratio:>{width}}" + "".join(
                f"{v:>20.3f}" if v is not None else f"{'-':>20}" for v in values.values()))
    for g in result["goals"]:
        verdict = "-" if g["met"] is None else ("met" if g["met"] else "NOT met")
        value = "-" if g["value"] is None else f"{g['value']:.3f}"
        lines.append(f"goal: {g['goal']}: {value} ({verdict})")
    return lines


def plot(result: dict[str, Any], labels: dict[str, str], path: Path, title: str) -> None:
    """One bar chart per figure, the servers side by side at each client count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = list(result["medians"])
    fig, axes = plt.subplots(1, len(FIGURES), figsize=(4 * len(FIGURES), 3.6))
    width = 0.8 / len(labels)
    for ax, key in zip(axes, FIGURES, strict=True):
        for i, (name, label) in enumerate(labels.items()):
            values = [result["medians"][c][name][key] or 0 for c in clients]
            ax.bar([j + i * width for j in range(len(clients))], values, width, label=label)
        ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(clients))], [f"{c} cl" for c in clients])
        ax.set_title(key)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict[str, Any], text: str, labels: dict[str, str], out: Path, stem: str, title: str) -> None:
    """``stem``.json, .txt and .png into ``out``; the table to stdout."""
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.txt").write_text(text + "\n")
    try:
        plot(result, labels, out / f"{stem}.png", title)
    except ImportError:
        print("no PNG: matplotlib is missing (pip install 'skewless[bench]')", file=sys.stderr)
    print(text)
    print(f"wrote {out}/{stem}.json, {stem}.txt and {stem}.png", file=sys.stderr)
