"""Model repository: explicit load / unload / reload, failed loads, config override and completion checks,
version policies, and a broken model next to good ones."""

from __future__ import annotations

import json
import shutil

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from conftest import VERSION_POLICIES, version_offset
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import (
    EXAMPLE_MODELS,
    expect_error,
    http_status,
    index_rows,
    infer,
    mlp_variant_model,
)

EXPLICIT = ("--model-control-mode", "explicit")
RNG = np.random.default_rng(3)


def ort_run(model: bytes | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)


def health_status(url: str, service: str) -> int:
    with grpc.insecure_channel(url) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


@pytest.fixture
def explicit(start_server, make_repo):
    """explicit(*models, load=[...]) -> (server, client) on a fresh copy of those models."""
    clients = []

    def start(*models: str, load: tuple[str, ...] = ()):
        repo = make_repo(*models)
        args = [*EXPLICIT]
        for name in load:
            args += ["--load-model", name]
        srv = start_server(repo, *args)
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        clients.append(c)
        return srv, c, repo

    yield start
    for c in clients:
        c.close()


def test_explicit_load_and_unload(explicit):
    srv, c, _ = explicit("mlp", "add_sub", "gbt", load=("mlp",))
    assert c.is_model_ready("mlp")
    assert not c.is_model_ready("add_sub") and not c.is_model_ready("gbt")
    rows = index_rows(c)
    assert rows[("mlp", "1")] == ("READY", "")
    assert rows[("add_sub", "")][0] == "UNAVAILABLE" and rows[("gbt", "")][0] == "UNAVAILABLE"
    assert [m["name"] for m in c.get_model_repository_index(as_json=True)["models"]] == ["add_sub", "gbt", "mlp"]
    assert c.is_server_ready()  # models nobody asked for do not count against readiness

    c.load_model("add_sub")
    assert c.is_model_ready("add_sub")
    assert health_status(srv.grpc_url, "add_sub") == health_pb2.HealthCheckResponse.SERVING
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    np.testing.assert_array_equal(infer(c, "add_sub", {"INPUT0": x, "INPUT1": x}).as_numpy("OUTPUT0"), x + x)

    c.unload_model("add_sub")
    assert not c.is_model_ready("add_sub")
    assert c.is_model_ready("mlp")
    assert c.is_server_ready()
    assert health_status(srv.grpc_url, "add_sub") == health_pb2.HealthCheckResponse.NOT_SERVING
    exc = expect_error(lambda: infer(c, "add_sub", {"INPUT0": x, "INPUT1": x}), "UNAVAILABLE", "add_sub")
    assert "no available versions" in exc.message()
    assert index_rows(c, "add_sub")[("add_sub", "1")] == ("UNAVAILABLE", "unloaded")
    c.unload_model("add_sub")  # unloading an unloaded model succeeds, as in Triton

    expect_error(lambda: c.load_model("no_such_model"), "NOT_FOUND", "failed to load 'no_such_model'")
    expect_error(lambda: c.unload_model("no_such_model"), "NOT_FOUND", "failed to unload 'no_such_model'")
    expect_error(lambda: c.load_model("../mlp"), "NOT_FOUND")

    c.load_model("add_sub")  # and back
    np.testing.assert_array_equal(infer(c, "add_sub", {"INPUT0": x, "INPUT1": x}).as_numpy("OUTPUT1"), x - x)


def test_reload_new_version_and_failed_reload(explicit):
    srv, c, repo = explicit("mlp", load=("mlp",))
    x = RNG.standard_normal((5, 32)).astype(np.float32)
    res = infer(c, "mlp", {"input": x})
    assert res.get_response().model_version == "1"
    want_v1 = ort_run(str(EXAMPLE_MODELS / "mlp" / "1" / "model.onnx"), {"input": x})[0]
    np.testing.assert_allclose(res.as_numpy("probabilities"), want_v1, rtol=1e-6, atol=1e-7)

    # A new version folder with a different model of the same interface; policy "latest 1" serves it.
    v2 = mlp_variant_model(seed=11)
    (repo / "mlp" / "2").mkdir()
    (repo / "mlp" / "2" / "model.onnx").write_bytes(v2)
    c.load_model("mlp")
    assert c.get_model_metadata("mlp").versions == ["2"]
    assert c.is_model_ready("mlp", "2") and not c.is_model_ready("mlp", "1")
    want_v2 = ort_run(v2, {"input": x})[0]
    assert not np.allclose(want_v1, want_v2)
    res = infer(c, "mlp", {"input": x})
    assert res.get_response().model_version == "2"
    np.testing.assert_allclose(res.as_numpy("probabilities"), want_v2, rtol=1e-6, atol=1e-7)
    exc = expect_error(lambda: infer(c, "mlp", {"input": x}, model_version="1"), "NOT_FOUND", "'mlp' version 1")
    assert exc.message() == "Request for unknown model: 'mlp' version 1 is not found"

    # A failed reload: version 3 is garbage. The load fails, version 2 keeps serving, the index says why.
    (repo / "mlp" / "3").mkdir()
    (repo / "mlp" / "3" / "model.onnx").write_bytes(b"\x08\x07 definitely not onnx " * 50)
    exc = expect_error(lambda: c.load_model("mlp"), "INVALID_ARGUMENT", "load failed for model 'mlp': version 3")
    assert "onnxruntime failed to load" in exc.message()
    res = infer(c, "mlp", {"input": x})
    assert res.get_response().model_version == "2"
    np.testing.assert_allclose(res.as_numpy("probabilities"), want_v2, rtol=1e-6, atol=1e-7)
    rows = index_rows(c, "mlp")
    assert rows[("mlp", "2")] == ("READY", "")
    state, reason = rows[("mlp", "3")]
    assert state == "UNAVAILABLE"
    assert "onnxruntime failed to load" in reason and "model.onnx" in reason
    assert c.is_model_ready("mlp") and not c.is_model_ready("mlp", "3")
    assert c.is_server_ready()
    assert health_status(srv.grpc_url, "mlp") == health_pb2.HealthCheckResponse.SERVING


def test_load_with_config_override(explicit):
    _, c, _ = explicit("add_sub")
    override = {"max_batch_size": 2, "version_policy": {"specific": {"versions": [1]}}}
    c.load_model("add_sub", config=json.dumps(override))
    cfg = c.get_model_config("add_sub").config
    assert cfg.max_batch_size == 2
    assert [(t.name, list(t.dims)) for t in cfg.input] == [("INPUT0", [16]), ("INPUT1", [16])]  # completed
    assert list(cfg.version_policy.specific.versions) == [1]
    x2 = np.ones((2, 16), np.float32)
    infer(c, "add_sub", {"INPUT0": x2, "INPUT1": x2})
    x3 = np.ones((3, 16), np.float32)
    expect_error(lambda: infer(c, "add_sub", {"INPUT0": x3, "INPUT1": x3}), "INVALID_ARGUMENT",
                 "inference request batch-size must be <= 2 for 'add_sub'")

    # Not JSON: refused, and the loaded configuration keeps serving.
    expect_error(lambda: c.load_model("add_sub", config="{not json"), "INVALID_ARGUMENT",
                 "failed to load 'add_sub': the 'config' load parameter is not a valid JSON ModelConfig")
    assert c.get_model_config("add_sub").config.max_batch_size == 2
    # Override files that are not a model: refused before onnxruntime sees them (their external data is checked
    # first), the loaded versions keep serving (test_load_overrides.py)
    expect_error(lambda: c.load_model("add_sub", config=json.dumps(override), files={"file:1/model.onnx": b"x"}),
                 "INVALID_ARGUMENT", "failed to load 'add_sub', model file '1/model.onnx' is not a valid ONNX model")
    assert c.get_model_config("add_sub").config.max_batch_size == 2

    c.load_model("add_sub")  # without an override the config.pbtxt applies again
    assert c.get_model_config("add_sub").config.max_batch_size == 8
    infer(c, "add_sub", {"INPUT0": x3, "INPUT1": x3})


def _add_sub_config(name: str, in0: str = 'name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ]') -> str:
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
            f'input [ {{ {in0} }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]\n'
            'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]\n')


BAD_CONFIGS = {
    "bad_dtype": (_add_sub_config("bad_dtype", 'name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ]'),
                  "unexpected datatype TYPE_INT32 for input 'INPUT0' of model 'bad_dtype': the ONNX model has "
                  "TYPE_FP32"),
    "bad_input": (_add_sub_config("bad_input", 'name: "NOPE" data_type: TYPE_FP32 dims: [ 16 ]'),
                  "unexpected input 'NOPE' in the config of model 'bad_input'"),
    "bad_dims": (_add_sub_config("bad_dims", 'name: "INPUT0" data_type: TYPE_FP32 dims: [ 15 ]'),
                 "input 'INPUT0' of model 'bad_dims' has dims [15] in the config but [16] in the ONNX model"),
    "bad_name": (_add_sub_config("other"), "config name 'other' does not match the model directory name 'bad_name'"),
    "bad_syntax": ('name: "bad_syntax"\nmax_batch_size: [oops\n', "failed to parse"),
    "bad_platform": (_add_sub_config("bad_platform").replace("onnxruntime_onnx", "tensorrt_plan"),
                     "unsupported platform 'tensorrt_plan' for model 'bad_platform'"),
}


def test_configs_that_contradict_the_model_fail_with_a_reason(explicit):
    srv, c, repo = explicit("add_sub", "broken", load=("add_sub",))
    for name, (config, _) in BAD_CONFIGS.items():
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(repo / "add_sub" / "1" / "model.onnx", repo / name / "1" / "model.onnx")
        (repo / name / "config.pbtxt").write_text(config)
    expected = {name: why for name, (_, why) in BAD_CONFIGS.items()}
    expected["broken"] = "onnxruntime failed to load"
    for name, why in expected.items():
        exc = expect_error(lambda n=name: c.load_model(n), "INVALID_ARGUMENT", why)
        assert name in exc.message()
        assert not c.is_model_ready(name)
        rows = index_rows(c, name)
        assert any(state == "UNAVAILABLE" and why in reason for state, reason in rows.values()), (name, rows)
    # Strict readiness (as Triton's): models asked for that failed to load make the server not ready.
    assert not c.is_server_ready()
    # The good model was never disturbed.
    x = np.ones((1, 16), np.float32)
    np.testing.assert_array_equal(infer(c, "add_sub", {"INPUT0": x, "INPUT1": x}).as_numpy("OUTPUT0"), x + x)


def test_broken_model_at_startup(start_server, make_repo):
    """A model that cannot load does not keep the others from serving; it shows UNAVAILABLE with its reason,
    and strict readiness reports the server not ready."""
    srv = start_server(make_repo("mlp", "broken"))
    with grpcclient.InferenceServerClient(srv.grpc_url) as c:
        assert c.is_server_live()
        assert c.is_model_ready("mlp") and not c.is_model_ready("broken")
        state, reason = index_rows(c, "broken")[("broken", "1")]
        assert state == "UNAVAILABLE"
        assert "onnxruntime failed to load" in reason and "broken" in reason
        assert not c.is_server_ready()
        infer(c, "mlp", {"input": np.zeros((1, 32), np.float32)})
        expect_error(lambda: infer(c, "broken", {"x": np.zeros((1, 4), np.float32)}), "UNAVAILABLE", "'broken'")
    assert http_status(srv.http_url + "/v2/health/ready") == 400
    assert http_status(srv.http_url + "/v2/health/live") == 200
    assert health_status(srv.grpc_url, "") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_status(srv.grpc_url, "mlp") == health_pb2.HealthCheckResponse.SERVING


POLICY_VERSIONS = {"vp_all": [1, 2, 3], "vp_latest2": [2, 3], "vp_specific": [1, 3]}
assert set(POLICY_VERSIONS) == set(VERSION_POLICIES)


@pytest.mark.parametrize("name", sorted(POLICY_VERSIONS))
def test_version_policy(client, name):
    served = POLICY_VERSIONS[name]
    assert client.get_model_metadata(name).versions == [str(v) for v in served]
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    for v in (1, 2, 3):
        assert client.is_model_ready(name, str(v)) == (v in served)
        if v in served:
            res = infer(client, name, {"x": x}, model_version=str(v))
            assert res.get_response().model_version == str(v)
            np.testing.assert_array_equal(res.as_numpy("y"), x + np.float32(version_offset(v)))
        else:
            expect_error(lambda v=v: infer(client, name, {"x": x}, model_version=str(v)), "NOT_FOUND",
                         f"Request for unknown model: '{name}' version {v} is not found")
    res = infer(client, name, {"x": x})  # no version: the highest served
    assert res.get_response().model_version == str(max(served))
    stats = {s.version for s in client.get_inference_statistics(name).model_stats}
    assert stats == {str(v) for v in served}
