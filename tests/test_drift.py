"""Drift monitoring (server/telemetry): the churn example's real spec and model, real batches through
``ModelVersion.run_batch`` with the monitor installed as its ``batch_observer``, and ``skewless drift-report``
on a real served-feature log and on raw Parquet data."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skewless.examples.generate import churn_dataset, write_churn_model
from skewless.native.spec import FeatureSpec
from skewless.server.errors import ModelLoadError
from skewless.server.frontend.cli import build_parser
from skewless.server.models.config import parse_config
from skewless.server.models.version import ModelVersion
from skewless.server.telemetry.drift import DriftEvent, DriftMonitor
from skewless.server.telemetry.drift_report import drift_report
from skewless.server.telemetry.reference import feature_bins, prediction_reference_document

WINDOW = 2000
FAST = {"skewless.drift_window_rows": str(WINDOW), "skewless.drift_max_rows_per_s": "1e9",
        "skewless.drift_max_batches_per_s": "1e9",
        "skewless.drift_interval_s": "3600", "skewless.prediction_reference": f"learn:{WINDOW}"}


def params(values: dict[str, str]) -> str:
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in values.items())


@pytest.fixture(scope="module")
def churn_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("drift_churn")
    write_churn_model(d)
    return d / "churn"


@pytest.fixture(scope="module")
def spec(churn_dir) -> FeatureSpec:
    return FeatureSpec.load(churn_dir / "1" / "features.json")


def load(churn_dir: Path, tmp_path: Path, extra: dict[str, str], files: dict[str, str] | None = None
         ) -> ModelVersion:
    vdir = tmp_path / "churn" / "1"
    vdir.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "features.json"):
        (vdir / name).write_bytes((churn_dir / "1" / name).read_bytes())
    for name, text in (files or {}).items():
        (vdir / name).write_text(text)
    cfg = (churn_dir / "config.pbtxt").read_text() + params(extra)
    return ModelVersion("churn", 1, vdir, parse_config(cfg, "test"), True, 4)


def raw(n: int, seed: int) -> dict[str, np.ndarray]:
    return {k: v for k, v in churn_dataset(n, seed=seed).items() if k != "churned"}


def serve(mv: ModelVersion, data: dict[str, np.ndarray], batch: int = 250) -> None:
    """Real batches: raw columns -> feature kernel -> onnxruntime -> batch observer."""
    n = len(data["region"])
    for i in range(0, n, batch):
        part = {k: v[i:i + batch] for k, v in data.items()}
        mv.run_batch([part], [len(part["region"])], mv.output_names)


def shift(data: dict[str, np.ndarray], inputs: set[str], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = dict(data)
    n = len(data["region"])
    if "monthly_charges" in inputs:  # numeric: 30% dearer
        out["monthly_charges"] = data["monthly_charges"] * 1.3
    if "region" in inputs:  # categorical (hashed): half the regions disappear
        out["region"] = np.array([f"region-{i:02d}" for i in rng.integers(0, 20, n)], dtype=object)
    if "payment_method" in inputs:  # categorical (vocabulary with an OOV bucket): 25% unseen values
        pm = data["payment_method"].copy()
        pm[rng.random(n) < 0.25] = "crypto"
        out["payment_method"] = pm
    return out


def monitor_for(mv: ModelVersion) -> DriftMonitor:
    monitor = DriftMonitor.for_version(mv)
    assert monitor is not None
    mv.batch_observer = monitor
    return monitor


def test_reference_bins_reproduce_the_training_counts(spec):
    """Served rows are binned in exactly the domain fit's references describe: the training data itself
    gives every reference count back, bin for bin, hashed and one-hot features included."""
    bins, skipped = feature_bins(spec)
    assert skipped == {}
    assert [b.name for b in bins] == [f["name"] for f in spec.features]
    report = drift_report(spec, [spec.transform(raw(2000, 2024))])  # churn_dataset's default seed: fit's data
    for f in report.features:
        assert f.served.tolist() == f.reference.tolist(), f.name
        assert f.psi == 0.0 and f.level == "ok"


@pytest.mark.parametrize("shifted", [{"monthly_charges", "region"}, {"payment_method"}])
def test_exactly_the_shifted_features_alert(churn_dir, spec, tmp_path, shifted):
    """One numeric and one hashed categorical input shifted: exactly their features alert. An unseen
    payment method (the vocabulary's OOV bucket) alerts payment_method and the cross built from it."""
    mv = load(churn_dir, tmp_path, FAST)
    monitor = monitor_for(mv)
    events: list[DriftEvent] = []
    monitor.subscribe(events.append)
    serve(mv, shift(raw(WINDOW, seed=11), shifted))
    assert monitor.flush()
    expected = {f["name"] for f in spec.features if set(f["inputs"]) & shifted}
    alerted = {name for name, v in monitor.feature_psi().items() if v >= 0.25}
    assert alerted == expected, monitor.feature_psi()
    assert {n for n in monitor.monitored("feature") if monitor.state(n) != "ok"} == expected
    assert {(e.kind, e.name, e.level) for e in events} == {("feature", n, "alert") for n in expected}
    assert all(e.top_bins and e.model == "churn" and e.version == 1 for e in events)
    if "payment_method" in shifted:
        ev = next(e for e in events if e.name == "payment_method")
        assert ev.top_bins[0].label == "<oov>"  # the OOV share is a bin of its own
        assert ev.top_bins[0].reference == 0 and ev.top_bins[0].served > 0.2
    monitor.close()


def test_false_alarm_rate_over_20_unshifted_windows(churn_dir, tmp_path):
    """Same-distribution data (fresh seeds) over 20 consecutive windows of 2000 rows: 20 x 11 PSI values
    (10 features, 1 output), none may reach warn (0.1).

    Measured with this setup over 200 windows (2200 values): 0 false alarms; largest PSI 0.042 (region,
    hashed, 22 bins: mean 0.024, p99 0.040), every other feature and the output below 0.026. That matches
    the expected PSI under no drift, about (bins - 1) * (1/window + 1/reference rows) ~= 0.02 for region,
    so 0.1 is ~2.5x the worst value seen."""
    mv = load(churn_dir, tmp_path, FAST)
    monitor = monitor_for(mv)
    serve(mv, raw(WINDOW, seed=100))  # the prediction reference is learnt from these outputs
    alarms, largest = 0, 0.0
    for w in range(20):
        serve(mv, raw(WINDOW, seed=200 + w))
        assert monitor.flush()
        values = {**monitor.feature_psi(), **monitor.prediction_psi()}
        assert len(values) == 11
        largest = max(largest, *values.values())
        alarms += sum(v >= 0.1 for v in values.values())
    assert alarms == 0, largest
    assert largest < 0.08
    assert monitor.counters()["dropped_batches"] == 0
    monitor.close()


def test_prediction_drift_learnt_and_from_a_file(churn_dir, tmp_path):
    """The churn probability's histogram alarms when the customers change, against a reference learnt from
    the first outputs and against the same kind of reference written to a file beside the model."""
    risky = raw(WINDOW, seed=31)
    risky["contract"] = np.full(WINDOW, "month-to-month", dtype=object)
    risky["support_calls"] = risky["support_calls"] + 3

    mv = load(churn_dir, tmp_path / "learn", FAST)
    monitor = monitor_for(mv)
    assert monitor.prediction_psi() == {} and monitor.learnt_prediction_reference() is None
    serve(mv, raw(WINDOW, seed=30))
    serve(mv, raw(WINDOW, seed=32))
    assert monitor.flush()
    assert monitor.prediction_psi()["probabilities"] < 0.1
    learnt = monitor.learnt_prediction_reference()
    assert learnt["outputs"]["probabilities"]["domain"] == "histogram"
    serve(mv, risky)
    assert monitor.flush()
    assert monitor.prediction_psi()["probabilities"] >= 0.25
    assert monitor.state("probabilities") == "alert"
    monitor.close()

    # a reference file: outputs on a validation set, in the documented format
    spec = FeatureSpec.load(churn_dir / "1" / "features.json")
    probs = mv.runtime.run_sync(["probabilities"], spec.transform(raw(WINDOW, seed=33)))[0]
    doc = json.dumps(prediction_reference_document({"probabilities": probs}))
    mv2 = load(churn_dir, tmp_path / "file", {**FAST, "skewless.prediction_reference": "predictions.json"},
               {"predictions.json": doc})
    monitor = monitor_for(mv2)
    serve(mv2, raw(WINDOW, seed=34))
    assert monitor.flush()
    assert monitor.prediction_psi()["probabilities"] < 0.1
    serve(mv2, risky)
    assert monitor.flush()
    assert monitor.state("probabilities", kind="prediction") == "alert"
    monitor.close()


def test_one_warning_per_crossing_and_recovery(churn_dir, tmp_path, caplog):
    mv = load(churn_dir, tmp_path, {**FAST, "skewless.prediction_reference": "off"})
    monitor = monitor_for(mv)
    events: list[DriftEvent] = []
    monitor.subscribe(events.append)
    shifted = shift(raw(WINDOW, seed=41), {"monthly_charges"})
    with caplog.at_level(logging.INFO, logger="skewless.server.telemetry.drift"):
        for _ in range(2):  # still drifted on the second recompute: no second warning
            serve(mv, shifted)
            assert monitor.flush()
        serve(mv, raw(WINDOW, seed=42))  # the window turns over to undrifted rows
        assert monitor.flush()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "monthly_charges" in warnings[0].getMessage()
    assert "top bins" in warnings[0].getMessage()
    assert [(e.name, e.previous, e.level) for e in events] == [
        ("monthly_charges", "ok", "alert"), ("monthly_charges", "alert", "ok")]
    monitor.close()
    monitor.close()  # idempotent
    mv.run_batch([shifted], [WINDOW], mv.output_names)  # after close: ignored
    assert monitor.counters()["sampled_rows"] == 3 * WINDOW


def test_a_full_queue_drops_and_counts_without_blocking(churn_dir, spec, tmp_path):
    """A subscriber that blocks stalls the worker; the batch thread never waits for it and counts
    what it drops."""
    mv = load(churn_dir, tmp_path, {**FAST, "skewless.drift_window_rows": "200", "skewless.drift_interval_s": "0",
                                    "skewless.drift_queue": "4"})
    monitor = DriftMonitor.for_version(mv)
    entered, release = threading.Event(), threading.Event()

    def slow(_event: DriftEvent) -> None:
        entered.set()
        release.wait(30)

    monitor.subscribe(slow)
    data = shift(raw(200, seed=51), {"monthly_charges"})
    inputs = spec.transform(data)
    outputs = mv.runtime.run_sync(mv.output_names, inputs)
    monitor(inputs, mv.output_names, outputs)
    assert entered.wait(10)
    # The worker is stalled until release is set below: a batch thread that waited on the full queue would
    # never get through these 50 calls. They return, and the batches past the queue's room are counted.
    for _ in range(50):
        monitor(inputs, mv.output_names, outputs)
    assert monitor.counters()["dropped_batches"] == 46  # 4 queued behind the stalled worker
    assert monitor.counters()["sampled_batches"] == 5
    release.set()
    assert monitor.flush()
    monitor.close()


def test_rows_per_second_cap_and_copies(churn_dir, spec, tmp_path):
    """The token bucket keeps at most max_rows_per_s (1 s burst); kept rows are copies, so the feature
    stage reusing its buffers does not change what the worker bins."""
    mv = load(churn_dir, tmp_path, {**FAST, "skewless.drift_max_rows_per_s": "300"})
    monitor = DriftMonitor.for_version(mv)
    inputs = spec.transform(raw(250, seed=61))
    outputs = mv.runtime.run_sync(mv.output_names, inputs)
    for _ in range(4):
        monitor(inputs, mv.output_names, outputs)
    assert 300 <= monitor.counters()["sampled_rows"] < 320
    for arr in (*inputs.values(), *outputs):
        arr[...] = 0
    assert monitor.flush()
    monitor.close()


def test_batches_per_second_cap(churn_dir, spec, tmp_path):
    """At most max_batches_per_s batches are looked at: the rest return after one clock comparison."""
    mv = load(churn_dir, tmp_path, {**FAST, "skewless.drift_max_batches_per_s": "5"})
    monitor = DriftMonitor.for_version(mv)
    inputs = spec.transform(raw(4, seed=62))
    outputs = mv.runtime.run_sync(mv.output_names, inputs)
    started = time.monotonic()
    while time.monotonic() - started < 0.5:
        monitor(inputs, mv.output_names, outputs)
    assert 1 <= monitor.counters()["sampled_batches"] <= 4  # 5/s over 0.5 s, the first one at once
    monitor.close()


@pytest.mark.parametrize("extra,message", [
    ({"skewless.drift_warn": "abc"}, "'skewless.drift_warn' must be a float in (0, inf], got 'abc'"),
    ({"skewless.drift_warn": "0.3", "skewless.drift_alert": "0.2"}, "must be below 'skewless.drift_alert'"),
    ({"skewless.drift_window_rows": "0"}, "'skewless.drift_window_rows' must be a int in [1, inf]"),
    ({"skewless.drift_sample_rate": "1.5"}, "'skewless.drift_sample_rate' must be a float in (0, 1]"),
    ({"skewless.prediction_reference": "learn:0"}, "must be 'auto', 'learn:N' with N >= 1"),
    ({"skewless.prediction_reference": "nope.json"}, "cannot use the prediction reference"),
    ({"skewless.drift": "yes"}, "'skewless.drift' must be 0 or 1"),
])
def test_bad_config_fails_the_load(churn_dir, tmp_path, extra, message):
    mv = load(churn_dir, tmp_path, extra)
    with pytest.raises(ModelLoadError) as info:
        DriftMonitor.for_version(mv)
    assert message in str(info.value)
    assert "model 'churn' version 1" in str(info.value)


def test_a_reference_file_for_the_wrong_domain_fails_the_load(churn_dir, tmp_path):
    doc = prediction_reference_document({"probabilities": np.array([0, 1, 1, 0], dtype=np.int64)})
    mv = load(churn_dir, tmp_path, {"skewless.prediction_reference": "p.json"}, {"p.json": json.dumps(doc)})
    with pytest.raises(ModelLoadError, match="is compared as 'histogram'"):
        DriftMonitor.for_version(mv)


def test_nothing_to_monitor(churn_dir, tmp_path):
    assert DriftMonitor.for_version(load(churn_dir, tmp_path / "a", {"skewless.drift": "0"})) is None
    mv = load(churn_dir, tmp_path / "b", {"skewless.prediction_reference": "off"})
    monitor = DriftMonitor.for_version(mv)
    assert monitor.monitored("prediction") == [] and len(monitor.monitored("feature")) == 10
    with pytest.raises(KeyError):
        monitor.state("probabilities")


def run_cli(*argv: str) -> int:
    args = build_parser().parse_args(["drift-report", *argv, "--no-progress"])
    return args.func(args)


def test_drift_report_cli_on_a_served_feature_log(churn_dir, spec, tmp_path, capsys):
    log_dir = tmp_path / "log"
    mv = load(churn_dir, tmp_path, {"skewless.feature_log_rate": "1", "skewless.feature_log_dir": str(log_dir)})
    serve(mv, shift(raw(1500, seed=71), {"monthly_charges", "region"}))
    mv.features.close()  # flushes the log's Parquet files
    out_json, out_png = tmp_path / "drift.json", tmp_path / "drift.png"
    assert run_cli("--spec", str(churn_dir / "1" / "features.json"), "--log", str(log_dir), "--json",
                   str(out_json), "--png", str(out_png), "--top", "3", "--fail-on", "alert") == 1
    table = capsys.readouterr().out
    assert "rows: 1500" in table
    first = [line.split()[0] for line in table.splitlines()[2:4]]
    assert set(first) == {"monthly_charges", "region"}
    report = json.loads(out_json.read_text())
    assert report["rows"] == 1500 and report["spec_sha256"] == spec.sha256
    levels = {f["name"]: f["level"] for f in report["features"]}
    assert {n for n, lv in levels.items() if lv != "ok"} == {"monthly_charges", "region"}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000


def test_drift_report_cli_on_raw_data(churn_dir, tmp_path, capsys):
    data = tmp_path / "train.parquet"
    pq.write_table(pa.table(raw(2000, seed=2024)), data)
    assert run_cli("--spec", str(churn_dir / "1" / "features.json"), "--data", str(data), "--fail-on",
                   "warn", "--json", str(tmp_path / "r.json")) == 0
    assert all(f["psi"] == 0.0 for f in json.loads((tmp_path / "r.json").read_text())["features"])
    assert run_cli("--spec", str(churn_dir / "1" / "features.json"), "--data", str(tmp_path / "none")) == 2
    assert "error" in capsys.readouterr().err
