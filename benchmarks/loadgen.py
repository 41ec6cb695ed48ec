"""Load generator for any KServe v2 gRPC inference server (``skewless bench``).

Closed loop (a concurrency sweep) or open loop (Poisson arrivals at a target rate, latency counted from the
scheduled send time so that queueing shows up instead of slowing the client down), unary or over
ModelStreamInfer, from several client processes. Besides client-side latency and throughput it reads what
only the server knows: mean batch size from ModelStatistics deltas, and, given ``--server-pid``, the server's
CPU time per request, the steadiest figure on a shared machine.

    python -m skewless.benchmarks.loadgen -m mlp -u 127.0.0.1:8001 --concurrency 1,8,64 --processes 2
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import queue
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from skewless.protos import grpc_service_pb2 as pb

from . import report
from .client import PointResult, PointSpec, WorkerOptions, worker_main
from .workload import CHANNEL_OPTIONS, SERVICE, Workload, build_workload, fetch_model

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class BenchConfig:
    target: str = "127.0.0.1:8001"
    model: str = "mlp"
    model_version: str = ""
    concurrency: list[int] = field(default_factory=list)
    rates: list[str] = field(default_factory=list)  # requests/s, or "80%" of the best closed-loop throughput
    stream: bool = False
    processes: int = 1
    connections: int = 1
    streams: int = 1
    duration: float = 10.0
    warmup: float = 2.0
    rows: int = 1
    variants: int = 16
    input_files: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    check_every: int = 100
    check_against_onnx: str | None = None
    server_pid: int | None = None
    timeout: float = 30.0
    drain_timeout: float = 10.0
    max_outstanding: int = 10_000
    out: str | None = None
    plot: bool = True
    progress: bool | None = None  # None: only when stderr is a terminal
    uvloop: bool = True
    seed: int = 0
    label: str = ""


# -- server-side probes ------------------------------------------------------------------------------------
def process_tree_cpu(pid: int) -> float:
    """user+sys seconds of a process and its live descendants (plus children it has already reaped)."""
    import psutil

    root = psutil.Process(pid)
    t = root.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in root.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.NoSuchProcess:
            pass
    return total


class ServerProbe:
    """ModelStatistics and CPU snapshots, taken by the parent at the window's edges."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        self.channel = grpc.insecure_channel(cfg.target, options=CHANNEL_OPTIONS)
        self._stats = self.channel.unary_unary(
            SERVICE + "ModelStatistics", request_serializer=pb.ModelStatisticsRequest.SerializeToString,
            response_deserializer=pb.ModelStatisticsResponse.FromString)
        self.stats_supported = True
        self.stats_error: str | None = None

    def server_metadata(self) -> dict[str, Any]:
        call = self.channel.unary_unary(SERVICE + "ServerMetadata",
                                        request_serializer=pb.ServerMetadataRequest.SerializeToString,
                                        response_deserializer=pb.ServerMetadataResponse.FromString)
        try:
            md = call(pb.ServerMetadataRequest(), timeout=5)
        except grpc.RpcError as exc:
            return {"server": "unknown", "server_metadata_error": exc.code().name}
        return {"server": md.name, "server_version": md.version, "extensions": list(md.extensions)}

    def stats(self) -> dict[str, Any] | None:
        if not self.stats_supported:
            return None
        try:
            resp = self._stats(pb.ModelStatisticsRequest(name=self.cfg.model, version=self.cfg.model_version),
                               timeout=5)
        except grpc.RpcError as exc:
            self.stats_supported = False
            self.stats_error = f"{exc.code().name}: {exc.details()}"
            return None
        s = {"inference_count": 0, "execution_count": 0, "success": 0, "fail": 0,
             "queue_ns": 0, "queue_count": 0, "compute_infer_ns": 0, "compute_infer_count": 0,
             # per model execution (batch_stats), not per request: the input stage (merge, feature kernel),
             # onnxruntime, and the output split
             "batch_input_ns": 0, "batch_infer_ns": 0, "batch_output_ns": 0, "batches": 0}
        by_size: dict[int, int] = {}  # rows per execution -> executions (Triton's batch_stats)
        for m in resp.model_stats:
            for b in m.batch_stats:
                by_size[int(b.batch_size)] = by_size.get(int(b.batch_size), 0) + b.compute_infer.count
                s["batch_input_ns"] += b.compute_input.ns
                s["batch_infer_ns"] += b.compute_infer.ns
                s["batch_output_ns"] += b.compute_output.ns
                s["batches"] += b.compute_infer.count
            st = m.inference_stats
            s["inference_count"] += m.inference_count
            s["execution_count"] += m.execution_count
            s["success"] += st.success.count
            s["fail"] += st.fail.count
            s["queue_ns"] += st.queue.ns
            s["queue_count"] += st.queue.count
            s["compute_infer_ns"] += st.compute_infer.ns
            s["compute_infer_count"] += st.compute_infer.count
        return {**s, "by_batch_size": by_size}

    def cpu(self) -> float | None:
        return process_tree_cpu(self.cfg.server_pid) if self.cfg.server_pid else None

    def close(self) -> None:
        self.channel.close()


def stats_delta(a: dict[str, Any] | None, b: dict[str, Any] | None, rows: int) -> dict[str, Any] | None:
    if a is None or b is None:
        return None
    d = {k: b[k] - a[k] for k in a if k != "by_batch_size"}
    sizes_a, sizes_b = a.get("by_batch_size", {}), b.get("by_batch_size", {})
    by_size = {str(n): c - sizes_a.get(n, 0) for n, c in sorted(sizes_b.items()) if c > sizes_a.get(n, 0)}
    execs = d["execution_count"]
    # Rows per model execution; divided by rows/request it is the requests merged per execution. From
    # batch_stats where the server keeps them: its rows and executions are both counted as each batch runs,
    # while inference_count is counted as requests complete and so lags the executions at a window's edges by
    # the requests then in flight (a mean below 1 at 64 clients when nearly every batch is one request).
    batches = sum(by_size.values())
    if batches:
        mean = sum(int(n) * c for n, c in by_size.items()) / batches
    else:
        mean = d["inference_count"] / execs if execs else None
    return {
        "inference_count": d["inference_count"], "execution_count": execs,
        "success": d["success"], "fail": d["fail"],
        "mean_batch_size": mean,
        "mean_requests_per_batch": mean / rows if mean is not None else None,
        "queue_us_mean": d["queue_ns"] / d["queue_count"] / 1e3 if d["queue_count"] else None,
        "compute_infer_us_mean": d["compute_infer_ns"] / d["compute_infer_count"] / 1e3
        if d["compute_infer_count"] else None,
        # Per model execution: the input stage (request merge; for a feature model also the feature kernel),
        # onnxruntime, and the output split, from ModelStatistics' batch_stats.
        **{f"batch_{k}_us_mean": d[f"batch_{k}_ns"] / d["batches"] / 1e3 if d.get("batches") else None
           for k in ("input", "infer", "output")},
        # Executions per batch size (rows) inside the window, from ModelStatistics' batch_stats.
        "batch_sizes": by_size,
    }


# -- client processes --------------------------------------------------------------------------------------
class ClientPool:
    """Spawned (not forked: gRPC's threads do not survive fork) client processes that run one point at a time."""

    def __init__(self, cfg: BenchConfig, wl: Workload, worker: Callable[..., None] = worker_main,
                 options: Any = None):
        """``worker``/``options``: another client with the same command protocol (e.g. the HTTP client)."""
        ctx = mp.get_context("spawn")
        self.n = max(1, cfg.processes)
        self.counters = ctx.RawArray("q", 2 * self.n)
        self.results = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(self.n)]
        opts = options or WorkerOptions(cfg.target, connections=cfg.connections, streams=max(1, cfg.streams),
                                        timeout=cfg.timeout, check_every=cfg.check_every, use_uvloop=cfg.uvloop)
        self.procs = [ctx.Process(target=worker, name=f"bench-client-{i}", daemon=True,
                                  args=(i, opts, wl, self.commands[i], self.results, self.counters))
                      for i in range(self.n)]
        self.pids: dict[int, int] = {}
        try:
            for p in self.procs:
                p.start()
            while len(self.pids) < self.n:
                kind, worker, payload = self._get(60.0)
                self.pids[worker] = payload
        except BaseException:  # a client that failed to start, or an interrupt: leave no process behind
            for p in self.procs:
                if p.is_alive():
                    p.terminate()
                    p.join(2)
            raise

    def _get(self, timeout: float) -> tuple[str, int, Any]:
        try:
            kind, worker, payload = self.results.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"client processes gave no answer within {timeout:.0f}s") from None
        if kind == "error":
            raise RuntimeError(f"client process {worker} failed:\n{payload}")
        return kind, worker, payload

    def start(self, specs: dict[int, PointSpec]) -> None:
        for worker, spec in specs.items():
            self.counters[2 * worker] = self.counters[2 * worker + 1] = 0
            self.commands[worker].put(spec)

    def collect(self, count: int, timeout: float) -> list[PointResult]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            _, _, res = self._get(max(1.0, deadline - time.monotonic()))
            out.append(res)
        return out

    def progress(self) -> tuple[int, int]:
        c = self.counters[:]
        return sum(c[0::2]), sum(c[1::2])

    def cpu(self) -> float:
        total = 0.0
        for pid in self.pids.values():
            # A client that died is reported by collect(); here it just adds nothing.
            with contextlib.suppress(Exception):
                total += process_tree_cpu(pid)
        return total

    def close(self) -> None:
        for q in self.commands:
            q.put(None)
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(2)


# -- one point ---------------------------------------------------------------------------------------------
class Progress:
    """An in-place status line on stderr (a terminal only by default: logs should not fill with \\r)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._last = (time.monotonic(), 0)

    def update(self, label: str, phase: str, elapsed: float, total: float, done: int, errors: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        t, n = self._last
        rate = (done - n) / (now - t) if now > t and done >= n else 0.0
        self._last = (now, done)
        sys.stderr.write(f"\r\x1b[2K[{label}] {phase} {elapsed:5.1f}/{total:.1f}s  {done} replies  "
                         f"{rate:8.0f}/s  {errors} errors")
        sys.stderr.flush()

    def reset(self) -> None:
        self._last = (time.monotonic(), 0)

    def done(self, line: str) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[2K")
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def run_point(cfg: BenchConfig, pool: ClientPool, probe: ServerProbe, progress: Progress, index: int,
              mode: str, value: float, rows: int) -> dict[str, Any]:
    if mode == "closed":
        c = int(value)
        shares = {i: c // pool.n + (1 if i < c % pool.n else 0) for i in range(pool.n)}
        shares = {i: s for i, s in shares.items() if s}
    else:
        shares = {i: value / pool.n for i in range(pool.n)}
    t0 = time.time() + 0.2
    t_w, t_end = t0 + cfg.warmup, t0 + cfg.warmup + cfg.duration
    specs = {i: PointSpec(index, mode, cfg.stream, s, t0, cfg.warmup, cfg.duration, cfg.drain_timeout,
                          cfg.max_outstanding, cfg.seed * 1000 + index * 100 + i) for i, s in shares.items()}
    pool.start(specs)
    label = f"{'stream' if cfg.stream else 'unary'} " + (f"c={int(value)}" if mode == "closed" else f"{value:.0f}/s")
    progress.reset()
    snaps: dict[str, tuple[float | None, dict[str, Any] | None, float]] = {}
    while "end" not in snaps:
        now = time.time()
        edge, at = ("start", t_w) if "start" not in snaps else ("end", t_end)
        if now >= at:
            snaps[edge] = (probe.cpu(), probe.stats(), pool.cpu())
            continue
        time.sleep(min(0.25, at - now))
        done, errors = pool.progress()
        now = time.time()
        phase = "warm-up" if now < t_w else "measure"
        progress.update(label, phase, now - t0, cfg.warmup + cfg.duration, done, errors)
    results = pool.collect(len(specs), cfg.drain_timeout + cfg.timeout + 30)
    (cpu0, st0, cli0), (cpu1, st1, cli1) = snaps["start"], snaps["end"]

    lat = np.concatenate([r.latencies for r in results]) if results else np.empty(0)
    lag = np.concatenate([r.send_lag for r in results]) if results else np.empty(0)
    completed = sum(r.completed for r in results)
    errors: dict[str, int] = {}
    messages: dict[str, str] = {}
    for r in results:
        for code, n in r.errors.items():
            errors[code] = errors.get(code, 0) + n
        for code, msg in r.error_messages.items():
            if code in errors:
                messages.setdefault(code, msg)
    error_count = sum(errors.values())
    served = completed + error_count
    point: dict[str, Any] = {
        "mode": mode, "stream": cfg.stream,
        "concurrency": int(value) if mode == "closed" else None,
        "offered_rate": float(value) if mode == "open" else None,
        "duration_s": cfg.duration, "warmup_s": cfg.warmup,
        "requests": completed, "sent": sum(r.sent for r in results),
        "throughput_rps": completed / cfg.duration, "rows_per_s": completed * rows / cfg.duration,
        "errors": errors, "error_count": error_count, "error_messages": messages,
        "warmup_errors": sum(r.warmup_errors for r in results),
        "latency_ms": report.latency_summary(lat),
        "checks": {"checked": sum(r.checked for r in results), "failed": sum(r.check_failures for r in results),
                   "first_failure": next((r.first_failure for r in results if r.first_failure), None)},
        "server_stats": stats_delta(st0, st1, rows),
        "server_cpu": None,
        "client_cpu": {"seconds": cli1 - cli0, "cores": (cli1 - cli0) / cfg.duration, "processes": len(specs)},
    }
    if lag.size:
        point["send_lag_ms"] = {"mean": float(lag.mean() * 1e3), "p99": float(np.percentile(lag, 99) * 1e3)}
    if cpu0 is not None and cpu1 is not None:
        used = cpu1 - cpu0
        point["server_cpu"] = {"seconds": used, "cores": used / cfg.duration,
                               "us_per_request": used * 1e6 / served if served else None}
    lat_ms = point["latency_ms"]
    progress.done(f"[{label}] {point['throughput_rps']:.0f} req/s  p50 {report._fmt(lat_ms['p50'])} ms  "
                  f"p99 {report._fmt(lat_ms['p99'])} ms  errors {error_count}")
    return point


def resolve_rates(rates: list[str], points: list[dict[str, Any]]) -> list[float]:
    """'80%' means 80% of the best throughput the closed-loop points of this run reached."""
    best = max((p["throughput_rps"] for p in points if p["mode"] == "closed"), default=None)
    out = []
    for r in rates:
        if r.endswith("%"):
            if not best:
                raise ValueError(f"rate {r} is relative: give a --concurrency sweep to measure the maximum first")
            out.append(best * float(r[:-1]) / 100.0)
        else:
            out.append(float(r))
    return out


def run_bench(cfg: BenchConfig, wl: Workload | None = None, worker: Callable[..., None] = worker_main,
              options: Any = None) -> dict[str, Any]:
    """Run every point of the sweep; write JSON/PNG/table to ``cfg.out`` when set. Returns the result.

    ``worker``/``options`` swap in another client process (same command protocol) for the load itself, e.g.
    ``http_client.http_worker_main``; ``cfg.target`` stays the server's gRPC address, which the metadata,
    ModelStatistics and the workload are read from.
    """
    model = wl.model if wl else fetch_model(cfg.target, cfg.model, cfg.model_version)
    wl = wl or build_workload(model, cfg.rows, cfg.variants, cfg.input_files, cfg.outputs,
                              cfg.check_against_onnx, cfg.seed)
    concurrency = cfg.concurrency or ([] if cfg.rates else [1])
    progress = Progress(sys.stderr.isatty() if cfg.progress is None else cfg.progress)
    probe = ServerProbe(cfg)
    started = datetime.now().astimezone()
    points: list[dict[str, Any]] = []
    pool = ClientPool(cfg, wl, worker, options)
    try:
        target_info = probe.server_metadata()
        for i, c in enumerate(concurrency):
            points.append(run_point(cfg, pool, probe, progress, i, "closed", c, wl.rows))
        for j, r in enumerate(resolve_rates(cfg.rates, points)):
            points.append(run_point(cfg, pool, probe, progress, len(concurrency) + j, "open", r, wl.rows))
    finally:
        pool.close()
        probe.close()
    result: dict[str, Any] = {
        "tool": "skewless bench", "format": 1, "label": cfg.label,
        "started_at": started.isoformat(timespec="seconds"),
        "config": asdict(cfg),
        "target": {**target_info, "model": asdict(model), "statistics": probe.stats_error or "ok"},
        "workload": {"rows": wl.rows, "variants": len(wl.requests), "request_bytes": wl.request_bytes,
                     "outputs": wl.output_names, "values_checked_against": cfg.check_against_onnx},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "grpcio": grpc.__version__},
        "points": points,
    }
    if cfg.out is not None:
        report.write_outputs(result, Path(cfg.out), cfg.plot)
    return result


# -- command line ------------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _rates(text: str) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    for x in out:
        float(x[:-1] if x.endswith("%") else x)  # argparse reports the ValueError as a usage error
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--target", default="127.0.0.1:8001", help="host:port of the gRPC server")
    p.add_argument("-m", "--model", required=True, help="model name")
    p.add_argument("--model-version", default="", help="model version (default: the server's choice)")
    g = p.add_argument_group("load")
    g.add_argument("--concurrency", type=_ints, default=[], metavar="N[,N...]",
                   help="closed loop: requests outstanding at once, a sweep (default 1 unless --rate is given)")
    g.add_argument("--rate", type=_rates, default=[], metavar="R[,R...]",
                   help="open loop: Poisson arrivals per second, or P%% of the best closed-loop throughput")
    g.add_argument("--stream", action="store_true", help="send over ModelStreamInfer")
    g.add_argument("--processes", type=int, default=1, help="client processes (each with its own event loop)")
    g.add_argument("--connections", type=int, default=1, help="gRPC connections per client process")
    g.add_argument("--streams", type=int, default=1,
                   help="with --stream: streams per connection, sharing its concurrency or rate; one stream carries "
                        "one write at a time, so several keep the client from being the bottleneck")
    g.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    g.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    g.add_argument("--timeout", type=float, default=30.0, help="gRPC deadline of each request (s)")
    g.add_argument("--drain-timeout", type=float, default=10.0,
                   help="seconds to wait for replies after a point ends before counting them as lost")
    g.add_argument("--max-outstanding", type=int, default=10_000,
                   help="open loop: arrivals beyond this many outstanding are counted as client errors")
    w = p.add_argument_group("requests")
    w.add_argument("--rows", type=int, default=1, help="rows (batch dimension) per request")
    w.add_argument("--variants", type=int, default=16, help="distinct random requests sent round-robin")
    w.add_argument("--input-file", action="append", default=[], metavar="[NAME=]PATH",
                   help="inputs from .npy (one input, or NAME=PATH) or .npz (arrays named after inputs)")
    w.add_argument("--output", action="append", default=[], metavar="NAME", help="request only these outputs")
    w.add_argument("--seed", type=int, default=0)
    c = p.add_argument_group("checks and probes")
    c.add_argument("--check-every", type=int, default=100, help="decode and check every Nth reply (0: never)")
    c.add_argument("--check-against-onnx", metavar="MODEL.onnx",
                   help="also compare checked replies with onnxruntime's outputs on the same inputs")
    c.add_argument("--server-pid", type=int, help="server PID: report its process tree's CPU time per request")
    o = p.add_argument_group("output")
    o.add_argument("--out", help="output directory (default benchmarks/results/<timestamp>)")
    o.add_argument("--no-plot", action="store_true", help="skip the PNG")
    o.add_argument("--label", default="", help="free text stored in the JSON")
    o.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show the in-place progress line even when stderr is not a terminal")
    o.add_argument("--no-progress", dest="progress", action="store_false")
    o.add_argument("--no-uvloop", action="store_true", help="run client processes on the asyncio loop")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    out = args.out or str(RESULTS_DIR / datetime.now().strftime("%Y%m%d-%H%M%S"))
    return BenchConfig(
        target=args.target, model=args.model, model_version=args.model_version, concurrency=args.concurrency,
        rates=args.rate, stream=args.stream, processes=args.processes, connections=args.connections,
        streams=args.streams,
        duration=args.duration, warmup=args.warmup, rows=args.rows, variants=args.variants,
        input_files=args.input_file, outputs=args.output, check_every=args.check_every,
        check_against_onnx=args.check_against_onnx, server_pid=args.server_pid, timeout=args.timeout,
        drain_timeout=args.drain_timeout, max_outstanding=args.max_outstanding, out=out,
        plot=not args.no_plot, progress=args.progress, uvloop=not args.no_uvloop, seed=args.seed,
        label=args.label)


def run_from_args(args: argparse.Namespace) -> int:
    """Exit status 0 only when every request succeeded and every spot-check passed."""
    try:
        result = run_bench(config_from_args(args))
    except grpc.RpcError as exc:  # raised by the set-up calls (ModelMetadata): say what the server said
        print(f"bench: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 2
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(report.format_table(result))
    print(f"wrote {', '.join(result.get('files', {}).values())}")
    bad = any(p["error_count"] or p["checks"]["failed"] for p in result["points"])
    return 1 if bad else 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to a CLI's subparsers (``skewless bench``); it dispatches through ``func``."""
    p = subparsers.add_parser("bench", help="load-test a KServe v2 gRPC server (closed/open loop, unary/stream)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_from_args)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["BenchConfig", "run_bench", "main", "register"]
