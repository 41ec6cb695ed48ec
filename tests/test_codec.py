"""server/codec.py: raw and typed decoding, encoding, and the datatype tables, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import service_pb2

from skewless.server.codec import (
    DATATYPES,
    datatype_of_array,
    decode_raw,
    decode_typed,
    encode_array,
    format_shape,
)
from skewless.server.errors import InvalidArgument

FIXED = [name for name, d in DATATYPES.items() if name not in ("BYTES", "BF16")]
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)


@st.composite
def fixed_arrays(draw):
    dt = DATATYPES[draw(st.sampled_from(FIXED))]
    arr = draw(hnp.arrays(dt.numpy, shapes))
    return dt, arr


@given(fixed_arrays())
def test_raw_roundtrip_fixed_size(case):
    dt, arr = case
    wire = encode_array(arr, dt)
    assert wire == arr.astype(dt.numpy).tobytes()
    out = decode_raw("x", dt, arr.shape, wire)
    assert out.dtype == dt.numpy and out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()  # bit for bit, NaN payloads and -0.0 included


@given(fixed_arrays(), st.integers(1, 9), st.booleans())
def test_raw_size_mismatch(case, delta, longer):
    dt, arr = case
    wire = arr.tobytes()
    wire = wire + b"\0" * delta if longer else wire[:-delta]
    if len(wire) == arr.nbytes or (not longer and arr.nbytes < delta):
        return
    with pytest.raises(InvalidArgument) as err:
        decode_raw("x", dt, arr.shape, wire)
    assert str(err.value) == (
        f"input byte size mismatch for input 'x': expected {arr.nbytes} bytes for shape "
        f"{format_shape(arr.shape)} of {dt.name} ({dt.itemsize} bytes each), got {len(wire)}")


@given(st.lists(st.text(), max_size=12))
def test_raw_bytes_decodes_to_str(items):
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    wire = encode_array(arr.reshape(1, -1), DATATYPES["BYTES"])
    out = decode_raw("s", DATATYPES["BYTES"], [1, len(items)], wire)
    assert out.shape == (1, len(items))
    assert out.reshape(-1).tolist() == items  # str, as onnxruntime's string tensors need


def test_raw_bytes_errors_name_the_input():
    with pytest.raises(InvalidArgument, match=r"^malformed BYTES data for input 's' with shape \[2\]"):
        decode_raw("s", DATATYPES["BYTES"], [2], b"\x01\x00\x00\x00a")


def test_encode_array_casts_to_the_declared_type():
    assert encode_array(np.array([1, 2], dtype=np.int64), DATATYPES["INT32"]) == np.array([1, 2], "<i4").tobytes()
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert encode_array(fortran, DATATYPES["FP32"]) == np.arange(6, dtype=np.float32).tobytes()  # C order


def _contents(field: str, values) -> service_pb2.InferTensorContents:
    c = service_pb2.InferTensorContents()
    getattr(c, field).extend(values)
    return c


TYPED_CASES = {
    "BOOL": [True, False, True, True],
    "INT8": [-128, 127, 0, -1], "INT16": [-32768, 32767, 1, 2], "INT32": [-2**31, 2**31 - 1, 0, 5],
    "INT64": [-2**63, 2**63 - 1, 0, -7],
    "UINT8": [0, 255, 1, 2], "UINT16": [0, 65535, 3, 4], "UINT32": [0, 2**32 - 1, 5, 6],
    "UINT64": [0, 2**64 - 1, 7, 8],
    "FP32": [float("nan"), float("-inf"), -0.0, 1.5], "FP64": [float("inf"), -0.0, 1e300, -1e-300],
}


@pytest.mark.parametrize("name", sorted(TYPED_CASES))
def test_typed_contents(name):
    dt = DATATYPES[name]
    values = TYPED_CASES[name]
    out = decode_typed("t", dt, [2, 2], _contents(dt.contents_field, values))
    want = np.array(values, dtype=dt.numpy).reshape(2, 2)
    assert out.dtype == dt.numpy and out.shape == (2, 2)
    np.testing.assert_array_equal(out, want)
    if dt.numpy.kind == "f":
        np.testing.assert_array_equal(np.signbit(out), np.signbit(want))


def test_typed_bytes():
    out = decode_typed("t", DATATYPES["BYTES"], [3], _contents("bytes_contents", [b"", "é".encode(), b"x"]))
    assert out.tolist() == ["", "é", "x"]
    with pytest.raises(InvalidArgument, match="element 1 is not valid UTF-8"):
        decode_typed("t", DATATYPES["BYTES"], [2], _contents("bytes_contents", [b"a", b"\xff"]))


@pytest.mark.parametrize(("name", "values"), [("INT8", [128]), ("INT8", [-129]), ("UINT8", [256]),
                                              ("INT16", [40000]), ("UINT16", [70000])])
def test_typed_out_of_range(name, values):
    dt = DATATYPES[name]
    with pytest.raises(InvalidArgument, match=f"does not fit in {name}"):
        decode_typed("t", dt, [1], _contents(dt.contents_field, values))


def test_typed_errors():
    fp32 = DATATYPES["FP32"]
    with pytest.raises(InvalidArgument, match="expects its values in 'fp32_contents', got 'fp64_contents'"):
        decode_typed("t", fp32, [1], _contents("fp64_contents", [1.0]))
    with pytest.raises(InvalidArgument, match=r"expected 2 for shape \[2\], got 3 in 'fp32_contents'"):
        decode_typed("t", fp32, [2], _contents("fp32_contents", [1.0, 2.0, 3.0]))
    for name in ("FP16", "BF16"):
        with pytest.raises(InvalidArgument, match="which typed contents cannot carry"):
            decode_typed("t", DATATYPES[name], [1], _contents("fp32_contents", [1.0]))
        with pytest.raises(InvalidArgument, match="which typed contents cannot carry"):
            decode_typed("t", DATATYPES[name], [1], service_pb2.InferTensorContents())
        # An empty tensor carries no values, so it needs no field.
        assert decode_typed("t", DATATYPES[name], [3, 0], service_pb2.InferTensorContents()).shape == (3, 0)


def test_typed_empty():
    out = decode_typed("t", DATATYPES["INT32"], [2, 0], service_pb2.InferTensorContents())
    assert out.shape == (2, 0) and out.dtype == np.dtype("<i4")


@pytest.mark.parametrize(("dtype", "name"), [
    (np.float32, "FP32"), (np.float16, "FP16"), (np.float64, "FP64"), (np.bool_, "BOOL"), (np.int8, "INT8"),
    (np.uint64, "UINT64"), (">i4", "INT32"), (object, "BYTES"), ("S3", "BYTES"), ("U2", "BYTES"),
])
def test_datatype_of_array(dtype, name):
    assert datatype_of_array(np.zeros(1, dtype=dtype)).name == name


def test_datatype_of_array_unknown():
    with pytest.raises(InvalidArgument, match="no v2 datatype"):
        datatype_of_array(np.zeros(1, dtype=np.complex64))


def test_tables_are_consistent():
    for name, d in DATATYPES.items():
        assert d.name == name and d.config_name == f"TYPE_{'STRING' if name == 'BYTES' else name}"
        if name not in ("BYTES", "BF16"):
            assert d.itemsize == d.numpy.itemsize and d.numpy.byteorder in "<|="
    assert format_shape([1, -1, 0]) == "[1,-1,0]"
