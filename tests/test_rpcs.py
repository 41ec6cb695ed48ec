"""Every RPC of inference.GRPCInferenceService, plus gRPC health, reflection and the HTTP probes."""

from __future__ import annotations

import queue
import threading
import time
from importlib import metadata

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from helpers import (
    expect_error,
    http_status,
    index_rows,
    infer,
    infer_input,
    output_arrays,
    raw_request,
    raw_stub,
)

pytestmark = pytest.mark.grpc_transports  # every test on each gRPC transport (conftest.py)

RNG = np.random.default_rng(1)


def test_server_live_and_ready(client):
    assert client.is_server_live()
    assert client.is_server_ready()


def test_server_metadata(client):
    md = client.get_server_metadata()
    assert md.name == "skewless"
    assert md.version == metadata.version("skewless")
    # Exactly what is implemented: clients branch on these names.
    assert sorted(md.extensions) == ["binary_tensor_data", "logging", "model_configuration", "model_repository",
                                    "statistics"]


def test_model_ready(client):
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "2")
    assert not client.is_model_ready("no_such_model")


def test_model_metadata(client):
    md = client.get_model_metadata("mlp", as_json=True)
    assert md["name"] == "mlp"
    assert md["versions"] == ["1"]
    assert md["platform"] == "onnxruntime_onnx"
    assert md["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "32"]}]
    assert md["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "2"]}]

    text = client.get_model_metadata("text")
    assert [(t.name, t.datatype, list(t.shape)) for t in text.inputs] == [
        ("text", "BYTES", [-1, 1]), ("scores", "FP16", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in text.outputs] == [
        ("label_id", "INT64", [-1, 1]), ("score_sum", "FP32", [-1, 1])]


def test_model_metadata_unknown_model(client):
    expect_error(lambda: client.get_model_metadata("nope"), "NOT_FOUND",
                 "Request for unknown model: 'nope' is not found")
    expect_error(lambda: client.get_model_metadata("mlp", "9"), "NOT_FOUND")


def test_model_config_auto_completed(client):
    """gbt ships without config.pbtxt: everything comes from the ONNX model (Triton's auto-complete)."""
    cfg = client.get_model_config("gbt", as_json=True)["config"]
    assert cfg["name"] == "gbt"
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["max_batch_size"] == 4
    assert "dynamic_batching" in cfg
    assert [(t["name"], t["data_type"], t.get("dims")) for t in cfg["input"]] == [("features", "TYPE_FP32", ["8"])]
    outputs = {t["name"]: t for t in cfg["output"]}
    assert set(outputs) == {"label", "probabilities"}
    assert outputs["label"]["data_type"] == "TYPE_INT64"
    # A batch-only tensor is [1] to clients and [] to the model, as Triton's onnxruntime backend completes it.
    assert outputs["label"]["dims"] == ["1"] and outputs["label"]["reshape"] == {}
    assert outputs["probabilities"]["data_type"] == "TYPE_FP32"
    assert outputs["probabilities"]["dims"] == ["2"]
    assert cfg["version_policy"] == {"latest": {"num_versions": 1}}
    assert cfg["instance_group"] and int(cfg["instance_group"][0]["count"]) >= 1


def test_reshaped_output_comes_back_in_config_dims(client):
    meta = {o.name: list(o.shape) for o in client.get_model_metadata("gbt").outputs}
    assert meta["label"] == [-1, 1]
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    res = infer(client, "gbt", {"features": x})
    label, proba = res.as_numpy("label"), res.as_numpy("probabilities")
    assert label.shape == (3, 1) and proba.shape == (3, 2)
    np.testing.assert_array_equal(label[:, 0], (proba[:, 1] > 0.5).astype(np.int64))


def test_model_config_explicit(client):
    cfg = client.get_model_config("mlp").config
    assert cfg.max_batch_size == 256
    assert [i.name for i in cfg.input] == ["input"]
    assert list(cfg.input[0].dims) == [32]


def test_model_infer(client):
    a = RNG.standard_normal((3, 16)).astype(np.float32)
    b = RNG.standard_normal((3, 16)).astype(np.float32)
    res = infer(client, "add_sub", {"INPUT0": a, "INPUT1": b}, request_id="req-42")
    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), a - b)
    resp = res.get_response()
    assert resp.id == "req-42"
    assert resp.model_name == "add_sub"
    assert resp.model_version == "1"


def test_requested_output_subset(client):
    a = RNG.standard_normal((2, 16)).astype(np.float32)
    b = RNG.standard_normal((2, 16)).astype(np.float32)
    res = infer(client, "add_sub", {"INPUT0": a, "INPUT1": b}, outputs=["OUTPUT1"])
    assert [o.name for o in res.get_response().outputs] == ["OUTPUT1"]
    assert res.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), a - b)

    res = infer(client, "add_sub", {"INPUT0": a, "INPUT1": b}, outputs=["OUTPUT1", "OUTPUT0"])
    assert [o.name for o in res.get_response().outputs] == ["OUTPUT1", "OUTPUT0"]
    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), a + b)


def test_model_stream_infer(client, server):
    """Several requests on one stream: each reply carries its id and its own result; a bad request yields
    an error for itself only and the stream goes on."""
    results: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    sent = {}
    try:
        for i in range(6):
            a = np.full((1, 16), i, np.float32)
            b = RNG.standard_normal((1, 16)).astype(np.float32)
            sent[f"s{i}"] = (a, b)
            c.async_stream_infer("add_sub", [infer_input("INPUT0", a), infer_input("INPUT1", b)],
                                 request_id=f"s{i}")
            if i == 2:  # wrong datatype: FP64 for an FP32 input
                bad = [infer_input("INPUT0", a.astype(np.float64)), infer_input("INPUT1", b)]
                c.async_stream_infer("add_sub", bad, request_id="bad")
        got = [results.get(timeout=30) for _ in range(len(sent) + 1)]
    finally:
        c.stop_stream()
        c.close()
    errors = [e for r, e in got if e is not None]
    assert len(errors) == 1
    assert "unexpected datatype FP64 for inference input 'INPUT0'" in errors[0].message()
    oks = {r.get_response().id: r for r, e in got if e is None}
    assert set(oks) == set(sent)
    for rid, (a, b) in sent.items():
        np.testing.assert_array_equal(oks[rid].as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(oks[rid].as_numpy("OUTPUT1"), a - b)


def test_stream_messages_each_get_their_own_rows(client, stub, shared_repo):
    """200 messages sent at once on one stream to the example MLP (adaptive batching): each reply carries its
    request's id and exactly onnxruntime's result for its row, whether it ran alone or in a batch."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(shared_repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((200, 32)).astype(np.float32)
    want = sess.run(["probabilities"], {"input": x})[0]
    before = _stats(client, "mlp")
    requests = [raw_request("mlp", [("input", "FP32", [1, 32], x[i:i + 1].tobytes())], request_id=f"m{i}")
                for i in range(len(x))]
    replies = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert len(replies) == len(x) and all(r.error_message == "" for r in replies)
    assert sorted(r.infer_response.id for r in replies) == sorted(f"m{i}" for i in range(len(x)))
    for r in replies:
        i = int(r.infer_response.id[1:])
        np.testing.assert_allclose(output_arrays(r.infer_response)["probabilities"], want[i:i + 1], rtol=1e-5,
                                   atol=1e-6)
    assert _stats(client, "mlp").inference_count - before.inference_count == len(x)


def slow_batching_server(start_server, make_repo):
    """A server of the test's own with the slow model (one instance, ~100 ms a batch) batching."""
    repo = make_repo("slow")
    cfg = repo / "slow" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "\ndynamic_batching { }\n")
    return start_server(repo)


def slow_request(value: float, rid: str):
    x = np.full((1, 4), value, np.float32)
    return raw_request("slow", [("x", "FP32", [1, 4], x.tobytes())], request_id=rid)


def assert_only_busy_and_after_ran(srv, stub, succeeded: int = 2) -> None:
    """One more request ('after', queued behind 'busy'), then the statistics: those two ran, nothing else;
    ``succeeded`` of them were answered (inference_count counts only those rows, as Triton's does)."""
    assert output_arrays(stub.ModelInfer(slow_request(5.0, "after"), timeout=60))["y"][0, 0] == 10.0
    with grpcclient.InferenceServerClient(srv.grpc_url) as c:
        stats = _stats(c, "slow")
    assert stats.inference_count == succeeded and stats.execution_count == 2


def test_stream_messages_queued_behind_a_busy_instance_are_merged(start_server, make_repo):
    """Messages arriving on a stream while the model's one instance computes are merged into batches (the
    slow model takes ~100 ms a batch), and each reply still carries its own rows."""
    srv = slow_batching_server(start_server, make_repo)
    channel, stub = raw_stub(srv.grpc_url)
    try:
        n = 24
        x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
        requests = [raw_request("slow", [("x", "FP32", [1, 4], x[i:i + 1].tobytes())], request_id=f"s{i}")
                    for i in range(n)]
        replies = list(stub.ModelStreamInfer(iter(requests), timeout=60))
        assert len(replies) == n and all(r.error_message == "" for r in replies)
        for r in replies:
            i = int(r.infer_response.id[1:])
            np.testing.assert_array_equal(output_arrays(r.infer_response)["y"], 2 * x[i:i + 1])
        with grpcclient.InferenceServerClient(srv.grpc_url) as c:
            stats = _stats(c, "slow")
        assert stats.inference_count == n and stats.execution_count < n  # merged
    finally:
        channel.close()


def test_requests_given_up_by_their_clients_are_never_computed(start_server, make_repo):
    """Queued behind a busy instance, a request whose client deadline passes and one whose client cancels
    are dropped before compute (the server sees the cancelled RPC), as ModelStatistics shows."""
    srv = slow_batching_server(start_server, make_repo)
    channel, stub = raw_stub(srv.grpc_url)

    try:
        busy = stub.ModelInfer.future(slow_request(1.0, "busy"), timeout=60)  # ~100 ms on the one instance
        time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(slow_request(2.0, "late"), timeout=0.03)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gone = stub.ModelInfer.future(slow_request(3.0, "gone"), timeout=60)
        time.sleep(0.01)
        assert gone.cancel()
        assert output_arrays(busy.result())["y"][0, 0] == 2.0
        assert_only_busy_and_after_ran(srv, stub)
    finally:
        channel.close()


def test_a_closed_streams_queued_messages_are_never_computed(start_server, make_repo):
    """The client cancels its stream while three of its messages wait behind the first one's batch: they
    are dropped uncomputed; the first, already running, completes."""
    srv = slow_batching_server(start_server, make_repo)
    channel, stub = raw_stub(srv.grpc_url)
    done_sending = threading.Event()

    def messages():
        yield slow_request(1.0, "busy")  # ~100 ms on the one instance
        time.sleep(0.02)
        for i in range(3):
            yield slow_request(2.0 + i, f"queued{i}")
        done_sending.wait(10)

    try:
        call = stub.ModelStreamInfer(messages(), timeout=60)
        time.sleep(0.05)
        call.cancel()
        done_sending.set()
        assert_only_busy_and_after_ran(srv, stub, succeeded=1)  # 'busy' ran, but its stream was gone
    finally:
        done_sending.set()
        channel.close()


def _stats(client, model):
    s = client.get_inference_statistics(model).model_stats
    assert len(s) == 1
    return s[0]


def test_model_statistics(client, stub):
    before = _stats(client, "add_sub")
    rows = [1, 3, 8, 2]
    for n in rows:
        x = RNG.standard_normal((n, 16)).astype(np.float32)
        infer(client, "add_sub", {"INPUT0": x, "INPUT1": x})
    with pytest.raises(grpc.RpcError):  # decoded against the model, so it counts as a failure of it
        stub.ModelInfer(raw_request("add_sub", [("INPUT0", "FP32", [1, 16], b"\0" * 4),
                                                ("INPUT1", "FP32", [1, 16], b"\0" * 64)]))
    after = _stats(client, "add_sub")
    assert after.name == "add_sub" and after.version == "1"
    assert after.inference_count - before.inference_count == sum(rows)  # rows, not requests
    assert after.execution_count - before.execution_count == len(rows)
    assert after.inference_stats.success.count - before.inference_stats.success.count == len(rows)
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.last_inference >= before.last_inference and after.last_inference > 0
    sizes = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    old_sizes = {b.batch_size: b.compute_infer.count for b in before.batch_stats}
    for n in set(rows):
        assert sizes.get(n, 0) - old_sizes.get(n, 0) == rows.count(n)


def test_model_statistics_all_and_unknown(client):
    names = {(s.name, s.version) for s in client.get_inference_statistics().model_stats}
    assert {("mlp", "1"), ("gbt", "1"), ("add_sub", "1")} <= names
    expect_error(lambda: client.get_inference_statistics("nope"), "NOT_FOUND")


def test_repository_index(client):
    rows = index_rows(client)
    for name in ("mlp", "gbt", "text", "identity_all", "add_sub", "slow"):
        assert rows[(name, "1")] == ("READY", ""), name
    ready_only = client.get_model_repository_index(as_json=True)["models"]
    assert all(m.get("state") == "READY" for m in ready_only)


def test_load_unload_refused_in_none_mode(client):
    expect_error(lambda: client.load_model("mlp"), "FAILED_PRECONDITION",
                 "explicit model load / unload is not allowed with --model-control-mode none")
    expect_error(lambda: client.unload_model("mlp"), "FAILED_PRECONDITION", "--model-control-mode explicit")
    assert client.is_model_ready("mlp")


@pytest.mark.parametrize("call", [
    lambda c: c.register_system_shared_memory("r", "/key", 16),
    lambda c: c.unregister_system_shared_memory(),
    lambda c: c.register_cuda_shared_memory("r", b"AAAA", 0, 16),
    lambda c: c.unregister_cuda_shared_memory(),
], ids=["shm_register", "shm_unregister", "cuda_shm_register", "cuda_shm_unregister"])
def test_client_shared_memory_is_off_by_default(client, call):
    """As in Triton, clients may register shared memory only when the server allows it (--allow-client-shm);
    status answers either way."""
    expect_error(lambda: call(client), "UNIMPLEMENTED", "Client shared memory is disabled. Start the server "
                 "with '--allow-client-shm' to enable.")
    assert len(client.get_system_shared_memory_status().regions) == 0


# -- grpc.health.v1, reflection, HTTP probes ---------------------------------------------------------
def test_grpc_health(server):
    with grpc.insecure_channel(server.grpc_url) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == serving
        assert health.Check(health_pb2.HealthCheckRequest(service="mlp"), timeout=10).status == serving
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no_such_model"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_reflection(server):
    with grpc.insecure_channel(server.grpc_url) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = db.get_services()
        assert "inference.GRPCInferenceService" in services
        assert "grpc.health.v1.Health" in services
        pool = descriptor_pool.DescriptorPool(db)
        svc = pool.FindServiceByName("inference.GRPCInferenceService")
        methods = {m.name for m in svc.methods}
        assert {"ModelInfer", "ModelStreamInfer", "ModelConfig", "RepositoryModelLoad"} <= methods
        infer_req = pool.FindMessageTypeByName("inference.ModelInferRequest")
        assert infer_req.fields_by_name["raw_input_contents"].number == 7


def test_http_probes(server):
    assert http_status(server.http_url + "/v2/health/live") == 200
    assert http_status(server.http_url + "/v2/health/ready") == 200
    assert http_status(server.http_url + "/no/such/route") == 404
