"""Tensor codec: KServe v2 wire tensors <-> numpy arrays, and the datatype tables every layer shares.

Decoding is zero-copy for fixed-size types (``numpy.frombuffer`` over the request's bytes); BYTES tensors go
through the native length-prefix codec. Replies always use ``raw_output_contents``, since tritonclient's
``as_numpy`` reads only those.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skewless.native.bytes_codec import BytesFormatError, decode_bytes, encode_bytes

from .errors import InvalidArgument


@dataclass(frozen=True)
class DataType:
    name: str  # v2 protocol name, e.g. "FP32"
    config_name: str  # ModelConfig enum name, e.g. "TYPE_FP32"
    onnx: str  # onnxruntime type string, e.g. "tensor(float)"
    numpy: np.dtype
    contents_field: str | None  # InferTensorContents field, None when only raw bytes can carry it

    @property
    def itemsize(self) -> int:
        return 0 if self.name == "BYTES" else self.numpy.itemsize


def _dt(name: str, config: str, onnx: str, dtype: str | type, field: str | None) -> DataType:
    return DataType(name, config, onnx, np.dtype(dtype), field)


DATATYPES: dict[str, DataType] = {
    d.name: d
    for d in (
        _dt("BOOL", "TYPE_BOOL", "tensor(bool)", np.bool_, "bool_contents"),
        _dt("UINT8", "TYPE_UINT8", "tensor(uint8)", "<u1", "uint_contents"),
        _dt("UINT16", "TYPE_UINT16", "tensor(uint16)", "<u2", "uint_contents"),
        _dt("UINT32", "TYPE_UINT32", "tensor(uint32)", "<u4", "uint_contents"),
        _dt("UINT64", "TYPE_UINT64", "tensor(uint64)", "<u8", "uint64_contents"),
        _dt("INT8", "TYPE_INT8", "tensor(int8)", "<i1", "int_contents"),
        _dt("INT16", "TYPE_INT16", "tensor(int16)", "<i2", "int_contents"),
        _dt("INT32", "TYPE_INT32", "tensor(int32)", "<i4", "int_contents"),
        _dt("INT64", "TYPE_INT64", "tensor(int64)", "<i8", "int64_contents"),
        _dt("FP16", "TYPE_FP16", "tensor(float16)", "<f2", None),
        _dt("FP32", "TYPE_FP32", "tensor(float)", "<f4", "fp32_contents"),
        _dt("FP64", "TYPE_FP64", "tensor(double)", "<f8", "fp64_contents"),
        _dt("BYTES", "TYPE_STRING", "tensor(string)", object, "bytes_contents"),
        # numpy has no bfloat16: its 16-bit patterns travel as uint16 (the runtime tags them for onnxruntime).
        _dt("BF16", "TYPE_BF16", "tensor(bfloat16)", "<u2", None),
    )
}
BY_CONFIG_NAME = {d.config_name: d for d in DATATYPES.values()}
BY_ONNX = {d.onnx: d for d in DATATYPES.values()}


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def format_shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def decode_raw(name: str, dtype: DataType, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """View raw little-endian bytes as an array of ``shape``; BYTES become str objects for onnxruntime."""
    count = element_count(shape)
    if dtype.name == "BYTES":
        try:
            flat = decode_bytes(raw, count, True)
        except BytesFormatError as exc:
            raise InvalidArgument(
                f"malformed BYTES data for input '{name}' with shape {format_shape(shape)}: {exc}"
            ) from None
        return flat.reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input byte size mismatch for input '{name}': expected {expected} bytes for shape "
            f"{format_shape(shape)} of {dtype.name} ({dtype.itemsize} bytes each), got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype.numpy).reshape(shape)


def decode_typed(name: str, dtype: DataType, shape: Sequence[int], contents) -> np.ndarray:
    """Decode typed ``InferTensorContents``; only the field that matches the datatype may be set."""
    if dtype.contents_field is None:
        if element_count(shape) == 0 and not contents.ListFields():
            # An empty tensor has no values to carry, so it needs no field: requests that use typed
            # contents (no raw_input_contents) can still include empty FP16/BF16 inputs.
            return np.empty(shape, dtype=dtype.numpy)
        raise InvalidArgument(
            f"input '{name}' has datatype {dtype.name}, which typed contents cannot carry: "
            "send it in raw_input_contents"
        )
    set_fields = [f.name for f, _ in contents.ListFields()]
    wrong = [f for f in set_fields if f != dtype.contents_field]
    if wrong:
        raise InvalidArgument(
            f"input '{name}' of datatype {dtype.name} expects its values in '{dtype.contents_field}', "
            f"got '{wrong[0]}'"
        )
    values = getattr(contents, dtype.contents_field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidArgument(
            f"unexpected number of elements for input '{name}': expected {count} for shape "
            f"{format_shape(shape)}, got {len(values)} in '{dtype.contents_field}'"
        )
    if dtype.name == "BYTES":
        out = np.empty(count, dtype=object)
        for i, v in enumerate(values):
            try:
                out[i] = v.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument(
                    f"malformed BYTES data for input '{name}': element {i} is not valid UTF-8; "
                    "string tensors must hold UTF-8 text"
                ) from None
        return out.reshape(shape)
    try:
        arr = np.asarray(values, dtype=dtype.numpy) if count else np.empty(0, dtype=dtype.numpy)
    except OverflowError:
        raise InvalidArgument(f"a value of input '{name}' does not fit in {dtype.name}") from None
    return arr.reshape(shape)


def encode_array(arr: np.ndarray, dtype: DataType) -> bytes:
    """The raw little-endian bytes of an output array, as ``raw_output_contents`` carries them."""
    if dtype.name == "BYTES":
        return encode_bytes(arr)
    if arr.dtype != dtype.numpy:
        arr = arr.astype(dtype.numpy)
    return np.ascontiguousarray(arr).tobytes()


def datatype_of_array(arr: np.ndarray) -> DataType:
    kind = arr.dtype.kind
    if kind in "OUS":
        return DATATYPES["BYTES"]
    for d in DATATYPES.values():
        if d.name not in ("BYTES", "BF16") and d.numpy == arr.dtype.newbyteorder("<"):
            return d
    raise InvalidArgument(f"no v2 datatype for numpy dtype {arr.dtype}")
