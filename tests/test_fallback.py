"""Decision-plane fallback (server/fallback/): a real server whose model fails on some requests answers them
with its configured rule or constant, flags the reply (gRPC and HTTP response parameters) and counts it on
/metrics; a request shed from the queue gets the fallback too; a bad rule fails the load with its reason;
client errors never fall back."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import expect_error, index_rows
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from serverproc import ServerProcess

from skewless.server.fallback.rule import Rule, RuleError

TABLE = np.array([10.0, 20.0, 30.0, 40.0], np.float32)


def gather_model() -> bytes:
    """y = TABLE[idx] + x: onnxruntime fails the batch when an index is out of range (the model 'breaks')."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["g"], axis=0),
         helper.make_node("Squeeze", ["g", "axis"], ["gs"]),
         helper.make_node("Add", ["gs", "x"], ["y"])],
        "gather",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, ["b", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1])],
        [numpy_helper.from_array(TABLE.reshape(4, 1), "table"),
         numpy_helper.from_array(np.array([2], np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def backup_model() -> bytes:
    """The same interface, y = 3 x (idx unused): what the 'chained' model falls back to."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["y"])], "backup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, ["b", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1])],
        [numpy_helper.from_array(np.array(3.0, np.float32), "three")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def config(name: str, fallback: dict, extra: str = "") -> str:
    value = json.dumps(fallback).replace("\\", "\\\\").replace('"', '\\"')
    return (f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
            'input [{ name: "x" data_type: TYPE_FP32 dims: [1] }, { name: "idx" data_type: TYPE_INT64 dims: [1] }]\n'
            'output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]\n'
            f'parameters {{ key: "skewless.fallback" value {{ string_value: "{value}" }} }}\n{extra}')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("fallback_repo")
    data = gather_model()
    models = {
        "ruled": config("ruled", {"outputs": {"y": {"rule": "where(x > 0, x * 2 + 1, -1)"}}}),
        "constant": config("constant", {"outputs": {"y": [0.5]}, "on": ["failure"]}),
        # requests wait 200 ms for a batch, but the queue policy drops them after 1 ms: shed, every time
        "shed": config("shed", {"outputs": {"y": [7]}, "on": ["shed"]},
                       "dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 200000 "
                       "default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 1000 } }"),
        "chained": config("chained", {"model": "backup"}),
        "backup": config("backup", {"outputs": {"y": [0]}}),
        "badrule": config("badrule", {"outputs": {"y": {"rule": "__import__('os').system('true')"}}}),
    }
    for name, text in models.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").write_bytes(backup_model() if name == "backup" else data)
        (repo / name / "config.pbtxt").write_text(text)
    srv = ServerProcess(repo).start()
    try:
        yield srv
    finally:
        srv.stop()


def _inputs(x: np.ndarray, idx: np.ndarray, mod=grpcclient) -> list:
    a = mod.InferInput("x", list(x.shape), "FP32")
    a.set_data_from_numpy(x)
    b = mod.InferInput("idx", list(idx.shape), "INT64")
    b.set_data_from_numpy(idx)
    return [a, b]


def _fallback_counts(server) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "skewless_fallback_total":
                out[(s.labels["model"], s.labels["reason"])] = s.value
    return out


def test_failing_model_serves_rule_fallback_flagged_and_counted(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = np.array([[1.5], [-2.0], [3.0]], np.float32)
    good = client.infer("ruled", _inputs(x, np.array([[0], [1], [3]], np.int64)))
    np.testing.assert_allclose(good.as_numpy("y"), x + TABLE[[0, 1, 3]].reshape(3, 1))
    assert "fallback" not in good.get_response().parameters
    bad = client.infer("ruled", _inputs(x, np.array([[0], [9], [3]], np.int64)))  # index 9: the model fails
    y = bad.as_numpy("y")
    assert y.dtype == np.float32 and y.shape == (3, 1)
    np.testing.assert_allclose(y, np.where(x > 0, x * 2 + 1, -1))
    assert bad.get_response().parameters["fallback"].string_param == "failure"
    # HTTP/REST: the same flag in the reply's parameters
    hc = httpclient.InferenceServerClient(server.rest_url)
    res = hc.infer("ruled", _inputs(x, np.array([[0], [9], [3]], np.int64), httpclient))
    assert res.get_response()["parameters"] == {"fallback": "failure"}
    np.testing.assert_allclose(res.as_numpy("y"), np.where(x > 0, x * 2 + 1, -1))
    assert _fallback_counts(server)[("ruled", "failure")] == 2
    # a client error is the client's to see, never answered by the fallback
    expect_error(lambda: client.infer("ruled", _inputs(np.zeros((2, 3), np.float32),
                                                         np.zeros((2, 1), np.int64))), "INVALID_ARGUMENT")


def test_constant_fallback_broadcast_per_row(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    res = client.infer("constant", _inputs(np.zeros((5, 1), np.float32), np.full((5, 1), 4, np.int64)))
    np.testing.assert_array_equal(res.as_numpy("y"), np.full((5, 1), 0.5, np.float32))
    assert res.get_response().parameters["fallback"].string_param == "failure"


def test_model_fallback_runs_the_other_model(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = np.array([[1.0], [2.0]], np.float32)
    res = client.infer("chained", _inputs(x, np.array([[0], [7]], np.int64)))
    np.testing.assert_allclose(res.as_numpy("y"), 3 * x)
    assert res.get_response().parameters["fallback"].string_param == "failure"
    assert res.get_response().model_name == "chained"
    ok = client.infer("chained", _inputs(x, np.array([[0], [1]], np.int64)))
    np.testing.assert_allclose(ok.as_numpy("y"), x + TABLE[[0, 1]].reshape(2, 1))


def test_shed_request_gets_fallback(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    res = client.infer("shed", _inputs(np.ones((2, 1), np.float32), np.zeros((2, 1), np.int64)))
    np.testing.assert_array_equal(res.as_numpy("y"), np.full((2, 1), 7, np.float32))
    assert res.get_response().parameters["fallback"].string_param == "shed"
    assert _fallback_counts(server)[("shed", "shed")] >= 1
    # the statistics still say the model did not answer it
    stats = client.get_inference_statistics("shed", as_json=True)["model_stats"][0]["inference_stats"]
    assert int(stats["fail"].get("count", 0)) >= 1 and int(stats["success"].get("count", 0)) == 0


def test_bad_rule_fails_the_load_with_its_reason(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    state, reason = index_rows(client, "badrule")[("badrule", "1")]
    assert state == "UNAVAILABLE"
    assert "skewless.fallback" in reason and "__import__" in reason and "may not" in reason


@pytest.mark.parametrize("text", ["x.sum()", "open('f')", "x[idx]", "'a'", "lambda: 1", "[x for x in y]"])
def test_rule_language_refuses(text):
    with pytest.raises(RuleError):
        Rule(text, {"x", "idx"})


def test_rule_language_computes():
    x = np.array([[1.0, -2.0], [3.0, 4.0]])
    assert Rule("sum(x, 1) / 2 if x[:, 0] > 2 else 0", {"x"}).evaluate({"x": x}).tolist() == [0.0, 3.5]
    assert Rule("x[:, 1] >= 0 and not x[:, 0] > 2", {"x"}).evaluate({"x": x}).tolist() == [False, False]
    np.testing.assert_allclose(Rule("clip(sigmoid(x), 0.2, 0.8)", {"x"}).evaluate({"x": x}),
                               np.clip(1 / (1 + np.exp(-x)), 0.2, 0.8))
