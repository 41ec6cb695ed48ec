"""One table column -> the values to send for one raw input, plus its missing mask.

Sources: pandas Series (numpy dtypes, nullable Int64/Float64/boolean/string, categoricals, object columns),
pyarrow Array/ChunkedArray (dictionary arrays included), numpy arrays and lists. Missing is a pandas
NA/None/NaN or an Arrow null (and NaN in a float column), as offline ``skewless transform`` reads them.

Floating-point inputs carry missing values as NaN (the agreed wire design: a NaN in a float input is missing
without a companion), so only INT/BOOL/BYTES columns yield a mask. Strings become an Arrow-style
(offsets, data) pair so that the BYTES wire format can be built with numpy, without one Python object per value
(pyarrow does the encoding when installed; a plain Python fallback covers object columns without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UnsendableColumn
from .schema import FLOAT_DATATYPES, RawInput

NUMPY_TYPES = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
               "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
               "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


@dataclass(frozen=True)
class ByteColumn:
    """Strings as Arrow keeps them: element i is ``data[offsets[i]:offsets[i + 1]]`` (offsets absolute)."""

    offsets: np.ndarray  # int64, rows + 1
    data: np.ndarray  # uint8

    def __len__(self) -> int:
        return len(self.offsets) - 1


@dataclass(frozen=True)
class Column:
    """What is sent for one raw input: values in the wire datatype, and where elements are missing."""

    values: np.ndarray | ByteColumn
    mask: np.ndarray | None  # bool per row, True = missing; None when nothing is missing (or NaN carries it)


def _module(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


def encode_column(data: Any, raw: RawInput) -> Column:
    """Convert a column for ``raw``'s datatype. Raises UnsendableColumn naming the column."""
    kind = _module(data)
    if kind == "pyarrow":
        return _from_arrow(data, raw)
    if kind == "pandas":
        return _from_pandas(data, raw)
    arr = np.asarray(data)
    if arr.ndim != 1:
        arr = arr.reshape(len(arr), -1)
        if arr.shape[1] != 1:
            raise UnsendableColumn(f"column '{raw.name}' has {arr.shape[1]} values per row; the model takes one")
        arr = arr[:, 0]
    if arr.dtype.kind in "OUS":
        return _from_objects(arr, None, raw)
    return _numbers(arr, None, raw)


# -- numbers and booleans -------------------------------------------------------------------------------------
def _numbers(values: np.ndarray, mask: np.ndarray | None, raw: RawInput) -> Column:
    """Cast numeric ``values`` (anything where ``mask`` is set) to the input's datatype, checking that no
    value changes on the way."""
    dt, src = raw.datatype, values.dtype.kind
    if dt == "BYTES":
        raise UnsendableColumn(f"column '{raw.name}' holds {values.dtype} values; the model's input is BYTES "
                               "(strings): convert the column to strings as it was when the spec was fitted")
    target = np.dtype(NUMPY_TYPES[dt])
    if dt == "BOOL":
        if src != "b":
            raise UnsendableColumn(f"column '{raw.name}' holds {values.dtype} values; the model's input is BOOL")
        out = values.astype(np.bool_, copy=False)
        return _masked(out, mask, False)
    if src not in "iuf":
        raise UnsendableColumn(f"column '{raw.name}' holds {values.dtype} values; the model's input is {dt} "
                               "(numbers)")
    if dt in FLOAT_DATATYPES:
        out = values.astype(target, copy=False)
        if mask is not None and mask.any():
            out = out.copy() if out is values else out
            out[mask] = np.nan  # NaN is missing in a float input: no companion needed
        return Column(out, None)
    # an integer input
    if src == "f":
        nan = np.isnan(values)
        mask = nan if mask is None else (mask | nan)
        present = values[~mask] if mask.any() else values
        if not np.all(np.isfinite(present)) or not np.array_equal(present, np.trunc(present)):
            raise UnsendableColumn(f"column '{raw.name}' holds non-integer values; the model's input is {dt}")
        values = np.where(mask, 0, values) if mask.any() else values
    info = np.iinfo(target)
    present = values if mask is None or not mask.any() else values[~mask]
    if present.size and (present.min() < info.min or present.max() > info.max):
        raise UnsendableColumn(f"column '{raw.name}' holds values outside the range of {dt}")
    out = values.astype(target)
    return _masked(out, mask, 0)


def _masked(values: np.ndarray, mask: np.ndarray | None, fill: Any) -> Column:
    if mask is None or not mask.any():
        return Column(values, None)
    values = values.copy()  # never write into the caller's table
    values[mask] = fill  # the value at a missing element is ignored; send a fixed one
    return Column(values, np.ascontiguousarray(mask, dtype=np.bool_))


# -- pandas ---------------------------------------------------------------------------------------------------
def _from_pandas(series: Any, raw: RawInput) -> Column:
    import pandas as pd

    if isinstance(series, pd.DataFrame):
        raise UnsendableColumn(f"column '{raw.name}' appears more than once in the table")
    mask = series.isna().to_numpy(dtype=np.bool_)
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        if raw.datatype == "BYTES":
            return _categorical_bytes(series, mask, raw)
        series = series.astype(object)
        dtype = series.dtype
    if raw.datatype == "BYTES":
        try:
            import pyarrow as pa
        except ImportError:
            return _from_objects(series.to_numpy(dtype=object), mask, raw)
        try:  # zero-copy for Arrow-backed string columns; one C++ pass for object columns
            converted = pa.array(series, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            converted = None
        return _checked_strings(converted, series.to_numpy(dtype=object), mask, raw)
    if dtype.kind in "OUS":
        return _from_objects(series.to_numpy(dtype=object), mask, raw)
    numpy_dtype = np.dtype(getattr(dtype, "numpy_dtype", dtype))  # nullable Int64/Float64/boolean
    if numpy_dtype.kind not in "biuf":
        raise UnsendableColumn(f"column '{raw.name}' holds {dtype} values, which no raw input takes")
    fill = False if numpy_dtype.kind == "b" else 0
    values = series.to_numpy(dtype=numpy_dtype, na_value=fill) if mask.any() else series.to_numpy(numpy_dtype)
    return _numbers(values, mask if mask.any() else None, raw)


def _categorical_bytes(series: Any, mask: np.ndarray, raw: RawInput) -> Column:
    """Encode the categories once (few), then gather them by code with numpy."""
    cats = _strings_from_objects(np.asarray(series.cat.categories, dtype=object), None, raw).values
    codes = series.cat.codes.to_numpy().astype(np.int64)
    codes[codes < 0] = 0
    if len(cats) == 0:  # every row missing
        return Column(ByteColumn(np.zeros(len(codes) + 1, np.int64), np.empty(0, np.uint8)), _any(mask))
    lengths = np.diff(cats.offsets)[codes]
    lengths[mask] = 0  # a missing element is sent empty (its value is ignored)
    offsets = np.zeros(len(codes) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = _gather(cats, codes, lengths, offsets)
    return Column(ByteColumn(offsets, data), _any(mask))


def _gather(col: ByteColumn, index: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Bytes of elements ``index`` of ``col``, concatenated: each output byte's source position, at once."""
    total = int(offsets[-1])
    if total == 0:
        return np.empty(0, np.uint8)
    owner = np.repeat(np.arange(len(index)), lengths)
    within = np.arange(total) - offsets[:-1][owner]
    return col.data[col.offsets[index][owner] + within]


def _any(mask: np.ndarray | None) -> np.ndarray | None:
    return mask if mask is not None and mask.any() else None


# -- strings and Python objects -------------------------------------------------------------------------------
def _from_objects(arr: np.ndarray, mask: np.ndarray | None, raw: RawInput) -> Column:
    """An object/str array: strings for BYTES, numbers or booleans otherwise (None/NaN are missing)."""
    if raw.datatype == "BYTES":
        return _strings_from_objects(arr, mask, raw)
    if mask is None:
        mask = np.fromiter((_is_missing(v) for v in arr), np.bool_, len(arr)) if arr.dtype.kind == "O" else \
            np.zeros(len(arr), np.bool_)
    present = arr[~mask]
    try:
        typed = np.array(present.tolist()) if present.size else np.empty(0, NUMPY_TYPES[raw.datatype])
    except (TypeError, ValueError):
        typed = np.empty(0, object)
    if typed.dtype.kind not in "biuf":
        raise UnsendableColumn(f"column '{raw.name}' holds {_kinds(present)} values; the model's input is "
                               f"{raw.datatype}")
    values = np.zeros(len(arr), typed.dtype)
    values[~mask] = typed
    return _numbers(values, _any(mask), raw)


def _strings_from_objects(arr: np.ndarray, mask: np.ndarray | None, raw: RawInput) -> Column:
    try:
        import pyarrow as pa
    except ImportError:
        return _strings_python(arr, mask, raw)
    try:
        converted = pa.array(arr, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        converted = None
    return _checked_strings(converted, arr, mask, raw)


def _checked_strings(converted: Any, arr: np.ndarray, mask: np.ndarray | None, raw: RawInput) -> Column:
    """``converted``: pyarrow's reading of ``arr`` (None if it failed); strings, or a clear error."""
    import pyarrow as pa

    if converted is not None and pa.types.is_dictionary(converted.type):
        converted = converted.dictionary_decode()
    if converted is None or not (_is_stringlike(converted.type) or pa.types.is_null(converted.type)):
        raise UnsendableColumn(f"column '{raw.name}' holds {_kinds(arr)} values; the model's input is BYTES "
                               "(each value must be a str or bytes, or missing)")
    col = _from_arrow(converted, raw)
    if mask is not None:
        merged = mask if col.mask is None else (mask | col.mask)
        return Column(col.values, _any(merged))
    return col


def _strings_python(arr: np.ndarray, mask: np.ndarray | None, raw: RawInput) -> Column:
    """Without pyarrow: one encode per value (what tritonclient itself does for BYTES)."""
    if mask is None:
        mask = np.fromiter((_is_missing(v) for v in arr), np.bool_, len(arr))
    encoded = []
    for v, missing in zip(arr.tolist(), mask.tolist(), strict=True):
        if missing:
            encoded.append(b"")
        elif isinstance(v, str):
            encoded.append(v.encode("utf-8"))
        elif isinstance(v, bytes | bytearray | memoryview):
            encoded.append(bytes(v))
        else:
            raise UnsendableColumn(f"column '{raw.name}' holds {v!r} ({type(v).__name__}); the model's input "
                                   "is BYTES (each value must be a str or bytes, or missing)")
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    return Column(ByteColumn(offsets, np.frombuffer(b"".join(encoded), np.uint8)), _any(mask))


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or type(v).__name__ in ("NAType", "NaTType")


def _kinds(values: np.ndarray) -> str:
    names = sorted({type(v).__name__ for v in values.tolist()[:1000] if not _is_missing(v)})
    return "/".join(names) or "no"


# -- pyarrow --------------------------------------------------------------------------------------------------
def _from_arrow(arr: Any, raw: RawInput) -> Column:
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    mask = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    if raw.datatype == "BYTES":
        if pa.types.is_null(t):
            return Column(ByteColumn(np.zeros(len(arr) + 1, np.int64), np.empty(0, np.uint8)), _any(mask))
        if not _is_stringlike(t):
            raise UnsendableColumn(f"column '{raw.name}' holds Arrow {t} values; the model's input is BYTES "
                                   "(strings)")
        try:
            arr = arr.cast(pa.large_binary())
        except pa.ArrowNotImplementedError:
            raise UnsendableColumn(f"column '{raw.name}': cannot read Arrow {t} values as bytes") from None
        _, offsets_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(offsets_buf, np.int64)[arr.offset: arr.offset + len(arr) + 1]
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.empty(0, np.uint8)
        return Column(ByteColumn(offsets, data), mask)
    if pa.types.is_null(t):
        return _numbers(np.zeros(len(arr), NUMPY_TYPES[raw.datatype]), mask, raw)
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise UnsendableColumn(f"column '{raw.name}' holds Arrow {t} values; the model's input is {raw.datatype}")
    if mask is not None:
        arr = arr.fill_null(False if pa.types.is_boolean(t) else 0)
    return _numbers(arr.to_numpy(zero_copy_only=False), mask, raw)


def _is_stringlike(t: Any) -> bool:
    import pyarrow as pa

    checks = ("is_string", "is_large_string", "is_binary", "is_large_binary", "is_string_view", "is_binary_view")
    return any(getattr(pa.types, f, lambda _: False)(t) for f in checks)
