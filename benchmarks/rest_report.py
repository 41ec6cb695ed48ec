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
from .report import ratio
from .rounds import FIGURES, add_arguments, figure_lines, medians_of, point_figures, resolve_arguments, write
from .servers import ServerProcess, exit_on_interrupt, start_skewless

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
                    figures = point_figures(point)
                    figures["check_failed"] = point["checks"]["failed"]
                    rounds[clients][name].append(figures)
                    print(f"[rest] {clients} clients, round {r + 1}/{args.rounds} {name}: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in figures.items() if v is not None), file=sys.stderr, flush=True)
    finally:
        for srv in started.values():
            srv.__exit__(None, None, None)
    medians = medians_of(rounds, (*FIGURES, "errors", "check_failed"))
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
    head = (f"REST: {s['model']} {'->'.join(map(str, s['layers']))}, 1 row/request, max_batch_size "
            f"{s['max_batch_size']}, {s['max_queue_delay_us']} µs queue delay; {s['encoding']} bodies, keep-alive "
            f"HTTP/1.1, closed loop, {s['rounds']} alternating rounds of {s['duration_s']:g} s (medians), "
            f"{s['processes']} client process(es); {result['time']}")
    return "\n".join([head, *figure_lines(result, LABELS)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.rest_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, "rest")
    p.add_argument("--encoding", choices=("json", "binary"), default="json",
                   help="request and reply bodies: JSON (default) or Triton's binary tensors")
    args = p.parse_args(argv)
    resolve_arguments(p, args)
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
    write(result, table(result), LABELS, out, "rest",
          f"skewless REST vs a uvicorn + httptools echo ({args.encoding} bodies): medians of alternating rounds")
    return 1 if any(m[s]["errors"] or m[s]["check_failed"] for m in result["medians"].values() for s in SERVERS) \
        else 0


if __name__ == "__main__":
    exit_on_interrupt(main)
