"""``skewless export``: a fitted estimator plus a feature spec -> a serving-ready Triton model folder.

    OUT/config.pbtxt            raw inputs (what clients send), the model's outputs, dynamic batching
    OUT/<version>/model.onnx    the estimator converted to ONNX; its input is the spec's output tensor
    OUT/<version>/features.json the spec, so the server computes that tensor with the training kernel
    OUT/<version>/validation.json  held-out raw rows and the outputs onnxruntime gives for them offline
    OUT/<version>/drift_reference.json  those outputs' distribution: the server's prediction-drift reference

A one-input estimator (every scikit-learn model, XGBoost, LightGBM) takes one matrix, so the spec must have
exactly one output tensor (fit it with ``outputs: {dense: float32}``). Classifiers are converted without
the ZipMap operator: outputs ``label`` ([batch]) and ``probabilities`` ([batch, classes]) are plain tensors
a v2 client can read; regressors give ``variable``. scikit-learn estimators and Pipelines are converted by
skl2onnx, XGBoost and LightGBM by onnxmltools.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import validation
from .spec import FeatureSpec

# Opsets every onnxruntime release since 1.14 runs; trees need the ai.onnx.ml domain.
DEFAULT_OPSET = 17
ML_OPSET = 3
DEFAULT_ROWS = 64
DEFAULT_MAX_BATCH_SIZE = 64
EXTRA_HINT = "pip install 'skewless[export]'"
# Raw spec dtype -> Triton config type: the server's wire types for raw inputs (server/features/stage.py).
RAW_CONFIG_TYPES = {"float": "TYPE_FP64", "int": "TYPE_INT64", "bool": "TYPE_BOOL", "string": "TYPE_STRING"}


class ExportError(ValueError):
    """The estimator, spec or data cannot make a model folder; the message says what to change."""


@dataclass
class ExportResult:
    """Where the folder was written and what it holds."""

    directory: Path
    version_dir: Path
    inputs: list[str]
    outputs: list[str]
    rows: int
    complete_rows: int
    # Largest |onnx - estimator| over the validation rows (probabilities or predictions), or None.
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)


def _need(module: str, purpose: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{purpose} needs the '{module.split('.')[0]}' package: {EXTRA_HINT}") from None


def load_estimator(path: str | Path) -> Any:
    """A fitted estimator saved with joblib or pickle. Unpickling runs code: load only trusted files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        import joblib
    except ImportError:
        joblib = None
    try:
        if joblib is not None:
            return joblib.load(path)
        with path.open("rb") as fh:
            return pickle.load(fh)  # noqa: S301 - the user's own model file, as joblib would
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything, e.g. a module that is not installed
        raise ExportError(f"cannot load the estimator {path}: {type(exc).__name__}: {exc}") from None


def family(estimator: Any) -> str:
    """'xgboost', 'lightgbm' or 'sklearn': which converter handles the estimator."""
    root = type(estimator).__module__.split(".")[0]
    return root if root in ("xgboost", "lightgbm") else "sklearn"


def _is_classifier(estimator: Any) -> bool:
    if getattr(estimator, "_estimator_type", None) == "classifier":
        return True
    tags = getattr(estimator, "__sklearn_tags__", None)
    try:
        return tags is not None and tags().estimator_type == "classifier"
    except Exception:  # noqa: BLE001 - an estimator outside scikit-learn's tag protocol
        return False


def _classifiers(estimator: Any) -> list[Any]:
    """Every classifier inside ``estimator`` (itself, pipeline steps, nested params) except pipelines."""
    found: list[Any] = []
    todo = [estimator]
    seen: set[int] = set()
    while todo:
        est = todo.pop()
        if id(est) in seen:
            continue
        seen.add(id(est))
        if hasattr(est, "steps"):
            todo.extend(step for _, step in est.steps if hasattr(step, "fit"))
            continue
        if _is_classifier(est):
            found.append(est)
        get_params = getattr(est, "get_params", None)
        if get_params is not None:
            todo.extend(v for v in get_params(deep=False).values() if hasattr(v, "fit") and not isinstance(v, type))
    return found


def _input_tensor(spec: FeatureSpec, estimator: Any) -> tuple[str, str, int]:
    if len(spec.outputs) != 1:
        raise ExportError(f"a one-input model takes one matrix, but the spec has outputs {list(spec.output_names)}; "
                          "fit the spec with a single output, e.g. 'outputs: {dense: float32}'")
    t = spec.outputs[0]
    n_in = getattr(estimator, "n_features_in_", None)
    if n_in is not None and int(n_in) != t.width:
        raise ExportError(f"the estimator was fitted on {int(n_in)} columns, but the spec's output '{t.name}' has "
                          f"{t.width}: train it on 'skewless transform' output of this spec")
    return t.name, t.dtype, t.width


def convert(estimator: Any, spec: FeatureSpec, opset: int = DEFAULT_OPSET) -> Any:
    """The estimator as an ONNX ModelProto whose one input is the spec's output tensor."""
    name, dtype, width = _input_tensor(spec, estimator)
    fam = family(estimator)
    classifier = _is_classifier(estimator)
    if fam == "sklearn":
        inner = [type(step).__name__ for _, step in getattr(estimator, "steps", []) if family(step) != "sklearn"]
        if inner:
            raise ExportError(f"a Pipeline holding {inner} cannot be converted in one piece; the spec already "
                              "prepares the matrix, so export the bare model")
        skl2onnx = _need("skl2onnx", "converting a scikit-learn model")
        types = _need("skl2onnx.common.data_types", "converting a scikit-learn model")
        tensor_type = {"float32": types.FloatTensorType, "float64": types.DoubleTensorType,
                       "int64": types.Int64TensorType, "int32": types.Int32TensorType}[dtype]
        options = {id(c): {"zipmap": False} for c in _classifiers(estimator)}
        try:
            model = skl2onnx.convert_sklearn(estimator, initial_types=[(name, tensor_type([None, width]))],
                                             target_opset={"": opset, "ai.onnx.ml": ML_OPSET},
                                             options=options or None)
        except (RuntimeError, NameError, TypeError, ValueError) as exc:
            raise ExportError(f"skl2onnx cannot convert {type(estimator).__name__}: {exc}") from None
    else:
        onnxmltools = _need("onnxmltools", f"converting a {fam} model")
        types = _need("onnxmltools.convert.common.data_types", f"converting a {fam} model")
        tensor_type = {"float32": types.FloatTensorType, "float64": types.DoubleTensorType}.get(dtype)
        if tensor_type is None:
            raise ExportError(f"{fam} models take a float matrix, but the spec's output '{name}' is {dtype}")
        initial = [(name, tensor_type([None, width]))]
        # onnxmltools stops at an older opset than skl2onnx: ask for at most what it supports.
        ex = _need("onnxmltools.convert.common.onnx_ex", f"converting a {fam} model")
        opset = min(opset, ex.get_maximum_opset_supported())
        try:
            if fam == "xgboost":
                model = onnxmltools.convert_xgboost(estimator, initial_types=initial, target_opset=opset)
            else:
                kw = {"zipmap": False} if classifier else {}
                model = onnxmltools.convert_lightgbm(estimator, initial_types=initial, target_opset=opset, **kw)
        except (RuntimeError, NameError, TypeError, ValueError, AttributeError) as exc:
            raise ExportError(f"onnxmltools cannot convert {type(estimator).__name__}: {exc}") from None
    return model


# ---- running and checking ---------------------------------------------------------------------------

def _session(model_bytes: bytes) -> Any:
    ort = _need("onnxruntime", "running the converted model (install the cpu or gpu extra)")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def run_model(model_bytes: bytes, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's outputs for ``tensors`` (onnxruntime's CPU provider: what the validation file records)."""
    sess = _session(model_bytes)
    names = [o.name for o in sess.get_outputs()]
    feeds = {i.name: tensors[i.name] for i in sess.get_inputs()}
    return {n: np.asarray(v) for n, v in zip(names, sess.run(names, feeds), strict=True)}


def _estimator_diff(estimator: Any, matrix: np.ndarray, outputs: Mapping[str, np.ndarray]) -> float | None:
    """Largest |onnx - estimator| on the validation rows: a converter sanity check (float32 vs float64)."""
    try:
        if _is_classifier(estimator) and "probabilities" in outputs and hasattr(estimator, "predict_proba"):
            ref, got = estimator.predict_proba(matrix), outputs["probabilities"]
        elif not _is_classifier(estimator) and len(outputs) == 1:
            ref, got = estimator.predict(matrix), next(iter(outputs.values()))
        else:
            return None
        return float(np.max(np.abs(np.asarray(ref, np.float64).reshape(got.shape) - got), initial=0.0))
    except Exception:  # noqa: BLE001 - a diagnostic only; the folder is still right
        return None


# ---- data -------------------------------------------------------------------------------------------

def _raw_table(data: Any, spec: FeatureSpec, rows: int) -> Any:
    """The first ``rows`` rows of the spec's raw inputs as a pyarrow Table in the spec's dtypes."""
    pa = _need("pyarrow", "reading held-out rows")
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    elif not isinstance(data, pa.Table):
        if hasattr(data, "iloc"):  # pandas
            data = pa.Table.from_pandas(data, preserve_index=False)
        elif isinstance(data, Mapping):
            data = pa.table({k: pa.array(list(v) if isinstance(v, np.ndarray) and v.dtype == object else v)
                             for k, v in data.items() if k in spec.input_names})
        else:
            raise ExportError(f"held-out rows must be a pyarrow Table, a DataFrame or a mapping, got {type(data)}")
    absent = [n for n in spec.input_names if n not in data.column_names]
    if absent:
        raise ExportError(f"the held-out data lacks the spec's raw input(s) {absent}")
    if data.num_rows == 0:
        raise ExportError("the held-out data has no rows")
    target = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}
    cols = {}
    for t in spec.inputs:
        col = data.column(t.name).slice(0, rows).combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if t.dtype in target and col.type != target[t.dtype]:
            try:
                col = col.cast(target[t.dtype])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ExportError(f"held-out column {t.name!r} is {col.type}, not {t.dtype}: {exc}") from None
        cols[t.name] = col
    return pa.table(cols)


# ---- the folder -------------------------------------------------------------------------------------

_ONNX_CONFIG_TYPES = {1: "TYPE_FP32", 11: "TYPE_FP64", 7: "TYPE_INT64", 6: "TYPE_INT32", 8: "TYPE_STRING",
                      9: "TYPE_BOOL"}


def _save_drift_reference(outputs: Mapping[str, np.ndarray], version_dir: Path) -> None:
    """The held-out outputs' distribution as the version's prediction-drift reference (the server reads it
    under ``skewless.prediction_reference: auto`` instead of learning one from the first requests served).
    String outputs (class names) have no drift domain and are left out; none numeric: no file."""
    import json

    from skewless.server.telemetry.reference import prediction_reference_document

    numeric = {n: a for n, a in outputs.items() if np.asarray(a).dtype.kind in "fiub"}
    if numeric:
        doc = prediction_reference_document(numeric)
        (version_dir / "drift_reference.json").write_text(json.dumps(doc) + "\n")


def config_text(name: str, spec: FeatureSpec, model: Any, max_batch_size: int) -> str:
    """config.pbtxt: the raw inputs clients send, the model's outputs, dynamic batching."""
    from google.protobuf import text_format

    from skewless.protos import model_config_pb2 as mc

    cfg = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    for t in spec.inputs:
        cfg.input.add(name=t.name, data_type=mc.DataType.Value(RAW_CONFIG_TYPES[t.dtype]), dims=[1])
    for out in model.graph.output:
        ttype = out.type.tensor_type
        if ttype.elem_type not in _ONNX_CONFIG_TYPES:
            raise ExportError(f"model output '{out.name}' has an ONNX element type ({ttype.elem_type}) the server "
                              "does not serve")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim][1:]
        f = cfg.output.add(name=out.name, data_type=mc.DataType.Value(_ONNX_CONFIG_TYPES[ttype.elem_type]))
        if dims:
            f.dims.extend(dims)
        else:  # a [batch] tensor: [1] to clients, as Triton's onnxruntime backend shows it
            f.dims.append(1)
            f.reshape.SetInParent()

    def block(key: str, fields: Any) -> str:
        return f"{key} [\n" + ",\n".join(f"  {{ {text_format.MessageToString(f, as_one_line=True)} }}"
                                         for f in fields) + "\n]\n"

    head = mc.ModelConfig(name=cfg.name, platform=cfg.platform, max_batch_size=cfg.max_batch_size)
    return ("# Written by 'skewless export'. Clients send the raw inputs of features.json; the server computes\n"
            f"# the model's '{spec.outputs[0].name}' tensor from them with the kernel of 'skewless transform'.\n"
            "# validation.json beside model.onnx holds held-out rows and the outputs they must score.\n"
            + text_format.MessageToString(head) + block("input", cfg.input) + block("output", cfg.output)
            + "dynamic_batching { }\n")


def export(estimator: Any, spec: FeatureSpec, data: Any, out_dir: str | Path, *, rows: int = DEFAULT_ROWS,
           version: int = 1, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, opset: int = DEFAULT_OPSET,
           force: bool = False) -> ExportResult:
    """Convert ``estimator`` and write the model folder ``out_dir`` (its name is the model's name)."""
    out_dir = Path(out_dir)
    name = out_dir.resolve().name
    if rows < 1 or version < 1 or max_batch_size < 1:
        # max_batch_size 0 would make every tensor's batch dimension explicit; a feature model always batches.
        raise ExportError("rows, version and max_batch_size must be >= 1")
    version_dir = out_dir / str(version)
    if version_dir.exists() and not force:
        raise ExportError(f"{version_dir} exists (choose another --version, or --force to replace it)")
    model = convert(estimator, spec, opset)
    model_bytes = model.SerializeToString()

    table = _raw_table(data, spec, rows)
    tensors = spec.transform(table)
    try:
        outputs = run_model(model_bytes, tensors)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        raise ExportError(f"onnxruntime cannot run the converted model: {exc}") from None
    raw = {t.name: (t.dtype, table.column(t.name).to_pylist()) for t in spec.inputs}
    doc = validation.build(raw, tensors, outputs, spec.sha256, hashlib.sha256(model_bytes).hexdigest())
    diff = _estimator_diff(estimator, tensors[spec.outputs[0].name], outputs)

    if version_dir.exists():
        shutil.rmtree(version_dir)
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(model_bytes)
    spec.save(version_dir / "features.json")
    validation.save(doc, version_dir / validation.VALIDATION_FILE)
    _save_drift_reference(outputs, version_dir)
    (out_dir / "config.pbtxt").write_text(config_text(name, spec, model, max_batch_size))
    return ExportResult(out_dir, version_dir, list(spec.input_names), list(outputs), table.num_rows,
                        len(validation.complete_rows(doc)), diff)
