"""Windowed aggregates on the serving path (issue 29), end to end against a real server.

A feature spec whose features are its aggregates (count, sum, mean, min, max, last, distinct over one key, a
composite key and strings) plus a raw value is served in front of an identity ONNX model, so the model's
output IS the served tensor. A stream of rows scored bucket by bucket (several requests per bucket, sent
concurrently, batched together by the server) over gRPC and over REST gives exactly ``spec.transform`` of the
same rows in order: the backfill. Events ingested over gRPC (Events/Ingest) and REST (POST .../events) land in
the same state; a restart with --aggregate-state-dir keeps it; the feature log replays through skew-check; the
state shows in /metrics and /v2/status; bad requests get clear errors; --workers 2 refuses such a model.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import CHANNEL_OPTIONS, RPC_TIMEOUT, expect_error, raw_request, serialize_bytes, wait_until
from onnx import TensorProto, helper
from serverproc import ServerProcess

from skewless.native.columns import column
from skewless.native.spec import FeatureSpec, content_hash
from skewless.protos import skewless_events_pb2 as events_pb

T0 = 1_700_000_000  # event times: Unix seconds, so the ingest lag is meaningful
BUCKET = 10
RAW = {"card": ("string", "BYTES"), "merchant": ("int", "INT64"), "ts": ("int", "INT64"),
       "amount": ("float", "FP64")}
AGGREGATES = [
    ("card_count_60", "count", ["card"], None, 60),
    ("card_sum_60", "sum", ["card"], "amount", 60),
    ("card_mean_30", "mean", ["card"], "amount", 30),
    ("card_min_60", "min", ["card"], "amount", 60),
    ("card_max_60", "max", ["card"], "amount", 60),
    ("card_last_60", "last", ["card"], "amount", 60),
    ("card_merchant_count_30", "count", ["card", "merchant"], None, 30),
    ("card_merchants_60", "distinct", ["card"], "merchant", 60),
    ("merchant_cards_60", "distinct", ["merchant"], "card", 60),
]
WIDTH = len(AGGREGATES) + 1
MODELS = ("agg_grpc", "agg_rest", "agg_ingest", "agg_log", "agg_binary", "agg_client")


def spec_doc() -> dict:
    aggregates = [{"name": n, "op": op, "keys": keys, "time": "ts", "value": value, "window": window,
                   "bucket": BUCKET, "time_unit": "s"} for n, op, keys, value, window in AGGREGATES]
    features = [{"name": n, "kind": "numeric", "inputs": [n], "output": "dense", "offset": i, "width": 1,
                 "encode": "value", "steps": []} for i, (n, *_) in enumerate(AGGREGATES)]
    features.append({"name": "amount", "kind": "numeric", "inputs": ["amount"], "output": "dense",
                     "offset": len(AGGREGATES), "width": 1, "encode": "value", "steps": []})
    doc = {"format": "skewless.features", "format_version": 1, "float_encoding": "hex", "hash": "murmur3_x86_32",
           "generator": "test_aggregates_serving",
           "inputs": [{"name": n, "dtype": dt, "shape": [1]} for n, (dt, _) in RAW.items()],
           "outputs": [{"name": "dense", "dtype": "float64", "shape": [-1, WIDTH]}],
           "features": features, "aggregates": aggregates}
    doc["sha256"] = content_hash(doc)
    return doc


def identity_model() -> bytes:
    graph = helper.make_graph([helper.make_node("Identity", ["dense"], ["dense_out"])], "aggregates_identity",
                              [helper.make_tensor_value_info("dense", TensorProto.DOUBLE, ["batch", WIDTH])],
                              [helper.make_tensor_value_info("dense_out", TensorProto.DOUBLE, ["batch", WIDTH])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def write_model(repo: Path, name: str, log_dir: Path | None = None) -> None:
    version = repo / name / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(identity_model())
    (version / "features.json").write_text(json.dumps(spec_doc()))
    params = {}
    if log_dir is not None:
        params = {"skewless.feature_log_rate": "1", "skewless.feature_log_dir": str(log_dir),
                  "skewless.feature_log_rotate_seconds": "0.3"}
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 16\n'
        "dynamic_batching { max_queue_delay_microseconds: 3000 }\n"
        + "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items()))


def plain_repo(repo: Path) -> None:
    """A model without a feature spec, for the 'no aggregates' error."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / "plain" / "1").mkdir(parents=True)
    (repo / "plain" / "1" / "model.onnx").write_bytes(model.SerializeToString())


def events(n: int, seed: int, start: int = T0) -> dict[str, np.ndarray]:
    """``n`` rows in time order over about n / 8 buckets: few cards and merchants, some amounts missing."""
    rng = np.random.default_rng(seed)
    ts = start + np.sort(rng.integers(0, n * BUCKET // 8, n)).astype(np.int64)
    amount = np.round(rng.normal(50, 30, n), 2)
    amount[rng.random(n) < 0.1] = np.nan
    return {"card": np.array([f"card-{i}" for i in rng.integers(0, 6, n)], dtype=object),
            "merchant": rng.integers(0, 4, n).astype(np.int64), "ts": ts, "amount": amount}


def take(data: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in data.items()}


def concat(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def backfill(spec: FeatureSpec, data: dict[str, np.ndarray], state=None) -> np.ndarray:
    return spec.transform(data, aggregate_state=state)["dense"] if state is not None else \
        spec.transform(data)["dense"]


def requests_of(data: dict[str, np.ndarray], seed: int) -> list[np.ndarray]:
    """Row indices of the requests that carry ``data``: each time bucket split into requests of 1 to 6 rows."""
    rng = np.random.default_rng(seed)
    buckets = data["ts"] // BUCKET
    out: list[list[np.ndarray]] = []
    for b in np.unique(buckets):
        rows = np.nonzero(buckets == b)[0]
        cuts = np.cumsum(rng.integers(1, 7, len(rows)))
        out.append([c for c in np.split(rows, cuts[cuts < len(rows)]) if len(c)])
    return out


def grpc_inputs(part: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, (_, datatype) in RAW.items():
        arr = part[name].reshape(-1, 1)
        inp = grpcclient.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def http_inputs(part: dict[str, np.ndarray]) -> list[httpclient.InferInput]:
    inputs = []
    for name, (_, datatype) in RAW.items():
        arr = part[name].reshape(-1, 1)
        inp = httpclient.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr, binary_data=True)
        inputs.append(inp)
    return inputs


def score_stream(url: str, model: str, data: dict[str, np.ndarray], transport: str, seed: int = 0) -> np.ndarray:
    """Score ``data`` bucket by bucket: the requests of a bucket concurrently, the next bucket after them."""
    served = np.full((len(data["ts"]), WIDTH), -1.0)
    if transport == "grpc":
        client = grpcclient.InferenceServerClient(url)
        try:
            with ThreadPoolExecutor(8) as pool:
                for bucket in requests_of(data, seed):
                    futures = [(idx, pool.submit(client.infer, model, grpc_inputs(take(data, idx)),
                                                 client_timeout=RPC_TIMEOUT)) for idx in bucket]
                    for idx, fut in futures:
                        served[idx] = fut.result().as_numpy("dense_out")
        finally:
            client.close()
        return served
    client = httpclient.InferenceServerClient(url, concurrency=8, network_timeout=RPC_TIMEOUT)
    try:  # tritonclient.http runs on gevent: its own async_infer gives the concurrency
        for bucket in requests_of(data, seed):
            pending = [(idx, client.async_infer(model, http_inputs(take(data, idx)))) for idx in bucket]
            for idx, req in pending:
                served[idx] = req.get_result().as_numpy("dense_out")
    finally:
        client.close()
    return served


def assert_same(served: np.ndarray, expected: np.ndarray) -> None:
    """Bit for bit (NaN where the backfill has NaN)."""
    assert served.shape == expected.shape
    diff = served.view(np.uint64) != expected.view(np.uint64)
    assert not diff.any(), (f"{int(diff.sum())} values differ, first at row/column "
                            f"{np.argwhere(diff)[0].tolist()}: served {served[diff][:5]}, backfill {expected[diff][:5]}")


# -- ingest helpers ------------------------------------------------------------------------------------------
def ingest_grpc(url: str, model: str, part: dict[str, np.ndarray], version: str = "") -> events_pb.IngestResponse:
    tensors = []
    for name, arr in part.items():
        datatype = RAW[name][1]
        data = serialize_bytes([s.encode() for s in arr]) if datatype == "BYTES" else np.ascontiguousarray(
            arr).tobytes()
        tensors.append((name, datatype, [len(arr), 1], data))
    req = raw_request(model, tensors, version=version)
    with grpc.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary("/skewless.v1.Events/Ingest", request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=events_pb.IngestResponse.FromString)
        return call(req, timeout=RPC_TIMEOUT)


def rest_post(url: str, path: str, doc: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{url}{path}", data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=RPC_TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def json_events(part: dict[str, list]) -> dict:
    return {"inputs": [{"name": name, "datatype": RAW[name][1], "shape": [len(values), 1], "data": values}
                       for name, values in part.items()]}


def ingest_state(spec: FeatureSpec, state, part: dict[str, np.ndarray], valid: dict | None = None) -> int:
    """What the server does with ingested events: the engine's ingest over the given columns only."""
    dtypes = {n: dt for n, (dt, _) in RAW.items()}
    cols = {}
    for name, arr in part.items():
        obj = (arr, valid[name]) if valid and name in valid and dtypes[name] != "string" else arr
        if valid and name in valid and dtypes[name] == "string":
            obj = np.array([v if ok else None for v, ok in zip(arr, valid[name], strict=True)], dtype=object)
        cols[name] = column(name, obj, dtypes[name])
    return state.ingest(cols, len(part["ts"]))


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("aggregates_feature_log")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, log_dir) -> Path:
    root = tmp_path_factory.mktemp("aggregates_repo")
    for name in MODELS:
        write_model(root, name, log_dir if name == "agg_log" else None)
    plain_repo(root)
    return root


@pytest.fixture(scope="module")
def server(repo) -> Iterator[ServerProcess]:
    proc = ServerProcess(repo).start()
    yield proc
    proc.assert_clean_exit()


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return FeatureSpec(spec_doc())


# -- tests ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_served_equals_backfill(server, spec, transport):
    data = events(320, seed=1)
    url = server.grpc_url if transport == "grpc" else server.rest_url
    served = score_stream(url, f"agg_{transport}", data, transport, seed=2)
    expected = backfill(spec, data)
    assert np.isfinite(expected[:, 1]).all() and (expected[:, 0] > 0).sum() > 200  # windows are not empty
    assert_same(served, expected)


def test_ingest_over_both_transports_lands_in_the_same_state(server, spec):
    history = events(120, seed=3)
    first, second = take(history, slice(0, 60)), take(history, slice(60, 120))
    # gRPC: keys, time and value, without the merchant (groups keyed by merchant record nothing of these)
    part = {k: first[k] for k in ("card", "ts", "amount")}
    resp = ingest_grpc(server.grpc_url, "agg_ingest", part)
    assert (resp.recorded, resp.late, resp.skipped) == (60, 0, 0)
    # REST JSON without amounts: a null card (recorded by the merchant group only), a null time (skipped) and
    # one event far older than every retention (late)
    cards = second["card"].tolist()
    cards[5] = None
    old = second["ts"].copy()
    old[7] = T0 - 10_000
    times: list = old.tolist()
    times[9] = None
    rest_part = {"card": cards, "merchant": second["merchant"].tolist(), "ts": times}
    status, body = rest_post(server.rest_url, "/v2/models/agg_ingest/versions/1/events", json_events(rest_part))
    assert status == 200, body
    assert body == {"recorded": 58, "late": 1, "skipped": 1}

    state = spec.new_aggregate_state()
    assert ingest_state(spec, state, part) == 60
    valid = {"card": np.arange(60) != 5, "ts": np.arange(60) != 9}
    assert ingest_state(spec, state, {"card": second["card"], "merchant": second["merchant"], "ts": old},
                        valid) == 58
    later = events(80, seed=4, start=int(history["ts"][-1]) + 1)
    served = score_stream(server.grpc_url, "agg_ingest", later, "grpc", seed=5)
    assert_same(served, backfill(spec, later, state))

    status_doc = json.loads(urllib.request.urlopen(f"{server.http_url}/v2/status/aggregates", timeout=10).read())
    (entry,) = status_doc["status"]["models"]["agg_ingest"].values()
    assert entry["ingested_rows"] == 118 and entry["keys"] > 0 and entry["ingest_lag_s"] > 0
    metrics = urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10).read().decode()
    assert 'skewless_aggregate_keys{model="agg_ingest"' in metrics
    assert 'skewless_aggregate_ingested_events_total{model="agg_ingest"' in metrics


def test_feature_client_ingests_over_grpc_and_http(server, spec):
    """skewless.client's FeatureClient.ingest: a table of any subset of the raw inputs, nulls included."""
    from skewless.client import FeatureClient, IngestReceipt

    history = events(90, seed=23)
    first = {k: history[k][:50] for k in ("card", "ts", "amount")}
    second = {k: history[k][50:] for k in ("card", "merchant", "ts")}
    second["card"] = second["card"].copy()
    second["card"][3] = None  # recorded by the merchant group only
    with FeatureClient(server.grpc_url, "grpc") as client:
        assert client.ingest("agg_client", first, max_rows=20) == IngestReceipt(50, 0, 0)
    with FeatureClient(server.rest_url, "http") as client:
        assert client.ingest("agg_client", second) == IngestReceipt(40, 0, 0)
        with pytest.raises(Exception, match="none of model 'agg_client' raw inputs"):
            client.ingest("agg_client", {"nope": [1, 2]})
    state = spec.new_aggregate_state()
    ingest_state(spec, state, first)
    valid = {"card": np.arange(40) != 3}
    ingest_state(spec, state, {k: history[k][50:] for k in ("card", "merchant", "ts")}, valid)
    later = events(40, seed=24, start=int(history["ts"][-1]) + 1)
    assert_same(score_stream(server.grpc_url, "agg_client", later, "grpc", seed=25), backfill(spec, later, state))


def test_binary_rest_events(server, spec):
    """Events as binary tensors after the JSON header (Triton's binary extension), then scored over REST."""
    history = events(90, seed=21)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(http_inputs(history))
    req = urllib.request.Request(f"http://{server.rest_url}/v2/models/agg_binary/events", data=body, method="POST",
                                 headers={"Inference-Header-Content-Length": str(json_size),
                                          "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=RPC_TIMEOUT) as resp:
        assert json.loads(resp.read()) == {"recorded": 90, "late": 0, "skipped": 0}
    state = spec.new_aggregate_state()
    backfill(spec, history, state)  # scoring records exactly what ingesting does
    later = events(60, seed=22, start=int(history["ts"][-1]) + 1)
    assert_same(score_stream(server.rest_url, "agg_binary", later, "rest", seed=23), backfill(spec, later, state))


def test_feature_log_replays_through_skew_check(server, spec, log_dir, tmp_path):
    import pyarrow as pa

    from skewless.native.skew import skew_check

    data = events(96, seed=6)
    score_stream(server.grpc_url, "agg_log", data, "grpc", seed=7)
    files = lambda: sorted((log_dir / "agg_log" / "1").glob("*.parquet"))  # noqa: E731
    wait_until(lambda: sum(pq.read_metadata(f).num_rows for f in files()) >= 96, 30, "the feature log's rows")
    report = skew_check(spec, files())
    assert report.rows == 96 and report.ok, report.format()
    # the replay reads the logged aggregate values: a changed value shows as a mismatch of its feature
    table = pa.concat_tables([pq.read_table(f) for f in files()])
    assert set(spec.aggregate_names) <= set(table.column_names)
    sums = table.column("card_sum_60").to_numpy().copy()
    sums[0] += 1.0
    forged = table.set_column(table.column_names.index("card_sum_60"), "card_sum_60", pa.array(sums))
    pq.write_table(forged.replace_schema_metadata(table.schema.metadata), tmp_path / "forged.parquet")
    report = skew_check(spec, [tmp_path / "forged.parquet"])
    assert report.mismatched_values == 1 and report.per_feature == {"card_sum_60": 1}


def test_errors(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        # a scoring request still needs every raw input
        inputs = [i for i in grpc_inputs(events(2, seed=8)) if i.name() != "ts"]
        expect_error(lambda: client.infer("agg_grpc", inputs, client_timeout=RPC_TIMEOUT), "INVALID_ARGUMENT",
                     "missing required input(s) ['ts']")
    finally:
        client.close()
    part = take(events(3, seed=9), slice(None))
    with pytest.raises(grpc.RpcError) as err:
        ingest_grpc(server.grpc_url, "plain", {"ts": part["ts"]})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has no windowed aggregates" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        ingest_grpc(server.grpc_url, "agg_ingest", {"amount": part["amount"]})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lack the key and time inputs of every aggregate" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        ingest_grpc(server.grpc_url, "missing_model", {"ts": part["ts"]})
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    status, body = rest_post(server.rest_url, "/v2/models/agg_ingest/events",
                             {"inputs": [{"name": "nope", "datatype": "INT64", "shape": [1, 1], "data": [1]}]})
    assert status == 400 and "unexpected inference input 'nope'" in body["error"]
    status, body = rest_post(server.rest_url, "/v2/models/agg_ingest/events",
                             {"inputs": [{"name": "ts", "datatype": "FP64", "shape": [1, 1], "data": [1.0]}]})
    assert status == 400 and "unexpected datatype FP64 for inference input 'ts'" in body["error"]
    status, body = rest_post(server.rest_url, "/v2/models/plain/events",
                             {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]})
    assert status == 400 and "has no windowed aggregates" in body["error"]


def test_event_times_far_ahead_of_the_clock_are_refused(server):
    """One far-future event would move its group's newest bucket and hide every window until then: the request
    (not its batch neighbours) is refused, scoring and ingest alike; a missing (masked) element is not a time."""
    import time

    future = int(time.time()) + 3 * 3600  # the default bound is one hour
    part = events(2, seed=21)
    part["ts"] = np.array([T0, future], dtype=np.int64)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        expect_error(lambda: client.infer("agg_grpc", grpc_inputs(part), client_timeout=RPC_TIMEOUT),
                     "INVALID_ARGUMENT", f"input 'ts' holds the event time {future} (s since the Unix epoch)")
        masked = grpc_inputs(part)
        companion = grpcclient.InferInput("ts__missing", [2, 1], "BOOL")
        companion.set_data_from_numpy(np.array([[False], [True]]))
        result = client.infer("agg_grpc", [*masked, companion], client_timeout=RPC_TIMEOUT)
        assert result.as_numpy("dense_out").shape[0] == 2
    finally:
        client.close()
    with pytest.raises(grpc.RpcError) as err:
        ingest_grpc(server.grpc_url, "agg_ingest", {"card": part["card"], "ts": part["ts"]})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ahead of the server's clock" in err.value.details() and "--aggregate-max-future" in err.value.details()
    status, body = rest_post(server.rest_url, "/v2/models/agg_ingest/events",
                             json_events({"card": ["card-1"], "ts": [future]}))
    assert status == 400 and "ahead of the server's clock" in body["error"]


def test_state_survives_a_restart(tmp_path, spec):
    repo = tmp_path / "repo"
    write_model(repo, "agg_grpc")
    state_dir = tmp_path / "state"
    data = events(200, seed=10)
    first, second = take(data, slice(0, 120)), take(data, slice(120, 200))
    proc = ServerProcess(repo, "--aggregate-state-dir", str(state_dir)).start()
    try:
        served_first = score_stream(proc.grpc_url, "agg_grpc", first, "grpc", seed=11)
    finally:
        proc.assert_clean_exit()
    assert (state_dir / "agg_grpc.aggstate").is_file()
    proc = ServerProcess(repo, "--aggregate-state-dir", str(state_dir)).start()
    try:
        status_doc = json.loads(urllib.request.urlopen(f"{proc.http_url}/v2/status/aggregates", timeout=10).read())
        (entry,) = status_doc["status"]["models"]["agg_grpc"].values()
        assert entry["restored"] is True and entry["events_recorded"] == 3 * 120  # 3 groups
        served_second = score_stream(proc.grpc_url, "agg_grpc", second, "grpc", seed=12)
    finally:
        proc.assert_clean_exit()
    assert_same(np.concatenate([served_first, served_second]), backfill(spec, data))


def test_saved_state_of_another_plan_is_set_aside(tmp_path, spec):
    repo = tmp_path / "repo"
    write_model(repo, "agg_grpc")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "agg_grpc.aggstate").write_bytes(b"not a state file")
    proc = ServerProcess(repo, "--aggregate-state-dir", str(state_dir)).start()
    try:
        assert "not restoring" in proc.stderr_text()
        data = events(40, seed=13)
        assert_same(score_stream(proc.grpc_url, "agg_grpc", data, "grpc", seed=14), backfill(spec, data))
    finally:
        proc.assert_clean_exit()
    assert (state_dir / "agg_grpc.aggstate.replaced").read_bytes() == b"not a state file"
    assert (state_dir / "agg_grpc.aggstate").is_file()  # this plan's state, saved at the stop


def test_workers_refuse_a_model_with_aggregates(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "agg_grpc")
    proc = ServerProcess(repo, "--workers", "2", start_timeout=60)
    with pytest.raises(pytest.fail.Exception, match="--workers 2 each process would see a share of the events"):
        proc.start()
    proc.kill()


# -- the server's states, without a server -------------------------------------------------------------------
class _Stage:
    """What AggregateStates needs of a feature stage: a state factory (the spec's) and the ingest hook."""

    def __init__(self, spec: FeatureSpec):
        self.spec = spec

    def new_aggregate_state(self, max_keys: int = 0):
        return self.spec.new_aggregate_state(max_keys=max_keys)


def test_versions_share_a_state_and_the_last_release_saves_it(tmp_path, spec):
    from skewless.server.features.aggregate_settings import AggregateSettings
    from skewless.server.features.aggregate_states import AggregateStates

    states = AggregateStates(AggregateSettings(tmp_path, save_interval_s=3600.0))
    v1 = states.acquire("m", _Stage(spec))
    v2 = states.acquire("m", _Stage(spec))
    assert v1 is v2 and v1.refs == 2 and not v1.restored
    data = events(50, seed=15)
    backfill(spec, data, v1.state)
    states.release(v1)
    assert not (tmp_path / "m.aggstate").exists()  # a version still holds it
    states.release(v2)
    assert (tmp_path / "m.aggstate").is_file() and list(states.entries()) == []
    again = states.acquire("m", _Stage(spec))
    reference = spec.new_aggregate_state()
    backfill(spec, data, reference)
    same = lambda st: {k: v for k, v in st.stats().items() if k != "bytes"}  # noqa: E731 (memory layout differs)
    assert again.restored and same(again.state) == same(reference)
    later = events(30, seed=16, start=int(data["ts"][-1]) + 1)
    assert_same(backfill(spec, later, again.state), backfill(spec, later, reference))
    states.release(again)


def test_workers_refuse_in_process_state(spec):
    from skewless.server.features.aggregate_states import AggregatesRefused, AggregateStates

    states = AggregateStates(workers=3)
    with pytest.raises(AggregatesRefused, match="with --workers 3 each process would see a share"):
        states.acquire("m", _Stage(spec))
    assert states.refused and list(states.entries()) == []


def test_a_new_version_of_the_same_plan_keeps_the_state(tmp_path, spec):
    repo = tmp_path / "repo"
    write_model(repo, "agg_grpc")
    data = events(160, seed=17)
    first, second = take(data, slice(0, 90)), take(data, slice(90, 160))
    proc = ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "agg_grpc").start()
    try:
        served_first = score_stream(proc.grpc_url, "agg_grpc", first, "grpc", seed=18)
        (repo / "agg_grpc" / "2").mkdir()
        for f in ("model.onnx", "features.json"):
            (repo / "agg_grpc" / "2" / f).write_bytes((repo / "agg_grpc" / "1" / f).read_bytes())
        with grpcclient.InferenceServerClient(proc.grpc_url) as client:
            client.load_model("agg_grpc")
            assert client.get_model_metadata("agg_grpc").versions == ["2"]
        served_second = score_stream(proc.grpc_url, "agg_grpc", second, "grpc", seed=19)
    finally:
        proc.assert_clean_exit()
    assert_same(np.concatenate([served_first, served_second]), backfill(spec, data))


def test_warmup_and_shadow_runs_leave_the_state_alone(spec):
    from skewless.server.features.stage import FeatureStage

    stage = FeatureStage(spec, "m", 1, None)
    rows = events(20, seed=20)
    feeds = {k: v.reshape(-1, 1) if k != "card" else v for k, v in rows.items()}
    warm = stage.model_feeds(feeds)  # a warmup sample: an empty state of its own, as the backfill
    assert_same(np.array(warm["dense"]), backfill(spec, rows))
    stage.transform_batch([feeds], record=False)  # a shadow's mirrored batch
    assert stage.aggregates.stats()["events_recorded"] == 0
    out = stage.transform_batch([feeds])
    assert stage.aggregates.stats()["events_recorded"] == 3 * 20
    assert_same(np.array(out["dense"]), backfill(spec, rows))
    # A shadow's copy of the next rows reads the windows the primary reads (the live state), recording nothing.
    later = events(20, seed=22, start=int(rows["ts"].max()) + 4 * BUCKET)
    later_feeds = {k: v.reshape(-1, 1) if k != "card" else v for k, v in later.items()}
    shadow = np.array(stage.transform_batch([later_feeds], record=False)["dense"])
    assert stage.aggregates.stats()["events_recorded"] == 3 * 20
    primary = np.array(stage.transform_batch([later_feeds])["dense"])
    assert_same(primary, backfill(spec, concat(rows, later))[20:])
    # Rows of the batch's first bucket see only what was recorded before the batch, in the primary too.
    first_bucket = later["ts"] // BUCKET == later["ts"].min() // BUCKET
    assert_same(shadow[first_bucket], primary[first_bucket])
    empty = backfill(spec, later)  # what an empty state of its own (the shadow's view before) gives
    assert not np.array_equal(shadow[first_bucket], empty[first_bucket])


def test_the_file_belongs_to_the_plan_attached_last(tmp_path, spec):
    from skewless.server.features.aggregate_settings import AggregateSettings
    from skewless.server.features.aggregate_states import AggregateStates

    doc = spec_doc()
    doc["aggregates"][0]["window"] = 120
    doc["sha256"] = content_hash(doc)
    other = FeatureSpec(doc)
    states = AggregateStates(AggregateSettings(tmp_path, save_interval_s=3600.0))
    old = states.acquire("m", _Stage(spec))
    new = states.acquire("m", _Stage(other))  # a version with another plan: a state of its own
    assert old is not new and old.plan_hash != new.plan_hash and new.state.stats()["keys"] == 0
    backfill(spec, events(30, seed=24), old.state)
    states.release(old)  # the old plan no longer owns the file: nothing written
    assert not (tmp_path / "m.aggstate").exists()
    backfill(other, events(30, seed=25), new.state)
    states.release(new)
    restored = states.acquire("m", _Stage(other))
    assert restored.restored and restored.state.stats()["events_recorded"] == 3 * 30
    states.release(restored)
    mismatch = states.acquire("m", _Stage(spec))  # the saved plan differs: set aside, start empty
    assert not mismatch.restored and mismatch.state.stats()["keys"] == 0
    assert (tmp_path / "m.aggstate.replaced").is_file()
    states.release(mismatch)
