"""Malformed and invalid requests, built as raw protobuf (tritonclient refuses several client-side).

Each must fail with the documented status code and message, for itself only: the server keeps serving.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from helpers import RPC_TIMEOUT, output_arrays, raw_request, serialize_bytes
from tritonclient.grpc import service_pb2

pytestmark = pytest.mark.grpc_transports  # every test on each gRPC transport (conftest.py)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def f32(n: int) -> bytes:
    return np.arange(n, dtype=np.float32).tobytes()


def add_sub(in0=("FP32", [1, 16], None), in1=("FP32", [1, 16], None), **kw) -> service_pb2.ModelInferRequest:
    tensors = []
    for name, (dt, shape, data) in (("INPUT0", in0), ("INPUT1", in1)):
        tensors.append((name, dt, shape, f32(int(np.prod(shape))) if data is None else data))
    return raw_request(kw.pop("model", "add_sub"), tensors, **kw)


def text(data: bytes, shape=(1, 1)) -> service_pb2.ModelInferRequest:
    return raw_request("text", [("text", "BYTES", shape, data), ("scores", "FP16", [1, 4], b"\0" * 8)])


def typed_add_sub(fill0, fill1=lambda t: t.contents.fp32_contents.extend([0.0] * 16)):
    req = service_pb2.ModelInferRequest(model_name="add_sub")
    for name, fill in (("INPUT0", fill0), ("INPUT1", fill1)):
        fill(req.inputs.add(name=name, datatype="FP32", shape=[1, 16]))
    return req


def both_raw_and_typed():
    req = add_sub()
    req.inputs[0].contents.fp32_contents.extend([0.0] * 16)
    return req


def raw_count_mismatch():
    req = add_sub()
    del req.raw_input_contents[1]
    return req


def duplicate_input():
    req = add_sub()
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(f32(16))
    return req


def unknown_input():
    req = add_sub()
    req.inputs.add(name="EXTRA", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(f32(16))
    return req


def missing_input():
    return raw_request("add_sub", [("INPUT0", "FP32", [1, 16], f32(16))])


def typed_text_not_utf8():
    req = service_pb2.ModelInferRequest(model_name="text")
    req.inputs.add(name="text", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"\xc3\x28")
    req.inputs.add(name="scores", datatype="FP16", shape=[1, 0])
    return req


def typed_int8_overflow():
    req = service_pb2.ModelInferRequest(model_name="identity_all")
    req.inputs.add(name="in_INT8", datatype="INT8", shape=[1, 2]).contents.int_contents.extend([1, 300])
    return req


def classification():
    req = add_sub(outputs=["OUTPUT0"])
    req.outputs[0].parameters["classification"].int64_param = 2
    return req


CASES = [
    # id, request builder, status, message prefix
    ("unknown_model", lambda: add_sub(model="x"), NOT_FOUND, "Request for unknown model: 'x' is not found"),
    ("empty_model_name", lambda: add_sub(model=""), NOT_FOUND, "Request for unknown model: '' is not found"),
    ("unknown_version", lambda: add_sub(version="7"), NOT_FOUND,
     "Request for unknown model: 'add_sub' version 7 is not found"),
    ("non_numeric_version", lambda: add_sub(version="latest"), INVALID,
     "Request for unknown model: 'add_sub' version 'latest' is not a valid version number"),
    ("missing_input", missing_input, INVALID,
     "expected 2 inputs but got 1 inputs for model 'add_sub'. Got input(s) ['INPUT0'], but missing required "
     "input(s) ['INPUT1']"),
    ("unknown_input", unknown_input, INVALID, "unexpected inference input 'EXTRA' for model 'add_sub'"),
    ("duplicate_input", duplicate_input, INVALID, "input 'INPUT0' is given more than once for model 'add_sub'"),
    ("wrong_datatype", lambda: add_sub(in0=("INT32", [1, 16], f32(16))), INVALID,
     "unexpected datatype INT32 for inference input 'INPUT0', expecting FP32"),
    ("unknown_datatype", lambda: add_sub(in0=("FLOAT42", [1, 16], f32(16))), INVALID,
     "unknown datatype 'FLOAT42' for inference input 'INPUT0'"),
    ("wrong_rank", lambda: add_sub(in0=("FP32", [1, 16, 1], None)), INVALID,
     "unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [-1,16], got [1,16,1]"),
    ("missing_batch_dim", lambda: add_sub(in0=("FP32", [16], None)), INVALID,
     "unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [-1,16], got [16]"),
    ("wrong_dim", lambda: add_sub(in0=("FP32", [1, 15], None)), INVALID,
     "unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [-1,16], got [1,15]"),
    ("negative_dim", lambda: add_sub(in0=("FP32", [-1, 16], f32(16))), INVALID,
     "input 'INPUT0' has a negative dimension in shape [-1,16]"),
    ("batch_too_large", lambda: add_sub(in0=("FP32", [9, 16], None), in1=("FP32", [9, 16], None)), INVALID,
     "inference request batch-size must be <= 8 for 'add_sub' and >= 1, got 9"),
    ("batch_zero", lambda: add_sub(in0=("FP32", [0, 16], b""), in1=("FP32", [0, 16], b"")), INVALID,
     "inference request batch-size must be <= 8 for 'add_sub' and >= 1, got 0"),
    ("batch_mismatch", lambda: add_sub(in0=("FP32", [2, 16], None)), INVALID,
     "input 'INPUT1' has batch size 1 but an earlier input has 2"),
    ("raw_too_short", lambda: add_sub(in0=("FP32", [1, 16], f32(16)[:-1])), INVALID,
     "input byte size mismatch for input 'INPUT0': expected 64 bytes for shape [1,16] of FP32 (4 bytes each), "
     "got 63"),
    ("raw_too_long", lambda: add_sub(in1=("FP32", [1, 16], f32(16) + b"\0")), INVALID,
     "input byte size mismatch for input 'INPUT1': expected 64 bytes for shape [1,16] of FP32 (4 bytes each), "
     "got 65"),
    ("raw_empty", lambda: add_sub(in1=("FP32", [1, 16], b"")), INVALID,
     "input byte size mismatch for input 'INPUT1': expected 64 bytes"),
    ("bytes_truncated_prefix", lambda: text(b"\x05\x00"), INVALID,
     "malformed BYTES data for input 'text' with shape [1,1]: truncated length prefix at byte 0"),
    ("bytes_truncated_second_prefix", lambda: text(serialize_bytes([b"ab"]) + b"\x01", (2, 1)), INVALID,
     "malformed BYTES data for input 'text' with shape [2,1]: truncated length prefix at byte 6"),
    ("bytes_overrun", lambda: text(b"\x10\x00\x00\x00abc"), INVALID,
     "malformed BYTES data for input 'text' with shape [1,1]: element length at byte 0 runs past the end"),
    ("bytes_huge_length", lambda: text(b"\xff\xff\xff\xffabc"), INVALID,
     "malformed BYTES data for input 'text' with shape [1,1]: element length at byte 0 runs past the end"),
    ("bytes_too_many", lambda: text(serialize_bytes([b"red", b"blue"])), INVALID,
     "malformed BYTES data for input 'text' with shape [1,1]: more than the expected 1 elements"),
    ("bytes_too_few", lambda: text(b""), INVALID,
     "malformed BYTES data for input 'text' with shape [1,1]: expected 1 elements, got 0"),
    ("bytes_not_utf8", lambda: text(serialize_bytes([b"\xff\xfe"])), INVALID,
     "malformed BYTES data for input 'text' with shape [1,1]: element 0 is not valid UTF-8"),
    ("bytes_not_utf8_typed", typed_text_not_utf8, INVALID,
     "malformed BYTES data for input 'text': element 0 is not valid UTF-8"),
    ("raw_and_typed", both_raw_and_typed, INVALID,
     "input 'INPUT0' has both raw_input_contents and typed contents"),
    ("raw_count_mismatch", raw_count_mismatch, INVALID,
     "raw_input_contents has 1 entries but the request has 2 inputs"),
    ("no_data", lambda: typed_add_sub(lambda t: None), INVALID, "input 'INPUT0' carries no data"),
    ("typed_wrong_field", lambda: typed_add_sub(lambda t: t.contents.int_contents.extend([0] * 16)), INVALID,
     "input 'INPUT0' of datatype FP32 expects its values in 'fp32_contents', got 'int_contents'"),
    ("typed_wrong_count", lambda: typed_add_sub(lambda t: t.contents.fp32_contents.extend([0.0] * 15)), INVALID,
     "unexpected number of elements for input 'INPUT0': expected 16 for shape [1,16], got 15"),
    ("typed_out_of_range", typed_int8_overflow, INVALID, "a value of input 'in_INT8' does not fit in INT8"),
    ("unknown_output", lambda: add_sub(outputs=["OUTPUT9"]), INVALID,
     "unexpected inference output 'OUTPUT9' for model 'add_sub'"),
    ("classification_output", classification, INVALID, "output 'OUTPUT0' asks for classification"),
]


@pytest.mark.parametrize(("build", "code", "prefix"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request(stub, build, code, prefix):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(build(), timeout=RPC_TIMEOUT)
    assert err.value.code() == code, err.value.details()
    assert err.value.details().startswith(prefix), err.value.details()


def test_bad_requests_in_one_stream(stub):
    """The same table through ModelStreamInfer: one error_message per bad request, the stream survives,
    and the good requests interleaved with them all succeed."""
    good = add_sub(request_id="good")
    requests = []
    for i, (name, build, _, _) in enumerate(CASES):
        req = build()
        req.id = name
        requests.append(req)
        if i % 5 == 0:
            g = service_pb2.ModelInferRequest()
            g.CopyFrom(good)
            g.id = f"good{i}"
            requests.append(g)
    replies = list(stub.ModelStreamInfer(iter(requests), timeout=RPC_TIMEOUT))
    assert len(replies) == len(requests)
    by_id = {r.infer_response.id: r for r in replies}
    for name, _, _, prefix in CASES:
        assert by_id[name].error_message.startswith(prefix), (name, by_id[name].error_message)
    goods = [r for r in replies if r.infer_response.id.startswith("good")]
    assert goods and all(r.error_message == "" for r in goods)
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    np.testing.assert_array_equal(output_arrays(goods[0].infer_response)["OUTPUT0"], a + a)


@pytest.mark.parametrize("payload", [
    b"\x0a\xff",  # model_name claims 127 bytes that are not there
    b"\x0a\x03\xff\xfe\xfd",  # model_name is not UTF-8
    b"\x3a\x05ab",  # a raw_input_contents entry runs past the end
    b"\x08" + b"\xff" * 11,  # a varint longer than 10 bytes
], ids=["truncated", "not-utf8", "overrun", "long-varint"])
def test_malformed_request_bytes_are_invalid_argument(server, payload):
    """Bytes that are not a ModelInferRequest at all: the native parser refuses them, the server survives."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as err:
            call(payload, timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("malformed ModelInferRequest")


def test_server_still_serves_after_bad_requests(stub, client):
    resp = stub.ModelInfer(add_sub(request_id="after"), timeout=RPC_TIMEOUT)
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    out = output_arrays(resp)
    np.testing.assert_array_equal(out["OUTPUT0"], a + a)
    np.testing.assert_array_equal(out["OUTPUT1"], a - a)
    assert resp.id == "after"
    assert client.is_server_ready()
