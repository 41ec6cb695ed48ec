"""skewless.client end to end and as units.

Against a real server subprocess (the churn feature model, prediction log on): a DataFrame or Arrow table of
raw rows scored over gRPC and HTTP equals ``spec.transform`` + onnxruntime on the same rows, bit for bit
(float NaN/nulls included, which the server already reads as missing); chunked and concurrent requests keep
row order; labels submitted through the client are joined with the logged predictions; bad tables and
non-feature models get clear errors before anything is sent.

The ``NAME__missing`` companions of INT/BOOL/BYTES nulls are checked here as units (the InferInputs built for
a table with nulls); tests/test_missing_values.py scores such tables against the server.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import wait_until
from hypothesis import given
from hypothesis import strategies as st
from serverproc import ServerProcess
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from skewless.client import (
    ByteColumn,
    ClientError,
    FeatureClient,
    MissingColumn,
    MissingValuesRefused,
    ModelSchema,
    NotAFeatureModel,
    Prediction,
    UnsendableColumn,
    grpc_inputs,
    http_inputs,
    request_tensors,
    serialize_bytes,
)
from skewless.client.columns import encode_column

LOGGED = 'parameters { key: "skewless.prediction_log_rate" value { string_value: "1" } }\n'
CHURN_MAX_BATCH = 64  # examples/models/churn/config.pbtxt


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("client_predictions")


@pytest.fixture(scope="module")
def server(make_repo, logdir) -> Iterator[ServerProcess]:
    from skewless.examples.generate import write_churn_model

    repo = make_repo("mlp")
    write_churn_model(repo)
    with open(repo / "churn" / "config.pbtxt", "a") as f:
        f.write(LOGGED)
    proc = ServerProcess(repo, "--prediction-log", str(logdir), "--prediction-log-rotate-seconds", "0.3",
                         "--prediction-log-flush-seconds", "0.05").start()
    yield proc
    proc.assert_clean_exit()


@pytest.fixture(scope="module")
def offline(server):
    """(spec, session): what `skewless transform` and a training pipeline would run on the same rows."""
    import onnxruntime as ort

    from skewless.native.spec import FeatureSpec

    version = server.repository / "churn" / "1"
    return FeatureSpec.load(version / "features.json"), ort.InferenceSession(str(version / "model.onnx"))


def churn_frame(n: int, seed: int, nulls: bool = False) -> pd.DataFrame:
    from skewless.examples.generate import churn_dataset

    data = {k: v for k, v in churn_dataset(n, seed=seed).items() if k != "churned"}
    df = pd.DataFrame(data)
    if not nulls:
        df["tenure_months"] = df["tenure_months"].fillna(3.5)
    df["extra"] = np.arange(n)  # a column the model does not take: ignored
    return df


def offline_scores(offline, table, spans) -> np.ndarray:
    """The model run on the offline features, one onnxruntime call per request span (the batches the server
    ran, since requests are sent one at a time here)."""
    spec, sess = offline
    feats = spec.transform(table)
    return np.concatenate([sess.run(["probabilities"], {k: v[a:b] for k, v in feats.items()})[0]
                           for a, b in spans])


def spans_of(n: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, n)) for a in range(0, n, step)]


# -- against the server -------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_dataframe_scores_equal_offline(server, offline, protocol):
    df = churn_frame(150, seed=5)
    url = server.grpc_url if protocol == "grpc" else server.rest_url
    with FeatureClient(url, protocol) as client:
        schema = client.schema("churn")
        assert {i.name for i in schema.inputs} == set(offline[0].input_names)
        assert schema.max_batch_size == CHURN_MAX_BATCH
        got = client.predict("churn", df)  # no max_rows: requests of max_batch_size rows
    assert got.spans == spans_of(150, CHURN_MAX_BATCH) and len(got.request_ids) == 3
    assert got.feature_spec_hash == offline[0].sha256 and got.model_version == "1"
    want = offline_scores(offline, df, got.spans)
    assert got["probabilities"].dtype == np.float32 and got["probabilities"].shape == (150, 2)
    assert got["probabilities"].tobytes() == want.tobytes()
    frame = got.to_table()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["probabilities_0", "probabilities_1"]
    assert np.array_equal(frame["probabilities_1"].to_numpy(), want[:, 1])
    arrow = got.to_table("arrow")
    assert isinstance(arrow, pa.Table) and arrow.num_rows == 150


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_arrow_table_with_float_nulls_equals_offline(server, offline, protocol):
    """Arrow nulls and NaN in float columns go as NaN, which the server reads as missing, like transform."""
    df = churn_frame(100, seed=9, nulls=True)
    assert df["tenure_months"].isna().any()
    table = pa.Table.from_pandas(df, preserve_index=False)
    charges = table.column("monthly_charges").to_pylist()
    charges[3] = charges[40] = None
    table = table.set_column(table.schema.get_field_index("monthly_charges"), "monthly_charges",
                             pa.array(charges, pa.float64()))
    # strings as a dictionary column and as string_view-free large strings: both are read as BYTES
    table = table.set_column(table.schema.get_field_index("contract"), "contract",
                             table.column("contract").dictionary_encode())
    url = server.grpc_url if protocol == "grpc" else server.rest_url
    with FeatureClient(url, protocol) as client:
        got = client.predict("churn", table, max_rows=50)
    want = offline_scores(offline, table, got.spans)
    assert got["probabilities"].tobytes() == want.tobytes()


def test_chunks_keep_row_order_when_sent_concurrently(server, offline):
    df = churn_frame(400, seed=11)
    with FeatureClient(server.grpc_url, max_rows=7) as client:
        one_by_one = client.predict("churn", df)
        parallel = client.predict("churn", df, concurrency=4, request_id="order")
    assert len(parallel.request_ids) == len(spans_of(400, 7)) == 58
    assert parallel.request_ids == [f"order-{i}" for i in range(58)]
    # concurrent requests may share a server batch: equal to the last float rounding, in the same order
    assert np.allclose(parallel["probabilities"], one_by_one["probabilities"], rtol=1e-5, atol=1e-7)
    assert one_by_one["probabilities"].tobytes() == offline_scores(offline, df, one_by_one.spans).tobytes()
    with FeatureClient(server.rest_url, "http", max_rows=9, concurrency=3) as client:
        via_http = client.predict("churn", df, parameters={"tag": "batch-7"}, headers={"x-team": "a"})
    assert via_http.parameters == {"tag": "batch-7"}
    assert np.allclose(via_http["probabilities"], one_by_one["probabilities"], rtol=1e-5, atol=1e-7)


def _logged_ids(logdir: Path, kind: str) -> set[str]:
    files = sorted((logdir / "churn").glob(f"{kind}-*.parquet"))
    return set(pq.ParquetDataset(files).read().column("request_id").to_pylist()) if files else set()


def _joined(logdir: Path) -> list[dict]:
    files = sorted((logdir / "churn").glob("joined-*.parquet"))
    return pq.ParquetDataset(files).read().to_pylist() if files else []


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_labels_through_the_client_are_joined(server, logdir, protocol):
    df = churn_frame(90, seed=21 if protocol == "grpc" else 22)
    y = (np.arange(90) % 3 == 0).astype(np.float64)
    url = server.grpc_url if protocol == "grpc" else server.rest_url
    with FeatureClient(url, protocol, max_rows=40) as client:
        # gRPC: our ids; HTTP: the server assigns them, and the client hands them back
        pred = client.predict("churn", df, request_id=f"lbl-{protocol}" if protocol == "grpc" else "")
        assert len(set(pred.request_ids)) == 3 and all(pred.request_ids)
        wait_until(lambda: set(pred.request_ids) <= _logged_ids(logdir, "predictions"), 10,
                   "the predictions in the log")
        receipt = client.submit_labels("churn", pred, y)
        assert (receipt.joined, receipt.pending, receipt.unknown) == (3, 0, 0)
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.submit_labels("nope", {"x": 1.0})
    wait_until(lambda: set(pred.request_ids) <= {r["request_id"] for r in _joined(logdir)}, 10, "joined rows")
    rows = [r for r in _joined(logdir) if r["request_id"] in pred.request_ids]
    assert len(rows) == 90
    first = {rid: a for rid, (a, _) in zip(pred.request_ids, pred.spans, strict=True)}
    for r in rows:
        i = first[r["request_id"]] + r["row"]
        assert r["label"] == y[i]
        assert r["score"] == pytest.approx(float(pred["probabilities"][i, -1]))


def test_labels_before_the_prediction_is_logged_are_held(server):
    with FeatureClient(server.grpc_url) as client:
        receipt = client.submit_labels("churn", {"not-yet-served": [1.0, 0.0]})
    assert (receipt.joined, receipt.pending, receipt.unknown) == (0, 1, 0)


def test_clear_errors_before_sending(server):
    df = churn_frame(10, seed=1)
    with FeatureClient(server.grpc_url) as client:
        with pytest.raises(NotAFeatureModel, match="model 'mlp' is not a feature model: input 'input'"):
            client.predict("mlp", df)
        with pytest.raises(MissingColumn, match="needs column 'region'"):
            client.predict("churn", df.drop(columns=["region"]))
        bad = df.assign(support_calls=df["support_calls"] + 0.5)
        with pytest.raises(UnsendableColumn, match="column 'support_calls' holds non-integer values"):
            client.predict("churn", bad)
        with pytest.raises(UnsendableColumn, match="column 'contract' holds int"):
            client.predict("churn", df.assign(contract=np.arange(10)))
        with pytest.raises(UnsendableColumn, match="column 'senior' holds"):
            client.predict("churn", df.assign(senior=["yes"] * 10))
        with pytest.raises(ClientError, match="no rows"):
            client.predict("churn", df.iloc[:0])
        with pytest.raises(ClientError, match="got 1 labels for a prediction of 2 rows"):
            client.submit_labels("churn", Prediction({}, ["a"], [(0, 2)]), [1.0])
        with pytest.raises(InferenceServerException, match="nope"):
            client.predict("nope", df)
    with pytest.raises(ValueError, match="protocol"):
        FeatureClient(server.grpc_url, "udp")


# -- the missing-value wire design, as units -----------------------------------------------------------------
def churn_metadata(companions: bool = True) -> dict:
    """ModelMetadata (JSON form, as tritonclient returns it) of churn with the agreed companion inputs."""
    raw = [("tenure_months", "FP64"), ("monthly_charges", "FP64"), ("support_calls", "INT64"),
           ("senior", "BOOL"), ("contract", "BYTES"), ("payment_method", "BYTES"), ("region", "BYTES")]
    inputs = [{"name": n, "datatype": d, "shape": ["-1", "1"]} for n, d in raw]
    if companions:
        inputs += [{"name": f"{n}__missing", "datatype": "BOOL", "shape": [-1, 1]} for n, _ in raw]
    return {"name": "churn", "versions": ["1"], "platform": "onnxruntime_onnx", "inputs": inputs,
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]}


def frame_with_nulls() -> pd.DataFrame:
    return pd.DataFrame({
        "tenure_months": [1.0, np.nan, 3.0, None, 5.0],
        "monthly_charges": pd.array([10.5, None, 30.0, 40.0, 50.0], dtype="Float64"),
        "support_calls": pd.array([1, None, 3, 4, None], dtype="Int64"),
        "senior": pd.array([True, False, None, True, False], dtype="boolean"),
        "contract": pd.Series(["one-year", None, "two-year", "one-year", "two-year"], dtype="category"),
        "payment_method": ["card", "cash", "card", None, "card"],
        "region": ["north", "south", "east", "west", "north"],  # no nulls: no companion
    })


def _tensors(table, schema: ModelSchema, start: int = 0, stop: int | None = None):
    columns = {raw.name: encode_column(table[raw.name] if not isinstance(table, pa.Table)
                                       else table.column(raw.name), raw) for raw in schema.inputs}
    n = len(table) if not isinstance(table, pa.Table) else table.num_rows
    return {t.name: t for t in request_tensors(schema.inputs, columns, start, n if stop is None else stop)}


def _wire_strings(values) -> bytes:
    return serialize_byte_tensor(np.array(values, dtype=object)).item()


@pytest.mark.parametrize("source", ["pandas", "arrow"])
def test_nulls_become_companion_masks(source):
    schema = ModelSchema.from_metadata(churn_metadata())
    assert {r.name: r.companion for r in schema.inputs}["senior"] == "senior__missing"
    df = frame_with_nulls()
    table = df if source == "pandas" else pa.Table.from_pandas(df, preserve_index=False)
    t = _tensors(table, schema)
    assert sorted(t) == sorted(["tenure_months", "monthly_charges", "support_calls", "support_calls__missing",
                                "senior", "senior__missing", "contract", "contract__missing", "payment_method",
                                "payment_method__missing", "region"])
    # floats carry missing as NaN, without a companion (a NaN in a float input is missing)
    assert t["tenure_months"].datatype == "FP64" and t["tenure_months"].shape == (5, 1)
    assert np.array_equal(np.isnan(t["tenure_months"].array[:, 0]), [False, True, False, True, False])
    assert np.array_equal(np.isnan(t["monthly_charges"].array[:, 0]), [False, True, False, False, False])
    for name, mask in [("support_calls", [0, 1, 0, 0, 1]), ("senior", [0, 0, 1, 0, 0]),
                       ("contract", [0, 1, 0, 0, 0]), ("payment_method", [0, 0, 0, 1, 0])]:
        comp = t[f"{name}__missing"]
        assert comp.datatype == "BOOL" and comp.shape == (5, 1) and comp.array.dtype == np.bool_
        assert comp.array[:, 0].tolist() == [bool(m) for m in mask], name
    assert t["support_calls"].datatype == "INT64" and t["support_calls"].array[:, 0].tolist() == [1, 0, 3, 4, 0]
    assert t["senior"].datatype == "BOOL" and t["senior"].array[:, 0].tolist() == [True, False, False, True, False]
    # strings: the BYTES wire form, a missing element sent empty
    assert t["contract"].datatype == "BYTES"
    assert t["contract"].payload == _wire_strings(["one-year", "", "two-year", "one-year", "two-year"])
    assert t["payment_method"].payload == _wire_strings(["card", "cash", "card", "", "card"])
    assert t["region"].payload == _wire_strings(["north", "south", "east", "west", "north"])
    # a request whose rows hold no null sends no companion for that column
    part = _tensors(table, schema, 2, 4)
    assert sorted(n for n in part if n.endswith("__missing")) == ["payment_method__missing", "senior__missing"]
    assert part["senior__missing"].array[:, 0].tolist() == [True, False]
    assert part["payment_method"].payload == _wire_strings(["card", ""])


def test_companions_reach_tritonclient_inputs():
    schema = ModelSchema.from_metadata(churn_metadata())
    tensors = list(_tensors(frame_with_nulls(), schema).values())
    for inputs, content in ((grpc_inputs(tensors), "_get_content"), (http_inputs(tensors), "_get_binary_data")):
        by_name = {i.name(): i for i in inputs}
        assert set(by_name) == {t.name for t in tensors}
        for t in tensors:
            inp = by_name[t.name]
            assert inp.datatype() == t.datatype and list(inp.shape()) == list(t.shape)
            raw = getattr(inp, content)()
            assert raw == (t.payload if t.payload is not None else t.array.tobytes()), t.name
        assert np.frombuffer(getattr(by_name["senior__missing"], content)(), np.bool_).tolist() == \
            [False, False, True, False, False]


def test_nulls_without_companions_are_refused():
    """A server that lists no NAME__missing input cannot be told a BYTES/INT/BOOL value is missing."""
    schema = ModelSchema.from_metadata(churn_metadata(companions=False))
    assert all(r.companion is None for r in schema.inputs)
    client = FeatureClient("127.0.0.1:1")  # never contacted: the schema is cached below
    client._schemas[("churn_old", "")] = schema
    with pytest.raises(MissingValuesRefused, match="column 'support_calls' has 2 missing value"):
        client.encode("churn_old", frame_with_nulls())
    # float nulls alone need no companion
    ok = frame_with_nulls()[["tenure_months", "monthly_charges"]].assign(
        support_calls=1, senior=True, contract="a", payment_method="b", region="c")
    _, cols = client.encode("churn_old", ok)
    assert all(c.mask is None for c in cols.values())
    client.close()


def test_column_conversions():
    schema = ModelSchema.from_metadata(churn_metadata())
    raw = {r.name: r for r in schema.inputs}
    # a pandas int column with NaN is float64: integral values go to INT64, NaN is missing
    col = encode_column(pd.Series([1.0, np.nan, 7.0]), raw["support_calls"])
    assert col.values.tolist() == [1, 0, 7] and col.mask.tolist() == [False, True, False]
    # ints are read as floats for an FP64 input; object columns of numbers and None too
    assert encode_column(np.array([1, 2], np.int32), raw["tenure_months"]).values.dtype == np.float64
    col = encode_column(np.array([True, None], dtype=object), raw["senior"])
    assert col.values.tolist() == [True, False] and col.mask.tolist() == [False, True]
    # Arrow large strings, binary and chunked arrays
    chunked = pa.chunked_array([pa.array(["a", None], pa.large_string()), pa.array([b"\xff"], pa.binary())
                                .cast(pa.large_string(), safe=False)])
    col = encode_column(chunked, raw["region"])
    assert serialize_bytes(col.values, 0, 3) == _wire_strings([b"a", b"", b"\xff"])
    assert col.mask.tolist() == [False, True, False]
    # a sliced table: Arrow's offsets start past 0
    sliced = pa.table({"s": pa.array(["x", "yy", None, "zzz"]), "i": pa.array([1, None, 3, 4])}).slice(1)
    col = encode_column(sliced.column("s"), raw["region"])
    assert serialize_bytes(col.values, 1, 3) == _wire_strings(["", "zzz"]) and col.mask.tolist() == [0, 1, 0]
    col = encode_column(sliced.column("i"), raw["support_calls"])
    assert col.values.tolist() == [0, 3, 4] and col.mask.tolist() == [True, False, False]
    # the caller's arrays are never written to
    floats = np.array([1.5, np.nan, 2.0])
    ints = pd.Series(pd.array([4, None, 6], dtype="Int64"))
    assert np.isnan(encode_column(pd.Series(floats), raw["tenure_months"]).values[1])
    assert encode_column(ints, raw["support_calls"]).values.tolist() == [4, 0, 6]
    assert np.isnan(floats[1]) and ints.isna().tolist() == [False, True, False]
    with pytest.raises(UnsendableColumn, match="outside the range"):
        encode_column(np.array([2**40]), schema.inputs[0].__class__("x", "INT32", (-1, 1), None))
    with pytest.raises(UnsendableColumn, match="holds Arrow timestamp"):
        encode_column(pa.array([1, 2], pa.timestamp("s")), raw["tenure_months"])


@given(st.lists(st.one_of(st.binary(max_size=20), st.text(max_size=8)), max_size=30), st.data())
def test_bytes_wire_form_equals_tritonclients(values, data):
    offsets = np.zeros(len(values) + 1, np.int64)
    encoded = [v.encode() if isinstance(v, str) else v for v in values]
    np.cumsum([len(v) for v in encoded], out=offsets[1:])
    col = ByteColumn(offsets, np.frombuffer(b"".join(encoded), np.uint8))
    a = data.draw(st.integers(0, len(values)))
    b = data.draw(st.integers(a, len(values)))
    want = _wire_strings(encoded[a:b]) if b > a else b""
    assert serialize_bytes(col, a, b) == want



def test_strings_without_pyarrow(monkeypatch):
    """Without pyarrow, object columns are encoded value by value: same wire bytes, same masks."""
    schema = ModelSchema.from_metadata(churn_metadata())
    raw = {r.name: r for r in schema.inputs}
    values = np.array(["a", None, b"\xff", "\u00e9", np.nan], dtype=object)
    with_arrow = encode_column(values, raw["region"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    without = encode_column(values, raw["region"])
    assert serialize_bytes(without.values, 0, 5) == serialize_bytes(with_arrow.values, 0, 5)
    assert without.mask.tolist() == with_arrow.mask.tolist() == [False, True, False, False, True]
    with pytest.raises(UnsendableColumn, match=r"holds 3 \(int\)"):
        encode_column(np.array(["a", 3], dtype=object), raw["region"])


def test_client_imports_nothing_of_the_server():
    code = ("import sys, skewless.client; "
            "bad = [m for m in sys.modules if m.startswith(('skewless.server', 'pandas'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
