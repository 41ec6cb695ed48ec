"""Latency figures, from one run: the example MLP served by skewless vs run in onnxruntime directly.

In one run on one machine: onnxruntime in-process (1 caller: latency; 64 threads: throughput), then
``skewless serve --model-repository examples/models`` as a subprocess on free ports driven by the load
generator at 1 client (p50/p99) and 64 clients (requests/s, p99, server CPU µs per request), then the bare
echo server at the same points as the transport ceiling. Writes latency.json, latency.png and latency.txt.

    python -m skewless.benchmarks.latency_report            # ~10 s per point, about 1.5 minutes
    python -m skewless.benchmarks.latency_report --quick    # ~2 s per point
    python -m skewless.benchmarks.latency_report --delay-spinning   # issue 28's delay and spinning figures

``--delay-spinning`` measures instead, at one client and in alternating slices: ``mlp_small`` with a 200 µs
queue delay vs ``dynamic_batching { }`` (p50, CPU per request) and the heavy MLP against the naive server and
against skewless with its old spinning and inline defaults (p50); see delay_spinning.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from . import onnx_direct, report
from .loadgen import RESULTS_DIR, BenchConfig, run_bench
from .servers import EXAMPLE_MODELS, start_echo, start_skewless

MODEL = "mlp"


def _point(result: dict[str, Any], concurrency: int, stream: bool = False) -> dict[str, Any]:
    return next(p for p in result["points"] if p["concurrency"] == concurrency and p["stream"] == stream)


def _row(name: str, p: dict[str, Any]) -> dict[str, Any]:
    lat, cpu, st = p["latency_ms"], p.get("server_cpu") or {}, p.get("server_stats") or {}
    return {"name": name, "p50_ms": lat["p50"], "p99_ms": lat["p99"], "p99.9_ms": lat["p99.9"],
            "rps": p["throughput_rps"], "cpu_us_per_request": cpu.get("us_per_request"),
            "server_cores": cpu.get("cores"), "client_cores": (p.get("client_cpu") or {}).get("cores"),
            "mean_batch_size": st.get("mean_batch_size"), "errors": p["error_count"],
            "checks": f"{p['checks']['checked'] - p['checks']['failed']}/{p['checks']['checked']}",
            "cdf_ms": lat["cdf"]}


def _onnx_row(name: str, x: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "p50_ms": x["p50_us"] / 1e3, "p99_ms": x["p99_us"] / 1e3,
            "p99.9_ms": x["p99.9_us"] / 1e3, "rps": x["calls_per_s"], "cpu_us_per_request": x["cpu_us_per_call"],
            "server_cores": None, "client_cores": None, "mean_batch_size": None, "errors": 0, "checks": "-",
            "cdf_ms": [[c[0] / 1e3, c[1]] for c in x["cdf_us"]]}


def format_table(summary: dict[str, Any]) -> str:
    f = report._fmt
    lines = [summary["title"],
             f"{'':<44}{'p50 ms':>8}{'p99 ms':>9}{'req/s':>9}{'CPU µs/req':>12}{'batch':>7}{'errors':>8}"
             f"{'checks':>11}"]
    for r in summary["rows"]:
        lines.append(f"{r['name']:<44}{f(r['p50_ms'], '.3f'):>8}{f(r['p99_ms'], '.3f'):>9}{f(r['rps'], '.0f'):>9}"
                     f"{f(r['cpu_us_per_request'], '.0f'):>12}{f(r['mean_batch_size']):>7}{r['errors']:>8}"
                     f"{r['checks']:>11}")
    lines.append("CPU µs/req: the server process tree's user+sys time ÷ requests answered (for onnxruntime: the "
                 "process's CPU per call).")
    lines.extend(summary["notes"])
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = summary["rows"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    ax = axes[0]
    for r in rows:
        if r["cdf_ms"] and ("1 client" in r["name"] or "1 caller" in r["name"]):
            ax.plot([c[0] for c in r["cdf_ms"]], [c[1] for c in r["cdf_ms"]], label=r["name"])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("single client: latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    many = [r for r in rows if "64" in r["name"]]
    names = [r["name"].replace(", ", "\n", 1) for r in many]
    for ax, key, label in ((axes[1], "rps", "requests/s (log)"), (axes[2], "cpu_us_per_request",
                                                                   "CPU µs per request (log)")):
        vals = [r[key] or 0 for r in many]
        bars = ax.bar(range(len(many)), vals, color=["C0", "C1", "C2", "C3"][: len(many)])
        ax.set_xticks(range(len(many)), names, fontsize=7)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylabel(label)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        for b, r, v in zip(bars, many, vals, strict=True):
            extra = f"\np99 {r['p99_ms']:.3g} ms" if key == "rps" and r["p99_ms"] is not None else ""
            ax.annotate(f"{v:.0f}{extra}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    axes[1].set_title("64 clients: throughput")
    axes[2].set_title("64 clients: CPU per request")
    fig.suptitle(summary["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.latency_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="measured seconds per point (default 10; 2 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2; 0.5 with --quick)")
    p.add_argument("--quick", action="store_true", help="short points, for a smoke run")
    p.add_argument("--processes", type=int, default=1,
                   help="client processes for the 64-client points (the client shares the machine's cores)")
    p.add_argument("--stream", action="store_true", help="also measure 64 in flight over ModelStreamInfer")
    p.add_argument("--model-repository", default=str(EXAMPLE_MODELS))
    p.add_argument("--out", help="output directory (default benchmarks/results/latency-<timestamp>)")
    p.add_argument("--delay-spinning", action="store_true",
                   help="only the 1-client queue-delay (mlp_small, 200 us vs none) and heavy-MLP (vs the naive "
                        "server, vs its old defaults) figures, in alternating 1 s slices")
    args = p.parse_args(argv)
    duration = args.duration or (2.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    out = Path(args.out or RESULTS_DIR / f"latency-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    if args.delay_spinning:
        from .delay_spinning import run as run_delay_spinning

        result, table = run_delay_spinning(out, duration, warmup)
        print(table)
        print(f"wrote {out / 'delay_spinning.json'}, {out / 'delay_spinning.txt'}, {out / 'delay_spinning.png'}")
        return 1 if any(r["errors"] for r in result["rows"]) else 0
    onnx_path = Path(args.model_repository) / MODEL / "1" / "model.onnx"

    def bench(target: str, pid: int, sub: str, concurrency: list[int], stream: bool = False,
              check: bool = True) -> dict[str, Any]:
        cfg = BenchConfig(target=target, model=MODEL, concurrency=concurrency, stream=stream,
                          processes=args.processes, duration=duration, warmup=warmup, server_pid=pid,
                          check_against_onnx=str(onnx_path) if check else None, out=str(out / sub), label=sub)
        return run_bench(cfg)

    print(f"onnxruntime in-process ({min(duration, 5.0):g} s per measurement)", file=sys.stderr)
    direct = onnx_direct.run(onnx_path, rows=1, threads=64, duration=min(duration, 5.0))
    (out / "onnx_direct.json").write_text(json.dumps(direct, indent=1) + "\n")

    print("skewless serve --model-repository", args.model_repository, file=sys.stderr)
    with start_skewless(Path(args.model_repository), out / "skewless.log") as srv:
        sk = bench(srv.target, srv.pid, "skewless", [1, 64])
        sk_stream = bench(srv.target, srv.pid, "skewless_stream", [64], stream=True) if args.stream else None
    print("echo server (transport ceiling)", file=sys.stderr)
    with start_echo(out / "echo.log") as echo:
        ec = bench(echo.target, echo.pid, "echo", [1, 64], check=False)
        ec_stream = bench(echo.target, echo.pid, "echo_stream", [64], stream=True, check=False) \
            if args.stream else None

    rows = [_row("skewless, 1 client (unary)", _point(sk, 1)),
            _row("skewless, 64 clients (unary)", _point(sk, 64)),
            _row("echo server, 1 client (unary)", _point(ec, 1)),
            _row("echo server, 64 clients (unary)", _point(ec, 64))]
    if sk_stream and ec_stream:
        rows += [_row("skewless, 64 in flight (stream)", _point(sk_stream, 64, True)),
                 _row("echo server, 64 in flight (stream)", _point(ec_stream, 64, True))]
    rows += [_onnx_row("onnxruntime in-process, 1 caller", direct["single"]),
             _onnx_row("onnxruntime in-process, 64 threads", direct["threaded"])]
    s1, s64, e64 = rows[0], rows[1], rows[3]
    notes = []
    if s64["rps"] and e64["rps"]:
        notes.append(f"skewless at 64 clients: {s64['rps'] / e64['rps']:.0%} of the echo server's requests/s"
                     + (f", {s64['cpu_us_per_request'] / e64['cpu_us_per_request']:.2f}× its CPU per request"
                        if s64["cpu_us_per_request"] and e64["cpu_us_per_request"] else ""))
    if s1["p50_ms"] is not None:
        notes.append(f"skewless at 1 client adds {s1['p50_ms'] - direct['single']['p50_us'] / 1e3:.3f} ms (p50) "
                     f"over calling onnxruntime directly")
    notes.append(f"client: {args.processes} process(es), duration {duration:g} s + {warmup:g} s warm-up per point; "
                 f"same machine as the servers ({os.cpu_count()} CPUs, shared)")
    summary = {
        "title": f"latency: example MLP ({MODEL}: FP32 [1,32] -> [1,2]), 1 row/request, one run "
                 f"{datetime.now():%Y-%m-%d %H:%M} on {platform.node()} ({os.cpu_count()} CPUs)",
        "rows": rows, "notes": notes,
    }
    table = format_table(summary)
    result = {"summary": summary, "onnx_direct": direct, "skewless": sk, "echo": ec,
              "skewless_stream": sk_stream, "echo_stream": ec_stream,
              "config": {"duration": duration, "warmup": warmup, "processes": args.processes,
                         "model_repository": args.model_repository, "argv": sys.argv}}
    (out / "latency.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "latency.txt").write_text(table + "\n")
    plot(summary, out / "latency.png")
    print(table)
    print(f"wrote {out / 'latency.json'}, {out / 'latency.png'}, {out / 'latency.txt'}")
    bad = any(r["errors"] for r in rows) or any(
        pt["checks"]["failed"] for res in (sk, sk_stream) if res for pt in res["points"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
