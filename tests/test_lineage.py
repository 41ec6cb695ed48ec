"""Lineage end to end: reply ids in the prediction log and in traces, delayed labels joined late (after
rotation) and early (before the prediction is logged), live quality equal to scikit-learn's, drops counted.

One real server (subprocess) with the prediction log on, exporting traces to a real OTLP receiver; real
tritonclient for gRPC and HTTP, the real skewless.v1.Feedback RPC and the HTTP labels route."""

from __future__ import annotations

import json
import queue
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import infer, wait_until
from serverproc import ServerProcess
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, mean_squared_error, roc_auc_score
from test_metrics import families, scrape
from test_tracing import CHURN_X, Receiver, attrs, otel_env, traceparent

from skewless.protos import skewless_feedback_pb2 as fpb
from skewless.protos import skewless_feedback_pb2_grpc as fpb_grpc
from skewless.server.lineage import quality
from skewless.server.lineage.prediction_log import PredictionLog, PredictionLogSettings

pytestmark = pytest.mark.slow  # the slow tier: a server with the prediction log and an OTLP receiver, label joins after rotation

LOGGED = """
parameters { key: "skewless.prediction_log_rate" value { string_value: "1" } }
parameters { key: "skewless.task" value { string_value: "classification" } }
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.stop(0)


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("predictions")


@pytest.fixture(scope="module")
def server(make_repo, receiver, logdir) -> Iterator[ServerProcess]:
    from skewless.examples.generate import write_churn_model

    repo = make_repo("mlp")
    write_churn_model(repo)
    for name in ("mlp", "churn"):
        with open(repo / name / "config.pbtxt", "a") as f:
            f.write(LOGGED)
    proc = ServerProcess(repo, "--prediction-log", str(logdir), "--prediction-log-rotate-seconds", "0.3",
                         "--prediction-log-flush-seconds", "0.05",
                         env=otel_env(receiver.port, OTEL_TRACES_SAMPLER="always_on")).start()
    yield proc
    proc.assert_clean_exit()


def logged(logdir: Path, model: str, kind: str = "predictions"):
    files = sorted((logdir / model).glob(f"{kind}-*.parquet"))
    return pq.ParquetDataset(files).read() if files else None


def wait_logged(logdir: Path, model: str, ids: set[str], kind: str = "predictions") -> dict:
    found: dict = {}

    def ready() -> bool:
        t = logged(logdir, model, kind)
        found["table"] = t
        return t is not None and ids <= set(t.column("request_id").to_pylist())

    wait_until(ready, 10, f"{sorted(ids)} in the {kind} log of {model}")
    return found["table"]


def feedback(server: ServerProcess, model: str, labels: dict[str, list[float]]) -> fpb.SubmitLabelsResponse:
    with grpc.insecure_channel(server.grpc_url) as ch:
        req = fpb.SubmitLabelsRequest(model=model, labels=[fpb.Label(request_id=k, values=v)
                                                           for k, v in labels.items()])
        return fpb_grpc.FeedbackStub(ch).SubmitLabels(req, timeout=10)


def test_reply_ids_in_prediction_log_and_trace(server, receiver, logdir):
    from skewless.native.spec import FeatureSpec

    spec_hash = FeatureSpec.load(server.repository / "churn" / "1" / "features.json").sha256
    ids = []
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        header, trace_id, _ = traceparent()
        resp = infer(client, "churn", CHURN_X, headers={"traceparent": header}).get_response()
        assert resp.model_version == "1"
        assert resp.id.startswith("sk-")  # none sent: the server assigned one
        assert resp.parameters["skewless.feature_spec_hash"].string_param == spec_hash
        ids.append(resp.id)
        spans = receiver.wait_for(trace_id, 1)
        server_span = [s for s in spans if s.name == "infer churn"][0]
        assert attrs(server_span)["skewless.request.id"] == resp.id
        # the stream carries the same: the client's id kept, the reply parameter present
        results: queue.Queue = queue.Queue()
        client.start_stream(lambda result, error: results.put((result, error)))
        inputs = [grpcclient.InferInput(k, list(v.shape), "BYTES" if v.dtype == object else
                                        {"float64": "FP64", "int64": "INT64", "bool": "BOOL"}[v.dtype.name])
                  for k, v in CHURN_X.items()]
        for i, v in zip(inputs, CHURN_X.values(), strict=True):
            i.set_data_from_numpy(v)
        client.async_stream_infer("churn", inputs, request_id="stream-7")
        r, e = results.get(timeout=10)
        client.stop_stream()
        assert e is None
        sresp = r.get_response()
        assert sresp.id == "stream-7" and sresp.model_version == "1"
        assert sresp.parameters["skewless.feature_spec_hash"].string_param == spec_hash
        ids.append("stream-7")
        # mlp: no spec, no parameter; a fresh id per reply
        a = infer(client, "mlp", {"input": np.zeros((1, 32), np.float32)}).get_response()
        b = infer(client, "mlp", {"input": np.zeros((1, 32), np.float32)}).get_response()
        assert a.id and b.id and a.id != b.id and "skewless.feature_spec_hash" not in a.parameters
    http = httpclient.InferenceServerClient(server.rest_url)
    try:
        inputs = []
        for k, v in CHURN_X.items():
            i = httpclient.InferInput(k, list(v.shape), "BYTES" if v.dtype == object else
                                      {"float64": "FP64", "int64": "INT64", "bool": "BOOL"}[v.dtype.name])
            i.set_data_from_numpy(v, binary_data=False)
            inputs.append(i)
        hresp = http.infer("churn", inputs).get_response()
    finally:
        http.close()
    assert hresp["model_version"] == "1" and hresp["id"].startswith("sk-")
    assert hresp["parameters"]["skewless.feature_spec_hash"] == spec_hash
    ids.append(hresp["id"])
    table = wait_logged(logdir, "churn", set(ids))
    rows = table.to_pylist()
    mine = [r for r in rows if r["request_id"] == resp.id][0]
    assert mine["model_version"] == 1 and mine["feature_spec_hash"] == spec_hash and mine["shadow"] is False
    assert mine["tenure_months"] == 12.0 and mine["contract"] == b"month-to-month"
    assert mine["score"] == pytest.approx(resp_score(resp))


def resp_score(resp) -> float:
    return float(np.frombuffer(resp.raw_output_contents[0], np.float32)[-1])


def test_labels_late_after_rotation_and_early_before_logging(server, logdir):
    x = np.random.default_rng(1).random((3, 32), dtype=np.float32)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        late = infer(client, "mlp", {"input": x}, request_id="late-1").get_response()
        wait_logged(logdir, "mlp", {"late-1"})  # in a rotated file: the in-memory index no longer has it
        out = feedback(server, "mlp", {"late-1": [1, 0, 1]})
        assert (out.joined, out.pending, out.unknown) == (1, 0, 0)
        # early: the label comes first, waits, and joins once the prediction is logged
        out = feedback(server, "mlp", {"early-1": [0]})
        assert (out.joined, out.pending, out.unknown) == (0, 1, 0)
        infer(client, "mlp", {"input": x[:1]}, request_id="early-1")
    joined = wait_logged(logdir, "mlp", {"late-1", "early-1"}, "joined").to_pylist()
    late_rows = sorted((r["row"], r["label"], r["score"]) for r in joined if r["request_id"] == "late-1")
    scores = np.frombuffer(late.raw_output_contents[0], np.float32).reshape(3, 2)[:, 1]
    assert [r[:2] for r in late_rows] == [(0, 1.0), (1, 0.0), (2, 1.0)]
    assert [r[2] for r in late_rows] == pytest.approx(scores.tolist())
    assert [r["label"] for r in joined if r["request_id"] == "early-1"] == [0.0]
    # the HTTP route: bad input is a 400 with what was expected; unknown model a 404
    body = json.dumps({"labels": [{"id": "late-1"}]}).encode()
    req = urllib.request.Request(f"http://{server.rest_url}/v2/models/mlp/labels", body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and b"'value'" in err.value.read()
    with pytest.raises(grpc.RpcError) as rpc_err:
        feedback(server, "nope", {"x": [1]})
    assert rpc_err.value.code() == grpc.StatusCode.NOT_FOUND


def test_live_quality_equals_sklearn(server, logdir):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 32)).astype(np.float32)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        scores = []
        for i in range(4):
            r = infer(client, "mlp", {"input": x[i * 50:(i + 1) * 50]}, request_id=f"q-{i}").get_response()
            scores.append(np.frombuffer(r.raw_output_contents[0], np.float32).reshape(-1, 2)[:, 1])
    score = np.concatenate(scores).astype(np.float64)
    y = (rng.random(200) < score).astype(np.float64)  # labels correlated with the score
    labels = [{"id": f"q-{i}", "values": y[i * 50:(i + 1) * 50].tolist()} for i in range(4)]
    wait_logged(logdir, "mlp", {f"q-{i}" for i in range(4)})
    req = urllib.request.Request(f"http://{server.rest_url}/v2/models/mlp/labels",
                                 json.dumps({"labels": labels}).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read()) == {"joined": 4, "pending": 0, "unknown": 0, "duplicate": 0, "corrected": 0}
    # the joined log holds exactly these pairs; the live figures are computed over the model's recent pairs
    joined = wait_logged(logdir, "mlp", {f"q-{i}" for i in range(4)}, "joined").to_pylist()
    pairs = [(r["score"], r["label"]) for r in joined]
    s_all = np.array([p[0] for p in pairs])
    y_all = np.array([p[1] for p in pairs])
    fams = families(scrape(server))
    fig = {dict(k[1])["metric"]: v for k, v in fams["skewless_model_quality"].values.items()
           if dict(k[1])["window"] == "300s" and dict(k[1])["model"] == "mlp"}
    assert fig["n"] == len(pairs)
    assert fig["accuracy"] == pytest.approx(accuracy_score(y_all, s_all >= 0.5))
    assert fig["auc"] == pytest.approx(roc_auc_score(y_all, s_all))
    assert fig["log_loss"] == pytest.approx(log_loss(y_all, s_all))
    assert 0 <= fig["ece"] <= 1
    cov = {dict(k[1])["model"]: v for k, v in fams["skewless_label_coverage"].values.items()}
    assert 0 < cov["mlp"] <= 1


def test_quality_report_offline(server, logdir, tmp_path):
    import subprocess
    import sys

    wait_logged(logdir, "mlp", {"q-3"}, "joined")
    run = subprocess.run([sys.executable, "-m", "skewless.server.frontend.cli", "quality-report", str(logdir),
                          "--out", str(tmp_path), "--window", "60"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "quality-report" in run.stderr  # progress on stderr
    doc = json.loads((tmp_path / "quality.json").read_text())
    joined = latest(logged(logdir, "mlp", "joined").to_pylist())
    s_all = np.array([r["score"] for r in joined])
    y_all = np.array([r["label"] for r in joined])
    overall = doc["models"]["mlp"]["versions"]["1"]["overall"]
    assert doc["models"]["mlp"]["task"] == "classification" and overall["n"] == len(joined)
    assert overall["auc"] == pytest.approx(roc_auc_score(y_all, s_all))
    assert overall["log_loss"] == pytest.approx(log_loss(y_all, s_all))
    assert sum(w["n"] for w in doc["models"]["mlp"]["versions"]["1"]["windows"]) == len(joined)
    assert (tmp_path / "quality-mlp.png").stat().st_size > 1000


def latest(rows: list[dict]) -> list[dict]:
    """What a reader of joined-*.parquet takes: per (request id, row), the highest revision."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["request_id"], r["row"])
        if key not in best or r["revision"] > best[key]["revision"]:
            best[key] = r
    return list(best.values())


def label_counts(server: ServerProcess) -> dict[str, float]:
    fams = families(scrape(server))
    fam = fams.get("skewless_labels")
    return {} if fam is None else {dict(k[1])["outcome"]: v for k, v in fam.values.items()
                                   if k[0] == "skewless_labels_total"}


def quality_n(server: ServerProcess, model: str = "mlp") -> float:
    fams = families(scrape(server))
    fam = fams.get("skewless_model_quality")
    return next((v for k, v in (fam.values.items() if fam else ())
                 if dict(k[1]) == {"model": model, "version": "1", "window": "300s", "metric": "n"}), 0.0)


def post_labels(server: ServerProcess, model: str, labels: list[dict]) -> dict:
    req = urllib.request.Request(f"http://{server.rest_url}/v2/models/{model}/labels",
                                 json.dumps({"labels": labels}).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def refused_http(server: ServerProcess, model: str, labels: list[dict]) -> str:
    with pytest.raises(urllib.error.HTTPError) as err:
        post_labels(server, model, labels)
    assert err.value.code == 400
    return json.loads(err.value.read())["error"]


def test_labels_are_idempotent_per_request_and_row(server, logdir):
    """Retries change nothing, a different value corrects (replacing the old pair in live quality, written again
    with a higher revision), a count or value that does not fit is refused with why; over gRPC and HTTP, late
    (after rotation) and early (before the prediction is logged)."""
    x = np.random.default_rng(3).random((3, 32), dtype=np.float32)
    counts0, n0 = label_counts(server), quality_n(server)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        infer(client, "mlp", {"input": x}, request_id="idem-1")
    wait_logged(logdir, "mlp", {"idem-1"})  # rotated: the label is a late one
    first = feedback(server, "mlp", {"idem-1": [1, 0, 1]})
    assert (first.joined, first.duplicate, first.corrected) == (1, 0, 0)
    again = feedback(server, "mlp", {"idem-1": [1, 0, 1]})  # a client's retry
    assert (again.joined, again.duplicate, again.corrected) == (0, 1, 0)
    assert post_labels(server, "mlp", [{"id": "idem-1", "values": [1, 1, 1]}])["corrected"] == 1  # row 1: 0 -> 1
    assert post_labels(server, "mlp", [{"id": "idem-1", "row": 1, "value": 1}])["duplicate"] == 1
    with grpc.insecure_channel(server.grpc_url) as ch:  # gRPC names a row too: row 2, 1 -> 0
        out = fpb_grpc.FeedbackStub(ch).SubmitLabels(fpb.SubmitLabelsRequest(
            model="mlp", labels=[fpb.Label(request_id="idem-1", values=[0], row=2)]), timeout=10)
    assert (out.joined, out.duplicate, out.corrected) == (0, 0, 1)
    # refused, whole call, with the reason
    with pytest.raises(grpc.RpcError) as err:
        feedback(server, "mlp", {"idem-1": [1]})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has 3 rows and its label gives 1 value" in err.value.details() and "name the row" in err.value.details()
    assert "is a binary classifier" in refused_http(server, "mlp", [{"id": "idem-1", "values": [0.7, 1, 1]}])
    assert "there is no row 5" in refused_http(server, "mlp", [{"id": "idem-1", "row": 5, "value": 1}])
    # early: a named row's label waits for its prediction
    assert post_labels(server, "mlp", [{"id": "idem-early", "row": 1, "value": 0}])["pending"] == 1
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        infer(client, "mlp", {"input": x[:2]}, request_id="idem-early")
    joined = wait_logged(logdir, "mlp", {"idem-1", "idem-early"}, "joined").to_pylist()
    mine = sorted((r["request_id"], r["row"], r["revision"], r["label"]) for r in joined
                  if r["request_id"].startswith("idem-"))
    assert mine == [("idem-1", 0, 0, 1.0), ("idem-1", 1, 0, 0.0), ("idem-1", 1, 1, 1.0), ("idem-1", 2, 0, 1.0),
                    ("idem-1", 2, 1, 0.0), ("idem-early", 1, 0, 0.0)]
    fixed = {r["row"]: r for r in joined if r["request_id"] == "idem-1" and r["revision"] == 1}
    original = {r["row"]: r for r in joined if r["request_id"] == "idem-1" and r["revision"] == 0}
    assert all(fixed[i]["label_time"] > original[i]["label_time"] for i in fixed)  # the correction's own time
    counts = label_counts(server)
    assert {k: counts[k] - counts0.get(k, 0) for k in counts} == {
        "joined": 2, "duplicate": 2, "corrected": 2, "pending": 1, "refused": 3}
    assert quality_n(server) - n0 == 4  # one pair per labelled row: corrections replaced theirs
    cov = {dict(k[1])["model"]: v for k, v in families(scrape(server))["skewless_label_coverage"].values.items()}
    assert 0 < cov["mlp"] <= 1


def test_skew_check_reads_the_prediction_log(server, logdir):
    import subprocess
    import sys

    table = wait_logged(logdir, "churn", set())
    run = subprocess.run([sys.executable, "-m", "skewless.server.frontend.cli", "skew-check", "--log",
                          str(logdir / "churn"), "--spec", str(server.repository / "churn" / "1" / "features.json"),
                          "--json", "--no-progress"], capture_output=True, text=True, timeout=120)
    doc = json.loads(run.stdout)
    assert run.returncode == 0, run.stderr
    assert doc["rows"] >= table.num_rows >= 3  # every logged row's raw inputs transformed
    assert any("prediction log" in w for w in doc["warnings"])


def test_metrics_match_sklearn_with_ties_and_regression():
    rng = np.random.default_rng(3)
    s = np.round(rng.random(500), 1)  # many ties
    y = (rng.random(500) < s).astype(float)
    m = quality.metrics("classification", s, y)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["log_loss"] == pytest.approx(log_loss(y, np.clip(s, 1e-15, 1 - 1e-15)))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, s >= 0.5))
    t = rng.normal(size=300)
    p = t + rng.normal(scale=0.3, size=300)
    r = quality.metrics("regression", p, t)
    assert r["mae"] == pytest.approx(mean_absolute_error(t, p))
    assert r["rmse"] == pytest.approx(np.sqrt(mean_squared_error(t, p)))


def test_quality_breach_observer():
    mon = quality.QualityMonitor((60.0,))
    mon.configure("m", "classification", {"accuracy": 0.9})
    heard = []
    mon.on_breach(heard.append)
    for i in range(20):
        mon.add("m", 2, 0.9, float(i % 2), 1.0)  # half wrong
    mon.check()
    mon.check()  # one episode, one call
    assert len(heard) == 1 and heard[0].metric == "accuracy" and heard[0].version == 2
    assert heard[0].value == pytest.approx(0.5) and heard[0].threshold == 0.9 and heard[0].active
    for _ in range(400):
        mon.add("m", 2, 0.9, 1.0, 1.0)
    mon.check()  # back within the threshold: the episode ends, observers hear it once
    mon.check()
    assert len(heard) == 2 and not heard[1].active and heard[1].value > 0.9


def test_prediction_log_drops_counted_when_queue_full(tmp_path):
    from skewless.server.lineage.prediction_log import Record

    plog = PredictionLog(PredictionLogSettings(tmp_path, queue_size=2))
    rec = Record("r", 0, "m", 1, None, None, {"x": np.zeros((1, 1))}, ["y"], [np.zeros((1, 1))], 1, None)
    plog.queue.append(rec)
    plog.queue.append(rec)  # full; the writer thread is not started yet
    for _ in range(5):
        plog.offer(rec)
    assert plog.dropped == 5
    plog.close()
    files = list((tmp_path / "m").glob("predictions-*.parquet"))
    assert len(files) == 1 and pq.read_table(files[0]).num_rows == 2


def test_canary_quality_guardrail_compares_arms():
    import functools

    from skewless.server.shadow.canary import Canary
    from skewless.server.shadow.settings import CanaryGuardrails, CanarySettings

    mon = quality.QualityMonitor((600.0,))
    mon.configure("m", "classification")
    canary = Canary("m", CanarySettings(2, 0.5, CanaryGuardrails(min_labels=20, max_quality_drop=0.1)), 1)
    canary.quality = functools.partial(mon.by_arm, "m")
    for i in range(40):
        mon.add("m", 1, 0.9, 1.0, 1.0, "stable")  # always right
        mon.add("m", 2, 0.9 if i % 4 else 0.1, 1.0, 1.0, "candidate")  # right 3 times in 4
    reason = canary.check_quality()
    assert reason is not None and "accuracy 75.0%" in reason and "100.0%" in reason
    mon2 = quality.QualityMonitor((600.0,))
    mon2.configure("m", "classification")
    canary.quality = functools.partial(mon2.by_arm, "m")
    for _ in range(40):
        mon2.add("m", 1, 0.9, 1.0, 1.0, "stable")
        mon2.add("m", 2, 0.8, 1.0, 1.0, "candidate")
    assert canary.check_quality() is None


def test_pending_label_joined_at_rotation_when_index_is_full(tmp_path):
    from skewless.server.hooks import ALL_ROWS
    from skewless.server.lineage.labels import LabelCounts, LabelJoin
    from skewless.server.lineage.prediction_log import Record

    join = LabelJoin(tmp_path, max_index_rows=1)
    plog = PredictionLog(PredictionLogSettings(tmp_path, flush_seconds=0.01), join)
    for rid in ("a", "b"):
        plog.offer(Record(rid, 1, "m", 1, None, None, {"x": np.zeros((1, 1))}, ["y"],
                          [np.full((1, 1), 0.25, np.float32)], 1, ("y", 0)))
    plog.flush()  # rotates: "b" was past the full index; nothing pending yet
    for rid in ("d", "c"):  # "c" is past the new file's full index
        plog.offer(Record(rid, 2, "m", 1, None, None, {"x": np.zeros((1, 1))}, ["y"],
                          [np.full((1, 1), 0.5, np.float32)], 1, ("y", 0)))
    wait_until(lambda: plog.written_rows == 4, 5, "c written")
    assert join.submit("m", [("c", [1.0], ALL_ROWS)]) == LabelCounts(pending=1)  # in the open file; index full
    plog.close()  # rotation looks the pending label up in the closed file
    assert join.pending_count == 0 and join.joined == 1
    rows = pq.read_table(sorted(tmp_path.glob("m/joined-*.parquet"))[0]).to_pylist()
    assert [(r["request_id"], r["score"], r["label"]) for r in rows] == [("c", 0.5, 1.0)]
