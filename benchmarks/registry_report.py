"""Registry sync in one run: publish-to-serving latency from S3 and from MLflow, p99 while ten swaps happen under
load vs steady state, failed requests, and the cache's disk use after 20 versions.

Everything is real and local: an S3 server (moto's server mode, in-process, through the standard
``AWS_ENDPOINT_URL_S3``), ``skewless publish`` (the library call the CLI makes), a ``skewless serve
--model-repository s3://…`` subprocess polling it, and 64 tritonclient gRPC clients in closed loop
(benchmarks/swap_load.py) whose every reply is checked against the version it names. Each version carries a
``--payload-mb`` data file of its own so that the cache has something to hold; the cache is bounded by
``--cache-mb`` and must stay under it. Publish-to-serving is from the start of the upload to the first
reply from the new version, so it includes the upload and, on average, half a poll interval.

Then, after the S3 part has finished (so it shares nothing with it), the same for MLflow: a real ``mlflow server``
(sqlite backend, proxied artifacts; needs the ``mlflow`` package, in the test extra) and a second
``skewless serve --registry mlflow://…`` following the registered model's ``champion`` alias. Each publish is
what a pipeline does (log the version's files as a run's artifacts, register them as a version, point
``champion`` at it), timed to the first reply from that version; then ``champion`` is moved back to earlier
versions (an MLflow-side rollback), timed the same way. ``--mlflow-versions 0`` skips the part. Like the S3 idle
publishes, each starts as soon as the previous version answers, which is just after a poll: these figures are
close to one full poll interval plus the download and swap, the worst phase rather than the average one.

    python -m skewless.benchmarks.registry_report            # ~1.5 min; --quick for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from . import report
from .servers import start_skewless
from .swap_load import LoadResult, SwapLoad, add_constant_model

CONFIG = "max_batch_size: 64\n"


def _p99_ms(result: LoadResult, t0: float, t1: float) -> tuple[float | None, int]:
    lat = [(r.received - r.sent) * 1e3 for r in result.replies if t0 <= r.sent < t1]
    return (float(np.percentile(lat, 99)) if lat else None), len(lat)


def _du(path: Path) -> int:
    """Bytes on disk under ``path``, each hard-linked file once (as the cache counts its blobs)."""
    seen, total = set(), 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


class Publisher:
    def __init__(self, src: Path, url: str, payload_bytes: int):
        self.src, self.url, self.payload_bytes = src / "m", url, payload_bytes

    def publish(self, v: int) -> float:
        from skewless.server.registry.publish import publish

        d = self.src / str(v)
        d.mkdir(parents=True, exist_ok=True)
        (self.src / "config.pbtxt").write_text(CONFIG)
        (d / "model.onnx").write_bytes(add_constant_model(float(v)))
        (d / "weights.bin").write_bytes(np.random.default_rng(v).bytes(self.payload_bytes))
        t = time.perf_counter()
        publish(self.src, self.url, version=v)
        return time.perf_counter() - t


def _wait_version(probe: Any, v: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while probe() != v:
        if time.monotonic() > deadline:
            raise TimeoutError(f"version {v} did not serve within {timeout:.0f}s")
        time.sleep(0.01)


def _probe(url: str):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    x = np.zeros((1, 4), np.float32)

    def version() -> int:
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        try:
            return int(client.infer("m", [inp], client_timeout=10).get_response().model_version)
        except Exception:
            return 0

    return client, version


def _median_max(points: list[float]) -> dict[str, float | None]:
    return {"median": statistics.median(points) if points else None, "max": max(points) if points else None}


def run_mlflow(args: argparse.Namespace, out: Path, work: Path) -> dict[str, Any]:
    """Publish-to-serving and alias-move-to-serving through a real MLflow Model Registry."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        return {"skipped": "the mlflow package is not installed (pip install -e '.[test]')"}
    from .mlflow_registry import MlflowServer, client, register_version

    src = work / "mlflow-src"
    payload = int(args.payload_mb * 2**20)

    def version_dir(v: int) -> Path:
        d = src / str(v)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.pbtxt").write_text(CONFIG)
        (d / "model.onnx").write_bytes(add_constant_model(float(v)))
        (d / "weights.bin").write_bytes(np.random.default_rng(1000 + v).bytes(payload))
        return d

    timeout = max(30.0, 20 * args.poll_secs)
    publishes, moves = [], []
    t_start = time.perf_counter()
    with MlflowServer(work / "mlflow-server") as ml:
        started_s = time.perf_counter() - t_start
        c = client(ml.url)
        register_version(c, "m", version_dir(1), "champion")
        extra = ["--registry", ml.url.replace("http://", "mlflow://"), "--registry-model", "m",
                 "--repository-poll-secs", str(args.poll_secs), "--registry-cache", str(work / "mlflow-cache"),
                 "--registry-cache-gb", str(args.cache_mb / 1024)]
        with start_skewless(None, out / "skewless-mlflow.log", extra) as srv:
            probe_client, probe = _probe(srv.target)
            try:
                _wait_version(probe, 1, timeout)
                for v in range(2, args.mlflow_versions + 2):
                    d = version_dir(v)
                    t = time.perf_counter()
                    assert register_version(c, "m", d, "champion") == v
                    published = time.perf_counter() - t
                    _wait_version(probe, v, timeout)
                    publishes.append({"version": v, "publish_s": published,
                                      "publish_to_serving_s": time.perf_counter() - t})
                for v in range(args.mlflow_versions, max(0, args.mlflow_versions - 3), -1):
                    t = time.perf_counter()
                    c.set_registered_model_alias("m", "champion", v)
                    _wait_version(probe, v, timeout)
                    moves.append({"version": v, "alias_move_to_serving_s": time.perf_counter() - t})
            finally:
                probe_client.close()
    return {"store": "mlflow server (sqlite backend, proxied artifacts), REST from skewless",
            "server_start_s": started_s, "versions": len(publishes),
            "publish_to_serving_s": _median_max([p["publish_to_serving_s"] for p in publishes]),
            "alias_move_to_serving_s": _median_max([m["alias_move_to_serving_s"] for m in moves]),
            "publishes": publishes, "alias_moves": moves}


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    env = {"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    import boto3

    bucket = f"registry-report-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/models"
    work = Path(tempfile.mkdtemp(prefix="registry-report-"))
    pub = Publisher(work / "src", url, int(args.payload_mb * 2**20))
    cache = work / "cache"
    pub.publish(1)
    extra = ["--model-control-mode", "poll", "--repository-poll-secs", str(args.poll_secs),
             "--registry-cache", str(cache), "--registry-cache-gb", str(args.cache_mb / 1024)]
    timeout = max(30.0, 20 * args.poll_secs)
    swaps, idle = [], []
    try:
        with start_skewless(url, out / "skewless.log", extra, env=env) as srv:
            client, probe = _probe(srv.target)
            _wait_version(probe, 1, timeout)
            load = SwapLoad(srv.target, "m", clients=args.clients).start()
            try:
                time.sleep(args.warmup)
                s0 = time.perf_counter()
                time.sleep(args.steady)
                s1 = w0 = time.perf_counter()
                for v in range(2, args.swaps + 2):
                    t = time.perf_counter()
                    upload = pub.publish(v)
                    _wait_version(load.latest_version, v, timeout)
                    swaps.append({"version": v, "upload_s": upload, "publish_to_serving_s": time.perf_counter() - t})
                w1 = time.perf_counter()
            finally:
                result = load.stop()
            for v in range(args.swaps + 2, args.versions + 1):
                t = time.perf_counter()
                upload = pub.publish(v)
                _wait_version(probe, v, timeout)
                idle.append({"version": v, "upload_s": upload, "publish_to_serving_s": time.perf_counter() - t})
            time.sleep(2 * args.poll_secs)
            client.close()
            cache_bytes = _du(cache / "blobs")
    finally:
        moto.stop()
    mlflow_part = run_mlflow(args, out, work) if args.mlflow_versions > 0 else {"skipped": "--mlflow-versions 0"}
    steady_p99, steady_n = _p99_ms(result, s0, s1)
    swap_p99, swap_n = _p99_ms(result, w0, w1)
    all_pts = [p["publish_to_serving_s"] for p in swaps + idle]
    timeline = [[round(r.sent - s0, 4), round((r.received - r.sent) * 1e3, 3), r.version]
                for r in result.replies[:: max(1, len(result.replies) // 20000)]]
    return {
        "config": {"clients": args.clients, "poll_secs": args.poll_secs, "payload_mb": args.payload_mb,
                   "cache_mb": args.cache_mb, "versions": args.versions, "swaps": args.swaps,
                   "steady_s": args.steady, "store": "moto S3 server (in-process) via s3fs",
                   "mlflow_versions": args.mlflow_versions},
        "publish_to_serving_s": {"median": statistics.median(all_pts), "max": max(all_pts),
                                 "under_load_median": statistics.median(p["publish_to_serving_s"] for p in swaps),
                                 "idle_median": statistics.median(p["publish_to_serving_s"] for p in idle)
                                 if idle else None},
        "p99_ms": {"steady": steady_p99, "during_swaps": swap_p99, "steady_requests": steady_n,
                   "swap_requests": swap_n},
        "requests": {"answered": len(result.replies), "failed": result.failed, "errors": result.errors,
                     "mixed_versions": result.mixed, "version_went_backwards": result.backwards},
        "cache": {"bytes_after_versions": cache_bytes, "versions_published": args.versions,
                  "bound_bytes": int(args.cache_mb * 2**20),
                  "unbounded_would_be_bytes": sum(_du(pub.src / str(v)) for v in range(1, args.versions + 1))},
        "mlflow": mlflow_part,
        "swaps": swaps, "idle_publishes": idle,
        "timeline": {"t0": 0.0, "steady_end_s": s1 - s0, "swaps_end_s": w1 - s0, "points": timeline},
    }


def format_table(r: dict[str, Any]) -> str:
    p, q, c, k, m = r["publish_to_serving_s"], r["p99_ms"], r["requests"], r["cache"], r["mlflow"]
    f = report._fmt
    if "skipped" in m:
        mlflow_line = f"MLflow publish-to-serving: skipped ({m['skipped']})"
    else:
        mp, mm = m["publish_to_serving_s"], m["alias_move_to_serving_s"]
        mlflow_line = (f"MLflow publish-to-serving: median {f(mp['median'], '.3f')} s, max {f(mp['max'], '.3f')} s "
                       f"({m['versions']} versions, idle); champion alias move to serving: median "
                       f"{f(mm['median'], '.3f')} s, max {f(mm['max'], '.3f')} s")
    return "\n".join([
        f"registry sync ({r['config']['store']}, poll {r['config']['poll_secs']} s, "
        f"{r['config']['clients']} clients)",
        f"S3 publish-to-serving: median {f(p['median'], '.3f')} s, max {f(p['max'], '.3f')} s "
        f"(under load median {f(p['under_load_median'], '.3f')} s, idle median {f(p['idle_median'], '.3f')} s)",
        mlflow_line,
        f"p99: steady {f(q['steady'])} ms ({q['steady_requests']} requests), during {r['config']['swaps']} swaps "
        f"{f(q['during_swaps'])} ms ({q['swap_requests']} requests)",
        f"failed requests: {c['failed']} of {c['answered'] + c['failed']}; replies mixing versions: "
        f"{c['mixed_versions']}; version going backwards: {c['version_went_backwards']}",
        f"cache after {k['versions_published']} versions: {k['bytes_after_versions'] / 2**20:.2f} MiB "
        f"(bound {k['bound_bytes'] / 2**20:.0f} MiB; all versions would take {k['unbounded_would_be_bytes'] / 2**20:.2f} MiB)",
    ])


def plot(r: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    pts = np.array(r["timeline"]["points"]) if r["timeline"]["points"] else np.zeros((0, 3))
    if len(pts):
        sc = ax1.scatter(pts[:, 0], pts[:, 1], c=pts[:, 2], s=2, cmap="viridis")
        fig.colorbar(sc, ax=ax1, label="model_version of the reply")
    ax1.axvline(r["timeline"]["steady_end_s"], color="grey", ls="--", lw=1, label="swaps start")
    ax1.axvline(r["timeline"]["swaps_end_s"], color="black", ls="--", lw=1, label="swaps end")
    ax1.set_yscale("log")
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("reply latency (ms)")
    ax1.set_title(f"{r['config']['clients']} clients: p99 steady {report._fmt(r['p99_ms']['steady'])} ms, "
                  f"during swaps {report._fmt(r['p99_ms']['during_swaps'])} ms")
    ax1.legend(loc="upper left", fontsize=8)
    rows = r["swaps"] + r["idle_publishes"]
    ax2.bar([p["version"] for p in r["swaps"]], [p["publish_to_serving_s"] for p in r["swaps"]],
            label="under load")
    ax2.bar([p["version"] for p in r["idle_publishes"]], [p["publish_to_serving_s"] for p in r["idle_publishes"]],
            label="idle")
    ax2.plot([p["version"] for p in rows], [p["upload_s"] for p in rows], "k.", label="upload alone")
    ax2.set_xlabel("version published")
    ax2.set_ylabel("publish to first reply (s)")
    ax2.set_title(f"publish-to-serving, poll every {r['config']['poll_secs']} s")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--swaps", type=int, default=10, help="versions published while the clients run")
    p.add_argument("--versions", type=int, default=20, help="versions published in all (cache disk use after)")
    p.add_argument("--steady", type=float, help="seconds of steady state before the swaps (default 10; 2 quick)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--poll-secs", type=float, default=0.5, help="the server's --repository-poll-secs")
    p.add_argument("--payload-mb", type=float, default=1.0, help="a data file of this size in each version")
    p.add_argument("--cache-mb", type=float, default=8.0, help="the server's cache bound")
    p.add_argument("--mlflow-versions", type=int, default=10,
                   help="versions published through a real MLflow registry after the S3 part (0 skips it)")
    p.add_argument("--quick", action="store_true", help="a short steady state, for a smoke run")
    p.add_argument("--out", help="output directory (default benchmarks/results/registry-<timestamp>)")
    args = p.parse_args(argv)
    if args.steady is None:
        args.steady = 2.0 if args.quick else 10.0
    out = Path(args.out or Path(__file__).parent / "results" / time.strftime("registry-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    with report.sigterm_as_interrupt():
        result = run(args, out)
    table = format_table(result)
    files = {"json": str(out / "registry.json"), "png": str(plot(result, out / "registry.png")),
             "table": str(out / "registry.txt")}
    result["files"] = files
    Path(files["json"]).write_text(json.dumps(result, indent=1) + "\n")
    Path(files["table"]).write_text(table + "\n")
    print(table)
    return 0 if result["requests"]["failed"] == 0 and result["requests"]["mixed_versions"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
