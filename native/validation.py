"""``validation.json``: held-out raw rows and the model outputs a correct deployment must reproduce.

Written by ``skewless export`` beside ``model.onnx`` and ``features.json``. Anyone holding the model folder
can send ``inputs`` to the served model and compare its replies with ``outputs`` bit for bit, or replay
them offline (transform + onnxruntime). Every value is stored so that no JSON reader can round it::

    {"format": "skewless.validation", "format_version": 1, "float_encoding": "hex",
     "spec_sha256": "...", "model_sha256": "<SHA-256 of model.onnx>", "rows": 3,
     "inputs":  {"amount":  {"dtype": "float",  "values": ["0x1.8p+3", null, "nan"]},
                 "user_id": {"dtype": "int",    "values": ["12", "-3", null]},
                 "weekend": {"dtype": "bool",   "values": [true, null, false]},
                 "country": {"dtype": "string", "encoding": "utf-8", "values": ["DE", null, ""]}},
     "tensors": {"dense": {"dtype": "float32", "shape": [3, 14], "sha256": "<SHA-256 of the C-order bytes>"}},
     "outputs": {"label": {"dtype": "int64", "shape": [3], "values": ["1", "0", "0"]},
                 "probabilities": {"dtype": "float32", "shape": [3, 2], "values": [["0x1.8p-2", ...], ...]}}}

``null`` marks a missing raw value (an Arrow null; a NaN float is kept as ``"nan"``, which is missing too).
Floats are C99 hex strings of the exact value (``float.hex``; float32 values widen to double exactly),
integers are decimal strings (int64 exceeds what JavaScript readers hold exactly), strings are UTF-8 text
or, when one of them is not UTF-8, base64 (``"encoding": "base64"``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .spec import SpecError, _pretty, decode_float, encode_float

FORMAT = "skewless.validation"
FORMAT_VERSION = 1
VALIDATION_FILE = "validation.json"


class ValidationError(ValueError):
    """A validation document is malformed or of an unknown version."""


def tensor_digest(arr: np.ndarray) -> str:
    """SHA-256 of a tensor's C-order bytes (little-endian, as every supported platform stores them)."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


# ---- encoding ---------------------------------------------------------------------------------------

def _encode_raw(values: list[Any], dtype: str) -> dict[str, Any]:
    """Raw column values (Python objects, None for missing) -> the document's column entry."""
    if dtype == "float":
        return {"dtype": dtype, "values": [None if v is None else encode_float(v) for v in values]}
    if dtype == "int":
        return {"dtype": dtype, "values": [None if v is None else str(int(v)) for v in values]}
    if dtype == "bool":
        return {"dtype": dtype, "values": [None if v is None else bool(v) for v in values]}
    raw = [None if v is None else (v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in values]
    try:
        return {"dtype": dtype, "encoding": "utf-8",
                "values": [None if v is None else v.decode("utf-8") for v in raw]}
    except UnicodeDecodeError:
        return {"dtype": dtype, "encoding": "base64",
                "values": [None if v is None else base64.b64encode(v).decode("ascii") for v in raw]}


def _encode_array(arr: np.ndarray) -> dict[str, Any]:
    """A model output -> {dtype, shape, values}: nested lists of exact text (hex floats, decimal ints)."""
    kind = arr.dtype.kind
    if kind == "f":
        flat: list[Any] = [encode_float(v) for v in arr.astype(np.float64).reshape(-1).tolist()]
    elif kind in "iu":
        flat = [str(v) for v in arr.reshape(-1).tolist()]
    elif kind == "b":
        flat = [bool(v) for v in arr.reshape(-1).tolist()]
    else:  # string labels
        flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1).tolist()]
    values: Any = np.array(flat, dtype=object).reshape(arr.shape).tolist() if arr.ndim > 1 else flat
    return {"dtype": "string" if kind in "OUS" else str(arr.dtype), "shape": list(arr.shape), "values": values}


def build(raw: Mapping[str, tuple[str, list[Any]]], tensors: Mapping[str, np.ndarray],
          outputs: Mapping[str, np.ndarray], spec_sha256: str, model_sha256: str) -> dict[str, Any]:
    """The document for ``raw`` columns (name -> (spec dtype, values with None for missing))."""
    rows = {len(v) for _, v in raw.values()}
    if len(rows) != 1:
        raise ValidationError(f"raw columns differ in length: {sorted(rows)}")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "float_encoding": "hex",
        "spec_sha256": spec_sha256, "model_sha256": model_sha256, "rows": rows.pop(),
        "inputs": {name: _encode_raw(values, dtype) for name, (dtype, values) in raw.items()},
        "tensors": {name: {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": tensor_digest(a)}
                    for name, a in tensors.items()},
        "outputs": {name: _encode_array(a) for name, a in outputs.items()},
    }


def save(doc: Mapping[str, Any], path: str | Path) -> None:
    """Readable JSON as the spec writes it: objects indented, each column's values on one line."""
    Path(path).write_text(_pretty(doc, "") + "\n")


# ---- decoding ---------------------------------------------------------------------------------------

def load(path: str | Path) -> dict[str, Any]:
    """Read and check a validation document (format, version, float encoding)."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValidationError(f"{path}: not a {FORMAT} document")
    if doc.get("format_version") != FORMAT_VERSION or doc.get("float_encoding") != "hex":
        raise ValidationError(f"{path}: unsupported format_version or float_encoding")
    return doc


def raw_values(entry: Mapping[str, Any], where: str = "") -> list[Any]:
    """A column entry's values as Python objects (float, int, bool, bytes), None where missing."""
    dtype, values = entry.get("dtype"), entry.get("values")
    if not isinstance(values, list):
        raise ValidationError(f"{where}: values must be a list")
    try:
        if dtype == "float":
            return [None if v is None else decode_float(v, where) for v in values]
        if dtype == "int":
            return [None if v is None else int(v) for v in values]
        if dtype == "bool":
            return [None if v is None else bool(v) for v in values]
        if dtype == "string":
            if entry.get("encoding") == "base64":
                return [None if v is None else base64.b64decode(v, validate=True) for v in values]
            return [None if v is None else v.encode("utf-8") for v in values]
    except (SpecError, ValueError, TypeError, AttributeError) as exc:
        raise ValidationError(f"{where}: {exc}") from None
    raise ValidationError(f"{where}: unknown dtype {dtype!r}")


def raw_table(doc: Mapping[str, Any]) -> Any:
    """The raw rows as a pyarrow Table with nulls (what ``FeatureSpec.transform`` reads)."""
    import pyarrow as pa

    types = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "string": pa.binary()}
    return pa.table({name: pa.array(raw_values(e, f"input {name!r}"), type=types[e["dtype"]])
                     for name, e in doc["inputs"].items()})


def output_array(entry: Mapping[str, Any], where: str = "") -> np.ndarray:
    """An expected output as the exact numpy array the model returned."""
    dtype, shape = entry.get("dtype"), tuple(entry.get("shape") or ())
    flat = np.array(entry.get("values"), dtype=object).reshape(-1).tolist()
    if dtype == "string":
        return np.array([v.encode("utf-8") for v in flat], dtype=object).reshape(shape)
    np_dtype = np.dtype(dtype)
    if np_dtype.kind == "f":
        return np.array([decode_float(v, where) for v in flat], dtype=np.float64).astype(np_dtype).reshape(shape)
    if np_dtype.kind in "iu":
        return np.array([int(v) for v in flat], dtype=np_dtype).reshape(shape)
    return np.array(flat, dtype=np_dtype).reshape(shape)


def complete_rows(doc: Mapping[str, Any]) -> np.ndarray:
    """Positions of the rows without a missing raw value (null, or NaN in a float input)."""
    ok = np.ones(int(doc["rows"]), dtype=bool)
    for name, entry in doc["inputs"].items():
        for i, v in enumerate(raw_values(entry, f"input {name!r}")):
            if v is None or (isinstance(v, float) and v != v):
                ok[i] = False
    return np.nonzero(ok)[0]
