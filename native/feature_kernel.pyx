# cython: language_level=3
"""The feature-transform kernel: raw columns of a batch -> preallocated model tensors, in one nogil pass.

Offline ``skewless transform`` and the server's batcher call this same compiled code, so the training matrix
and the served tensor are byte-equal (DESIGN.md, "Bit for bit"). Rules that make that true:

* every output cell depends only on its own row, so any split of a batch into chunks or threads gives the
  same bytes, and each thread writes a disjoint row range;
* arithmetic is IEEE double in a fixed order, rounded to the output dtype once at the end; no libm
  transcendental on the output path (log1p and MurmurHash3 live in ``include/skewless_fp.h``), and the
  translation unit is compiled with ``-ffp-contract=off`` and without fast-math (``BUILD_INFO`` proves it);
* every byte of every output is written by exactly one feature (checked when the kernel is built), so
  outputs can come from ``np.empty``.

The public ``def`` functions validate dtype, contiguity, shape and offsets; the ``cdef`` kernels trust them.
The plan (which column feeds which feature, with which frozen constants) is built by ``skewless.native.spec``.
"""

import numpy as np
cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.math cimport NAN
from libc.string cimport memcmp, memcpy

cnp.import_array()

cdef extern from "include/skewless_fp.h" nogil:
    uint32_t sl_murmur3_32(const uint8_t* data, size_t length, uint32_t seed)
    double sl_log1p(double x)
    double sl_mul_add_probe(double a, double b, double c)
    ctypedef unsigned long long sl_fp_env_t "sl_fp_env"
    sl_fp_env_t sl_fp_env_enter()
    void sl_fp_env_leave(sl_fp_env_t old)
    double sl_fp_env_selftest(double tiny, double* unguarded)
    int SL_FP_ENV_GUARD
    int SL_FAST_MATH
    int SL_HW_FMA
    int SL_FLT_EVAL_METHOD
    const char* SL_COMPILER


class FeatureInputError(ValueError):
    """A raw input column is unusable (wrong dtype, length or encoding); ``column`` names it.

    The server maps this to INVALID_ARGUMENT; it carries no transport knowledge.
    """

    def __init__(self, column, message):
        super().__init__(f"input {column!r}: {message}")
        self.column = column


cdef enum:
    # Column kinds: the physical layout of one bound input column.
    CK_F64, CK_I64, CK_BOOL, CK_STR32, CK_STR64
cdef enum:
    FK_NUMERIC, FK_MISSING, FK_VOCAB, FK_HASH, FK_CROSS, FK_INT_PASS
cdef enum:
    ST_IMPUTE, ST_CLIP, ST_LOG1P, ST_SUBDIV
cdef enum:
    EM_VALUE, EM_INDEX, EM_ONEHOT
cdef enum:
    OD_F32, OD_F64, OD_I64, OD_I32
cdef enum:
    MAX_CROSS = 16
    # Seed of the vocabulary hash tables: any constant works, lookups compare the key bytes.
    TABLE_SEED = 0x2545F491

_ACCEPTS = {"float": (CK_F64,), "int": (CK_I64,), "bool": (CK_BOOL,), "string": (CK_STR32, CK_STR64)}
_KIND_TYPENUM = {CK_F64: cnp.NPY_FLOAT64, CK_I64: cnp.NPY_INT64, CK_BOOL: cnp.NPY_BOOL,
                 CK_STR32: cnp.NPY_INT32, CK_STR64: cnp.NPY_INT64}
COLUMN_KINDS = {"f64": CK_F64, "i64": CK_I64, "bool": CK_BOOL, "str32": CK_STR32, "str64": CK_STR64}
_FEATURE_KINDS = {"numeric": FK_NUMERIC, "missing": FK_MISSING, "vocab": FK_VOCAB, "hash": FK_HASH,
                  "cross": FK_CROSS, "int_pass": FK_INT_PASS}
_STEPS = {"impute": ST_IMPUTE, "clip": ST_CLIP, "log1p": ST_LOG1P, "subdiv": ST_SUBDIV}
_EMITS = {"value": EM_VALUE, "index": EM_INDEX, "onehot": EM_ONEHOT}
_OUT_DTYPES = {"float32": OD_F32, "float64": OD_F64, "int64": OD_I64, "int32": OD_I32}
_OUT_TYPENUM = {OD_F32: cnp.NPY_FLOAT32, OD_F64: cnp.NPY_FLOAT64, OD_I64: cnp.NPY_INT64,
                OD_I32: cnp.NPY_INT32}


cdef struct Step:
    int op
    double a
    double b

cdef struct VocabTable:
    const uint8_t* keys
    const int64_t* key_off
    const int64_t* slots
    uint64_t mask

cdef struct Feature:
    int kind
    int col
    int n_cols
    int cols[MAX_CROSS]
    int step_start
    int n_steps
    int emit
    int out
    Py_ssize_t offset
    Py_ssize_t width
    int n_bounds          # -1: no bucketizing
    Py_ssize_t bound_start
    uint32_t seed
    uint32_t buckets      # hash / cross buckets, or OOV buckets of a vocabulary
    int64_t vocab_size
    int table
    int64_t fill

cdef struct Column:
    int kind
    const char* values    # numeric values, or string offsets
    const uint8_t* data   # string bytes
    const uint8_t* valid_bytes
    const uint8_t* valid_bits
    int64_t bit_offset

cdef struct Output:
    int dtype
    char* data
    Py_ssize_t width


# ---- primitives -------------------------------------------------------------------------------------

cdef inline bint _valid(const Column* c, Py_ssize_t i) noexcept nogil:
    if c.valid_bytes != NULL and c.valid_bytes[i] == 0:
        return False
    if c.valid_bits != NULL:
        i += c.bit_offset
        return (c.valid_bits[i >> 3] >> (i & 7)) & 1
    return True


cdef inline double _read_number(const Column* c, Py_ssize_t i, bint* missing) noexcept nogil:
    """The row's value as a double; NaN (and ``missing``) when absent. A NaN float counts as missing."""
    cdef double x
    if not _valid(c, i):
        missing[0] = True
        return NAN
    if c.kind == CK_F64:
        x = (<const double*>c.values)[i]
        missing[0] = x != x
        return x
    missing[0] = False
    if c.kind == CK_I64:
        return <double>(<const int64_t*>c.values)[i]
    return 1.0 if (<const uint8_t*>c.values)[i] else 0.0


cdef inline Py_ssize_t _read_key(const Column* c, Py_ssize_t i, uint8_t* scratch,
                                 const uint8_t** key) noexcept nogil:
    """Point ``key`` at the row's category bytes and return their length, or -1 when missing.

    Integers are keyed by their 8-byte little-endian two's complement, booleans by one byte (0/1), so the
    hash does not depend on the host byte order.
    """
    cdef int64_t start, stop
    cdef uint64_t u
    cdef int j
    if not _valid(c, i):
        return -1
    if c.kind == CK_STR32:
        start = (<const int32_t*>c.values)[i]
        stop = (<const int32_t*>c.values)[i + 1]
        key[0] = c.data + start
        return stop - start
    if c.kind == CK_STR64:
        start = (<const int64_t*>c.values)[i]
        stop = (<const int64_t*>c.values)[i + 1]
        key[0] = c.data + start
        return stop - start
    if c.kind == CK_I64:
        u = <uint64_t>(<const int64_t*>c.values)[i]
        for j in range(8):
            scratch[j] = <uint8_t>(u >> (8 * j))
        key[0] = scratch
        return 8
    scratch[0] = 1 if (<const uint8_t*>c.values)[i] else 0
    key[0] = scratch
    return 1


cdef inline int64_t _lookup(const VocabTable* t, const uint8_t* key, Py_ssize_t n) noexcept nogil:
    """Vocabulary position of ``key`` or -1 (open addressing, linear probing)."""
    cdef uint64_t slot = sl_murmur3_32(key, n, TABLE_SEED) & t.mask
    cdef int64_t v, start, length
    while True:
        v = t.slots[slot]
        if v < 0:
            return -1
        start = t.key_off[v]
        length = t.key_off[v + 1] - start
        if length == n and (n == 0 or memcmp(t.keys + start, key, n) == 0):
            return v
        slot = (slot + 1) & t.mask


cdef inline void _put_value(const Output* o, Py_ssize_t pos, double x) noexcept nogil:
    # The single rounding of the pipeline: double -> output dtype (round to nearest even).
    if o.dtype == OD_F32:
        (<float*>o.data)[pos] = <float>x
    else:
        (<double*>o.data)[pos] = x


cdef inline void _put_index(const Output* o, Py_ssize_t pos, int64_t k) noexcept nogil:
    if o.dtype == OD_F32:
        (<float*>o.data)[pos] = <float>k
    elif o.dtype == OD_F64:
        (<double*>o.data)[pos] = <double>k
    elif o.dtype == OD_I64:
        (<int64_t*>o.data)[pos] = k
    else:
        (<int32_t*>o.data)[pos] = <int32_t>k


cdef inline void _emit(const Feature* f, const Output* o, Py_ssize_t row, int64_t k) noexcept nogil:
    cdef Py_ssize_t base = row * o.width + f.offset
    cdef Py_ssize_t j
    if f.emit == EM_ONEHOT:
        for j in range(f.width):
            _put_index(o, base + j, 1 if j == k else 0)
    else:
        _put_index(o, base, k)


cdef inline int64_t _bucket(const double* b, int m, double x) noexcept nogil:
    """1 + number of boundaries <= x (numpy's searchsorted side='right'); 0 for NaN (= missing)."""
    cdef int lo = 0, hi = m, mid
    if x != x:
        return 0
    while lo < hi:
        mid = (lo + hi) >> 1
        if b[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return 1 + lo


# ---- the kernel -------------------------------------------------------------------------------------

cdef class BoundBatch:
    """Raw pointers into the columns and outputs of one call, plus the references that keep them alive."""
    cdef Column* cols
    cdef Output* outs
    cdef Py_ssize_t n_rows
    cdef list keep

    def __dealloc__(self):
        free(self.cols)
        free(self.outs)


cdef class Kernel:
    """A compiled feature plan. Immutable after construction, so any number of threads may run it at once.

    Built by ``FeatureSpec`` from the frozen spec; ``input_kinds`` are the logical raw dtypes
    ('float', 'int', 'bool', 'string'), ``outputs`` are (dtype, width) pairs and ``features`` are dicts
    with resolved (decoded) parameters.
    """
    cdef Feature* features
    cdef int n_features
    cdef Step* steps
    cdef VocabTable* tables
    cdef int n_tables
    cdef const double* bounds
    cdef list keep
    cdef readonly tuple input_names
    cdef readonly tuple input_kinds
    cdef readonly tuple output_dtypes
    cdef readonly tuple output_widths

    def __cinit__(self):
        self.features = NULL
        self.steps = NULL
        self.tables = NULL

    def __dealloc__(self):
        free(self.features)
        free(self.steps)
        free(self.tables)

    def __init__(self, input_names, input_kinds, outputs, features):
        cdef Py_ssize_t i, j, n_steps = 0, n_bounds = 0, s = 0, nb = 0
        cdef Feature* f
        cdef cnp.ndarray bounds_arr
        self.input_names = tuple(input_names)
        self.input_kinds = tuple(input_kinds)
        if len(self.input_names) != len(self.input_kinds):
            raise ValueError("input_names and input_kinds differ in length")
        for k in self.input_kinds:
            if k not in ("float", "int", "bool", "string"):
                raise ValueError(f"unknown input dtype {k!r}")
        self.output_dtypes = tuple(str(d) for d, _ in outputs)
        self.output_widths = tuple(int(w) for _, w in outputs)
        for d, w in zip(self.output_dtypes, self.output_widths):
            if d not in _OUT_DTYPES or w < 0:
                raise ValueError(f"bad output ({d!r}, {w})")
        self.keep = []
        features = list(features)
        self.n_features = len(features)
        for spec in features:
            n_steps += len(spec.get("steps", ()))
            if spec.get("bounds") is not None:
                n_bounds += len(spec["bounds"])
        self.features = <Feature*>calloc(max(1, self.n_features), sizeof(Feature))
        self.steps = <Step*>calloc(max(1, n_steps), sizeof(Step))
        vocab_specs = [spec for spec in features if spec["kind"] == "vocab"]
        self.tables = <VocabTable*>calloc(max(1, len(vocab_specs)), sizeof(VocabTable))
        if self.features == NULL or self.steps == NULL or self.tables == NULL:
            raise MemoryError()
        bounds_arr = np.zeros(max(1, n_bounds), dtype=np.float64)
        self.keep.append(bounds_arr)
        self.bounds = <const double*>cnp.PyArray_DATA(bounds_arr)
        coverage = [np.zeros(w, dtype=np.int64) for w in self.output_widths]
        self.n_tables = 0
        for i, spec in enumerate(features):
            f = &self.features[i]
            self._build_feature(f, spec, bounds_arr, &s, &nb)
            coverage[f.out][f.offset:f.offset + f.width] += 1
        for o, cov in enumerate(coverage):
            if cov.size and (cov.min() != 1 or cov.max() != 1):
                raise ValueError(f"output {o}: features must cover every column exactly once")

    cdef _build_feature(self, Feature* f, dict spec, cnp.ndarray bounds_arr, Py_ssize_t* s, Py_ssize_t* nb):
        name = spec.get("name", "?")
        kind = spec["kind"]
        if kind not in _FEATURE_KINDS:
            raise ValueError(f"feature {name!r}: unknown kind {kind!r}")
        f.kind = _FEATURE_KINDS[kind]
        cols = [int(c) for c in spec["cols"]]
        if not cols or len(cols) > MAX_CROSS or any(c < 0 or c >= len(self.input_kinds) for c in cols):
            raise ValueError(f"feature {name!r}: bad input columns {cols}")
        if f.kind != FK_CROSS and len(cols) != 1:
            raise ValueError(f"feature {name!r}: takes exactly one input")
        kinds = [self.input_kinds[c] for c in cols]
        if f.kind in (FK_VOCAB, FK_HASH, FK_CROSS, FK_INT_PASS) and "float" in kinds:
            raise ValueError(f"feature {name!r}: float inputs cannot be categories")
        if f.kind == FK_NUMERIC and "string" in kinds:
            raise ValueError(f"feature {name!r}: string inputs are not numeric")
        if f.kind == FK_INT_PASS and kinds[0] == "string":
            raise ValueError(f"feature {name!r}: string inputs cannot pass through")
        f.n_cols = len(cols)
        for j, c in enumerate(cols):
            f.cols[j] = c
        f.col = cols[0]
        f.out = int(spec["out"])
        if not 0 <= f.out < len(self.output_widths):
            raise ValueError(f"feature {name!r}: bad output {f.out}")
        out_dtype = _OUT_DTYPES[self.output_dtypes[f.out]]
        f.offset = int(spec["offset"])
        f.width = int(spec["width"])
        f.emit = _EMITS[spec.get("encode", "index")]
        f.seed = <uint32_t>int(spec.get("seed", 0))
        f.buckets = <uint32_t>int(spec.get("buckets", 0))
        f.fill = int(spec.get("fill", 0))
        f.n_bounds = -1
        f.step_start = s[0]
        f.n_steps = 0
        f.table = -1
        if f.offset < 0 or f.width < 0 or f.offset + f.width > self.output_widths[f.out]:
            raise ValueError(f"feature {name!r}: columns [{f.offset}, {f.offset + f.width}) outside output")
        for op, a, b in spec.get("steps", ()):
            if f.kind != FK_NUMERIC:
                raise ValueError(f"feature {name!r}: only numeric features take steps")
            self.steps[s[0]].op = _STEPS[op]
            self.steps[s[0]].a = float(a)
            self.steps[s[0]].b = float(b)
            s[0] += 1
            f.n_steps += 1
        cardinality = 2
        if f.kind == FK_NUMERIC:
            bounds = spec.get("bounds")
            if bounds is not None:
                b = np.asarray(bounds, dtype=np.float64)
                if b.ndim != 1 or not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
                    raise ValueError(f"feature {name!r}: boundaries must be finite and increasing")
                bounds_arr[nb[0]:nb[0] + b.size] = b
                f.bound_start = nb[0]
                f.n_bounds = b.size
                nb[0] += b.size
                cardinality = b.size + 2
            elif f.emit != EM_VALUE:
                raise ValueError(f"feature {name!r}: only bucketized numbers have an index")
        elif f.kind == FK_VOCAB:
            vocab = list(spec["vocab"])
            f.vocab_size = len(vocab)
            f.table = self.n_tables
            self._build_table(&self.tables[self.n_tables], vocab, name)
            self.n_tables += 1
            cardinality = 1 + len(vocab) + f.buckets
        elif f.kind in (FK_HASH, FK_CROSS):
            if f.buckets < 1:
                raise ValueError(f"feature {name!r}: needs buckets >= 1")
            cardinality = 1 + f.buckets
        elif f.kind == FK_INT_PASS:
            if f.emit != EM_INDEX or out_dtype not in (OD_I64, OD_I32):
                raise ValueError(f"feature {name!r}: integer pass-through writes one int column")
        if f.emit == EM_VALUE:
            if f.kind not in (FK_NUMERIC, FK_MISSING) or f.n_bounds >= 0:
                raise ValueError(f"feature {name!r}: value encoding is for numbers")
            if f.kind == FK_NUMERIC and out_dtype not in (OD_F32, OD_F64):
                raise ValueError(f"feature {name!r}: a numeric value needs a float output")
        if f.emit == EM_ONEHOT and f.width != cardinality:
            raise ValueError(f"feature {name!r}: one-hot width {f.width} != cardinality {cardinality}")
        if f.emit != EM_ONEHOT and f.width != 1:
            raise ValueError(f"feature {name!r}: width must be 1")
        if f.emit == EM_INDEX and out_dtype == OD_I32 and cardinality > 2**31 - 1:
            raise ValueError(f"feature {name!r}: cardinality does not fit int32")

    cdef _build_table(self, VocabTable* t, list vocab, name):
        cdef Py_ssize_t n = len(vocab), size = 1, i
        cdef uint64_t slot
        cdef cnp.ndarray[cnp.int64_t, ndim=1] off = np.zeros(n + 1, dtype=np.int64)
        cdef cnp.ndarray[cnp.int64_t, ndim=1] slots
        cdef const uint8_t* kp
        for i in range(n):
            if not isinstance(vocab[i], bytes):
                raise TypeError(f"feature {name!r}: vocabulary entries must be bytes")
            off[i + 1] = off[i] + PyBytes_GET_SIZE(vocab[i])
        keys = np.frombuffer(b"".join(vocab) + b"\0", dtype=np.uint8)
        while size < 2 * n + 2:
            size <<= 1
        slots = np.full(size, -1, dtype=np.int64)
        t.keys = <const uint8_t*>cnp.PyArray_DATA(keys)
        t.key_off = <const int64_t*>cnp.PyArray_DATA(off)
        t.slots = <const int64_t*>cnp.PyArray_DATA(slots)
        t.mask = size - 1
        for i in range(n):
            kp = <const uint8_t*>PyBytes_AS_STRING(vocab[i])
            if _lookup(t, kp, PyBytes_GET_SIZE(vocab[i])) >= 0:
                raise ValueError(f"feature {name!r}: duplicate vocabulary entry {vocab[i]!r}")
            slot = sl_murmur3_32(kp, PyBytes_GET_SIZE(vocab[i]), TABLE_SEED) & t.mask
            while slots[slot] >= 0:
                slot = (slot + 1) & t.mask
            slots[slot] = i
        self.keep.extend((keys, off, slots))

    # -- binding ---------------------------------------------------------------------------------------

    def bind(self, columns, outputs, Py_ssize_t n_rows):
        """Check one batch and capture its pointers.

        ``columns``: per input, a tuple ``(kind, values, data, valid_bytes, valid_bits, bit_offset)`` as
        made by ``skewless.native.columns``; ``outputs``: per output, a C-contiguous writeable array of
        shape (n_rows, width) and the output's dtype. Raises FeatureInputError naming a bad column.
        """
        cdef BoundBatch b = BoundBatch.__new__(BoundBatch)
        cdef Py_ssize_t i
        if n_rows < 0:
            raise ValueError("n_rows must be >= 0")
        if len(columns) != len(self.input_kinds):
            raise ValueError(f"expected {len(self.input_kinds)} columns, got {len(columns)}")
        if len(outputs) != len(self.output_widths):
            raise ValueError(f"expected {len(self.output_widths)} outputs, got {len(outputs)}")
        b.n_rows = n_rows
        b.keep = [columns, outputs]
        b.cols = <Column*>calloc(max(1, len(columns)), sizeof(Column))
        b.outs = <Output*>calloc(max(1, len(outputs)), sizeof(Output))
        if b.cols == NULL or b.outs == NULL:
            raise MemoryError()
        for i in range(len(columns)):
            self._bind_column(&b.cols[i], i, columns[i], n_rows)
        for i in range(len(outputs)):
            self._bind_output(&b.outs[i], i, outputs[i], n_rows)
        return b

    def bind_source(self, source, outputs, adapter):
        """Look up every input in ``source`` (a mapping), adapt it, check row counts, and bind.

        The common layouts (1-D contiguous float64/int64/bool arrays, object arrays of strings, column
        tuples) are recognised here in C; anything else goes through ``adapter(name, obj, dtype)``, which
        returns a column tuple. ``outputs`` is a list of arrays, or a callable that allocates them for a
        row count. Returns (bound batch, row count, outputs).
        """
        cdef Py_ssize_t i, n, n_rows = -1
        cdef list cols = [None] * len(self.input_names)
        cdef object obj, col
        cdef int typenum
        cdef cnp.ndarray arr
        for i in range(len(self.input_names)):
            name = self.input_names[i]
            try:
                obj = source[name]
            except KeyError:
                raise FeatureInputError(name, "missing from the batch") from None
            dtype = self.input_kinds[i]
            col = None
            if type(obj) is np.ndarray and cnp.PyArray_NDIM(<cnp.ndarray>obj) == 1 \
                    and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>obj):
                arr = <cnp.ndarray>obj
                typenum = cnp.PyArray_TYPE(arr)
                if dtype == "float" and typenum == cnp.NPY_FLOAT64:
                    col = ("f64", arr, None, None, None, 0)
                elif dtype == "int" and typenum == cnp.NPY_INT64:
                    col = ("i64", arr, None, None, None, 0)
                elif dtype == "bool" and typenum == cnp.NPY_BOOL:
                    col = ("bool", arr, None, None, None, 0)
                elif dtype == "string" and typenum == cnp.NPY_OBJECT:
                    try:
                        offsets, data, valid = strings_to_buffers(arr)
                    except (TypeError, UnicodeError) as exc:
                        raise FeatureInputError(name, str(exc)) from None
                    col = ("str64", offsets, data, valid, None, 0)
            if col is None:
                col = adapter(name, obj, dtype)
            n = cnp.PyArray_DIM(<cnp.ndarray>col[1], 0) - (1 if col[0] == "str32" or col[0] == "str64" else 0)
            if n_rows < 0:
                n_rows = n
            elif n != n_rows:
                raise FeatureInputError(name, f"has {n} rows, but {self.input_names[0]!r} has {n_rows}")
            cols[i] = col
        if n_rows < 0:
            n_rows = 0
        if callable(outputs):
            outputs = outputs(n_rows)
        return self.bind(cols, outputs, n_rows), n_rows, outputs

    cdef _bind_column(self, Column* c, Py_ssize_t i, tuple col, Py_ssize_t n):
        name = self.input_names[i]
        if len(col) != 6:
            raise ValueError(f"input {name!r}: column tuple must have 6 fields")
        kind_name, values, data, valid_bytes, valid_bits, bit_offset = col
        c.kind = COLUMN_KINDS[kind_name]
        if c.kind not in _ACCEPTS[self.input_kinds[i]]:
            raise FeatureInputError(name, f"a {kind_name} column cannot feed a {self.input_kinds[i]} input")
        _check_array(name, values, _KIND_TYPENUM[c.kind], n + 1 if c.kind >= CK_STR32 else n, "values")
        c.values = <const char*>cnp.PyArray_DATA(values)
        c.data = NULL
        if c.kind >= CK_STR32:
            _check_array(name, data, cnp.NPY_UINT8, -1, "data")
            c.data = <const uint8_t*>cnp.PyArray_DATA(data)
            _check_offsets(name, values, c.kind == CK_STR64, n, cnp.PyArray_DIM(data, 0))
        c.valid_bytes = NULL
        if valid_bytes is not None:
            _check_array(name, valid_bytes, cnp.NPY_BOOL, n, "validity mask")
            c.valid_bytes = <const uint8_t*>cnp.PyArray_DATA(valid_bytes)
        c.valid_bits = NULL
        c.bit_offset = int(bit_offset)
        if valid_bits is not None:
            _check_array(name, valid_bits, cnp.NPY_UINT8, -1, "validity bitmap")
            if c.bit_offset < 0 or cnp.PyArray_DIM(valid_bits, 0) * 8 < c.bit_offset + n:
                raise FeatureInputError(name, "validity bitmap is shorter than the column")
            c.valid_bits = <const uint8_t*>cnp.PyArray_DATA(valid_bits)

    cdef _bind_output(self, Output* o, Py_ssize_t i, object arr, Py_ssize_t n):
        cdef cnp.ndarray a
        o.dtype = _OUT_DTYPES[self.output_dtypes[i]]
        o.width = self.output_widths[i]
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"output {i} must be a numpy array")
        a = arr
        if (cnp.PyArray_TYPE(a) != _OUT_TYPENUM[o.dtype] or cnp.PyArray_NDIM(a) != 2
                or cnp.PyArray_DIM(a, 0) != n or cnp.PyArray_DIM(a, 1) != o.width):
            raise ValueError(f"output {i} must be {self.output_dtypes[i]} of shape ({n}, {o.width}), got "
                             f"{arr.dtype} {arr.shape}")
        if not (cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISWRITEABLE(a) and cnp.PyArray_ISALIGNED(a)):
            raise ValueError(f"output {i} must be C-contiguous, aligned and writeable")
        o.data = <char*>cnp.PyArray_DATA(a)

    # -- running ---------------------------------------------------------------------------------------

    def run(self, BoundBatch batch not None, Py_ssize_t start=0, Py_ssize_t stop=-1):
        """Transform rows [start, stop) of a bound batch without the GIL. Thread-safe for disjoint ranges."""
        if stop < 0:
            stop = batch.n_rows
        if not 0 <= start <= stop <= batch.n_rows:
            raise ValueError(f"bad row range [{start}, {stop}) of {batch.n_rows}")
        cdef const Column* cols = batch.cols
        cdef const Output* outs = batch.outs
        cdef int fi
        cdef sl_fp_env_t env
        with nogil:
            env = sl_fp_env_enter()
            for fi in range(self.n_features):
                self._run_feature(&self.features[fi], cols, outs, start, stop)
            sl_fp_env_leave(env)

    cdef void _run_feature(self, const Feature* f, const Column* cols, const Output* outs,
                           Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
        cdef const Output* o = &outs[f.out]
        cdef const Column* c = &cols[f.col]
        cdef const Step* st
        cdef Py_ssize_t i, s, klen
        cdef bint missing
        cdef double x
        cdef int64_t k, v
        cdef uint32_t h
        cdef int j
        cdef uint8_t scratch[8]
        cdef uint8_t mix[4 * MAX_CROSS]
        cdef const uint8_t* key = NULL
        for i in range(start, stop):
            if f.kind == FK_NUMERIC:
                x = _read_number(c, i, &missing)
                for s in range(f.step_start, f.step_start + f.n_steps):
                    st = &self.steps[s]
                    if st.op == ST_IMPUTE:
                        if missing:
                            x = st.a
                            missing = False
                    elif st.op == ST_CLIP:
                        if x < st.a:
                            x = st.a
                        elif x > st.b:
                            x = st.b
                    elif st.op == ST_LOG1P:
                        x = sl_log1p(x)
                    else:
                        x = (x - st.a) / st.b
                if f.n_bounds < 0:
                    _put_value(o, i * o.width + f.offset, x)
                else:
                    _emit(f, o, i, _bucket(self.bounds + f.bound_start, f.n_bounds, x))
            elif f.kind == FK_MISSING:
                missing = not _valid(c, i) or (c.kind == CK_F64 and
                                               (<const double*>c.values)[i] != (<const double*>c.values)[i])
                _emit(f, o, i, 1 if missing else 0)
            elif f.kind == FK_VOCAB:
                klen = _read_key(c, i, scratch, &key)
                if klen < 0:
                    k = 0
                else:
                    k = _lookup(&self.tables[f.table], key, klen)
                    if k >= 0:
                        k += 1
                    elif f.buckets > 0:
                        k = 1 + f.vocab_size + sl_murmur3_32(key, klen, f.seed) % f.buckets
                    else:
                        k = 0
                _emit(f, o, i, k)
            elif f.kind == FK_HASH:
                klen = _read_key(c, i, scratch, &key)
                k = 0 if klen < 0 else 1 + sl_murmur3_32(key, klen, f.seed) % f.buckets
                _emit(f, o, i, k)
            elif f.kind == FK_CROSS:
                k = 1
                for j in range(f.n_cols):
                    klen = _read_key(&cols[f.cols[j]], i, scratch, &key)
                    if klen < 0:
                        k = 0
                        break
                    h = sl_murmur3_32(key, klen, f.seed)
                    mix[4 * j] = <uint8_t>h
                    mix[4 * j + 1] = <uint8_t>(h >> 8)
                    mix[4 * j + 2] = <uint8_t>(h >> 16)
                    mix[4 * j + 3] = <uint8_t>(h >> 24)
                if k:
                    k = 1 + sl_murmur3_32(mix, 4 * f.n_cols, f.seed) % f.buckets
                _emit(f, o, i, k)
            else:  # FK_INT_PASS
                if not _valid(c, i):
                    v = f.fill
                elif c.kind == CK_I64:
                    v = (<const int64_t*>c.values)[i]
                else:
                    v = 1 if (<const uint8_t*>c.values)[i] else 0
                _put_index(o, i * o.width + f.offset, v)


# ---- validation helpers -----------------------------------------------------------------------------

include "column_checks.pxi"


# ---- conversions used by the Python layer -----------------------------------------------------------

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL


def strings_to_buffers(cnp.ndarray values not None):
    """Encode a 1-D object array of str/bytes into Arrow-style (int64 offsets, uint8 data, valid mask).

    For inputs that arrive as Python objects (numpy object arrays, pandas object columns, the server's
    decoded BYTES tensors); Arrow inputs never come here. None, NaN and pandas.NA are missing; str is
    encoded as UTF-8 (CPython's cached UTF-8, so no bytes object per value). The validity mask is None
    when nothing is missing.
    """
    if values.ndim != 1:
        raise ValueError("expected a 1-D array")
    cdef Py_ssize_t n = values.shape[0], i, total = 0, size
    cdef cnp.ndarray[cnp.int64_t, ndim=1] offsets = np.empty(n + 1, dtype=np.int64)
    cdef cnp.ndarray[cnp.uint8_t, ndim=1] valid = np.ones(n, dtype=np.uint8)
    cdef cnp.ndarray ptrs = np.empty(n, dtype=np.uintp)
    cdef size_t* p = <size_t*>cnp.PyArray_DATA(ptrs)
    cdef object item
    cdef list held = []  # converted non-str/bytes objects, alive until the copy below
    cdef bint any_missing = False
    cdef const char* src
    offsets[0] = 0
    for i in range(n):
        item = values[i]
        if isinstance(item, str):
            src = PyUnicode_AsUTF8AndSize(item, &size)
        elif isinstance(item, bytes):
            src = PyBytes_AS_STRING(item)
            size = PyBytes_GET_SIZE(item)
        elif isinstance(item, (bytearray, memoryview)):
            item = bytes(item)
            held.append(item)
            src = PyBytes_AS_STRING(item)
            size = PyBytes_GET_SIZE(item)
        elif item is None or (isinstance(item, float) and item != item) or _is_na(item):
            valid[i] = 0
            any_missing = True
            src = NULL
            size = 0
        else:
            raise TypeError(f"element {i} is {type(item).__name__}, not str or bytes")
        p[i] = <size_t>src
        total += size
        offsets[i + 1] = total
    cdef cnp.ndarray data = np.empty(total, dtype=np.uint8)
    cdef char* dst = <char*>cnp.PyArray_DATA(data)
    for i in range(n):  # values[] still holds every str/bytes, so their buffers are alive
        if offsets[i + 1] > offsets[i]:
            memcpy(dst + offsets[i], <const char*>p[i], offsets[i + 1] - offsets[i])
    return offsets, data, valid.view(np.bool_) if any_missing else None


cdef bint _is_na(object item):
    return type(item).__name__ in ("NAType", "NaTType")


def murmurhash3_32(key, unsigned int seed=0):
    """MurmurHash3_x86_32 of ``key`` (bytes, or str as UTF-8) as an unsigned int; the kernel's hash."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    cdef const uint8_t[::1] view = memoryview(key).cast("B")
    cdef Py_ssize_t n = view.shape[0]
    cdef uint8_t empty = 0
    cdef const uint8_t* p = &view[0] if n else &empty
    return sl_murmur3_32(p, n, seed)


def log1p(x):
    """The kernel's deterministic log1p (fdlibm, < 1 ulp) applied elementwise to float64 data."""
    cdef cnp.ndarray[cnp.float64_t, ndim=1] src = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    cdef cnp.ndarray[cnp.float64_t, ndim=1] out = np.empty_like(src)
    cdef const double* s = <const double*>cnp.PyArray_DATA(src)
    cdef double* d = <double*>cnp.PyArray_DATA(out)
    cdef Py_ssize_t i, n = src.shape[0]
    cdef sl_fp_env_t env
    with nogil:
        env = sl_fp_env_enter()
        for i in range(n):
            d[i] = sl_log1p(s[i])
        sl_fp_env_leave(env)
    return out.reshape(np.shape(x))


def mul_add_probe(double a, double b, double c):
    """``a * b + c`` as compiled in this module: equals round(round(a*b) + c) only without FMA contraction."""
    return sl_mul_add_probe(a, b, c)


def fp_env_selftest():
    """(guarded, unguarded) halves of the smallest normal double's half while FTZ/DAZ is forced on.

    Proves that the kernel's FP-environment guard restores IEEE subnormals; None where there is no guard.
    """
    cdef double unguarded = 0.0
    if not SL_FP_ENV_GUARD:
        return None
    cdef double guarded = sl_fp_env_selftest(2.0 ** -1073, &unguarded)
    return guarded, unguarded


BUILD_INFO = {
    "fp_env_guard": bool(SL_FP_ENV_GUARD),
    "fast_math": bool(SL_FAST_MATH),
    "target_has_fma": bool(SL_HW_FMA),
    "flt_eval_method": SL_FLT_EVAL_METHOD,
    "compiler": SL_COMPILER.decode("ascii", "replace"),
}
