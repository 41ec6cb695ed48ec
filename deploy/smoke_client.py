"""The container smoke test's client: an unmodified tritonclient (gRPC and HTTP) against a running image.

Run by ``deploy/build-and-smoke.sh`` inside the container's network namespace, so the image is tested as it
ships (bound to 0.0.0.0 on ports 8000-8002). It checks readiness, metadata and inference of the example MLP
over both transports against onnxruntime on this machine, then, with ``--stop-command``, stops the container
while a slow request is in flight and checks that the request still completes (SIGTERM drains).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def wait_ready(metrics_url: str, timeout_s: float) -> float:
    """Poll the metrics port's readiness probe as Kubernetes would; the seconds it took."""
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"{metrics_url}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"server not ready on {metrics_url} after {timeout_s:.0f}s")
        time.sleep(0.25)


def in_flight(metrics_url: str) -> float:
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    return sum(float(m) for m in re.findall(r"^skewless_requests_in_flight(?:\{[^}]*\})? (\S+)$", text, re.M))


def check_inference(grpc_url: str, http_url: str, mlp_onnx: Path) -> None:
    x = np.random.default_rng(14).random((4, 32), dtype=np.float32)
    ref = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]

    g = grpcclient.InferenceServerClient(grpc_url)
    meta = g.get_server_metadata()
    print(f"grpc  server: {meta.name} {meta.version} extensions={list(meta.extensions)}")
    print(f"grpc  ready: server={g.is_server_ready()} mlp={g.is_model_ready('mlp')}")
    models = [(m.name, m.version, m.state) for m in g.get_model_repository_index().models]
    print(f"grpc  repository: {models}")
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got_grpc = g.infer("mlp", [inp]).as_numpy("probabilities")
    print(f"grpc  infer mlp [4,32] -> probabilities {got_grpc.shape}:\n{np.array2string(got_grpc, precision=6)}")

    h = httpclient.InferenceServerClient(http_url)
    print(f"http  ready: server={h.is_server_ready()} mlp={h.is_model_ready('mlp')}")
    hin = httpclient.InferInput("input", list(x.shape), "FP32")
    hin.set_data_from_numpy(x, binary_data=True)
    got_http = h.infer("mlp", [hin]).as_numpy("probabilities")
    print(f"http  infer mlp [4,32] -> probabilities {got_http.shape}, equal to gRPC's: "
          f"{np.array_equal(got_http, got_grpc)}")
    diff = float(np.max(np.abs(got_grpc - ref)))
    print(f"max |container - local onnxruntime| = {diff:.3g}")
    if diff > 1e-5 or not np.array_equal(got_http, got_grpc):
        raise SystemExit("container results differ from the local reference")


def check_drain(grpc_url: str, metrics_url: str, stop_command: str) -> None:
    """Send a slow request, stop the container while it runs, and expect its answer anyway."""
    client = grpcclient.InferenceServerClient(grpc_url)
    x = np.ones((1, 4), dtype=np.float32)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result: dict[str, object] = {}

    def send() -> None:
        t0 = time.monotonic()
        try:
            result["y"] = client.infer("slow", [inp]).as_numpy("y")
        except Exception as exc:  # reported below
            result["error"] = exc
        result["seconds"] = time.monotonic() - t0

    worker = threading.Thread(target=send)
    worker.start()
    deadline = time.monotonic() + 10
    while in_flight(metrics_url) < 1:
        if time.monotonic() > deadline:
            raise SystemExit("the slow request never showed up as in flight")
        time.sleep(0.02)
    t0 = time.monotonic()
    stop = subprocess.run(stop_command, shell=True, capture_output=True, text=True)
    worker.join(timeout=60)
    print(f"stop while 1 request in flight: `{stop_command}` exit {stop.returncode} after "
          f"{time.monotonic() - t0:.2f}s; the request {'failed: ' + str(result['error']) if 'error' in result else 'completed'}"
          f" in {result.get('seconds', float('nan')):.2f}s")
    if "error" in result or "y" not in result:
        raise SystemExit("the in-flight request did not survive the stop")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mlp-onnx", type=Path, required=True, help="the example MLP, for the local reference")
    p.add_argument("--ready-timeout", type=float, default=120)
    p.add_argument("--healthcheck-command", help="shell command running the image's HEALTHCHECK once")
    p.add_argument("--stop-command", help="shell command that stops the server (SIGTERM), run mid-request")
    args = p.parse_args(argv)
    grpc_url, http_url, metrics_url = f"{args.host}:8001", f"{args.host}:8000", f"http://{args.host}:8002"
    print(f"ready after {wait_ready(metrics_url, args.ready_timeout):.1f}s")
    if args.healthcheck_command:
        hc = subprocess.run(args.healthcheck_command, shell=True, capture_output=True, text=True)
        print(f"image HEALTHCHECK: `{args.healthcheck_command}` exit {hc.returncode} {hc.stdout.strip()}")
        if hc.returncode != 0:
            raise SystemExit(f"the image's health check failed: {hc.stderr.strip()}")
    check_inference(grpc_url, http_url, args.mlp_onnx)
    if args.stop_command:
        check_drain(grpc_url, metrics_url, args.stop_command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
