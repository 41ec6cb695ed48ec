"""Missing values on the wire (issue 24's agreed design), end to end against a real server.

The churn feature spec (FP64, INT64, BOOL and BYTES raw inputs) is served in front of an identity ONNX model,
so the model's outputs ARE the served feature tensors. For every datatype x path (gRPC unary, gRPC stream,
REST JSON with ``null``, REST binary with ``NAME__missing`` companions) x (with nulls / without), the served
tensors equal ``spec.transform`` of the same rows with the nulls as Arrow nulls, byte for byte; the table of
counts is printed (run with ``-s``). Also: companions in ModelMetadata / ModelConfig, clear errors for bad
companions and for JSON null on a plain-tensor model, the served-feature log's nulls replayed by skew-check,
and the DataFrame client scoring nulls in every column type over gRPC and HTTP.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import RPC_TIMEOUT, expect_error, wait_until
from onnx import TensorProto, helper
from serverproc import ServerProcess

from skewless.client import FeatureClient
from skewless.native.spec import FeatureSpec

RAW = {"tenure_months": "FP64", "monthly_charges": "FP64", "support_calls": "INT64", "senior": "BOOL",
       "contract": "BYTES", "payment_method": "BYTES", "region": "BYTES"}
OUTPUTS = {"dense": (TensorProto.FLOAT, 20), "ids": (TensorProto.INT64, 2)}
N_ROWS = 48
CHUNK = 8  # rows per request: several requests per case, so batches merge requests with and without nulls
PATHS = ("grpc unary", "grpc stream", "rest json", "rest binary")
# What a client sends at a missing element: anything, the server ignores it (companion marks it missing)
GARBAGE = {"FP64": 123.25, "INT64": 987654321, "BOOL": True, "BYTES": "month-to-month"}


def identity_model() -> bytes:
    """An ONNX model whose outputs are its inputs: the spec's feature tensors, returned as served."""
    nodes, ins, outs = [], [], []
    for name, (elem, width) in OUTPUTS.items():
        ins.append(helper.make_tensor_value_info(name, elem, ["batch", width]))
        outs.append(helper.make_tensor_value_info(f"{name}_out", elem, ["batch", width]))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    graph = helper.make_graph(nodes, "features_identity", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("missing_feature_log")


@pytest.fixture(scope="module")
def server(make_repo, log_dir) -> Iterator[ServerProcess]:
    from skewless.examples.generate import write_churn_model

    repo = make_repo("mlp")
    write_churn_model(repo)
    version = repo / "churn" / "1"
    (version / "model.onnx").write_bytes(identity_model())
    params = {"skewless.feature_log_rate": "1", "skewless.feature_log_dir": str(log_dir),
              "skewless.feature_log_rotate_rows": "64", "skewless.feature_log_rotate_seconds": "0.3"}
    (repo / "churn" / "config.pbtxt").write_text(
        'name: "churn"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
        "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
        + "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items()))
    proc = ServerProcess(repo).start()
    yield proc
    proc.assert_clean_exit()


@pytest.fixture(scope="module")
def spec(server) -> FeatureSpec:
    return FeatureSpec.load(server.repository / "churn" / "1" / "features.json")


def rows(seed: int) -> dict[str, np.ndarray]:
    from skewless.examples.generate import churn_dataset

    data = churn_dataset(N_ROWS, seed=seed)
    data["tenure_months"] = np.where(np.isnan(data["tenure_months"]), 3.5, data["tenure_months"])
    return {k: np.asarray(data[k]) for k in RAW}


def null_masks(datatype: str | None, seed: int) -> dict[str, np.ndarray]:
    """Missing elements in the columns of one datatype (about a third, the first row always), none elsewhere."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, dt in RAW.items():
        mask = np.zeros(N_ROWS, dtype=np.bool_)
        if dt == datatype:
            mask = rng.random(N_ROWS) < 0.35
            mask[0] = True
            mask[-1] = False
        out[name] = mask
    return out


def offline(spec: FeatureSpec, data: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``skewless transform``'s tensors for these rows: missing elements as Arrow nulls."""
    cols = {}
    for name, dt in RAW.items():
        values = data[name]
        if dt == "BYTES":
            cols[name] = pa.array([None if m else v for v, m in zip(values.tolist(), masks[name].tolist(),
                                                                     strict=True)], pa.string())
        else:
            cols[name] = pa.array(values, mask=masks[name])
    return spec.transform(pa.table(cols))


def wire_values(data: dict[str, np.ndarray], masks: dict[str, np.ndarray], a: int, b: int
                ) -> dict[str, np.ndarray]:
    """Rows [a, b) as sent: garbage at missing elements (the companion says to ignore them)."""
    out = {}
    for name, dt in RAW.items():
        v = data[name][a:b].copy() if dt != "BYTES" else np.array(data[name][a:b], dtype=object)
        v[masks[name][a:b]] = GARBAGE[dt]
        if dt == "BYTES":
            v = np.array([s.encode() for s in v.tolist()], dtype=object)
        out[name] = v.reshape(-1, 1)
    return out


def grpc_inputs(values, masks, a, b) -> list[grpcclient.InferInput]:
    inputs = []
    for name, dt in RAW.items():
        inp = grpcclient.InferInput(name, [b - a, 1], dt)
        inp.set_data_from_numpy(values[name])
        inputs.append(inp)
        if masks[name][a:b].any():
            comp = grpcclient.InferInput(f"{name}__missing", [b - a, 1], "BOOL")
            comp.set_data_from_numpy(masks[name][a:b].reshape(-1, 1))
            inputs.append(comp)
    return inputs


def http_inputs(values, masks, a, b) -> list[httpclient.InferInput]:
    inputs = []
    for name, dt in RAW.items():
        inp = httpclient.InferInput(name, [b - a, 1], dt)
        inp.set_data_from_numpy(values[name], binary_data=True)
        inputs.append(inp)
        if masks[name][a:b].any():
            comp = httpclient.InferInput(f"{name}__missing", [b - a, 1], "BOOL")
            comp.set_data_from_numpy(masks[name][a:b].reshape(-1, 1), binary_data=True)
            inputs.append(comp)
    return inputs


def json_body(data, masks, a, b) -> bytes:
    """A KServe v2 JSON request with ``null`` at the missing elements (no companion: the server builds it)."""
    inputs = []
    for name, dt in RAW.items():
        values = data[name][a:b].tolist()
        values = [None if m else v for v, m in zip(values, masks[name][a:b].tolist(), strict=True)]
        inputs.append({"name": name, "datatype": dt, "shape": [b - a, 1], "data": values})
    return json.dumps({"inputs": inputs}).encode()


def post_json(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=RPC_TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def served(server: ServerProcess, path: str, data, masks) -> dict[str, np.ndarray]:
    """The feature tensors the server computes for all rows, sent in CHUNK-row requests over ``path``."""
    spans = [(a, min(a + CHUNK, N_ROWS)) for a in range(0, N_ROWS, CHUNK)]
    values = {span: wire_values(data, masks, *span) for span in spans}
    parts: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    names = [f"{o}_out" for o in OUTPUTS]
    if path == "grpc unary":
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            for span in spans:
                r = c.infer("churn", grpc_inputs(values[span], masks, *span), client_timeout=RPC_TIMEOUT)
                parts[span] = {n: r.as_numpy(n) for n in names}
    elif path == "grpc stream":
        results: queue.Queue = queue.Queue()
        with grpcclient.InferenceServerClient(server.grpc_url) as c:
            c.start_stream(callback=lambda result, error: results.put((result, error)))
            for i, span in enumerate(spans):
                c.async_stream_infer("churn", grpc_inputs(values[span], masks, *span), request_id=str(i))
            for _ in spans:
                result, error = results.get(timeout=RPC_TIMEOUT)
                assert error is None, error
                span = spans[int(result.get_response().id)]
                parts[span] = {n: result.as_numpy(n) for n in names}
            c.stop_stream()
    elif path == "rest binary":
        with httpclient.InferenceServerClient(server.rest_url) as c:
            for span in spans:
                r = c.infer("churn", http_inputs(values[span], masks, *span))
                parts[span] = {n: r.as_numpy(n) for n in names}
    else:
        for span in spans:
            status, doc = post_json(f"http://{server.rest_url}/v2/models/churn/infer",
                                    json_body(data, masks, *span))
            assert status == 200, doc
            by_name = {o["name"]: o for o in doc["outputs"]}
            parts[span] = {f"{o}_out": np.array(by_name[f"{o}_out"]["data"],
                                                dtype=np.float32 if o == "dense" else np.int64).reshape(
                span[1] - span[0], w) for o, (_, w) in OUTPUTS.items()}
    return {o: np.concatenate([parts[s][f"{o}_out"] for s in spans]) for o in OUTPUTS}


def test_served_equals_offline_for_every_datatype_path_and_null(server, spec, capsys):
    table = []
    for seed, datatype in enumerate(("FP64", "INT64", "BOOL", "BYTES")):
        data = rows(seed)
        for nulls in (True, False):
            masks = null_masks(datatype if nulls else None, seed)
            want = offline(spec, data, masks)
            n_missing = int(sum(m.sum() for m in masks.values()))
            assert (n_missing > 0) == nulls
            for path in PATHS:
                got = served(server, path, data, masks)
                equal = np.ones(N_ROWS, dtype=np.bool_)
                for o in OUTPUTS:
                    assert got[o].dtype == want[o].dtype and got[o].shape == want[o].shape
                    equal &= np.all(got[o].view(np.uint8).reshape(N_ROWS, -1)
                                    == want[o].view(np.uint8).reshape(N_ROWS, -1), axis=1)
                null_rows = int(np.any(np.stack(list(masks.values())), axis=0).sum())
                table.append((datatype, path, "with nulls" if nulls else "without", N_ROWS, null_rows,
                              int(equal.sum())))
    with capsys.disabled():
        print("\n\ndatatype | path        | null       | rows | rows with nulls | served == offline (bytes)")
        for dt, path, null, n, nn, eq in table:
            print(f"{dt:8} | {path:11} | {null:10} | {n:4} | {nn:15} | {eq}")
        print()
    assert all(row[3] == row[5] for row in table), table


def test_nulls_change_the_features(server, spec):
    """The comparison above can fail: a missing element's tensor differs from the sent value's."""
    data = rows(7)
    masks = null_masks("INT64", 7)
    got = served(server, "grpc unary", data, masks)
    no_masks = null_masks(None, 7)
    as_values = offline(spec, {k: wire_values(data, masks, 0, N_ROWS)[k].reshape(-1) if RAW[k] != "BYTES"
                               else data[k] for k in RAW}, no_masks)
    m = masks["support_calls"]
    assert not np.array_equal(got["dense"][m], as_values["dense"][m])
    assert np.array_equal(got["dense"][~m], as_values["dense"][~m])


def test_float_nan_without_companion_is_missing(server, spec):
    data = rows(3)
    masks = null_masks("FP64", 3)
    want = offline(spec, data, masks)
    sent = {k: v.copy() for k, v in data.items()}
    for name in ("tenure_months", "monthly_charges"):
        sent[name][masks[name]] = np.nan
    none = null_masks(None, 3)
    got = served(server, "grpc unary", sent, none)
    for o in OUTPUTS:
        assert got[o].tobytes() == want[o].tobytes()


def test_companions_in_metadata_and_config(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        meta = c.get_model_metadata("churn")
        config = c.get_model_config("churn").config
    inputs = {i.name: (i.datatype, list(i.shape)) for i in meta.inputs}
    for name, dt in RAW.items():
        assert inputs[name] == (dt, [-1, 1])
        assert inputs[f"{name}__missing"] == ("BOOL", [-1, 1])
    by_name = {i.name: i for i in config.input}
    assert by_name["senior__missing"].optional and not by_name["senior"].optional
    assert list(by_name["contract__missing"].dims) == [1]
    with httpclient.InferenceServerClient(server.rest_url) as c:
        rest_inputs = {i["name"]: i["datatype"] for i in c.get_model_metadata("churn")["inputs"]}
        rest_config = {i["name"]: i for i in c.get_model_config("churn")["input"]}
    assert rest_inputs["region__missing"] == "BOOL" and rest_config["region__missing"]["optional"] is True


def test_bad_companions_are_invalid_argument(server):
    data = rows(1)
    masks = null_masks("BOOL", 1)
    values = wire_values(data, masks, 0, 4)
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        inputs = grpc_inputs(values, masks, 0, 4)
        comp = grpcclient.InferInput("senior__missing", [4, 1], "INT64")
        comp.set_data_from_numpy(np.ones((4, 1), dtype=np.int64))
        bad = [i for i in inputs if i.name() != "senior__missing"] + [comp]
        expect_error(lambda: c.infer("churn", bad), "INVALID_ARGUMENT",
                     "unexpected datatype INT64 for inference input 'senior__missing', expecting BOOL")
        comp = grpcclient.InferInput("senior__missing", [3, 1], "BOOL")
        comp.set_data_from_numpy(np.ones((3, 1), dtype=np.bool_))
        bad = [i for i in inputs if i.name() != "senior__missing"] + [comp]
        expect_error(lambda: c.infer("churn", bad), "INVALID_ARGUMENT", "senior__missing")
        lone = [i for i in inputs if i.name() != "senior"]
        expect_error(lambda: c.infer("churn", lone), "INVALID_ARGUMENT",
                     "missing required input(s) ['senior']")
    body = json.loads(json_body(data, masks, 0, 4))
    body["inputs"] = [i for i in body["inputs"] if i["name"] != "senior"]
    body["inputs"].append({"name": "senior__missing", "datatype": "BOOL", "shape": [4, 1], "data": [True] * 4})
    status, doc = post_json(f"http://{server.rest_url}/v2/models/churn/infer", json.dumps(body).encode())
    assert status == 400 and "missing required input(s) ['senior']" in doc["error"]


def test_json_null_is_refused_for_plain_tensor_models(server):
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1.0, None, 2.0, 3.0]}]}
    status, doc = post_json(f"http://{server.rest_url}/v2/models/mlp/infer", json.dumps(body).encode())
    assert status == 400
    assert "has null in 'data', but model 'mlp' has no feature spec" in doc["error"], doc


def test_logged_nulls_are_replayed_by_skew_check(server, spec, log_dir):
    """The served-feature log holds the missing marks as Arrow nulls and skew-check reproduces the tensors."""
    data = rows(11)
    masks = {n: null_masks(dt, 11)[n] for n, dt in RAW.items()}  # nulls in every column
    served(server, "grpc unary", data, masks)
    model_log = log_dir / "churn" / "1"

    def logged_nulls() -> int:
        files = sorted(model_log.glob("*.parquet"))
        if not files:
            return 0
        t = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
        return sum(t.column(n).null_count for n in RAW)

    want = int(sum(m.sum() for m in masks.values()))
    wait_until(lambda: logged_nulls() >= want, 20, "the logged nulls")
    for name in RAW:  # every datatype's column carries nulls
        assert any(pq.read_table(f, columns=[name]).column(0).null_count for f in model_log.glob("*.parquet"))
    cmd = [sys.executable, "-m", "skewless.server.frontend.cli", "skew-check", "--log", str(model_log),
           "--spec", str(server.repository / "churn" / "1" / "features.json"), "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mismatching values: 0" in out.stdout, out.stdout


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_scores_a_dataframe_with_nulls(server, spec, protocol):
    """skewless.client: nulls in INT/BOOL/BYTES/float columns of a DataFrame, served == transform."""
    data = rows(21)
    df = pd.DataFrame({
        "tenure_months": data["tenure_months"],
        "monthly_charges": data["monthly_charges"],
        "support_calls": pd.array(data["support_calls"], dtype="Int64"),
        "senior": pd.array(data["senior"], dtype="boolean"),
        "contract": pd.Series(data["contract"], dtype=object),
        "payment_method": pd.array(data["payment_method"], dtype="string"),
        "region": pd.Series(data["region"], dtype=object),
    })
    rng = np.random.default_rng(5)
    for name in RAW:
        mask = rng.random(N_ROWS) < 0.3
        df.loc[mask, name] = None if RAW[name] == "BYTES" else (np.nan if RAW[name] == "FP64" else pd.NA)
    assert all(df[name].isna().any() for name in RAW)
    url = server.grpc_url if protocol == "grpc" else server.rest_url
    with FeatureClient(url, protocol) as client:
        got = client.predict("churn", df, max_rows=10)
    want = spec.transform(df)
    for o in OUTPUTS:
        assert got[f"{o}_out"].tobytes() == want[o].tobytes()


def test_reserved_raw_names_are_refused_at_fit_and_load(tmp_path):
    import shutil

    from skewless.native.fit import ConfigError, fit
    from skewless.native.spec import content_hash
    from skewless.server.errors import ModelLoadError
    from skewless.server.features.stage import FeatureStage
    from skewless.server.models.config import parse_config
    from skewless.server.models.runtime import probe_model_io

    with pytest.raises(ConfigError, match=r"features\[0\]\.name: a raw input name must not end in '__missing'"):
        fit({"features": [{"name": "age__missing"}]}, {"age__missing": np.arange(5.0)})
    src = Path(__file__).resolve().parent.parent / "examples" / "models" / "churn" / "1"
    version = tmp_path / "1"
    shutil.copytree(src, version)
    doc = json.loads((version / "features.json").read_text())
    text = json.dumps(doc).replace('"senior"', '"senior__missing"')
    doc = json.loads(text)
    doc["sha256"] = content_hash(doc)
    (version / "features.json").write_text(json.dumps(doc))
    onnx_in, _ = probe_model_io(version / "model.onnx")
    with pytest.raises(ModelLoadError, match=r"raw input name\(s\) \['senior__missing'\] end with '__missing'"):
        FeatureStage.load(version, parse_config("", "test"), onnx_in, "churn", 1)


def test_companions_in_an_explicit_config(tmp_path):
    """ModelConfig as the server reports it (companions included) loads again; a companion of another form
    is refused."""
    from skewless.server.errors import ModelLoadError
    from skewless.server.features.stage import FeatureStage
    from skewless.server.models.config import parse_config
    from skewless.server.models.runtime import probe_model_io

    version = Path(__file__).resolve().parent.parent / "examples" / "models" / "churn" / "1"
    onnx_in, _ = probe_model_io(version / "model.onnx")
    cfg = parse_config('input [{ name: "senior__missing" data_type: TYPE_INT64 dims: [1] }]', "test")
    with pytest.raises(ModelLoadError, match=r"config input 'senior__missing' marks the missing values of 'senior'"):
        FeatureStage.load(version, cfg, onnx_in, "churn", 1)
    cfg = parse_config('input [{ name: "senior" data_type: TYPE_BOOL dims: [1] }, '
                       '{ name: "senior__missing" data_type: TYPE_BOOL dims: [1] optional: true }]', "test")
    assert FeatureStage.load(version, cfg, onnx_in, "churn", 1) is not None
    assert [f.name for f in cfg.input] == ["senior"]


def test_one_batch_merges_requests_with_and_without_companions(tmp_path):
    """In-process: the batch path's merge of masked and unmasked requests (and warmup-style plain dicts) equals
    transform on the concatenated rows."""
    from skewless.server.features.stage import FeatureFeeds, MaskedFeeds
    from skewless.server.models.config import parse_config
    from skewless.server.models.version import ModelVersion

    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    src = Path(__file__).resolve().parent.parent / "examples" / "models" / "churn" / "1"
    (version / "features.json").write_bytes((src / "features.json").read_bytes())
    (version / "model.onnx").write_bytes(identity_model())
    mv = ModelVersion("m", 1, version, parse_config("max_batch_size: 64", "test"), True, 4)
    try:
        stage = mv.features
        data = rows(31)
        masks = {n: null_masks(dt, 31)[n] for n, dt in RAW.items()}
        spans = [(0, 5), (5, 6), (6, 20), (20, 33), (33, 48)]
        feeds = []
        for i, (a, b) in enumerate(spans):
            sent = wire_values(data, masks if i != 1 else null_masks(None, 0), a, b)
            if i % 2 == 0:
                for name in RAW:
                    sent[f"{name}__missing"] = masks[name][a:b].reshape(-1, 1)
            admitted = stage.admit(sent, f"r{i}")
            assert type(admitted) is (MaskedFeeds if i % 2 == 0 else FeatureFeeds)
            feeds.append(admitted)
        # the odd spans carry their values unmasked, so expect those rows as sent
        want_masks = {n: m.copy() for n, m in masks.items()}
        want_data = {n: v.copy() if RAW[n] != "BYTES" else v.copy() for n, v in data.items()}
        for i, (a, b) in enumerate(spans):
            if i % 2 == 1:
                sent = wire_values(data, masks if i != 1 else null_masks(None, 0), a, b)
                for n in RAW:
                    want_masks[n][a:b] = False
                    want_data[n][a:b] = [s.decode() for s in sent[n][:, 0]] if RAW[n] == "BYTES" else sent[n][:, 0]
        got = stage.transform_batch(feeds, log_sample=False)
        want = offline(stage.spec, want_data, want_masks)
        for o in OUTPUTS:
            assert got[o].tobytes() == want[o].tobytes()
    finally:
        mv.runtime.close()
        mv.features.close()
