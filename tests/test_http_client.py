"""The HTTP load client's wire format, against the KServe v2 REST spec, without needing a REST server.

Request bodies are read back as a server would; replies are built as the spec (and Triton's binary tensor
extension) describe them and fed to the client's parser, whole and in pieces, Content-Length and chunked;
a small in-test keep-alive server checks that one connection carries many requests and that a reply of the
wrong values or in the wrong encoding fails the spot-check.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import numpy as np
import pytest

from skewless.benchmarks.client import PointSpec
from skewless.benchmarks.http_client import (
    HttpClient,
    HttpOptions,
    decode_reply,
    infer_body,
    infer_request,
    parse_response,
)
from skewless.benchmarks.workload import ModelInfo, Tensor, build_workload

MODEL = ModelInfo("mlp", "1", "onnxruntime_onnx", [Tensor("input", "FP32", (-1, 32))],
                  [Tensor("probabilities", "FP32", (-1, 2))])


def _split(body: bytes, header_length: int | None) -> tuple[dict, bytes]:
    n = len(body) if header_length is None else header_length
    return json.loads(body[:n]), body[n:]


@pytest.mark.parametrize("encoding", ["json", "binary"])
def test_request_body_carries_the_exact_values(encoding: str) -> None:
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    body, n = infer_body(MODEL, {"input": x}, ["probabilities"], encoding)
    doc, rest = _split(body, n)
    (inp,) = doc["inputs"]
    assert inp["name"] == "input" and inp["shape"] == [1, 32] and inp["datatype"] == "FP32"
    if encoding == "json":
        assert n is None and rest == b"" and "parameters" not in inp
        got = np.asarray(inp["data"], dtype=np.float32).reshape(1, 32)
    else:
        assert inp["parameters"] == {"binary_data_size": 128} and "data" not in inp and len(rest) == 128
        got = np.frombuffer(rest, dtype="<f4").reshape(1, 32)
    assert got.tobytes() == x.tobytes()  # bit for bit, also through JSON's decimal text
    assert doc["outputs"] == [{"name": "probabilities", "parameters": {"binary_data": encoding == "binary"}}]
    raw = infer_request("127.0.0.1:9", "/v2/models/mlp/infer", body, n)
    head, _, tail = raw.partition(b"\r\n\r\n")
    assert tail == body and head.startswith(b"POST /v2/models/mlp/infer HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert (f"Inference-Header-Content-Length: {n}".encode() in head) == (encoding == "binary")


def reply(y: np.ndarray, binary: bool, chunked: bool = False, extra_headers: str = "") -> bytes:
    """A v2 REST reply as the spec writes it: JSON data, or the binary tensor extension."""
    out: dict = {"name": "probabilities", "datatype": "FP32", "shape": list(y.shape)}
    if binary:
        out["parameters"] = {"binary_data_size": y.nbytes}
    else:
        out["data"] = y.reshape(-1).tolist()
    head = json.dumps({"model_name": "mlp", "model_version": "1", "outputs": [out]}).encode()
    body = head + (y.astype("<f4").tobytes() if binary else b"")
    hdr = "HTTP/1.1 200 OK\r\n" + extra_headers
    if binary:
        hdr += f"Inference-Header-Content-Length: {len(head)}\r\nContent-Type: application/octet-stream\r\n"
    else:
        hdr += "Content-Type: application/json\r\n"
    if chunked:
        mid = len(body) // 2
        chunks = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (body[:mid], body[mid:]))
        return (hdr + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    return (hdr + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
def test_reply_parsed_whole_and_in_pieces(binary: bool, chunked: bool) -> None:
    y = np.array([[0.25, 0.75]], dtype=np.float32)
    raw = reply(y, binary, chunked) + b"HTTP/1.1 200"  # the start of the next reply stays in the buffer
    for cut in range(len(raw) - 12):
        assert parse_response(bytearray(raw[:cut])) is None
    status, headers, body, used = parse_response(bytearray(raw))
    assert status == 200 and raw[used:] == b"HTTP/1.1 200"
    resp, problem = decode_reply(headers, body, "binary" if binary else "json")
    assert problem is None
    assert resp.outputs[0].name == "probabilities" and list(resp.outputs[0].shape) == [1, 2]
    assert np.frombuffer(resp.raw_output_contents[0], dtype="<f4").tolist() == [0.25, 0.75]
    _, problem = decode_reply(headers, body, "json" if binary else "binary")
    assert problem and "asked" in problem  # the server ignored the encoding asked for


class StandIn:
    """A keep-alive HTTP/1.1 server that answers every POST with the reply ``answer`` makes (test only)."""

    def __init__(self, answer):
        self.answer, self.requests, self.connections = answer, 0, 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
                body = await reader.readexactly(int(fields["Content-Length"]))
                self.requests += 1
                writer.write(self.answer(fields, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _run_point(answer, encoding: str, clients: int = 4) -> tuple:
    wl = build_workload(MODEL, rows=1, variants=4)
    wl.expected = [{"probabilities": np.tanh(f["input"][:, :2])} for f in wl.feeds]

    async def go():
        srv = StandIn(answer)
        server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        counters = [0] * 2
        client = HttpClient(0, HttpOptions(f"127.0.0.1:{port}", encoding, check_every=3), wl, counters)
        try:
            await client.check_endpoint()
            import time

            spec = PointSpec(0, "closed", False, clients, time.time() + 0.05, 0.05, 0.3, 2.0, 100, 0)
            res = await client.run_point(spec)
        finally:
            client.close()
            server.close()
        return res, srv

    return asyncio.run(go())


def _model_answer(encoding: str, wrong: bool = False):
    def answer(fields: dict, body: bytes) -> bytes:
        doc, rest = _split(body, int(fields["Inference-Header-Content-Length"])
                           if "Inference-Header-Content-Length" in fields else None)
        if encoding == "binary":
            x = np.frombuffer(rest, dtype="<f4").reshape(doc["inputs"][0]["shape"])
        else:
            x = np.asarray(doc["inputs"][0]["data"], dtype=np.float32).reshape(doc["inputs"][0]["shape"])
        y = np.tanh(x[:, :2]) + (1.0 if wrong else 0.0)
        return reply(y.astype(np.float32), doc["outputs"][0]["parameters"]["binary_data"])
    return answer


@pytest.mark.parametrize("encoding", ["json", "binary"])
def test_keep_alive_closed_loop_checks_values(encoding: str) -> None:
    res, srv = _run_point(_model_answer(encoding), encoding)
    assert res.errors == {} and res.completed > 0 and res.latencies.size > 0
    assert res.checked > 0 and res.check_failures == 0, res.first_failure
    assert srv.connections == 4  # one persistent connection per simulated client, the first one reused
    assert srv.requests >= res.completed


def test_wrong_values_and_http_errors_are_counted() -> None:
    res, _ = _run_point(_model_answer("binary", wrong=True), "binary")
    assert res.check_failures == res.checked > 0 and "differ from onnxruntime" in res.first_failure
    calls = Counter()

    def flaky(fields: dict, body: bytes) -> bytes:
        calls["n"] += 1
        if calls["n"] > 1 and calls["n"] % 2:
            msg = b'{"error":"no"}'
            return b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(msg), msg)
        return _model_answer("json")(fields, body)

    res, _ = _run_point(flaky, "json", clients=1)
    assert res.errors.get("HTTP_400", 0) > 0 and '{"error":"no"}' in res.error_messages["HTTP_400"]
    assert res.check_failures == 0
