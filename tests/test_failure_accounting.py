"""Deadline, cancel and success accounting against a real server, for unary gRPC, streams and HTTP/REST.

A request whose deadline passes (in the queue or while its batch computes) counts as a deadline drop
(``nv_inference_request_failure{reason="OTHER"}``, ``skewless_requests_deadline_dropped_total``), one its client
cancels as CANCELED; neither is a success, and ``nv_inference_count`` counts only the rows of requests that
succeeded, as Triton's does. The model is slow by design (one instance, ~0.8 s a batch), so the order of events
does not depend on the machine's speed; nothing here asserts a duration.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import RPC_TIMEOUT, output_arrays, raw_request, raw_stub, wait_until
from prometheus_client.parser import text_string_to_metric_families
from serverproc import ServerProcess

from skewless.examples.generate import make_slow_model

pytestmark = [pytest.mark.slow, pytest.mark.grpc_transports]

MODEL = "slow"
SLOW_MS = 800.0


@pytest.fixture(scope="module")
def srv(make_repo, grpc_transport):
    repo = make_repo(MODEL)
    make_slow_model(repo / MODEL / "1" / "model.onnx", SLOW_MS)
    cfg = repo / MODEL / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "\ndynamic_batching { }\n")
    proc = ServerProcess(repo).start()
    yield proc
    proc.assert_clean_exit()


def request(value: float, rid: str):
    return raw_request(MODEL, [("x", "FP32", [1, 4], np.full((1, 4), value, np.float32).tobytes())], request_id=rid)


def snapshot(srv: ServerProcess) -> dict[str, float]:
    """ModelStatistics and the metrics that account for requests, now."""
    with grpcclient.InferenceServerClient(srv.grpc_url) as c:
        st = c.get_inference_statistics(MODEL).model_stats[0]
    with urllib.request.urlopen(f"{srv.http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {"success": st.inference_stats.success.count, "fail": st.inference_stats.fail.count,
           "inference_count": st.inference_count, "execution_count": st.execution_count}
    labels = {"model": MODEL, "version": "1"}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name = s.name.removesuffix("_total")  # the parser names every counter's sample ..._total
            if {k: s.labels.get(k) for k in labels} != labels:
                continue
            if name == "nv_inference_request_failure":
                out[f"failure_{s.labels['reason']}"] = s.value
            elif name in ("nv_inference_request_success", "nv_inference_count", "skewless_requests_deadline_dropped",
                          "skewless_requests_cancelled", "skewless_requests_in_flight"):
                out[name] = s.value
    return out


def in_flight(srv: ServerProcess) -> float:
    return snapshot(srv)["skewless_requests_in_flight"]


def wait_in_flight(srv: ServerProcess, n: int) -> None:
    wait_until(lambda: in_flight(srv) == n, RPC_TIMEOUT, f"{n} request(s) in flight")


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0) for k in after if k != "skewless_requests_in_flight"}


def expected(success: int = 0, other: int = 0, canceled: int = 0, rows: int = 0, executions: int = 0
             ) -> dict[str, float]:
    """What the statistics and metrics must have moved by; the metrics read ModelStatistics' own figures."""
    return {"success": success, "fail": other + canceled, "inference_count": rows, "execution_count": executions,
            "nv_inference_request_success": success, "nv_inference_count": rows,
            "failure_REJECTED": 0, "failure_CANCELED": canceled, "failure_BACKEND": 0, "failure_OTHER": other,
            "skewless_requests_deadline_dropped": other, "skewless_requests_cancelled": canceled}


def test_unary_deadlines_and_cancels_are_counted_as_such(srv):
    channel, stub = raw_stub(srv.grpc_url)
    try:
        wait_in_flight(srv, 0)
        before = snapshot(srv)
        # Two requests whose deadline passes while they wait behind a busy instance.
        busy = stub.ModelInfer.future(request(1.0, "busy"), timeout=60)
        wait_in_flight(srv, 1)
        late = [stub.ModelInfer.future(request(2.0, f"late{i}"), timeout=0.2) for i in range(2)]
        for f in late:
            with pytest.raises(grpc.RpcError) as err:
                f.result()
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert output_arrays(busy.result())["y"][0, 0] == 2.0
        wait_in_flight(srv, 0)
        # A deadline that passes while the request's own batch computes: not a success.
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request(3.0, "late-in-compute"), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_in_flight(srv, 0)
        # The client cancels while its batch computes: not a success either.
        gone = stub.ModelInfer.future(request(4.0, "cancel-in-compute"), timeout=60)
        wait_in_flight(srv, 1)
        assert gone.cancel()
        wait_in_flight(srv, 0)
        # The client cancels while queued: dropped uncomputed.
        busy = stub.ModelInfer.future(request(5.0, "busy2"), timeout=60)
        wait_in_flight(srv, 1)
        queued = stub.ModelInfer.future(request(6.0, "cancel-queued"), timeout=60)
        wait_in_flight(srv, 2)
        assert queued.cancel()
        assert output_arrays(busy.result())["y"][0, 0] == 10.0
        wait_in_flight(srv, 0)
        assert delta(before, snapshot(srv)) == expected(success=2, other=3, canceled=2, rows=2, executions=4)
    finally:
        channel.close()


def test_a_streams_deadline_is_its_messages_deadline(srv):
    """A stream whose deadline passes with one message computing and two queued: three deadline drops (the
    queued ones uncomputed), no success; a stream the client cancels: its messages count as cancelled."""
    channel, stub = raw_stub(srv.grpc_url)
    hold = threading.Event()

    def messages(n: int):
        for i in range(n):
            yield request(float(i), f"s{i}")
        hold.wait(30)

    try:
        wait_in_flight(srv, 0)
        before = snapshot(srv)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ModelStreamInfer(messages(3), timeout=0.4))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_in_flight(srv, 0)
        assert delta(before, snapshot(srv)) == expected(other=3, executions=1)

        before = snapshot(srv)
        call = stub.ModelStreamInfer(messages(2), timeout=60)
        wait_in_flight(srv, 2)
        call.cancel()
        wait_in_flight(srv, 0)
        assert delta(before, snapshot(srv)) == expected(canceled=2, executions=1)
    finally:
        hold.set()
        channel.close()


def _rest_post(srv: ServerProcess, value: float) -> http.client.HTTPConnection:
    """Sends an inference request over HTTP/REST and leaves it unanswered (the caller hangs up)."""
    host, port = srv.rest_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=RPC_TIMEOUT)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}]})
    conn.request("POST", f"/v2/models/{MODEL}/infer", body=body, headers={"Content-Type": "application/json"})
    return conn


def test_rest_clients_that_hang_up_are_counted_as_cancelled(srv):
    """One REST request computing and one queued; both clients hang up: two cancels, the queued one never
    computed, no success. Then a REST request that is answered counts as a success of one row."""
    wait_in_flight(srv, 0)
    before = snapshot(srv)
    computing = _rest_post(srv, 1.0)
    wait_in_flight(srv, 1)
    queued = _rest_post(srv, 2.0)
    wait_in_flight(srv, 2)
    for conn in (queued, computing):
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
    wait_in_flight(srv, 0)
    assert delta(before, snapshot(srv)) == expected(canceled=2, executions=1)

    before = snapshot(srv)
    conn = _rest_post(srv, 3.0)
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["outputs"][0]["data"][0] == 6.0
    conn.close()
    assert delta(before, snapshot(srv)) == expected(success=1, rows=1, executions=1)
