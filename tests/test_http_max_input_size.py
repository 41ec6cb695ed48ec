"""``--http-max-input-size``, Triton's flag for the HTTP/REST body limit: it bounds REST bodies only (gRPC keeps
``--max-message-bytes``), and each way a body can be over it (JSON, raw binary, compressed) gets Triton's 400
and words from Triton's ``http_input_size_limit_test.py``, naming the flag the user set."""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import RPC_TIMEOUT, write_triton_identity
from serverproc import ServerProcess

from skewless.server.frontend.cli import build_parser
from skewless.server.frontend.options import ServerOptions
from skewless.server.frontend.settings import MAX_MESSAGE_BYTES

LIMIT = 1 << 16  # --http-max-input-size here
MODEL = "onnx_zero_1_float32"


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("input_size_repo")
    write_triton_identity(root, MODEL, "FP32", [-1], 8)
    proc = ServerProcess(root, "--http-max-input-size", str(LIMIT)).start()
    yield proc
    proc.assert_clean_exit()


def post(srv: ServerProcess, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
    host, port = srv.rest_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=RPC_TIMEOUT)
    try:
        conn.request("POST", f"/v2/models/{MODEL}/infer", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


def test_raw_binary_over_the_limit_has_tritons_words(srv):
    data = np.ones(LIMIT // 4 + 32, np.float32).tobytes()
    status, body, _ = post(srv, data, {"Inference-Header-Content-Length": "0"})
    assert status == 400
    assert error_of(body) == (f"Raw input has a byte_size ({len(data)} bytes) that exceeds the maximum allowed "
                              f"value of {LIMIT} bytes. Use --http-max-input-size to increase the limit.")


def test_raw_binary_just_under_the_limit_is_served(srv):
    x = np.arange(LIMIT // 4 - 32, dtype=np.float32)
    status, body, headers = post(srv, x.tobytes(), {"Inference-Header-Content-Length": "0"})
    assert status == 200, body[:200]
    header_size = int(headers["Inference-Header-Content-Length"])
    assert np.array_equal(np.frombuffer(body[header_size:], np.float32), x)


def test_json_over_the_limit_names_the_flag(srv):
    doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, LIMIT], "data": [1.0] * LIMIT}]}
    data = json.dumps(doc).encode()
    status, body, _ = post(srv, data, {"Content-Type": "application/json"})
    assert status == 400
    assert error_of(body) == (f"request JSON size of {len(data)} bytes exceeds the maximum allowed input size of "
                              f"{LIMIT} bytes. Use --http-max-input-size to increase the limit.")


def test_compressed_body_over_the_limit_names_the_flag(srv):
    packed = gzip.compress(b'{"inputs": []' + b" " * LIMIT + b"}")
    assert len(packed) < LIMIT
    status, body, _ = post(srv, packed, {"Content-Encoding": "gzip"})
    assert status == 400
    assert error_of(body) == (f"Decompressed data size exceeds the maximum allowed value of {LIMIT} bytes. Use "
                              "--http-max-input-size to increase the limit.")


def test_grpc_is_not_bounded_by_the_rest_limit(srv):
    x = np.ones((1, LIMIT), np.float32)  # 4x the REST limit
    with grpcclient.InferenceServerClient(srv.grpc_url) as g:
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        assert np.array_equal(g.infer(MODEL, [inp]).as_numpy("OUTPUT0"), x)


# -- which limit, which flag in the messages ------------------------------------------------------------------
def _listen(*argv: str):
    def error(message: str):
        raise ValueError(message)

    return ServerOptions.from_args(build_parser().parse_args(["serve", "--model-repository", "m", *argv]),
                                   error).listen


@pytest.mark.parametrize("argv, limit, flag", [
    ((), MAX_MESSAGE_BYTES, "--http-max-input-size"),
    (("--max-message-bytes", "1000"), 1000, "--max-message-bytes"),
    (("--http-max-input-size", "500"), 500, "--http-max-input-size"),
    (("--max-message-bytes", "1000", "--http-max-input-size", "5000"), 5000, "--http-max-input-size"),
])
def test_the_rest_limit_and_the_flag_its_messages_name(argv, limit, flag):
    listen = _listen(*argv)
    assert (listen.http_max_input_size, listen.http_limit_flag) == (limit, flag)
    assert listen.max_message_bytes == (1000 if "--max-message-bytes" in argv else MAX_MESSAGE_BYTES)


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_limit_that_is_not_positive_is_refused(value):
    with pytest.raises(ValueError, match="--http-max-input-size must be greater than 0"):
        _listen("--http-max-input-size", value)
