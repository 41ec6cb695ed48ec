"""Adapt raw input columns (numpy, pandas, pyarrow, Arrow-style tuples) to the kernel's column tuples.

A kernel column is ``(kind, values, data, valid_bytes, valid_bits, bit_offset)``:

* numeric: ``values`` is float64 / int64 / bool, one entry per row; ``data`` is None;
* string: ``values`` is int32 or int64 Arrow offsets (rows + 1 entries, relative to ``data``) and ``data``
  the uint8 bytes, so strings are never materialised as Python objects when they come from Arrow;
* validity: a bool byte mask per row (``valid_bytes``) and/or an Arrow LSB bitmap starting at bit
  ``bit_offset`` (``valid_bits``); a NaN float is missing too.

Everything here is zero-copy where the source layout allows it. Conversions that the spec's declared dtype
makes unambiguous (int32 -> int64, float32 -> float64, integral floats -> int) copy; anything else raises
FeatureInputError naming the column, which the server reports as INVALID_ARGUMENT.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .feature_kernel import FeatureInputError, strings_to_buffers

Column = tuple  # (kind, values, data, valid_bytes, valid_bits, bit_offset)
_EMPTY_BYTES = np.zeros(0, dtype=np.uint8)


def _pa():
    import pyarrow

    return pyarrow


def _is_arrow(obj: Any) -> bool:
    mod = sys.modules.get("pyarrow")
    return mod is not None and isinstance(obj, mod.Array | mod.ChunkedArray)


def _as_1d(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise FeatureInputError(name, f"expected one value per row, got shape {arr.shape}")
    return arr


def _valid_mask(name: str, valid: Any, n: int) -> np.ndarray | None:
    if valid is None:
        return None
    v = np.ascontiguousarray(_as_1d(name, np.asarray(valid)))
    if v.dtype != np.bool_:
        if v.dtype.kind not in "iu":
            raise FeatureInputError(name, f"validity mask must be bool, got {v.dtype}")
        v = v != 0
    if v.shape[0] != n:
        raise FeatureInputError(name, f"validity mask has {v.shape[0]} entries for {n} rows")
    return v


def _and(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def numeric_column(name: str, values: Any, valid: Any, dtype: str) -> Column:
    """A float/int/bool input from a numpy-like array and an optional validity mask."""
    arr = _as_1d(name, np.asarray(values))
    n = arr.shape[0]
    mask = _valid_mask(name, valid, n)
    kind = arr.dtype.kind
    if dtype == "float":
        if arr.dtype != np.float64:
            if kind not in "fiub":
                raise FeatureInputError(name, f"expected numbers, got {arr.dtype}")
            arr = arr.astype(np.float64)
        return ("f64", np.ascontiguousarray(arr), None, mask, None, 0)
    if kind == "f":  # int/bool inputs often arrive as float because a missing value forced NaN
        arr = arr.astype(np.float64, copy=False)
        nan = np.isnan(arr)
        finite = arr[~nan]
        if not np.all(np.isfinite(finite)) or np.any(finite != np.round(finite)):
            raise FeatureInputError(name, f"expected {dtype} values, got non-integral floats")
        if dtype == "bool" and np.any((finite != 0) & (finite != 1)):
            raise FeatureInputError(name, "expected booleans (0/1), got other numbers")
        if dtype == "int" and finite.size and (finite.min() < -(2.0**63) or finite.max() >= 2.0**63):
            raise FeatureInputError(name, "integer out of int64 range")
        if nan.any():
            mask = _and(mask, ~nan)
            arr = np.where(nan, 0.0, arr)
        kind = "i"
        arr = arr.astype(np.int64)
    if dtype == "int":
        if arr.dtype != np.int64:
            if kind not in "iub":
                raise FeatureInputError(name, f"expected integers, got {arr.dtype}")
            if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
                raise FeatureInputError(name, "integer out of int64 range")
            arr = arr.astype(np.int64)
        return ("i64", np.ascontiguousarray(arr), None, mask, None, 0)
    if dtype == "bool":
        if arr.dtype != np.bool_:
            if kind not in "iu":
                raise FeatureInputError(name, f"expected booleans, got {arr.dtype}")
            if np.any((arr != 0) & (arr != 1)):
                raise FeatureInputError(name, "expected booleans (0/1), got other numbers")
            arr = arr != 0
        return ("bool", np.ascontiguousarray(arr), None, mask, None, 0)
    raise FeatureInputError(name, f"a numeric array cannot feed a {dtype} input")


def string_column(name: str, offsets: Any, data: Any, valid: Any = None) -> Column:
    """A string input from Arrow-style buffers: offsets (int32/int64, rows + 1) into uint8 ``data``."""
    off = np.asarray(offsets)
    if off.dtype not in (np.int32, np.int64):
        raise FeatureInputError(name, f"string offsets must be int32 or int64, got {off.dtype}")
    off = np.ascontiguousarray(off)
    buf = np.ascontiguousarray(np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray)
                               else np.asarray(data).view(np.uint8).reshape(-1))
    n = off.shape[0] - 1
    if off.ndim != 1 or n < 0:
        raise FeatureInputError(name, "string offsets must be 1-D with rows + 1 entries")
    return ("str64" if off.dtype == np.int64 else "str32", off, buf, _valid_mask(name, valid, n), None, 0)


def _object_strings(name: str, arr: np.ndarray) -> Column:
    arr = _as_1d(name, arr)
    if arr.dtype.kind in "SU":
        arr = arr.astype(object)
    if arr.dtype != object:
        raise FeatureInputError(name, f"expected strings, got {arr.dtype}")
    try:
        offsets, data, valid = strings_to_buffers(arr)
    except (TypeError, UnicodeError) as exc:
        raise FeatureInputError(name, str(exc)) from None
    return ("str64", offsets, data, valid, None, 0)


def arrow_column(name: str, arr: Any, dtype: str) -> Column:
    """Zero-copy view of a pyarrow Array (or ChunkedArray, combined first) as a kernel column."""
    pa = _pa()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    n = len(arr)
    if pa.types.is_null(t):
        none = np.zeros(n, dtype=np.bool_)
        if dtype == "string":
            return ("str32", np.zeros(n + 1, dtype=np.int32), _EMPTY_BYTES, none, None, 0)
        kind, np_type = {"float": ("f64", np.float64), "int": ("i64", np.int64), "bool": ("bool", np.bool_)}[dtype]
        return (kind, np.zeros(n, dtype=np_type), None, none, None, 0)
    if dtype == "string":
        if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
            arr = arr.cast(pa.large_binary())
            t = arr.type
        if t in (pa.string(), pa.binary()):
            kind, off_type = "str32", np.int32
        elif t in (pa.large_string(), pa.large_binary()):
            kind, off_type = "str64", np.int64
        else:
            raise FeatureInputError(name, f"expected strings, got Arrow {t}")
        bufs = arr.buffers()
        offsets = np.frombuffer(bufs[1], dtype=off_type)[arr.offset:arr.offset + n + 1]
        data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else _EMPTY_BYTES
        bits = np.frombuffer(bufs[0], dtype=np.uint8) if bufs[0] is not None and arr.null_count else None
        return (kind, offsets, data, None, bits, arr.offset)
    if pa.types.is_boolean(t):
        if arr.null_count:
            values = arr.fill_null(False).to_numpy(zero_copy_only=False)
            valid = arr.is_valid().to_numpy(zero_copy_only=False)
        else:
            values, valid = arr.to_numpy(zero_copy_only=False), None
        return numeric_column(name, values, valid, dtype)
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise FeatureInputError(name, f"expected {dtype} values, got Arrow {t}")
    target = {"float": pa.float64(), "int": pa.int64(), "bool": None}[dtype]
    if target is not None and t != target and (dtype == "float" or pa.types.is_integer(t)):
        try:  # exact widening (int32 -> int64, float32 -> float64, ints -> float64); overflow raises
            arr = arr.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise FeatureInputError(name, f"cannot read Arrow {t} as {dtype}: {exc}") from None
        t = target
    if target is not None and t == target:
        bufs = arr.buffers()
        # The numpy type spelled out: DataType.to_pandas_dtype() imports pandas (pyarrow 25), not in [features].
        np_type = np.float64 if dtype == "float" else np.int64
        values = np.frombuffer(bufs[1], dtype=np_type)[arr.offset:arr.offset + n]
        bits = np.frombuffer(bufs[0], dtype=np.uint8) if bufs[0] is not None and arr.null_count else None
        return (("f64" if dtype == "float" else "i64"), values, None, None, bits, arr.offset)
    # floats feeding int/bool inputs, ints feeding bool inputs: checked conversions in numeric_column
    values = arr.to_numpy(zero_copy_only=False)  # nulls become NaN
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
    if valid is not None and values.dtype.kind == "f":
        values = np.where(valid, values, 0.0)
    return numeric_column(name, values, valid, dtype)


def _pandas_column(name: str, series: Any, dtype: str) -> Column:
    if isinstance(series.dtype, np.dtype):
        return column(name, series.to_numpy(), dtype)
    arr = series.array
    if hasattr(arr, "__arrow_array__"):  # nullable ints/floats/bools, strings, categoricals, ArrowDtype
        try:
            pa = _pa()
        except ImportError:
            pa = None
        if pa is not None:
            return arrow_column(name, pa.array(arr), dtype)
    if dtype == "string":
        return _object_strings(name, series.to_numpy(dtype=object))
    return _pandas_like_objects(name, series.to_numpy(dtype=object), dtype)


def column(name: str, obj: Any, dtype: str) -> Column:
    """One raw input as a kernel column. ``dtype`` is the spec's logical dtype (float/int/bool/string).

    Accepts a numpy array (object/str arrays for strings), a ``(values, valid)`` tuple for numbers, an
    ``(offsets, data[, valid])`` tuple for strings, a numpy masked array, a pyarrow Array/ChunkedArray,
    a pandas Series, or a list.
    """
    if isinstance(obj, tuple):
        if dtype == "string":
            if len(obj) not in (2, 3):
                raise FeatureInputError(name, "string tuples are (offsets, data[, valid])")
            return string_column(name, *obj)
        if len(obj) != 2:
            raise FeatureInputError(name, "numeric tuples are (values, valid)")
        return numeric_column(name, obj[0], obj[1], dtype)
    if isinstance(obj, np.ma.MaskedArray):
        valid = ~np.ma.getmaskarray(obj)
        if dtype == "string":
            data = np.asarray(obj.data, dtype=object).copy()
            data[~valid] = None
            return _object_strings(name, data)
        return numeric_column(name, obj.data, valid, dtype)
    if isinstance(obj, np.ndarray):
        if dtype == "string" or obj.dtype == object:
            if dtype != "string":
                return _pandas_like_objects(name, obj, dtype)
            return _object_strings(name, obj)
        return numeric_column(name, obj, None, dtype)
    if _is_arrow(obj):
        return arrow_column(name, obj, dtype)
    if hasattr(obj, "array") and hasattr(obj, "isna"):  # pandas Series
        return _pandas_column(name, obj, dtype)
    if isinstance(obj, list | Sequence) and not isinstance(obj, str | bytes):
        return column(name, np.asarray(obj, dtype=object if dtype == "string" else None), dtype)
    raise FeatureInputError(name, f"unsupported column type {type(obj).__name__}")


def _pandas_like_objects(name: str, obj: np.ndarray, dtype: str) -> Column:
    """Numbers in an object array (e.g. with None for missing)."""
    obj = _as_1d(name, obj)
    valid = np.array([v is not None and not (isinstance(v, float) and v != v) for v in obj], dtype=np.bool_)
    fill = {"float": 0.0, "int": 0, "bool": False}[dtype]
    try:
        values = np.array([v if ok else fill for v, ok in zip(obj, valid, strict=True)])
    except (TypeError, ValueError) as exc:
        raise FeatureInputError(name, str(exc)) from None
    if values.dtype == object:
        raise FeatureInputError(name, f"expected {dtype} values, got mixed objects")
    return numeric_column(name, values, None if valid.all() else valid, dtype)


def n_rows_of(col: Column) -> int:
    kind, values = col[0], col[1]
    return values.shape[0] - 1 if kind.startswith("str") else values.shape[0]


def get_columns(data: Any, names: Sequence[str]) -> Mapping[str, Any]:
    """Column lookup by name for a DataFrame, pyarrow Table/RecordBatch or mapping."""
    mod = sys.modules.get("pyarrow")
    if mod is not None and isinstance(data, mod.Table | mod.RecordBatch):
        have = set(data.schema.names)
        return {n: data.column(n) for n in names if n in have}
    if hasattr(data, "columns") and hasattr(data, "iloc"):  # pandas DataFrame
        have = set(data.columns)
        return {n: data[n] for n in names if n in have}
    if isinstance(data, Mapping):
        return data
    raise TypeError(f"unsupported data type {type(data).__name__}: use a DataFrame, pyarrow Table/RecordBatch "
                    "or a mapping of column name to array")
