"""What the prediction log costs a request, from one run on one machine.

Two ``skewless serve`` subprocesses on copies of the example model repository, kept up for the whole run,
differ only in the prediction log: ``off`` (no ``--prediction-log``) and ``on`` (``--prediction-log DIR``
with ``skewless.prediction_log_rate`` 1 and ``skewless.task`` classification on ``mlp``: every request
logged, label join and quality monitor running). Both have metrics on. Model ``mlp`` (FP32 [1,32] -> [1,2]),
1 row per request, unary gRPC, closed loop at 64 clients; the two alternate within each round. Server CPU
µs per request is the server's user+sys time ÷ requests answered (the writer thread included).

    python -m skewless.benchmarks.prediction_log_report --rounds 1 --duration 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from . import report
from .loadgen import RESULTS_DIR, BenchConfig, run_bench
from .servers import EXAMPLE_MODELS, ServerProcess, start_skewless
from .workload import build_workload, fetch_model

MODEL = "mlp"
CLIENTS = 64
LOGGED = """
parameters { key: "skewless.prediction_log_rate" value { string_value: "1" } }
parameters { key: "skewless.task" value { string_value: "classification" } }
"""


def log(msg: str) -> None:
    print(f"[prediction-log {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def metric(address: str, name: str) -> float | None:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.prediction_log_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", help="output directory (default benchmarks/results/prediction-log-<timestamp>)")
    args = p.parse_args(argv)
    out = Path(args.out or RESULTS_DIR / f"prediction-log-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        repos = {v: Path(tmp) / v for v in ("off", "on")}
        for repo in repos.values():
            shutil.copytree(EXAMPLE_MODELS, repo)
        with open(repos["on"] / MODEL / "config.pbtxt", "a") as f:
            f.write(LOGGED)
        logdir = Path(tmp) / "predictions"
        extra = {"off": [], "on": ["--prediction-log", str(logdir)]}
        servers: dict[str, ServerProcess] = {}
        for v in ("off", "on"):
            servers[v] = start_skewless(repos[v], out / f"skewless-{v}.log", extra[v])
            stack.callback(servers[v].stop)
        onnx_path = repos["off"] / MODEL / "1" / "model.onnx"
        wl = build_workload(fetch_model(servers["off"].target, MODEL), rows=1, variants=16, onnx_path=str(onnx_path))
        rows: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for i in range(args.rounds):
            for v in (("off", "on") if i % 2 == 0 else ("on", "off")):
                srv = servers[v]
                log(f"round {i + 1}/{args.rounds}: {v}")
                bc = BenchConfig(target=srv.target, model=MODEL, concurrency=[CLIENTS], duration=args.duration,
                                 warmup=args.warmup, server_pid=srv.pid, check_against_onnx=str(onnx_path),
                                 plot=False, out=str(out / "runs" / f"{v}_r{i}"), label=f"prediction_log {v} r{i}")
                res = run_bench(bc, wl)
                rows[v].append(report.point_figures(res["points"][0]))
        on_http = servers["on"].addresses["http"]
        counts = {k: metric(on_http, k) for k in ("skewless_prediction_log_rows_total",
                                                  "skewless_prediction_log_dropped_total")}
        files = sorted(p.name for p in logdir.rglob("*.parquet*"))
    fig = {v: {k: report.median([r[k] for r in rs]) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request",
                                                                    "mean_batch_size")}
           for v, rs in rows.items()}
    ratio = report.ratio(fig["on"]["cpu_us_per_request"], fig["off"]["cpu_us_per_request"])
    errors = sum(r["errors"] for rs in rows.values() for r in rs)
    lines = [f"Prediction log cost: {MODEL}, 1 row/request, unary gRPC, {CLIENTS} clients, closed loop, "
             f"{args.rounds} round(s) of {args.warmup:g}+{args.duration:g} s, {platform.node()} "
             f"({os.cpu_count()} CPUs), {datetime.now():%Y-%m-%d %H:%M}",
             f"{'':<6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'srv µs/req':>12}{'batch':>7}"]
    for v in ("off", "on"):
        f = fig[v]
        lines.append(f"{v:<6}{report._fmt(f['rps'], '.0f'):>9}{report._fmt(f['p50_ms'], '.3f'):>9}"
                     f"{report._fmt(f['p99_ms'], '.3f'):>9}{report._fmt(f['cpu_us_per_request'], '.0f'):>12}"
                     f"{report._fmt(f['mean_batch_size'], '.1f'):>7}")
    lines.append(f"on ÷ off CPU/request = {report._fmt(ratio)}×; rows logged {counts['skewless_prediction_log_rows_total']}, "
                 f"dropped {counts['skewless_prediction_log_dropped_total']}, files {len(files)}; errors {errors}; "
                 f"run took {time.monotonic() - t0:.0f} s")
    table = "\n".join(lines)
    (out / "prediction_log.json").write_text(json.dumps({"figures": fig, "rows": rows, "cpu_ratio": ratio,
                                                         "counts": counts, "files": files}, indent=1) + "\n")
    (out / "prediction_log.txt").write_text(table + "\n")
    print(table)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
