"""Property-based fuzzing through a real server: whatever a client sends, it gets a status with a message, never
INTERNAL or UNKNOWN (a server bug), and the server keeps serving correct answers to everyone else.

Hypothesis draws ModelInferRequests field by field (models, names, every datatype and junk ones, shapes that
are negative, zero, huge or overflow when multiplied, raw contents of any size, BYTES with broken length
prefixes, parameters of every type, requested outputs), raw protobuf bytes (random and mutated valid ones),
and HTTP/REST bodies (JSON and the binary-tensor extension's header length). Counts are printed with ``-s``.
"""

from __future__ import annotations

import http.client
import json
import struct

import grpc
import numpy as np
import pytest
from helpers import RPC_TIMEOUT, output_arrays, raw_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

pytestmark = pytest.mark.slow  # the slow tier: hundreds of hypothesis-drawn requests through a real server

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED,
           grpc.StatusCode.FAILED_PRECONDITION}
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BF16", "BYTES"]
MODELS = ["add_sub"] * 4 + ["mlp"] * 3 + ["text", "identity_all", "churn", "nope", ""]  # mostly real ones
NAMES = ["INPUT0", "INPUT1"] * 3 + ["input"] * 2 + ["text", "scores", "x", ""]
EXAMPLES = 250
COUNTS: dict[str, int] = {}
FUZZ = settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                deadline=None)


def _count(kind: str, code: object) -> None:
    key = f"{kind} {code}"
    COUNTS[key] = COUNTS.get(key, 0) + 1


dims = st.one_of(st.sampled_from([1, 16, 32, 1, 16, 32]), st.integers(-3, 40),
                 st.sampled_from([2**31, 2**62, -(2**62), 2**63 - 1]))


@st.composite
def bytes_elements(draw) -> bytes:
    """BYTES contents: well-formed length-prefixed elements, or prefixes that lie."""
    parts = []
    for item in draw(st.lists(st.binary(max_size=12), max_size=4)):
        n = len(item) if draw(st.booleans()) else draw(st.integers(0, 2**32 - 1))
        parts.append(struct.pack("<I", n) + item)
    return b"".join(parts) + draw(st.binary(max_size=3))


@st.composite
def requests(draw) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name=draw(st.sampled_from(MODELS)),
                                        model_version=draw(st.sampled_from(["", "", "", "1", "2", "-1", "x"])),
                                        id=draw(st.text(max_size=8)))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        dt = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=5)))
        t = req.inputs.add(name=draw(st.sampled_from(NAMES)), datatype=dt,
                           shape=draw(st.lists(dims, max_size=4)))
        if raw:
            data = draw(bytes_elements()) if dt == "BYTES" else draw(st.binary(max_size=300))
            req.raw_input_contents.append(data)
        elif draw(st.booleans()):
            t.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=40)))
        elif draw(st.booleans()):
            t.contents.int64_contents.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8)))
        else:
            t.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=4)))
    if raw and draw(st.booleans()):  # one raw entry too many or too few
        if draw(st.booleans()):
            req.raw_input_contents.append(b"\0" * 4)
        elif req.raw_input_contents:
            del req.raw_input_contents[-1]
    for key in draw(st.lists(st.sampled_from(["priority", "timeout", "binary_data_output", "sequence_id", "x"]),
                             max_size=3, unique=True)):
        p = req.parameters[key]
        kind = draw(st.integers(0, 4))
        if kind == 0:
            p.bool_param = draw(st.booleans())
        elif kind == 1:
            p.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        elif kind == 2:
            p.string_param = draw(st.text(max_size=6))
        elif kind == 3:
            p.double_param = draw(st.floats(allow_nan=True))
        else:
            p.uint64_param = draw(st.integers(0, 2**64 - 1))
    for name in draw(st.lists(st.sampled_from(["OUTPUT0", "OUTPUT1", "probabilities", "y", ""]), max_size=2)):
        req.outputs.add(name=name)
    return req


def _call(server, payload: bytes) -> grpc.StatusCode:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            call(payload, timeout=RPC_TIMEOUT)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            assert exc.code() in ALLOWED, (exc.code(), exc.details())
            assert exc.details(), f"{exc.code()} without a message"
            return exc.code()


@FUZZ
@given(requests())
def test_fuzzed_requests_get_a_status_never_an_internal_error(server, req):
    _count("request", _call(server, req.SerializeToString()).name)


def _valid_request_bytes() -> bytes:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    return raw_request("add_sub", [("INPUT0", "FP32", [1, 16], a.tobytes()),
                                   ("INPUT1", "FP32", [1, 16], a.tobytes())]).SerializeToString()


@FUZZ
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=4), st.booleans())))
def test_fuzzed_bytes_get_a_status_never_an_internal_error(server, case):
    if isinstance(case, bytes):
        payload = case
    else:  # a valid request with bytes overwritten or cut short
        base = _valid_request_bytes()
        at, patch, cut = case
        at %= len(base)
        payload = base[:at] + patch + (b"" if cut else base[at + len(patch):])
    _count("bytes", _call(server, payload).name)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                                     st.text(max_size=5)),
                           lambda c: st.one_of(st.lists(c, max_size=5), st.dictionaries(st.text(max_size=5), c,
                                                                                            max_size=4)),
                           max_leaves=20)


@st.composite
def rest_bodies(draw) -> tuple[str, bytes, dict[str, str]]:
    model = draw(st.sampled_from(MODELS[:-1]))
    tensors = []
    for _ in range(draw(st.integers(0, 3))):
        t = {"name": draw(st.sampled_from(NAMES)), "datatype": draw(st.sampled_from([*DATATYPES, "X"])),
             "shape": draw(st.lists(dims, max_size=3))}
        if draw(st.booleans()):
            t["data"] = draw(json_values)
        else:
            t["parameters"] = {"binary_data_size": draw(st.integers(-5, 400))}
        tensors.append(t)
    doc = draw(st.one_of(st.just({"inputs": tensors}), json_values))
    body = json.dumps(doc).encode()
    headers = {"Content-Type": "application/json"}
    if draw(st.booleans()):  # the binary extension: a JSON header of a claimed length, then raw bytes
        tail = draw(st.binary(max_size=300))
        headers["Inference-Header-Content-Length"] = str(draw(st.one_of(st.just(len(body)),
                                                                        st.integers(-3, len(body) + 400))))
        body += tail
    return f"/v2/models/{model}/infer", body, headers


@FUZZ
@given(rest_bodies())
def test_fuzzed_rest_bodies_get_a_status_never_a_500(server, case):
    path, body, headers = case
    host, port = server.rest_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=RPC_TIMEOUT)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
    finally:
        conn.close()
    assert resp.status < 500 or resp.status == 503, (resp.status, text[:200])
    if resp.status >= 400:
        assert json.loads(text)["error"], text
    _count("rest", resp.status)


def test_server_still_correct_after_fuzzing(server, stub):
    """Runs after the fuzzers (file order): every model still answers correctly."""
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    resp = stub.ModelInfer(raw_request("add_sub", [("INPUT0", "FP32", [1, 16], a.tobytes()),
                                                   ("INPUT1", "FP32", [1, 16], a.tobytes())]), timeout=RPC_TIMEOUT)
    np.testing.assert_array_equal(output_arrays(resp)["OUTPUT0"], a + a)
    print("fuzz cases by outcome:", dict(sorted(COUNTS.items())))
