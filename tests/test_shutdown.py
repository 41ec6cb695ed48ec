"""SIGTERM while requests are in flight: every accepted request completes, new ones are refused, exit 0."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import RPC_TIMEOUT, http_status, infer
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.grpc_transports  # every test on each gRPC transport (conftest.py)

N_REQUESTS = 8


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(start_server, make_repo):
    srv = start_server(make_repo("slow", "mlp"))
    monitor = grpcclient.InferenceServerClient(srv.grpc_url)
    executions = lambda: monitor.get_inference_statistics("slow").model_stats[0].execution_count  # noqa: E731
    barrier = threading.Barrier(N_REQUESTS)

    def one(i: int) -> float:
        with grpcclient.InferenceServerClient(srv.grpc_url) as c:
            x = np.full((1, 4), i, np.float32)
            barrier.wait(timeout=30)
            res = infer(c, "slow", {"x": x}, request_id=str(i))
            assert res.get_response().id == str(i)
            np.testing.assert_array_equal(res.as_numpy("y"), x * 2)
            return time.monotonic()

    with ThreadPoolExecutor(N_REQUESTS) as pool:
        futures = [pool.submit(one, i) for i in range(N_REQUESTS)]
        # The slow model has one instance (~100 ms a request): once the first has run, the other seven were
        # sent together with it and are queued in the server.
        deadline = time.monotonic() + RPC_TIMEOUT
        while executions() == 0:
            assert time.monotonic() < deadline, "no slow request ran"
            time.sleep(0.005)
        monitor.close()
        srv.send_sigterm()
        sigterm_at = time.monotonic()
        # Draining: readiness goes down at once, while the queued requests still run.
        deadline = time.monotonic() + 10
        while http_status(srv.http_url + "/v2/health/ready") != 400:
            assert time.monotonic() < deadline, "readiness did not go down after SIGTERM"
            time.sleep(0.005)
        refused = None
        try:
            with grpcclient.InferenceServerClient(srv.grpc_url) as late:
                infer(late, "mlp", {"input": np.zeros((1, 32), np.float32)})
        except InferenceServerException as exc:
            refused = exc
        finished = [f.result(timeout=RPC_TIMEOUT) for f in futures]  # every request succeeded

    assert refused is not None, "a request sent after SIGTERM was served"
    # Usually UNAVAILABLE (the listener is closed); CANCELLED when the connection was accepted just before
    # gRPC core closed it and the call was then cancelled by the shutdown. Either way: not served.
    assert refused.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"), refused
    assert sum(t > sigterm_at for t in finished) >= 2, "the requests were not in flight at SIGTERM"
    rc = srv.wait(20)
    assert rc == 0, srv.stderr_text()
    log = srv.stderr_text()
    assert "stopping: finishing in-flight requests" in log and "stopped" in log
