# cython: language_level=3
# distutils: language = c++
"""Windowed aggregate features (issue 29): the in-process state engine the server and the backfill share.

The semantics are those of ``tests/aggregate_reference.py``, bit for bit; the state and the per-row loop are
C++ (``include/skewless_agg.h``). This module checks the plan and the columns (clear errors naming the
column), then runs one nogil loop over the batch under the engine's lock: per row, every aggregate of each
group is read, then the row is recorded. Saved state is a versioned binary file tied to the plan's hash.
"""

import hashlib
import json
import os
import tempfile

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free
from libcpp cimport bool as cbool
from libcpp.string cimport string
from libcpp.utility cimport pair
from libcpp.vector cimport vector

from skewless.native.feature_kernel import FeatureInputError

cnp.import_array()

cdef extern from "include/skewless_fp.h" nogil:
    int SL_FP_ENV_GUARD
    int SL_FAST_MATH
    int SL_HW_FMA
    int SL_FLT_EVAL_METHOD
    const char* SL_COMPILER

cdef extern from "include/skewless_agg.h" namespace "skl_agg" nogil:
    cdef struct Col:
        int kind
        int present
        const char* values
        const uint8_t* data
        const uint8_t* valid_bytes
        const uint8_t* valid_bits
        int64_t bit_offset

    cdef cppclass Engine:
        Engine() except +
        int64_t max_keys
        int add_group(int time_col, int64_t width, int64_t retention) except +
        void add_key_col(int gi, int col) except +
        int add_slot(int gi, int col, cbool number, cbool hashes) except +
        void add_agg(int gi, int op, int64_t n, int slot, int out) except +
        int64_t run(const Col* cols, int64_t n_rows, double* const* outs, bint do_record) except +
        void stats(int64_t* out) except +
        void recount(int64_t* out) except +
        string save() except +
        void load(const char* data, size_t length) except +

cdef extern from "include/skewless_agg_store.h" namespace "skl_agg" nogil:
    cdef cppclass StoreKey:
        string key
        int64_t min_b
        int64_t max_b
        vector[pair[int64_t, string]] events

cdef extern from "include/skewless_agg_store.h" nogil:
    void c_store_describe "skl_agg::store_describe"(Engine& e, const Col* cols, int64_t n_rows, uint64_t batch_id,
                                                    vector[vector[StoreKey]]& out) except +
    void c_store_reset "skl_agg::store_reset"(Engine& e) except +
    void c_store_seed_watermark "skl_agg::store_seed_watermark"(Engine& e, int gi, int64_t g) except +
    void c_store_seed_key "skl_agg::store_seed_key"(Engine& e, int gi, const string& key, const char* const* recs,
                                                    const size_t* lens, size_t n) except +


# How this translation unit was compiled (the same promises as the feature kernel's BUILD_INFO).
BUILD_INFO = {
    "fp_env_guard": bool(SL_FP_ENV_GUARD),
    "fast_math": bool(SL_FAST_MATH),
    "target_has_fma": bool(SL_HW_FMA),
    "flt_eval_method": SL_FLT_EVAL_METHOD,
    "compiler": SL_COMPILER.decode("ascii", "replace"),
}


class AggregatePlanError(ValueError):
    """The spec's ``aggregates`` entries cannot be run (bad op, window, input), or saved state is another plan's."""


OPS = ("count", "sum", "mean", "min", "max", "last", "distinct")
TIME_UNITS = ("s", "ms", "us", "ns")
DTYPES = ("float", "int", "bool", "string")
FORMAT_VERSION = 1
MAGIC = b"SKWLAGG\x00"
_FIELDS = ("name", "op", "keys", "time", "value", "window", "bucket", "time_unit")
_LIMIT = 2**62  # windows and buckets: keeps every bucket index computation inside int64
_COL_KINDS = {"f64": 0, "i64": 1, "bool": 2, "str32": 3, "str64": 4}
_ACCEPTS = {"float": ("f64",), "int": ("i64",), "bool": ("bool",), "string": ("str32", "str64")}
_TYPENUM = {"f64": cnp.NPY_FLOAT64, "i64": cnp.NPY_INT64, "bool": cnp.NPY_BOOL, "str32": cnp.NPY_INT32,
            "str64": cnp.NPY_INT64}


def _positive_int(entry, field):
    v = entry.get(field)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < _LIMIT:
        raise AggregatePlanError(f"aggregate {entry.get('name')!r}: {field} must be a positive integer, got {v!r}")
    return v


def _normalize(entries, dtypes):
    """Check the plan; return its entries as plain dicts with every field, in plan order."""
    if isinstance(entries, (str, bytes)) or not hasattr(entries, "__iter__"):
        raise AggregatePlanError("aggregates must be a list of entries")
    plan = []
    names = set()
    units = {}
    for entry in entries:
        if not hasattr(entry, "get"):
            raise AggregatePlanError(f"an aggregate entry must be a mapping, got {type(entry).__name__}")
        unknown = set(entry) - set(_FIELDS)
        if unknown:
            raise AggregatePlanError(f"aggregate {entry.get('name')!r}: unknown fields {sorted(unknown)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise AggregatePlanError(f"aggregate name must be a non-empty string, got {name!r}")
        if name in names:
            raise AggregatePlanError(f"aggregate {name!r} is defined twice")
        if name in dtypes:
            raise AggregatePlanError(f"aggregate {name!r} has the name of a raw input")
        names.add(name)
        op = entry.get("op")
        if op not in OPS:
            raise AggregatePlanError(f"aggregate {name!r}: op must be one of {', '.join(OPS)}, got {op!r}")
        keys = entry.get("keys")
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)) or not keys:
            raise AggregatePlanError(f"aggregate {name!r}: keys must be a non-empty list of input names")
        if len(set(keys)) != len(keys):
            raise AggregatePlanError(f"aggregate {name!r}: a key input is listed twice")
        for k in keys:
            if dtypes.get(k) not in DTYPES:
                raise AggregatePlanError(f"aggregate {name!r}: key {k!r} is not a raw input")
        time = entry.get("time")
        if dtypes.get(time) != "int":
            raise AggregatePlanError(f"aggregate {name!r}: time {time!r} must be an int raw input")
        value = entry.get("value")
        if value is not None:
            if dtypes.get(value) not in DTYPES:
                raise AggregatePlanError(f"aggregate {name!r}: value {value!r} is not a raw input")
            if op not in ("count", "distinct") and dtypes[value] == "string":
                raise AggregatePlanError(f"aggregate {name!r}: {op} needs a numeric value, {value!r} is a string")
        elif op != "count":
            raise AggregatePlanError(f"aggregate {name!r}: {op} needs a value input")
        window = _positive_int(entry, "window")
        bucket = _positive_int(entry, "bucket")
        if window % bucket:
            raise AggregatePlanError(f"aggregate {name!r}: window {window} is not a multiple of bucket {bucket}")
        unit = entry.get("time_unit")
        if unit not in TIME_UNITS:
            raise AggregatePlanError(f"aggregate {name!r}: time_unit must be one of {', '.join(TIME_UNITS)}")
        if units.setdefault(time, unit) != unit:
            raise AggregatePlanError(f"time input {time!r} is read in two units ({units[time]} and {unit})")
        plan.append({"name": name, "op": op, "keys": list(keys), "time": time, "value": value,
                     "window": window, "bucket": bucket, "time_unit": unit})
    if not plan:
        raise AggregatePlanError("the plan has no aggregates")
    return plan


include "column_checks.pxi"


cdef class AggregateState:
    """The state of one plan's aggregates, in process.

    ``aggregates``: the spec's ``aggregates`` entries; ``dtypes``: raw input name -> float/int/bool/string;
    ``max_keys`` > 0 caps the keys held (all groups together): the key whose newest bucket is oldest is
    evicted first and counted in ``keys_evicted`` (an evicted key's values restart from empty).
    """

    cdef Engine* engine
    cdef readonly tuple names
    cdef readonly tuple inputs
    cdef readonly str plan_hash
    cdef readonly dict dtypes
    cdef readonly list plan

    def __cinit__(self, *args, **kwargs):
        self.engine = new Engine()

    def __dealloc__(self):
        del self.engine

    def __init__(self, aggregates, dtypes, *, max_keys=0):
        if self.plan is not None:
            raise RuntimeError("an AggregateState is initialised once")
        if not hasattr(dtypes, "get"):
            raise AggregatePlanError("dtypes must map raw input names to float/int/bool/string")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 0:
            raise AggregatePlanError(f"max_keys must be an integer >= 0, got {max_keys!r}")
        plan = _normalize(aggregates, dtypes)
        inputs = []
        for a in plan:
            for name in (*a["keys"], a["time"], a["value"]):
                if name is not None and name not in inputs:
                    inputs.append(name)
        self.plan = plan
        self.names = tuple(a["name"] for a in plan)
        self.inputs = tuple(inputs)
        self.dtypes = {name: dtypes[name] for name in inputs}
        canonical = json.dumps({"format": FORMAT_VERSION, "aggregates": plan, "dtypes": self.dtypes},
                               sort_keys=True, separators=(",", ":"))
        self.plan_hash = hashlib.sha256(canonical.encode()).hexdigest()
        col = {name: i for i, name in enumerate(inputs)}
        groups = {}
        for out, a in enumerate(plan):
            groups.setdefault((tuple(a["keys"]), a["time"], a["bucket"]), []).append((out, a))
        cdef int gi, slot
        for (keys, time, bucket), members in groups.items():
            retention = max(a["window"] // bucket for _, a in members)
            gi = self.engine.add_group(col[time], bucket, retention)
            for k in keys:
                self.engine.add_key_col(gi, col[k])
            slots = {}
            for _, a in members:  # one accumulator per value input (None: events without one)
                v = a["value"]
                if v not in slots:
                    hashes = any(b["op"] == "distinct" and b["value"] == v for _, b in members)
                    number = v is not None and self.dtypes[v] != "string"
                    slots[v] = self.engine.add_slot(gi, -1 if v is None else col[v], number, hashes)
            for out, a in members:
                self.engine.add_agg(gi, OPS.index(a["op"]), a["window"] // bucket, slots[a["value"]], out)
        self.engine.max_keys = max_keys

    # -- batches ---------------------------------------------------------------------------------------

    cdef _bind(self, Col* cols, columns, Py_ssize_t n_rows, bint need_all, list keep):
        cdef Py_ssize_t i, n
        if n_rows < 0:
            raise ValueError("n_rows must be >= 0")
        if not hasattr(columns, "get"):
            raise TypeError("columns must map raw input names to column tuples")
        for i in range(len(self.inputs)):
            name = self.inputs[i]
            col = columns.get(name)
            cols[i].present = 0
            if col is None:
                if need_all:
                    raise FeatureInputError(name, "missing from the batch")
                continue
            if not isinstance(col, tuple) or len(col) != 6:
                raise FeatureInputError(name, "expected a column tuple (kind, values, data, valid_bytes, "
                                              "valid_bits, bit_offset)")
            kind_name, values, data, valid_bytes, valid_bits, bit_offset = col
            dtype = self.dtypes[name]
            if kind_name not in _ACCEPTS[dtype]:
                raise FeatureInputError(name, f"a {kind_name!r} column cannot feed a {dtype} input")
            is_str = kind_name in ("str32", "str64")
            _check_array(name, values, _TYPENUM[kind_name], n_rows + 1 if is_str else n_rows, "values")
            cols[i].kind = _COL_KINDS[kind_name]
            cols[i].values = <const char*>cnp.PyArray_DATA(values)
            cols[i].data = NULL
            if is_str:
                _check_array(name, data, cnp.NPY_UINT8, -1, "data")
                _check_offsets(name, values, kind_name == "str64", n_rows, cnp.PyArray_DIM(data, 0))
                cols[i].data = <const uint8_t*>cnp.PyArray_DATA(data)
            cols[i].valid_bytes = NULL
            if valid_bytes is not None:
                _check_array(name, valid_bytes, cnp.NPY_BOOL, n_rows, "validity mask")
                cols[i].valid_bytes = <const uint8_t*>cnp.PyArray_DATA(valid_bytes)
            cols[i].valid_bits = NULL
            cols[i].bit_offset = 0
            if valid_bits is not None:
                if isinstance(bit_offset, bool) or not isinstance(bit_offset, (int, np.integer)) or bit_offset < 0:
                    raise FeatureInputError(name, f"bit offset must be an integer >= 0, got {bit_offset!r}")
                _check_array(name, valid_bits, cnp.NPY_UINT8, -1, "validity bitmap")
                if cnp.PyArray_DIM(valid_bits, 0) * 8 < bit_offset + n_rows:
                    raise FeatureInputError(name, "validity bitmap is shorter than the column")
                cols[i].valid_bits = <const uint8_t*>cnp.PyArray_DATA(valid_bits)
                cols[i].bit_offset = bit_offset
            cols[i].present = 1
            keep.append(col)

    def score(self, columns, Py_ssize_t n_rows, out=None, bint record=True):
        """Per row in order: read every aggregate (the window before the row's bucket), then record the row.

        ``record=False`` reads only and leaves the state as it is (a shadow model's copy of rows that the
        primary records).

        ``columns``: column tuples (``skewless.native.columns``) by raw input name, all of ``inputs``;
        returns one float64 [n_rows] array per name (``out``'s arrays, filled, when given). Rows with a
        missing key or time get NaN for that group's aggregates and are not recorded.
        """
        cdef list keep = []
        cdef Col* cols = <Col*>calloc(max(1, len(self.inputs)), sizeof(Col))
        cdef double** outs = <double**>calloc(max(1, len(self.names)), sizeof(double*))
        cdef cnp.ndarray arr
        cdef Py_ssize_t i
        if cols == NULL or outs == NULL:
            free(cols)
            free(outs)
            raise MemoryError()
        try:
            self._bind(cols, columns, n_rows, True, keep)
            result = {}
            for i in range(len(self.names)):
                name = self.names[i]
                arr = None if out is None else out.get(name)
                if arr is None:
                    arr = np.empty(n_rows, dtype=np.float64)
                elif (not isinstance(arr, np.ndarray) or cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT64
                      or cnp.PyArray_NDIM(arr) != 1 or cnp.PyArray_DIM(arr, 0) != n_rows
                      or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISWRITEABLE(arr)
                      or not cnp.PyArray_ISALIGNED(arr)):
                    raise ValueError(f"output {name!r} must be a writeable C-contiguous float64 array of "
                                     f"{n_rows} rows")
                result[name] = arr
                outs[i] = <double*>cnp.PyArray_DATA(arr)
            with nogil:
                self.engine.run(cols, n_rows, outs, record)
            return result
        finally:
            free(cols)
            free(outs)

    def ingest(self, columns, Py_ssize_t n_rows):
        """Record events without reading them; returns the rows recorded in at least one group.

        A group whose key or time inputs are absent from ``columns`` is not touched; an absent value input
        records events without a value. Events older than the retained window are dropped (``events_late``).
        """
        cdef list keep = []
        cdef Col* cols = <Col*>calloc(max(1, len(self.inputs)), sizeof(Col))
        cdef int64_t applied
        if cols == NULL:
            raise MemoryError()
        try:
            self._bind(cols, columns, n_rows, False, keep)
            with nogil:
                applied = self.engine.run(cols, n_rows, NULL, True)
            return applied
        finally:
            free(cols)

    # -- an external store (server/features/aggregate_redis.py) -------------------------------------------
    # The store keeps each batch's events as records (include/skewless_agg_store.h) and, per batch, seeds a
    # scratch state with the prior it read, then runs the batch through score()/ingest() as in process.

    def store_describe(self, columns, Py_ssize_t n_rows, bint scoring, uint64_t batch_id):
        """The batch's events, per group (engine order): a list of ``(key bytes, lowest bucket, highest
        bucket, [bucket, record, bucket, record, ...])`` per key touched, in first-row order. ``scoring``:
        every input must be present (as ``score``), else any subset (as ``ingest``)."""
        cdef list keep = []
        cdef Col* cols = <Col*>calloc(max(1, len(self.inputs)), sizeof(Col))
        cdef vector[vector[StoreKey]] described
        cdef size_t gi, k, r
        if cols == NULL:
            raise MemoryError()
        try:
            self._bind(cols, columns, n_rows, scoring, keep)
            with nogil:
                c_store_describe(self.engine[0], cols, n_rows, batch_id, described)
        finally:
            free(cols)
        out = []
        for gi in range(described.size()):
            keys = []
            for k in range(described[gi].size()):
                flat = []
                for r in range(described[gi][k].events.size()):
                    flat.append(described[gi][k].events[r].first)
                    flat.append(<bytes>described[gi][k].events[r].second)
                keys.append((<bytes>described[gi][k].key, described[gi][k].min_b, described[gi][k].max_b, flat))
            out.append(keys)
        return out

    def store_reset(self):
        """Empty the state (a scratch state is reused batch after batch)."""
        c_store_reset(self.engine[0])

    def store_seed(self, int gi, watermark, keys):
        """Set group ``gi``'s newest bucket (None: none yet) and rebuild each ``(key bytes, [record, ...])`` of
        ``keys`` from its records, without the late rule (a store's prior state is the truth)."""
        cdef vector[const char*] ptrs
        cdef vector[size_t] lens
        cdef string ckey
        cdef bytes rec
        if watermark is not None:
            c_store_seed_watermark(self.engine[0], gi, watermark)
        for key, records in keys:
            ptrs.clear()
            lens.clear()
            for rec in records:
                ptrs.push_back(<const char*>rec)
                lens.push_back(len(rec))
            ckey = key
            try:
                c_store_seed_key(self.engine[0], gi, ckey, ptrs.data(), lens.data(), ptrs.size())
            except ValueError as exc:
                raise ValueError(f"{exc} (plan {self.plan_hash[:12]})") from None

    # -- state -----------------------------------------------------------------------------------------

    def stats(self):
        """keys, buckets and bytes held (hidden state freed first), events recorded and late (per group
        event), keys evicted by ``max_keys``, and the watermark: the newest event time recorded (None before
        any), in the time unit of its input."""
        cdef int64_t s[8]
        with nogil:
            self.engine.stats(s)
        return {"keys": s[0], "buckets": s[1], "bytes": s[2], "events_recorded": s[3], "events_late": s[4],
                "keys_evicted": s[5], "watermark": s[7] if s[6] else None}

    def _recount(self):
        """For tests: (running counters, the same counted by walking the state): buckets, hashes, key bytes,
        keys; plus the size of the age index, which equals the key count."""
        cdef int64_t s[9]
        with nogil:
            self.engine.recount(s)
        return (s[0], s[1], s[2], s[3]), (s[4], s[5], s[6], s[7]), s[8]

    def save(self, path):
        """Write the state to ``path`` atomically (a temporary file in the same folder, then a rename)."""
        cdef string payload
        with nogil:
            payload = self.engine.save()
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        header = MAGIC + FORMAT_VERSION.to_bytes(4, "little") + bytes.fromhex(self.plan_hash)
        fd, tmp = tempfile.mkstemp(prefix=".aggstate-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        try:  # make the rename itself durable
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def load(self, path):
        """Replace the state with the one saved at ``path``.

        AggregatePlanError when it was saved under another plan; ValueError when the file is not a state
        file of this format or is damaged (the current state is then left as it was).
        """
        with open(os.fspath(path), "rb") as f:
            blob = f.read()
        if len(blob) < 44 or blob[:8] != MAGIC:
            raise ValueError(f"{os.fspath(path)}: not a skewless aggregate state file")
        version = int.from_bytes(blob[8:12], "little")
        if version != FORMAT_VERSION:
            raise ValueError(f"{os.fspath(path)}: aggregate state format {version}, this build reads {FORMAT_VERSION}")
        saved = blob[12:44].hex()
        if saved != self.plan_hash:
            raise AggregatePlanError(f"{os.fspath(path)}: state of plan {saved[:12]}, this plan is {self.plan_hash[:12]}")
        cdef const unsigned char[::1] view = memoryview(blob)[44:]
        cdef size_t n = view.shape[0]
        cdef const char* p = <const char*>&view[0] if n else <const char*>NULL
        if n == 0:
            raise ValueError(f"{os.fspath(path)}: aggregate state file is truncated")
        try:
            with nogil:
                self.engine.load(p, n)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None
