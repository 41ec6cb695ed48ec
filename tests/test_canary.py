"""Canary splits through a real server and real tritonclient: sticky arms across requests and restarts, and
planted bad candidates (errors on some inputs, 3x slower, shifted outputs) rolled back within the window
with no failed request afterwards."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import add_constant_model, infer, write_versions
from serverproc import ServerProcess
from tritonclient.utils import InferenceServerException

from skewless.benchmarks.shadow_models import failing_model, heavy_model
from skewless.protos import skewless_traffic_pb2 as tpb
from skewless.protos import skewless_traffic_pb2_grpc as tpb_grpc

pytestmark = pytest.mark.slow  # the slow tier: servers of its own, planted bad candidates rolled back within guardrail windows

ALL = "max_batch_size: 8\nversion_policy: { all: {} }\n"
WINDOW_S = 4.0


def sticky_repo(path):
    write_versions(path / "m", {1: add_constant_model(1.0), 2: add_constant_model(1.0)}, ALL + (
        'parameters { key: "skewless.canary_version" value { string_value: "2" } }\n'
        'parameters { key: "skewless.canary_weight" value { string_value: "0.3" } }\n'
        'parameters { key: "skewless.traffic_key" value { string_value: "user" } }\n'
        'parameters { key: "skewless.canary_max_p99_ratio" value { string_value: "1000" } }\n'))
    return path


def test_sticky_across_requests_and_restarts(tmp_path):
    """A config-declared 30% canary: every caller keeps its arm on every request and after a restart."""
    sticky_repo(tmp_path)
    x = np.ones((1, 4), np.float32)
    seen: list[dict[str, str]] = []
    for _ in range(2):
        server = ServerProcess(tmp_path).start()
        try:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            arms: dict[str, str] = {}
            for i in range(150):
                user = f"user-{i}"
                for _ in range(2 if i < 30 else 1):  # some callers twice: the same arm both times
                    r = infer(client, "m", {"x": x}, parameters={"user": user})
                    assert arms.setdefault(user, r.get_response().model_version) == r.get_response().model_version
            pinned = infer(client, "m", {"x": x}, model_version="1", parameters={"user": "user-0"})
            assert pinned.get_response().model_version == "1"  # an explicit version is never rerouted
            with grpc.insecure_channel(server.grpc_url) as ch:
                status = tpb_grpc.TrafficAdminStub(ch).GetTraffic(tpb.ModelRef(model="m"))
            assert status.canary_state == "running"
            served = {a.arm: a.served for a in status.arms}
            candidate_requests = sum((2 if int(u.split("-")[1]) < 30 else 1) for u, v in arms.items() if v == "2")
            assert served["candidate"] == candidate_requests
            seen.append(arms)
        finally:
            server.stop()
    assert seen[0] == seen[1]
    share = sum(v == "2" for v in seen[0].values()) / len(seen[0])
    assert 0.18 < share < 0.42, share


def test_key_header_same_arm_over_grpc_and_http(tmp_path):
    """With --traffic-key-header, the header names the caller: the same arm over gRPC and HTTP/REST, and the
    header wins over the key parameter."""
    import tritonclient.http as httpclient

    server = ServerProcess(sticky_repo(tmp_path), "--traffic-key-header", "X-User").start()
    try:
        g = grpcclient.InferenceServerClient(server.grpc_url)
        h = httpclient.InferenceServerClient(server.rest_url)
        x = np.ones((1, 4), np.float32)
        hin = httpclient.InferInput("x", [1, 4], "FP32")
        hin.set_data_from_numpy(x)
        arms = set()
        for i in range(40):
            user = f"caller-{i}"
            via_grpc = infer(g, "m", {"x": x}, headers={"x-user": user}, parameters={"user": "someone-else"})
            via_http = h.infer("m", [hin], headers={"X-User": user})
            arm = via_grpc.get_response().model_version
            assert via_http.get_response()["model_version"] == arm
            arms.add(arm)
        assert arms == {"1", "2"}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("canary-repo")
    write_versions(repo / "c_err", {1: add_constant_model(1.0), 2: failing_model(1.0, 10)}, ALL)
    write_versions(repo / "c_shift", {1: add_constant_model(1.0), 2: add_constant_model(1.5)}, ALL)
    write_versions(repo / "c_slow", {1: heavy_model(1.0, 4, 2048), 2: heavy_model(1.0, 12, 2048)},
                   ALL + 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n')
    s = ServerProcess(repo).start()
    yield s
    s.stop()


@pytest.mark.parametrize("model,guardrails,expect", [
    ("c_err", tpb.CanaryGuardrails(max_p99_ratio=1000, max_psi=100), "error rate"),
    ("c_slow", tpb.CanaryGuardrails(max_p99_ratio=1.5, max_psi=100, max_error_rate_increase=1), "p99 latency"),
    ("c_shift", tpb.CanaryGuardrails(max_p99_ratio=1000), "drift PSI"),
])
def test_bad_canary_rolled_back_within_window(server, model, guardrails, expect):
    guardrails.window_s = WINDOW_S
    guardrails.min_requests = 10
    client = grpcclient.InferenceServerClient(server.grpc_url)
    rng = np.random.default_rng(0)
    with grpc.insecure_channel(server.grpc_url) as ch:
        admin = tpb_grpc.TrafficAdminStub(ch)
        started = time.monotonic()
        admin.SetCanary(tpb.SetCanaryRequest(model=model, candidate=2, weight=0.5, stable=1, guardrails=guardrails))
        i = 0
        failed_by_arm = {"1": 0, "2": 0}
        while admin.GetTraffic(tpb.ModelRef(model=model)).canary_state == "running":
            assert time.monotonic() - started < WINDOW_S + 6, "not rolled back within the window"
            x = rng.uniform(0, 1, (1, 4)).astype(np.float32)
            if model == "c_err" and i % 3 == 0:
                x[0, 0] = 12.0  # the candidate fails on these
            try:
                infer(client, model, {"x": x}, request_id=f"r{i}")
            except InferenceServerException:
                failed_by_arm["2"] += 1
            i += 1
        rollback_s = time.monotonic() - started
        status = admin.GetTraffic(tpb.ModelRef(model=model))
        print(f"{model}: rolled back after {rollback_s:.2f} s and {i} requests: {status.canary_reason}")
        assert status.canary_state == "rolled_back" and status.canary_weight == 0
        assert expect in status.canary_reason
        arms = {a.arm: a for a in status.arms}
        assert arms["stable"].failed == 0  # the stable arm never failed
        for j in range(40):  # after the rollback every request is served by the stable version, none fails
            x = rng.uniform(0, 1, (1, 4)).astype(np.float32)
            x[0, 0] = 12.0 if j % 2 else x[0, 0]
            r = infer(client, model, {"x": x}, request_id=f"after-{j}")
            assert r.get_response().model_version == "1"
        status = admin.GetTraffic(tpb.ModelRef(model=model))
        assert {a.arm: a.failed for a in status.arms}["stable"] == 0
        promoted = admin.PromoteCanary(tpb.ModelRef(model=model))
        assert promoted.canary_state == "promoted" and promoted.canary_weight == 1
        admin.SetCanary(tpb.SetCanaryRequest(model=model, stop=True))
