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
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from .batching_report import make_repository
from .loadgen import RESULTS_DIR, BenchConfig, run_bench
from .peers import MODELS, build_models, triton_config
from .report import ratio
from .rounds import FIGURES, add_arguments, figure_lines, medians_of, point_figures, resolve_arguments, write
from .servers import exit_on_interrupt, start_echo, start_skewless

SERVERS = ("aio", "h2", "echo")
LABELS = {"aio": "skewless aio", "h2": "skewless h2", "echo": "aio echo"}
# issue 28's goals for the h2 transport
GOAL_CPU_OVER_ECHO = 0.85
GOAL_RPS_OVER_ECHO = 1.2


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
                    figures = point_figures(run_bench(cfg)["points"][0])
                    rounds[clients][name].append(figures)
                    print(f"[transport] {clients} clients, round {r + 1}/{args.rounds} {name}: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in figures.items() if v is not None), file=sys.stderr, flush=True)
    finally:
        for srv in started.values():
            srv.__exit__(None, None, None)
    medians = medians_of(rounds, (*FIGURES, "errors"))
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
    head = (f"gRPC transports: {s['model']} {'->'.join(map(str, s['layers']))}, 1 row/request, max_batch_size "
            f"{s['max_batch_size']}, {s['max_queue_delay_us']} µs queue delay; "
            f"{'a stream per client' if s.get('stream') else 'unary'}, closed loop, {s['rounds']} alternating "
            f"rounds of {s['duration_s']:g} s (medians), {s['processes']} client process(es); {result['time']}")
    return "\n".join([head, *figure_lines(result, LABELS)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.transport_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, "transport")
    p.add_argument("--stream", action="store_true",
                   help="each client sends over a ModelStreamInfer stream of its own (one message in flight) "
                        "instead of unary calls")
    args = p.parse_args(argv)
    resolve_arguments(p, args)
    out = Path(args.out or RESULTS_DIR / f"transport-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    result = run(args, out)
    write(result, table(result), LABELS, out, "transport",
          "skewless gRPC transports (aio, h2) vs the grpc.aio echo: medians of alternating rounds")
    return 0


if __name__ == "__main__":
    exit_on_interrupt(main)
