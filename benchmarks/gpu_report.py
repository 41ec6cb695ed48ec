"""mlp_large rows/s on the GPU against the CPU, through skewless' own runtime (no transport in between).

The model is a 256->2048->2048->2048->10 FP32 MLP built here from a fixed seed. Each variant is a real
model version runtime (the config a user would write): ``cpu`` (KIND_CPU), and where CUDA works ``gpu_run``
(KIND_GPU, plain session.run), ``gpu_bound`` (KIND_GPU with IO binding, the default) and ``gpu_pinned`` (IO
binding with page-locked input staging). Each is timed at batch 64 and 256 for ``--seconds``, calling
``run_sync`` back to back from one thread, as one instance's worker thread does.

    python -m skewless.benchmarks.gpu_report            # JSON + PNG under benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .batching_report import build_heavy_onnx

MLP_LARGE_LAYERS = (256, 2048, 2048, 2048, 10)
VARIANTS = {  # name: (instance kind, config parameters)
    "cpu": ("KIND_CPU", {}),
    "gpu_run": ("KIND_GPU", {"skewless.io_binding": "0"}),
    "gpu_bound": ("KIND_GPU", {}),
    "gpu_pinned": ("KIND_GPU", {"skewless.cuda_pinned_staging": "1"}),
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def gpu_usable() -> tuple[bool, str]:
    """Whether a CUDA session really runs here (the GPU wheel lists CUDA even on machines without one)."""
    from skewless.server.models.runtime import cuda_available, cuda_usable

    if not cuda_available():
        return False, "onnxruntime has no CUDA execution provider (install the gpu extra)"
    if not cuda_usable():
        return False, "the CUDA runtime finds no usable GPU (no driver or device)"
    return True, ""


def _runtime(model: Path, kind: str, params: dict[str, str]):
    from skewless.protos import model_config_pb2 as mc
    from skewless.server.models.runtime import ModelRuntime

    cfg = mc.ModelConfig(name="mlp_large", platform="onnxruntime_onnx", max_batch_size=256)
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.Kind.Value(kind))
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    return ModelRuntime(model, cfg, "mlp_large")


def measure(runtime, batch: int, seconds: float, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    feeds = [{"input": rng.standard_normal((batch, MLP_LARGE_LAYERS[0]), dtype=np.float32)} for _ in range(4)]
    for f in feeds[:2]:  # warm up: allocator arenas, cuDNN/cuBLAS handles
        runtime.run_sync(["logits"], f)
    calls, lat = 0, []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        runtime.run_sync(["logits"], feeds[calls % len(feeds)])
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        calls += 1
        if t1 - start >= seconds and calls >= 3:
            break
    elapsed = time.perf_counter() - start
    return {"batch": batch, "calls": calls, "rows_per_s": calls * batch / elapsed,
            "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3)}


def run(seconds: float, batches: list[int], workdir: Path) -> dict[str, Any]:
    model = build_heavy_onnx(workdir / "mlp_large.onnx", MLP_LARGE_LAYERS, seed=11)
    usable, why = gpu_usable()
    result: dict[str, Any] = {"model": "mlp_large " + "->".join(map(str, MLP_LARGE_LAYERS)) + " FP32",
                              "seconds": seconds, "gpu": usable, "gpu_unavailable_reason": why or None,
                              "variants": {}}
    reference = None
    for name, (kind, params) in VARIANTS.items():
        if kind == "KIND_GPU" and not usable:
            continue
        rt = _runtime(model, kind, params)
        try:
            probe = np.random.default_rng(99).standard_normal((8, MLP_LARGE_LAYERS[0]), dtype=np.float32)
            out = rt.run_sync(["logits"], {"input": probe})[0]
            reference = out if reference is None else reference
            points = [measure(rt, b, seconds) for b in batches]
            result["variants"][name] = {"providers": rt.providers, "points": points,
                                        "max_abs_diff_vs_cpu": float(np.max(np.abs(out - reference)))}
        finally:
            rt.close()
        print(f"[gpu_report] {name}: " + ", ".join(f"batch {p['batch']}: {p['rows_per_s']:,.0f} rows/s"
                                                      for p in points), file=sys.stderr, flush=True)
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [result["model"]]
    if not result["gpu"]:
        lines.append(f"GPU: not measured ({result['gpu_unavailable_reason']})")
    lines.append(f"{'variant':<12} {'batch':>6} {'rows/s':>12} {'p50 ms':>9} {'p99 ms':>9} {'x cpu':>7}")
    cpu = {p["batch"]: p["rows_per_s"] for p in result["variants"].get("cpu", {}).get("points", [])}
    for name, v in result["variants"].items():
        for p in v["points"]:
            speedup = p["rows_per_s"] / cpu[p["batch"]] if cpu.get(p["batch"]) else float("nan")
            lines.append(f"{name:<12} {p['batch']:>6} {p['rows_per_s']:>12,.0f} {p['p50_ms']:>9.2f} "
                         f"{p['p99_ms']:>9.2f} {speedup:>7.1f}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(result["variants"])
    batches = sorted({p["batch"] for v in result["variants"].values() for p in v["points"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        by_batch = {p["batch"]: p["rows_per_s"] for p in result["variants"][name]["points"]}
        ax.bar([j + i * width for j in range(len(batches))], [by_batch.get(b, 0) for b in batches], width,
               label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    ax.set_ylabel("rows/s")
    ax.set_yscale("log")
    ax.set_title(result["model"])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per variant and batch size")
    p.add_argument("--batches", default="64,256")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.seconds, [int(b) for b in args.batches.split(",")], Path(tmp))
    (args.out / "gpu_report.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "gpu_report.png")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
