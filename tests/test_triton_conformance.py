"""Triton conformance defects (issue 26) and raw binary requests, against a real server with real clients:
JSON nesting depth limit, duplicate requested outputs, Triton's ``failed to load`` wording for a bad config
override, and the binary tensor extension's raw binary request (``Inference-Header-Content-Length: 0``)."""

from __future__ import annotations

import http.client
import json
import struct
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import RPC_TIMEOUT, expect_error, write_triton_identity
from serverproc import ServerProcess
from tritonclient.utils import InferenceServerException

from skewless.server.json_depth import MAX_JSON_DEPTH, JsonTooDeep, check_json_depth

pytestmark = pytest.mark.grpc_transports  # every test on each gRPC transport (conftest.py)

DEPTH_WORDS = f"JSON nesting depth exceeds maximum allowed limit ({MAX_JSON_DEPTH})"


# -- the depth check alone -----------------------------------------------------------------------------------
@pytest.mark.parametrize("doc, deep", [
    ("[" * 100 + "]" * 100, False),
    ("[" * 101 + "]" * 101, True),
    ('{"a":' * 101 + "1" + "}" * 101, True),
    (json.dumps({"s": "[" * 5000}), False),  # brackets inside a string do not nest
    (json.dumps({"s": '\\"' + "[" * 500}), False),  # an escaped quote does not end the string
    (json.dumps({"s": "\\\\"}) + "[" * 101, True),  # an escaped backslash does not escape the quote
    ("[" * 50 + "]" * 50 + "[" * 60 + "]" * 60, False),  # many brackets, shallow
])
def test_check_json_depth(doc, deep):
    if deep:
        with pytest.raises(JsonTooDeep, match=r"JSON nesting depth exceeds maximum allowed limit \(100\)"):
            check_json_depth(doc.encode())
    else:
        check_json_depth(doc.encode())


# -- a server with Triton-QA-style models ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def srv(tmp_path_factory, grpc_transport) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("triton_repo")
    write_triton_identity(root, "onnx_zero_1_float32", "FP32", [-1], 8)
    write_triton_identity(root, "onnx_zero_1_float16", "FP16", [-1, -1], 8)
    write_triton_identity(root, "onnx_zero_3_float32", "FP32", [-1], 8, inputs=3)
    write_triton_identity(root, "onnx_zero_1_object", "BYTES", [-1], 8)
    write_triton_identity(root, "onnx_zero_1_object_1_element", "BYTES", [1], 0)
    write_triton_identity(root, "int32_rows", "INT32", [4], 8)
    write_triton_identity(root, "uint8_flat", "UINT8", [-1], 0)
    write_triton_identity(root, "int64_one", "INT64", [1], 8)
    proc = ServerProcess(root, "--model-control-mode", "explicit", "--load-model", "*").start()
    yield proc
    proc.assert_clean_exit()


def post(srv: ServerProcess, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    host, port = srv.rest_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=RPC_TIMEOUT)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


def nested(depth: int, value: str) -> str:
    return "[" * depth + value + "]" * depth


# -- JSON nesting depth ----------------------------------------------------------------------------------------
def test_deep_json_is_a_400_on_every_json_route(srv):
    deep = nested(1000, "1")
    infer = '{"inputs":[{"name":"INPUT0","datatype":"INT64","shape":[1,1],"data":' + deep + "}]}"
    for path, body in (("/v2/models/int64_one/infer", infer),
                       ("/v2/repository/models/int64_one/load", '{"parameters":' + deep + "}"),
                       ("/v2/repository/models/int64_one/unload", '{"parameters":' + deep + "}")):
        status, _, reply = post(srv, path, body.encode(), {"Content-Type": "application/json"})
        assert status == 400, (path, reply)
        assert DEPTH_WORDS in error_of(reply), path
    # Triton's QA matrix: 50 levels of data is fine, 120 is not
    for depth, ok in ((50, True), (120, False)):
        body = '{"inputs":[{"name":"INPUT0","datatype":"INT64","shape":[1,1],"data":' + nested(depth, "123") + "}]}"
        status, _, reply = post(srv, "/v2/models/int64_one/infer", body.encode())
        assert (status == 200) is ok, reply
    # the repository index is parsed at any depth, as Triton's (test_triton_http_qa.py)
    status, _, reply = post(srv, "/v2/repository/index", ('{"ready":' + nested(250_000, "true") + "}").encode())
    assert status == 400 and "Invalid value for 'ready': expected a boolean" in error_of(reply)
    # the server is still up and serving
    with httpclient.InferenceServerClient(srv.rest_url) as c:
        assert c.is_server_live() and c.get_model_repository_index()


def test_deep_config_load_parameter_over_grpc(srv):
    with grpcclient.InferenceServerClient(srv.grpc_url) as c:
        expect_error(lambda: c.load_model("int64_one", config=nested(5000, "1")), "INVALID_ARGUMENT",
                     "failed to load 'int64_one'")
        assert c.is_model_ready("int64_one")  # the loaded version keeps serving


def test_repository_index_ready_not_a_boolean(srv):
    status, _, reply = post(srv, "/v2/repository/index", b'{"ready": [true]}')
    assert status == 400 and "Invalid value for 'ready': expected a boolean" in error_of(reply)


# -- duplicate requested outputs -------------------------------------------------------------------------------
def test_duplicate_requested_output_rest(srv):
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 8], "data": [list(range(8))]}],
            "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]}
    status, _, reply = post(srv, "/v2/models/onnx_zero_1_float32/infer", json.dumps(body).encode())
    assert status == 400 and "output 'OUTPUT0' already exists in request" in error_of(reply)


def test_duplicate_requested_output_grpc(srv):
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    with grpcclient.InferenceServerClient(srv.grpc_url) as c:
        inp = grpcclient.InferInput("INPUT0", [1, 8], "FP32")
        inp.set_data_from_numpy(x)
        outs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT0")]
        expect_error(lambda: c.infer("onnx_zero_1_float32", [inp], outputs=outs), "INVALID_ARGUMENT",
                     "output 'OUTPUT0' already exists in request")
        # one of them is fine
        res = c.infer("onnx_zero_1_float32", [inp], outputs=outs[:1])
        np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), x)


# -- bad config override: Triton's wording ------------------------------------------------------------------
def test_bad_config_override_says_failed_to_load(srv):
    with httpclient.InferenceServerClient(srv.rest_url) as c:
        with pytest.raises(InferenceServerException) as exc:
            c.load_model("int64_one", config="{not json")
        assert exc.value.status() == "400" and exc.value.message().startswith("failed to load 'int64_one'")
    with grpcclient.InferenceServerClient(srv.grpc_url) as c:
        expect_error(lambda: c.load_model("int64_one", config='{"max_batch_size": "many"}'), "INVALID_ARGUMENT",
                     "failed to load 'int64_one'")


# -- raw binary requests --------------------------------------------------------------------------------------
RAW = {"Inference-Header-Content-Length": "0"}


def raw_infer(srv, model: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    return post(srv, f"/v2/models/{model}/infer", body, {**RAW, **(headers or {})})


def reply_output(headers: dict, body: bytes) -> tuple[dict, bytes]:
    size = int(headers["Inference-Header-Content-Length"])
    return json.loads(body[:size]), body[size:]


@pytest.mark.parametrize("n", [8, 32])
def test_raw_binary_fp32(srv, n):
    data = np.arange(n, dtype=np.float32).tobytes()
    status, headers, body = raw_infer(srv, "onnx_zero_1_float32", data)
    assert status == 200, body
    doc, blob = reply_output(headers, body)
    assert doc["outputs"][0]["shape"] == [1, n] and doc["outputs"][0]["datatype"] == "FP32"
    assert blob == data


def test_raw_binary_infers_the_batch_dimension(srv):
    x = np.arange(12, dtype=np.int32)  # dims [4]: a batch of 3
    status, headers, body = raw_infer(srv, "int32_rows", x.tobytes())
    assert status == 200, body
    doc, blob = reply_output(headers, body)
    assert doc["outputs"][0]["shape"] == [3, 4] and blob == x.tobytes()
    status, _, body = raw_infer(srv, "int32_rows", np.arange(10, dtype=np.int32).tobytes())
    assert status == 400 and "not a whole number of INT32 elements" in error_of(body)
    status, _, body = raw_infer(srv, "int32_rows", np.arange(36, dtype=np.int32).tobytes())  # batch 9 > 8
    assert status == 400 and "batch-size must be <= 8" in error_of(body)


def test_raw_binary_non_batching_and_odd_sizes(srv):
    data = bytes(range(7))
    status, headers, body = raw_infer(srv, "uint8_flat", data)
    assert status == 200, body
    doc, blob = reply_output(headers, body)
    assert doc["outputs"][0]["shape"] == [7] and blob == data
    status, _, body = raw_infer(srv, "onnx_zero_1_float32", b"\0" * 6)
    assert status == 400 and "not a whole number of FP32 elements" in error_of(body)


def test_raw_binary_bytes(srv):
    status, headers, body = raw_infer(srv, "onnx_zero_1_object_1_element", b"427")
    assert status == 200, body
    doc, blob = reply_output(headers, body)
    assert doc["outputs"][0]["datatype"] == "BYTES" and blob == struct.pack("<I", 3) + b"427"
    status, _, body = raw_infer(srv, "onnx_zero_1_object", b"427")
    assert status == 400
    assert "For BYTE datatype raw input 'INPUT0', the model must have input shape [1]" in error_of(body)


def test_raw_binary_refusals(srv):
    status, _, body = raw_infer(srv, "onnx_zero_1_float16", np.ones(4, np.float16).tobytes())
    assert status == 400 and ("The shape of the raw input 'INPUT0' can not be deduced because there are more "
                              "than one variable-sized dimension") in error_of(body)
    status, _, body = raw_infer(srv, "onnx_zero_3_float32", np.arange(24, dtype=np.float32).tobytes())
    assert status == 400
    assert "Raw request must only have 1 input (found 1) to be deduced but got 3 inputs in" in error_of(body)
    status, _, body = raw_infer(srv, "no_such_model", b"1234")
    assert status == 404


def test_raw_binary_chunked(srv):
    data = np.arange(16, dtype=np.float32).tobytes()
    host, port = srv.rest_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=RPC_TIMEOUT)
    try:
        conn.request("POST", "/v2/models/onnx_zero_1_float32/infer", body=iter([data[:20], data[20:]]),
                     headers=RAW, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 200
        _, blob = reply_output(dict(resp.getheaders()), resp.read())
    finally:
        conn.close()
    assert blob == data


def test_header_length_out_of_range(srv):
    status, _, body = post(srv, "/v2/models/onnx_zero_1_float32/infer", b'{"inputs":[]}',
                           {"Inference-Header-Content-Length": "99999999999"})
    assert status == 400


def test_metadata_announces_binary_tensor_data(srv):
    with httpclient.InferenceServerClient(srv.rest_url) as c:
        assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
