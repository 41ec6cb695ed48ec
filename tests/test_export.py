"""``skewless export``: fit -> train a one-input scikit-learn model -> model folder -> real server.

A spec fitted on a table with nulls in every raw column type feeds one float32 ``dense`` tensor; the
exported folder is served by a real ``skewless serve`` and scored over tritonclient gRPC. Rows without
nulls, and rows missing only a float (sent as NaN), must score bit-equal to validation.json (the wire has no
other nulls yet: issue 24's companion inputs come later); every row, nulls included, must reproduce
validation.json offline through transform + onnxruntime.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
from helpers import RPC_TIMEOUT
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skewless.native import validation
from skewless.native.cli import main as cli_main
from skewless.native.export import ExportError, export
from skewless.native.fit import fit
from skewless.native.spec import FeatureSpec
from skewless.protos import model_config_pb2 as mc
from skewless.server.models.config import parse_config
from skewless.server.telemetry.reference import read_prediction_reference

CONFIG = {
    "outputs": {"dense": "float32"},
    "features": [
        {"name": "amount", "impute": "median", "log1p": True, "scale": "standard", "missing_indicator": True},
        {"name": "amount_q", "input": "amount", "bucketize": {"quantiles": 4}, "encode": "onehot"},
        {"name": "n_items", "impute": 0, "scale": "minmax"},
        {"name": "weekend", "impute": 0},
        {"name": "country", "kind": "vocabulary", "top_k": 4, "oov_buckets": 1, "encode": "onehot"},
        {"name": "merchant", "kind": "hash", "buckets": 8, "seed": 2, "encode": "onehot"},
        {"name": "user", "kind": "hash", "buckets": 1000, "seed": 4},
        {"name": "country_x_weekend", "kind": "cross", "inputs": ["country", "weekend"], "buckets": 6,
         "encode": "onehot"},
    ],
}
RAW_TYPES = {"amount": "FP64", "n_items": "INT64", "weekend": "BOOL", "country": "BYTES", "merchant": "BYTES",
             "user": "INT64"}


def make_table(n: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    """Raw rows with nulls in every column (an Arrow null, and NaN for the float) and a label."""
    rng = np.random.default_rng(seed)

    def holes(values: list, p: float = 0.08) -> list:
        return [None if rng.random() < p else v for v in values]

    amount = rng.lognormal(3, 1, n)
    n_items = rng.integers(0, 9, n)
    weekend = rng.random(n) < 0.3
    country = rng.choice(["US", "DE", "FR", "JP", "BR", "Ω"], n)
    merchant = [f"m{k}" for k in rng.integers(0, 30, n)]
    user = rng.integers(0, 5000, n)
    score = 0.02 * amount + 0.3 * n_items - 1.5 * weekend + (country == "DE") + rng.normal(0, 1, n)
    amount_col = amount.tolist()
    for i in np.nonzero(rng.random(n) < 0.05)[0]:
        amount_col[i] = float("nan")
    table = pa.table({
        "amount": pa.array(holes(amount_col), pa.float64()),
        "n_items": pa.array(holes(n_items.tolist()), pa.int64()),
        "weekend": pa.array(holes(weekend.tolist()), pa.bool_()),
        "country": pa.array(holes(country.tolist()), pa.string()),
        "merchant": pa.array(holes(merchant), pa.string()),
        "user": pa.array(holes(user.tolist()), pa.int64()),
    })
    return table, (score > np.median(score)).astype(np.int64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A LogisticRegression exported through the CLI: (repo, folder, spec, estimator)."""
    work = tmp_path_factory.mktemp("export")
    train, y = make_table(800, seed=1)
    holdout, _ = make_table(60, seed=2)
    spec = fit(CONFIG, train)
    spec_path = work / "features.json"
    spec.save(spec_path)
    clf = LogisticRegression(max_iter=1000).fit(spec.transform(train)["dense"], y)
    joblib.dump(clf, work / "model.joblib")
    pq.write_table(holdout, work / "holdout.parquet")
    folder = work / "repo" / "fraud"
    rc = cli_main(["export", "--estimator", str(work / "model.joblib"), "--spec", str(spec_path),
                   "--data", str(work / "holdout.parquet"), "--out", str(folder), "--rows", "60"])
    assert rc == 0
    return work / "repo", folder, spec, clf


def _replay(doc: dict, version_dir: Path) -> tuple[dict, dict]:
    """transform + onnxruntime on validation.json's raw rows: (feature tensors, model outputs)."""
    spec = FeatureSpec.load(version_dir / "features.json")
    tensors = spec.transform(validation.raw_table(doc))
    sess = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return tensors, dict(zip(names, sess.run(names, tensors), strict=True))


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(np.uint32) if a.dtype == np.float32 else a.view(np.uint64) if a.dtype == np.float64 else a


def test_folder_is_what_the_server_loads(exported):
    _, folder, spec, _ = exported
    assert sorted(p.name for p in (folder / "1").iterdir()) == [
        "drift_reference.json", "features.json", "model.onnx", "validation.json"]
    # the held-out outputs' distribution: the server's prediction-drift reference (skewless.prediction_reference auto)
    drift = read_prediction_reference(json.loads((folder / "1" / "drift_reference.json").read_text()))
    assert set(drift) == {"label", "probabilities"}
    held_out = validation.load(folder / "1" / "validation.json")["outputs"]["probabilities"]["shape"][0]
    assert drift["probabilities"]["rows"] == held_out
    assert FeatureSpec.load(folder / "1" / "features.json").sha256 == spec.sha256
    cfg = parse_config((folder / "config.pbtxt").read_text(), "config.pbtxt")
    assert cfg.name == "fraud" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 64
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == [
        (n, {"BYTES": "TYPE_STRING"}.get(RAW_TYPES[n], f"TYPE_{RAW_TYPES[n]}"), [1]) for n in spec.input_names]
    outs = {o.name: o for o in cfg.output}
    assert set(outs) == {"label", "probabilities"}  # no ZipMap: plain tensors a v2 client reads
    assert list(outs["probabilities"].dims) == [2] and list(outs["label"].dims) == [1]
    assert outs["label"].HasField("reshape")


def test_validation_replays_offline_bit_equal_nulls_included(exported):
    _, folder, spec, clf = exported
    doc = validation.load(folder / "1" / "validation.json")
    assert doc["rows"] == 60 and doc["spec_sha256"] == spec.sha256
    complete = validation.complete_rows(doc)
    assert 5 <= complete.size < 60  # both kinds of rows are there
    for name in spec.input_names:  # nulls of every raw type survived the round trip
        assert None in doc["inputs"][name]["values"], name
    tensors, outputs = _replay(doc, folder / "1")
    assert validation.tensor_digest(tensors["dense"]) == doc["tensors"]["dense"]["sha256"]
    for name, got in outputs.items():
        want = validation.output_array(doc["outputs"][name])
        assert want.dtype == got.dtype and want.shape == got.shape
        np.testing.assert_array_equal(_bits(got), _bits(want))
    # the converter agrees with scikit-learn itself (float32 graph vs float64 estimator: close, not equal)
    ref = clf.predict_proba(tensors["dense"])
    np.testing.assert_allclose(outputs["probabilities"], ref, atol=1e-5)


def test_served_rows_without_nulls_score_bit_equal(exported, start_server):
    repo, folder, spec, _ = exported
    doc = validation.load(folder / "1" / "validation.json")
    values = {n: validation.raw_values(doc["inputs"][n]) for n in spec.input_names}
    complete = validation.complete_rows(doc)
    # A NaN in an FP64 input is missing on the wire today, so rows missing only a float value can be sent too.
    float_gaps = np.array([i for i in range(doc["rows"]) if i not in set(complete.tolist()) and all(
        values[n][i] is not None for n in spec.input_names if RAW_TYPES[n] != "FP64")])
    assert complete.size and float_gaps.size
    want = {n: validation.output_array(doc["outputs"][n]) for n in ("label", "probabilities")}
    np_types = {"FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_, "BYTES": object}
    server = start_server(repo)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        meta = client.get_model_metadata("fraud", as_json=True)
        # each raw input, then its optional NAME__missing companion (issue 24's missing values on the wire)
        assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
            **RAW_TYPES, **{f"{name}__missing": "BOOL" for name in RAW_TYPES}}
        for batch in (complete, complete[:1], complete[-3:], float_gaps, float_gaps[:1]):
            inputs = []
            for name in spec.input_names:
                dt = RAW_TYPES[name]
                col = [np.nan if values[name][i] is None else values[name][i] for i in batch]
                inp = grpcclient.InferInput(name, [len(batch), 1], dt)
                inp.set_data_from_numpy(np.array(col, dtype=np_types[dt]).reshape(-1, 1))
                inputs.append(inp)
            reply = client.infer("fraud", inputs, client_timeout=RPC_TIMEOUT,
                                 outputs=[grpcclient.InferRequestedOutput(n) for n in ("label", "probabilities")])
            probs = reply.as_numpy("probabilities")
            assert probs.dtype == np.float32
            np.testing.assert_array_equal(_bits(probs), _bits(want["probabilities"][batch]))
            np.testing.assert_array_equal(reply.as_numpy("label").reshape(-1), want["label"][batch])
    finally:
        client.close()


def test_regressor_pipeline_exports_through_the_api(tmp_path):
    train, y = make_table(300, seed=5)
    spec = fit(CONFIG, train)
    x = spec.transform(train)["dense"]
    target = x[:, 0] * 2.0 + y
    model = make_pipeline(StandardScaler(), HistGradientBoostingRegressor(max_iter=15, random_state=0))
    model.fit(x, target)
    holdout, _ = make_table(20, seed=6)
    result = export(model, spec, holdout.to_pandas(), tmp_path / "price", rows=20)
    assert result.outputs == ["variable"] and result.rows == 20
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-3
    doc = validation.load(tmp_path / "price" / "1" / "validation.json")
    _, outputs = _replay(doc, tmp_path / "price" / "1")
    np.testing.assert_array_equal(_bits(outputs["variable"]), _bits(validation.output_array(
        doc["outputs"]["variable"])))
    with pytest.raises(ExportError, match="exists"):
        export(model, spec, holdout, tmp_path / "price")
    export(model, spec, holdout, tmp_path / "price", version=2)
    assert (tmp_path / "price" / "2" / "model.onnx").is_file()


def test_pipeline_classifier_with_string_classes(tmp_path):
    train, y = make_table(300, seed=3)
    spec = fit(CONFIG, train)
    x = spec.transform(train)["dense"]
    classes = np.array(["no", "yes", "maybe"])[y + (x[:, 0] > 1)]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, classes)
    result = export(model, spec, train, tmp_path / "m", rows=12)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5
    cfg = parse_config((tmp_path / "m" / "config.pbtxt").read_text(), "config.pbtxt")
    outs = {o.name: (mc.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output}
    assert outs == {"label": ("TYPE_STRING", [1]), "probabilities": ("TYPE_FP32", [3])}
    doc = validation.load(tmp_path / "m" / "1" / "validation.json")
    _, outputs = _replay(doc, tmp_path / "m" / "1")
    assert outputs["label"].tolist() == [v.decode() for v in validation.output_array(doc["outputs"]["label"])]
    assert outputs["label"].tolist() == model.predict(x[:12]).tolist()


def _boosted(package: str, tmp_path: Path, make_model) -> None:
    pytest.importorskip(package)
    pytest.importorskip("onnxmltools")
    train, y = make_table(300, seed=7)
    spec = fit(CONFIG, train)
    x = spec.transform(train)["dense"]
    model = make_model().fit(x, y)
    holdout, _ = make_table(20, seed=8)
    result = export(model, spec, holdout, tmp_path / package, rows=20)
    assert set(result.outputs) == {"label", "probabilities"}
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5
    cfg = parse_config((tmp_path / package / "config.pbtxt").read_text(), "config.pbtxt")
    assert {o.name: list(o.dims) for o in cfg.output}["probabilities"] == [2]
    doc = validation.load(tmp_path / package / "1" / "validation.json")
    _, outputs = _replay(doc, tmp_path / package / "1")
    np.testing.assert_array_equal(_bits(outputs["probabilities"]),
                                  _bits(validation.output_array(doc["outputs"]["probabilities"])))


def test_lightgbm_classifier_exports(tmp_path):
    def model():
        import lightgbm

        return lightgbm.LGBMClassifier(n_estimators=10, num_leaves=7, verbose=-1)

    _boosted("lightgbm", tmp_path, model)


def test_lightgbm_inside_a_pipeline_says_to_export_the_bare_model(tmp_path):
    lightgbm = pytest.importorskip("lightgbm")
    train, y = make_table(100, seed=7)
    spec = fit(CONFIG, train)
    model = make_pipeline(StandardScaler(), lightgbm.LGBMClassifier(n_estimators=2, verbose=-1))
    model.fit(spec.transform(train)["dense"], y)
    with pytest.raises(ExportError, match=r"Pipeline holding \['LGBMClassifier'\].*export the bare model"):
        export(model, spec, train, tmp_path / "m")


def test_xgboost_classifier_exports(tmp_path):
    def model():
        import xgboost

        return xgboost.XGBClassifier(n_estimators=10, max_depth=3)

    _boosted("xgboost", tmp_path, model)


def test_refusals_say_what_to_change(tmp_path, monkeypatch, capsys):
    train, y = make_table(200, seed=9)
    two = fit({"features": CONFIG["features"][:1] + [{"name": "user", "kind": "hash", "buckets": 10}]}, train)
    assert len(two.outputs) == 2  # dense + ids
    clf = LogisticRegression().fit(np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(ExportError, match=r"one matrix.*outputs: \{dense: float32\}"):
        export(clf, two, train, tmp_path / "m")
    spec = fit(CONFIG, train)
    with pytest.raises(ExportError, match="fitted on 3 columns"):
        export(clf, spec, train, tmp_path / "m")
    good = LogisticRegression(max_iter=1000).fit(spec.transform(train)["dense"], y)
    with pytest.raises(ExportError, match="lacks the spec's raw input"):
        export(good, spec, train.drop_columns(["user"]), tmp_path / "m")
    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # as if the export extra were not installed
    with pytest.raises(ExportError, match=r"pip install 'skewless\[export\]'"):
        export(good, spec, train, tmp_path / "m")
    assert not (tmp_path / "m").exists()  # nothing half-written
    spec.save(tmp_path / "features.json")
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    for estimator in ("nope.joblib", "junk.joblib"):
        assert cli_main(["export", "--estimator", str(tmp_path / estimator), "--spec", str(tmp_path / "features.json"),
                         "--data", "y", "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("skewless export: error:") and "Traceback" not in err, err
