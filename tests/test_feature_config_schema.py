"""The feature config's JSON Schema: shipped configs validate and fit; wrong configs get short key-path errors.

Also the fit-side rough edges: values near DBL_MAX, signalling NaNs, row-count mismatches.
"""

from __future__ import annotations

import math
import struct
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from jsonschema import Draft202012Validator

from skewless.examples.generate import CHURN_FEATURE_CONFIG, churn_dataset
from skewless.native.config_schema import config_errors, schema, schema_text
from skewless.native.feature_kernel import FeatureInputError
from skewless.native.fit import ConfigError, fit, load_config
from skewless.native.spec import FeatureSpec

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "examples" / "configs").glob("*.yaml"))
DBL_MAX = np.finfo(np.float64).max


def transactions(n: int = 3000, seed: int = 7) -> pa.Table:
    """A small fraud-like table with every column the example configs read, gaps in most of them."""
    rng = np.random.default_rng(seed)

    def gaps(values: list, share: float) -> list:
        return [None if g else v for v, g in zip(values, rng.random(n) < share, strict=True)]

    amount = np.round(rng.lognormal(3.5, 1.2, n), 2)
    return pa.table({
        "amount": pa.array(gaps(amount.tolist(), 0.05), pa.float64()),
        "merchant_category": pa.array(rng.choice(["grocery", "fuel", "travel", "online", "rare"], n,
                                                 p=[0.4, 0.2, 0.15, 0.2499, 0.0001]).tolist()),
        "country": pa.array(gaps(rng.choice(["US", "GB", "DE", "FR", "BR", "IN"], n).tolist(), 0.03)),
        "hour": pa.array(rng.integers(0, 24, n), pa.int64()),
        "user_id": pa.array([f"user-{i}" for i in rng.integers(0, 800, n)]),
        "device": pa.array(gaps(rng.choice(["ios", "android", "web"], n).tolist(), 0.02)),
        "is_online": pa.array(rng.random(n) < 0.4),
        "signal_1": pa.array(gaps(rng.normal(0, 1, n).tolist(), 0.1), pa.float64()),
        "signal_2": pa.array(gaps(rng.normal(5, 2, n).tolist(), 0.2), pa.float64()),
        "signal_3": pa.array(gaps(rng.normal(0, 3, n).tolist(), 0.1), pa.float64()),
        "signal_4": pa.array(gaps(rng.standard_t(3, n).tolist(), 0.1), pa.float64()),
        "account_age_days": pa.array(gaps(rng.integers(0, 3650, n).tolist(), 0.05), pa.int64()),
    })


def test_the_schema_is_valid_draft_2020_12():
    Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_encode_options_live_in_one_place():
    """Every kind takes its encode values from $defs/encode, so adding an encoding is one edit."""
    def enums(node):
        if isinstance(node, dict):
            if "onehot" in node.get("enum", []):
                yield node
            for v in node.values():
                yield from enums(v)
        elif isinstance(node, list):
            for v in node:
                yield from enums(v)

    assert list(enums(schema())) == [schema()["$defs"]["encode"]]
    assert {"value", "index", "onehot"} <= set(schema()["$defs"]["encode"]["enum"])
    assert schema_text().count('"#/$defs/encode"') == 1  # referenced once, by the keys every kind shares


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_validates_and_fits(path):
    config = load_config(path)
    assert config_errors(config) == []
    data = churn_dataset(500) if path.name == "churn.yaml" else transactions()
    spec = fit(path, data)
    again = fit(path, data)
    assert spec.sha256 == again.sha256  # deterministic
    rows = data.num_rows if isinstance(data, pa.Table) else len(data["senior"])
    out = FeatureSpec.from_json(spec.to_json()).transform(data)
    assert {k: v.shape for k, v in out.items()} == {t.name: (rows, t.width) for t in spec.outputs}


def test_configs_shown_in_the_docs_and_the_help_validate():
    from skewless.native.cli import FIT_EPILOG

    page = (CONFIGS[0].parent.parent.parent / "docs" / "features" / "spec.md").read_text()
    blocks = [b.split("```")[0] for b in page.split("```yaml\n")[1:]]
    assert blocks and all(config_errors(yaml.safe_load(b)) == [] for b in blocks)
    shown = FIT_EPILOG.split("config example (YAML):\n")[1].split("\n\n")[0]
    assert config_errors(yaml.safe_load(shown)) == []


def test_example_configs_exist():
    assert {p.name for p in CONFIGS} >= {"fraud.yaml", "churn.yaml", "raw_passthrough.yaml"}


def test_churn_yaml_is_the_bundled_models_config():
    assert yaml.safe_load((CONFIGS[0].parent / "churn.yaml").read_text()) == CHURN_FEATURE_CONFIG
    assert config_errors(CHURN_FEATURE_CONFIG) == []


def test_fit_does_not_depend_on_the_row_order():
    data = transactions()
    shuffled = data.take(np.random.default_rng(1).permutation(data.num_rows))
    assert fit(CONFIGS[0].parent / "fraud.yaml", shuffled).sha256 == fit(CONFIGS[0].parent / "fraud.yaml", data).sha256


def test_fraud_config_handles_nulls_in_every_column_type():
    data = transactions()
    spec = fit(CONFIGS[0].parent / "fraud.yaml", data)
    row = {name: pa.array([None], data.schema.field(name).type) for name in spec.input_names}
    out = spec.transform(row)
    dense = dict(zip(spec.column_names("dense"), out["dense"][0].tolist(), strict=True))
    assert dense["amount_missing"] == 1.0 and dense["country=<missing>"] == 1.0
    assert math.isnan(dense["signal_4"])  # no impute: a gap stays NaN
    assert out["ids"][0].tolist() == [0, 0]  # hashed user and the cross: index 0 = missing


@pytest.mark.parametrize("config, messages", [
    ({"features": [{"name": "x", "scale": "stnadard"}]}, ["features[0].scale: expected 'standard' or 'minmax'"]),
    ({"features": [{"name": "x"}, {"name": "y"}, {"name": "z"}, {"name": "w", "scale": 1}]},
     ["features[3].scale: expected 'standard' or 'minmax'"]),
    ({"features": [{"name": "x", "sacle": "standard"}]}, ["features[0]: unknown key 'sacle' (did you mean 'scale'?)"]),
    ({"features": [{"name": "x", "whatever": 1}]}, ["features[0]: unknown key 'whatever'"]),
    ({"features": [{"name": "s", "kind": "hash", "buckets": 8, "top_k": 3}]}, ["features[0]: unknown key 'top_k'"]),
    ({"features": [{"name": "x", "impute": "mode"}]},
     ["features[0].impute: expected a number, 'mean', 'median' or {constant: <number>}"]),
    ({"features": [{"name": "x", "impute": {"constant": "zero"}}]}, ["features[0].impute.constant: expected a number"]),
    ({"features": [{"name": "x", "steps": ["log1p", {"impute": "mode"}]}]},
     ["features[0].steps[1].impute: expected a number, 'mean', 'median' or {constant: <number>}"]),
    ({"features": [{"name": "x", "steps": ["log2"]}]},
     ["features[0].steps[0]: expected 'log1p', 'standardize', 'minmax', {impute: ...}, {clip: [min, max]}, "
      "{log1p: true}, {standardize: true} or {minmax: true}"]),
    ({"features": [{"name": "x", "clip": [1]}]},
     ["features[0].clip: expected [min, max] or {min: <number>, max: <number>}"]),
    ({"features": [{"name": "x", "clip": {"min": 0, "max": "big"}}]}, ["features[0].clip.max: expected a number or null"]),
    ({"features": [{"name": "x", "log1p": "yes"}]}, ["features[0].log1p: expected true or false"]),
    ({"features": [{"name": "x", "bucketize": {"quantile": 4}}]},
     ["features[0].bucketize: expected a number of quantiles >= 1, a list of boundaries, {quantiles: <n>}, "
      "{boundaries: [...]} or null"]),
    ({"features": [{"name": "x", "bucketize": {"quantiles": 0}}]},
     ["features[0].bucketize.quantiles: expected an integer >= 1"]),
    ({"features": [{"name": "s", "kind": "hash"}]}, ["features[0]: missing key 'buckets'"]),
    ({"features": [{"name": "s", "kind": "hash", "buckets": 0, "seed": -1}]},
     ["features[0].buckets: expected an integer from 1 to 4294967295",
      "features[0].seed: expected an integer from 0 to 4294967295"]),
    ({"features": [{"name": "c", "kind": "cross", "inputs": ["s"], "buckets": 3}]},
     ["features[0].inputs: expected a list of two or more input names"]),
    ({"features": [{"name": "c", "kind": "cross", "inputs": ["a", "b"], "buckets": 3, "input": "a"}]},
     ["features[0]: unknown key 'input' (did you mean 'inputs'?)"]),
    ({"features": [{"name": "x", "kind": "numbr"}]},
     ["features[0].kind: expected 'numeric', 'vocabulary', 'hash', 'cross', 'passthrough', 'missing_indicator', "
      "'aggregate' or 'bool'"]),
    ({"features": [{"name": "x", "encode": "embedding"}]},
     ["features[0].encode: expected 'value', 'index' or 'onehot'"]),
    ({"features": [{"kind": "hash", "buckets": 3}]}, ["features[0]: missing key 'name'"]),
    ({"features": ["x"]}, ["features[0]: expected a feature mapping"]),
    ({"features": []}, ["features: expected a non-empty list of features"]),
    ([{"name": "x"}], ["the config must be a mapping with a 'features' list"]),
    ({"features": [{"name": 5}]}, ["features[0].name: expected a non-empty string"]),
    ({"features": [{"name": "x", "steps": [{"impute": 0, "clip": [0, 1]}]}]},
     ["features[0].steps[0]: expected 'log1p', 'standardize', 'minmax', {impute: ...}, {clip: [min, max]}, "
      "{log1p: true}, {standardize: true} or {minmax: true}"]),
    ({"features": [{"name": "m", "input": "x", "kind": "missing_indicator", "scale": "standard"}]},
     ["features[0]: unknown key 'scale'"]),
    ({"features": [{"name": "x", "inputs": ["a", "b"]}]}, ["features[0].inputs: expected a list of one input name"]),
    ({}, ["missing key 'features'"]),
    ({"featrues": [{"name": "x"}]}, ["missing key 'features'", "unknown top-level key 'featrues'"]),
    ({"version": 2, "features": [{"name": "x"}]}, ["version: expected 1"]),
    ({"outputs": {"dense": "float16"}, "features": [{"name": "x"}]},
     ["outputs.dense: expected 'float32', 'float64', 'int64' or 'int32'"]),
    ({"inputs": {"x": "double"}, "features": [{"name": "x"}]},
     ["inputs.x: expected 'float', 'int', 'bool', 'string' or null"]),
    ({"features": [{"name": "x__missing"}]},
     ["features[0].name: a raw input name must not end in '__missing' (reserved for the missing-value "
      "companion input)"]),
    ({"features": [{"name": "c", "kind": "cross", "inputs": ["a", "b__missing"], "buckets": 2}]},
     ["features[0].inputs[1]: a raw input name must not end in '__missing' (reserved for the missing-value "
      "companion input)"]),
    ({"features": [{"name": "x", "input": "y__missing"}]},
     ["features[0].input: a raw input name must not end in '__missing' (reserved for the missing-value "
      "companion input)"]),
    ({"features": [{"name": "s", "kind": "vocabulary", "top_k": -1, "oov_buckets": 1.5}]},
     ["features[0].oov_buckets: expected an integer from 0 to 4294967295",
      "features[0].top_k: expected an integer >= 0 or null"]),
])
def test_wrong_configs_get_key_path_messages(config, messages):
    assert config_errors(config) == messages


def test_fit_raises_the_schema_messages_before_touching_the_data():
    with pytest.raises(ConfigError) as exc:
        fit({"features": [{"name": "x", "sacle": "minmax"}, {"name": "y", "scale": "max"}]}, data=None)
    assert str(exc.value) == ("features[0]: unknown key 'sacle' (did you mean 'scale'?)\n"
                              "features[1].scale: expected 'standard' or 'minmax'")


def test_aliases_stay_accepted():
    """Spellings the fitter has always accepted are valid, though the schema documents the canonical ones."""
    data = {"x": np.array([1.0, 2.0, 4.0]), "n": np.array([1, 2, 3])}
    for scale in ("standardize", "none", None):
        assert config_errors({"features": [{"name": "x", "scale": scale}]}) == []
    spec = fit({"features": [{"name": "x", "kind": "bool", "steps": [{"standardize": True}, {"log1p": None}]},
                             {"name": "n", "kind": "passthrough", "output": "ids", "fill": 7}]}, data)
    assert [s["op"] for s in spec.features[0]["steps"]] == ["standardize", "log1p"]


def test_invalid_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("features:\n  - {name: x\n")


# ---- values near the float64 limit -----------------------------------------------------------------

def _exact_mean(values) -> float:
    return float(sum(Fraction(v) for v in values) / len(values))


def test_mean_impute_and_standardize_fit_values_near_dbl_max():
    x = np.array([1e308, DBL_MAX, 1.5e308, np.nan, 1e-300, -2.0, 5e-324])
    config = {"outputs": {"dense": "float64"},
              "features": [{"name": "x", "impute": "mean", "scale": "standard"},
                           {"name": "raw", "input": "x", "kind": "passthrough"}]}
    spec = fit(config, {"x": x})
    finite = x[np.isfinite(x)]
    impute, standardize = spec.features[0]["steps"]
    mean = _exact_mean(finite.tolist())
    assert float.fromhex(impute["value"]) == mean == float.fromhex(standardize["mean"])
    scale = float.fromhex(standardize["scale"])
    var = sum((Fraction(v) - Fraction(mean)) ** 2 for v in [*finite, mean]) / 7  # beyond float64 itself
    exact_std = math.ldexp(math.sqrt(float(var / 2**1200)), 600)
    assert math.isfinite(scale) and scale == pytest.approx(exact_std, rel=1e-15)
    # deterministic, and independent of the row order (sums are exact)
    assert fit(config, {"x": x[::-1].copy()}).features[0]["steps"] == spec.features[0]["steps"]
    assert fit(config, {"x": x}).sha256 == spec.sha256
    assert float.fromhex(spec.features[1]["reference"]["mean"]) == mean


def test_standardize_of_huge_deviations_is_not_silently_unscaled():
    x = np.array([1e200, -1e200, 3e200, 0.0])
    spec = fit({"features": [{"name": "x", "scale": "standard"}]}, {"x": x})
    step = spec.features[0]["steps"][0]
    mean = float.fromhex(step["mean"])
    var = sum((Fraction(v) - Fraction(mean)) ** 2 for v in x) / 4
    expected = math.ldexp(math.sqrt(float(var / 2**800)), 400)
    assert float.fromhex(step["scale"]) == pytest.approx(expected, rel=1e-15)  # not the fallback 1.0


def test_a_range_beyond_dbl_max_is_refused_naming_the_column():
    with pytest.raises(ConfigError, match=r"feature 'x' \(input 'wide'\): max - min is beyond float64's range"):
        fit({"features": [{"name": "x", "input": "wide", "scale": "minmax"}]},
            {"wide": np.array([-DBL_MAX, DBL_MAX, 0.0])})


def test_median_of_two_huge_values_does_not_overflow():
    spec = fit({"features": [{"name": "x", "impute": "median"}]}, {"x": np.array([DBL_MAX, DBL_MAX, np.nan])})
    assert float.fromhex(spec.features[0]["steps"][0]["value"]) == DBL_MAX


# ---- signalling NaNs -------------------------------------------------------------------------------

def test_signalling_nans_fit_silently_and_like_quiet_nans():
    snan = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000001))[0]
    rng = np.random.default_rng(3)
    base = rng.normal(10, 3, 200)
    quiet, signalling = base.copy(), base.copy()
    quiet[::7] = np.nan
    signalling[::7] = snan
    assert np.isnan(signalling).sum() == quiet[::7].size
    config = {"features": [
        {"name": "x", "impute": "mean", "clip": [0, 20], "log1p": True, "scale": "standard", "missing_indicator": True},
        {"name": "y", "input": "x", "clip": [5, None], "scale": "minmax"},
        {"name": "b", "input": "x", "bucketize": {"quantiles": 5}, "encode": "onehot"},
        {"name": "p", "input": "x", "kind": "passthrough"},
    ]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec_s = fit(config, {"x": signalling})
    spec_q = fit(config, {"x": quiet})
    assert [f["steps"] for f in spec_s.features if "steps" in f] == \
        [f["steps"] for f in spec_q.features if "steps" in f]
    bucket = {f["name"]: f for f in spec_s.features}["b"]["bucketize"]
    assert bucket == {f["name"]: f for f in spec_q.features}["b"]["bucketize"]
    assert len(bucket["boundaries"]) == 4


# ---- row counts ------------------------------------------------------------------------------------

def test_row_count_mismatch_names_both_columns():
    data = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([1.0, 2.0]), "c": np.array([1.0, 2.0])}
    with pytest.raises((ConfigError, FeatureInputError)) as exc:
        fit({"features": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, data)
    assert "'b' has 2 rows" in str(exc.value) and "'a' has 3" in str(exc.value)
