"""The frozen spec: exact float storage, content hash, fitting rules, dtype inference and config errors."""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from skewless.native.fit import ConfigError, fit, infer_dtype
from skewless.native.spec import FeatureSpec, SpecError, canonical_json, content_hash, decode_float

HEX_FLOAT = re.compile(r"^-?(0x[0-9a-f]\.[0-9a-f]+p[+-]\d+|inf|nan)$")


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def _bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 2000
    x = rng.normal(3, 2, n)
    x[rng.random(n) < 0.1] = np.nan
    x[:3] = [np.inf, -np.inf, 1e-320]
    return pd.DataFrame({
        "x": x, "amount": rng.lognormal(3, 1, n), "const": np.full(n, 4.5),
        "country": rng.choice(["US", "DE", "FR", "JP", "BR"], n, p=[0.4, 0.3, 0.2, 0.08, 0.02]),
        "n": rng.integers(0, 6, n), "flag": rng.random(n) < 0.3,
    })


CONFIG = {
    "features": [
        {"name": "x", "impute": "mean", "scale": "standard", "missing_indicator": True},
        {"name": "x_med", "input": "x", "impute": "median", "clip": [0, None], "scale": "minmax"},
        {"name": "amount", "steps": [{"impute": {"constant": 1.5}}, "log1p", "standardize"]},
        {"name": "amount_q", "input": "amount", "bucketize": {"quantiles": 5}, "encode": "onehot"},
        {"name": "const", "scale": "standard"},
        {"name": "country", "kind": "vocabulary", "top_k": 3, "oov_buckets": 2, "seed": 9},
        {"name": "country_rare", "input": "country", "kind": "vocabulary", "min_frequency": 100, "encode": "onehot"},
        {"name": "n", "kind": "vocabulary", "vocabulary": [5, 0, 2], "oov_buckets": 0},
        {"name": "n_pass", "input": "n", "kind": "passthrough", "output": "ids"},
        {"name": "cxn", "kind": "cross", "inputs": ["country", "n", "flag"], "buckets": 50},
        {"name": "flag"},
    ],
}


@pytest.fixture(scope="module")
def spec(train) -> FeatureSpec:
    return fit(CONFIG, train)


def test_every_float_is_a_canonical_hex_string(spec):
    doc = spec.to_dict()
    floats = [s for s in _strings(doc) if HEX_FLOAT.match(s)]
    assert len(floats) > 30
    for s in floats:
        assert float.fromhex(s).hex() == s
    parsed = json.loads(spec.to_json(), parse_float=lambda t: pytest.fail(f"decimal float {t} in the spec"))
    assert parsed == doc


def test_json_round_trip_is_exact(spec, train):
    text = spec.to_json()
    again = FeatureSpec.from_json(text)
    assert again.to_json() == text and again.sha256 == spec.sha256
    assert canonical_json(again.to_dict()) == canonical_json(spec.to_dict())
    a, b = spec.transform(train), again.transform(train)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_fitted_constants_are_the_exact_doubles(spec, train):
    feats = {f["name"]: f for f in spec.features}
    x = train["x"].to_numpy()
    finite = x[np.isfinite(x)]
    mean = math.fsum(finite.tolist()) / finite.size
    assert _bits(decode_float(feats["x"]["steps"][0]["value"])) == _bits(mean)
    assert feats["x_med"]["steps"][0]["value"] == float(np.median(finite)).hex()
    imputed = np.where(np.isnan(x), mean, x)
    f2 = imputed[np.isfinite(imputed)]
    m2 = math.fsum(f2.tolist()) / f2.size
    std = math.sqrt(math.fsum(((f2 - m2) ** 2).tolist()) / f2.size)
    assert feats["x"]["steps"][1] == {"op": "standardize", "mean": m2.hex(), "scale": std.hex()}
    assert feats["const"]["steps"] == [{"op": "standardize", "mean": (4.5).hex(), "scale": (1.0).hex()}]
    assert feats["x_med"]["steps"][1]["op"] == "clip" and feats["x_med"]["steps"][1]["max"] == "inf"
    b = [decode_float(v) for v in feats["amount_q"]["bucketize"]["boundaries"]]
    expected = np.unique(np.quantile(train["amount"].to_numpy(), [0.2, 0.4, 0.6, 0.8]))
    assert [_bits(v) for v in b] == [_bits(v) for v in expected.tolist()]


def test_vocabulary_order_threshold_and_oov(spec, train):
    feats = {f["name"]: f for f in spec.features}
    assert feats["country"]["vocabulary"] == ["US", "DE", "FR"]  # by descending count
    assert feats["country"]["vocabulary_encoding"] == "utf-8"
    counts = train["country"].value_counts()
    assert feats["country_rare"]["vocabulary"] == [c for c in ["US", "DE", "FR", "JP", "BR"] if counts[c] >= 100]
    assert feats["n"]["vocabulary"] == ["5", "0", "2"] and feats["n"]["vocabulary_encoding"] == "int64"
    out = spec.transform({**{c: train[c].to_numpy() for c in train}, "country": np.array(
        ["US"] * 1999 + ["XX"], dtype=object)})
    ids = out["ids"]
    col = spec.column_names("ids").index("country")
    assert ids[0, col] == 1 and ids[-1, col] in (4, 5)


def test_ties_in_counts_break_by_value():
    data = {"s": np.array(["b", "a", "c", "a", "b", "c", "d"], dtype=object)}
    spec = fit({"features": [{"name": "s", "top_k": 2}]}, data)
    assert spec.features[0]["vocabulary"] == ["a", "b"]


def test_same_data_same_hash_and_hash_detects_tampering(spec, train):
    again = fit(CONFIG, train)
    assert again.sha256 == spec.sha256
    assert content_hash(spec.to_dict()) == spec.sha256
    doc = spec.to_dict()
    doc["features"][0]["steps"][0]["value"] = (1.0).hex()
    with pytest.raises(SpecError, match="hash mismatch"):
        FeatureSpec(doc)
    FeatureSpec(doc, verify_hash=False)  # an explicit opt-out still loads


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format_version=2), "format_version"),
    (lambda d: d.update(format="other"), "not a skewless"),
    (lambda d: d["features"][0]["steps"][0].update(value=1.5), "hex strings"),
    (lambda d: d["features"][0]["steps"][0].update(value="0x1.8p"), "not a hex float"),
    (lambda d: d["features"][0].update(kind="magic"), "unknown kind"),
    (lambda d: d["features"][0].update(inputs=["nope"]), "declared raw inputs"),
    (lambda d: d["inputs"][0].update(shape=[3]), "shape"),
    (lambda d: d["features"][0]["steps"].append({"op": "impute", "value": "0x0p+0"}), "first step"),
])
def test_malformed_specs_are_rejected(spec, mutate, message):
    doc = spec.to_dict()
    mutate(doc)
    doc["sha256"] = content_hash(doc)
    with pytest.raises(SpecError, match=message):
        FeatureSpec(doc)


def test_spec_describes_inputs_outputs_and_columns(spec):
    assert [(t.name, t.dtype, t.triton_dtype) for t in spec.inputs][:3] == [
        ("x", "float", "FP64"), ("amount", "float", "FP64"), ("const", "float", "FP64")]
    assert {t.name: t.triton_dtype for t in spec.inputs}["country"] == "BYTES"
    dense = spec.column_names("dense")
    assert dense[:2] == ["x", "x_missing"] and len(dense) == spec.outputs[0].width
    assert "country_rare=<missing>" in dense and "amount_q=<missing>" in dense
    assert len(spec.column_names("ids")) == spec.outputs[1].width
    assert spec.outputs[1].dtype == "int64"


def test_reference_statistics(spec, train):
    feats = {f["name"]: f for f in spec.features}
    ref = feats["x"]["reference"]
    assert ref["rows"] == len(train) and sum(ref["histogram"]["counts"]) + ref["nan"] == len(train)
    assert len(ref["histogram"]["counts"]) == len(ref["histogram"]["edges"]) + 1
    top = feats["country"]["reference"]["top"]
    assert top[0][0] == 1 and top[0][1] == (train["country"] == "US").sum()
    inputs = {i["name"]: i for i in spec.to_dict()["inputs"]}
    assert inputs["x"]["reference"]["missing"] == int(np.isnan(train["x"]).sum())


def test_dtype_inference():
    assert infer_dtype(np.array([1.0])) == "float"
    assert infer_dtype(np.array([1], dtype=np.int32)) == "int"
    assert infer_dtype(np.array([True])) == "bool"
    assert infer_dtype(np.array(["a"], dtype=object)) == "string"
    assert infer_dtype(pd.Series([1, None], dtype="Int64")) == "int"
    assert infer_dtype(pd.Series(["a"], dtype="category")) == "string"
    assert infer_dtype(pa.array([b"\xff"])) == "string"
    assert infer_dtype(pa.array(["a"]).dictionary_encode()) == "string"
    assert infer_dtype(pa.array([1], pa.uint8())) == "int"


def test_yaml_config_and_explicit_outputs():
    yaml_text = """
outputs: {features: float64, tokens: int32}
inputs: {code: string}
features:
  - {name: v, clip: [-1, 1], output: features}
  - {name: code, kind: hash, buckets: 10, output: tokens}
"""
    spec = fit(yaml_text, {"v": np.array([-3.0, 0.5, 3.0]), "code": np.array(["a", "b", None], dtype=object)})
    out = spec.transform({"v": np.array([-3.0, 0.5]), "code": np.array(["a", None], dtype=object)})
    assert out["features"].dtype == np.float64 and out["features"][:, 0].tolist() == [-1.0, 0.5]
    assert out["tokens"].dtype == np.int32 and out["tokens"][1, 0] == 0


@pytest.mark.parametrize("features, message", [
    ([{"name": "x", "impute": "mode"}], "expected a number"),
    ([{"name": "x", "whatever": 1}], "unknown key 'whatever'"),
    ([{"name": "x", "kind": "hash", "buckets": 3}], "float inputs cannot be categories"),
    ([{"name": "s", "scale": "standard"}], "unknown keys"),
    ([{"name": "s", "kind": "numeric"}], "not numbers"),
    ([{"name": "x", "steps": ["log1p", {"impute": 0}]}], "first step"),
    ([{"name": "x"}, {"name": "x"}], "duplicate"),
    ([{"name": "x", "missing_indicator": True}, {"name": "x_missing", "input": "x"}], "duplicate"),
    ([{"name": "nope"}], "not in the data"),
    ([{"name": "c", "kind": "cross", "inputs": ["s"], "buckets": 3}], "two or more"),
    ([{"name": "x", "bucketize": {"boundaries": [2, 1]}}], "increasing"),
    ([{"name": "x", "clip": [3, 1]}], "min <= max"),
    ([{"name": "s", "kind": "hash"}], "buckets"),
    ([{"name": "x", "encode": "onehot"}], None),
    ([], "non-empty"),
])
def test_config_errors(features, message):
    data = {"x": np.array([1.0, 2.0]), "s": np.array(["a", "b"], dtype=object)}
    if message is None:  # one-hot of a plain number is meaningless
        with pytest.raises(ConfigError):
            fit({"features": features}, data)
        return
    with pytest.raises(ConfigError, match=message):
        fit({"features": features}, data)


def test_non_utf8_vocabulary_is_base64_and_round_trips():
    data = {"s": pa.array([b"\xff", b"\xff", b"ok", b""], pa.binary())}
    spec = fit({"features": [{"name": "s", "encode": "onehot", "oov_buckets": 0}]}, data)
    feat = spec.features[0]
    assert feat["vocabulary_encoding"] == "base64"
    again = FeatureSpec.from_json(spec.to_json())
    out = again.transform({"s": pa.array([b"\xff", b"", b"ok", b"zz", None], pa.binary())})["dense"]
    assert out.argmax(axis=1).tolist() == [1, 2, 3, 0, 0]  # \xff, "", ok by count then bytes; unseen -> 0


def test_json_text_is_valid_for_strict_readers(spec):
    doc = json.loads(spec.to_json(), parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert doc["sha256"] == spec.sha256
