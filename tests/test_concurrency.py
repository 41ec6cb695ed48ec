"""Many clients at once: every reply matches onnxruntime run directly on the same input (no cross-wiring),
and a slow model does not hold up another model."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from helpers import EXAMPLE_MODELS, RPC_TIMEOUT, infer

pytestmark = pytest.mark.grpc_transports  # every test on each gRPC transport (conftest.py)

THREADS = 64
ROUNDS = 4


@pytest.fixture(scope="module")
def reference():
    """onnxruntime sessions on the very files the server loads, run here in the test process."""
    return {name: ort.InferenceSession(str(EXAMPLE_MODELS / name / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"]) for name in ("mlp", "gbt")}


def test_concurrent_clients_get_their_own_answers(server, reference):
    clients = [grpcclient.InferenceServerClient(server.grpc_url) for _ in range(4)]
    barrier = threading.Barrier(THREADS)
    lock = threading.Lock()
    exact = {"mlp": 0, "gbt": 0}
    checked = {"mlp": 0, "gbt": 0}

    def worker(t: int) -> None:
        rng = np.random.default_rng(1000 + t)
        client = clients[t % len(clients)]
        barrier.wait(timeout=60)
        for r in range(ROUNDS):
            use_gbt = (t + r) % 4 == 0
            model = "gbt" if use_gbt else "mlp"
            rows = int(rng.integers(1, 5 if use_gbt else 33))
            x = (rng.standard_normal((rows, 8 if use_gbt else 32)) * 2).astype(np.float32)
            feed = "features" if use_gbt else "input"
            rid = f"t{t}-r{r}"
            res = infer(client, model, {feed: x}, request_id=rid)
            assert res.get_response().id == rid
            want_probs = reference[model].run(["probabilities"], {feed: x})[0]
            got_probs = res.as_numpy("probabilities")
            assert got_probs.shape == want_probs.shape
            np.testing.assert_allclose(got_probs, want_probs, rtol=1e-6, atol=1e-7)
            if use_gbt:
                want_label = reference[model].run(["label"], {feed: x})[0]
                np.testing.assert_array_equal(res.as_numpy("label"), want_label.reshape(-1, 1))  # config dims [1]
            with lock:
                checked[model] += 1
                exact[model] += int(got_probs.tobytes() == want_probs.tobytes())

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            for f in [pool.submit(worker, t) for t in range(THREADS)]:
                f.result()
    finally:
        for c in clients:
            c.close()
    assert checked["mlp"] + checked["gbt"] == THREADS * ROUNDS
    assert checked["gbt"] > 0 and checked["mlp"] > 0
    # Same onnxruntime, same file, same input: the server's answers are expected to be bit-identical.
    assert exact == checked, f"bit-identical replies: {exact} of {checked}"


def test_slow_model_does_not_stall_another(server):
    """While slow-model requests are queued on its single instance, an mlp request finishes before them."""
    n_slow = 5
    done: dict[str, float] = {}
    lock = threading.Lock()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    stats = lambda: c.get_inference_statistics("slow").model_stats[0].execution_count  # noqa: E731
    before = stats()

    def slow(i: int) -> None:
        with grpcclient.InferenceServerClient(server.grpc_url) as sc:
            x = np.full((1, 4), i, np.float32)
            res = infer(sc, "slow", {"x": x})
            np.testing.assert_array_equal(res.as_numpy("y"), x * 2)
        with lock:
            done[f"slow{i}"] = time.monotonic()

    try:
        with ThreadPoolExecutor(n_slow) as pool:
            futures = [pool.submit(slow, i) for i in range(n_slow)]
            # Once the first slow request has run, the others are in the server, queued behind it.
            deadline = time.monotonic() + RPC_TIMEOUT
            while stats() == before:
                assert time.monotonic() < deadline, "no slow request ran"
                time.sleep(0.005)
            x = np.ones((1, 32), np.float32)
            infer(c, "mlp", {"input": x})
            mlp_done = time.monotonic()
            for f in futures:
                f.result()
    finally:
        c.close()
    slow_done = sorted(done.values())
    assert len(slow_done) == n_slow
    # At most the request running when mlp arrived may finish first: the ones queued behind it finish later.
    later = [t for t in slow_done if t > mlp_done]
    assert len(later) >= n_slow - 2, f"mlp finished after {n_slow - len(later)} of {n_slow} slow requests"
