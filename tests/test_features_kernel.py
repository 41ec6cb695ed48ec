"""The feature kernel against a plain-NumPy/Python reference, through the public FeatureSpec API.

The reference re-implements every transform from the spec document alone (hex floats decoded, hashing by a
pure-Python MurmurHash3), so a kernel bug and a spec bug cannot cancel out. Property tests cover the
bit-for-bit promises: batch == concatenation of rows for any split, any thread count, special values.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skewless.native import feature_kernel as fk
from skewless.native import spec as spec_mod
from skewless.native.feature_kernel import FeatureInputError
from skewless.native.spec import FeatureSpec, SpecError, content_hash, decode_float, encode_float

# ---- pure-Python reference --------------------------------------------------------------------------


def murmur3_py(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_32, straight from the reference algorithm."""
    c1, c2, m = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed & m
    n = len(data) // 4
    for i in range(n):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * c1) & m
        k = ((k << 15) | (k >> 17)) & m
        k = (k * c2) & m
        h ^= k
        h = ((h << 13) | (h >> 19)) & m
        h = (h * 5 + 0xE6546B64) & m
    tail = data[4 * n:]
    k = 0
    for j, b in enumerate(tail):
        k |= b << (8 * j)
    if tail:
        k = (k * c1) & m
        k = ((k << 15) | (k >> 17)) & m
        k = (k * c2) & m
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & m
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & m
    h ^= h >> 16
    return h


def _key(value, dtype: str) -> bytes:
    if dtype == "int":
        return int(value).to_bytes(8, "little", signed=True)
    if dtype == "bool":
        return bytes([1 if value else 0])
    return value


def reference(spec: FeatureSpec, rows: dict[str, list]) -> dict[str, np.ndarray]:
    """Outputs computed from the spec document with NumPy and Python only. ``rows``: name -> list, None = missing."""
    doc = spec.to_dict()
    dtypes = {i["name"]: i["dtype"] for i in doc["inputs"]}
    n = len(next(iter(rows.values())))
    outs = {o["name"]: np.zeros((n, o["shape"][1]), dtype=o["dtype"]) for o in doc["outputs"]}

    def numbers(name):
        vals = rows[name]
        return np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)

    for f in doc["features"]:
        out = outs[f["output"]]
        src = f["inputs"][0]
        cols = slice(f["offset"], f["offset"] + f["width"])
        idx = None
        if f["kind"] == "numeric" or (f["kind"] == "passthrough" and out.dtype.kind == "f"):
            x = numbers(src)
            for step in f.get("steps", []):
                op = step["op"]
                if op == "impute":
                    x = np.where(np.isnan(x), decode_float(step["value"]), x)
                elif op == "clip":
                    lo, hi = decode_float(step["min"]), decode_float(step["max"])
                    x = np.where(x < lo, lo, np.where(x > hi, hi, x))
                elif op == "log1p":
                    x = fk.log1p(x)  # itself checked against np.log1p in test_features_determinism
                elif op == "standardize":
                    x = (x - decode_float(step["mean"])) / decode_float(step["scale"])
                elif op == "minmax":
                    x = (x - decode_float(step["min"])) / decode_float(step["range"])
            if "bucketize" in f:
                b = np.array([decode_float(v) for v in f["bucketize"]["boundaries"]])
                idx = np.where(np.isnan(x), 0, 1 + np.searchsorted(b, x, side="right")).astype(np.int64)
            else:
                with np.errstate(over="ignore"):
                    out[:, f["offset"]] = x.astype(out.dtype)
        elif f["kind"] == "passthrough":
            out[:, f["offset"]] = [f.get("fill", 0) if v is None else int(v) for v in rows[src]]
        elif f["kind"] == "missing_indicator":
            x = rows[src]
            miss = [v is None or (isinstance(v, float) and math.isnan(v)) for v in x]
            out[:, f["offset"]] = np.array(miss, dtype=out.dtype)
        elif f["kind"] == "vocabulary":
            vocab = spec_mod.decode_vocabulary(f["vocabulary_encoding"], f["vocabulary"], f["name"])
            pos = {v: i for i, v in enumerate(vocab)}
            oov = f["oov_buckets"]
            idx = []
            for v in rows[src]:
                if v is None:
                    idx.append(0)
                    continue
                k = _key(v, dtypes[src])
                if k in pos:
                    idx.append(1 + pos[k])
                else:
                    idx.append(1 + len(vocab) + murmur3_py(k, f["seed"]) % oov if oov else 0)
            idx = np.array(idx, dtype=np.int64)
        elif f["kind"] == "hash":
            idx = np.array([0 if v is None else 1 + murmur3_py(_key(v, dtypes[src]), f["seed"]) % f["buckets"]
                            for v in rows[src]], dtype=np.int64)
        elif f["kind"] == "cross":
            idx = []
            for r in range(n):
                vals = [rows[i][r] for i in f["inputs"]]
                if any(v is None for v in vals):
                    idx.append(0)
                    continue
                mix = b"".join(struct.pack("<I", murmur3_py(_key(v, dtypes[i]), f["seed"]))
                               for v, i in zip(vals, f["inputs"], strict=True))
                idx.append(1 + murmur3_py(mix, f["seed"]) % f["buckets"])
            idx = np.array(idx, dtype=np.int64)
        if idx is not None:
            if f["encode"] == "onehot":
                block = np.zeros((n, f["width"]), dtype=out.dtype)
                block[np.arange(n), idx] = 1
                out[:, cols] = block
            else:
                out[:, f["offset"]] = idx
    return outs


# ---- a hand-written spec covering every transform ---------------------------------------------------

def make_spec(inputs: dict[str, str], features: list[dict], outputs: dict[str, str] | None = None) -> FeatureSpec:
    """Lay out offsets, fill document boilerplate and hash: specs without fitting."""
    outputs = outputs or {"dense": "float32", "ids": "int64"}
    widths = dict.fromkeys(outputs, 0)
    feats = []
    for f in features:
        f = dict(f)
        f.setdefault("inputs", [f["name"]])
        f.setdefault("encode", "value")
        f.setdefault("output", "ids" if f["encode"] == "index" else "dense")
        width = spec_mod.cardinality(f) if f["encode"] == "onehot" else 1
        f.update(offset=widths[f["output"]], width=width)
        widths[f["output"]] += width
        feats.append(f)
    doc = {"format": spec_mod.FORMAT, "format_version": 1, "float_encoding": "hex", "hash": "murmur3_x86_32",
           "generator": "test", "inputs": [{"name": k, "dtype": v, "shape": [1]} for k, v in inputs.items()],
           "outputs": [{"name": k, "dtype": v, "shape": [-1, widths[k]]} for k, v in outputs.items() if widths[k]],
           "features": feats, "fit": {"rows": 0}}
    doc["sha256"] = content_hash(doc)
    return FeatureSpec(doc)


H = encode_float
INPUTS = {"x": "float", "n": "int", "flag": "bool", "s": "string", "t": "string"}
FEATURES = [
    {"name": "x", "kind": "numeric", "steps": [{"op": "impute", "strategy": "mean", "value": H(0.25)},
                                               {"op": "clip", "min": H(-1e6), "max": H(1e300)},
                                               {"op": "standardize", "mean": H(0.1), "scale": H(3.0)}]},
    {"name": "x_raw", "kind": "numeric", "inputs": ["x"], "steps": []},
    {"name": "x_log", "kind": "numeric", "inputs": ["x"], "steps": [{"op": "log1p"}]},
    {"name": "x_mm", "kind": "numeric", "inputs": ["x"],
     "steps": [{"op": "clip", "min": H(-5.0), "max": H(5.0)}, {"op": "minmax", "min": H(-5.0), "range": H(10.0)}]},
    {"name": "x_missing", "kind": "missing_indicator", "inputs": ["x"]},
    {"name": "x_b", "kind": "numeric", "inputs": ["x"], "steps": [], "encode": "onehot",
     "bucketize": {"method": "given", "boundaries": [H(-1.0), H(0.0), H(2.5)]}},
    {"name": "x_bi", "kind": "numeric", "inputs": ["x"], "steps": [], "encode": "index",
     "bucketize": {"method": "given", "boundaries": [H(-0.0), H(1e-300)]}},
    {"name": "n_num", "kind": "numeric", "inputs": ["n"], "steps": [{"op": "impute", "value": H(-7.0),
                                                                   "strategy": "constant"}]},
    {"name": "n_pass", "kind": "passthrough", "inputs": ["n"], "encode": "index", "fill": -1},
    {"name": "n_vocab", "kind": "vocabulary", "inputs": ["n"], "encode": "index", "vocabulary_encoding": "int64",
     "vocabulary": ["3", "-1", "9223372036854775807"], "oov_buckets": 2, "seed": 5},
    {"name": "flag", "kind": "numeric", "steps": []},
    {"name": "flag_h", "kind": "hash", "inputs": ["flag"], "encode": "index", "buckets": 7, "seed": 1},
    {"name": "s_vocab", "kind": "vocabulary", "inputs": ["s"], "encode": "onehot", "vocabulary_encoding": "base64",
     "vocabulary": ["VVM=", "", "/w==", "w6k="], "oov_buckets": 3, "seed": 11},  # US, "", \xff, é
    {"name": "s_noov", "kind": "vocabulary", "inputs": ["s"], "encode": "index", "vocabulary_encoding": "utf-8",
     "vocabulary": ["US", "DE"], "oov_buckets": 0, "seed": 0},
    {"name": "s_hash", "kind": "hash", "inputs": ["s"], "encode": "index", "buckets": 1000, "seed": 42},
    {"name": "s_hash_oh", "kind": "hash", "inputs": ["s"], "encode": "onehot", "buckets": 4, "seed": 0},
    {"name": "cross", "kind": "cross", "inputs": ["s", "t", "n"], "encode": "index", "buckets": 97, "seed": 3},
    {"name": "cross_f", "kind": "cross", "inputs": ["t", "flag"], "encode": "onehot", "buckets": 5, "seed": 0,
     "output": "dense"},
]
SPEC = make_spec(INPUTS, FEATURES)

SPECIAL_FLOATS = [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, -5e-324, 2.2250738585072014e-308,
                  1e300, -1e300, 1.7976931348623157e308, 3.4028235677973366e38, 1e-45, -1.0, -1.5, 2.5, 1e-300]
SPECIAL_STRINGS = [b"", b"US", b"DE", b"\xff", b"\xc3\xa9", b"\x00", b"unseen", b"\xff\xfe\x00abc" * 10]
SPECIAL_INTS = [0, 3, -1, 2**63 - 1, -(2**63), 42]


def to_columns(rows: dict[str, list]) -> dict[str, object]:
    """Rows (None = missing) as the typed columns a client would send: numpy + masks, Arrow binary."""
    cols: dict[str, object] = {}
    for name, dtype in INPUTS.items():
        vals = rows[name]
        valid = np.array([v is not None for v in vals], dtype=np.bool_)
        if dtype == "string":
            cols[name] = pa.array(vals, type=pa.binary())
        else:
            np_type = {"float": np.float64, "int": np.int64, "bool": np.bool_}[dtype]
            cols[name] = (np.array([0 if v is None else v for v in vals], dtype=np_type), valid)
    return cols


def assert_bytes_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        if a[k].tobytes() != b[k].tobytes():
            bad = np.argwhere(a[k].view(np.uint8).reshape(a[k].shape[0], -1)
                              != b[k].view(np.uint8).reshape(b[k].shape[0], -1))
            raise AssertionError(f"{k}: first differing (row, byte) {bad[:5].tolist()}; "
                                 f"got {a[k][bad[0][0]]}, expected {b[k][bad[0][0]]}")


row_values = {
    "x": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
                   st.sampled_from(SPECIAL_FLOATS)),
    "n": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.sampled_from(SPECIAL_INTS)),
    "flag": st.one_of(st.none(), st.booleans()),
    "s": st.one_of(st.none(), st.binary(max_size=12), st.sampled_from(SPECIAL_STRINGS)),
    "t": st.one_of(st.none(), st.binary(max_size=3), st.sampled_from(SPECIAL_STRINGS)),
}
batches = st.integers(0, 40).flatmap(
    lambda n: st.fixed_dictionaries({k: st.lists(v, min_size=n, max_size=n) for k, v in row_values.items()}))


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Let the thread split happen on small batches, so hypothesis-sized batches exercise it."""
    monkeypatch.setattr(spec_mod, "MIN_CHUNK_ROWS", 1)


# ---- properties -------------------------------------------------------------------------------------

@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=batches, data=st.data())
def test_batch_matches_reference_rows_and_any_split(rows, data, tiny_chunks):
    full = SPEC.transform(to_columns(rows), n_threads=1)
    assert_bytes_equal(full, reference(SPEC, rows))
    n = len(rows["x"])
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    pieces = []
    for lo, hi in zip([0, *cuts], [*cuts, n], strict=True):
        pieces.append(SPEC.transform(to_columns({k: v[lo:hi] for k, v in rows.items()}), n_threads=1))
    joined = {k: np.concatenate([p[k] for p in pieces]) for k in full}
    assert_bytes_equal(joined, full)
    threads = data.draw(st.integers(2, 7))
    assert_bytes_equal(SPEC.transform(to_columns(rows), n_threads=threads), full)


def test_every_single_row_equals_its_batch_row():
    rng = np.random.default_rng(1)
    n = 200
    rows = {
        "x": [SPECIAL_FLOATS[i % len(SPECIAL_FLOATS)] if i % 3 else float(rng.normal() * 10) for i in range(n)],
        "n": [None if i % 11 == 0 else SPECIAL_INTS[i % len(SPECIAL_INTS)] for i in range(n)],
        "flag": [None if i % 7 == 0 else bool(i % 2) for i in range(n)],
        "s": [None if i % 13 == 0 else SPECIAL_STRINGS[i % len(SPECIAL_STRINGS)] for i in range(n)],
        "t": [SPECIAL_STRINGS[(i * 7) % len(SPECIAL_STRINGS)] for i in range(n)],
    }
    full = SPEC.transform(to_columns(rows))
    assert_bytes_equal(full, reference(SPEC, rows))
    for i in range(n):
        one = SPEC.transform(to_columns({k: v[i:i + 1] for k, v in rows.items()}))
        for k in full:
            assert one[k].tobytes() == full[k][i:i + 1].tobytes(), (k, i)


@pytest.mark.parametrize("threads", [1, 2, 3, 8, 16])
def test_large_batch_identical_for_any_thread_count(threads):
    rng = np.random.default_rng(7)
    n = 40_000
    x = rng.normal(size=n) * 10.0 ** rng.integers(-300, 300, n)
    x[rng.random(n) < 0.05] = np.nan
    x[::997] = -0.0
    cols = {
        "x": x, "n": rng.integers(-5, 5, n), "flag": rng.random(n) < 0.5,
        "s": pa.array([SPECIAL_STRINGS[i] for i in rng.integers(0, len(SPECIAL_STRINGS), n)], type=pa.binary()),
        "t": pa.array([None if i == 0 else SPECIAL_STRINGS[i] for i in rng.integers(0, 4, n)], type=pa.binary()),
    }
    base = SPEC.transform(cols, n_threads=1)
    assert_bytes_equal(SPEC.transform(cols, n_threads=threads), base)


# ---- individual behaviours --------------------------------------------------------------------------

def test_special_float_values_follow_ieee():
    rows = {"x": SPECIAL_FLOATS, "n": [0] * len(SPECIAL_FLOATS), "flag": [True] * len(SPECIAL_FLOATS),
            "s": [b""] * len(SPECIAL_FLOATS), "t": [b""] * len(SPECIAL_FLOATS)}
    out = SPEC.transform(to_columns(rows))
    assert_bytes_equal(out, reference(SPEC, rows))
    dense = out["dense"]
    names = SPEC.column_names("dense")
    raw = dense[:, names.index("x_raw")]
    assert np.signbit(raw[1]) and raw[1] == 0  # -0.0 survives a pass-through
    assert np.isnan(raw[4])  # NaN is missing; without impute it stays NaN
    assert raw[2] == np.inf and raw[7] == 0.0  # a double subnormal rounds to float32 zero
    assert raw[12] == np.float32(1e-45)  # float32 subnormal kept (no FTZ)
    assert raw[8] == np.inf  # 1e300 overflows float32 to inf, not an error
    log = dense[:, names.index("x_log")]
    assert np.isnan(log[3]) and np.isneginf(log[13]) and np.isnan(log[14])  # log1p(-inf), (-1), (-1.5)
    assert dense[4, names.index("x")] == np.float32((0.25 - 0.1) / 3.0)  # NaN imputed with the mean


def test_unseen_categories_use_oov_buckets_and_missing_is_zero():
    rows = {"x": [1.0] * 4, "n": [3, 4, None, -1], "flag": [True, False, None, True],
            "s": [b"US", b"never-seen", None, b""], "t": [b"a"] * 4}
    out = SPEC.transform(to_columns(rows))
    assert_bytes_equal(out, reference(SPEC, rows))
    ids = out["ids"]
    names = SPEC.column_names("ids")
    assert ids[:, names.index("n_vocab")].tolist()[0] == 1 and ids[2, names.index("n_vocab")] == 0
    assert 4 <= ids[1, names.index("n_vocab")] <= 5  # 1 + 3 vocabulary entries + one of 2 OOV buckets
    assert ids[:, names.index("s_noov")].tolist() == [1, 0, 0, 0]
    assert ids[:, names.index("n_pass")].tolist() == [3, 4, -1, -1]
    assert ids[2, names.index("cross")] == 0


def test_input_layouts_give_identical_bytes():
    import pandas as pd

    n = 50
    rng = np.random.default_rng(3)
    strings = [None if i % 9 == 0 else SPECIAL_STRINGS[i % 6].decode("utf-8", "replace") for i in range(n)]
    x = rng.normal(size=n)
    x[::5] = np.nan
    data = {"x": x, "n": rng.integers(-3, 4, n), "flag": rng.random(n) < 0.5, "s": strings,
            "t": [s or "q" for s in strings]}
    base = SPEC.transform({**data, "s": np.array(strings, dtype=object), "t": np.array(data["t"], dtype=object)})
    df = pd.DataFrame(data)
    table = pa.Table.from_pandas(df, preserve_index=False)
    big = pa.concat_tables([table, table]).combine_chunks()
    variants = {
        "pandas": df,
        "pandas-nullable": df.astype({"n": "Int64", "flag": "boolean", "s": "string", "x": "Float64"}),
        "arrow-table": table,
        "arrow-batch": table.to_batches()[0],
        "arrow-sliced": big.slice(n, n),  # buffers with a non-zero offset
        "arrow-large": table.set_column(3, "s", table.column("s").cast(pa.large_string())),
        "arrow-dictionary": table.set_column(3, "s", table.column("s").dictionary_encode()),
        "arrow-chunked": pa.Table.from_batches(table.slice(0, 20).to_batches() + table.slice(20).to_batches()),
        "lists": {k: list(v) for k, v in data.items()},
    }
    for name, variant in variants.items():
        assert_bytes_equal(SPEC.transform(variant), base), name


def test_arrow_style_string_tuples_and_masked_numbers():
    offsets = np.array([0, 2, 2, 3], dtype=np.int32)
    data = np.frombuffer(b"USa", dtype=np.uint8)
    valid = np.array([True, True, False])
    cols = {"x": np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False]),
            "n": (np.array([1, 2, 3]), np.array([1, 0, 1], dtype=bool)), "flag": np.array([True, False, True]),
            "s": (offsets, data, valid), "t": (offsets.astype(np.int64), data)}
    rows = {"x": [1.0, None, 3.0], "n": [1, None, 3], "flag": [True, False, True], "s": [b"US", b"", None],
            "t": [b"US", b"", b"a"]}
    assert_bytes_equal(SPEC.transform(cols), reference(SPEC, rows))


def test_transform_into_preallocated_and_empty_batch():
    rows = {"x": [1.5], "n": [2], "flag": [False], "s": [b"DE"], "t": [b""]}
    outs = SPEC.allocate(1)
    for v in outs.values():
        v.fill(123)
    SPEC.transform_into(to_columns(rows), outs)
    assert_bytes_equal(outs, reference(SPEC, rows))
    empty = SPEC.transform(to_columns({k: [] for k in rows}))
    assert all(v.shape[0] == 0 for v in empty.values())


@pytest.mark.parametrize("bad, column, message", [
    ({"x": np.array(["a"], dtype=object)}, "x", "expected numbers"),
    ({"n": np.array([1.5])}, "n", "non-integral"),
    ({"flag": np.array([2])}, "flag", "booleans"),
    ({"s": np.array([1.0])}, "s", "expected strings"),
    ({"s": np.array([b"a", b"b"], dtype=object)}, "s", "rows"),
    ({"s": (np.array([0, 5], dtype=np.int32), np.zeros(2, np.uint8))}, "s", "offsets"),
    ({"s": (np.array([0, 2, 1], dtype=np.int64)[:2], np.zeros(2, np.uint8))}, "s", None),
    ({"s": (np.array([2, 1], dtype=np.int64), np.zeros(2, np.uint8))}, "s", "offsets"),
    ({"s": np.array([3], dtype=object)}, "s", "not str or bytes"),
    ({"x": (np.array([1.0]), np.array([True, False]))}, "x", "validity mask"),
    ({"t": None}, "t", "unsupported"),
])
def test_bad_inputs_name_the_column(bad, column, message):
    good = to_columns({"x": [1.0], "n": [1], "flag": [True], "s": [b"a"], "t": [b"b"]})
    cols = {**good, **bad}
    if message is None:  # a well-formed variant must pass
        SPEC.transform(cols)
        return
    with pytest.raises(FeatureInputError) as info:
        SPEC.transform(cols)
    assert info.value.column == column and message in str(info.value)


def test_missing_column_and_bad_outputs():
    cols = to_columns({"x": [1.0], "n": [1], "flag": [True], "s": [b"a"], "t": [b"b"]})
    del cols["t"]
    with pytest.raises(FeatureInputError, match="'t'"):
        SPEC.transform(cols)
    cols = to_columns({"x": [1.0], "n": [1], "flag": [True], "s": [b"a"], "t": [b"b"]})
    outs = SPEC.allocate(1)
    with pytest.raises(ValueError, match="shape"):
        SPEC.transform_into(cols, {**outs, "dense": np.empty((2, outs["dense"].shape[1]), np.float32)})
    with pytest.raises(ValueError, match="float32"):
        SPEC.transform_into(cols, {**outs, "dense": outs["dense"].astype(np.float64)})
    with pytest.raises(ValueError, match="contiguous"):
        SPEC.transform_into(cols, {**outs, "dense": np.empty((1, 2 * outs["dense"].shape[1]), np.float32)[:, ::2]})


def test_kernel_rejects_plans_that_leave_bytes_unwritten():
    doc = SPEC.to_dict()
    doc["outputs"][0]["shape"][1] += 1
    doc["sha256"] = content_hash(doc)
    with pytest.raises(SpecError, match="exactly once"):
        FeatureSpec(doc)


def test_other_output_dtypes():
    spec = make_spec({"x": "float", "s": "string"}, [
        {"name": "x", "kind": "numeric", "steps": [{"op": "log1p"}], "output": "d64"},
        {"name": "s", "kind": "hash", "encode": "index", "buckets": 9, "seed": 2, "output": "i32"},
        {"name": "s_oh", "inputs": ["s"], "kind": "hash", "encode": "onehot", "buckets": 3, "seed": 2,
         "output": "i32"},
    ], outputs={"d64": "float64", "i32": "int32"})
    rows = {"x": [0.5, None, 1e-10], "s": [b"a", None, b"zz"]}
    out = spec.transform({"x": np.array([0.5, np.nan, 1e-10]), "s": pa.array(rows["s"])})
    assert out["d64"].dtype == np.float64 and out["i32"].dtype == np.int32
    assert_bytes_equal(out, reference(spec, rows))


def test_python_object_strings():
    import pandas as pd

    objs = np.array(["US", b"US", bytearray(b"US"), "\u00e9", None, float("nan"), pd.NA, ""], dtype=object)
    offsets, data, valid = fk.strings_to_buffers(objs)
    assert data.tobytes() == b"USUSUS\xc3\xa9" and offsets.tolist() == [0, 2, 4, 6, 8, 8, 8, 8, 8]
    assert valid.tolist() == [True] * 4 + [False] * 3 + [True]
    assert fk.strings_to_buffers(np.array(["a"], dtype=object))[2] is None
    good = to_columns({"x": [1.0], "n": [1], "flag": [True], "s": [b"a"], "t": [b"b"]})
    with pytest.raises(FeatureInputError, match="'s'"):
        SPEC.transform({**good, "s": np.array(["\ud800"], dtype=object)})  # lone surrogate: not UTF-8


def test_arrow_integer_widths_and_nulls_are_exact():
    spec = make_spec({"n": "int", "x": "float"}, [
        {"name": "n", "kind": "passthrough", "encode": "index", "fill": -9},
        {"name": "x", "kind": "numeric", "steps": []},
    ])
    out = spec.transform({"n": pa.array([2**62 + 1, None, 3], pa.uint64()),
                          "x": pa.array([1.5, None, -2.0], pa.float32())})
    assert out["ids"][:, 0].tolist() == [2**62 + 1, -9, 3]
    assert out["dense"][:, 0].tobytes() == np.array([1.5, np.nan, -2.0], np.float32).tobytes()
    with pytest.raises(FeatureInputError, match="'n'"):
        spec.transform({"n": pa.array([2**64 - 1], pa.uint64()), "x": pa.array([1.0])})
