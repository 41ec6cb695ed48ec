"""Fit a feature *config* (what to compute) on training data into a frozen ``FeatureSpec``.

The config language is documented in ``docs/features/spec.md`` and specified by the JSON Schema
``config_schema.json`` (``skewless fit --print-schema``), which ``fit`` checks first; the checks here that
need the data (dtypes, row counts, which encodings a kind allows) come after. In short (YAML, JSON or a dict)::

    outputs: {dense: float32, ids: int64}   # optional; tensor order; default dense + ids, unused dropped
    inputs: {zip: string}                   # optional raw dtype overrides; default inferred from the data
    features:
      - name: age                 # input defaults to the name
        impute: median            # mean | median | <number> | {constant: <number>}
        clip: [0, 120]            # null for an open side
        log1p: true
        scale: standard           # standard | minmax
        missing_indicator: true   # adds the value feature "age_missing"
      - {name: income, steps: [{impute: 0}, log1p, standardize]}   # explicit step order
      - {name: age_bucket, input: age, bucketize: {quantiles: 10}, encode: onehot}
      - {name: country, kind: vocabulary, top_k: 100, min_frequency: 5, oov_buckets: 2}
      - {name: user, kind: hash, buckets: 100000, seed: 7}
      - {name: country_x_device, kind: cross, inputs: [country, device], buckets: 1000}
      - {name: n_items, kind: passthrough, output: ids}
      - {name: card_amount_1h, kind: aggregate, op: sum, keys: card, value: amount, time: ts, window: 1h,
         log1p: true, scale: standard}         # windowed aggregate: docs/features/aggregates.md

Fitted statistics ignore missing and non-finite values and are computed in a fixed order (``math.fsum``,
exact selection for medians), so fitting the same data twice gives the same spec and the same hash; sums that
would leave float64's range (values near DBL_MAX) are computed exactly or with power-of-two scaling instead.
Each step is fitted on the output of the previous steps, computed exactly as the kernel computes it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import columns as _columns
from .aggregate_plan import (
    DEFAULT_TIME_UNIT,
    PlanError,
    check_plan,
    default_bucket,
    parse_duration,
    plan_inputs,
    to_time_unit,
)
from .config_schema import config_errors
from .feature_kernel import log1p as _log1p
from .spec import (
    FORMAT,
    FORMAT_VERSION,
    INPUT_DTYPES,
    OUTPUT_DTYPES,
    FeatureSpec,
    cardinality,
    content_hash,
    encode_float,
    encode_vocabulary,
)

DEFAULT_OUTPUTS = {"dense": "float32", "ids": "int64"}
_COMMON = {"name", "kind", "input", "inputs", "output", "encode"}
_KEYS = {
    "numeric": _COMMON | {"impute", "clip", "log1p", "scale", "steps", "bucketize", "missing_indicator"},
    "vocabulary": _COMMON | {"top_k", "min_frequency", "oov_buckets", "seed", "vocabulary"},
    "hash": _COMMON | {"buckets", "seed"},
    "cross": _COMMON | {"buckets", "seed"},
    "passthrough": _COMMON | {"fill", "missing_indicator"},
    "missing_indicator": _COMMON,
}
# kind: aggregate = an aggregate (these keys) plus a numeric feature over its derived input (the rest).
_AGGREGATE_KEYS = {"op", "keys", "value", "time", "window", "bucket", "time_unit"}
_KEYS["aggregate"] = (_KEYS["numeric"] - {"input", "inputs"}) | _AGGREGATE_KEYS
REFERENCE_TOP = 20


class ConfigError(ValueError):
    """The feature config is invalid; the message names the feature and the key."""


def load_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A config from a dict, a path to a .yaml/.yml/.json file, or YAML text."""
    if isinstance(source, Mapping):
        return dict(source)
    text = source
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and Path(source).exists()):
        text = Path(source).read_text()
    try:
        import yaml
    except ImportError:
        yaml = None
    try:
        doc = yaml.safe_load(text) if yaml is not None else json.loads(text)
    except (ValueError, getattr(yaml, "YAMLError", ValueError)) as exc:
        raise ConfigError(f"the config is not valid {'YAML' if yaml is not None else 'JSON'}: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ConfigError("the config must be a mapping with a 'features' list")
    return dict(doc)


# ---- dtype inference --------------------------------------------------------------------------------

def infer_dtype(obj: Any) -> str:
    """Logical raw dtype (float/int/bool/string) of a column, from its numpy/pandas/Arrow type."""
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(obj, pa.Array | pa.ChunkedArray):
        t = obj.type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_boolean(t):
            return "bool"
        if pa.types.is_integer(t):
            return "int"
        if pa.types.is_floating(t):
            return "float"
        if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t) or pa.types.is_string_view(t) or pa.types.is_binary_view(t)):
            return "string"
        raise ConfigError(f"cannot use an Arrow {t} column as a raw input")
    dtype = getattr(obj, "dtype", None)
    if dtype is None:
        obj = np.asarray(obj)
        dtype = obj.dtype
    if str(dtype) == "category":
        return infer_dtype(np.asarray(obj.cat.categories))
    kind = getattr(dtype, "kind", "O")
    if kind == "b":
        return "bool"
    if kind in "iu":
        return "int"
    if kind == "f":
        return "float"
    return "string"


# ---- config normalisation ---------------------------------------------------------------------------

def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _parse_step(item: Any, where: str) -> dict[str, Any]:
    if isinstance(item, str):
        op, arg = item, None
    elif isinstance(item, Mapping) and len(item) == 1:
        op, arg = next(iter(item.items()))
    else:
        raise ConfigError(f"{where}: a step is a name or a one-key mapping, got {item!r}")
    if op == "impute":
        if arg in ("mean", "median"):
            return {"op": "impute", "strategy": arg}
        if isinstance(arg, Mapping) and set(arg) == {"constant"}:
            arg = arg["constant"]
        return {"op": "impute", "strategy": "constant", "value": _number(arg, f"{where} impute")}
    if op == "clip":
        if isinstance(arg, Mapping):
            arg = [arg.get("min"), arg.get("max")]
        if not isinstance(arg, Sequence) or len(arg) != 2:
            raise ConfigError(f"{where}: clip takes [min, max]")
        lo = -math.inf if arg[0] is None else _number(arg[0], f"{where} clip")
        hi = math.inf if arg[1] is None else _number(arg[1], f"{where} clip")
        if not lo <= hi:
            raise ConfigError(f"{where}: clip needs min <= max")
        return {"op": "clip", "min": lo, "max": hi}
    if op in ("log1p", "standardize", "minmax") and arg in (None, True):
        return {"op": op}
    raise ConfigError(f"{where}: unknown step {item!r}")


def _numeric_steps(f: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    if "steps" in f:
        if any(k in f for k in ("impute", "clip", "log1p", "scale")):
            raise ConfigError(f"{where}: give either 'steps' or impute/clip/log1p/scale, not both")
        steps = [_parse_step(s, where) for s in f["steps"] or []]
    else:
        steps = []
        if f.get("impute") is not None:
            steps.append(_parse_step({"impute": f["impute"]}, where))
        if f.get("clip") is not None:
            steps.append(_parse_step({"clip": f["clip"]}, where))
        if f.get("log1p"):
            steps.append({"op": "log1p"})
        scale = f.get("scale")
        if scale in ("standard", "standardize"):
            steps.append({"op": "standardize"})
        elif scale == "minmax":
            steps.append({"op": "minmax"})
        elif scale not in (None, "none"):
            raise ConfigError(f"{where}: scale must be standard or minmax")
    if any(s["op"] == "impute" for s in steps[1:]):
        raise ConfigError(f"{where}: impute must be the first step")
    return steps


def _aggregate_entry(f: Mapping[str, Any], top_unit: str) -> dict[str, Any]:
    """A ``kind: aggregate`` config feature -> the spec's aggregate entry (durations in its time unit)."""
    where = f"feature {f['name']!r}"
    unknown = set(f) - _KEYS["aggregate"]
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} for kind aggregate")
    unit = f.get("time_unit") or top_unit
    keys = f.get("keys")
    try:
        if unit not in ("s", "ms", "us", "ns"):
            raise PlanError(f"{where}: time_unit must be s, ms, us or ns, got {unit!r}")
        window = parse_duration(f.get("window"), unit, f"{where} window")
        bucket = (parse_duration(f["bucket"], unit, f"{where} bucket") if f.get("bucket") is not None
                  else default_bucket(window, where))
    except PlanError as exc:
        raise ConfigError(str(exc)) from None
    return {"name": f["name"], "op": f.get("op"), "keys": [keys] if isinstance(keys, str) else list(keys or []),
            "time": f.get("time"), "value": f.get("value"), "window": window, "bucket": bucket,
            "time_unit": unit}


def split_aggregates(config: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """(aggregate entries, features): each ``kind: aggregate`` feature becomes an aggregate entry plus a
    numeric feature of the same name over its derived input, in the same place among the features."""
    top_unit = config.get("time_unit") or DEFAULT_TIME_UNIT
    entries: list[dict[str, Any]] = []
    features: list[Any] = []
    for f in config.get("features") or []:
        if isinstance(f, Mapping) and f.get("kind") == "aggregate" and isinstance(f.get("name"), str):
            entries.append(_aggregate_entry(f, top_unit))
            features.append({**{k: v for k, v in f.items() if k not in _AGGREGATE_KEYS},
                             "kind": "numeric", "input": f["name"]})
        else:
            features.append(f)
    return entries, features


def config_inputs(config: Mapping[str, Any]) -> list[str]:
    """The raw input columns a config reads (aggregates' keys, times and values included), in first-use
    order; aggregate names are derived inputs, not columns of the data."""
    entries, features = split_aggregates(config)
    derived = {e["name"] for e in entries}
    names: list[str] = []
    for f in features:
        if isinstance(f, Mapping):
            for i in (f["inputs"] if "inputs" in f else [f.get("input", f.get("name"))]):
                if isinstance(i, str) and i not in derived and i not in names:
                    names.append(i)
    for i in plan_inputs(entries):
        if isinstance(i, str) and i not in names:
            names.append(i)
    return names


def _normalize(config: Mapping[str, Any], dtypes: Mapping[str, str]) -> tuple[dict[str, str], list[dict]]:
    """Resolve defaults of every feature; returns (outputs, features). ``dtypes`` maps raw input names."""
    explicit_outputs = config.get("outputs")
    outputs = dict(explicit_outputs or DEFAULT_OUTPUTS)
    for name, dt in outputs.items():
        if dt not in OUTPUT_DTYPES:
            raise ConfigError(f"output {name!r}: dtype must be one of {OUTPUT_DTYPES}")
    float_out = next((n for n, d in outputs.items() if d.startswith("float")), None)
    int_out = next((n for n, d in outputs.items() if d.startswith("int")), float_out)
    raw = config.get("features")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("the config needs a non-empty 'features' list")
    features: list[dict] = []
    for f in raw:
        if not isinstance(f, Mapping) or not isinstance(f.get("name"), str):
            raise ConfigError(f"each feature needs a name: {f!r}")
        where = f"feature {f['name']!r}"
        inputs = list(f["inputs"]) if "inputs" in f else [f.get("input", f["name"])]
        for i in inputs:
            if i not in dtypes:
                raise ConfigError(f"{where}: input {i!r} is not in the data")
        kind = f.get("kind") or ("vocabulary" if dtypes[inputs[0]] == "string" else "numeric")
        if kind == "bool":
            kind = "numeric"
        if kind not in _KEYS:
            raise ConfigError(f"{where}: unknown kind {kind!r}")
        unknown = set(f) - _KEYS[kind]
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)} for kind {kind}")
        if (kind == "cross") != (len(inputs) > 1):
            raise ConfigError(f"{where}: crosses take two or more inputs, other kinds exactly one")
        in_types = [dtypes[i] for i in inputs]
        if kind in ("vocabulary", "hash", "cross") and "float" in in_types:
            raise ConfigError(f"{where}: float inputs cannot be categories (bucketize them instead)")
        if kind == "vocabulary" and in_types[0] not in ("string", "int"):
            raise ConfigError(f"{where}: a vocabulary needs a string or int input")
        if kind in ("numeric", "passthrough") and in_types[0] == "string":
            raise ConfigError(f"{where}: string inputs are not numbers (use vocabulary or hash)")
        feat: dict[str, Any] = {"name": f["name"], "kind": kind, "inputs": inputs}
        if kind == "numeric":
            feat["steps"] = _numeric_steps(f, where)
            b = f.get("bucketize")
            if b is not None:
                if isinstance(b, int) and not isinstance(b, bool):
                    b = {"quantiles": b}
                elif isinstance(b, list):
                    b = {"boundaries": b}
                if isinstance(b, Mapping) and set(b) == {"quantiles"} and int(b["quantiles"]) >= 1:
                    feat["bucketize"] = {"method": "quantile", "quantiles": int(b["quantiles"])}
                elif isinstance(b, Mapping) and set(b) == {"boundaries"}:
                    bounds = [_number(x, f"{where} boundaries") for x in b["boundaries"]]
                    if any(not math.isfinite(x) for x in bounds) or any(
                            x >= y for x, y in zip(bounds, bounds[1:], strict=False)):
                        raise ConfigError(f"{where}: boundaries must be finite and increasing")
                    feat["bucketize"] = {"method": "given", "boundaries": bounds}
                else:
                    raise ConfigError(f"{where}: bucketize takes {{quantiles: n}} or {{boundaries: [...]}}")
        elif kind == "vocabulary":
            feat["oov_buckets"] = int(f.get("oov_buckets", 1))
            feat["seed"] = int(f.get("seed", 0))
            if "vocabulary" in f:
                feat["given"] = list(f["vocabulary"])
            feat["top_k"] = None if f.get("top_k") is None else int(f["top_k"])
            feat["min_frequency"] = int(f.get("min_frequency", 1))
            if feat["oov_buckets"] < 0 or (feat["top_k"] is not None and feat["top_k"] < 0):
                raise ConfigError(f"{where}: oov_buckets and top_k must be >= 0")
        elif kind in ("hash", "cross"):
            if "buckets" not in f or int(f["buckets"]) < 1:
                raise ConfigError(f"{where}: needs buckets >= 1")
            feat["buckets"] = int(f["buckets"])
            feat["seed"] = int(f.get("seed", 0))
        elif kind == "passthrough":
            feat["fill"] = int(f.get("fill", 0))
        for key in ("seed", "buckets"):
            if key in feat and not 0 <= feat[key] < 2**32:
                raise ConfigError(f"{where}: {key} must fit in uint32")
        default_encode = "value" if kind in ("numeric", "missing_indicator") and "bucketize" not in feat \
            else "index"
        if kind == "passthrough":
            out = f.get("output", float_out)
            default_encode = "index" if outputs.get(out, "").startswith("int") else "value"
        feat["encode"] = f.get("encode", default_encode)
        if feat["encode"] not in ("value", "index", "onehot"):
            raise ConfigError(f"{where}: encode must be value, index or onehot")
        if feat["encode"] == "value" and (kind not in ("numeric", "missing_indicator", "passthrough")
                                          or "bucketize" in feat):
            what = "a bucketized number" if kind == "numeric" else f"a {kind} feature"
            raise ConfigError(f"{where}: {what} has no value encoding; use encode: index (its bucket "
                              "number as one column, into a float output too) or encode: onehot")
        if kind == "numeric" and "bucketize" not in feat and feat["encode"] != "value":
            raise ConfigError(f"{where}: only bucketized numbers have an index or one-hot encoding")
        if kind == "passthrough" and feat["encode"] == "onehot":
            raise ConfigError(f"{where}: a pass-through cannot be one-hot")
        feat["output"] = f.get("output", int_out if feat["encode"] == "index" else float_out)
        if feat["output"] not in outputs:
            raise ConfigError(f"{where}: output {feat['output']!r} is not declared (and no default fits)")
        out_dtype = outputs[feat["output"]]
        if feat["encode"] == "value" and kind != "passthrough" and not out_dtype.startswith("float"):
            raise ConfigError(f"{where}: a value feature needs a float output")
        if kind == "passthrough" and out_dtype.startswith("int") and in_types[0] == "float":
            raise ConfigError(f"{where}: floats cannot pass through into an integer output")
        features.append(feat)
        if f.get("missing_indicator"):
            own = feat["output"] if out_dtype.startswith("float") else float_out
            features.append({"name": f"{f['name']}_missing", "kind": "missing_indicator", "inputs": inputs[:1],
                             "encode": "value", "output": own})
    names = [f["name"] for f in features]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"duplicate feature names {sorted(dup)}")
    used = {f["output"] for f in features}
    if explicit_outputs:
        unused = [n for n in outputs if n not in used]
        if unused:
            raise ConfigError(f"outputs {unused} have no features")
    else:
        outputs = {n: d for n, d in outputs.items() if n in used}
    if None in used:
        raise ConfigError("a feature needs a float output, but none is declared")
    return outputs, features


# ---- encode limits ----------------------------------------------------------------------------------

# A one-hot block wider than this is refused: 10,000 float32 columns are 40 kB per row, past the point
# where a dense model input makes sense (an index into an embedding, or fewer buckets, fits better).
MAX_ONEHOT_WIDTH = 10_000
# The largest index each output dtype holds exactly (float32: 2**24; beyond, neighbouring buckets collide).
EXACT_INDEX = {"float32": 2**24, "float64": 2**53, "int32": 2**31 - 1, "int64": 2**63 - 1}


def _check_encoding(entry: Mapping[str, Any], out_dtype: str) -> None:
    """Refuse an index the output dtype cannot hold exactly, and a one-hot too wide for a dense tensor."""
    where = f"feature {entry['name']!r}"
    n = cardinality(entry)
    if entry["encode"] == "onehot" and n > MAX_ONEHOT_WIDTH:
        raise ConfigError(f"{where}: a one-hot of {n} columns is wider than the limit of {MAX_ONEHOT_WIDTH}; "
                          "use encode: index (one column, or an id for an embedding in an int64 output), "
                          "fewer buckets, or top_k / min_frequency for a vocabulary")
    if entry["encode"] == "index" and n - 1 > EXACT_INDEX[out_dtype]:
        raise ConfigError(f"{where}: indices up to {n - 1} do not fit exactly in {out_dtype} output "
                          f"{entry['output']!r} (exact up to {EXACT_INDEX[out_dtype]}); use fewer buckets or "
                          "a wider output dtype")


# ---- fitting ----------------------------------------------------------------------------------------

def _validity(col: tuple, n: int) -> np.ndarray:
    _, _, _, valid_bytes, bits, bit_offset = col
    valid = np.ones(n, dtype=np.bool_) if valid_bytes is None else valid_bytes.copy()
    if bits is not None:
        valid &= np.unpackbits(bits, bitorder="little")[bit_offset:bit_offset + n].astype(np.bool_)
    return valid


def _numbers(col: tuple, n: int) -> np.ndarray:
    """Kernel semantics of a numeric read: float64 with NaN for every missing row."""
    x = col[1].astype(np.float64)
    x[~_validity(col, n)] = np.nan
    return x


def _finite(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def _fsum_mean(x: np.ndarray) -> float:
    """Mean of finite values: the exactly rounded sum (``math.fsum``) divided by the count."""
    if not x.size:
        return 0.0
    try:
        return math.fsum(x.tolist()) / x.size
    except OverflowError:  # the sum leaves float64's range (values near DBL_MAX): sum exactly in integers
        return _exact_mean(x)


def _exact_mean(x: np.ndarray) -> float:
    """The correctly rounded mean of finite float64 values, from their exact sum as an integer.

    Every double is ``mantissa * 2**exponent`` with a 53-bit integer mantissa; values are grouped by
    exponent, each group's mantissas summed as Python integers, and the groups shifted to a common scale of
    2**-1074 (the smallest subnormal), so no step rounds. Vectorised but for one step per distinct exponent.
    """
    m, e = np.frexp(x)
    mant = (m * 2.0**53).astype(np.int64)  # exact: |m| < 1, so |mant| < 2**53
    shift = e.astype(np.int64) + (1074 - 53)  # x == mant * 2**(shift - 1074)
    order = np.argsort(shift, kind="stable")
    shift, mant = shift[order], mant[order]
    starts = np.flatnonzero(np.diff(shift, prepend=shift[0] - 1))
    total = 0
    for a, b in zip(starts.tolist(), [*starts[1:].tolist(), shift.size], strict=True):
        part, k = sum(mant[a:b].tolist()), int(shift[a])
        total += part << k if k >= 0 else part >> -k  # subnormals: the low -k bits are zero
    return total / (x.size << 1074)  # int / int rounds correctly; |mean| <= max |x| stays finite


def _median(x: np.ndarray) -> float:
    """numpy's median, except that the mean of the two middle values cannot overflow."""
    value = float(np.median(x))
    if not math.isfinite(value) and x.size % 2 == 0:
        lo, hi = np.partition(x, (x.size // 2 - 1, x.size // 2))[x.size // 2 - 1:x.size // 2 + 1].tolist()
        value = lo / 2 + hi / 2
    return value


def _std(finite: np.ndarray, mean: float, where: str) -> float:
    """Population standard deviation about ``mean`` (fsum of squared deviations, fixed order).

    When a squared deviation or their sum would leave float64's range, the deviations are scaled by a
    power of two first: scaling is exact, so the result is the one the formula gives without an exponent
    limit. A standard deviation beyond DBL_MAX cannot be stored: ConfigError.
    """
    if not finite.size:
        return 0.0
    dev = finite - mean
    sq = dev * dev
    if np.isfinite(sq).all():
        try:
            return math.sqrt(math.fsum(sq.tolist()) / finite.size)
        except OverflowError:
            pass
    big = max(float(np.abs(finite).max()), abs(mean))
    k = math.frexp(big)[1] - 256  # scaled values stay below 2**257, their squares' sum far below DBL_MAX
    dev = np.ldexp(finite, -k) - math.ldexp(mean, -k)
    scale = math.ldexp(math.sqrt(math.fsum((dev * dev).tolist()) / finite.size), k)
    if not math.isfinite(scale):
        raise ConfigError(f"{where}: the standard deviation is beyond float64's range (values up to "
                          f"{big:.6g}); clip the values before standardize")
    return scale


def _fit_numeric(feat: dict, x: np.ndarray) -> dict[str, Any]:
    where = f"feature {feat['name']!r} (input {feat['inputs'][0]!r})"
    steps = []
    for step in feat["steps"]:
        op = step["op"]
        if op == "impute":
            finite = _finite(x)
            if step["strategy"] == "mean":
                value = _fsum_mean(finite)
            elif step["strategy"] == "median":
                value = _median(finite) if finite.size else 0.0
            else:
                value = step["value"]
            steps.append({"op": "impute", "strategy": step["strategy"], "value": encode_float(value)})
            x = np.where(np.isnan(x), value, x)
        elif op == "clip":
            lo, hi = step["min"], step["max"]
            steps.append({"op": "clip", "min": encode_float(lo), "max": encode_float(hi)})
            x = np.where(x < lo, lo, np.where(x > hi, hi, x))
        elif op == "log1p":
            steps.append({"op": "log1p"})
            x = _log1p(x)
        elif op == "standardize":
            finite = _finite(x)
            mean = _fsum_mean(finite)
            scale = _std(finite, mean, where)
            if not (scale > 0 and math.isfinite(scale)):  # constant feature: centre only, like sklearn
                scale = 1.0
            steps.append({"op": "standardize", "mean": encode_float(mean), "scale": encode_float(scale)})
            x = (x - mean) / scale
        else:
            finite = _finite(x)
            lo = float(finite.min()) if finite.size else 0.0
            span = float(finite.max()) - lo if finite.size else 1.0
            if math.isinf(span):
                raise ConfigError(f"{where}: max - min is beyond float64's range ({lo:.6g} to "
                                  f"{float(finite.max()):.6g}); clip the values before minmax")
            if not span > 0:
                span = 1.0
            steps.append({"op": "minmax", "min": encode_float(lo), "range": encode_float(span)})
            x = (x - lo) / span
    out: dict[str, Any] = {"steps": steps}
    b = feat.get("bucketize")
    if b is not None:
        if b["method"] == "given":
            bounds = b["boundaries"]
            out["bucketize"] = {"method": "given", "boundaries": [encode_float(v) for v in bounds]}
        else:
            finite = _finite(x)
            q = b["quantiles"]
            bounds = np.unique(np.quantile(finite, np.arange(1, q) / q)).tolist() if finite.size else []
            out["bucketize"] = {"method": "quantile", "quantiles": q,
                                "boundaries": [encode_float(v) for v in bounds]}
    return out


def _select(counts: np.ndarray, order_keys: Sequence[Any], top_k: int | None, min_frequency: int) -> list[int]:
    """Positions of the kept categories: count >= min_frequency, by descending count, ties by value."""
    idx = np.nonzero(counts >= min_frequency)[0]
    if top_k is not None and idx.size > top_k:
        if top_k == 0:
            return []
        kth = np.partition(counts[idx], idx.size - top_k)[idx.size - top_k]
        idx = idx[counts[idx] >= kth]
    ranked = sorted(idx.tolist(), key=lambda i: (-int(counts[i]), order_keys[i]))
    return ranked if top_k is None else ranked[:top_k]


def _fit_vocabulary(feat: dict, col: tuple, n: int, dtype: str) -> dict[str, Any]:
    if "given" in feat:
        values = feat["given"]
        if dtype == "int":
            values = [int(v) for v in values]
        else:
            values = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
        if len(set(values)) != len(values):
            raise ConfigError(f"feature {feat['name']!r}: duplicate vocabulary entries")
        method: dict[str, Any] = {"method": "given"}
    else:
        valid = _validity(col, n)
        if dtype == "int":
            uniq, counts = np.unique(col[1][valid], return_counts=True)
            keep = _select(counts, uniq.tolist(), feat["top_k"], feat["min_frequency"])
            values = [int(uniq[i]) for i in keep]
        else:
            import pyarrow as pa
            import pyarrow.compute as pc

            kind, offsets, data = col[0], col[1], col[2]
            arr = pa.Array.from_buffers(pa.large_binary() if kind == "str64" else pa.binary(), n,
                                        [None, pa.py_buffer(offsets), pa.py_buffer(data)])
            vc = pc.value_counts(arr.filter(pa.array(valid)))
            counts = vc.field("counts").to_numpy(zero_copy_only=False)
            uniques = vc.field("values")
            candidates = _select(counts, _LazyBytes(uniques), feat["top_k"], feat["min_frequency"])
            values = uniques.take(pa.array(candidates, type=pa.int64())).to_pylist()
        method = {"method": "frequency", "top_k": feat["top_k"], "min_frequency": feat["min_frequency"]}
    encoding, encoded = encode_vocabulary(values, dtype)
    return {"vocabulary": encoded, "vocabulary_encoding": encoding, "oov_buckets": feat["oov_buckets"],
            "seed": feat["seed"], "fit": method}


class _LazyBytes:
    """Index access to an Arrow binary array's values without converting all of them to Python bytes."""

    def __init__(self, arr: Any) -> None:
        self._arr = arr

    def __getitem__(self, i: int) -> bytes:
        return self._arr[i].as_py()


def _value_reference(v: np.ndarray) -> dict[str, Any]:
    x = v.astype(np.float64)
    nan = np.isnan(x)
    finite = _finite(x)
    edges = np.unique(np.quantile(finite, np.arange(1, 10) / 10)) if finite.size else np.zeros(0)
    counts = np.bincount(np.searchsorted(edges, x[~nan], side="right"), minlength=edges.size + 1)
    ref: dict[str, Any] = {"rows": int(x.size), "nan": int(nan.sum()),
                           "histogram": {"edges": [encode_float(e) for e in edges.tolist()],
                                         "counts": counts.tolist()}}
    if finite.size:
        ref.update(min=encode_float(finite.min()), max=encode_float(finite.max()),
                   mean=encode_float(_fsum_mean(finite)))
    return ref


def _index_reference(counts: np.ndarray) -> dict[str, Any]:
    """Frequencies of the emitted indices (0 = missing): the top ones, and how many rows the rest hold."""
    rows = int(counts.sum())
    order = np.lexsort((np.arange(counts.size), -counts))
    top = [[int(i), int(counts[i])] for i in order[:REFERENCE_TOP] if counts[i] > 0]
    return {"rows": rows, "missing": int(counts[0]), "cardinality": int(counts.size), "top": top,
            "other": rows - sum(c for _, c in top)}


def _generator() -> str:
    try:
        from importlib.metadata import version

        return f"skewless {version('skewless')}"
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        return "skewless"


def validate_config(config: Any) -> None:
    """Check a config against the published JSON Schema (``config_schema.json``); ConfigError lists every
    violation, one per line, each prefixed by its key path (``features[3].scale: ...``)."""
    errors = config_errors(config)
    if errors:
        raise ConfigError("\n".join(errors))


def fit(config: str | Path | Mapping[str, Any], data: Any) -> FeatureSpec:
    """Fit ``config`` on ``data`` (DataFrame, pyarrow Table/RecordBatch, or mapping of columns)."""
    config = load_config(config)
    validate_config(config)
    # Signalling NaNs and huge values in the data make numpy warn in comparisons and arithmetic whose
    # results are handled explicitly (NaN is missing; overflow is detected where it matters).
    with np.errstate(invalid="ignore", over="ignore"):
        return _fit(config, data)


def _fit(config: dict[str, Any], data: Any) -> FeatureSpec:
    unknown = set(config) - {"version", "outputs", "inputs", "features", "time_unit"}
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}")
    if config.get("version", 1) != 1:
        raise ConfigError(f"unsupported config version {config['version']!r}")
    aggregates, plain = split_aggregates(config)
    config = {**config, "features": plain}
    derived = [e["name"] for e in aggregates]
    wanted = config_inputs({"features": plain})
    wanted = [n for n in wanted if n not in derived]
    for n in plan_inputs(aggregates):
        if isinstance(n, str) and n not in wanted:
            wanted.append(n)
    reserved = [n for n in wanted if isinstance(n, str) and n.endswith("__missing")]
    if reserved:  # served, NAME__missing is the companion input that marks NAME's missing values (issue 24)
        raise ConfigError(f"input(s) {reserved}: names ending with '__missing' are reserved for the inputs that "
                          "mark missing values when served; rename the column")
    source = _columns.get_columns(data, wanted)
    shadowed = [n for n in derived if n in _columns.get_columns(data, [n])]
    if shadowed:
        raise ConfigError(f"aggregate {shadowed[0]!r}: the name is also a raw input (a column of the data); an "
                          "aggregate's name is a derived input, so it must differ from every raw input")
    time_unit = {e["time"]: e["time_unit"] for e in aggregates if isinstance(e["time"], str)}
    if time_unit:
        source = dict(source)
        for t, unit in time_unit.items():
            if t in source:
                try:
                    source[t] = to_time_unit(source[t], unit, t)
                except PlanError as exc:
                    raise ConfigError(str(exc)) from None
    overrides = dict(config.get("inputs") or {})
    dtypes: dict[str, str] = {}
    for name in wanted:
        if name not in source:
            users = [e["name"] for e in aggregates if name in (*e["keys"], e["time"], e["value"])]
            raise ConfigError(f"aggregate {users[0]!r}: input {name!r} is not in the data" if users
                              else f"input {name!r} is not in the data")
        dtypes[name] = overrides.get(name) or infer_dtype(source[name])
        if dtypes[name] not in INPUT_DTYPES:
            raise ConfigError(f"input {name!r}: dtype must be one of {INPUT_DTYPES}")
    try:
        aggregates = check_plan(aggregates, dtypes)
    except PlanError as exc:
        raise ConfigError(str(exc)) from None
    outputs, features = _normalize(config, {**dtypes, **dict.fromkeys(derived, "float")})
    agg_inputs = plan_inputs(aggregates)
    used_inputs = [n for n in wanted if n in agg_inputs or any(n in f["inputs"] for f in features)]
    cols: dict[str, tuple] = {}
    n_rows = -1
    for name in used_inputs:
        cols[name] = _columns.column(name, source[name], dtypes[name])
        n = _columns.n_rows_of(cols[name])
        if n_rows >= 0 and n != n_rows:
            raise ConfigError(f"input {name!r} has {n} rows, but input {used_inputs[0]!r} has {n_rows}")
        n_rows = n
    values: dict[str, np.ndarray] = {}
    if aggregates:  # fit = backfill, then fit: the numeric steps see the values a server would compute
        from .aggregates import AggregateState

        state = AggregateState(aggregates, {n: dtypes[n] for n in agg_inputs})
        values = state.score({n: cols[n] for n in agg_inputs}, n_rows)
        for name in derived:
            cols[name] = ("f64", values[name], None, None, None, 0)

    widths = dict.fromkeys(outputs, 0)
    entries = []
    for feat in features:
        entry: dict[str, Any] = {k: feat[k] for k in ("name", "kind", "inputs", "encode", "output")}
        first = feat["inputs"][0]
        if feat["kind"] == "numeric":
            entry.update(_fit_numeric(feat, _numbers(cols[first], n_rows)))
        elif feat["kind"] == "vocabulary":
            entry.update(_fit_vocabulary(feat, cols[first], n_rows, dtypes[first]))
        elif feat["kind"] in ("hash", "cross"):
            entry.update(buckets=feat["buckets"], seed=feat["seed"])
        elif feat["kind"] == "passthrough" and outputs[feat["output"]].startswith("int"):
            entry["fill"] = feat["fill"]
        width = cardinality(entry) if feat["encode"] == "onehot" else 1
        _check_encoding(entry, outputs[feat["output"]])
        entry.update(offset=widths[feat["output"]], width=width)
        widths[feat["output"]] += width
        entries.append(entry)

    doc: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "float_encoding": "hex",
        "hash": "murmur3_x86_32", "generator": _generator(),
        "inputs": [{"name": n, "dtype": dtypes[n], "shape": [1]} for n in used_inputs],
        "outputs": [{"name": o, "dtype": d, "shape": [-1, widths[o]]} for o, d in outputs.items()],
        "features": entries, "fit": {"rows": n_rows},
    }
    if aggregates:
        doc["aggregates"] = aggregates
    # Reference statistics for the drift monitor come from the kernel's own output on the training data.
    draft = FeatureSpec(doc, verify_hash=False)
    out = draft.transform({n: source[n] for n in used_inputs}, aggregate_values=values if aggregates else None)
    for entry in entries:
        block = out[entry["output"]]
        if entry["encode"] == "value" or entry["kind"] == "passthrough":
            entry["reference"] = _value_reference(block[:, entry["offset"]])
        elif entry["encode"] == "index":
            idx = block[:, entry["offset"]].astype(np.int64)
            entry["reference"] = _index_reference(np.bincount(idx, minlength=cardinality(entry)))
        else:  # exactly one 1 per row: column counts are the index frequencies
            onehot = block[:, entry["offset"]:entry["offset"] + entry["width"]]
            entry["reference"] = _index_reference(np.count_nonzero(onehot, axis=0))
    for spec_in in doc["inputs"]:
        col = cols[spec_in["name"]]
        valid = _validity(col, n_rows)
        ref: dict[str, Any] = {"rows": n_rows, "missing": int(n_rows - valid.sum())}
        if spec_in["dtype"] == "float":
            ref["missing"] += int(np.isnan(col[1][valid]).sum())
        spec_in["reference"] = ref
    doc["sha256"] = content_hash(doc)
    return FeatureSpec(doc)

