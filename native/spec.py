"""The frozen feature spec (``features.json``): load, validate, hash, and transform through the kernel.

Format (``format: skewless.features``, ``format_version: 1``), every float a C99 hex-float string
(``float.hex``) so that no JSON reader can round it (``float.fromhex`` restores the exact double, -0.0,
inf and nan included)::

    {"format": "skewless.features", "format_version": 1, "float_encoding": "hex",
     "hash": "murmur3_x86_32", "generator": "skewless 0.1.0",
     "inputs":  [{"name": "age", "dtype": "float", "shape": [1], "reference": {...}}, ...],
     "outputs": [{"name": "dense", "dtype": "float32", "shape": [-1, 12]}, ...],
     "features": [{"name": "age", "kind": "numeric", "inputs": ["age"], "output": "dense",
                   "offset": 0, "width": 1, "encode": "value",
                   "steps": [{"op": "impute", "strategy": "mean", "value": "0x1.4p+5"},
                             {"op": "standardize", "mean": "...", "scale": "..."}],
                   "reference": {...}}, ...],
     "fit": {"rows": 1000},
     "sha256": "<hex SHA-256 of the canonical JSON of everything else>"}

A spec may also carry ``"aggregates"`` (windowed aggregates, ``aggregate_plan.py``): each one's name is a
*derived input*, a float column computed per row from an aggregate state before the kernel runs and read by
the features like a raw float input. Derived inputs are never client-facing: ``inputs`` lists raw inputs only.

Index semantics shared by every categorical encoding: index 0 means missing (or, for a vocabulary without
OOV buckets, unknown), so embedding tables can reserve row 0. Vocabulary: 1..V in vocabulary order, then
V+1..V+oov for unseen values (MurmurHash3 of the bytes with the feature's seed, modulo oov). Hash and
cross: 1 + murmur3 % buckets. Bucketize: 1 + (number of boundaries <= x).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import columns as _columns
from .aggregate_plan import PlanError, check_plan, is_datetime, plan_inputs, time_units, to_time_unit
from .feature_kernel import FeatureInputError, Kernel

FORMAT = "skewless.features"
FORMAT_VERSION = 1
INPUT_DTYPES = ("float", "int", "bool", "string")
OUTPUT_DTYPES = ("float32", "float64", "int64", "int32")
TRITON_DTYPES = {"float": "FP64", "int": "INT64", "bool": "BOOL", "string": "BYTES",
                 "float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}
FEATURE_KINDS = ("numeric", "missing_indicator", "vocabulary", "hash", "cross", "passthrough")
# Below this many rows a thread hand-off costs more than it saves (measured: ~20 us per chunk).
PARALLEL_MIN_ROWS = 1 << 15
# Smallest row chunk handed to one thread.
MIN_CHUNK_ROWS = 4096


class SpecError(ValueError):
    """The spec document is malformed, of an unknown version, or its content hash does not match."""


def encode_float(x: float) -> str:
    """Exact text form of a double: C99 hex float, 'inf', '-inf' or 'nan'."""
    return float(x).hex()


def decode_float(s: Any, where: str = "") -> float:
    if not isinstance(s, str):
        raise SpecError(f"{where}: floats are stored as hex strings, got {s!r}")
    try:
        return float.fromhex(s)
    except ValueError:
        raise SpecError(f"{where}: {s!r} is not a hex float") from None


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """The bytes the content hash covers: sorted keys, no whitespace, ASCII, the hash itself left out."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def content_hash(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def encode_vocabulary(values: Sequence[bytes] | Sequence[int], dtype: str) -> tuple[str, list]:
    """JSON form of a vocabulary: UTF-8 text when every entry decodes, else base64; ints as decimal text."""
    if dtype == "int":
        return "int64", [str(int(v)) for v in values]
    try:
        return "utf-8", [bytes(v).decode("utf-8") for v in values]
    except UnicodeDecodeError:
        return "base64", [base64.b64encode(bytes(v)).decode("ascii") for v in values]


def decode_vocabulary(encoding: str, values: Sequence[str], where: str) -> list[bytes]:
    """Vocabulary entries as the kernel's key bytes (ints: 8-byte little-endian two's complement)."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SpecError(f"{where}: vocabulary must be a list of strings")
    if encoding == "utf-8":
        return [v.encode("utf-8") for v in values]
    if encoding == "base64":
        return [base64.b64decode(v, validate=True) for v in values]
    if encoding == "int64":
        return [int(v).to_bytes(8, "little", signed=True) for v in values]
    raise SpecError(f"{where}: unknown vocabulary encoding {encoding!r}")


@dataclass(frozen=True)
class TensorInfo:
    """A raw input or an output tensor: per-row shape excludes the batch dimension (Triton's dims)."""

    name: str
    dtype: str
    width: int = 1

    @property
    def triton_dtype(self) -> str:
        return TRITON_DTYPES[self.dtype]


def cardinality(feat: Mapping[str, Any]) -> int:
    """Number of distinct indices a feature entry can emit (its one-hot width); 1 for plain values."""
    kind = feat["kind"]
    if kind == "numeric":
        return len(feat["bucketize"]["boundaries"]) + 2 if "bucketize" in feat else 1
    if kind == "vocabulary":
        return 1 + len(feat["vocabulary"]) + int(feat["oov_buckets"])
    if kind in ("hash", "cross"):
        return 1 + int(feat["buckets"])
    if kind == "missing_indicator":
        return 2
    return 1


def _compile_feature(feat: Mapping[str, Any], input_index: Mapping[str, int], input_dtype: Mapping[str, str],
                     out_index: Mapping[str, int], out_dtype: Mapping[str, str]) -> dict[str, Any]:
    """One feature entry of the document -> the kernel's resolved parameters."""
    name = feat.get("name")
    where = f"feature {name!r}"
    kind = feat.get("kind")
    if kind not in FEATURE_KINDS:
        raise SpecError(f"{where}: unknown kind {kind!r}")
    inputs = feat.get("inputs")
    if not isinstance(inputs, list) or not inputs or any(i not in input_index for i in inputs):
        raise SpecError(f"{where}: inputs {inputs!r} must name declared raw inputs")
    if feat.get("output") not in out_index:
        raise SpecError(f"{where}: unknown output {feat.get('output')!r}")
    plan: dict[str, Any] = {
        "name": name, "cols": [input_index[i] for i in inputs], "out": out_index[feat["output"]],
        "offset": feat.get("offset"), "width": feat.get("width"), "encode": feat.get("encode"),
    }
    if not isinstance(plan["offset"], int) or not isinstance(plan["width"], int):
        raise SpecError(f"{where}: offset and width must be integers")
    if plan["encode"] not in ("value", "index", "onehot"):
        raise SpecError(f"{where}: encode must be value, index or onehot")
    if kind == "numeric" or (kind == "passthrough" and out_dtype[feat["output"]].startswith("float")):
        steps = []
        for i, step in enumerate(feat.get("steps", []) if kind == "numeric" else []):
            w = f"{where} step {i}"
            op = step.get("op") if isinstance(step, dict) else None
            if op == "impute":
                if i != 0:
                    raise SpecError(f"{w}: impute must be the first step")
                steps.append(("impute", decode_float(step.get("value"), w), 0.0))
            elif op == "clip":
                lo, hi = decode_float(step.get("min"), w), decode_float(step.get("max"), w)
                if not lo <= hi:
                    raise SpecError(f"{w}: clip needs min <= max")
                steps.append(("clip", lo, hi))
            elif op == "log1p":
                steps.append(("log1p", 0.0, 0.0))
            elif op == "standardize":
                steps.append(("subdiv", decode_float(step.get("mean"), w), decode_float(step.get("scale"), w)))
            elif op == "minmax":
                steps.append(("subdiv", decode_float(step.get("min"), w), decode_float(step.get("range"), w)))
            else:
                raise SpecError(f"{w}: unknown op {op!r}")
        plan.update(kind="numeric", steps=steps)
        if "bucketize" in feat:
            bnd = feat["bucketize"].get("boundaries")
            if not isinstance(bnd, list):
                raise SpecError(f"{where}: bucketize needs a boundaries list")
            plan["bounds"] = [decode_float(b, f"{where} boundary") for b in bnd]
    elif kind == "passthrough":
        plan.update(kind="int_pass", fill=int(feat.get("fill", 0)))
    elif kind == "missing_indicator":
        plan["kind"] = "missing"
    elif kind == "vocabulary":
        if input_dtype[inputs[0]] not in ("string", "int"):
            raise SpecError(f"{where}: a vocabulary needs a string or int input")
        plan.update(kind="vocab", vocab=decode_vocabulary(feat.get("vocabulary_encoding"),
                                                          feat.get("vocabulary"), where),
                    buckets=int(feat.get("oov_buckets", 0)), seed=int(feat.get("seed", 0)))
    else:
        plan.update(kind="hash" if kind == "hash" else "cross", buckets=int(feat.get("buckets", 0)),
                    seed=int(feat.get("seed", 0)))
    if not 0 <= plan.get("seed", 0) < 2**32 or not 0 <= plan.get("buckets", 0) < 2**32:
        raise SpecError(f"{where}: seed and buckets must fit in uint32")
    return plan


def _adapt(name: str, obj: Any, dtype: str) -> tuple:
    """The kernel's column adapter, letting through columns that are already kernel column tuples."""
    if type(obj) is tuple and len(obj) == 6 and isinstance(obj[0], str):
        return obj
    return _columns.column(name, obj, dtype)


def _pretty(obj: Any, indent: str) -> str:
    if isinstance(obj, dict) and obj:
        inner = indent + "  "
        items = [f"{inner}{json.dumps(k)}: {_pretty(obj[k], inner)}" for k in sorted(obj)]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list) and any(isinstance(v, dict) for v in obj):
        inner = indent + "  "
        return "[\n" + ",\n".join(inner + _pretty(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(", ", ": "))


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                           thread_name_prefix="skewless-features")
        return _executor


class FeatureSpec:
    """A validated spec document plus its compiled kernel. Immutable and safe to share between threads."""

    def __init__(self, doc: Mapping[str, Any], *, verify_hash: bool = True) -> None:
        if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
            raise SpecError(f"not a {FORMAT} document")
        if doc.get("format_version") != FORMAT_VERSION:
            raise SpecError(f"unsupported format_version {doc.get('format_version')!r} (this build reads "
                            f"{FORMAT_VERSION})")
        if doc.get("float_encoding") != "hex" or doc.get("hash") != "murmur3_x86_32":
            raise SpecError("unsupported float_encoding or hash")
        digest = content_hash(doc)
        if verify_hash and doc.get("sha256") != digest:
            raise SpecError(f"content hash mismatch: document says {doc.get('sha256')!r}, content is {digest}")
        self._doc = json.loads(json.dumps(doc))  # private deep copy: the spec never changes under us
        self._doc["sha256"] = digest
        self.inputs = tuple(self._tensor(i, INPUT_DTYPES, "input") for i in self._doc.get("inputs", []))
        self.outputs = tuple(self._tensor(o, OUTPUT_DTYPES, "output") for o in self._doc.get("outputs", []))
        for kind, items in (("input", self.inputs), ("output", self.outputs)):
            names = [t.name for t in items]
            if len(set(names)) != len(names):
                raise SpecError(f"duplicate {kind} names")
        raw_dtypes = {t.name: t.dtype for t in self.inputs}
        try:
            self._aggregates = check_plan(self._doc.get("aggregates", []), raw_dtypes)
        except PlanError as exc:
            raise SpecError(str(exc)) from None
        self.aggregate_names = tuple(a["name"] for a in self._aggregates)
        self._aggregate_dtypes = {n: raw_dtypes[n] for n in plan_inputs(self._aggregates)}
        self._time_units = time_units(self._aggregates)
        self._plan_hash: str | None = None
        # The kernel reads the raw inputs, then the derived (aggregate) columns as float inputs.
        kernel_inputs = [*self.inputs, *(TensorInfo(n, "float") for n in self.aggregate_names)]
        input_index = {t.name: i for i, t in enumerate(kernel_inputs)}
        input_dtype = {t.name: t.dtype for t in kernel_inputs}
        out_index = {t.name: i for i, t in enumerate(self.outputs)}
        out_dtype = {t.name: t.dtype for t in self.outputs}
        features = self._doc.get("features")
        if not isinstance(features, list):
            raise SpecError("features must be a list")
        plans = [_compile_feature(f, input_index, input_dtype, out_index, out_dtype) for f in features]
        try:
            self._kernel = Kernel([t.name for t in kernel_inputs], [t.dtype for t in kernel_inputs],
                                  [(t.dtype, t.width) for t in self.outputs], plans)
        except (ValueError, TypeError) as exc:
            raise SpecError(str(exc)) from None

    @staticmethod
    def _tensor(entry: Any, dtypes: Sequence[str], what: str) -> TensorInfo:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise SpecError(f"each {what} needs a name")
        if entry.get("dtype") not in dtypes:
            raise SpecError(f"{what} {entry['name']!r}: dtype must be one of {dtypes}")
        shape = entry.get("shape")
        if what == "input":
            if shape != [1]:
                raise SpecError(f"input {entry['name']!r}: only one value per row (shape [1]) is supported")
            return TensorInfo(entry["name"], entry["dtype"])
        if not (isinstance(shape, list) and len(shape) == 2 and shape[0] == -1 and isinstance(shape[1], int)):
            raise SpecError(f"output {entry['name']!r}: shape must be [-1, width]")
        return TensorInfo(entry["name"], entry["dtype"], shape[1])

    # -- document --------------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str | bytes, *, verify_hash: bool = True) -> FeatureSpec:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"not JSON: {exc}") from None
        return cls(doc, verify_hash=verify_hash)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify_hash: bool = True) -> FeatureSpec:
        return cls.from_json(Path(path).read_bytes(), verify_hash=verify_hash)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._doc))

    def to_json(self) -> str:
        """Readable JSON (objects indented, short lists inline); the hash covers ``canonical_json``."""
        return _pretty(self._doc, "") + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(self.to_json())

    @property
    def sha256(self) -> str:
        return self._doc["sha256"]

    @property
    def features(self) -> list[dict[str, Any]]:
        return self.to_dict()["features"]

    @property
    def input_names(self) -> tuple[str, ...]:
        """The client-facing raw inputs (aggregates' keys, times and values included; derived inputs not)."""
        return tuple(t.name for t in self.inputs)

    @property
    def aggregates(self) -> list[dict[str, Any]]:
        """The spec's aggregate entries (copies), in plan order; [] without aggregates."""
        return [dict(a, keys=list(a["keys"])) for a in self._aggregates]

    def new_aggregate_state(self, max_keys: int = 0) -> Any:
        """A fresh, empty aggregate state for this spec's plan (``skewless.native.aggregates.AggregateState``).

        ``max_keys`` > 0 bounds the keys held (the least recently recorded are evicted first).
        """
        if not self._aggregates:
            raise ValueError("this spec has no aggregates")
        from .aggregates import AggregateState

        state = AggregateState(self._aggregates, self._aggregate_dtypes, max_keys=max_keys)
        self._plan_hash = state.plan_hash
        return state

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def column_names(self, output: str) -> list[str]:
        """Human-readable name of every column of an output tensor, in order."""
        names: list[str] = []
        for feat in self._doc["features"]:
            if feat["output"] != output:
                continue
            name = feat["name"]
            if feat["encode"] != "onehot":
                names.append(name)
                continue
            width = feat["width"]
            if feat["kind"] == "vocabulary":
                vocab = decode_vocabulary(feat["vocabulary_encoding"], feat["vocabulary"], name)
                labels = [v.decode("utf-8", "backslashreplace") if feat["vocabulary_encoding"] != "int64"
                          else str(int.from_bytes(v, "little", signed=True)) for v in vocab]
                labels += [f"<oov{j}>" for j in range(width - 1 - len(vocab))]
            elif feat["kind"] == "numeric":
                b = [-math.inf, *(decode_float(x) for x in feat["bucketize"]["boundaries"]), math.inf]
                labels = [f"[{b[j]!r},{b[j + 1]!r})" for j in range(len(b) - 1)]
            elif feat["kind"] == "missing_indicator":
                labels = ["present"]
            else:
                labels = [f"#{j}" for j in range(width - 1)]
            names.extend([f"{name}=<missing>", *(f"{name}={label}" for label in labels)])
        return names

    # -- transforming ----------------------------------------------------------------------------------

    def allocate(self, n_rows: int) -> dict[str, np.ndarray]:
        """Uninitialised output tensors for ``n_rows`` rows (the kernel writes every byte)."""
        return {t.name: np.empty((n_rows, t.width), dtype=t.dtype) for t in self.outputs}

    def _source(self, data: Any) -> Mapping[str, Any]:
        """Raw columns by name; timestamp columns of time inputs converted to int64 in the plan's unit."""
        source = data if isinstance(data, Mapping) else _columns.get_columns(data, self.input_names)
        if self._time_units and any(t in source and is_datetime(source[t]) for t in self._time_units):
            source = dict(source)
            for t, unit in self._time_units.items():
                if t in source:
                    source[t] = to_time_unit(source[t], unit, t)
        return source

    def _bind(self, data: Any, outputs: Any, aggregate_state: Any = None,
              aggregates_out: Mapping[str, np.ndarray] | None = None,
              aggregate_values: Mapping[str, Any] | None = None) -> tuple[Any, int, list, Any]:
        """Bind every column; returns (batch, rows, outputs, score) where ``score()`` fills the derived
        columns (the kernel reads them when it runs) and returns them; None without aggregates.

        Everything is validated before anything is scored: a bad column never leaves half a batch
        recorded in the state.
        """
        source = self._source(data)
        if not self._aggregates:
            batch, n_rows, outs = self._kernel.bind_source(source, outputs, _columns.column)
            return batch, n_rows, outs, None
        merged = dict(source)
        if aggregate_values is not None:
            derived = {}
            for name in self.aggregate_names:
                if name not in aggregate_values:
                    raise FeatureInputError(name, "aggregate value missing")
                derived[name] = np.ascontiguousarray(aggregate_values[name], dtype=np.float64)
            merged.update(derived)
            batch, n_rows, outs = self._kernel.bind_source(merged, outputs, _adapt)
            return batch, n_rows, outs, lambda: derived
        if aggregate_state is None:
            raise ValueError("this spec has aggregates: pass aggregate_state=spec.new_aggregate_state() (or the "
                             "logged aggregate_values)")
        self._check_state(aggregate_state)
        cols: dict[str, tuple] = {}
        n_rows = -1
        for name, dtype in self._aggregate_dtypes.items():
            if name not in source:
                raise FeatureInputError(name, "missing from the batch")
            cols[name] = col = _adapt(name, source[name], dtype)
            n = _columns.n_rows_of(col)
            if n_rows >= 0 and n != n_rows:
                raise FeatureInputError(name, f"has {n} rows, but {next(iter(cols))!r} has {n_rows}")
            n_rows = n
        if aggregates_out is None:
            derived = {name: np.empty(n_rows, dtype=np.float64) for name in self.aggregate_names}
        else:
            derived = {}
            for name in self.aggregate_names:
                arr = aggregates_out.get(name)
                if (type(arr) is not np.ndarray or arr.dtype != np.float64 or arr.shape != (n_rows,)
                        or not arr.flags.c_contiguous or not arr.flags.writeable):
                    raise ValueError(f"aggregates_out[{name!r}] must be a writable contiguous float64 array "
                                     f"of {n_rows} rows")
                derived[name] = arr
        merged.update(cols)
        merged.update(derived)
        batch, n_rows, outs = self._kernel.bind_source(merged, outputs, _adapt)

        def score() -> dict[str, np.ndarray]:
            aggregate_state.score(cols, n_rows, out=derived)
            return derived

        return batch, n_rows, outs, score

    def _check_state(self, state: Any) -> None:
        if self._plan_hash is None:
            self.new_aggregate_state()
        if getattr(state, "plan_hash", None) != self._plan_hash:
            raise ValueError("aggregate_state belongs to another aggregate plan (its plan_hash differs from this "
                             "spec's): create it with spec.new_aggregate_state()")

    def _allocate_list(self, n_rows: int) -> list[np.ndarray]:
        return [np.empty((n_rows, t.width), dtype=t.dtype) for t in self.outputs]

    def transform_into(self, data: Any, outputs: Mapping[str, np.ndarray], n_threads: int = 1,
                       aggregate_state: Any = None, aggregates_out: Mapping[str, np.ndarray] | None = None,
                       aggregate_values: Mapping[str, Any] | None = None) -> dict[str, np.ndarray] | None:
        """Transform ``data`` into preallocated ``outputs`` (one (rows, width) array per output name).

        The batcher's entry point: validation costs a few checks per column (plus one pass over string
        offsets), then the kernel runs without the GIL. ``n_threads`` > 1 splits the rows into contiguous
        chunks; the bytes written do not depend on it. Raises FeatureInputError naming a bad column.

        A spec with aggregates needs ``aggregate_state`` (``new_aggregate_state()``): each row's aggregates
        are read from it and the row is then recorded in it, in row order (after every column has been
        validated). The derived values are returned (written into ``aggregates_out`` when given: one
        float64 [rows] array per aggregate name) so that the caller can log them. ``aggregate_values``
        instead supplies already-computed values (a replay of logged ones) and leaves any state alone.
        Returns None for a spec without aggregates.
        """
        try:
            outs = [outputs[t.name] for t in self.outputs]
        except KeyError as exc:
            raise ValueError(f"missing output array {exc.args[0]!r}") from None
        batch, n_rows, _, score = self._bind(data, outs, aggregate_state, aggregates_out, aggregate_values)
        derived = score() if score is not None else None
        self._run(batch, n_rows, n_threads)
        return derived

    def transform(self, data: Any, n_threads: int | None = None, *, aggregate_state: Any = None,
                  aggregate_values: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Transform a DataFrame, pyarrow Table/RecordBatch or mapping of columns into new output arrays.

        Mapping values may be numpy arrays, pyarrow arrays, pandas Series, lists, ``(values, valid)``
        tuples for numbers or ``(offsets, data[, valid])`` Arrow-style tuples for strings.
        ``n_threads=None`` uses every core for large batches and one thread below PARALLEL_MIN_ROWS.

        With aggregates, this is a *backfill*: the rows are taken as events arriving in table order (sort
        the table by event time first for a point-in-time history), each row's aggregates are read from a
        fresh state (or ``aggregate_state``, carried across calls) before the row is recorded, so every row
        gets exactly what a server would have computed when that row arrived after the same events.
        """
        batch, n_rows, outs, score = self._bind(
            data, self._allocate_list,
            aggregate_state if aggregate_state is not None or aggregate_values is not None or not self._aggregates
            else self.new_aggregate_state(), None, aggregate_values)
        if score is not None:
            score()
        if n_threads is None:
            n_threads = (os.cpu_count() or 1) if n_rows >= PARALLEL_MIN_ROWS else 1
        self._run(batch, n_rows, n_threads)
        return {t.name: a for t, a in zip(self.outputs, outs, strict=True)}

    def _run(self, batch: Any, n_rows: int, n_threads: int) -> None:
        if n_threads < 1:
            raise ValueError("n_threads must be >= 1")
        n_chunks = min(n_threads, max(1, n_rows // MIN_CHUNK_ROWS))
        if n_chunks <= 1:
            self._kernel.run(batch, 0, n_rows)
            return
        bounds = [n_rows * i // n_chunks for i in range(n_chunks + 1)]
        futures = [_pool().submit(self._kernel.run, batch, bounds[i], bounds[i + 1]) for i in range(n_chunks)]
        for fut in futures:
            fut.result()

    def __repr__(self) -> str:
        outs = ", ".join(f"{t.name}: {t.dtype}[{t.width}]" for t in self.outputs)
        return f"<FeatureSpec {self.sha256[:12]} inputs={list(self.input_names)} outputs=({outs})>"
