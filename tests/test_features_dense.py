"""Every feature kind into one float32 tensor (one-input models), checked against a plain-NumPy reference.

The reference hashes with scikit-learn's MurmurHash3 (an implementation independent of ours) and builds
vocabularies with collections.Counter, so a wrong index, a wrong missing/unseen slot or a wrong one-hot
column fails here. Semantics under test (native/spec.py): index 0 is the missing slot (and the unseen slot
of a vocabulary without OOV buckets); vocabulary entries are 1..V by descending count; unseen values hash
into V+1..V+oov; hash and cross buckets are 1 + murmur3 % buckets; bucketized numbers are
1 + #boundaries <= x. ``encode: index`` writes that number as a float (like scikit-learn's OrdinalEncoder,
with 0 for missing), ``encode: onehot`` a 1 in that column of the block.
"""

from __future__ import annotations

import struct
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from sklearn.utils import murmurhash3_32

from skewless.native.fit import EXACT_INDEX, MAX_ONEHOT_WIDTH, ConfigError, fit

CONFIG = {
    "outputs": {"dense": "float32"},
    "features": [
        {"name": "country", "kind": "vocabulary", "top_k": 3, "oov_buckets": 2, "seed": 5, "encode": "onehot"},
        {"name": "country_idx", "input": "country", "kind": "vocabulary", "top_k": 3, "oov_buckets": 0},
        {"name": "merchant", "kind": "hash", "buckets": 16, "seed": 3, "encode": "onehot"},
        {"name": "merchant_idx", "input": "merchant", "kind": "hash", "buckets": 16, "seed": 3},
        {"name": "user", "kind": "vocabulary", "top_k": 4, "oov_buckets": 3, "seed": 1, "encode": "index"},
        {"name": "country_x_weekend", "kind": "cross", "inputs": ["country", "weekend"], "buckets": 8,
         "seed": 11, "encode": "onehot"},
        {"name": "amount_b", "input": "amount", "bucketize": {"boundaries": [10.0, 100.0]}, "encode": "onehot"},
        {"name": "amount_bi", "input": "amount", "bucketize": {"boundaries": [10.0, 100.0]}},
        {"name": "amount", "impute": 0.0, "missing_indicator": True},
    ],
}
COUNTRIES = ["US"] * 50 + ["DE"] * 30 + ["FR"] * 20 + ["JP"] * 7 + ["BR"] * 3 + [None] * 10
USERS = [7] * 40 + [-2] * 30 + [2**40] * 20 + [0] * 10 + [3] * 5 + [None] * 15


def _table(rng: np.random.Generator, n: int, unseen: bool) -> pa.Table:
    country = [COUNTRIES[i] for i in rng.integers(0, len(COUNTRIES), n)]
    user = [USERS[i] for i in rng.integers(0, len(USERS), n)]
    merchant = [None if rng.random() < 0.1 else f"m{int(k)}" for k in rng.integers(0, 40, n)]
    weekend = [None if rng.random() < 0.1 else bool(rng.random() < 0.3) for _ in range(n)]
    amount = rng.lognormal(3, 1.5, n)
    amount[rng.random(n) < 0.1] = np.nan
    if unseen:  # values the fit never saw, and a row missing everywhere
        country[:3] = ["ZZ", "", "ünï"]
        user[:3] = [123456789, -1, 2**62]
        merchant[:3] = ["brand-new", "", "m999"]
        for col in (country, user, merchant, weekend):
            col[3] = None
        amount[3] = np.nan
        amount[4:7] = [10.0, 100.0, -np.inf]  # boundaries themselves go right; -inf is a value, not missing
    return pa.table({"country": pa.array(country, pa.string()), "user": pa.array(user, pa.int64()),
                     "merchant": pa.array(merchant, pa.string()), "weekend": pa.array(weekend, pa.bool_()),
                     "amount": pa.array(amount, pa.float64(), from_pandas=False)})


def _mm(key: bytes, seed: int) -> int:
    return murmurhash3_32(key, seed=seed, positive=True)


def _key(v) -> bytes:
    if isinstance(v, bool):
        return bytes([int(v)])
    if isinstance(v, int):
        return struct.pack("<q", v)
    return v.encode("utf-8")


def _top(values: list, k: int) -> list:
    counts = Counter(v for v in values if v is not None)
    ranked = sorted(counts, key=lambda v: (-counts[v], _key(v)))
    return ranked[:k]


def _vocab_index(values: list, vocab: list, oov: int, seed: int) -> np.ndarray:
    pos = {v: i for i, v in enumerate(vocab)}
    out = []
    for v in values:
        if v is None:
            out.append(0)
        elif v in pos:
            out.append(1 + pos[v])
        else:
            out.append(1 + len(vocab) + _mm(_key(v), seed) % oov if oov else 0)
    return np.array(out)


def _onehot(idx: np.ndarray, width: int) -> np.ndarray:
    block = np.zeros((idx.size, width), dtype=np.float32)
    block[np.arange(idx.size), idx] = 1
    return block


def _reference(train: pa.Table, data: pa.Table) -> np.ndarray:
    c_train, u_train = train.column("country").to_pylist(), train.column("user").to_pylist()
    country, user = data.column("country").to_pylist(), data.column("user").to_pylist()
    merchant, weekend = data.column("merchant").to_pylist(), data.column("weekend").to_pylist()
    amount = data.column("amount").to_numpy(zero_copy_only=False)
    top_c = _top(c_train, 3)
    merchant_idx = np.array([0 if m is None else 1 + _mm(_key(m), 3) % 16 for m in merchant])
    cross = []
    for c, w in zip(country, weekend, strict=True):
        if c is None or w is None:
            cross.append(0)
        else:
            mix = struct.pack("<II", _mm(_key(c), 11), _mm(_key(w), 11))
            cross.append(1 + _mm(mix, 11) % 8)
    bucket = np.where(np.isnan(amount), 0, 1 + np.searchsorted([10.0, 100.0], amount, side="right"))
    blocks = [
        _onehot(_vocab_index(country, top_c, 2, 5), 1 + 3 + 2),
        _vocab_index(country, top_c, 0, 0)[:, None],
        _onehot(merchant_idx, 17),
        merchant_idx[:, None],
        _vocab_index(user, _top(u_train, 4), 3, 1)[:, None],
        _onehot(np.array(cross), 9),
        _onehot(bucket, 4),
        bucket[:, None],
        np.where(np.isnan(amount), 0.0, amount)[:, None],
        np.isnan(amount)[:, None],
    ]
    return np.hstack([b.astype(np.float32) for b in blocks])


@pytest.fixture(scope="module")
def fitted():
    train = _table(np.random.default_rng(1), 600, unseen=False)
    return train, fit(CONFIG, train)


def test_only_a_float_output_holds_every_kind(fitted):
    _, spec = fitted
    assert [(t.name, t.dtype, t.width) for t in spec.outputs] == [("dense", "float32", 6 + 1 + 17 + 1 + 1 + 9 + 4
                                                                                          + 1 + 1 + 1)]
    assert {f["output"] for f in spec.features} == {"dense"}


@pytest.mark.parametrize("rows", [1, 7, 257])
def test_dense_encodings_match_numpy_reference(fitted, rows):
    train, spec = fitted
    data = _table(np.random.default_rng(rows), rows + 8, unseen=True)
    got = spec.transform(data)["dense"]
    want = _reference(train, data)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_missing_and_unseen_slots(fitted):
    _, spec = fitted
    data = _table(np.random.default_rng(3), 10, unseen=True)
    dense = spec.transform(data)["dense"]
    names = spec.column_names("dense")
    col = {n: i for i, n in enumerate(names)}
    # row 3 is missing everywhere: every categorical goes to its missing slot (index 0 / first one-hot column)
    for name in ("country=<missing>", "merchant=<missing>", "country_x_weekend=<missing>", "amount_b=<missing>"):
        assert dense[3, col[name]] == 1.0, name
    for name in ("country_idx", "merchant_idx", "user", "amount_bi"):
        assert dense[3, col[name]] == 0.0, name
    # unseen countries: OOV buckets in the one-hot, the missing/unknown slot 0 without OOV buckets
    assert dense[0, col["country=<oov0>"]] + dense[0, col["country=<oov1>"]] == 1.0
    assert dense[0, col["country_idx"]] == 0.0
    assert dense[0, col["user"]] >= 5.0  # 1..4 are the vocabulary, 5..7 the OOV buckets


def test_wide_onehot_is_refused_with_the_limit_named():
    data = {"s": np.array(["a", "b"], dtype=object)}
    with pytest.raises(ConfigError, match=f"one-hot of 100001 columns is wider than the limit of "
                                          f"{MAX_ONEHOT_WIDTH}.*encode: index"):
        fit({"outputs": {"dense": "float32"},
             "features": [{"name": "s", "kind": "hash", "buckets": 100_000, "encode": "onehot"}]}, data)
    spec = fit({"outputs": {"dense": "float32"},
                "features": [{"name": "s", "kind": "hash", "buckets": MAX_ONEHOT_WIDTH - 1, "encode": "onehot"}]},
               data)
    assert spec.outputs[0].width == MAX_ONEHOT_WIDTH


def test_index_beyond_float32_precision_is_refused():
    data = {"s": np.array(["a", "b"], dtype=object)}
    feats = [{"name": "s", "kind": "hash", "buckets": EXACT_INDEX["float32"] + 1}]
    with pytest.raises(ConfigError, match="do not fit exactly in float32"):
        fit({"outputs": {"dense": "float32"}, "features": feats}, data)
    fit({"outputs": {"dense": "float64"}, "features": feats}, data)  # exact in double
    ok = [{"name": "s", "kind": "hash", "buckets": EXACT_INDEX["float32"]}]
    fit({"outputs": {"dense": "float32"}, "features": ok}, data)


@pytest.mark.parametrize("feature", [
    {"name": "s", "kind": "hash", "buckets": 4, "encode": "value"},
    {"name": "s", "kind": "vocabulary", "encode": "value"},
    {"name": "x", "bucketize": {"boundaries": [1.0]}, "encode": "value"},
])
def test_value_encoding_of_a_category_says_what_to_use(feature):
    data = {"s": np.array(["a", "b"], dtype=object), "x": np.array([0.5, 2.0])}
    with pytest.raises(ConfigError, match="no value encoding; use encode: index .* or encode: onehot"):
        fit({"outputs": {"dense": "float32"}, "features": [feature]}, data)
