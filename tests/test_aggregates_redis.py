"""The Redis aggregate store (issue 29): state shared by replicas and ``--workers`` through a real redis-server.

At the store level (no server), random plans and streams cut into random batches, mixed with ingests, give the
plain-Python reference's values bit for bit, as the in-process engine does. Then two server processes (one of
them with ``--workers 2``) share one Redis: rows replayed bucket by bucket, requests of a bucket sent
concurrently to both, equal the backfill; events ingested through either land in the same state; a Redis that
is down or refusing writes gives UNAVAILABLE / 503 with the reason and records nothing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_aggregates_engine import PROPERTY, engine, plans, reference, streams, sub, to_columns
from test_aggregates_engine import assert_same as assert_same_values

redis = pytest.importorskip("redis", reason="the redis extra is not installed")
if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)", allow_module_level=True)

from skewless.benchmarks.servers import RedisUnavailable, local_redis  # noqa: E402
from skewless.server.features.aggregate_redis import (  # noqa: E402
    AggregateStoreUnavailable,
    RedisAggregateStore,
    connect,
)


def free_port() -> int:
    """A port nothing listens on (for a Redis that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[SimpleNamespace]:
    try:
        with local_redis() as url:
            yield SimpleNamespace(url=url)
    except RedisUnavailable as exc:
        pytest.fail(str(exc))


def store_of(plan, url: str) -> RedisAggregateStore:
    """A store of ``plan`` in its own namespace (a new model name) of the Redis at ``url``."""
    return RedisAggregateStore(url, f"m-{uuid.uuid4().hex}", lambda: engine(plan), grace_s=60)


# -- the store against the reference ---------------------------------------------------------------------------
@PROPERTY
@given(plan=plans(), rows=streams(), data=st.data())
def test_store_equals_reference_over_any_batches_and_ingests(redis_server, plan, rows, data):
    n = len(rows["t"])
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=6)))
    bounds = [0, *cuts, n]
    store = store_of(plan, redis_server.url)
    ref = reference(plan)
    names = [a["name"] for a in plan]
    try:
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            part = sub(rows, range(lo, hi))
            if data.draw(st.integers(0, 3)) == 0:  # an ingest of some of the inputs
                keep = data.draw(st.sets(st.sampled_from(sorted(part)), min_size=1))
                part = {k: v for k, v in part.items() if k in keep}
                assert store.ingest(to_columns(part), hi - lo) == ref.ingest(part)
            else:
                got = store.score(to_columns(part), hi - lo)
                assert_same_values(got, ref.score(part), names)
        stats = store.stats()
        assert stats["events_late"] == sum(g.late for g in ref.groups.values())
    finally:
        store.close()


def test_equal_events_stay_distinct_and_many_processes_interleave(redis_server):
    """Identical rows are separate events; two stores (two processes' worth) interleaving batches on one
    Redis give the values of one engine fed the batches in commit order."""
    plan = [{"name": "n", "op": "count", "keys": ["ks"], "time": "t", "value": None, "window": 3, "bucket": 1,
             "time_unit": "s"},
            {"name": "s", "op": "sum", "keys": ["ks"], "time": "t", "value": "vf", "window": 2, "bucket": 1,
             "time_unit": "s"},
            {"name": "d", "op": "distinct", "keys": ["ks"], "time": "t", "value": "vs", "window": 3, "bucket": 1,
             "time_unit": "s"}]
    model = f"m-{uuid.uuid4().hex}"
    a = RedisAggregateStore(redis_server.url, model, lambda: engine(plan))
    b = RedisAggregateStore(redis_server.url, model, lambda: engine(plan))
    one = engine(plan)
    rng = np.random.default_rng(7)
    try:
        for t in range(12):
            for i in range(4):
                k = int(rng.integers(1, 4))
                part = {"ks": ["x"] * k, "t": [t] * k, "vf": [1.25] * k, "vs": ["same"] * k}
                got = (a if i % 2 else b).score(to_columns(part), k)
                assert_same_values(got, one.score(to_columns(part), k), ["n", "s", "d"])
        assert got["n"][0] > 4  # the windows hold many identical events
    finally:
        a.close()
        b.close()


def test_a_refused_transaction_records_nothing(redis_server):
    """Redis refusing writes (out of memory) fails the whole batch with AggregateStoreUnavailable and applies
    none of it: the next batches give the values of a state that never saw it."""
    plan = [{"name": "n", "op": "count", "keys": ["ks"], "time": "t", "value": None, "window": 4, "bucket": 1,
             "time_unit": "s"}]
    store = store_of(plan, redis_server.url)
    one = engine(plan)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        first = {"ks": ["a", "b"], "t": [1, 1]}
        assert_same_values(store.score(to_columns(first), 2), one.score(to_columns(first), 2), ["n"])
        admin.config_set("maxmemory", "1")
        try:
            with pytest.raises(AggregateStoreUnavailable, match="unavailable .*the batch was not recorded"):
                store.score(to_columns({"ks": ["a"] * 3, "t": [2] * 3}), 3)
        finally:
            admin.config_set("maxmemory", "0")
        assert store.stats()["store_errors"] == 1
        after = {"ks": ["a", "b"], "t": [3, 3]}
        got = store.score(to_columns(after), 2)
        assert got["n"].tolist() == [1.0, 1.0]
        assert_same_values(got, one.score(to_columns(after), 2), ["n"])
    finally:
        store.close()
        admin.close()


def test_redis_down_is_unavailable_with_the_reason():
    plan = [{"name": "n", "op": "count", "keys": ["ks"], "time": "t", "value": None, "window": 4, "bucket": 1,
             "time_unit": "s"}]
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisAggregateStore(url, "m", lambda: engine(plan), client=connect(url))
    assert store.ping() is not None
    with pytest.raises(AggregateStoreUnavailable, match=f"aggregate store {url} of model 'm' is unavailable "
                                                        r"\(ConnectionError"):
        store.score(to_columns({"ks": ["a"], "t": [1]}), 1)
    with pytest.raises(AggregateStoreUnavailable):
        store.ingest(to_columns({"ks": ["a"], "t": [1]}), 1)
    assert store.stats()["store_errors"] == 2


# -- servers sharing one Redis -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory, redis_server):
    """Two server processes on one Redis: A with --workers 2, B with one process."""
    from serverproc import ServerProcess
    from test_aggregates_serving import write_model

    root = tmp_path_factory.mktemp("aggregates_redis_repo")
    for name in ("agg_shared", "agg_shared_ingest"):
        write_model(root, name)
    store = ("--aggregate-store", redis_server.url)
    a = ServerProcess(root, *store, "--workers", "2", start_timeout=90).start()
    try:
        b = ServerProcess(root, *store, start_timeout=90).start()
    except BaseException:
        a.kill()
        raise
    yield a, b
    for proc in (a, b):
        proc.assert_clean_exit()


def score_across(urls: list[str], model: str, data: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """Score ``data`` bucket by bucket, the requests of a bucket sent concurrently over several connections
    to the given servers (a new connection may land on either worker of a --workers server)."""
    import tritonclient.grpc as grpcclient
    from helpers import RPC_TIMEOUT
    from test_aggregates_serving import WIDTH, grpc_inputs, requests_of, take

    served = np.full((len(data["ts"]), WIDTH), -1.0)
    clients = [grpcclient.InferenceServerClient(u) for u in urls for _ in range(3)]
    try:
        with ThreadPoolExecutor(8) as pool:
            for bucket in requests_of(data, seed):
                futures = [(idx, pool.submit(clients[i % len(clients)].infer, model, grpc_inputs(take(data, idx)),
                                             client_timeout=RPC_TIMEOUT)) for i, idx in enumerate(bucket)]
                for idx, fut in futures:
                    served[idx] = fut.result().as_numpy("dense_out")
    finally:
        for c in clients:
            c.close()
    return served


def test_two_servers_and_workers_sharing_redis_equal_the_backfill(shared):
    from test_aggregates_serving import assert_same, backfill, events
    from test_aggregates_serving import spec_doc as serving_spec

    from skewless.native.spec import FeatureSpec

    a, b = shared
    data = events(320, seed=11)
    served = score_across([a.grpc_url, b.grpc_url], "agg_shared", data, seed=12)
    expected = backfill(FeatureSpec(serving_spec()), data)
    assert (expected[:, 0] > 0).sum() > 200  # windows are not empty
    assert_same(served, expected)


def test_ingest_through_either_server_lands_in_the_shared_state(shared):
    from test_aggregates_serving import (
        T0,
        assert_same,
        backfill,
        events,
        ingest_grpc,
        ingest_state,
        json_events,
        rest_post,
        take,
    )
    from test_aggregates_serving import spec_doc as serving_spec

    from skewless.native.spec import FeatureSpec

    a, b = shared
    spec = FeatureSpec(serving_spec())
    history = events(120, seed=13)
    first, second = take(history, slice(0, 60)), take(history, slice(60, 120))
    part = {k: first[k] for k in ("card", "ts", "amount")}
    resp = ingest_grpc(a.grpc_url, "agg_shared_ingest", part)
    assert (resp.recorded, resp.late, resp.skipped) == (60, 0, 0)
    old = second["ts"].copy()
    old[7] = T0 - 10_000  # older than every retention: late
    rest_part = {"card": second["card"].tolist(), "merchant": second["merchant"].tolist(), "ts": old.tolist()}
    status, body = rest_post(b.rest_url, "/v2/models/agg_shared_ingest/versions/1/events", json_events(rest_part))
    assert status == 200, body
    assert body == {"recorded": 59, "late": 1, "skipped": 0}

    state = spec.new_aggregate_state()
    assert ingest_state(spec, state, part) == 60
    assert ingest_state(spec, state, {"card": second["card"], "merchant": second["merchant"], "ts": old}) == 59
    later = events(80, seed=14, start=int(history["ts"][-1]) + 1)
    served = score_across([b.grpc_url, a.grpc_url], "agg_shared_ingest", later, seed=15)
    assert_same(served, backfill(spec, later, state))


def test_status_and_metrics_show_the_store(shared):
    import json
    import urllib.request

    a, _ = shared
    with urllib.request.urlopen(f"{a.http_url}/v2/status/aggregates", timeout=10) as resp:
        status = json.loads(resp.read())
    assert status["status"]["store"].startswith("redis://127.0.0.1:")
    (entry,) = status["status"]["models"]["agg_shared"].values()
    assert entry["store"] == status["status"]["store"] and entry["store_errors"] == 0 and entry["keys"] is None
    with urllib.request.urlopen(f"{a.http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert "skewless_aggregate_store_round_trip_seconds_bucket" in text
    assert 'skewless_aggregate_store_errors_total{model="agg_shared"' in text


def test_a_server_whose_redis_is_down_answers_unavailable(tmp_path):
    import grpc
    import tritonclient.grpc as grpcclient
    from serverproc import ServerProcess
    from test_aggregates_serving import (
        events,
        grpc_inputs,
        ingest_grpc,
        json_events,
        rest_post,
        take,
        write_model,
    )

    write_model(tmp_path, "agg_down")
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = ServerProcess(tmp_path, "--aggregate-store", url, start_timeout=60).start()
    try:
        data = take(events(4, seed=21), slice(0, 2))
        client = grpcclient.InferenceServerClient(proc.grpc_url)
        try:
            with pytest.raises(Exception) as info:
                client.infer("agg_down", grpc_inputs(data))
        finally:
            client.close()
        assert "StatusCode.UNAVAILABLE" in str(info.value) or "UNAVAILABLE" in str(info.value)
        assert f"aggregate store {url} of model 'agg_down' is unavailable (ConnectionError" in str(info.value)
        with pytest.raises(grpc.RpcError) as rpc:
            ingest_grpc(proc.grpc_url, "agg_down", {k: data[k] for k in ("card", "ts")})
        assert rpc.value.code() == grpc.StatusCode.UNAVAILABLE
        status, body = rest_post(proc.rest_url, "/v2/models/agg_down/events",
                                 json_events({"card": data["card"].tolist(), "ts": data["ts"].tolist()}))
        assert status == 503 and "is unavailable (ConnectionError" in body["error"], body
    finally:
        rc = proc.stop()
    stderr = proc.stderr_text()
    assert rc == 0, stderr
    assert "Traceback" not in stderr and "does not answer yet (ConnectionError" in stderr, stderr


def test_the_store_flag_is_checked(tmp_path):
    import sys

    from serverproc import ServerProcess  # noqa: F401 - same interpreter and module path as the other tests

    for args, message in ((["--aggregate-store", "http://x"], "must be a redis://HOST:PORT/DB URL"),
                          (["--aggregate-store", "redis://127.0.0.1:1/0", "--aggregate-max-keys", "5"],
                           "drop --aggregate-state-dir and --aggregate-max-keys")):
        out = subprocess.run([sys.executable, "-m", "skewless.server.frontend.cli", "serve", "--model-repository",
                              str(tmp_path), *args], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and message in out.stderr, out.stderr


def test_benchmark_measures_the_redis_store(tmp_path, redis_server):
    """benchmarks/aggregates_bench.py's Redis cost runs (judges no speed)."""
    import json

    pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    from skewless.benchmarks import aggregates_bench as bench

    assert bench.main(["--quick", "--rows", "2000", "--batch-rows", "500", "--out-dir", str(tmp_path),
                       "--redis", redis_server.url]) == 0
    results = json.loads((tmp_path / "aggregates_bench.json").read_text())
    assert set(results["redis_us_per_row_per_aggregate"]) == {"1", "16", "256"}
    assert all(v > 0 for v in results["redis_us_per_row_per_aggregate"].values())
    assert "Redis store score" in (tmp_path / "aggregates_bench.txt").read_text()


def test_a_missing_redis_extra_names_the_extra(tmp_path):
    """Without the redis package, --aggregate-store stops at the command line and names the extra."""
    import sys

    code = ("import sys; sys.modules['redis'] = None; sys.argv = ['skewless', 'serve', '--model-repository', "
            f"{str(tmp_path)!r}, '--aggregate-store', 'redis://127.0.0.1:1/0']; "
            "from skewless.server.frontend.cli import main; sys.exit(main())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "pip install 'skewless[redis]'" in out.stderr, out.stderr


def test_a_bucket_number_beyond_2_53_is_refused_before_any_round_trip(redis_server):
    """Bucket numbers are Redis scores (doubles): one that is not exact is the client's input error."""
    from skewless.native.feature_kernel import FeatureInputError

    plan = [{"name": "n", "op": "count", "keys": ["ks"], "time": "t", "value": None, "window": 2, "bucket": 1,
             "time_unit": "ns"}]
    store = store_of(plan, redis_server.url)
    try:
        with pytest.raises(FeatureInputError, match="input 't': .*beyond 2\\^53"):
            store.score(to_columns({"ks": ["a"], "t": [2**60]}), 1)
        assert store.stats()["round_trips"] == 0
        assert store.score(to_columns({"ks": ["a"], "t": [2**52]}), 1)["n"].tolist() == [0.0]
    finally:
        store.close()
