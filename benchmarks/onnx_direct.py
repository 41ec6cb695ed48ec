"""The baseline: the same ONNX model called directly in onnxruntime, in-process, with no server in between.

Single-caller latency shows what the model itself costs per call; many threads calling ``session.run`` at
once (it releases the GIL) show the in-process throughput ceiling. Whatever a server adds on top of these is
its own overhead.

    python -m skewless.benchmarks.onnx_direct --model examples/models/mlp/1/model.onnx --threads 64
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .report import CDF_QUANTILES

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "examples" / "models" / "mlp" / "1" / "model.onnx"
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def make_session(path: str | Path, intra_op_threads: int = 0):
    """Default session options unless told otherwise: the server runs the example models with defaults too."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if intra_op_threads:
        so.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def make_feeds(sess, rows: int, variants: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(variants):
        f = {}
        for i in sess.get_inputs():
            dtype = _ORT_TYPES.get(i.type)
            if dtype is None:
                raise ValueError(f"input '{i.name}' has type {i.type}; onnx_direct generates numeric inputs only")
            shape = [rows if k == 0 and not isinstance(d, int) else (d if isinstance(d, int) else 1)
                     for k, d in enumerate(i.shape)]
            f[i.name] = (rng.standard_normal(shape) if np.dtype(dtype).kind == "f"
                         else rng.integers(0, 2 if dtype is np.bool_ else 100, shape)).astype(dtype)
        feeds.append(f)
    return feeds


def _percentiles_us(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1e3
    p = np.percentile(us, [50, 90, 99, 99.9])
    cdf = np.quantile(us, CDF_QUANTILES)
    return {"mean_us": float(us.mean()), "p50_us": float(p[0]), "p90_us": float(p[1]), "p99_us": float(p[2]),
            "p99.9_us": float(p[3]),
            "cdf_us": [[round(float(x), 3), round(float(q), 6)] for x, q in zip(cdf, CDF_QUANTILES, strict=True)]}


def single_caller(sess, feeds: list[dict[str, np.ndarray]], duration: float, warmup: float = 0.5) -> dict[str, Any]:
    """One thread calling back to back: the model's own per-call latency."""
    run = sess.run
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        run(None, feeds[0])
    lat: list[int] = []
    nv = len(feeds)
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + duration
    i = 0
    while True:
        s = time.perf_counter_ns()
        run(None, feeds[i % nv])
        lat.append(time.perf_counter_ns() - s)
        i += 1
        if i % 64 == 0 and time.perf_counter() >= end:
            break
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"threads": 1, "calls": i, "calls_per_s": i / wall, "cpu_us_per_call": cpu * 1e6 / i,
            **_percentiles_us(np.asarray(lat, dtype=np.float64))}


def threaded(sess, feeds: list[dict[str, np.ndarray]], threads: int, duration: float,
             warmup: float = 0.5) -> dict[str, Any]:
    """``threads`` callers at once on one session, as a server's worker threads would call it."""
    start = threading.Barrier(threads + 1)
    t_w = t_end = 0.0  # set by the main thread before the barrier releases the callers
    per_thread: list[list[int]] = [[] for _ in range(threads)]

    def caller(k: int) -> None:
        run, lat, nv = sess.run, per_thread[k], len(feeds)
        start.wait()
        i = k
        while True:
            s = time.perf_counter_ns()
            run(None, feeds[i % nv])
            now = time.perf_counter()
            if now >= t_end:
                return
            if now >= t_w:
                lat.append(time.perf_counter_ns() - s)
            i += 1

    workers = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    t_w, t_end = t0 + warmup, t0 + warmup + duration
    start.wait()
    time.sleep(max(0.0, t_w - time.perf_counter()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, t_end - time.perf_counter()))
    cpu = time.process_time() - cpu0
    for w in workers:
        w.join()
    lat = np.concatenate([np.asarray(x, dtype=np.float64) for x in per_thread])
    return {"threads": threads, "calls": int(lat.size), "calls_per_s": lat.size / duration,
            "cpu_us_per_call": cpu * 1e6 / max(1, lat.size), **_percentiles_us(lat)}


def run(model: str | Path = DEFAULT_MODEL, rows: int = 1, threads: int = 64, duration: float = 5.0,
        intra_op_threads: int = 0) -> dict[str, Any]:
    import onnxruntime as ort

    sess = make_session(model, intra_op_threads)
    feeds = make_feeds(sess, rows)
    return {"model": str(model), "rows": rows, "onnxruntime": ort.__version__,
            "intra_op_threads": intra_op_threads or "default",
            "single": single_caller(sess, feeds, duration),
            "threaded": threaded(sess, feeds, threads, duration)}


def format_table(r: dict[str, Any]) -> str:
    lines = [f"onnxruntime {r['onnxruntime']} in-process: {r['model']}  rows/call={r['rows']}",
             f"{'callers':<10}{'calls/s':>10}{'p50 µs':>9}{'p99 µs':>9}{'p99.9 µs':>10}{'CPU µs/call':>13}"]
    for key in ("single", "threaded"):
        x = r[key]
        lines.append(f"{x['threads']:<10}{x['calls_per_s']:>10.0f}{x['p50_us']:>9.1f}{x['p99_us']:>9.1f}"
                     f"{x['p99.9_us']:>10.1f}{x['cpu_us_per_call']:>13.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.onnx_direct", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="path to model.onnx")
    p.add_argument("--rows", type=int, default=1, help="rows per call")
    p.add_argument("--threads", type=int, default=64, help="callers in the throughput run")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--intra-op-threads", type=int, default=0, help="0: onnxruntime's default")
    p.add_argument("--out", help="write the result as JSON to this file")
    args = p.parse_args(argv)
    result = run(args.model, args.rows, args.threads, args.duration, args.intra_op_threads)
    print(format_table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
