"""Soak: minutes of mixed traffic against one server, watching for what only shows with time.

One ``skewless serve`` subprocess syncs a model from a registry (a ``file://`` folder written by ``skewless
publish``: the same sync, verification and swap path as S3) in poll mode, and a new version is published every
``--swap-every`` seconds. Version N of the model adds N to its input, so every reply is checked against the
version it names. Meanwhile, in closed loops: gRPC unary clients, gRPC streams (one request in flight each),
HTTP/REST clients, and a trickle of bad requests (wrong shape: INVALID_ARGUMENT / 400 expected). Each second
the server's RSS, open fds and CPU are sampled.

Reported: RSS and fds at the start and end and their growth, p50/p99 per window (a minute, or a quarter of a
shorter run) per traffic kind, the first vs the last window, requests and unexpected errors (anything other
than a correct reply, or the expected refusal of a bad request: must be 0), swaps seen. Writes soak.json,
soak.png (RSS and fds over time, p99 per window) and soak.txt into --out.

    python -m skewless.benchmarks.soak_report                 # 10 minutes
    python -m skewless.benchmarks.soak_report --minutes 0.3   # a smoke run (what CI runs)
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .servers import start_skewless
from .swap_load import add_constant_model

MODEL = "soak"
CONFIG = "max_batch_size: 64\n"
KINDS = ("grpc", "stream", "http", "bad")


def log(msg: str) -> None:
    print(f"[soak {datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


class Tally:
    """Replies and errors of every worker, with the time each was sent (seconds since the start)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lock = threading.Lock()
        self.lat: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
        self.unexpected: dict[str, int] = {}
        self.versions: set[int] = set()

    def ok(self, kind: str, sent: float, version: int | None = None) -> None:
        with self.lock:
            self.lat[kind].append((sent - self.t0, time.monotonic() - sent))
            if version is not None:
                self.versions.add(version)

    def bad(self, kind: str, what: str) -> None:
        key = f"{kind}: {what[:120]}"
        with self.lock:
            self.unexpected[key] = self.unexpected.get(key, 0) + 1


def _check(kind: str, tally: Tally, sent: float, x: np.ndarray, y: np.ndarray, version: str) -> None:
    v = int(version)
    if np.allclose(y, x + v):
        tally.ok(kind, sent, v)
    else:
        tally.bad(kind, f"reply of version {v} is not x + {v}")


def grpc_worker(url: str, tally: Tally, stop: threading.Event, seed: int) -> None:
    import tritonclient.grpc as grpcclient

    rng = np.random.default_rng(seed)
    with grpcclient.InferenceServerClient(url) as client:
        while not stop.is_set():
            x = rng.random((1, 4), dtype=np.float32)
            inp = grpcclient.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            sent = time.monotonic()
            try:
                r = client.infer(MODEL, [inp], client_timeout=30)
                _check("grpc", tally, sent, x, r.as_numpy("y"), r.get_response().model_version)
            except Exception as exc:
                tally.bad("grpc", str(exc))


def stream_worker(url: str, tally: Tally, stop: threading.Event, seed: int) -> None:
    import tritonclient.grpc as grpcclient

    rng = np.random.default_rng(seed)
    results: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(url) as client:
        client.start_stream(lambda result, error: results.put((result, error)))
        try:
            while not stop.is_set():
                x = rng.random((1, 4), dtype=np.float32)
                inp = grpcclient.InferInput("x", [1, 4], "FP32")
                inp.set_data_from_numpy(x)
                sent = time.monotonic()
                client.async_stream_infer(MODEL, [inp])
                try:
                    result, error = results.get(timeout=30)
                except queue.Empty:
                    tally.bad("stream", "no reply within 30 s")
                    break
                if error is not None:
                    tally.bad("stream", str(error))
                else:
                    _check("stream", tally, sent, x, result.as_numpy("y"), result.get_response().model_version)
        finally:
            client.stop_stream()


def http_worker(url: str, tally: Tally, stop: threading.Event, seed: int) -> None:
    import tritonclient.http as httpclient

    rng = np.random.default_rng(seed)
    client = httpclient.InferenceServerClient(url, network_timeout=30)
    try:
        while not stop.is_set():
            x = rng.random((1, 4), dtype=np.float32)
            inp = httpclient.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x, binary_data=bool(seed % 2))
            sent = time.monotonic()
            try:
                r = client.infer(MODEL, [inp])
                _check("http", tally, sent, x, r.as_numpy("y"), r.get_response()["model_version"])
            except Exception as exc:
                tally.bad("http", str(exc))
    finally:
        client.close()


def bad_worker(url: str, tally: Tally, stop: threading.Event, per_s: float) -> None:
    """Wrong-shape requests: the expected answer is INVALID_ARGUMENT, and nothing else."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with grpcclient.InferenceServerClient(url) as client:
        while not stop.wait(1.0 / per_s):
            inp = grpcclient.InferInput("x", [1, 5], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 5), np.float32))
            sent = time.monotonic()
            try:
                client.infer(MODEL, [inp], client_timeout=30)
                tally.bad("bad", "a wrong-shape request was answered")
            except InferenceServerException as exc:
                if exc.status() == "StatusCode.INVALID_ARGUMENT":
                    tally.ok("bad", sent)
                else:
                    tally.bad("bad", f"{exc.status()} {exc.message()}")


def sampler(pid: int, t0: float, stop: threading.Event, out: list[dict[str, float]]) -> None:
    import psutil

    proc = psutil.Process(pid)
    while not stop.wait(1.0):
        try:
            cpu = proc.cpu_times()
            out.append({"t": time.monotonic() - t0, "rss_mb": proc.memory_info().rss / 2**20,
                        "fds": proc.num_fds(), "cpu_s": cpu.user + cpu.system})
        except psutil.Error:
            return


def windows(tally: Tally, duration: float, width: float) -> list[dict[str, Any]]:
    out = []
    n = max(1, int(round(duration / width)))
    for i in range(n):
        lo, hi = i * width, (i + 1) * width
        row: dict[str, Any] = {"start_s": lo, "end_s": hi}
        for kind in KINDS:
            lat = [lt * 1e3 for s, lt in tally.lat[kind] if lo <= s < hi]
            row[kind] = {"n": len(lat), "p50_ms": float(np.percentile(lat, 50)) if lat else None,
                         "p99_ms": float(np.percentile(lat, 99)) if lat else None}
        out.append(row)
    return out


def _publisher(root: Path, url: str):
    from skewless.server.registry.publish import publish

    def put(v: int) -> None:
        d = root / MODEL / str(v)
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(add_constant_model(float(v)))
        (root / MODEL / "config.pbtxt").write_text(CONFIG)
        publish(root / MODEL, url, version=v)

    return put


def run(args: argparse.Namespace) -> dict[str, Any]:
    duration = args.minutes * 60
    width = 60.0 if duration >= 240 else duration / 4
    with tempfile.TemporaryDirectory(prefix="skewless-soak-") as tmp:
        tmpdir = Path(tmp)
        registry = tmpdir / "registry"
        registry.mkdir()
        url = f"file://{registry}"
        put = _publisher(tmpdir / "src", url)
        put(1)
        server = start_skewless(url, tmpdir / "server.log",  # type: ignore[arg-type]
                                ["--model-control-mode", "poll", "--repository-poll-secs", "1",
                                 "--registry-cache", str(tmpdir / "cache")])
        try:
            grpc_url, rest_url = server.target, server.addresses["rest"]
            t0 = time.monotonic()
            tally, samples, stop = Tally(t0), [], threading.Event()
            threads = [threading.Thread(target=sampler, args=(server.pid, t0, stop, samples), daemon=True)]
            for i in range(args.grpc):
                threads.append(threading.Thread(target=grpc_worker, args=(grpc_url, tally, stop, i), daemon=True))
            for i in range(args.streams):
                threads.append(threading.Thread(target=stream_worker, args=(grpc_url, tally, stop, 100 + i),
                                                daemon=True))
            for i in range(args.http):
                threads.append(threading.Thread(target=http_worker, args=(rest_url, tally, stop, 200 + i),
                                                daemon=True))
            threads.append(threading.Thread(target=bad_worker, args=(grpc_url, tally, stop, args.bad_per_s),
                                            daemon=True))
            for t in threads:
                t.start()
            log(f"{duration:.0f} s of load: {args.grpc} gRPC, {args.streams} stream, {args.http} HTTP clients, "
                f"{args.bad_per_s:g} bad requests/s; a new version every {args.swap_every:g} s")
            version, next_swap, next_note = 1, t0 + args.swap_every, t0 + 10
            while (now := time.monotonic()) < t0 + duration:
                if now >= next_swap:
                    version += 1
                    put(version)
                    next_swap += args.swap_every
                if now >= next_note:
                    rss = samples[-1]["rss_mb"] if samples else float("nan")
                    log(f"{now - t0:.0f}/{duration:.0f} s: {sum(len(v) for v in tally.lat.values())} replies, "
                        f"{sum(tally.unexpected.values())} unexpected, RSS {rss:.0f} MB, version {version} published")
                    next_note += 10
                time.sleep(0.1)
            stop.set()
            for t in threads:
                t.join(timeout=35)
        finally:
            server.stop()
    first, last = samples[0] if samples else {}, samples[-1] if samples else {}
    per_window = windows(tally, duration, width)

    def agg(rows: list[dict[str, Any]], key: str) -> float | None:
        vals = [r[key] for r in rows]
        return float(np.median(vals)) if vals else None

    head = [s for s in samples if s["t"] < width]
    tail = [s for s in samples if s["t"] >= duration - width]
    return {
        "started": datetime.now().isoformat(timespec="seconds"), "duration_s": duration, "window_s": width,
        "clients": {"grpc": args.grpc, "stream": args.streams, "http": args.http, "bad_per_s": args.bad_per_s},
        "swap_every_s": args.swap_every, "versions_published": version, "versions_answered": sorted(tally.versions),
        "requests": {k: len(v) for k, v in tally.lat.items()}, "unexpected": tally.unexpected,
        "unexpected_total": sum(tally.unexpected.values()),
        "rss_mb": {"start": first.get("rss_mb"), "end": last.get("rss_mb"), "first_window_median": agg(head, "rss_mb"),
                   "last_window_median": agg(tail, "rss_mb")},
        "fds": {"start": first.get("fds"), "end": last.get("fds"), "max": max((s["fds"] for s in samples), default=None)},
        "server_cpu_s": (last.get("cpu_s", 0) - first.get("cpu_s", 0)) if samples else None,
        "windows": per_window, "samples": samples,
    }


def table(r: dict[str, Any]) -> str:
    rss, fds = r["rss_mb"], r["fds"]
    lines = [f"Soak: {r['duration_s']:.0f} s, clients {r['clients']}, a version every {r['swap_every_s']:g} s "
             f"({r['versions_published']} published; replies came from {len(r['versions_answered'])})",
             f"requests: {r['requests']}; unexpected errors: {r['unexpected_total']} {r['unexpected'] or ''}",
             f"RSS MB: start {rss['start']:.1f}, end {rss['end']:.1f}; first-window median "
             f"{rss['first_window_median']:.1f}, last-window median {rss['last_window_median']:.1f} "
             f"(growth {rss['last_window_median'] - rss['first_window_median']:+.1f})",
             f"open fds: start {fds['start']}, end {fds['end']}, max {fds['max']}",
             f"{'window':>13}" + "".join(f"{k + ' p50/p99 ms':>22}" for k in KINDS)]
    for w in r["windows"]:
        cells = []
        for k in KINDS:
            p50, p99 = w[k]["p50_ms"], w[k]["p99_ms"]
            cells.append(f"{(f'{p50:.2f}/{p99:.2f}' if p50 is not None else '-'):>22}")
        lines.append(f"{w['start_s']:>6.0f}-{w['end_s']:<6.0f}" + "".join(cells))
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    t = [s["t"] for s in r["samples"]]
    a1.plot(t, [s["rss_mb"] for s in r["samples"]], color="C0", label="RSS (MB)")
    a1.set_xlabel("seconds")
    a1.set_ylabel("RSS (MB)")
    a1b = a1.twinx()
    a1b.plot(t, [s["fds"] for s in r["samples"]], color="C1", label="open fds")
    a1b.set_ylabel("open fds")
    a1.set_title("server RSS and open file descriptors")
    mids = [(w["start_s"] + w["end_s"]) / 2 for w in r["windows"]]
    for i, k in enumerate(KINDS):
        a2.plot(mids, [w[k]["p99_ms"] for w in r["windows"]], marker="o", color=f"C{i}", label=k)
    a2.set_xlabel("seconds (window middle)")
    a2.set_ylabel("p99 latency (ms)")
    a2.set_title(f"p99 per {r['window_s']:.0f} s window; a new version every {r['swap_every_s']:g} s")
    a2.legend()
    fig.suptitle(f"soak: {r['duration_s']:.0f} s, {r['unexpected_total']} unexpected errors")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skewless.benchmarks.soak_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--grpc", type=int, default=4, help="gRPC unary clients in closed loop")
    p.add_argument("--streams", type=int, default=2, help="gRPC streams, one request in flight each")
    p.add_argument("--http", type=int, default=2, help="HTTP/REST clients (JSON and binary tensors)")
    p.add_argument("--bad-per-s", type=float, default=5.0, help="wrong-shape requests per second")
    p.add_argument("--swap-every", type=float, default=60.0, help="seconds between published versions")
    p.add_argument("--out", help="output directory (default benchmarks/results/soak-<timestamp>)")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.swap_every <= 0:
        p.error("--minutes and --swap-every must be positive")
    out = Path(args.out or Path(__file__).parent / "results" / f"soak-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    r = run(args)
    text = table(r)
    (out / "soak.json").write_text(json.dumps(r, indent=1))
    (out / "soak.txt").write_text(text + "\n")
    plot(r, out / "soak.png")
    print(text)
    print(f"wrote {out / 'soak.json'}, {out / 'soak.png'}, {out / 'soak.txt'}")
    return 0 if r["unexpected_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
