"""Generate the bundled example model repository and the models the tests use.

The models are built from numpy and ``onnx.helper`` alone, so neither the
repository nor the test suite needs torch or scikit-learn, and weights come from
fixed-seed generators so every run writes byte-identical ``.onnx`` files.

Usage::

    python -m skewless.examples.generate OUT_DIR                # example repository
    python -m skewless.examples.generate OUT_DIR --test-models  # test-only models
"""

from __future__ import annotations

import argparse
import math
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "CHURN_FEATURE_CONFIG",
    "IDENTITY_DATATYPES",
    "TEXT_VOCABULARY",
    "build_example_repository",
    "build_test_models",
    "churn_dataset",
    "make_slow_model",
    "slow_model_iterations",
    "write_churn_model",
]

# Opsets that onnxruntime's CPU provider has long supported; pinned (with the IR
# version) so the serialized files do not change when the onnx package moves on.
_OPSET = 17
_ML_OPSET = 3  # ai.onnx.ml: TreeEnsembleClassifier-3, LabelEncoder-2
_IR_VERSION = 8
_PRODUCER = "skewless.examples.generate"

# Triton datatype name -> (ONNX element type, config.pbtxt data_type).
_DATATYPES: dict[str, tuple[int, str]] = {
    "BOOL": (TensorProto.BOOL, "TYPE_BOOL"),
    "INT8": (TensorProto.INT8, "TYPE_INT8"),
    "INT16": (TensorProto.INT16, "TYPE_INT16"),
    "INT32": (TensorProto.INT32, "TYPE_INT32"),
    "INT64": (TensorProto.INT64, "TYPE_INT64"),
    "UINT8": (TensorProto.UINT8, "TYPE_UINT8"),
    "UINT16": (TensorProto.UINT16, "TYPE_UINT16"),
    "UINT32": (TensorProto.UINT32, "TYPE_UINT32"),
    "UINT64": (TensorProto.UINT64, "TYPE_UINT64"),
    "FP16": (TensorProto.FLOAT16, "TYPE_FP16"),
    "FP32": (TensorProto.FLOAT, "TYPE_FP32"),
    "FP64": (TensorProto.DOUBLE, "TYPE_FP64"),
    "BYTES": (TensorProto.STRING, "TYPE_STRING"),
    "BF16": (TensorProto.BFLOAT16, "TYPE_BF16"),
}

#: Triton datatypes covered by the ``identity_all`` test model. BF16 is left out
#: of it and gets its own ``identity_bf16`` model: onnxruntime's CPU Identity
#: accepts bfloat16, but its Python API can only return a bfloat16 output through
#: OrtValues (``run_with_ort_values``/IOBinding), and those cannot carry string
#: tensors, so a graph with both a BYTES input and a BF16 output cannot be run.
IDENTITY_DATATYPES: tuple[str, ...] = tuple(dt for dt in _DATATYPES if dt != "BF16")

# Rough single-core cost of one iteration of the slow model's loop (256x256
# MatMul + Tanh; measured ~0.18 ms on an AVX-512 EPYC core), used only to turn
# ``millis_hint`` into an iteration count.
_SLOW_SIZE = 256
_SLOW_MS_PER_ITERATION = 0.2


@dataclass(frozen=True)
class _Tensor:
    """One input or output as config.pbtxt describes it (dims exclude the batch)."""

    name: str
    datatype: str
    dims: Sequence[int]


# ---------------------------------------------------------------------------
# Writing helpers
# ---------------------------------------------------------------------------


def _config_text(
    name: str,
    max_batch_size: int,
    inputs: Sequence[_Tensor],
    outputs: Sequence[_Tensor],
    *,
    instance_count: int | None = None,
    dynamic_batching: bool = False,
) -> str:
    """Render a Triton ``config.pbtxt`` in the layout Triton's own examples use."""
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
    ]
    for section, tensors in (("input", inputs), ("output", outputs)):
        entries = []
        for t in tensors:
            dims = ", ".join(str(d) for d in t.dims)
            entries.append(
                "  {\n"
                f'    name: "{t.name}"\n'
                f"    data_type: {_DATATYPES[t.datatype][1]}\n"
                f"    dims: [ {dims} ]\n"
                "  }"
            )
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    if instance_count is not None:
        lines.append(f"instance_group [\n  {{\n    count: {instance_count}\n    kind: KIND_CPU\n  }}\n]")
    if dynamic_batching:
        lines.append("dynamic_batching {\n  max_queue_delay_microseconds: 0\n}")
    return "\n".join(lines) + "\n"


def _make_model(graph: onnx.GraphProto, *, ml: bool = False) -> onnx.ModelProto:
    """Wrap a graph with pinned opsets/IR version and validate it before use."""
    opsets = [helper.make_opsetid("", _OPSET)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", _ML_OPSET))
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=_IR_VERSION,
        producer_name=_PRODUCER,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _save(model: onnx.ModelProto, path: pathlib.Path) -> None:
    """Write a model, creating the version folder as needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def _write_model_dir(
    root: pathlib.Path,
    name: str,
    model: onnx.ModelProto,
    config: str | None,
) -> None:
    """Lay out ``<root>/<name>/1/model.onnx`` and, if given, its config.pbtxt."""
    _save(model, root / name / "1" / "model.onnx")
    if config is not None:
        (root / name / "config.pbtxt").write_text(config)


def _vi(name: str, datatype: str, shape: Sequence[int | str | None]) -> onnx.ValueInfoProto:
    """ValueInfo from a Triton datatype name; None/str dims become dynamic."""
    return helper.make_tensor_value_info(name, _DATATYPES[datatype][0], list(shape))


# ---------------------------------------------------------------------------
# Example repository
# ---------------------------------------------------------------------------


def _mlp_model() -> onnx.ModelProto:
    """Tabular MLP 32->64->64->2 with softmax, He-initialised from a fixed seed."""
    rng = np.random.default_rng(20240601)
    sizes = [32, 64, 64, 2]
    initializers = []
    nodes = []
    current = "input"
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        initializers += [
            numpy_helper.from_array(w, f"fc{i}.weight"),
            numpy_helper.from_array(b, f"fc{i}.bias"),
        ]
        out = f"fc{i}.out"
        nodes.append(helper.make_node("Gemm", [current, f"fc{i}.weight", f"fc{i}.bias"], [out]))
        current = out
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"relu{i}.out"]))
            current = f"relu{i}.out"
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [_vi("input", "FP32", ["batch", 32])],
        [_vi("probabilities", "FP32", ["batch", 2])],
        initializers,
    )
    return _make_model(graph)


def _gbt_model(n_features: int = 8, n_trees: int = 20, depth: int = 3) -> onnx.ModelProto:
    """Binary gradient-boosted trees via ai.onnx.ml TreeEnsembleClassifier.

    Trees are complete binary trees in breadth-first numbering (children of node
    k are 2k+1 and 2k+2); features, thresholds and leaf weights come from a fixed
    seed. Weights are given for class 0 only, which onnxruntime treats as the
    binary case: scores are [-s, s] and LOGISTIC turns them into [1-p, p].
    """
    rng = np.random.default_rng(7)
    n_internal = 2**depth - 1
    n_nodes = 2 ** (depth + 1) - 1
    tree_ids: list[int] = []
    node_ids: list[int] = []
    feature_ids: list[int] = []
    values: list[float] = []
    modes: list[str] = []
    true_ids: list[int] = []
    false_ids: list[int] = []
    leaf_tree_ids: list[int] = []
    leaf_node_ids: list[int] = []
    leaf_weights: list[float] = []
    for tree in range(n_trees):
        features = rng.integers(0, n_features, size=n_internal)
        thresholds = np.round(rng.standard_normal(n_internal), 2).astype(np.float32)
        weights = np.round(rng.standard_normal(n_nodes - n_internal) * 0.3, 3)
        for node in range(n_nodes):
            tree_ids.append(tree)
            node_ids.append(node)
            if node < n_internal:
                modes.append("BRANCH_LEQ")
                feature_ids.append(int(features[node]))
                values.append(float(thresholds[node]))
                true_ids.append(2 * node + 1)
                false_ids.append(2 * node + 2)
            else:
                modes.append("LEAF")
                feature_ids.append(0)
                values.append(0.0)
                true_ids.append(0)
                false_ids.append(0)
                leaf_tree_ids.append(tree)
                leaf_node_ids.append(node)
                leaf_weights.append(float(weights[node - n_internal]))
    node = helper.make_node(
        "TreeEnsembleClassifier",
        ["features"],
        ["label", "probabilities"],
        domain="ai.onnx.ml",
        classlabels_int64s=[0, 1],
        base_values=[0.0],
        nodes_treeids=tree_ids,
        nodes_nodeids=node_ids,
        nodes_featureids=feature_ids,
        nodes_values=values,
        nodes_modes=modes,
        nodes_truenodeids=true_ids,
        nodes_falsenodeids=false_ids,
        nodes_missing_value_tracks_true=[0] * len(node_ids),
        class_treeids=leaf_tree_ids,
        class_nodeids=leaf_node_ids,
        class_ids=[0] * len(leaf_node_ids),
        class_weights=leaf_weights,
        post_transform="LOGISTIC",
    )
    graph = helper.make_graph(
        [node],
        "gbt",
        [_vi("features", "FP32", ["batch", n_features])],
        [_vi("label", "INT64", ["batch"]), _vi("probabilities", "FP32", ["batch", 2])],
    )
    return _make_model(graph, ml=True)


#: Vocabulary of the ``text`` example; any other string maps to -1.
TEXT_VOCABULARY: tuple[str, ...] = ("red", "green", "blue", "yellow", "cyan", "magenta")


def _text_model() -> onnx.ModelProto:
    """BYTES and FP16 inputs in one model, to exercise the string and half-precision paths."""
    nodes = [
        helper.make_node(
            "LabelEncoder",
            ["text"],
            ["label_id"],
            domain="ai.onnx.ml",
            keys_strings=list(TEXT_VOCABULARY),
            values_int64s=list(range(len(TEXT_VOCABULARY))),
            default_int64=-1,
        ),
        helper.make_node("Cast", ["scores"], ["scores_fp32"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["scores_fp32", "sum_axes"], ["score_sum"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "text",
        [_vi("text", "BYTES", ["batch", 1]), _vi("scores", "FP16", ["batch", 4])],
        [_vi("label_id", "INT64", ["batch", 1]), _vi("score_sum", "FP32", ["batch", 1])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "sum_axes")],
    )
    return _make_model(graph, ml=True)


#: The churn example's feature config (``skewless fit`` format); its fitted spec is ``1/features.json``.
CHURN_FEATURE_CONFIG: dict = {
    "outputs": {"dense": "float32", "ids": "int64"},
    "features": [
        {"name": "tenure_months", "impute": "median", "clip": [0, 72], "scale": "standard",
         "missing_indicator": True},
        {"name": "tenure_bucket", "input": "tenure_months", "bucketize": {"quantiles": 4}, "encode": "onehot"},
        {"name": "monthly_charges", "impute": "mean", "log1p": True, "scale": "standard"},
        {"name": "support_calls", "clip": [0, 10], "scale": "minmax"},
        {"name": "senior"},
        {"name": "contract", "kind": "vocabulary", "oov_buckets": 0, "encode": "onehot"},
        {"name": "payment_method", "kind": "vocabulary", "oov_buckets": 1, "encode": "onehot"},
        {"name": "region", "kind": "hash", "buckets": 64, "seed": 11},
        {"name": "contract_x_payment", "kind": "cross", "inputs": ["contract", "payment_method"],
         "buckets": 32, "seed": 5},
    ],
}
_CHURN_CONTRACTS = ("month-to-month", "one-year", "two-year")
_CHURN_PAYMENTS = ("electronic-check", "mailed-check", "bank-transfer", "credit-card")


def churn_dataset(n: int = 2000, seed: int = 2024) -> dict[str, np.ndarray]:
    """Synthetic customer table (raw columns plus a ``churned`` label) from a fixed-seed generator.

    Churn is more likely on month-to-month contracts, short tenure, high charges, many support calls and
    electronic checks; about 5% of tenures are missing (NaN).
    """
    rng = np.random.default_rng(seed)
    contract = rng.choice(np.array(_CHURN_CONTRACTS, dtype=object), n, p=[0.55, 0.25, 0.2])
    payment = rng.choice(np.array(_CHURN_PAYMENTS, dtype=object), n, p=[0.35, 0.2, 0.25, 0.2])
    tenure = np.round(rng.gamma(2.0, 14.0, n), 1)
    charges = np.round(rng.uniform(18.0, 120.0, n), 2)
    calls = rng.poisson(1.5, n).astype(np.int64)
    senior = rng.random(n) < 0.16
    region = np.array([f"region-{i:02d}" for i in rng.integers(0, 40, n)], dtype=object)
    logit = (-1.2 + 1.4 * (contract == "month-to-month") - 0.04 * np.minimum(tenure, 72)
             + 0.02 * (charges - 70) + 0.35 * calls + 0.5 * (payment == "electronic-check") + 0.3 * senior)
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    tenure[rng.random(n) < 0.05] = np.nan
    return {"tenure_months": tenure, "monthly_charges": charges, "support_calls": calls, "senior": senior,
            "contract": contract, "payment_method": payment, "region": region, "churned": churned}


def _churn_model(spec) -> onnx.ModelProto:
    """Logistic regression on the spec's dense block plus one learned weight per hashed id (an embedding
    of width 1), fitted by full-batch gradient descent on ``churn_dataset`` and rounded to 4 decimals so the
    file does not depend on the machine's BLAS."""
    data = churn_dataset()
    x = spec.transform(data)
    dense, ids = x["dense"].astype(np.float64), x["ids"]
    width = {t.name: t.width for t in spec.outputs}
    sizes = [f["buckets"] + 1 for f in spec.features if f["output"] == "ids"]
    offsets = np.cumsum([0, *sizes[:-1]])
    onehot = np.zeros((dense.shape[0], sum(sizes)))
    for j in range(ids.shape[1]):
        onehot[np.arange(dense.shape[0]), ids[:, j] + offsets[j]] = 1.0
    design = np.hstack([dense, onehot, np.ones((dense.shape[0], 1))])
    y = data["churned"].astype(np.float64)
    w = np.zeros(design.shape[1])
    for _ in range(400):
        p = 1 / (1 + np.exp(-(design @ w)))
        w -= 0.5 * (design.T @ (p - y) / len(y) + 1e-3 * w)
    w = np.round(w, 4)
    d = width["dense"]
    coef = w[:d].astype(np.float32).reshape(d, 1)
    table = w[d:-1].astype(np.float32).reshape(-1, 1)
    bias = np.array([w[-1]], dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["dense", "coef"], ["dense_logit"]),
        helper.make_node("Add", ["ids", "id_offsets"], ["table_rows"]),
        helper.make_node("Gather", ["table", "table_rows"], ["id_weights"], axis=0),  # [batch, k, 1]
        helper.make_node("ReduceSum", ["id_weights", "axis1"], ["id_logit"], keepdims=0),  # [batch, 1]
        helper.make_node("Add", ["dense_logit", "id_logit"], ["logit0"]),
        helper.make_node("Add", ["logit0", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p_churn"]),
        helper.make_node("Sub", ["one", "p_churn"], ["p_stay"]),
        helper.make_node("Concat", ["p_stay", "p_churn"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "churn",
        [_vi("dense", "FP32", ["batch", d]), _vi("ids", "INT64", ["batch", width["ids"]])],
        [_vi("probabilities", "FP32", ["batch", 2])],
        [
            numpy_helper.from_array(coef, "coef"),
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(offsets.astype(np.int64), "id_offsets"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        ],
    )
    return _make_model(graph)


_CHURN_CONFIG = """\
# Clients send the raw inputs of 1/features.json; the server computes the model's "dense" and "ids"
# tensors with the same kernel as 'skewless transform'. Without this file the inputs are auto-completed.
name: "churn"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  { name: "tenure_months" data_type: TYPE_FP64 dims: [ 1 ] },
  { name: "monthly_charges" data_type: TYPE_FP64 dims: [ 1 ] },
  { name: "support_calls" data_type: TYPE_INT64 dims: [ 1 ] },
  { name: "senior" data_type: TYPE_BOOL dims: [ 1 ] },
  { name: "contract" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "payment_method" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "region" data_type: TYPE_STRING dims: [ 1 ] }
]
output [
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 2 ] }
]
dynamic_batching { max_queue_delay_microseconds: 0 }
# Served-feature log (replay with: skewless skew-check --log DIR --spec 1/features.json):
# parameters { key: "skewless.feature_log_rate" value { string_value: "0.01" } }
# parameters { key: "skewless.feature_log_dir" value { string_value: "/tmp/skewless-features" } }
"""


def write_churn_model(root: pathlib.Path, *, config: bool = True) -> None:
    """``<root>/churn``: features.json fitted on ``churn_dataset`` plus the model that consumes it."""
    from skewless.native.fit import fit

    spec = fit(CHURN_FEATURE_CONFIG, {k: v for k, v in churn_dataset().items() if k != "churned"})
    _write_model_dir(root, "churn", _churn_model(spec), _CHURN_CONFIG if config else None)
    spec.save(root / "churn" / "1" / "features.json")


def build_example_repository(root: pathlib.Path) -> None:
    """Write the bundled example repository (mlp, gbt without config, text, churn with features.json)."""
    root = pathlib.Path(root)
    _write_model_dir(
        root,
        "mlp",
        _mlp_model(),
        _config_text(
            "mlp",
            256,
            [_Tensor("input", "FP32", [32])],
            [_Tensor("probabilities", "FP32", [2])],
            instance_count=1,
            dynamic_batching=True,
        ),
    )
    # No config.pbtxt on purpose: the server must auto-complete it from the model.
    _write_model_dir(root, "gbt", _gbt_model(), None)
    _write_model_dir(
        root,
        "text",
        _text_model(),
        _config_text(
            "text",
            64,
            [_Tensor("text", "BYTES", [1]), _Tensor("scores", "FP16", [4])],
            [_Tensor("label_id", "INT64", [1]), _Tensor("score_sum", "FP32", [1])],
        ),
    )
    write_churn_model(root)


# ---------------------------------------------------------------------------
# Test models
# ---------------------------------------------------------------------------


def _identity_model(name: str, datatypes: Sequence[str]) -> onnx.ModelProto:
    """One Identity per datatype so tests can round-trip every wire encoding."""
    nodes = [helper.make_node("Identity", [f"in_{dt}"], [f"out_{dt}"]) for dt in datatypes]
    graph = helper.make_graph(
        nodes,
        name,
        [_vi(f"in_{dt}", dt, ["batch", "n"]) for dt in datatypes],
        [_vi(f"out_{dt}", dt, ["batch", "n"]) for dt in datatypes],
    )
    return _make_model(graph)


def _write_identity(root: pathlib.Path, name: str, datatypes: Sequence[str]) -> None:
    """Identity model with max_batch_size 8 and a variable second dimension."""
    _write_model_dir(
        root,
        name,
        _identity_model(name, datatypes),
        _config_text(
            name,
            8,
            [_Tensor(f"in_{dt}", dt, [-1]) for dt in datatypes],
            [_Tensor(f"out_{dt}", dt, [-1]) for dt in datatypes],
        ),
    )


def _add_sub_model() -> onnx.ModelProto:
    """Triton's classic add_sub example: OUTPUT0 = a + b, OUTPUT1 = a - b."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [_vi("INPUT0", "FP32", ["batch", 16]), _vi("INPUT1", "FP32", ["batch", 16])],
        [_vi("OUTPUT0", "FP32", ["batch", 16]), _vi("OUTPUT1", "FP32", ["batch", 16])],
    )
    return _make_model(graph)


def slow_model_iterations(millis_hint: float) -> int:
    """Loop trip count expected to take about ``millis_hint`` ms on one CPU core."""
    return max(1, round(millis_hint / _SLOW_MS_PER_ITERATION))


def make_slow_model(
    path: pathlib.Path,
    millis_hint: float = 100.0,
    *,
    iterations: int | None = None,
    size: int = _SLOW_SIZE,
) -> None:
    """Write a model computing ``y = x * 2`` exactly, but slowly.

    The slowness is a ``Loop`` of ``iterations`` steps (derived from
    ``millis_hint`` unless given) that each compute ``S = tanh(S @ S / size)``
    on a ``size`` x ``size`` matrix. Tanh keeps every entry in [-1, 1], so the
    result ``h = |sum(S)|`` is always finite and non-negative. The loop's start
    value depends on the request's batch size (a runtime value), so onnxruntime
    cannot constant-fold it away, and its cost does not grow with the batch.

    The output is ``x * 2 + h * -0.0``: ``h * -0.0`` is ``-0.0``, the exact IEEE
    additive identity (it keeps ``-0.0``, infinities and NaNs), so ``y`` is
    bit-for-bit ``x * 2`` whatever the input.

    ``millis_hint`` is only a hint: the MatMul runs at very different speeds on
    different CPUs and spreads over onnxruntime's intra-op threads, so tests
    that need a particular duration should pin ``intra_op_num_threads=1`` or
    pass ``iterations`` themselves. The conversion assumes 0.2 ms per iteration
    (so 100 ms -> 500 iterations), measured on one AVX-512 EPYC core.
    """
    trips = slow_model_iterations(millis_hint) if iterations is None else int(iterations)
    if trips < 1 or size < 1:
        raise ValueError("iterations and size must be positive")

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["s_in", "s_in"], ["ss"]),
            helper.make_node("Mul", ["ss", "inv_size"], ["ss_scaled"]),
            helper.make_node("Tanh", ["ss_scaled"], ["s_out"]),
        ],
        "slow_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [size, size]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [size, size]),
        ],
        [numpy_helper.from_array(np.array(1.0 / size, dtype=np.float32), "inv_size")],
    )
    nodes = [
        # seed = batch / (batch + 1), in [0, 1): finite and only known at run time.
        helper.make_node("Shape", ["x"], ["x_shape"], start=0, end=1),
        helper.make_node("Cast", ["x_shape"], ["batch_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["batch_f", "one"], ["batch_p1"]),
        helper.make_node("Div", ["batch_f", "batch_p1"], ["seed"]),
        # S0 = seed + a small ramp (0.00..0.06 repeating), built in-graph so the
        # file stays tiny; the ramp keeps S0 from being a trivial fixed point.
        helper.make_node("Tile", ["ramp_pattern", "ramp_reps"], ["ramp_flat"]),
        helper.make_node("Slice", ["ramp_flat", "zero_i", "numel"], ["ramp_cut"]),
        helper.make_node("Reshape", ["ramp_cut", "square"], ["ramp"]),
        helper.make_node("Add", ["ramp", "seed"], ["s0"]),
        helper.make_node("Loop", ["trips", "cond", "s0"], ["s_final"], body=body),
        helper.make_node("ReduceSum", ["s_final"], ["h_signed"], keepdims=0),
        helper.make_node("Abs", ["h_signed"], ["h"]),
        helper.make_node("Mul", ["h", "neg_zero"], ["zero"]),
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Add", ["x2", "zero"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(trips, dtype=np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "cond"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
        numpy_helper.from_array(np.array(-0.0, dtype=np.float32), "neg_zero"),
        numpy_helper.from_array(np.arange(7, dtype=np.float32) * np.float32(0.01), "ramp_pattern"),
        numpy_helper.from_array(np.array([-(-size * size // 7)], dtype=np.int64), "ramp_reps"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero_i"),
        numpy_helper.from_array(np.array([size * size], dtype=np.int64), "numel"),
        numpy_helper.from_array(np.array([size, size], dtype=np.int64), "square"),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [_vi("x", "FP32", ["batch", 4])],
        [_vi("y", "FP32", ["batch", 4])],
        initializers,
    )
    _save(_make_model(graph), pathlib.Path(path))


def build_test_models(root: pathlib.Path, *, slow_millis_hint: float = 100.0) -> None:
    """Write the test-only models: identity_all, identity_bf16, add_sub, slow, broken."""
    root = pathlib.Path(root)
    _write_identity(root, "identity_all", IDENTITY_DATATYPES)
    _write_identity(root, "identity_bf16", ["BF16"])
    _write_model_dir(
        root,
        "add_sub",
        _add_sub_model(),
        _config_text(
            "add_sub",
            8,
            [_Tensor("INPUT0", "FP32", [16]), _Tensor("INPUT1", "FP32", [16])],
            [_Tensor("OUTPUT0", "FP32", [16]), _Tensor("OUTPUT1", "FP32", [16])],
        ),
    )
    make_slow_model(root / "slow" / "1" / "model.onnx", slow_millis_hint)
    (root / "slow" / "config.pbtxt").write_text(
        _config_text("slow", 8, [_Tensor("x", "FP32", [4])], [_Tensor("y", "FP32", [4])])
    )
    # Not a protobuf at all: a recognisable header then fixed pseudo-random bytes.
    broken = root / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(404).integers(0, 256, size=1024, dtype=np.uint8).tobytes()
    broken.write_bytes(b"this is not an ONNX model\n" + noise)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: write the example repository, or with --test-models the test models."""
    parser = argparse.ArgumentParser(
        prog="python -m skewless.examples.generate",
        description="Write the example model repository (or the test-only models).",
    )
    parser.add_argument("out_dir", type=pathlib.Path, help="repository root to write")
    parser.add_argument(
        "--test-models",
        action="store_true",
        help="write the test-only models (identity_all, identity_bf16, add_sub, slow, broken) instead",
    )
    args = parser.parse_args(argv)
    if args.test_models:
        build_test_models(args.out_dir)
    else:
        build_example_repository(args.out_dir)


if __name__ == "__main__":
    main()
