"""The gRPC transports in one run: skewless on ``--grpc-transport aio`` and ``h2`` against the grpc.aio echo.

Issue 28's model and config (``mlp_small`` 32->64->64->2, 1 row/request, ``max_batch_size 256``, 200 µs queue
delay), unary gRPC, closed loop at each ``--clients`` count: requests/s, p50/p99 and server CPU µs/request.
The three servers run at once and, per client count, the rounds alternate between them (the order rotating),
so that all three sample the same spells of a shared machine's noise; figures are the medians of the rounds.
Prints the h2 ÷ aio and ÷ echo ratios and issue 28's goals at 64 clients (h2 CPU/request <= 0.85x the
echo's, requests/s >= 1.2x) and at 1 client (h2 p50 <= aio's).

    python -m skewless.benchmarks.transport_report                    # ~4 min
    python -m skewless.benchmarks.transport_report --quick            # a smoke run

Writes transport.json, transport.txt and transport.png into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from .batching_report import make_repository
from .loadgen import RESULTS_DIR, BenchConfig, run_bench
from .peers import MODELS, build_models, triton_config
from .report import median, ratio
from .servers import exit_on_interrupt, start_echo, start_skewless

SERVERS = ("aio", "h2", "echo")
FIGURES = ("req/s", "p50 ms", "p99 ms", "server CPU µs/req")
# issue 28's goals for the h2 transport
GOAL_CPU_OVER_ECHO = 0.85
GOAL_RPS_OVER_ECHO = 1.2


def _figures(point: dict[str, Any]) -> dict[str, float | None]:
    lat = point["latency_ms"]
    return {"req/s": point["throughput_rps"], "p50 ms": lat["p50"], "p99 ms": lat["p99"],
            "server CPU µs/req": (point.get("server_cpu") or {}).get("us_per_request"),
            "errors": point["error_count"]}


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    model = MODELS["mlp_small"]
    tmp = Path(tempfile.mkdtemp(prefix="transport-report-"))
    onnx = build_models([model], tmp)
    repo = make_repository(tmp / "repo", model.name, onnx[model.name], triton_config(model))
    started = {}
    rounds: dict[int, dict[str, list[dict[str, float | None]]]] = {c: {s: [] for s in SERVERS} for c in args.clients}
    try:
        for transport in ("aio", "h2"):
            started[transport] = start_skewless(repo, out / f"skewless-{transport}.log",
                                                extra=["--grpc-transport", transport]).__enter__()
        started["echo"] = start_echo(out / "echo.log", model=model.name, extra=[
            "--input-width", str(model.layers[0]), "--reply-rows", str(model.rows),
            "--reply-width", str(model.layers[-1])]).__enter__()
        for clients in args.clients:
            for r in range(args.rounds):
                order = SERVERS[r % 3:] + SERVERS[:r % 3]  # no server always goes first
                for name in order:
                    srv = started[name]
                    cfg = BenchConfig(target=srv.target, model=model.name, concurrency=[clients], rows=model.rows,
                                      duration=args.duration, warmup=args.warmup, server_pid=srv.pid,
                                      processes=args.processes, stream=args.stream, plot=False, progress=False)
                    figures = _figures(run_bench(cfg)["points"][0])
                    rounds[clients][name].append(figures)
                    print(f"[transport] {clients} clients, round {r + 1}/{args.rounds} {name}: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in figures.items() if v is not None), file=sys.stderr, flush=True)
    finally:
        for srv in started.values():
            srv.__exit__(None, None, None)
    medians = {c: {s: {k: median([x[k] for x in rs]) for k in (*FIGURES, "errors")} for s, rs in by.items()}
               for c, by in rounds.items()}
    ratios = {c: {"h2 ÷ aio": {k: ratio(m["h2"][k], m["aio"][k]) for k in FIGURES},
                  "h2 ÷ echo": {k: ratio(m["h2"][k], m["echo"][k]) for k in FIGURES},
                  "aio ÷ echo": {k: ratio(m["aio"][k], m["echo"][k]) for k in FIGURES}}
              for c, m in medians.items()}
    return {"benchmark": "transport_report", "time": datetime.now().astimezone().isoformat(timespec="seconds"),
            "setup": {"model": model.name, "layers": list(model.layers), "max_batch_size": model.max_batch_size,
                      "max_queue_delay_us": model.max_queue_delay_us, "clients": args.clients,
                      "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
                      "processes": args.processes, "stream": args.stream},
            "rounds": {str(c): v for c, v in rounds.items()}, "medians": {str(c): v for c, v in medians.items()},
            "ratios": {str(c): v for c, v in ratios.items()}, "goals": goals(medians)}


def goals(medians: dict[int, dict[str, dict[str, float | None]]]) -> list[dict[str, Any]]:
    """Issue 28's transport goals, each with the figure measured and whether it was met (None: not measured)."""
    out = []
    if 64 in medians:
        m = medians[64]
        cpu = ratio(m["h2"]["server CPU µs/req"], m["echo"]["server CPU µs/req"])
        rps = ratio(m["h2"]["req/s"], m["echo"]["req/s"])
        out.append({"goal": f"64 clients: h2 CPU/request <= {GOAL_CPU_OVER_ECHO}x the aio echo's", "value": cpu,
                    "met": None if cpu is None else cpu <= GOAL_CPU_OVER_ECHO})
        out.append({"goal": f"64 clients: h2 req/s >= {GOAL_RPS_OVER_ECHO}x the aio echo's", "value": rps,
                    "met": None if rps is None else rps >= GOAL_RPS_OVER_ECHO})
    if 1 in medians:
        m = medians[1]
        p50 = ratio(m["h2"]["p50 ms"], m["aio"]["p50 ms"])
        out.append({"goal": "1 client: h2 p50 <= aio p50", "value": p50, "met": None if p50 is None else p50 <= 1})
    return out


def table(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [f"gRPC transports: {s['model']} {'->'.join(map(str, s['layers']))}, 1 row/request, max_batch_size "
             f"{s['max_batch_size']}, {s['max_queue_delay_us']} µs queue delay; {'a stream per client' if s.get('stream') else 'unary'}, closed loop, {s['rounds']} "
             f"alternating rounds of {s['duration_s']:g} s (medians), {s['processes']} client process(es); "
             f"{result['time']}",
             f"{'clients':>8} {'server':>12}" + "".join(f"{k:>20}" for k in FIGURES) + f"{'errors':>8}"]
    for c, by in result["medians"].items():
        for name in SERVERS:
            m = by[name]
            label = {"aio": "skewless aio", "h2": "skewless h2", "echo": "aio echo"}[name]
            lines.append(f"{c:>8} {label:>12}" + "".join(f"{m[k]:>20.4g}" if m[k] is not None else f"{'-':>20}"
                                                         for k in FIGURES) + f"{m['errors'] or 0:>8.0f}")
        for name_of_ratio, values in result["ratios"][c].items():
            lines.append(f"{c:>8} {name_of_ratio:>12}" + "".join(f"{v:>20.3f}" if v is not None else f"{'-':>20}"
                                                         for v in values.values()))
    for g in result["goals"]:
        verdict = "-" if g["met"] is None else ("met" if g["met"] else "NOT met")
        value = "-" if g["value"] is None else f"{g['value']:.3f}"
        lines.append(f"goal: {g['goal']}: {value} ({verdict})")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = list(result["medians"])
    fig, axes = plt.subplots(1, len(FIGURES), figsize=(4 * len(FIGURES), 3.6))
    width = 0.8 / len(SERVERS)
    for ax, key in zip(axes, FIGURES, strict=True):
        for i, name in enumerate(SERVERS):
            values = [result["medians"][c][name][key] or 0 for c in clients]
            ax.bar([j + i * width for j in range(len(clients))], values, width, label=name)
        ax.set_xticks([j + width for j in range(len(clients))], [f"{c} cl" for c in clients])
        ax.set_title(key)
    axes[0].legend()
    fig.suptitle("skewless gRPC transports (aio, h2) vs the grpc.aio echo: medians of alternating rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.transport_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="1,16,64", help="closed-loop client counts (default 1,16,64)")
    p.add_argument("--duration", type=float, help="measured seconds per point (default 8; 1 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 1.5; 0.3 with --quick)")
    p.add_argument("--rounds", type=int, help="alternating rounds per client count (default 3; 1 with --quick)")
    p.add_argument("--processes", type=int, default=1,
                   help="client processes (they share the machine's cores with the servers)")
    p.add_argument("--stream", action="store_true",
                   help="each client sends over a ModelStreamInfer stream of its own (one message in flight) "
                        "instead of unary calls")
    p.add_argument("--quick", action="store_true", help="short points, one round: a smoke run")
    p.add_argument("--out", help="output directory (default benchmarks/results/transport-<timestamp>)")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c]
    args.duration = args.duration or (1.0 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.5)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if not args.clients or min(args.clients) < 1 or args.duration <= 0:
        p.error("--clients must be >= 1 and --duration > 0")
    out = Path(args.out or RESULTS_DIR / f"transport-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    result = run(args, out)
    text = table(result)
    (out / "transport.json").write_text(json.dumps(result, indent=2))
    (out / "transport.txt").write_text(text + "\n")
    try:
        plot(result, out / "transport.png")
    except ImportError:
        print("no PNG: matplotlib is missing (pip install 'skewless[bench]')", file=sys.stderr)
    print(text)
    print(f"wrote {out}/transport.json, transport.txt and transport.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    exit_on_interrupt(main)
