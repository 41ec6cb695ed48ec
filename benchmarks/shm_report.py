"""System shared memory vs gRPC vs REST binary for large tensors, from one run on one machine.

A co-located client (this process) sends 1 MiB and 16 MiB FP32 tensors to an identity model (``copy``:
FP32 [-1] -> FP32 [-1], built in a temporary repository) served by ``skewless serve`` on free ports, one
request at a time, over three transports:

- gRPC: tritonclient.grpc, input and output as raw contents;
- REST binary: tritonclient.http with Triton's binary tensor extension both ways;
- shared memory: tritonclient.grpc with the input read from and the output written into registered system
  shared-memory regions (``tritonclient.utils.shared_memory``): no tensor bytes on the socket.

Each point reports p50/p99 latency and the server's CPU per request (its user+sys time ÷ requests), and the
ratios of each transport to gRPC for the same size. Every reply is checked against its input. The transports
alternate within each of ``--rounds`` rounds; figures are medians of the rounds. Writes shm.json, shm.png and
shm.txt into --out and prints the table.

    python -m skewless.benchmarks.shm_report            # 6 s per point, 3 rounds, about 2 minutes
    python -m skewless.benchmarks.shm_report --quick    # a smoke run of about 10 s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import report
from .loadgen import RESULTS_DIR, process_tree_cpu
from .servers import start_skewless

MODEL = "copy"
SIZES = {"1MiB": 1 << 20, "16MiB": 16 << 20}
TRANSPORTS = ("grpc", "http_binary", "shm")
NAMES = {"grpc": "gRPC", "http_binary": "REST binary", "shm": "system shm"}
_CONFIG = ('name: "copy"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
           'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
           'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]\n')


def log(msg: str) -> None:
    print(f"[shm {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def write_model(root: Path) -> Path:
    """An identity-like model: y = x + 0 (a real kernel, so the output is a new buffer, as with a model)."""
    import onnx
    from onnx import TensorProto, helper

    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "zero"], ["y"])], MODEL,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], [zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (root / MODEL / "1").mkdir(parents=True)
    onnx.save(model, str(root / MODEL / "1" / "model.onnx"))
    (root / MODEL / "config.pbtxt").write_text(_CONFIG)
    return root


class Transport:
    """One transport's client for one tensor size: ``call()`` sends the tensor and checks the reply."""

    def __init__(self, kind: str, grpc_url: str, rest_url: str, x: np.ndarray):
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.kind, self.x = kind, x
        self.regions: list[Any] = []
        mod = httpclient if kind == "http_binary" else grpcclient
        self.client = (httpclient.InferenceServerClient(rest_url, network_timeout=120.0) if kind == "http_binary"
                       else grpcclient.InferenceServerClient(grpc_url))
        self.inp = mod.InferInput("x", [x.size], "FP32")
        self.out = mod.InferRequestedOutput("y", binary_data=True) if kind == "http_binary" \
            else mod.InferRequestedOutput("y")
        if kind == "shm":
            import tritonclient.utils.shared_memory as shm

            self.shm = shm
            tag = uuid.uuid4().hex[:10]
            for role in ("in", "out"):
                key = f"/skewless_bench_{role}_{tag}"
                handle = shm.create_shared_memory_region(f"bench_{role}_{tag}", key, x.nbytes)
                self.regions.append(handle)
                self.client.register_system_shared_memory(f"bench_{role}_{tag}", key, x.nbytes)
            shm.set_shared_memory_region(self.regions[0], [x])
            self.inp.set_shared_memory(f"bench_in_{tag}", x.nbytes)
            self.out.set_shared_memory(f"bench_out_{tag}", x.nbytes)
            self.names = [f"bench_in_{tag}", f"bench_out_{tag}"]
        else:
            self.inp.set_data_from_numpy(x, binary_data=True) if kind == "http_binary" \
                else self.inp.set_data_from_numpy(x)

    def call(self, check: bool) -> None:
        result = self.client.infer(MODEL, [self.inp], outputs=[self.out])
        if check:
            y = (self.shm.get_contents_as_numpy(self.regions[1], np.float32, [self.x.size]) if self.kind == "shm"
                 else result.as_numpy("y"))
            if not np.array_equal(y, self.x):
                raise AssertionError(f"{self.kind}: the reply differs from the input")

    def close(self) -> None:
        if self.kind == "shm":
            for name in self.names:
                self.client.unregister_system_shared_memory(name)
            for handle in self.regions:
                self.shm.destroy_shared_memory_region(handle)
        self.client.close()


def run_point(t: Transport, pid: int, duration: float, warmup: float) -> dict[str, Any]:
    end = time.monotonic() + warmup
    while time.monotonic() < end:
        t.call(check=True)
    lat: list[float] = []
    cpu0 = process_tree_cpu(pid)
    end = time.monotonic() + duration
    while time.monotonic() < end or len(lat) < 3:
        t0 = time.perf_counter()
        t.call(check=len(lat) % 16 == 0)
        lat.append(time.perf_counter() - t0)
    cpu = process_tree_cpu(pid) - cpu0
    s = report.latency_summary(np.asarray(lat))
    return {"requests": len(lat), "p50_ms": s["p50"], "p99_ms": s["p99"], "cpu_us_per_request": cpu / len(lat) * 1e6}


def summarise(rows: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    points = []
    for (size, kind), rs in rows.items():
        points.append({"size": size, "transport": kind, "rounds": len(rs), "requests": sum(r["requests"] for r in rs),
                       **{k: report.median([r[k] for r in rs]) for k in ("p50_ms", "p99_ms", "cpu_us_per_request")}})
    by = {(p["size"], p["transport"]): p for p in points}
    ratios = []
    for size in SIZES:
        g = by[(size, "grpc")]
        for kind in TRANSPORTS[1:]:
            p = by[(size, kind)]
            ratios.append({"size": size, "transport": kind, **{k: report.ratio(p[k], g[k])
                                                               for k in ("p50_ms", "p99_ms", "cpu_us_per_request")}})
    return {"points": points, "ratios": ratios}


def format_table(s: dict[str, Any]) -> str:
    f = report._fmt
    lines = [f"{'size':<6} {'transport':<12} {'p50 ms':>8} {'p99 ms':>8} {'srv µs/req':>11} "
             f"{'p50 ÷ gRPC':>10} {'p99 ÷ gRPC':>10} {'CPU ÷ gRPC':>10}"]
    ratio = {(r["size"], r["transport"]): r for r in s["ratios"]}
    for p in s["points"]:
        r = ratio.get((p["size"], p["transport"]), {})
        lines.append(f"{p['size']:<6} {NAMES[p['transport']]:<12} {f(p['p50_ms']):>8} {f(p['p99_ms']):>8} "
                     f"{f(p['cpu_us_per_request'], '.0f'):>11} {f(r.get('p50_ms')):>10} {f(r.get('p99_ms')):>10} "
                     f"{f(r.get('cpu_us_per_request')):>10}")
    return "\n".join(lines)


def plot(s: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.8 / len(TRANSPORTS)
    by = {(p["size"], p["transport"]): p for p in s["points"]}
    for ax, key, title in zip(axes, ("p50_ms", "p99_ms", "cpu_us_per_request"),
                              ("p50 latency (ms)", "p99 latency (ms)", "server CPU per request (µs)"), strict=True):
        for i, kind in enumerate(TRANSPORTS):
            vals = [by[(size, kind)][key] or 0 for size in SIZES]
            ax.bar(np.arange(len(SIZES)) + i * width, vals, width, label=NAMES[kind])
        ax.set_xticks(np.arange(len(SIZES)) + width, list(SIZES))
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle(s.get("title", ""), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.shm_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="measured seconds per point (default 6; 1 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 1; 0.2 with --quick)")
    p.add_argument("--rounds", type=int, help="alternating rounds of the three transports (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="short points and 1 round, for a smoke run")
    p.add_argument("--out", help="output directory (default benchmarks/results/shm-<timestamp>)")
    args = p.parse_args(argv)
    args.duration = args.duration or (1.0 if args.quick else 6.0)
    args.warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 1.0)
    args.rounds = max(1, args.rounds or (1 if args.quick else 3))
    out = Path(args.out or RESULTS_DIR / f"shm-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    with report.sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="skewless-shm-") as tmp:
        return _run(args, out, write_model(Path(tmp)))


def _run(args: argparse.Namespace, out: Path, repo: Path) -> int:
    t_start = time.monotonic()
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {(s, t): [] for s in SIZES for t in TRANSPORTS}
    srv = start_skewless(repo, out / "skewless.log", extra=["--allow-client-shm"])
    with srv:
        rest = srv.addresses["rest"]
        log(f"gRPC {srv.target}, HTTP/REST {rest}")
        rng = np.random.default_rng(0)
        for i in range(args.rounds):
            order = TRANSPORTS[i % len(TRANSPORTS):] + TRANSPORTS[:i % len(TRANSPORTS)]
            for size, nbytes in SIZES.items():
                x = rng.standard_normal(nbytes // 4).astype(np.float32)
                for kind in order:
                    log(f"round {i + 1}/{args.rounds}: {size} over {NAMES[kind]}")
                    t = Transport(kind, srv.target, rest, x)
                    try:
                        rows[(size, kind)].append(run_point(t, srv.pid, args.duration, args.warmup))
                    finally:
                        t.close()
    summary = summarise(rows)
    summary["title"] = (f"system shared memory vs gRPC vs REST binary, identity FP32 model, 1 client, one run "
                        f"{datetime.now():%Y-%m-%d %H:%M} on {platform.node()} ({os.cpu_count()} CPUs)")
    table = format_table(summary)
    result = {"tool": "skewless shm_report", "format": 1, "summary": summary, "wall_s": time.monotonic() - t_start,
              "config": {"duration": args.duration, "warmup": args.warmup, "rounds": args.rounds, "quick": args.quick,
                         "sizes": SIZES}}
    (out / "shm.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "shm.txt").write_text(table + "\n")
    plot(summary, out / "shm.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
