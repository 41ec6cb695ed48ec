"""HTTP/REST vs gRPC on the example MLP, from one run on one machine.

``skewless serve --model-repository examples/models`` is started as a subprocess on free ports (gRPC and
HTTP/REST), and model ``mlp`` (input FP32 [1,32] -> probabilities FP32 [1,2]) is driven closed loop, 1 row
per request, at 1 and 64 clients over three transports:

- gRPC unary ModelInfer (the load generator's gRPC client: one HTTP/2 connection per client process);
- HTTP JSON: ``POST /v2/models/mlp/infer`` with inputs as JSON ``data`` and outputs asked as JSON;
- HTTP binary: the same with Triton's binary tensor extension both ways (``Inference-Header-Content-Length``,
  ``binary_data_size`` inputs, ``binary_data: true`` outputs).

The HTTP load comes from ``http_client`` (one keep-alive HTTP/1.1 connection per simulated client), run by the
load generator's process pool, so every point has the same figures: requests/s, p50/p99, server CPU µs per
request (the server's user+sys time ÷ requests answered), client CPU, errors, and replies spot-checked
against onnxruntime run in-process on the same inputs (a wrong reply counts as an error).

The three transports alternate within each of ``--rounds`` rounds (the starting one rotating), so each
HTTP÷gRPC ratio compares points measured back to back in the same spell of a shared machine's noise; the
ratio reported is the median of the rounds' ratios, and each figure the median of its rounds.
Writes http.json, http.png and http.txt into --out and prints the table.

    python -m skewless.benchmarks.http_report            # 8 s + 2 s warm-up per point, about 4 minutes
    python -m skewless.benchmarks.http_report --quick    # 1.5 s points, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from . import report
from .http_client import HttpOptions, http_worker_main
from .loadgen import RESULTS_DIR, BenchConfig, run_bench
from .servers import EXAMPLE_MODELS, ServerProcess, start_skewless
from .workload import Workload, build_workload, fetch_model

MODEL = "mlp"
# The only published Triton HTTP/gRPC pair found (search of Triton's docs, issues and pull requests): not
# like for like (sync gRPC vs async HTTP, another model and machine), so quoted for scale, never compared.
TRITON_REFERENCE = ("Triton, for scale only: perf_analyzer at concurrency 1 on graphdef_int32_int32_int32, gRPC "
                    "sync 1837 infer/s (543 µs) vs HTTP async 2009.5 infer/s (480 µs), in "
                    "triton-inference-server/server pull request 2244 (2020); no like-for-like published "
                    "comparison was found.")
CLIENTS = (1, 64)
TRANSPORTS = ("grpc", "http_json", "http_binary")
NAMES = {"grpc": "gRPC unary", "http_json": "HTTP JSON", "http_binary": "HTTP binary"}
def log(msg: str) -> None:
    print(f"[http {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def start_server(repository: Path, log_path: Path) -> tuple[ServerProcess, str]:
    """skewless on free gRPC, REST and metrics ports; returns the process and the REST host:port, which the
    ready line names as ``rest=`` (``http=`` is the metrics/health port)."""
    srv = start_skewless(repository, log_path)
    if "rest" not in srv.addresses:
        srv.stop()
        raise RuntimeError(f"the server's ready line names no HTTP/REST endpoint (rest=): {srv.addresses}")
    return srv, srv.addresses["rest"]


# -- figures -----------------------------------------------------------------------------------------------
def point_row(transport: str, p: dict[str, Any]) -> dict[str, Any]:
    return {"transport": transport, **report.point_figures(p)}


RATIO_KEYS = {"rps": "rps", "p50": "p50_ms", "cpu": "cpu_us_per_request"}


def summarise(rows: dict[tuple[str, int], list[dict[str, Any]]], rounds: int) -> dict[str, Any]:
    """Each (transport, clients) figure as the median of its rounds; HTTP÷gRPC ratios as the median of the
    per-round ratios (each round's points were measured back to back)."""
    points = []
    for c in CLIENTS:
        for t in TRANSPORTS:
            per = rows[(t, c)]
            agg: dict[str, Any] = {"transport": t, "name": NAMES[t], "clients": c, "rounds": len(per)}
            for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "server_cores", "client_cores",
                        "client_us_per_request", "mean_batch_size"):
                agg[key] = report.median([r[key] for r in per])
            for key in ("errors", "checked", "check_failed"):
                agg[key] = sum(r[key] for r in per)
            agg["error_messages"] = {k: v for r in per for k, v in r["error_messages"].items()}
            agg["first_failure"] = next((r["first_failure"] for r in per if r["first_failure"]), None)
            points.append(agg)
    ratios = []
    for c in CLIENTS:
        for t in TRANSPORTS[1:]:
            per_round = [{name: report.ratio(h[key], g[key]) for name, key in RATIO_KEYS.items()}
                         for h, g in zip(rows[(t, c)], rows[("grpc", c)], strict=True)]
            ratios.append({"transport": t, "name": NAMES[t], "clients": c, "rounds": per_round,
                           **{name: report.median([r[name] for r in per_round]) for name in RATIO_KEYS}})
    return {"points": points, "ratios": ratios, "rounds": rounds}


# -- table -------------------------------------------------------------------------------------------------
def format_table(s: dict[str, Any]) -> str:
    f = report._fmt
    out = [s["title"],
           f"{'':<24}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'srv µs/req':>11}{'srv cores':>10}{'cli µs/req':>11}"
           f"{'cli cores':>10}{'batch':>7}{'errors':>7}{'checks':>8}"]
    for c in CLIENTS:
        out.append(f"{c} client{'s' if c > 1 else ''}, closed loop, 1 row/request")
        for p in (p for p in s["points"] if p["clients"] == c):
            out.append(f"  {p['name']:<22}{f(p['rps'], '.0f'):>8}{f(p['p50_ms'], '.3f'):>8}{f(p['p99_ms'], '.3f'):>8}"
                       f"{f(p['cpu_us_per_request'], '.0f'):>11}{f(p['server_cores']):>10}"
                       f"{f(p['client_us_per_request'], '.0f'):>11}{f(p['client_cores']):>10}"
                       f"{f(p['mean_batch_size']):>7}{p['errors']:>7}{p['checked']:>8}")
    out.append(f"HTTP ÷ gRPC (median of {s['rounds']} alternating round(s); per round in brackets)")
    out.append(f"  {'':<22}{'req/s':>8}{'p50':>8}{'CPU/req':>9}   rounds: req/s, p50, CPU/req")
    for r in s["ratios"]:
        per = "; ".join(f"{f(x['rps'])} {f(x['p50'])} {f(x['cpu'])}" for x in r["rounds"])
        out.append(f"  {r['name'] + ', ' + str(r['clients']) + ' cl.':<22}{f(r['rps']) + '×':>8}"
                   f"{f(r['p50']) + '×':>8}{f(r['cpu']) + '×':>9}   [{per}]")
    for p in s["points"]:
        if p["errors"]:
            out.append(f"  ! {p['name']}, {p['clients']} client(s): {p['errors']} errors {p['error_messages']}"
                       + (f"; {p['check_failed']} wrong replies, first: {p['first_failure']}"
                          if p["check_failed"] else ""))
    out += s["notes"]
    return "\n".join(out)


# -- plot --------------------------------------------------------------------------------------------------
def plot(s: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"grpc": "C0", "http_json": "C1", "http_binary": "C2"}
    width = 0.27
    by = {(p["transport"], p["clients"]): p for p in s["points"]}
    fig, axes = plt.subplots(2, 2, figsize=(14, 9.5))

    def grouped(ax, key: str, title: str, ylabel: str, fmt: str) -> None:
        top = 0.0
        for k, t in enumerate(TRANSPORTS):
            vals = [by[(t, c)][key] or 0 for c in CLIENTS]
            top = max(top, *vals)
            xs = [i + (k - 1) * width for i in range(len(CLIENTS))]
            bars = ax.bar(xs, vals, width, color=colors[t], label=NAMES[t])
            for b, v in zip(bars, vals, strict=True):
                ax.annotate(format(v, fmt), (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(CLIENTS)), [f"{c} client{'s' if c > 1 else ''}" for c in CLIENTS])
        ax.set_ylim(0, (top or 1) * 1.15)  # linear from 0: bar heights compare as ratios
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)

    grouped(axes[0][0], "rps", "throughput", "requests/s", ".0f")
    grouped(axes[0][1], "cpu_us_per_request", "server CPU per request (user+sys)", "CPU µs per request", ".0f")
    for ax, c in zip(axes[1], CLIENTS, strict=True):
        for k, (key, name, alpha) in enumerate((("p50_ms", "p50", 1.0), ("p99_ms", "p99", 0.45))):
            vals = [by[(t, c)][key] or 0 for t in TRANSPORTS]
            xs = [i + (k - 0.5) * 0.38 for i in range(len(TRANSPORTS))]
            bars = ax.bar(xs, vals, 0.38, color=[colors[t] for t in TRANSPORTS], alpha=alpha,
                          label=name, edgecolor="black", linewidth=0.4)
            for b, v in zip(bars, vals, strict=True):
                ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(TRANSPORTS)), [NAMES[t] for t in TRANSPORTS])
        ax.set_ylim(0, max((by[(t, c)]["p99_ms"] or 0) for t in TRANSPORTS) * 1.15 or 1)
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{c} client{'s' if c > 1 else ''}: p50 (solid) and p99 (light)")
        ax.grid(True, axis="y", alpha=0.3)
    lines = [f"{r['name']} ÷ gRPC at {r['clients']}: req/s {report._fmt(r['rps'])}×, p50 {report._fmt(r['p50'])}×, "
             f"CPU/req {report._fmt(r['cpu'])}×" for r in s["ratios"]]
    fig.suptitle(s["title"] + "\n" + "   |   ".join(lines[:2]) + "\n" + "   |   ".join(lines[2:]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the run -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.http_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="measured seconds per point (default 8; 1.5 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2; 0.5 with --quick)")
    p.add_argument("--quick", action="store_true", help="short points and 1 round, for a smoke run")
    p.add_argument("--rounds", type=int, help="alternating rounds of the three transports (default 3; 1 with --quick)")
    p.add_argument("--processes", type=int, default=1,
                   help="client processes per point, for every transport (they share the machine's cores with "
                        "the server; compare runs made with the same number)")
    p.add_argument("--model-repository", default=str(EXAMPLE_MODELS))
    p.add_argument("--out", help="output directory (default benchmarks/results/http-<timestamp>)")
    args = p.parse_args(argv)
    args.duration = args.duration or (1.5 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    args.rounds = max(1, args.rounds or (1 if args.quick else 3))
    out = Path(args.out or RESULTS_DIR / f"http-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)

    with report.sigterm_as_interrupt():
        return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> int:
    t_start = time.monotonic()
    onnx_path = Path(args.model_repository) / MODEL / "1" / "model.onnx"
    total = args.rounds * len(CLIENTS) * len(TRANSPORTS)
    runs: dict[str, Any] = {}
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {(t, c): [] for t in TRANSPORTS for c in CLIENTS}
    log(f"skewless serve --model-repository {args.model_repository} (gRPC and HTTP/REST on free ports)")
    srv, rest = start_server(Path(args.model_repository), out / "skewless.log")
    with srv:
        log(f"gRPC {srv.target}, HTTP/REST {rest}; {total} points of {args.warmup:g}+{args.duration:g} s")
        # One workload (the same 16 input variants, onnxruntime's outputs for each) for every point.
        wl: Workload = build_workload(fetch_model(srv.target, MODEL), rows=1, variants=16, onnx_path=str(onnx_path))
        cfg = dict(target=srv.target, model=MODEL, processes=args.processes, duration=args.duration,
                   warmup=args.warmup, server_pid=srv.pid, check_against_onnx=str(onnx_path), plot=False)
        done = 0
        for i in range(args.rounds):
            order = TRANSPORTS[i % len(TRANSPORTS):] + TRANSPORTS[:i % len(TRANSPORTS)]
            for c in CLIENTS:
                for t in order:
                    key = f"{t}_c{c}_r{i}"
                    log(f"round {i + 1}/{args.rounds}, {c} client(s), {NAMES[t]} ({done}/{total} done, "
                        f"{time.monotonic() - t_start:.0f} s elapsed)")
                    bc = BenchConfig(concurrency=[c], out=str(out / "runs" / key), label=f"http_report {key}", **cfg)
                    if t == "grpc":
                        res = run_bench(bc, wl)
                    else:
                        opts = HttpOptions(rest, encoding=t.removeprefix("http_"), timeout=bc.timeout,
                                           check_every=bc.check_every, use_uvloop=bc.uvloop)
                        res = run_bench(bc, wl, http_worker_main, opts)
                        res["target"]["http"] = {"endpoint": rest, "encoding": opts.encoding}
                    runs[key] = res
                    rows[(t, c)].append(point_row(t, res["points"][0]))
                    done += 1

    wall = time.monotonic() - t_start
    summary = summarise(rows, args.rounds)
    summary["title"] = (f"HTTP/REST vs gRPC: example MLP ({MODEL}: FP32 [1,32] -> [1,2]), 1 row/request, one run "
                        f"{datetime.now():%Y-%m-%d %H:%M} on {platform.node()} ({os.cpu_count()} CPUs)")
    summary["notes"] = [
        "srv µs/req: the server process's user+sys CPU ÷ requests answered in the window; cli µs/req: the same "
        "for the client processes (the HTTP client must stay well below the server's figure); batch: rows per "
        "model execution (ModelStatistics); errors: failed requests plus wrong replies; checks: replies "
        "spot-checked against onnxruntime in-process.",
        "gRPC: one HTTP/2 connection per client process, calls multiplexed; HTTP: one keep-alive HTTP/1.1 "
        "connection per client. JSON: inputs as JSON data, outputs as JSON; binary: Triton's binary tensor "
        "extension both ways.",
        f"client: {args.processes} process(es) on the same machine as the server ({os.cpu_count()} CPUs, shared); "
        f"{args.duration:g} s measured + {args.warmup:g} s warm-up per point, {args.rounds} round(s); figures are "
        f"medians of the rounds; run took {wall:.0f} s.",
        TRITON_REFERENCE,
    ]
    table = format_table(summary)
    result = {"tool": "skewless http_report", "format": 1, "summary": summary, "runs": runs, "wall_s": wall,
              "rest_endpoint": rest,
              "config": {"duration": args.duration, "warmup": args.warmup, "rounds": args.rounds,
                         "processes": args.processes, "quick": args.quick, "clients": list(CLIENTS),
                         "model_repository": args.model_repository, "argv": sys.argv}}
    (out / "http.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "http.txt").write_text(table + "\n")
    plot(summary, out / "http.png")
    print(table)
    print(f"wrote {out / 'http.json'}, {out / 'http.png'}, {out / 'http.txt'}")
    return 1 if any(p["errors"] for p in summary["points"]) else 0


if __name__ == "__main__":
    sys.exit(main())
