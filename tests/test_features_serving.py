"""Serving a model with ``features.json``: raw inputs over gRPC, one kernel call per batch, the served-feature log.

End to end on a real server subprocess with tritonclient: rows sent one by one and in concurrent random batches
are logged with tensors byte-equal to ``skewless transform`` on the same rows, ``skewless skew-check`` passes on
that log and fails with a spec whose one constant is altered, bad raw input is INVALID_ARGUMENT naming the
column, and metadata shows the raw inputs. Load-time checks, the string codec and the log queue run in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
from helpers import RPC_TIMEOUT, expect_error, raw_request, raw_stub, rpc_error, serialize_bytes, wait_until
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper
from serverproc import ServerProcess
from tritonclient.grpc import service_pb2

from skewless.examples.generate import churn_dataset, write_churn_model
from skewless.native.bytes_codec import BytesFormatError, bytes_to_arrow, check_bytes
from skewless.native.spec import FeatureSpec, content_hash
from skewless.server.errors import InvalidArgument, ModelLoadError
from skewless.server.features.served_log import FeatureLogger, LogSettings
from skewless.server.features.stage import FeatureStage
from skewless.server.models.config import parse_config
from skewless.server.models.version import ModelVersion

REPO_ROOT = Path(__file__).resolve().parent.parent
RAW = ("tenure_months", "monthly_charges", "support_calls", "senior", "contract", "payment_method", "region")
DATATYPES = {"tenure_months": "FP64", "monthly_charges": "FP64", "support_calls": "INT64", "senior": "BOOL",
             "contract": "BYTES", "payment_method": "BYTES", "region": "BYTES"}
CONFIG_TYPES = {"FP64": "TYPE_FP64", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL", "BYTES": "TYPE_STRING"}
ONE_BY_ONE = 40


def _log_params(log_dir: Path) -> str:
    params = {"skewless.feature_log_rate": "1", "skewless.feature_log_dir": str(log_dir),
              "skewless.feature_log_rotate_rows": "64", "skewless.feature_log_rotate_seconds": "0.3"}
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items())


def edge_rows() -> dict[str, np.ndarray]:
    """Values that break naive pipelines: NaN, -0.0, inf, subnormals, huge numbers, empty and non-UTF-8
    strings, unseen categories."""
    f = np.float64
    return {
        "tenure_months": np.array([np.nan, -0.0, np.inf, -np.inf, 1e308, 5e-324, 12.5, 0.0], dtype=f),
        "monthly_charges": np.array([np.nan, -0.5, 1e300, -2.0, 0.0, -0.0, 5e-324, 70.0], dtype=f),
        "support_calls": np.array([2**62, -5, 0, 3, 10, 11, -(2**63), 1], dtype=np.int64),
        "senior": np.array([True, False, True, False, True, False, True, False]),
        "contract": np.array(["", "unknown", b"\xff\xfe", "one-year", "two-year", "month-to-month", "x" * 300,
                              "é"], dtype=object),
        "payment_method": np.array(["é", b"\xff", "", "credit-card", "bank-transfer", "nope", "mailed-check",
                                    "electronic-check"], dtype=object),
        "region": np.array(["", b"\x00\x01", "region-01", "region-99", "日本", "region-00", "r", "region-39"],
                           dtype=object),
    }


def all_rows() -> dict[str, np.ndarray]:
    data = {k: v for k, v in churn_dataset(400, seed=77).items() if k != "churned"}
    edges = edge_rows()
    return {k: np.concatenate([data[k], edges[k]]) for k in RAW}


def infer_inputs(rows: dict[str, np.ndarray], idx: np.ndarray) -> list[grpcclient.InferInput]:
    out = []
    for name in RAW:
        arr = rows[name][idx].reshape(-1, 1)
        inp = grpcclient.InferInput(name, list(arr.shape), DATATYPES[name])
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


@pytest.fixture(scope="module")
def feature_repo(tmp_path_factory) -> tuple[Path, Path]:
    """churn (explicit config, feature log at rate 1), churn_auto (no config), churn_nobatch (max_batch_size 0)."""
    root = tmp_path_factory.mktemp("features_repo")
    log_dir = tmp_path_factory.mktemp("feature_log")
    src = tmp_path_factory.mktemp("churn_src")
    write_churn_model(src)
    import shutil

    for name in ("churn", "churn_auto", "churn_nobatch"):
        shutil.copytree(src / "churn", root / name)
    cfg = (root / "churn" / "config.pbtxt").read_text()
    (root / "churn" / "config.pbtxt").write_text(cfg + _log_params(log_dir))
    (root / "churn_auto" / "config.pbtxt").unlink()
    (root / "churn_nobatch" / "config.pbtxt").write_text('max_batch_size: 0\n')
    return root, log_dir


@pytest.fixture(scope="module")
def feature_server(feature_repo):
    proc = ServerProcess(feature_repo[0]).start()
    yield proc
    proc.assert_clean_exit()


@pytest.fixture(scope="module")
def fclient(feature_server):
    c = grpcclient.InferenceServerClient(feature_server.grpc_url)
    yield c
    c.close()


def _read_log(log_dir: Path) -> pa.Table | None:
    files = sorted((log_dir / "churn" / "1").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


@pytest.fixture(scope="module")
def served(feature_repo, feature_server):
    """Send every row (some one by one, the rest in concurrent random batches); wait until all are logged."""
    _, log_dir = feature_repo
    rows = all_rows()
    n = len(rows["region"])
    rng = np.random.default_rng(11)
    order = rng.permutation(n)
    requests: dict[str, np.ndarray] = {f"one-{i}": order[i:i + 1] for i in range(ONE_BY_ONE)}
    start = ONE_BY_ONE
    while start < n:
        size = int(rng.integers(1, 65))
        requests[f"batch-{start}"] = order[start:start + size]
        start += size
    replies: dict[str, np.ndarray] = {}
    local = threading.local()

    def send(rid: str) -> None:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(feature_server.grpc_url)
        result = local.client.infer("churn", infer_inputs(rows, requests[rid]), request_id=rid,
                                    client_timeout=RPC_TIMEOUT)
        replies[rid] = result.as_numpy("probabilities")

    one = [r for r in requests if r.startswith("one-")]
    for rid in one:  # strictly one at a time: every batch is a single row
        send(rid)
    with ThreadPoolExecutor(8) as pool:  # concurrent: the batcher merges requests of different sizes
        list(pool.map(send, [r for r in requests if r not in one]))

    def logged_rows() -> int:
        t = _read_log(log_dir)
        return 0 if t is None else t.num_rows

    wait_until(lambda: logged_rows() >= n, 30, f"{n} rows in the feature log", interval=0.2)
    spec = FeatureSpec.load(feature_repo[0] / "churn" / "1" / "features.json")
    return rows, requests, replies, _read_log(log_dir), spec


def test_the_bundled_example_is_what_the_generator_writes(churn_dir):
    committed = REPO_ROOT / "examples" / "models" / "churn"
    for rel in ("config.pbtxt", "1/features.json"):
        assert (committed / rel).read_bytes() == (churn_dir / rel).read_bytes(), rel
    # the weights come from gradient descent rounded to 4 decimals: compare what the model computes
    import onnxruntime as ort

    spec = FeatureSpec.load(committed / "1" / "features.json")
    x = spec.transform({k: v for k, v in churn_dataset(50, seed=3).items() if k != "churned"})
    a, b = (ort.InferenceSession(str(d / "1" / "model.onnx")).run(None, x)[0] for d in (committed, churn_dir))
    assert np.allclose(a, b, atol=1e-3)


# ---- metadata and config ------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["churn", "churn_auto"])
def test_metadata_and_config_show_the_raw_inputs(fclient, model):
    md = fclient.get_model_metadata(model, as_json=True)
    # the raw inputs, then each one's optional NAME__missing companion (BOOL, same shape)
    assert [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in md["inputs"]] == [
        (name, DATATYPES[name], [-1, 1]) for name in RAW] + [(f"{name}__missing", "BOOL", [-1, 1]) for name in RAW]
    assert [(o["name"], o["datatype"]) for o in md["outputs"]] == [("probabilities", "FP32")]
    cfg = fclient.get_model_config(model, as_json=True)["config"]
    assert [(i["name"], i["data_type"], i.get("optional", False)) for i in cfg["input"]] == [
        (n, CONFIG_TYPES[DATATYPES[n]], False) for n in RAW] + [(f"{n}__missing", "TYPE_BOOL", True) for n in RAW]
    assert all(i["dims"] == ["1"] for i in cfg["input"])
    assert int(cfg["max_batch_size"]) == (64 if model == "churn" else 4)


def test_non_batching_model_takes_rows_in_its_first_dimension(fclient):
    md = fclient.get_model_metadata("churn_nobatch", as_json=True)
    assert all([int(d) for d in i["shape"]] == [-1, 1] for i in md["inputs"])
    rows = all_rows()
    idx = np.arange(5)
    got = fclient.infer("churn_nobatch", infer_inputs(rows, idx)).as_numpy("probabilities")
    want = fclient.infer("churn_auto", infer_inputs(rows, idx[:4])).as_numpy("probabilities")
    assert got.shape == (5, 2) and np.allclose(got[:4], want, rtol=1e-6)


# ---- parity: served tensors == offline transform ------------------------------------------------------

def test_logged_tensors_are_byte_equal_to_the_offline_transform(served, feature_repo, tmp_path):
    rows, requests, _, log, spec = served
    n = len(rows["region"])
    assert log.num_rows == n
    index = {rid: idx for rid, idx in requests.items()}
    rids = log.column("request_id").to_pylist()
    pos = log.column("row").to_numpy()
    where = np.array([index[r][p] for r, p in zip(rids, pos, strict=True)])
    assert sorted(where.tolist()) == list(range(n))  # every row logged exactly once
    assert set(log.column("model_name").to_pylist()) == {"churn"}
    assert set(log.column("model_version").to_pylist()) == {1}
    assert log.schema.field("time").type == pa.timestamp("ns", tz="UTC")

    # the reference: `skewless transform` on the same rows, from a Parquet file
    as_bytes = {k: pa.array([v.encode() if isinstance(v, str) else v for v in rows[k]], pa.binary())
                if rows[k].dtype == object else pa.array(rows[k]) for k in RAW}
    pq.write_table(pa.table(as_bytes), tmp_path / "rows.parquet")
    from skewless.native.cli import main as features_cli

    assert features_cli(["transform", "--spec", str(feature_repo[0] / "churn" / "1" / "features.json"),
                         "--data", str(tmp_path / "rows.parquet"), "--out", str(tmp_path / "out.npy"),
                         "--no-progress"]) == 0
    offline = {t.name: np.load(tmp_path / f"out.{t.name}.npy") for t in spec.outputs}
    for t in spec.outputs:
        served_block = np.stack(log.column(t.name).to_numpy(zero_copy_only=False)).astype(t.dtype)
        assert served_block.tobytes() == offline[t.name][where].tobytes(), t.name
        assert offline[t.name].tobytes() == spec.transform(rows)[t.name].tobytes()
    # the raw values are logged exactly as sent (bit patterns of floats, bytes of strings)
    for name in RAW:
        col = log.column(name)
        if rows[name].dtype == object:
            assert col.to_pylist() == [as_bytes[name][int(i)].as_py() for i in where]
        else:
            got = col.to_numpy()
            assert got.tobytes() == rows[name][where].tobytes(), name


def test_replies_match_onnxruntime_on_the_offline_tensors(served, feature_repo):
    import onnxruntime as ort

    rows, requests, replies, _, spec = served
    sess = ort.InferenceSession(str(feature_repo[0] / "churn" / "1" / "model.onnx"))
    offline = spec.transform(rows)
    for rid, idx in requests.items():
        want = sess.run(["probabilities"], {k: v[idx] for k, v in offline.items()})[0]
        assert np.allclose(replies[rid], want, rtol=1e-5, atol=1e-7, equal_nan=True), rid


def test_skew_check_on_the_server_log(served, feature_repo, tmp_path):
    _, log_dir = feature_repo
    spec_path = feature_repo[0] / "churn" / "1" / "features.json"
    cmd = [sys.executable, "-m", "skewless.server.frontend.cli", "skew-check", "--log", str(log_dir), "--no-progress"]
    ok = subprocess.run([*cmd, "--spec", str(spec_path)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"rows compared: {served[3].num_rows}" in ok.stdout and "mismatching values: 0" in ok.stdout

    doc = json.loads(spec_path.read_text())
    feat = next(f for f in doc["features"] if f["name"] == "monthly_charges")
    step = next(s for s in feat["steps"] if s["op"] == "standardize")
    step["mean"] = (float.fromhex(step["mean"]) * (1 + 1e-4)).hex()
    doc["sha256"] = content_hash(doc)
    (tmp_path / "skewed.json").write_text(json.dumps(doc))
    bad = subprocess.run([*cmd, "--spec", str(tmp_path / "skewed.json"), "--json"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    report = json.loads(bad.stdout)
    assert not report["ok"] and set(report["per_feature"]) == {"monthly_charges"}
    assert report["examples"][0]["request_id"].startswith(("one-", "batch-"))
    assert any("written with spec" in w for w in report["warnings"])


# ---- bad raw input ------------------------------------------------------------------------------------

def _inputs_with(name: str, datatype: str, arr: np.ndarray, rows: int = 1) -> list[grpcclient.InferInput]:
    inputs = [i for i in infer_inputs(all_rows(), np.arange(rows)) if i.name() != name]
    bad = grpcclient.InferInput(name, list(arr.shape), datatype)
    bad.set_data_from_numpy(arr)
    return [*inputs, bad]


@pytest.mark.parametrize("name,datatype,arr,contains", [
    ("tenure_months", "FP32", np.ones((1, 1), np.float32), "unexpected datatype FP32 for inference input "
                                                           "'tenure_months', expecting FP64"),
    ("support_calls", "BYTES", np.array([["three"]], dtype=object), "input 'support_calls'"),
    ("senior", "INT32", np.ones((1, 1), np.int32), "input 'senior'"),
    ("region", "FP64", np.ones((1, 1)), "input 'region', expecting BYTES"),
    ("contract", "BYTES", np.array([["a"], ["b"]], dtype=object), "input 'contract' has batch size 2"),
    ("payment_method", "BYTES", np.array([["a", "b"]], dtype=object), "input 'payment_method'"),
])
def test_bad_raw_input_is_invalid_argument_naming_the_column(fclient, name, datatype, arr, contains):
    expect_error(lambda: fclient.infer("churn", _inputs_with(name, datatype, arr)), "INVALID_ARGUMENT", contains)


def test_malformed_bytes_and_missing_columns(feature_server):
    channel, stub = raw_stub(feature_server.grpc_url)
    try:
        good = {"tenure_months": ("FP64", np.float64(3.0).tobytes()),
                "monthly_charges": ("FP64", np.float64(50.0).tobytes()),
                "support_calls": ("INT64", np.int64(1).tobytes()), "senior": ("BOOL", b"\x01"),
                "contract": ("BYTES", serialize_bytes([b"one-year"])),
                "payment_method": ("BYTES", serialize_bytes([b"credit-card"])),
                "region": ("BYTES", serialize_bytes([b"region-01"]))}

        def request(overrides: dict, drop: str = "", model: str = "churn") -> service_pb2.ModelInferRequest:
            tensors = {**good, **overrides}
            return raw_request(model, [(k, dt, [1, 1], data) for k, (dt, data) in tensors.items() if k != drop])

        ok = stub.ModelInfer(request({}, model="churn_auto"), timeout=RPC_TIMEOUT)
        assert ok.outputs[0].name == "probabilities"
        for data, what in ((b"\x05\x00\x00\x00ab", "runs past the end"), (b"\x01\x00", "truncated length prefix"),
                           (serialize_bytes([b"a", b"b"]), "more than the expected 1")):
            err = rpc_error(lambda d=data: stub.ModelInfer(request({"region": ("BYTES", d)}), timeout=RPC_TIMEOUT),
                            grpc.StatusCode.INVALID_ARGUMENT)
            assert "malformed BYTES data for input 'region'" in err.details() and what in err.details()
        err = rpc_error(lambda: stub.ModelInfer(request({}, drop="senior"), timeout=RPC_TIMEOUT),
                        grpc.StatusCode.INVALID_ARGUMENT)
        assert "missing required input(s) ['senior']" in err.details()
        # without batching, rows are the first dimension and nothing but the feature stage compares them
        req = raw_request("churn_nobatch", [
            (k, dt, [2 if k == "tenure_months" else 1, 1], data * (2 if k == "tenure_months" else 1))
            for k, (dt, data) in good.items()])
        err = rpc_error(lambda: stub.ModelInfer(req, timeout=RPC_TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT)
        assert "input 'monthly_charges' has 1 rows but input 'tenure_months' has 2" in err.details()
    finally:
        channel.close()


def test_typed_contents_take_the_object_path_with_the_same_result(fclient, feature_server):
    channel, stub = raw_stub(feature_server.grpc_url)
    try:
        req = service_pb2.ModelInferRequest(model_name="churn_auto")
        values = {"tenure_months": [float("nan")], "monthly_charges": [50.0], "support_calls": [1],
                  "senior": [True], "contract": [b"one-year"], "payment_method": [b"credit-card"],
                  "region": [b"region-01"]}
        fields = {"FP64": "fp64_contents", "INT64": "int64_contents", "BOOL": "bool_contents",
                  "BYTES": "bytes_contents"}
        for name in RAW:
            t = req.inputs.add(name=name, datatype=DATATYPES[name], shape=[1, 1])
            getattr(t.contents, fields[DATATYPES[name]]).extend(values[name])
        from helpers import output_arrays

        typed = output_arrays(stub.ModelInfer(req, timeout=RPC_TIMEOUT))["probabilities"]
    finally:
        channel.close()
    rows = {k: np.array(v, dtype=object if DATATYPES[k] == "BYTES" else None) for k, v in values.items()}
    raw = fclient.infer("churn_auto", infer_inputs(rows, np.arange(1))).as_numpy("probabilities")
    assert typed.tobytes() == raw.tobytes()


# ---- load time (in-process) ---------------------------------------------------------------------------

def _identity_model(path: Path, inputs: dict[str, tuple[int, list]]) -> None:
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in inputs]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
                              [helper.make_tensor_value_info(f"{n}_out", t, s) for n, (t, s) in inputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def churn_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("churn_model")
    write_churn_model(d)
    return d / "churn"


def _load(model_dir: Path, config: str = "", onnx_inputs: dict | None = None) -> ModelVersion:
    vdir = model_dir.parent / "work" / "1"
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "features.json").write_bytes((model_dir / "1" / "features.json").read_bytes())
    if onnx_inputs is None:
        (vdir / "model.onnx").write_bytes((model_dir / "1" / "model.onnx").read_bytes())
    else:
        _identity_model(vdir / "model.onnx", onnx_inputs)
    return ModelVersion("work", 1, vdir, parse_config(config, "test"), "max_batch_size" in config, 4)


F32, F64, I64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64


@pytest.mark.parametrize("onnx_inputs,config,contains", [
    ({"input": (F32, ["b", 32])}, "", "the ONNX model's input(s) ['input'] are not outputs of features.json"),
    ({"dense": (F32, ["b", 20])}, "", "features.json output(s) ['ids'] are not inputs of the ONNX model"),
    ({"dense": (F64, ["b", 20]), "ids": (I64, ["b", 2])}, "",
     "output 'dense' is float32 (tensor(float)) but the ONNX model's input 'dense' is tensor(double)"),
    ({"dense": (F32, ["b", 19]), "ids": (I64, ["b", 2])}, "", "output 'dense' has width 20"),
    ({"dense": (F32, [4, 20]), "ids": (I64, ["b", 2])}, "", "with a dynamic batch dimension"),
    (None, 'input [{ name: "dense" data_type: TYPE_FP32 dims: [20] }]',
     "config input 'dense' is computed from the raw inputs by features.json; list the raw inputs"),
    (None, 'input [{ name: "age" data_type: TYPE_FP64 dims: [1] }]', "config input 'age' is not a raw input"),
    (None, 'input [{ name: "tenure_months" data_type: TYPE_FP32 dims: [1] }]',
     "raw input 'tenure_months' is float in features.json, served as TYPE_FP64; the config says TYPE_FP32"),
    (None, "max_batch_size: 8\ninput [" + ", ".join(
        f'{{ name: "{n}" data_type: {CONFIG_TYPES[DATATYPES[n]]} dims: [{-1 if n == "region" else 1}] }}'
        for n in RAW) + "]", "raw input 'region' has dims [-1] in the config"),
    (None, 'parameters { key: "skewless.feature_log_rate" value { string_value: "0.5" } }',
     "'skewless.feature_log_dir' is not set"),
    (None, 'parameters { key: "skewless.feature_log_rate" value { string_value: "2" } }',
     "'skewless.feature_log_rate' must be a float in [0, 1]"),
])
def test_load_time_checks(churn_dir, onnx_inputs, config, contains):
    with pytest.raises(ModelLoadError) as info:
        _load(churn_dir, config, onnx_inputs)
    assert contains in str(info.value)


def test_a_tampered_spec_fails_to_load(churn_dir, tmp_path):
    vdir = tmp_path / "m" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes((churn_dir / "1" / "model.onnx").read_bytes())
    doc = json.loads((churn_dir / "1" / "features.json").read_text())
    doc["fit"]["rows"] += 1
    (vdir / "features.json").write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match="content hash mismatch"):
        ModelVersion("m", 1, vdir, parse_config("", "t"), False, 4)


def test_warmup_samples_go_through_the_transform(churn_dir):
    warm = "".join(
        f'    inputs {{ key: "{n}" value {{ data_type: {t} dims: [1] {d} }} }}\n'
        for n, t, d in (("tenure_months", "TYPE_FP64", "random_data: true"),
                        ("monthly_charges", "TYPE_FP64", "zero_data: true"),
                        ("support_calls", "TYPE_INT64", "random_data: true"),
                        ("senior", "TYPE_BOOL", "random_data: true"),
                        ("contract", "TYPE_STRING", "zero_data: true"),
                        ("payment_method", "TYPE_STRING", "random_data: true"),
                        ("region", "TYPE_STRING", "random_data: true")))
    mv = _load(churn_dir, f'model_warmup [{{ name: "w" batch_size: 3\n{warm} }}]')
    assert mv.features is not None and list(mv.inputs) == [*RAW, *(f"{n}__missing" for n in RAW)]
    mv.runtime.close()


# ---- the pieces ---------------------------------------------------------------------------------------

@given(st.lists(st.lists(st.binary(max_size=12), max_size=6), max_size=6))
def test_bytes_to_arrow_concatenates_wire_tensors(parts):
    payloads = [serialize_bytes(p) for p in parts]
    for p, items in zip(payloads, parts, strict=True):
        assert check_bytes(p, len(items)) == sum(map(len, items))
    offsets, data = bytes_to_arrow([np.frombuffer(p, np.uint8) for p in payloads], [len(p) for p in parts])
    flat = [b for p in parts for b in p]
    assert offsets.tolist() == np.cumsum([0, *map(len, flat)]).tolist() and data.tobytes() == b"".join(flat)


@pytest.mark.parametrize("payload,count", [(b"\x01\x00\x00", 1), (b"\x03\x00\x00\x00ab", 1),
                                           (serialize_bytes([b"a", b"b"]), 1), (serialize_bytes([b"ab"]), 2),
                                           (b"", 1)])
def test_bytes_to_arrow_rejects_malformed_payloads(payload, count):
    with pytest.raises(BytesFormatError):
        check_bytes(payload, count)
    with pytest.raises(BytesFormatError):
        bytes_to_arrow([serialize_bytes([b"ok"]), payload], [1, count])


def test_a_full_log_queue_drops_and_counts_without_blocking(churn_dir, tmp_path, monkeypatch):
    spec = FeatureSpec.load(churn_dir / "1" / "features.json")
    logger = FeatureLogger(LogSettings(tmp_path, 1.0, queue_size=2), spec, "churn", 1)
    monkeypatch.setattr(logger.writer, "start", lambda: None)  # no writer: nothing ever leaves the queue
    stage = FeatureStage(spec, "churn", 1, logger)
    rows = all_rows()
    for i in range(5):
        stage.transform_batch([stage.admit({k: rows[k][i:i + 3].reshape(-1, 1) for k in RAW}, f"r{i}")])
    assert len(logger.writer) == 2 and logger.dropped_rows == 9


def test_sampled_requests_are_logged_whole_and_files_rotate(churn_dir, tmp_path):
    import random

    spec = FeatureSpec.load(churn_dir / "1" / "features.json")
    logger = FeatureLogger(LogSettings(tmp_path, 0.5, rotate_rows=20), spec, "churn", 1)
    logger._rng = random.Random(3)
    stage = FeatureStage(spec, "churn", 1, logger)
    rows = all_rows()
    bounds = [0, 1, 4, 11, 12, 30, 31, 45, 60, 64, 90]
    for start in range(0, 90, 45):  # two batches of five requests each
        reqs = [stage.admit({k: rows[k][a:b].reshape(-1, 1) for k in RAW}, f"q{a}")
                for a, b in zip(bounds, bounds[1:], strict=False) if start <= a < start + 45]
        stage.transform_batch(reqs)
    stage.close()
    files = sorted((tmp_path / "churn" / "1").glob("*.parquet"))
    assert len(files) >= 2 and not list((tmp_path / "churn" / "1").glob("*.tmp"))
    log = pa.concat_tables([pq.read_table(f) for f in files])
    assert 0 < log.num_rows < 90 and logger.logged_rows == log.num_rows
    where = np.array([int(r[1:]) + p for r, p in zip(log.column("request_id").to_pylist(),
                                                       log.column("row").to_pylist(), strict=True)])
    sizes = dict(zip(bounds, np.diff(bounds), strict=False))
    for rid in set(log.column("request_id").to_pylist()):  # a sampled request is logged with all its rows
        assert log.column("request_id").to_pylist().count(rid) == sizes[int(rid[1:])]
    offline = spec.transform({k: rows[k][:90] for k in RAW})
    for t in spec.outputs:
        logged = np.stack(log.column(t.name).to_numpy(zero_copy_only=False)).astype(t.dtype)
        assert logged.tobytes() == offline[t.name][where].tobytes()


def test_stage_rejects_rows_that_disagree_and_bad_strings(churn_dir):
    spec = FeatureSpec.load(churn_dir / "1" / "features.json")
    stage = FeatureStage(spec, "churn", 1, None)
    rows = all_rows()
    feeds = {k: rows[k][:2].reshape(-1, 1) for k in RAW}
    feeds["senior"] = feeds["senior"][:1]
    with pytest.raises(InvalidArgument, match="input 'senior' has 1 rows but input 'tenure_months' has 2"):
        stage.admit(feeds, "")
    with pytest.raises(InvalidArgument, match="malformed BYTES data for input 'region' with shape"):
        stage.bytes_payload("region", [1, 1], b"\x09\x00\x00\x00")
    # a batch's output is the concatenation of its requests' outputs, whatever the split
    reqs = [stage.admit({k: rows[k][a:b].reshape(-1, 1) for k in RAW}, "") for a, b in ((0, 5), (5, 6), (6, 30))]
    whole = {k: v.copy() for k, v in stage.transform_batch(reqs).items()}
    offline = spec.transform({k: rows[k][:30] for k in RAW})
    assert all(whole[k].tobytes() == offline[k].tobytes() for k in offline)


def test_missing_values_follow_the_spec(churn_dir):
    """A NaN tenure is imputed with the fitted median and flagged by the missing indicator."""
    spec = FeatureSpec.load(churn_dir / "1" / "features.json")
    stage = FeatureStage(spec, "churn", 1, None)
    median = float.fromhex(next(f for f in spec.features if f["name"] == "tenure_months")["steps"][0]["value"])
    rows = {k: v[:2].copy() for k, v in all_rows().items()}
    rows["tenure_months"][:] = [np.nan, median]
    dense = stage.transform_batch([stage.admit({k: v.reshape(-1, 1) for k, v in rows.items()}, "")])["dense"]
    cols = spec.column_names("dense")
    value, flag = cols.index("tenure_months"), cols.index("tenure_months_missing")
    assert dense[0, value] == dense[1, value] and (dense[0, flag], dense[1, flag]) == (1.0, 0.0)


# ---- property: any split of rows into requests, through the real decode path --------------------------

@pytest.fixture(scope="module")
def churn_mv(churn_dir):
    mv = ModelVersion("churn", 1, churn_dir / "1", parse_config("max_batch_size: 128\ndynamic_batching {}", "t"),
                      True, 4)
    yield mv
    mv.runtime.close()


def _decoded(mv: ModelVersion, rows: dict[str, np.ndarray], a: int, b: int, rid: str):
    """One request of rows [a, b) as the server sees it: serialized, parsed, decoded, admitted."""
    from skewless.native.bytes_codec import encode_bytes
    from skewless.native.v2_codec import parse_infer_request
    from skewless.server.decode import decode_inputs

    tensors = []
    for name in RAW:
        arr = rows[name][a:b].reshape(-1, 1)
        data = encode_bytes(arr) if DATATYPES[name] == "BYTES" else arr.tobytes()
        tensors.append((name, DATATYPES[name], arr.shape, data))
    req = parse_infer_request(raw_request("churn", tensors, request_id=rid).SerializeToString())
    feeds, _ = decode_inputs(req.inputs, req.raw, mv)
    return mv.features.admit(feeds, req.id)


CATEGORIES = st.one_of(st.sampled_from(["month-to-month", "one-year", "two-year", "electronic-check",
                                        "credit-card", "region-03", "", "é"]), st.binary(max_size=6))


@given(st.data())
def test_any_split_into_requests_matches_the_offline_transform(churn_mv, data):
    n = data.draw(st.integers(1, 90), "rows")

    def column(elements):
        return data.draw(st.lists(elements, min_size=n, max_size=n))

    rows = {"tenure_months": np.array(column(st.floats()), dtype=np.float64),
            "monthly_charges": np.array(column(st.floats()), dtype=np.float64),
            "support_calls": np.array(column(st.integers(-(2**63), 2**63 - 1)), dtype=np.int64),
            "senior": np.array(column(st.booleans()), dtype=np.bool_),
            **{k: np.array(column(CATEGORIES), dtype=object) for k in ("contract", "payment_method", "region")}}
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=12), "cuts")) - {n})
    bounds = [0, *cuts, n]
    feeds = [_decoded(churn_mv, rows, a, b, f"r{a}") for a, b in zip(bounds, bounds[1:], strict=False)]
    served = churn_mv.features.transform_batch(feeds)
    offline = churn_mv.features.spec.transform(rows)
    for name, arr in offline.items():
        assert served[name].tobytes() == arr.tobytes(), name


def test_serving_benchmark_runs(tmp_path):
    """Proves benchmarks/features_serving_bench.py works end to end; judges no speed."""
    import importlib.util

    path = REPO_ROOT / "benchmarks" / "features_serving_bench.py"
    mod_spec = importlib.util.spec_from_file_location("features_serving_bench", path)
    bench = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "features_serving_bench.json").read_text())
    assert results["parity"]["mismatched_values"] == 0
    assert results["parity"]["rows_compared"] == results["parity"]["rows_sent"] > 0
    assert results["cost"]["batch"] == 64 and results["cost"]["added_us_per_row"] > 0
