"""The HTTP/REST API through an unmodified tritonclient.http client, plus raw HTTP for exact bodies and bad input.

Same shared server as the gRPC tests (its ``rest_url``); errors are compared with what gRPC says for the same
request, since both transports share the data plane's checks.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import shutil
import threading
import urllib.request
import zlib

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import EXAMPLE_MODELS, RPC_TIMEOUT, infer, wait_until
from test_datatypes import sample
from tritonclient.utils import InferenceServerException

from skewless.examples.generate import IDENTITY_DATATYPES, churn_dataset
from skewless.server.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
)
from skewless.server.frontend.http_rest import status_of


@pytest.fixture(scope="session")
def rest(server):
    c = httpclient.InferenceServerClient(server.rest_url, network_timeout=RPC_TIMEOUT)
    yield c
    c.close()


def raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One request over http.client: (status, headers, body bytes)."""
    host, port = server.rest_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=RPC_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def http_input(name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def http_error(fn) -> InferenceServerException:
    try:
        fn()
    except InferenceServerException as exc:
        return exc
    raise AssertionError("expected an error, the call succeeded")


# -- health, metadata, config, statistics ------------------------------------------------------------------
def test_health_and_server_metadata(server, rest):
    assert rest.is_server_live() and rest.is_server_ready()
    md = rest.get_server_metadata()
    assert md["name"] == "skewless"
    # shared memory is announced only with --allow-client-shm (tests/test_shared_memory.py)
    assert md["extensions"] == ["model_repository", "model_configuration", "statistics", "binary_tensor_data",
                               "logging"]
    status, headers, body = raw(server, "GET", "/v2")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"name": "skewless", "version": md["version"], "extensions": md["extensions"]}
    assert raw(server, "GET", "/v2/health/live")[0] == 200


def test_model_metadata_and_readiness(server, rest, client):
    md = rest.get_model_metadata("mlp")
    assert md == {"name": "mlp", "versions": ["1"], "platform": "onnxruntime_onnx",
                  "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}],
                  "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]}
    assert rest.get_model_metadata("mlp", "1") == md
    assert rest.get_model_metadata("vp_all")["versions"] == ["1", "2", "3"]
    assert rest.is_model_ready("mlp") and rest.is_model_ready("vp_all", "2")
    assert not rest.is_model_ready("no_such_model") and not rest.is_model_ready("vp_specific", "2")
    for fn in (lambda: rest.get_model_metadata("no_such_model"), lambda: rest.get_model_config("no_such_model")):
        exc = http_error(fn)
        assert exc.status() == "404"
        grpc_msg = http_error(lambda: client.get_model_metadata("no_such_model")).message()
        assert exc.message() == grpc_msg == "Request for unknown model: 'no_such_model' is not found"


def test_model_config_is_tritons_json(rest, client):
    cfg = rest.get_model_config("add_sub")
    assert cfg["name"] == "add_sub" and cfg["max_batch_size"] == 8  # proto field names, 64-bit ints as numbers
    assert [(t["name"], t["data_type"], t["dims"]) for t in cfg["input"]] == [
        ("INPUT0", "TYPE_FP32", [16]), ("INPUT1", "TYPE_FP32", [16])]
    assert cfg["instance_group"][0]["kind"].startswith("KIND_") and cfg["instance_group"][0]["count"] == 1
    assert rest.get_model_config("add_sub", "1") == cfg
    grpc_cfg = client.get_model_config("add_sub", as_json=True)["config"]  # protobuf's JSON: same field names
    assert set(grpc_cfg) <= set(cfg)
    assert http_error(lambda: rest.get_model_config("add_sub", "7")).status() == "404"


def test_statistics(rest):
    x = np.ones((2, 16), np.float32)
    rest.infer("add_sub", [http_input("INPUT0", x, "FP32"), http_input("INPUT1", x, "FP32")])
    one = rest.get_inference_statistics("add_sub")["model_stats"]
    assert [(s["name"], s["version"]) for s in one] == [("add_sub", "1")]
    st = one[0]
    assert st["inference_count"] >= 2 and st["execution_count"] >= 1 and st["last_inference"] > 0
    assert st["inference_stats"]["success"]["count"] >= 1 and st["inference_stats"]["success"]["ns"] > 0
    assert {"batch_size", "compute_input", "compute_infer", "compute_output"} <= set(st["batch_stats"][0])
    assert rest.get_inference_statistics("add_sub", "1")["model_stats"][0]["name"] == "add_sub"
    names = {s["name"] for s in rest.get_inference_statistics()["model_stats"]}
    assert {"mlp", "add_sub", "identity_all"} <= names
    assert http_error(lambda: rest.get_inference_statistics("no_such_model")).status() == "404"


# -- every datatype, JSON and binary, both directions -------------------------------------------------------
@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_all_datatypes(rest, binary_in, binary_out):
    arrays = {dt: sample(dt) for dt in IDENTITY_DATATYPES}
    inputs = [http_input(f"in_{dt}", arr, dt, binary_in) for dt, arr in arrays.items()]
    outputs = [httpclient.InferRequestedOutput(f"out_{dt}", binary_data=binary_out) for dt in arrays]
    res = rest.infer("identity_all", inputs, outputs=outputs, request_id="every-type")
    assert res.get_response()["id"] == "every-type"
    for dt, want in arrays.items():
        out = res.get_output(f"out_{dt}")
        assert (out["datatype"], out["shape"]) == (dt, list(want.shape))
        assert ("data" in out) != binary_out
        got = res.as_numpy(f"out_{dt}")
        if dt == "BYTES":  # JSON carries text: tritonclient gives str back
            assert [v if isinstance(v, bytes) else v.encode() for v in got.ravel()] == list(want.ravel()), dt
        else:  # bit for bit: NaN, infinities, -0.0 and subnormals survive JSON too
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), dt


def test_empty_tensors_and_default_binary_output(rest):
    arrays = {dt: sample(dt, 3, 0) for dt in IDENTITY_DATATYPES}
    res = rest.infer("identity_all", [http_input(f"in_{dt}", a, dt) for dt, a in arrays.items()])
    for dt in arrays:  # no outputs named: tritonclient asks binary_data_output, so every output is binary
        out = res.get_output(f"out_{dt}")
        assert out["shape"] == [3, 0] and out["parameters"]["binary_data_size"] == 0
        assert res.as_numpy(f"out_{dt}").shape == (3, 0)


def test_bf16_binary_and_json(server, rest):
    values = np.array([[0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, 3.140625, 1e38]], dtype=ml_dtypes.bfloat16)
    res = rest.infer("identity_bf16", [http_input("in_BF16", values, "BF16")])
    assert res.as_numpy("out_BF16").view(np.uint16).tobytes() == values.view(np.uint16).tobytes()
    # tritonclient sends BF16 only in binary; JSON numbers in and out, rounded to nearest even
    doc = {"inputs": [{"name": "in_BF16", "datatype": "BF16", "shape": [1, 3], "data": [1.0, -2.5, 1.00390625]}],
           "outputs": [{"name": "out_BF16", "parameters": {"binary_data": False}}]}
    status, _, body = raw(server, "POST", "/v2/models/identity_bf16/infer", json.dumps(doc).encode())
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == [1.0, -2.5, 1.0]


def test_nested_json_data_and_parameters(server):
    """Nested ``data``, the request id, priority/timeout parameters, per-output binary_data over the
    request's binary_data_output; the exact reply JSON."""
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    doc = {"id": "r1", "parameters": {"priority": 1, "timeout": 10_000_000, "binary_data_output": True},
           "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 16], "data": a.tolist()},
                      {"name": "INPUT1", "datatype": "FP32", "shape": [2, 16], "data": np.ones(32).tolist()}],
           "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}, {"name": "OUTPUT1"}]}
    status, headers, body = raw(server, "POST", "/v2/models/add_sub/versions/1/infer", json.dumps(doc).encode(),
                                {"Content-Type": "application/json"})
    assert status == 200, body
    n = int(headers["inference-header-content-length"])
    assert json.loads(body[:n]) == {
        "model_name": "add_sub", "model_version": "1", "id": "r1",
        "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [2, 16], "data": (a + 1).ravel().tolist()},
                    {"name": "OUTPUT1", "datatype": "FP32", "shape": [2, 16],
                     "parameters": {"binary_data_size": 128}}]}
    np.testing.assert_array_equal(np.frombuffer(body[n:], "<f4").reshape(2, 16), a - 1)
    # all JSON: no header-length header, the whole body is the JSON
    doc["parameters"] = {}
    doc["outputs"] = []
    status, headers, body = raw(server, "POST", "/v2/models/add_sub/infer", json.dumps(doc).encode())
    assert status == 200 and "inference-header-content-length" not in headers
    assert headers["content-type"].startswith("application/json")
    assert [o["name"] for o in json.loads(body)["outputs"]] == ["OUTPUT0", "OUTPUT1"]


# -- compression ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("request_alg", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_alg", [None, "gzip", "deflate"])
def test_compression(rest, request_alg, response_alg):
    x = np.random.default_rng(3).random((4, 16), dtype=np.float32)
    res = rest.infer("add_sub", [http_input("INPUT0", x, "FP32"), http_input("INPUT1", x, "FP32", binary=False)],
                     request_compression_algorithm=request_alg, response_compression_algorithm=response_alg)
    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), x + x)


def test_response_is_compressed_when_asked(server):
    doc = {"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}
                      for n in ("INPUT0", "INPUT1")]}
    for enc, decompress in (("gzip", gzip.decompress), ("deflate", zlib.decompress)):
        status, headers, body = raw(server, "POST", "/v2/models/add_sub/infer", zlib.compress(json.dumps(doc).encode())
                                    if enc == "deflate" else gzip.compress(json.dumps(doc).encode()),
                                    {"Content-Encoding": enc, "Accept-Encoding": enc})
        assert status == 200 and headers["content-encoding"] == enc
        assert json.loads(decompress(body))["outputs"][0]["data"] == [1.0] * 16


# -- bad requests ---------------------------------------------------------------------------------------------
def _add_sub_doc(**changes) -> dict:
    inputs = [{"name": n, "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16} for n in ("INPUT0", "INPUT1")]
    inputs[0].update(changes)
    return {"inputs": inputs}


def _binary_body(sizes: list[int], extra: int = 0) -> tuple[bytes, dict]:
    doc = {"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": s}}
                      for n, s in zip(("INPUT0", "INPUT1"), sizes, strict=True)]}
    head = json.dumps(doc).encode()
    return head + b"\0" * (64 + 64 + extra), {"Inference-Header-Content-Length": str(len(head))}


def _j(doc) -> bytes:
    return json.dumps(doc).encode()


def _one(dt: str, data: list) -> bytes:
    return _j({"inputs": [{"name": f"in_{dt}", "datatype": dt, "shape": [1, len(data)], "data": data}]})


# (path, body, headers, status, message that starts the error)
BAD = {
    "unknown model": ("/v2/models/nope/infer", _j(_add_sub_doc()), {}, 404,
                      "Request for unknown model: 'nope' is not found"),
    "unknown version": ("/v2/models/add_sub/versions/9/infer", _j(_add_sub_doc()), {}, 404, ""),
    "wrong datatype": ("/v2/models/add_sub/infer", _j(_add_sub_doc(datatype="INT32", data=[0] * 16)), {}, 400,
                       "unexpected datatype INT32 for inference input 'INPUT0', expecting FP32"),
    "unknown datatype": ("/v2/models/add_sub/infer", _j(_add_sub_doc(datatype="FLOAT42")), {}, 400,
                         "unknown datatype 'FLOAT42' for inference input 'INPUT0'"),
    "wrong shape": ("/v2/models/add_sub/infer", _j(_add_sub_doc(shape=[1, 15])), {}, 400,
                    "unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [-1,16], got [1,15]"),
    "element count": ("/v2/models/add_sub/infer", _j(_add_sub_doc(data=[1.0] * 3)), {}, 400,
                      "input byte size mismatch for input 'INPUT0': expected 64 bytes"),
    "missing input": ("/v2/models/add_sub/infer", _j({"inputs": _add_sub_doc()["inputs"][:1]}), {}, 400,
                      "expected 2 inputs but got 1 inputs for model 'add_sub'"),
    "unknown input": ("/v2/models/add_sub/infer", _j(_add_sub_doc(name="INPUT9")), {}, 400,
                      "unexpected inference input 'INPUT9' for model 'add_sub'"),
    "unknown output": ("/v2/models/add_sub/infer", _j({**_add_sub_doc(), "outputs": [{"name": "OUT9"}]}), {}, 400,
                       "unexpected inference output 'OUT9' for model 'add_sub'"),
    "string for FP32": ("/v2/models/add_sub/infer", _j(_add_sub_doc(data=["a"] * 16)), {}, 400,
                        "input 'INPUT0' of datatype FP32 got strings in 'data'"),
    "ragged data": ("/v2/models/add_sub/infer", _j(_add_sub_doc(data=[[1.0], [1.0, 2.0]])), {}, 400,
                    "input 'INPUT0' has 'data' that is not a regular"),
    "priority": ("/v2/models/add_sub/infer", _j({**_add_sub_doc(), "parameters": {"priority": -1}}), {}, 400,
                 "request parameter 'priority' must be a non-negative integer"),
    "malformed JSON": ("/v2/models/add_sub/infer", b'{"inputs": [', {}, 400,
                       "malformed JSON in the inference request"),
    "no inputs list": ("/v2/models/add_sub/infer", b'{"id": "x"}', {}, 400,
                       "the inference request needs an 'inputs' list"),
    "no data": ("/v2/models/add_sub/infer", _j({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1]}]}),
                {}, 400, "input 'INPUT0' has neither 'data' nor 'binary_data_size'"),
    "binary size short": ("/v2/models/add_sub/infer", *_binary_body([64, 60]), 400,
                          "the request body has 4 bytes after the JSON header"),
    "binary size long": ("/v2/models/add_sub/infer", *_binary_body([64, 70]), 400,
                         "input 'INPUT1' has binary_data_size 70 but only 64 bytes"),
    "header length too big": ("/v2/models/add_sub/infer", b"{}", {"Inference-Header-Content-Length": "99"}, 400,
                              "Inference-Header-Content-Length 99 is out of range"),
    "header length not a number": ("/v2/models/add_sub/infer", b"{}", {"Inference-Header-Content-Length": "x"},
                                   400, "Inference-Header-Content-Length must be an integer"),
    "header length cuts the JSON": ("/v2/models/add_sub/infer", _j(_add_sub_doc()),
                                    {"Inference-Header-Content-Length": "5"}, 400, "malformed JSON"),
    "unsupported encoding": ("/v2/models/add_sub/infer", b"{}", {"Content-Encoding": "br"}, 400,
                             "unsupported Content-Encoding 'br'"),
    "not gzip": ("/v2/models/add_sub/infer", b"{}", {"Content-Encoding": "gzip"}, 400,
                 "request body is not valid gzip data"),
    "classification": ("/v2/models/add_sub/infer",
                       _j({**_add_sub_doc(), "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}]}),
                       {}, 400, "output 'OUTPUT0' asks for classification"),
    "UINT8 out of range": ("/v2/models/identity_all/infer", _one("UINT8", [1, 256]), {}, 400,
                           "a value of input 'in_UINT8' in 'data' does not fit in UINT8"),
    "INT64 out of range": ("/v2/models/identity_all/infer", _one("INT64", [2**63, 0]), {}, 400,
                           "a value of input 'in_INT64' in 'data' does not fit in INT64"),
    "fraction for INT32": ("/v2/models/identity_all/infer", _one("INT32", [1, 1.5]), {}, 400,
                           "input 'in_INT32' of datatype INT32 got numbers with a fraction or exponent"),
    "number for BOOL": ("/v2/models/identity_all/infer", _one("BOOL", [1, 0]), {}, 400,
                        "input 'in_BOOL' of datatype BOOL got integers"),
    "number for BYTES": ("/v2/models/identity_all/infer", _one("BYTES", ["a", 1]), {}, 400,
                         "input 'in_BYTES' of datatype BYTES expects strings"),
    "null for FP64": ("/v2/models/identity_all/infer", _one("FP64", [1.0, None]), {}, 400,
                      "input 'in_FP64' has null in 'data', but model 'identity_all' has no feature spec"),
    "null for BYTES": ("/v2/models/identity_all/infer", _one("BYTES", ["a", None]), {}, 400,
                       "input 'in_BYTES' has null in 'data', but model 'identity_all' has no feature spec"),
    "no route": ("/v2/nothing/here", b"", {}, 404, "no route for /v2/nothing/here"),
    "unknown shm region": ("/v2/systemsharedmemory/region/nope/status", None, {}, 404,
                           "Unable to find system shared memory region: 'nope'"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_request(server, rest, case):
    path, body, headers, status, message = BAD[case]
    got_status, got_headers, got = raw(server, "GET" if body is None else "POST", path, body, headers)
    assert got_status == status, got
    assert got_headers["content-type"].startswith("application/json")
    assert json.loads(got)["error"].startswith(message), got
    assert rest.is_server_live()  # still serving


def test_errors_match_grpc(rest, client):
    """The data plane words both transports' errors: same message for the same bad request."""
    x = np.zeros((1, 16), np.float32)
    cases = [
        ("add_sub", {"INPUT0": x, "INPUT1": x[:, :8]}),  # shape
        ("add_sub", {"INPUT0": x, "INPUT1": x.astype(np.float64)}),  # datatype
        ("add_sub", {"INPUT0": x}),  # missing input
        ("add_sub", {"INPUT0": x, "INPUT1": x, "INPUT2": x}),  # extra input
        ("add_sub", {"INPUT0": np.zeros((9, 16), np.float32), "INPUT1": np.zeros((9, 16), np.float32)}),  # batch
        ("nope", {"INPUT0": x}),
    ]
    for model, feeds in cases:
        grpc_exc = http_error(lambda m=model, f=feeds: infer(client, m, f))
        for binary in (True, False):
            inputs = [http_input(k, v, grpcclient_dtype(v), binary) for k, v in feeds.items()]
            exc = http_error(lambda m=model, i=inputs: rest.infer(m, i))
            assert exc.message() == grpc_exc.message()
            assert exc.status() == ("404" if grpc_exc.status() == "StatusCode.NOT_FOUND" else "400")


def grpcclient_dtype(arr: np.ndarray) -> str:
    return {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64"}[arr.dtype]


@pytest.mark.parametrize(("error", "status"), [
    (InvalidArgument("x"), 400), (NotFound("x"), 404), (Unavailable("x"), 503), (Unimplemented("x"), 501),
    (FailedPrecondition("x"), 400), (DeadlineExceeded("x"), 504), (Internal("x"), 500), (KeyError("x"), 500)])
def test_status_table(error, status):
    assert status_of(error)[0] == status


def test_wrong_method_and_unknown_route(server):
    status, _, body = raw(server, "GET", "/v2/models/add_sub/infer")
    assert status == 405 and "accepts POST" in json.loads(body)["error"]
    assert raw(server, "GET", "/metrics")[0] == 404


# -- concurrency -------------------------------------------------------------------------------------------
def test_64_concurrent_clients_match_onnxruntime(server):
    """64 requests in flight at once (tritonclient.http's async_infer, 64 connections), each with its own
    input; every reply equals onnxruntime run in-process on that input."""
    session = ort.InferenceSession(str(EXAMPLE_MODELS / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(64)
    xs = [rng.standard_normal((1 + i % 3, 32)).astype(np.float32) for i in range(128)]
    with httpclient.InferenceServerClient(server.rest_url, concurrency=64, network_timeout=RPC_TIMEOUT) as c:
        pending = [c.async_infer("mlp", [http_input("input", x, "FP32", binary=i % 2 == 0)], request_id=str(i))
                   for i, x in enumerate(xs)]
        results = [p.get_result(timeout=RPC_TIMEOUT) for p in pending]
    for i, (x, res) in enumerate(zip(xs, results, strict=True)):
        assert res.get_response()["id"] == str(i)
        want = session.run(["probabilities"], {"input": x})[0]
        np.testing.assert_allclose(res.as_numpy("probabilities"), want, rtol=1e-6, atol=1e-7)


def test_many_threads_with_their_own_clients(server):
    """Threads with a client each (keep-alive connections), interleaving JSON and binary requests."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            with httpclient.InferenceServerClient(server.rest_url, network_timeout=RPC_TIMEOUT) as c:
                for j in range(5):
                    x = np.full((1, 16), k * 10 + j, np.float32)
                    res = c.infer("add_sub", [http_input("INPUT0", x, "FP32", j % 2 == 0),
                                              http_input("INPUT1", x, "FP32")])
                    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), 2 * x)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RPC_TIMEOUT)
    assert not errors, errors[0]


# -- repository and lifecycle (servers of their own) -------------------------------------------------------
def test_repository_index_load_unload(start_server, make_repo):
    srv = start_server(make_repo("add_sub", "mlp"), "--model-control-mode", "explicit", "--load-model", "mlp")
    with httpclient.InferenceServerClient(srv.rest_url, network_timeout=RPC_TIMEOUT) as c:
        assert c.get_model_repository_index() == [{"name": "add_sub", "state": "UNAVAILABLE", "reason": "not loaded"},
                                                  {"name": "mlp", "version": "1", "state": "READY"}]
        assert not c.is_model_ready("add_sub")
        c.load_model("add_sub", config=json.dumps({"max_batch_size": 2}))
        assert c.is_model_ready("add_sub") and c.get_model_config("add_sub")["max_batch_size"] == 2
        c.load_model("add_sub")
        assert c.get_model_config("add_sub")["max_batch_size"] == 8
        exc = http_error(lambda: c.load_model("add_sub", config="{not json"))
        assert exc.status() == "400" and exc.message().startswith("failed to load 'add_sub'")
        exc = http_error(lambda: c.load_model("no_such_model"))
        assert exc.status() == "404" and exc.message().startswith("failed to load 'no_such_model'")
        c.unload_model("add_sub")
        assert not c.is_model_ready("add_sub")
        rows = {r["name"]: r for r in c.get_model_repository_index()}
        assert rows["add_sub"]["state"] == "UNAVAILABLE"
        status, _, body = raw(srv, "POST", "/v2/repository/index", b'{"ready": true}')
        assert status == 200 and json.loads(body) == [{"name": "mlp", "version": "1", "state": "READY"}]


def test_load_refused_outside_explicit_mode(rest):
    exc = http_error(lambda: rest.load_model("mlp"))
    assert exc.status() == "400"
    assert exc.message().startswith("explicit model load / unload is not allowed with --model-control-mode none")


@pytest.mark.slow
def _received(srv, model: str) -> int:
    """Requests the server has taken for ``model`` so far: answered plus in flight (from /metrics)."""
    with urllib.request.urlopen(f"{srv.http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0
    for name in ("nv_inference_request_success", "skewless_requests_in_flight"):
        m = re.search(rf'^{name}{{model="{model}",version="1"}} (\d+)$', text, re.M)
        total += int(m.group(1)) if m else 0
    return total


def test_sigterm_drains_http_requests(start_server, make_repo):
    srv = start_server(make_repo("slow"))
    results: list = []

    def one(i: int) -> None:
        with httpclient.InferenceServerClient(srv.rest_url, network_timeout=RPC_TIMEOUT) as c:
            x = np.full((1, 4), i, np.float32)
            results.append((c.infer("slow", [http_input("x", x, "FP32")]).as_numpy("y"), x))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    # SIGTERM only once all four are in the server (answered or in flight): a fixed sleep raced the clients'
    # connects on a loaded CI machine, and a request not yet sent is refused, rightly, after SIGTERM.
    wait_until(lambda: _received(srv, "slow") >= 4, RPC_TIMEOUT, "the server to hold all four requests")
    srv.send_sigterm()
    for t in threads:
        t.join(RPC_TIMEOUT)
    assert len(results) == 4
    for y, x in results:
        np.testing.assert_array_equal(y, 2 * x)
    assert srv.wait(20) == 0, srv.stderr_text()


def test_feature_model_matches_grpc(start_server, tmp_path):
    """Raw feature columns (BYTES kept as wire bytes by the feature stage) over REST, binary and JSON, give
    what gRPC gives for the same rows."""
    shutil.copytree(EXAMPLE_MODELS / "churn", tmp_path / "churn")
    srv = start_server(tmp_path)
    md = httpclient.InferenceServerClient(srv.rest_url).get_model_metadata("churn")
    types = {t["name"]: t["datatype"] for t in md["inputs"] if not t["name"].endswith("__missing")}
    rows = churn_dataset(6, seed=5)
    cols = {name: rows[name].reshape(-1, 1) for name in types}
    with grpcclient.InferenceServerClient(srv.grpc_url) as g:
        want = {o.name: infer(g, "churn", cols).as_numpy(o.name) for o in g.get_model_metadata("churn").outputs}
    with httpclient.InferenceServerClient(srv.rest_url, network_timeout=RPC_TIMEOUT) as c:
        for binary in (True, False):
            res = c.infer("churn", [http_input(n, a, types[n], binary) for n, a in cols.items()])
            for name, arr in want.items():
                assert res.as_numpy(name).tobytes() == arr.tobytes(), (name, binary)
