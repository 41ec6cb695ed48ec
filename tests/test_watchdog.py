"""The watchdog: a model instance that hangs fails its requests with a clear UNAVAILABLE within the model's
skewless.instance_timeout_s, is restarted (a new session takes requests while the hung thread runs on), and
other models keep serving throughout."""

from __future__ import annotations

import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import expect_error, infer
from serverproc import ServerProcess

from skewless.examples.generate import make_slow_model, slow_model_iterations

pytestmark = pytest.mark.slow  # the slow tier: timing guarantees of the watchdog (a hung batch fails near its timeout, other models stay fast), measured against the clock

HANG_CONFIG = """
name: "hang"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "skewless.instance_timeout_s" value { string_value: "0.5" } }
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
parameters { key: "skewless.inline_compute_us" value { string_value: "0" } }
"""


def test_hung_instance_fails_fast_restarts_and_spares_other_models(make_repo):
    repo = make_repo("mlp")
    (repo / "hang" / "1").mkdir(parents=True)
    (repo / "hang" / "config.pbtxt").write_text(HANG_CONFIG)
    # ~20 s a batch: "hung" for the test's purposes; the server must still stop at once on SIGTERM
    make_slow_model(repo / "hang" / "1" / "model.onnx", iterations=slow_model_iterations(20000))
    proc = ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "mlp", start_timeout=60).start()
    try:
        with grpcclient.InferenceServerClient(proc.grpc_url) as client:
            # loading runs no request through it (no warmup configured), so it loads at once
            client.load_model("hang")
            x = np.ones((1, 4), np.float32)
            mlp_x = {"input": np.random.default_rng(0).random((1, 32), dtype=np.float32)}
            other: list[float] = []
            stop = threading.Event()

            def mlp_traffic() -> None:
                with grpcclient.InferenceServerClient(proc.grpc_url) as c2:
                    while not stop.is_set():
                        t0 = time.monotonic()
                        infer(c2, "mlp", mlp_x)
                        other.append(time.monotonic() - t0)

            t = threading.Thread(target=mlp_traffic)
            t.start()
            try:
                for attempt in range(2):  # the second one only runs if the first instance was replaced
                    t0 = time.monotonic()
                    expect_error(lambda: infer(client, "hang", {"x": x}), "UNAVAILABLE", "skewless.instance_timeout_s")
                    took = time.monotonic() - t0
                    assert took < 2.5, f"attempt {attempt}: failed after {took:.1f} s, not near the 0.5 s limit"
            finally:
                stop.set()
                t.join()
            assert len(other) > 20 and max(other) < 1.0, (len(other), max(other))  # other models unaffected
            metrics = urllib.request.urlopen(proc.http_url + "/metrics", timeout=10).read().decode()
            restarts = [ln for ln in metrics.splitlines() if ln.startswith('skewless_instance_restarts_total{model="hang"')]
            assert restarts and float(restarts[0].split()[-1]) == 2.0, restarts
            assert 'nv_inference_request_failure{model="hang",version="1",reason="BACKEND"} 2' in metrics
            assert client.is_model_ready("hang")
        assert "hung instance restarted" in proc.stderr_text()
    finally:
        t0 = time.monotonic()
        proc.assert_clean_exit()  # SIGTERM: exit 0, without waiting for the hung threads to return
    assert time.monotonic() - t0 < 8
