"""What Triton's HTTP QA suite (qa/L0_http) found when run against skewless, each as Triton answers it:
Triton's checks on a JSON input's shape (dimensions read as unsigned integers; element count and byte size
within int64) made before the model's own checks, a repository index request parsed at any depth (only
``ready`` is read), and a body over the size limit refused with 400 and Triton's words."""

from __future__ import annotations

import http.client
import json
import socket
import zlib
from collections.abc import Iterator

import pytest
import tritonclient.http as httpclient
from helpers import RPC_TIMEOUT, write_triton_identity
from serverproc import ServerProcess

from skewless.server.json_depth import MAX_JSON_DEPTH, prune_deep_members

LIMIT = 1 << 20  # the server's --max-message-bytes here
INT64_MAX = 2**63 - 1
UNPARSABLE_SHAPE = "Unable to parse 'shape': attempt to access JSON non-unsigned-integer as unsigned-integer"


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("qa_http_repo")
    write_triton_identity(root, "onnx_zero_1_float32", "FP32", [-1], 8)
    write_triton_identity(root, "onnx_zero_1_int8", "INT8", [-1], 8)
    proc = ServerProcess(root, "--model-control-mode", "explicit", "--load-model", "*",
                         "--max-message-bytes", str(LIMIT)).start()
    yield proc
    proc.assert_clean_exit()


def post(srv: ServerProcess, path: str, body, headers: dict | None = None, chunked: bool = False
         ) -> tuple[int, dict]:
    host, port = srv.rest_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=RPC_TIMEOUT)
    try:
        conn.request("POST", path, body=body, headers=headers or {}, encode_chunked=chunked)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def infer_json(shape: list, datatype: str = "FP32") -> bytes:
    return json.dumps({"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": shape, "data": [1]}]}).encode()


def assert_live(srv: ServerProcess) -> None:
    with httpclient.InferenceServerClient(srv.rest_url, network_timeout=RPC_TIMEOUT) as c:
        assert c.is_server_live()


# -- a JSON input's shape -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model, datatype, shape, message", [
    # 2^4 * (2^60 + 2) > INT64_MAX elements (and the batch of 16 is over the model's 8: the count comes first)
    ("onnx_zero_1_float32", "FP32", [16, 2**60 + 2],
     f"invalid shape for input 'INPUT0': shape [16,{2**60 + 2}] causes total element count to exceed maximum "
     f"size of {INT64_MAX}"),
    # the count fits in int64, its byte size (4 bytes each) does not
    ("onnx_zero_1_float32", "FP32", [4, 2**60 + 2],
     f"byte size overflow for input 'INPUT0': element count ({4 * (2**60 + 2)}) * data type size (4) exceeds "
     f"maximum allowed size ({INT64_MAX})"),
    ("onnx_zero_1_float32", "FP32", [1, 2**63],
     f"invalid shape for input 'INPUT0': shape [1,{2**63}] contains one or more invalid dimensions"),
])
def test_json_shape_beyond_int64(srv, model, datatype, shape, message):
    status, doc = post(srv, f"/v2/models/{model}/infer", infer_json(shape, datatype))
    assert status == 400 and doc["error"] == message
    assert_live(srv)


def test_one_byte_elements_have_no_byte_size_overflow(srv):
    """Triton checks the byte size only for types over one byte: 4 * (2^60 + 2) INT8 elements fit in int64,
    so the request goes on to the model's checks (a batch of 4 is fine, the single value is not enough data)."""
    status, doc = post(srv, "/v2/models/onnx_zero_1_int8/infer", infer_json([4, 2**60 + 2], "INT8"))
    assert status == 400 and "overflow" not in doc["error"] and "maximum size" not in doc["error"]


@pytest.mark.parametrize("shape", [[2, -5], [1, 1.5], [1, "8"], [1, True], [1, 2**64], [None]])
def test_shape_dimension_not_unsigned(srv, shape):
    """Triton reads each dimension as a JSON unsigned integer and words anything else as its JSON reader does.
    Triton answers it with 500; a malformed request is the client's fault, so 400 here (see docs)."""
    status, doc = post(srv, "/v2/models/onnx_zero_1_float32/infer", infer_json(shape))
    assert status == 400 and doc["error"] == UNPARSABLE_SHAPE
    assert_live(srv)


def test_shape_not_a_list_stays_400(srv):
    status, doc = post(srv, "/v2/models/onnx_zero_1_float32/infer", infer_json(8))  # type: ignore[arg-type]
    assert status == 400 and "needs a 'shape' list of integers" in doc["error"]


# -- repository index at any depth ---------------------------------------------------------------------------
def nested(depth: int, value: str) -> str:
    return "[" * depth + value + "]" * depth


def test_repository_index_ready_nested_deep_is_not_a_boolean(srv):
    status, doc = post(srv, "/v2/repository/index", ('{"ready":' + nested(250_000, "true") + "}").encode())
    assert status == 400 and doc["error"] == "Invalid value for 'ready': expected a boolean"
    assert_live(srv)


def test_repository_index_ignores_a_deep_member_it_does_not_read(srv):
    body = '{"other":' + nested(5_000, '{"ready": false}') + ', "ready": true, "s": "' + "[" * 500 + '"}'
    status, doc = post(srv, "/v2/repository/index", body.encode())
    assert status == 200
    assert {row["name"] for row in doc} == {"onnx_zero_1_float32", "onnx_zero_1_int8"}


def test_repository_index_deep_array_is_not_an_object(srv):
    status, doc = post(srv, "/v2/repository/index", nested(1_000, "1").encode())
    assert status == 400 and "must be a JSON object" in doc["error"]


def test_other_routes_keep_the_depth_limit(srv):
    status, doc = post(srv, "/v2/repository/models/onnx_zero_1_float32/load",
                       ('{"parameters":' + nested(1_000, "1") + "}").encode())
    assert status == 400 and f"JSON nesting depth exceeds maximum allowed limit ({MAX_JSON_DEPTH})" in doc["error"]


@pytest.mark.parametrize("doc, pruned", [
    ('{"ready":' + nested(101, "1") + "}", {"ready": None}),
    ('{"a":' + nested(99, "1") + "}", {"a": json.loads(nested(99, "1"))}),  # 100 levels in all: kept
    ('{"a":' + nested(100, "1") + "}", {"a": None}),  # 101
    ('{"a":' + nested(150, "1") + ',"b":[1,{"c":2}],"d":' + nested(120, "{}") + "}",
     {"a": None, "b": [1, {"c": 2}], "d": None}),
    ("[" + nested(200, "1") + ',"x"]', [None, "x"]),
    ('{"s":"' + "[" * 300 + '\\"","a":' + nested(200, "1") + "}", {"s": "[" * 300 + '"', "a": None}),
])
def test_prune_deep_members(doc, pruned):
    assert json.loads(prune_deep_members(doc.encode())) == pruned


def test_prune_leaves_unbalanced_bodies_to_the_parser():
    body = ('{"a":' + "[" * 300).encode()
    assert prune_deep_members(body) == body


# -- a body over the limit -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v2/repository/models/onnx_zero_1_float32/load",
                                  "/v2/models/onnx_zero_1_float32/infer"])
def test_body_over_the_limit_is_tritons_400(srv, path):
    size = LIMIT + 1000
    body = json.dumps({"parameters": {"config": " " * size}}).encode()
    status, doc = post(srv, path, body)
    assert status == 400
    assert doc["error"] == (f"request JSON size of {len(body)} bytes exceeds the maximum allowed input size of "
                            f"{LIMIT} bytes. Use --max-message-bytes to increase the limit.")
    status, doc = post(srv, path, iter([body[:LIMIT // 2], body[LIMIT // 2:]]), chunked=True)
    assert status == 400
    assert doc["error"].startswith(f"request JSON size of more than {LIMIT} bytes exceeds the maximum allowed "
                                   f"input size of {LIMIT} bytes")
    assert_live(srv)


def test_body_decompressing_over_the_limit_is_tritons_400(srv):
    packed = zlib.compress(b"{" + b" " * (2 * LIMIT) + b"}")
    assert len(packed) < LIMIT
    status, doc = post(srv, "/v2/models/onnx_zero_1_float32/infer", packed, {"Content-Encoding": "deflate"})
    assert status == 400
    assert doc["error"] == (f"Decompressed data size exceeds the maximum allowed value of {LIMIT} bytes. Use "
                            "--max-message-bytes to increase the limit.")


# -- malformed HTTP ------------------------------------------------------------------------------------------
def test_content_length_with_transfer_encoding_is_refused_quietly(srv):
    """Both framings at once (what Triton's test_content_encoding_chunked_manually sends): RFC 9112 says to treat
    it as an error (request smuggling), and the parser does; the server log gets no ERROR or traceback for it."""
    host, port = srv.rest_url.split(":")
    data = b"\0" * 32
    body = b"20\r\n" + data + b"\r\n0\r\n\r\n"
    head = (f"POST /v2/models/onnx_zero_1_float32/infer HTTP/1.1\r\nHost: {host}\r\n"
            f"Inference-Header-Content-Length: 0\r\nContent-Length: {len(body)}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=RPC_TIMEOUT) as sock:
        sock.sendall(head + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.split(b" ", 2)[1] == b"400", reply
    assert_live(srv)
    log = srv.stderr_text()
    assert "Error handling request" not in log and "Traceback" not in log
