"""The REST frontend in one run, against the fastest well-kept Python HTTP stack answering a fixed reply.

What transport_report.py does for gRPC, for HTTP/REST: issue 28's model and config (``mlp_small``
32->64->64->2, 1 row/request, ``max_batch_size 256``, 200 µs queue delay), KServe v2 inference over
keep-alive HTTP/1.1 connections (JSON bodies by default, or Triton's binary tensors), closed loop at each
``--clients`` count: requests/s, p50/p99 and server CPU µs/request. skewless (aiohttp's low-level server,
the data plane, the batcher, onnxruntime) runs beside ``rest_echo_server.py``: uvicorn + httptools on uvloop,
reading each body and answering a fixed reply of the model's output size, no model. Both run at once and
the rounds alternate between them (the order flipping), so that both sample the same spells of a shared
machine's noise; figures are the medians of the rounds. skewless's replies are spot-checked against
onnxruntime. Prints skewless ÷ echo and the goals issue 28 set for the gRPC transport, applied to REST at
64 clients (CPU/request <= 0.85x the echo's, requests/s >= 1.2x).

    python -m skewless.benchmarks.rest_report                 # ~3 min
    python -m skewless.benchmarks.rest_report --quick         # a smoke run
    (needs the bench extra: pip install 'skewless[bench]', which brings uvicorn and httptools)

Writes rest.json, rest.txt and rest.png into --out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from .batching_report import make_repository
from .http_client import HttpOptions, http_worker_main
from .loadgen import RESULTS_DIR, BenchConfig, run_bench
from .peers import MODELS, OUTPUT, build_models, triton_config, workload
from .report import median, ratio
from .servers import ServerProcess, exit_on_interrupt, start_skewless
from .transport_report import FIGURES, _figures

SERVERS = ("skewless", "echo")
LABELS = {"skewless": "skewless REST", "echo": "uvicorn echo"}
GOAL_CPU_OVER_ECHO = 0.85
GOAL_RPS_OVER_ECHO = 1.2


def start_rest_echo(log_path: Path, model: str, output: str, rows: int, width: int) -> ServerProcess:
    argv = [sys.executable, "-m", "skewless.benchmarks.rest_echo_server", "--host", "127.0.0.1", "--port", "0",
            "--model", model, "--output", output, "--reply-rows", str(rows), "--reply-width", str(width)]
    return ServerProcess(argv, re.compile(r"REST_ECHO_READY (?P<port>\d+)"), log_path)


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    model = MODELS["mlp_small"]
    tmp = Path(tempfile.mkdtemp(prefix="rest-report-"))
    onnx = build_models([model], tmp)
    repo = make_repository(tmp / "repo", model.name, onnx[model.name], triton_config(model))
    workloads = {"skewless": workload(model, onnx[model.name]), "echo": workload(model, None)}
    started: dict[str, ServerProcess] = {}
    rest: dict[str, str] = {}
    rounds: dict[int, dict[str, list[dict[str, float | None]]]] = {c: {s: [] for s in SERVERS} for c in args.clients}
    try:
        started["skewless"] = start_skewless(repo, out / "skewless.log").__enter__()
        rest["skewless"] = started["skewless"].addresses["rest"]
        started["echo"] = start_rest_echo(out / "echo.log", model.name, OUTPUT, model.rows,
                                          model.layers[-1]).__enter__()
        rest["echo"] = started["echo"].target
        for clients in args.clients:
            for r in range(args.rounds):
                for name in SERVERS if r % 2 == 0 else SERVERS[::-1]:  # neither always goes first
                    srv = started[name]
                    check_every = 100 if name == "skewless" else 0  # the echo's fixed reply is no answer
                    # the gRPC target serves the statistics probe; the echo has none, and the probe says so
                    cfg = BenchConfig(target=srv.target, model=model.name, concurrency=[clients], rows=model.rows,
                                      duration=args.duration, warmup=args.warmup, server_pid=srv.pid,
                                      processes=args.processes, check_every=check_every, plot=False,
                                      progress=False)
                    opts = HttpOptions(rest[name], encoding=args.encoding, check_every=check_every)
                    point = run_bench(cfg, workloads[name], worker=http_worker_main, options=opts)["points"][0]
                    figures = _figures(point)
                    figures["check_failed"] = point["checks"]["failed"]
                    rounds[clients][name].append(figures)
                    print(f"[rest] {clients} clients, round {r + 1}/{args.rounds} {name}: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in figures.items() if v is not None), file=sys.stderr, flush=True)
    finally:
        for srv in started.values():
            srv.__exit__(None, None, None)
    keys = (*FIGURES, "errors", "check_failed")
    medians = {c: {s: {k: median([x.get(k) for x in rs]) for k in keys} for s, rs in by.items()}
               for c, by in rounds.items()}
    ratios = {c: {"skewless ÷ echo": {k: ratio(m["skewless"][k], m["echo"][k]) for k in FIGURES}}
              for c, m in medians.items()}
    return {"benchmark": "rest_report", "time": datetime.now().astimezone().isoformat(timespec="seconds"),
            "setup": {"model": model.name, "layers": list(model.layers), "max_batch_size": model.max_batch_size,
                      "max_queue_delay_us": model.max_queue_delay_us, "clients": args.clients,
                      "encoding": args.encoding, "duration_s": args.duration, "warmup_s": args.warmup,
                      "rounds": args.rounds, "processes": args.processes},
            "rounds": {str(c): v for c, v in rounds.items()}, "medians": {str(c): v for c, v in medians.items()},
            "ratios": {str(c): v for c, v in ratios.items()}, "goals": goals(medians)}


def goals(medians: dict[int, dict[str, dict[str, float | None]]]) -> list[dict[str, Any]]:
    """The transport goals of issue 28 applied to REST, each with its figure and whether it was met."""
    if 64 not in medians:
        return []
    m = medians[64]
    cpu = ratio(m["skewless"]["server CPU µs/req"], m["echo"]["server CPU µs/req"])
    rps = ratio(m["skewless"]["req/s"], m["echo"]["req/s"])
    return [{"goal": f"64 clients: skewless REST CPU/request <= {GOAL_CPU_OVER_ECHO}x the uvicorn echo's",
             "value": cpu, "met": None if cpu is None else cpu <= GOAL_CPU_OVER_ECHO},
            {"goal": f"64 clients: skewless REST req/s >= {GOAL_RPS_OVER_ECHO}x the uvicorn echo's",
             "value": rps, "met": None if rps is None else rps >= GOAL_RPS_OVER_ECHO}]


def table(result: dict[str, Any]) -> str:
    s = result["setup"]
    lines = [f"REST: {s['model']} {'->'.join(map(str, s['layers']))}, 1 row/request, max_batch_size "
             f"{s['max_batch_size']}, {s['max_queue_delay_us']} µs queue delay; {s['encoding']} bodies, keep-alive "
             f"HTTP/1.1, closed loop, {s['rounds']} alternating rounds of {s['duration_s']:g} s (medians), "
             f"{s['processes']} client process(es); {result['time']}",
             f"{'clients':>8} {'server':>16}" + "".join(f"{k:>20}" for k in FIGURES) + f"{'errors':>8}"]
    for c, by in result["medians"].items():
        for name in SERVERS:
            m = by[name]
            lines.append(f"{c:>8} {LABELS[name]:>16}" + "".join(
                f"{m[k]:>20.4g}" if m[k] is not None else f"{'-':>20}" for k in FIGURES) + f"{m['errors'] or 0:>8.0f}")
        for name_of_ratio, values in result["ratios"][c].items():
            lines.append(f"{c:>8} {name_of_ratio:>16}" + "".join(
                f"{v:>20.3f}" if v is not None else f"{'-':>20}" for v in values.values()))
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
            ax.bar([j + i * width for j in range(len(clients))], values, width, label=LABELS[name])
        ax.set_xticks([j + width / 2 for j in range(len(clients))], [f"{c} cl" for c in clients])
        ax.set_title(key)
    axes[0].legend()
    fig.suptitle(f"skewless REST vs a uvicorn + httptools echo ({result['setup']['encoding']} bodies): medians "
                 "of alternating rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.rest_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="1,16,64", help="closed-loop client counts (default 1,16,64)")
    p.add_argument("--encoding", choices=("json", "binary"), default="json",
                   help="request and reply bodies: JSON (default) or Triton's binary tensors")
    p.add_argument("--duration", type=float, help="measured seconds per point (default 8; 1 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 1.5; 0.3 with --quick)")
    p.add_argument("--rounds", type=int, help="alternating rounds per client count (default 3; 1 with --quick)")
    p.add_argument("--processes", type=int, default=1,
                   help="client processes (they share the machine's cores with the servers)")
    p.add_argument("--quick", action="store_true", help="short points, one round: a smoke run")
    p.add_argument("--out", help="output directory (default benchmarks/results/rest-<timestamp>)")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c]
    args.duration = args.duration or (1.0 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.5)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if not args.clients or min(args.clients) < 1 or args.duration <= 0:
        p.error("--clients must be >= 1 and --duration > 0")
    try:
        import httptools  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"rest_report needs uvicorn and httptools for its echo ({exc.name} is missing): "
              "pip install 'skewless[bench]'", file=sys.stderr)
        return 2
    out = Path(args.out or RESULTS_DIR / f"rest-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    result = run(args, out)
    text = table(result)
    (out / "rest.json").write_text(json.dumps(result, indent=2))
    (out / "rest.txt").write_text(text + "\n")
    try:
        plot(result, out / "rest.png")
    except ImportError:
        print("no PNG: matplotlib is missing (pip install 'skewless[bench]')", file=sys.stderr)
    print(text)
    print(f"wrote {out}/rest.json, rest.txt and rest.png", file=sys.stderr)
    return 1 if any(m[s]["errors"] or m[s]["check_failed"] for m in result["medians"].values() for s in SERVERS) \
        else 0


if __name__ == "__main__":
    exit_on_interrupt(main)
