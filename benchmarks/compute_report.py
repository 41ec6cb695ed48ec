"""Compute-bound figures (issue 17), from one run on one machine.

1. The heavy MLP 256->1024->1024->10 (the batching report's, 64 rows/request, 8 clients) through skewless with
   ``--workers 1``: the server's CPU per request minus what onnxruntime alone spends on the same rows at the
   batch sizes the server formed (measured in-process here), divided by the echo server's CPU per request for
   the same payload (64 x 256 FP32 in, 64 x 10 out): the server's own cost over the bare transport's
   (target <= 1.3). Rows/s as a fraction of in-process onnxruntime, and the ceiling this machine allows once
   the client's own CPU per request is paid on the same cores.
2. ``--workers 1`` and ``--workers 2`` (``--workers`` lists more): the example MLP at 64 clients (req/s, CPU
   per request) and the heavy MLP's rows/s. Server CPU is the whole process tree: the parent and every worker.
3. The other design the issue names, one front-end process handing requests to onnxruntime processes through
   shared memory, estimated by a prototype of its hand-off alone: a 64 KB request and a 2.5 KB reply through
   a shared-memory block, with a pipe byte each way to wake the other side (CPU of both processes per
   round trip). That cost comes on top of a single front-end's transport, which stays one Python process.
4. The feature stage: the ``churn`` example (raw columns, strings included, turned into its ``dense`` and
   ``ids`` tensors by the feature kernel in the server) against the same ONNX model served without
   ``features.json`` (clients send the tensors), 64 rows × 8 clients each: server CPU per request, and per
   model execution the input stage (ModelStatistics' batch compute_input: request merge, plus the kernel for
   the feature model) next to the kernel alone in-process on the same 64 rows.
5. The batching report's small-model figures, by running it (``benchmarks/batching_report.py``) in the same
   run, into ``<out>/batching``.

Writes compute.json, compute.png and compute.txt into --out and prints the table.

    python -m skewless.benchmarks.compute_report            # ~8 s per point, about 10 minutes
    python -m skewless.benchmarks.compute_report --quick    # ~1.5 s per point
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import batching_report as br
from . import report
from .loadgen import RESULTS_DIR, BenchConfig, run_bench
from .servers import EXAMPLE_MODELS, start_echo, start_skewless

OVERHEAD_TARGET = 1.3
FEATURE_MODEL = "churn"
FEATURE_ROWS = 64
HANDOFF_REQUEST_BYTES = br.HEAVY_ROWS * br.HEAVY_LAYERS[0] * 4
HANDOFF_REPLY_BYTES = br.HEAVY_ROWS * br.HEAVY_LAYERS[-1] * 4


def log(msg: str) -> None:
    print(f"[compute {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# -- the shared-memory hand-off prototype ------------------------------------------------------------------
def _handoff_peer(name: str, wake: Any, done: Any, n: int) -> None:
    """The onnxruntime side: wait for a request, copy it out (into a batch buffer), write a reply."""
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name)
    batch = np.empty(HANDOFF_REQUEST_BYTES, np.uint8)
    reply = np.full(HANDOFF_REPLY_BYTES, 7, np.uint8)
    view = np.ndarray(HANDOFF_REQUEST_BYTES + HANDOFF_REPLY_BYTES, np.uint8, shm.buf)
    wake.recv_bytes()  # the first round trip starts the clock
    cpu0 = time.process_time()
    for _ in range(n):
        wake.recv_bytes()
        batch[:] = view[:HANDOFF_REQUEST_BYTES]
        view[HANDOFF_REQUEST_BYTES:] = reply
        done.send_bytes(b"\1")
    done.send_bytes(repr(time.process_time() - cpu0).encode())  # this side's CPU over the n round trips
    del view
    shm.close()


def handoff_cost(n: int = 5000) -> dict[str, Any]:
    """CPU µs per request of a front-end -> onnxruntime-process round trip through shared memory (both sides),
    and its wall µs when nothing else runs."""
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=HANDOFF_REQUEST_BYTES + HANDOFF_REPLY_BYTES)
    try:
        ctx = multiprocessing.get_context("spawn")
        wake_r, wake_w = ctx.Pipe(duplex=False)
        done_r, done_w = ctx.Pipe(duplex=False)
        peer = ctx.Process(target=_handoff_peer,
                                                             args=(shm.name, wake_r, done_w, n))
        peer.start()
        request = np.random.default_rng(0).integers(0, 255, HANDOFF_REQUEST_BYTES, np.uint8)
        out = np.empty(HANDOFF_REPLY_BYTES, np.uint8)
        view = np.ndarray(HANDOFF_REQUEST_BYTES + HANDOFF_REPLY_BYTES, np.uint8, shm.buf)
        wake_w.send_bytes(b"\0")
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            view[:HANDOFF_REQUEST_BYTES] = request
            wake_w.send_bytes(b"\1")
            done_r.recv_bytes()
            out[:] = view[HANDOFF_REQUEST_BYTES:]
        wall, front = time.perf_counter() - t0, time.process_time() - cpu0
        back = float(done_r.recv_bytes())
        peer.join(30)
        del view
        for conn in (wake_r, wake_w, done_r, done_w):
            conn.close()
    finally:
        shm.close()
        shm.unlink()
    return {"round_trips": n, "request_bytes": HANDOFF_REQUEST_BYTES, "reply_bytes": HANDOFF_REPLY_BYTES,
            "front_us": front * 1e6 / n, "peer_us": back * 1e6 / n, "cpu_us": (front + back) * 1e6 / n,
            "wall_us": wall * 1e6 / n}


# -- figures -----------------------------------------------------------------------------------------------
# -- the feature stage ------------------------------------------------------------------------------------
def feature_repos(tmp: Path) -> tuple[Path, Path, Path, Path, dict[str, Any]]:
    """The churn example as served (raw columns through features.json) and the same ONNX model without it
    (inputs auto-completed: the dense and ids tensors), with one 64-row request's inputs for each (.npz),
    and the kernel alone on those rows in-process."""
    import shutil

    from skewless.examples.generate import churn_dataset
    from skewless.native.spec import FeatureSpec

    src = EXAMPLE_MODELS / FEATURE_MODEL
    feat_repo, plain_repo = tmp / "features", tmp / "plain"
    shutil.copytree(src, feat_repo / FEATURE_MODEL)
    (plain_repo / FEATURE_MODEL / "1").mkdir(parents=True)
    shutil.copy(src / "1" / "model.onnx", plain_repo / FEATURE_MODEL / "1" / "model.onnx")
    (plain_repo / FEATURE_MODEL / "config.pbtxt").write_text(
        f'name: "{FEATURE_MODEL}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {FEATURE_ROWS}\n'
        "dynamic_batching { max_queue_delay_microseconds: 0 }\n")
    spec = FeatureSpec.load(src / "1" / "features.json")
    data = {k: v for k, v in churn_dataset(FEATURE_ROWS, seed=1).items() if k in {t.name for t in spec.inputs}}
    raw = {k: (v.astype(np.bytes_) if v.dtype == object else v).reshape(-1, 1) for k, v in data.items()}
    raw_npz, plain_npz = tmp / "raw.npz", tmp / "plain.npz"
    np.savez(raw_npz, **raw)
    np.savez(plain_npz, **spec.transform(data))
    calls, t0 = 0, time.perf_counter()
    cpu0 = time.process_time()
    while time.perf_counter() - t0 < 1.0 or calls < 200:
        spec.transform(data)
        calls += 1
    kernel = {"rows": FEATURE_ROWS, "us_per_batch": (time.perf_counter() - t0) / calls * 1e6,
              "cpu_us_per_batch": (time.process_time() - cpu0) / calls * 1e6, "calls": calls}
    return feat_repo, plain_repo, raw_npz, plain_npz, kernel


def feature_figures(runs: dict[str, Any], kernel: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"kernel_in_process": kernel}
    for key in ("features", "plain"):
        pt = br.find_point(runs.get(f"churn_{key}"), "closed", br.HEAVY_CLIENTS)
        st = (pt or {}).get("server_stats") or {}
        out[key] = {**br.row(f"churn, {key}", pt),
                    **{k: st.get(k) for k in ("batch_input_us_mean", "batch_infer_us_mean", "batch_output_us_mean")}}
    f, p = out["features"], out["plain"]
    out["added_cpu_us_per_request"] = (f["cpu_us_per_request"] - p["cpu_us_per_request"]
                                       if f.get("cpu_us_per_request") and p.get("cpu_us_per_request") else None)
    out["added_input_us_per_batch"] = (f["batch_input_us_mean"] - p["batch_input_us_mean"]
                                       if f.get("batch_input_us_mean") is not None
                                       and p.get("batch_input_us_mean") is not None else None)
    return out


def inprocess_cpu_us_per_request(inproc: dict[str, Any]) -> float | None:
    """onnxruntime's CPU for one 64-row request, at the mix of batch sizes the server formed (rows-weighted)."""
    rows = cpu = 0.0
    for size, s in inproc["sizes"].items():
        n_rows = int(size) * s["batches_formed"]
        cpu += s["batches_formed"] * s["ms_per_batch"] * 1e3 * s["cores"]
        rows += n_rows
    return cpu / rows * br.HEAVY_ROWS if rows else None


def summarise(runs: dict[str, Any], inproc: dict[str, Any], handoff: dict[str, Any], workers: list[int],
              batching: dict[str, Any] | None, meta: dict[str, Any],
              features: dict[str, Any] | None = None) -> dict[str, Any]:
    echo = br.row("echo server, heavy payload", br.find_point(runs["echo_heavy"], "closed", br.HEAVY_CLIENTS))
    per_workers = {}
    for w in workers:
        per_workers[str(w)] = {
            "heavy": br.row(f"skewless --workers {w}, heavy", br.find_point(runs[f"heavy_w{w}"], "closed",
                                                                           br.HEAVY_CLIENTS)),
            "mlp": br.row(f"skewless --workers {w}, MLP", br.find_point(runs[f"mlp_w{w}"], "closed", br.CLIENTS))}
    one = per_workers[str(workers[0])]["heavy"]
    ort_us = inprocess_cpu_us_per_request(inproc)
    server_us = one.get("cpu_us_per_request")
    own_us = server_us - ort_us if server_us is not None and ort_us is not None else None
    overhead = br.ratio(own_us, echo.get("cpu_us_per_request"))
    cpus = os.cpu_count() or 1
    client_us = br.ratio((one.get("client_cores") or 0) * 1e6, one.get("rps"))
    ceiling = None
    if client_us and ort_us:  # every core busy with only the client's work and onnxruntime's, none of ours
        ceiling = min(inproc["rows_per_s"], cpus * 1e6 / (client_us + ort_us) * br.HEAVY_ROWS)
    heavy = {"echo": echo, "inprocess_rows_per_s": inproc["rows_per_s"], "ort_cpu_us_per_request": ort_us,
             "server_cpu_us_per_request": server_us, "server_own_us_per_request": own_us,
             "overhead_vs_echo": overhead, "client_cpu_us_per_request": client_us,
             "fraction_of_inprocess": br.ratio(one.get("rows_per_s"), inproc["rows_per_s"]),
             "ceiling_rows_per_s": ceiling, "ceiling_fraction_of_inprocess": br.ratio(ceiling, inproc["rows_per_s"]),
             "fraction_of_ceiling": br.ratio(one.get("rows_per_s"), ceiling)}
    first, last = per_workers[str(workers[0])], per_workers[str(workers[-1])]
    scale = {"mlp_rps": br.ratio(last["mlp"].get("rps"), first["mlp"].get("rps")),
             "heavy_rows_per_s": br.ratio(last["heavy"].get("rows_per_s"), first["heavy"].get("rows_per_s"))}
    frontend = {"handoff": handoff,
                "estimated_heavy_us_per_request": (echo.get("cpu_us_per_request") or 0) + (ort_us or 0)
                + handoff["cpu_us"],
                "estimated_mlp_us_per_request": (first["mlp"].get("cpu_us_per_request") or 0) + handoff["cpu_us"]}
    targets = [br.target("heavy: (server CPU/req - onnxruntime CPU/req) ÷ echo CPU/req, --workers 1", overhead,
                         "<=", OVERHEAD_TARGET)]
    if batching:
        targets += [dict(t, figure=f"batching report: {t['figure']}") for t in batching["summary"]["targets"]]
    return {"title": meta["title"], "heavy": heavy, "workers": per_workers, "scale": scale,
            "frontend_design": frontend, "features": features, "targets": targets, "notes": meta["notes"]}


def _f(v: Any, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def format_table(s: dict[str, Any]) -> str:
    h = s["heavy"]
    out = [s["title"], "",
           f"heavy MLP {'->'.join(map(str, br.HEAVY_LAYERS))}, {br.HEAVY_ROWS} rows × {br.HEAVY_CLIENTS} clients",
           f"  server CPU/request (--workers 1)      {_f(h['server_cpu_us_per_request'], '.0f')} µs",
           f"  onnxruntime in-process, same rows      {_f(h['ort_cpu_us_per_request'], '.0f')} µs",
           f"  server's own                           {_f(h['server_own_us_per_request'], '.0f')} µs",
           f"  echo server, same payload              {_f(h['echo'].get('cpu_us_per_request'), '.0f')} µs",
           f"  own ÷ echo                             {_f(h['overhead_vs_echo'])} (target <= {OVERHEAD_TARGET})",
           f"  rows/s ÷ in-process onnxruntime        {_f(h['fraction_of_inprocess'])} "
           f"(in-process {_f(h['inprocess_rows_per_s'], '.0f')} rows/s)",
           f"  ceiling with the client's CPU ({_f(h['client_cpu_us_per_request'], '.0f')} µs/req) on the same cores: "
           f"{_f(h['ceiling_rows_per_s'], '.0f')} rows/s = {_f(h['ceiling_fraction_of_inprocess'])} of in-process; "
           f"we reach {_f(h['fraction_of_ceiling'])} of it", "",
           f"{'':<22}{'MLP req/s':>10}{'µs/req':>8}{'p99 ms':>8}{'heavy rows/s':>14}{'µs/req':>8}{'batch':>7}"]
    for w, r in s["workers"].items():
        m, hv = r["mlp"], r["heavy"]
        out.append(f"{'--workers ' + w:<22}{_f(m.get('rps'), '.0f'):>10}{_f(m.get('cpu_us_per_request'), '.0f'):>8}"
                   f"{_f(m.get('p99_ms')):>8}{_f(hv.get('rows_per_s'), '.0f'):>14}"
                   f"{_f(hv.get('cpu_us_per_request'), '.0f'):>8}{_f(hv.get('mean_batch_size'), '.0f'):>7}")
    fe = s["frontend_design"]
    out += [f"  last ÷ first: MLP req/s {_f(s['scale']['mlp_rps'])}, heavy rows/s {_f(s['scale']['heavy_rows_per_s'])}",
            "", "front-end + onnxruntime processes over shared memory (prototype of the hand-off only):",
            f"  hand-off CPU {_f(fe['handoff']['cpu_us'], '.1f')} µs/request (front {_f(fe['handoff']['front_us'], '.1f')}, "
            f"onnxruntime side {_f(fe['handoff']['peer_us'], '.1f')}), round trip "
            f"{_f(fe['handoff']['wall_us'], '.1f')} µs",
            f"  estimated CPU/request: heavy {_f(fe['estimated_heavy_us_per_request'], '.0f')} µs (echo + onnxruntime "
            f"+ hand-off), MLP {_f(fe['estimated_mlp_us_per_request'], '.0f')} µs; its transport stays one process",
            ""]
    ft = s.get("features")
    if ft:
        k = ft["kernel_in_process"]
        out += [f"feature stage: {FEATURE_MODEL}, {FEATURE_ROWS} rows × {br.HEAVY_CLIENTS} clients (one request per "
                "model execution)",
                f"{'':<34}{'req/s':>8}{'µs/req':>8}{'input µs/batch':>16}{'infer':>8}{'output':>8}"]
        for key, label in (("features", "raw columns + features.json"), ("plain", "dense/ids tensors")):
            r = ft[key]
            out.append(f"  {label:<32}{_f(r.get('rps'), '.0f'):>8}{_f(r.get('cpu_us_per_request'), '.0f'):>8}"
                       f"{_f(r.get('batch_input_us_mean'), '.1f'):>16}{_f(r.get('batch_infer_us_mean'), '.1f'):>8}"
                       f"{_f(r.get('batch_output_us_mean'), '.1f'):>8}")
        out += [f"  the feature stage adds {_f(ft['added_input_us_per_batch'], '.1f')} µs of input stage per "
                f"{FEATURE_ROWS}-row batch (the kernel alone in-process: {_f(k['us_per_batch'], '.1f')} µs) and "
                f"{_f(ft['added_cpu_us_per_request'], '.0f')} µs of server CPU per request (raw columns are larger "
                "on the wire than the tensors)", ""]
    out += ["targets"]
    for t in s["targets"]:
        mark = {True: "met", False: "MISSED", None: "—"}[t["met"]]
        out.append(f"  {t['figure']:<78} {_f(t['value'])} {t['op']} {t['bound']:g}{t['unit']}  {mark}")
    out += ["", *s["notes"]]
    return "\n".join(out)


def plot(s: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ft = s.get("features")
    fig, axes = plt.subplots(1, 4 if ft else 3, figsize=(18 if ft else 14, 4.2))
    h = s["heavy"]
    names = ["server", "onnxruntime", "own", "echo"]
    vals = [h["server_cpu_us_per_request"], h["ort_cpu_us_per_request"], h["server_own_us_per_request"],
            h["echo"].get("cpu_us_per_request")]
    axes[0].bar(names, [v or 0 for v in vals], color=["C0", "C2", "C1", "C7"])
    axes[0].set_title(f"heavy MLP CPU µs/request (own ÷ echo {_f(h['overhead_vs_echo'])})", fontsize=9)
    ws = list(s["workers"])
    labels = [*(f"w{w}" for w in ws), "in-process", "ceiling"]
    rows = [*(s["workers"][w]["heavy"].get("rows_per_s") or 0 for w in ws), h["inprocess_rows_per_s"] or 0,
            h["ceiling_rows_per_s"] or 0]
    axes[1].bar(labels, rows, color=[*["C0"] * len(ws), "C2", "C7"])
    axes[1].set_title("heavy MLP rows/s", fontsize=9)
    axes[2].bar([f"w{w}" for w in ws], [s["workers"][w]["mlp"].get("rps") or 0 for w in ws], color="C0")
    axes[2].set_title(f"example MLP req/s, {br.CLIENTS} clients", fontsize=9)
    if ft:
        bars = {"input stage\nfeatures": ft["features"].get("batch_input_us_mean"),
                "input stage\ntensors": ft["plain"].get("batch_input_us_mean"),
                "kernel alone\nin-process": ft["kernel_in_process"]["us_per_batch"],
                "onnxruntime\n(infer)": ft["features"].get("batch_infer_us_mean")}
        axes[3].bar(list(bars), [v or 0 for v in bars.values()], color=["C1", "C7", "C2", "C0"])
        axes[3].set_title(f"{FEATURE_MODEL}: µs per {FEATURE_ROWS}-row batch", fontsize=9)
        axes[3].tick_params(axis="x", labelsize=8)
    fig.suptitle(s["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the run -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.compute_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="measured seconds per point (default 8; 1.5 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point (default 2; 0.5 with --quick)")
    p.add_argument("--quick", action="store_true", help="short points, for a smoke run")
    p.add_argument("--workers", type=br._ints, default=[1, 2], metavar="N[,N...]",
                   help="--workers values to compare (default 1,2; the first is the heavy model's reference)")
    p.add_argument("--rounds", type=int, default=5, help="the batching report's alternating rounds")
    p.add_argument("--skip-batching", action="store_true", help="leave out the batching report's figures")
    p.add_argument("--handoff-trips", type=int, default=5000, help="round trips of the hand-off prototype")
    p.add_argument("--out", help="output directory (default benchmarks/results/compute-<timestamp>)")
    args = p.parse_args(argv)
    duration = args.duration or (1.5 if args.quick else 8.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    out = Path(args.out or RESULTS_DIR / f"compute-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    with report.sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="skewless-compute-") as tmp:
        return _run(args, duration, warmup, out, Path(tmp), t_start)


def _run(args: argparse.Namespace, duration: float, warmup: float, out: Path, tmp: Path, t_start: float) -> int:
    src = EXAMPLE_MODELS / br.MODEL
    mlp_onnx = src / "1" / "model.onnx"
    mlp_repo = br.make_repository(tmp / "mlp", br.MODEL, mlp_onnx, br.mlp_config(src, "on"))
    heavy_onnx = br.build_heavy_onnx(tmp / "heavy.onnx")
    heavy_cfg = br.heavy_config([256, 512], 2000)
    heavy_repo = br.make_repository(tmp / "heavy", br.HEAVY, heavy_onnx, heavy_cfg)
    runs: dict[str, Any] = {}

    def bench(key: str, target: str, pid: int, model: str, clients: int, rows: int, onnx: Path | None) -> None:
        log(f"{key}: {warmup:g}+{duration:g} s ({time.monotonic() - t_start:.0f} s elapsed)")
        cfg = BenchConfig(target=target, model=model, concurrency=[clients], duration=duration, warmup=warmup,
                          server_pid=pid, rows=rows, check_against_onnx=str(onnx) if onnx else None,
                          out=str(out / key), plot=False, label=f"compute {key}")
        runs[key] = run_bench(cfg)

    shape = ["--input-width", str(br.HEAVY_LAYERS[0]), "--reply-rows", str(br.HEAVY_ROWS),
             "--reply-width", str(br.HEAVY_LAYERS[-1])]
    with start_echo(out / "echo_heavy.log", br.HEAVY, shape) as echo:
        bench("echo_heavy", echo.target, echo.pid, br.HEAVY, br.HEAVY_CLIENTS, br.HEAVY_ROWS, None)
    for w in args.workers:
        extra = ["--workers", str(w)]
        with start_skewless(heavy_repo, out / f"heavy_w{w}.log", extra) as srv:
            bench(f"heavy_w{w}", srv.target, srv.pid, br.HEAVY, br.HEAVY_CLIENTS, br.HEAVY_ROWS, heavy_onnx)
        with start_skewless(mlp_repo, out / f"mlp_w{w}.log", extra) as srv:
            bench(f"mlp_w{w}", srv.target, srv.pid, br.MODEL, br.CLIENTS, 1, mlp_onnx)
    feat_repo, plain_repo, raw_npz, plain_npz, kernel = feature_repos(tmp)
    for key, repo, npz, onnx in (("features", feat_repo, raw_npz, None),
                                 ("plain", plain_repo, plain_npz, plain_repo / FEATURE_MODEL / "1" / "model.onnx")):
        with start_skewless(repo, out / f"churn_{key}.log", ["--workers", str(args.workers[0])]) as srv:
            log(f"churn_{key}: {warmup:g}+{duration:g} s ({time.monotonic() - t_start:.0f} s elapsed)")
            cfg = BenchConfig(target=srv.target, model=FEATURE_MODEL, concurrency=[br.HEAVY_CLIENTS],
                              duration=duration, warmup=warmup, server_pid=srv.pid, input_files=[str(npz)],
                              check_against_onnx=str(onnx) if onnx else None, out=str(out / f"churn_{key}"),
                              plot=False, label=f"compute churn_{key}")
            runs[f"churn_{key}"] = run_bench(cfg)
    features = feature_figures(runs, kernel)
    hp = runs[f"heavy_w{args.workers[0]}"]["points"][0]
    formed = {int(k): v for k, v in ((hp.get("server_stats") or {}).get("batch_sizes") or {}).items()}
    sizes = br.chosen_sizes(formed or {br.HEAVY_ROWS: 1})
    log(f"onnxruntime in-process at the batch sizes formed {sorted(sizes)}")
    inproc = br.inprocess_rows_per_s(heavy_onnx, heavy_cfg, sizes, min(duration, 6.0))
    log(f"shared-memory hand-off prototype, {args.handoff_trips} round trips")
    handoff = handoff_cost(args.handoff_trips)

    batching = None
    if not args.skip_batching:
        log("the batching report's figures (benchmarks/batching_report.py)")
        rc = br.main(["--duration", str(duration), "--warmup", str(warmup), "--rounds", str(args.rounds),
                      "--out", str(out / "batching"), *(["--quick"] if args.quick else [])])
        batching = json.loads((out / "batching" / "batching.json").read_text())
        batching["rc"] = rc

    wall = time.monotonic() - t_start
    cpus = os.cpu_count()
    notes = [
        "µs/req: the server process tree's user+sys CPU (the --workers parent and every worker) ÷ requests "
        "answered; onnxruntime in-process: one caller, the server's session options, at the batch sizes the "
        "--workers 1 server formed (rows-weighted).",
        "ceiling: rows/s if every core ran only the client's measured CPU per request and onnxruntime's (capped by "
        "in-process rows/s); the client shares the server's cores.",
        "front-end design: not built; its hand-off measured by a prototype (shared memory + a pipe byte each way, "
        "copies in and out), its CPU/request estimated as echo + onnxruntime + hand-off.",
        f"client: 1 process on the same machine ({cpus} CPUs, shared with other work); {duration:g} s measured + "
        f"{warmup:g} s warm-up per point; run took {wall:.0f} s.",
    ]
    meta = {"title": f"compute: one run {datetime.now():%Y-%m-%d %H:%M} on {platform.node()} ({cpus} CPUs)",
            "notes": notes}
    summary = summarise(runs, inproc, handoff, args.workers, batching, meta, features)
    table = format_table(summary)
    if batching is not None:
        table += "\n\n" + (out / "batching" / "batching.txt").read_text()
    result = {"tool": "skewless compute_report", "format": 1, "summary": summary, "runs": runs,
              "inprocess_heavy": inproc, "configs": {"heavy": heavy_cfg}, "wall_s": wall,
              "batching_summary": batching["summary"] if batching else None,
              "config": {"duration": duration, "warmup": warmup, "quick": args.quick, "workers": args.workers,
                         "argv": sys.argv},
              "machine": {"cpus": cpus, "platform": platform.platform(), "node": platform.node()}}
    (out / "compute.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "compute.txt").write_text(table + "\n")
    plot(summary, out / "compute.png")
    print(table)
    print(f"wrote {out / 'compute.json'}, {out / 'compute.png'}, {out / 'compute.txt'}")
    bad = any(br.failed(pt) for res in runs.values() for pt in res["points"]) or (batching or {}).get("rc", 0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
