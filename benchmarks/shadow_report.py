"""What 100% shadow traffic costs the primary, from one run on one machine.

One ``skewless serve`` on a copy of the example repository's ``mlp`` plus ``mlp_twin`` (the same model under
another name: an equally costly challenger). The variants differ only in the shadow, switched through
``skewless.v1.TrafficAdmin`` between points on the same warm server:

- ``off``: no shadow (the model's ``traffic`` hook is None);
- ``shadow``: every request mirrored to ``mlp_twin`` (rate 1.0).

Per round, in alternating order: closed loop at 64 clients (saturation: requests/s), then open loop
(Poisson) at 50% of that round's ``off`` throughput (p99). Targets: shadow ÷ off throughput ≥ 0.95 at
saturation, shadow p99 ≤ 1.10 × off at 50% load; each ratio is the median of the rounds' ratios. The
shadow's own counters (mirrored, shed) per point say how much of the challenger's work ran. Writes
shadow.json, shadow.png and shadow.txt into --out and prints the table.

    python -m skewless.benchmarks.shadow_report            # 5 rounds of 4 points, 0.5+3 s each: ~75 s
    python -m skewless.benchmarks.shadow_report --quick    # 1 round, 0.5+1.5 s points
    python -m skewless.benchmarks.shadow_report --burn 0   # on a loaded machine: one CPU burner per core

``--burn N`` runs N busy-looping processes beside the server for the whole run (0: one per CPU), so the host
has next to no idle CPU: the shadow's host gate (server/shadow/host_idle.py) must then mirror at most 5% of
the sampled requests (the table's ``mirrored %`` column: mirrored / (mirrored + shed)) and keep the
saturation throughput ratio at >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from skewless.protos import skewless_traffic_pb2 as tpb
from skewless.protos import skewless_traffic_pb2_grpc as tpb_grpc

from . import report
from .loadgen import RESULTS_DIR, BenchConfig, run_bench
from .servers import EXAMPLE_MODELS, start_skewless
from .workload import build_workload, fetch_model

MODEL = "mlp"
TWIN = "mlp_twin"
CLIENTS = 64
LOAD = 0.5
VARIANTS = ("off", "shadow")
TARGET_RPS = 0.95
TARGET_P99 = 1.10


def log(msg: str) -> None:
    print(f"[shadow {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def make_repository(root: Path) -> Path:
    """mlp and its twin (same ONNX file, same config but the name)."""
    src = EXAMPLE_MODELS / MODEL
    shutil.copytree(src, root / MODEL)
    shutil.copytree(src, root / TWIN)
    cfg = root / TWIN / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace(f'name: "{MODEL}"', f'name: "{TWIN}"'))
    return root


def set_variant(admin: tpb_grpc.TrafficAdminStub, variant: str) -> None:
    challenger = TWIN if variant == "shadow" else ""
    admin.SetShadow(tpb.SetShadowRequest(model=MODEL, challenger=challenger, rate=1.0 if challenger else 0.0),
                    timeout=10)


def counters(admin: tpb_grpc.TrafficAdminStub) -> dict[str, int]:
    s = admin.GetTraffic(tpb.ModelRef(model=MODEL), timeout=10)
    out = {"mirrored": 0, "shed": 0, "errors": 0}
    for p in s.pairs:
        out["mirrored"] += p.mirrored
        out["shed"] += p.shed
        out["errors"] += p.errors
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.shadow_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="measured seconds per point (default 3; 1.5 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 0.5)")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 5; 1 with --quick)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--burn", type=int, metavar="N",
                   help="load the host with N CPU burner processes during the run (0: one per CPU)")
    p.add_argument("--out", help="output directory (default benchmarks/results/shadow-<timestamp>)")
    args = p.parse_args(argv)
    args.duration = args.duration or (1.5 if args.quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else 0.5
    args.rounds = max(1, args.rounds or (1 if args.quick else 5))
    out = Path(args.out or RESULTS_DIR / f"shadow-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    burners = start_burners(args.burn) if args.burn is not None else []
    try:
        with report.sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="shadow-report-") as tmp:
            return _run(args, out, make_repository(Path(tmp)))
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()


def start_burners(n: int) -> list[subprocess.Popen]:
    """``n`` processes (0: one per CPU) that spin on a core each until killed: a loaded machine."""
    n = n or os.cpu_count() or 1
    log(f"loading the host with {n} CPU burner process(es)")
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _point(srv, args, out: Path, key: str, wl, **load) -> dict[str, Any]:
    bc = BenchConfig(target=srv.target, model=MODEL, processes=1, duration=args.duration, warmup=args.warmup,
                     server_pid=srv.pid, plot=False, out=str(out / "runs" / key), label=f"shadow_report {key}",
                     **load)
    return run_bench(bc, wl)


def _run(args: argparse.Namespace, out: Path, repo: Path) -> int:
    t_start = time.monotonic()
    runs: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    onnx_path = repo / MODEL / "1" / "model.onnx"
    with start_skewless(repo, out / "skewless.log") as srv, grpc.insecure_channel(srv.target) as channel:
        admin = tpb_grpc.TrafficAdminStub(channel)
        wl = build_workload(fetch_model(srv.target, MODEL), rows=1, variants=16, onnx_path=str(onnx_path))
        for i in range(args.rounds):
            order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
            off_rps = None
            for phase in ("saturation", "half_load"):
                if phase == "half_load":
                    rate = LOAD * off_rps
                for v in order:
                    set_variant(admin, v)
                    key = f"{v}_{phase}_r{i}"
                    log(f"round {i + 1}/{args.rounds}: {phase}, {v} ({time.monotonic() - t_start:.0f} s elapsed)")
                    before = counters(admin)
                    load = {"concurrency": [CLIENTS]} if phase == "saturation" else {"rates": [f"{rate:.3f}"]}
                    res = _point(srv, args, out, key, wl, **load)
                    after = counters(admin)
                    runs[key] = res
                    pt = res["points"][0]
                    row = {"round": i, "phase": phase, "variant": v, "rps": pt["throughput_rps"],
                           "p50_ms": pt["latency_ms"]["p50"], "p99_ms": pt["latency_ms"]["p99"],
                           "errors": pt["error_count"] + pt["checks"]["failed"],
                           "cpu_us_per_request": (pt.get("server_cpu") or {}).get("us_per_request"),
                           "offered_rps": pt.get("offered_rate"),
                           **{f"shadow_{k}": after[k] - before[k] for k in after}}
                    rows.append(row)
                    if phase == "saturation" and v == "off":
                        off_rps = row["rps"]
                if phase == "saturation" and off_rps is None:  # pragma: no cover - order always has off
                    raise RuntimeError("no off point")
        set_variant(admin, "off")
    wall = time.monotonic() - t_start
    summary = summarise(rows, args, wall)
    table = format_table(summary)
    result = {"tool": "skewless shadow_report", "format": 1, "summary": summary, "runs": runs, "wall_s": wall,
              "config": {"duration": args.duration, "warmup": args.warmup, "rounds": args.rounds, "clients": CLIENTS,
                         "load": LOAD, "burners": args.burn, "argv": sys.argv}}
    (out / "shadow.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "shadow.txt").write_text(table + "\n")
    plot(summary, out / "shadow.png")
    print(table)
    print(f"wrote {out / 'shadow.json'}, {out / 'shadow.png'}, {out / 'shadow.txt'}")
    return 1 if any(r["errors"] for r in rows) else 0


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace, wall: float) -> dict[str, Any]:
    def get(i: int, phase: str, v: str) -> dict[str, Any]:
        return next(r for r in rows if r["round"] == i and r["phase"] == phase and r["variant"] == v)

    rounds = sorted({r["round"] for r in rows})
    rps_ratios = [get(i, "saturation", "shadow")["rps"] / get(i, "saturation", "off")["rps"] for i in rounds]
    p99_ratios = [get(i, "half_load", "shadow")["p99_ms"] / get(i, "half_load", "off")["p99_ms"] for i in rounds]
    rps_ratio, p99_ratio = statistics.median(rps_ratios), statistics.median(p99_ratios)
    loaded = f", host loaded by CPU burners ({args.burn or os.cpu_count()})" if args.burn is not None else ""
    return {
        "title": (f"Shadow cost: example MLP mirrored 100% to an identical twin, one run "
                  f"{datetime.now():%Y-%m-%d %H:%M} on {platform.node()} ({os.cpu_count()} CPUs){loaded}"),
        "rows": rows, "rps_ratios": rps_ratios, "p99_ratios": p99_ratios,
        "rps_ratio": rps_ratio, "p99_ratio": p99_ratio,
        "verdict": {"throughput": rps_ratio >= TARGET_RPS, "p99": p99_ratio <= TARGET_P99},
        "notes": [f"saturation: closed loop, {CLIENTS} clients; half load: open loop (Poisson) at {LOAD:.0%} of the "
                  "same round's no-shadow throughput; 1 row per request, unary gRPC, one client process on the same "
                  f"machine; {args.duration:g} s measured + {args.warmup:g} s warm-up per point, {args.rounds} "
                  f"round(s) alternating the order; ratios are medians over rounds; run took {wall:.0f} s.",
                  "mirrored / shed: the shadow's own counters over the point (warm-up included): at saturation the "
                  "challenger should shed (it only runs while no primary request is in flight)."]}


def format_table(s: dict[str, Any]) -> str:
    lines = [s["title"], "",
             f"{'round':>5} {'phase':<11} {'variant':<7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'srv us/req':>10} "
             f"{'mirrored':>9} {'shed':>8} {'mirrored %':>10} {'errors':>6}"]
    for r in s["rows"]:
        cpu = r["cpu_us_per_request"]
        sampled = r["shadow_mirrored"] + r["shadow_shed"]
        share = f"{r['shadow_mirrored'] / sampled:.1%}" if sampled else "-"
        lines.append(f"{r['round']:>5} {r['phase']:<11} {r['variant']:<7} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} "
                     f"{r['p99_ms']:>8.2f} {cpu if cpu is None else f'{cpu:.0f}':>10} {r['shadow_mirrored']:>9} "
                     f"{r['shadow_shed']:>8} {share:>10} {r['errors']:>6}")
    v = s["verdict"]
    lines += ["",
              f"throughput at saturation, shadow / off: {s['rps_ratio']:.3f} (rounds: "
              f"{', '.join(f'{x:.3f}' for x in s['rps_ratios'])}; target >= {TARGET_RPS}: "
              f"{'met' if v['throughput'] else 'NOT met'})",
              f"p99 at {LOAD:.0%} load, shadow / off: {s['p99_ratio']:.3f} (rounds: "
              f"{', '.join(f'{x:.3f}' for x in s['p99_ratios'])}; target <= {TARGET_P99}: "
              f"{'met' if v['p99'] else 'NOT met'})", ""]
    lines += [f"note: {n}" for n in s["notes"]]
    return "\n".join(lines)


def plot(s: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, phase, key, title in ((axes[0], "saturation", "rps", f"throughput at saturation ({CLIENTS} clients)"),
                                  (axes[1], "half_load", "p99_ms", f"p99 latency at {LOAD:.0%} load (ms)")):
        rounds = sorted({r["round"] for r in s["rows"]})
        for j, v in enumerate(VARIANTS):
            vals = [next(r[key] for r in s["rows"] if r["round"] == i and r["phase"] == phase and r["variant"] == v)
                    for i in rounds]
            ax.bar([i + (j - 0.5) * 0.38 for i in rounds], vals, 0.38, label=v)
        ax.set_xticks(rounds, [f"round {i + 1}" for i in rounds])
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"shadow / off: throughput {s['rps_ratio']:.3f}x (target >= {TARGET_RPS}), p99 "
                 f"{s['p99_ratio']:.3f}x (target <= {TARGET_P99})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
