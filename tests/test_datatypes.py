"""Every datatype through identity models, as raw bytes (tritonclient) and as typed contents (raw stub)."""

from __future__ import annotations

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import (
    CHANNEL_OPTIONS,
    RPC_TIMEOUT,
    expect_error,
    infer_input,
    output_arrays,
    raw_request,
    rpc_error,
    typed_request,
)
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import triton_to_np_dtype

from skewless.examples.generate import IDENTITY_DATATYPES

NUMERIC = [dt for dt in IDENTITY_DATATYPES if dt not in ("BOOL", "BYTES")]
STRINGS = ["", "héllo wörld ✓", "日本語のテキスト", "emoji 🎉 and \t tabs", "nul\x00inside", "plain ascii", "ÿ" * 300]


def sample(dt: str, rows: int = 2, cols: int = 3) -> np.ndarray:
    """Edge values of ``dt``: extremes for ints, NaN/inf/-0.0/subnormals for floats, UTF-8 for BYTES."""
    n = rows * cols
    if dt == "BOOL":
        flat = np.resize(np.array([True, False, False, True, True]), n)
    elif dt == "BYTES":
        flat = np.array([STRINGS[i % len(STRINGS)].encode() for i in range(n)], dtype=np.object_)
    else:
        t = np.dtype(triton_to_np_dtype(dt))
        if t.kind in "iu":
            info = np.iinfo(t)
            edge = [info.min, info.max, 0, 1, info.max - 1, info.min + 1, info.max // 3]
            if t.kind == "i":
                edge += [-1, info.min // 3]
            flat = np.resize(np.array(edge, dtype=t), n)
        else:
            fi = np.finfo(t)
            edge = [np.nan, np.inf, -np.inf, -0.0, 0.0, fi.max, fi.min, fi.tiny, fi.smallest_subnormal,
                    1 / 3, -2.5]
            flat = np.resize(np.array(edge, dtype=t), n)
    return flat.reshape(rows, cols)


def check_equal(dt: str, got: np.ndarray, want: np.ndarray, bitwise: bool = True) -> None:
    assert got.shape == want.shape, dt
    if dt == "BYTES":
        assert got.tolist() == want.tolist(), dt
        return
    assert got.dtype == want.dtype, dt
    if bitwise:  # NaN payloads and the sign of zero included
        assert got.tobytes() == want.tobytes(), dt
    else:
        np.testing.assert_array_equal(got, want)
        if want.dtype.kind == "f":
            np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def roundtrip(client, arrays: dict[str, np.ndarray]):
    inputs = [infer_input(f"in_{dt}", arr, dt) for dt, arr in arrays.items()]
    res = client.infer("identity_all", inputs, client_timeout=RPC_TIMEOUT)
    out = {o.name: o for o in res.get_response().outputs}
    for dt, arr in arrays.items():
        assert out[f"out_{dt}"].datatype == dt
        assert list(out[f"out_{dt}"].shape) == list(arr.shape)
        check_equal(dt, res.as_numpy(f"out_{dt}"), arr)


def test_all_datatypes_raw(client):
    roundtrip(client, {dt: sample(dt) for dt in IDENTITY_DATATYPES})


def test_all_datatypes_raw_batch_of_one_long_rows(client):
    roundtrip(client, {dt: sample(dt, 1, 37) for dt in IDENTITY_DATATYPES})


def test_empty_second_dimension(client):
    roundtrip(client, {dt: sample(dt, 3, 0) for dt in IDENTITY_DATATYPES})


def test_some_inputs_empty(client):
    roundtrip(client, {dt: sample(dt, 2, 0 if i % 2 else 4) for i, dt in enumerate(IDENTITY_DATATYPES)})


def test_all_datatypes_typed_contents(stub):
    """Typed InferTensorContents for every type that has a field; FP16 (no field) goes as an empty tensor."""
    arrays = {dt: sample(dt) for dt in IDENTITY_DATATYPES if dt != "FP16"}
    tensors = [(f"in_{dt}", dt, arr) for dt, arr in arrays.items()]
    tensors.append(("in_FP16", "FP16", np.zeros((2, 0), np.float16)))
    resp = stub.ModelInfer(typed_request("identity_all", tensors), timeout=RPC_TIMEOUT)
    got = output_arrays(resp)
    for dt, arr in arrays.items():
        # proto float fields carry values, not bit patterns: compare values (NaN == NaN) and signs of zero
        check_equal(dt, got[f"out_{dt}"], arr, bitwise=False)
    assert got["out_FP16"].shape == (2, 0)


def test_fp16_typed_contents_rejected(stub):
    tensors = [(f"in_{dt}", dt, sample(dt, 1, 0)) for dt in IDENTITY_DATATYPES if dt != "FP16"]
    req = typed_request("identity_all", tensors)
    t = req.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 2])
    t.contents.fp32_contents.extend([1.0, 2.0])  # there is no FP16 field: anything here is wrong
    err = rpc_error(lambda: stub.ModelInfer(req, timeout=RPC_TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    assert "input 'in_FP16' has datatype FP16, which typed contents cannot carry" in err.details()

    req = typed_request("identity_all", tensors)
    req.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 2])  # non-empty and no data at all
    err = rpc_error(lambda: stub.ModelInfer(req, timeout=RPC_TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    assert "in_FP16" in err.details()


def test_bf16_roundtrip(client):
    """BF16 (numpy has none; tritonclient uses ml_dtypes.bfloat16) through identity_bf16."""
    values = np.array([[0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, 3.140625, 1e38],
                       [np.nan, 65280.0, -1e-38, 0.5, 7.0, -7.0, 1024.0, 2.0 ** -130]], dtype=ml_dtypes.bfloat16)
    res = client.infer("identity_bf16", [infer_input("in_BF16", values, "BF16")], client_timeout=RPC_TIMEOUT)
    out = res.get_response().outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("out_BF16", "BF16", [2, 8])
    got = res.as_numpy("out_BF16")
    assert got.dtype == ml_dtypes.bfloat16
    assert got.view(np.uint16).tobytes() == values.view(np.uint16).tobytes()


def test_bf16_typed_contents_rejected(stub):
    req = typed_request("identity_bf16", [])
    t = req.inputs.add(name="in_BF16", datatype="BF16", shape=[1, 2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    err = rpc_error(lambda: stub.ModelInfer(req, timeout=RPC_TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    assert "in_BF16" in err.details()


def test_bf16_sent_to_fp32_input_rejected(stub):
    req = raw_request("add_sub", [("INPUT0", "BF16", [1, 16], b"\0" * 32), ("INPUT1", "FP32", [1, 16], b"\0" * 64)])
    err = rpc_error(lambda: stub.ModelInfer(req, timeout=RPC_TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
    assert err.details().startswith("unexpected datatype BF16 for inference input 'INPUT0', expecting FP32")


def test_text_model_strings_and_fp16(client):
    """The example text model: BYTES through a LabelEncoder, FP16 summed as FP32."""
    words = np.array([[b"red"], [b"blue"], [b"magenta"], [b""], ["vert ✓".encode()]], dtype=np.object_)
    scores = np.arange(20, dtype=np.float16).reshape(5, 4) / np.float16(4)
    res = client.infer("text", [infer_input("text", words), infer_input("scores", scores)],
                       client_timeout=RPC_TIMEOUT)
    np.testing.assert_array_equal(res.as_numpy("label_id"), [[0], [2], [5], [-1], [-1]])
    np.testing.assert_array_equal(res.as_numpy("score_sum"), scores.astype(np.float32).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("via", ["tritonclient", "stub"])
def test_large_message(server, via):
    """A request and a reply above gRPC's 4 MiB default limit (8 x 200k FP32 = 6.4 MB each way)."""
    big = np.random.default_rng(5).standard_normal((8, 200_000)).astype(np.float32)
    arrays = {dt: sample(dt, 8, 0) for dt in IDENTITY_DATATYPES}
    arrays["FP32"] = big
    if via == "tritonclient":
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            inputs = [infer_input(f"in_{dt}", arr, dt) for dt, arr in arrays.items()]
            got = c.infer("identity_all", inputs, client_timeout=RPC_TIMEOUT).as_numpy("out_FP32")
    else:
        tensors = [(f"in_{dt}", dt, arr.shape, b"" if arr.size == 0 else arr.tobytes())
                   for dt, arr in arrays.items()]
        with grpc.insecure_channel(server.grpc_url, options=CHANNEL_OPTIONS) as ch:
            resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
                raw_request("identity_all", tensors, outputs=["out_FP32"]), timeout=RPC_TIMEOUT)
        assert resp.ByteSize() > 4 * 2**20
        got = output_arrays(resp)["out_FP32"]
    assert got.tobytes() == big.tobytes()


def test_unknown_datatype_via_tritonclient(client):
    x = np.zeros((1, 16), np.float32)
    bad = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    bad.set_data_from_numpy(x)
    bad._input.datatype = "FLOAT42"  # tritonclient validates locally; go around it once
    expect_error(lambda: client.infer("add_sub", [bad, infer_input("INPUT1", x)]), "INVALID_ARGUMENT",
                 "unknown datatype 'FLOAT42' for inference input 'INPUT0'")
