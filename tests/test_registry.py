"""Registry sync against a real S3 server (moto's server mode, in-process) through s3fs: publish, swap,
rejection of corrupt / half-uploaded / invalid versions, rollback and unpin, a store that dies, and ten swaps
under 64 clients with no failed or mixed reply."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import add_constant_model, index_rows, infer, wait_until
from serverproc import ServerProcess

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from skewless.benchmarks.swap_load import SwapLoad  # noqa: E402
from skewless.server.registry.manifest import build_manifest, dump_manifest  # noqa: E402
from skewless.server.registry.publish import publish  # noqa: E402

SECRET = "sEcReT-never-in-logs-0123456789"
POLL = 0.25
TIMEOUT = 30.0
CONFIG = "max_batch_size: 64\n"


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """A fresh S3 server and bucket; the credentials and endpoint as the standard AWS variables."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "AKIDTESTING",
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    bucket = f"models-{uuid.uuid4().hex[:12]}"  # moto keeps one backend per process: a bucket per test
    client.create_bucket(Bucket=bucket)
    yield {"env": env, "client": client, "bucket": bucket, "url": f"s3://{bucket}/repo", "server": server,
           "src": tmp_path / "src"}
    server.stop()


def publish_version(s3, v: int, files: dict[str, bytes] | None = None, model: str = "m") -> None:
    src = s3["src"] / model
    (src / str(v)).mkdir(parents=True, exist_ok=True)
    (src / "config.pbtxt").write_text(CONFIG)
    (src / str(v) / "model.onnx").write_bytes(add_constant_model(float(v)))
    for rel, data in (files or {}).items():
        (src / str(v) / rel).write_bytes(data)
    publish(src, s3["url"], version=v)


def start(s3, tmp_path, *args: str) -> ServerProcess:
    srv = ServerProcess(Path("unused"), "--model-control-mode", "poll", "--repository-poll-secs", str(POLL),
                        "--registry-cache", str(tmp_path / "cache"), *args, env=s3["env"])
    srv.args[srv.args.index("unused")] = s3["url"]
    return srv.start()


def version_of(c, x=None) -> int:
    x = np.zeros((1, 4), np.float32) if x is None else x
    res = infer(c, "m", {"x": x})
    v = int(res.get_response().model_version)
    np.testing.assert_array_equal(res.as_numpy("y"), x + np.float32(v))
    return v


def metric(srv: ServerProcess, name: str, labels: str = "") -> float | None:
    text = urllib.request.urlopen(f"{srv.http_url}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name) and (labels in line) and not line.startswith(name + "_"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skewless.server.frontend.cli", *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, **(env or {})))


@pytest.mark.slow
def test_publish_swap_reject_rollback(s3, tmp_path):
    # Publish through the CLI: the manifest lands beside the version, after its files.
    src = s3["src"] / "m"
    (src / "1").mkdir(parents=True)
    (src / "config.pbtxt").write_text(CONFIG)
    (src / "1" / "model.onnx").write_bytes(add_constant_model(1.0))
    r = cli("publish", str(src), s3["url"])
    assert r.returncode == 0, r.stderr
    assert f"manifest {s3['url']}/m/1.manifest.json" in r.stdout
    r = cli("publish", str(src), s3["url"])
    assert r.returncode == 2 and "already published" in r.stderr
    keys = [o["Key"] for o in s3["client"].list_objects_v2(Bucket=s3["bucket"])["Contents"]]
    assert sorted(keys) == ["repo/m/1.manifest.json", "repo/m/1/model.onnx", "repo/m/config.pbtxt"]

    srv = start(s3, tmp_path)
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        assert version_of(c) == 1
        publish_version(s3, 2)
        wait_until(lambda: version_of(c) == 2, TIMEOUT, "version 2 to serve")

        # Half-uploaded version 3 (files, no manifest yet): reported, never loaded; 2 keeps serving.
        s3["client"].put_object(Bucket=s3["bucket"], Key="repo/m/3/model.onnx", Body=add_constant_model(3.0)[:40])
        wait_until(lambda: ("m", "3") in index_rows(c, "m"), TIMEOUT, "version 3 in the index")
        state, reason = index_rows(c, "m")[("m", "3")]
        assert state == "UNAVAILABLE" and "incomplete: no manifest yet" in reason
        assert metric(srv, "skewless_model_events_total", 'event="rejected_incomplete"') == 1

        # Corrupt version 4: its manifest is there, but the object's bytes are not the ones it lists.
        (s3["src"] / "m" / "4").mkdir()
        good = add_constant_model(4.0)
        (s3["src"] / "m" / "4" / "model.onnx").write_bytes(good)
        s3["client"].put_object(Bucket=s3["bucket"], Key="repo/m/4/model.onnx", Body=bytes(len(good)))
        s3["client"].put_object(Bucket=s3["bucket"], Key="repo/m/4.manifest.json",
                                Body=dump_manifest(build_manifest(s3["src"] / "m" / "4", "m", 4)))
        wait_until(lambda: "rejected" in index_rows(c, "m").get(("m", "4"), ("", ""))[1], TIMEOUT,
                   "version 4 rejected")
        assert "does not match the manifest" in index_rows(c, "m")[("m", "4")][1]
        assert metric(srv, "skewless_model_events_total", 'event="rejected_corrupt"') == 1

        # Version 5 loads and warms up but fails its validation set: rejected before it serves.
        wrong = {"inputs": {"x": {"shape": [1, 4], "data": [0, 0, 0, 0]}},
                 "outputs": {"y": {"shape": [1, 4], "data": [9, 9, 9, 9]}}, "atol": 1e-6}
        publish_version(s3, 5, {"validation.json": json.dumps(wrong).encode()})
        wait_until(lambda: "validation failed" in index_rows(c, "m").get(("m", "5"), ("", ""))[1], TIMEOUT,
                   "version 5 rejected by its validation set")
        assert metric(srv, "skewless_model_events_total", 'event="rejected_validation"') == 1
        for _ in range(5):
            assert version_of(c) == 2
            time.sleep(POLL)
        assert srv.stderr_text().count("does not match the manifest") == 1  # reported once, not every poll

        # A version with a passing validation set serves.
        right = {"inputs": {"x": {"shape": [1, 4], "data": [0, 1, 2, 3]}},
                 "outputs": {"y": {"shape": [1, 4], "data": [6, 7, 8, 9]}}}
        publish_version(s3, 6, {"validation.json": json.dumps(right).encode()})
        wait_until(lambda: version_of(c) == 6, TIMEOUT, "version 6 to serve")

        # Rollback (CLI -> skewless.v1.RegistryAdmin): back to 2 at once, pinned while the registry moves on.
        r = cli("rollback", "m", "--url", srv.grpc_url)
        assert r.returncode == 0, r.stderr
        assert "serving versions [2] (was [6])" in r.stdout
        assert version_of(c) == 2
        assert metric(srv, "skewless_model_pinned", 'model="m"') == 1
        publish_version(s3, 7)
        time.sleep(6 * POLL)
        assert version_of(c) == 2
        r = cli("rollback", "m", "--to", "5", "--url", srv.grpc_url)
        assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "not among the recently served" in r.stderr
        r = cli("unpin", "m", "--url", srv.grpc_url)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: version_of(c) == 7, TIMEOUT, "version 7 after unpin")
        assert metric(srv, "skewless_model_pinned", 'model="m"') == 0
        assert c.is_server_ready()
    finally:
        c.close()
        srv.stop()
    assert SECRET not in srv.stderr_text()


def versions_seen(srv: ServerProcess, connections: int = 8) -> set[int]:
    """The version each of several new connections is served (SO_REUSEPORT spreads them over the workers)."""
    seen = set()
    for _ in range(connections):
        with grpcclient.InferenceServerClient(srv.grpc_url, channel_args=[("grpc.use_local_subchannel_pool", 1)]) as c:
            seen.add(version_of(c))
    return seen


@pytest.mark.slow
def test_registry_sync_with_workers(s3, tmp_path):
    """--workers 2 on an s3:// repository: each worker syncs into a cache of its own, every worker follows a
    publish, and a rollback (broadcast to the workers) pins them all until unpin."""
    publish_version(s3, 1)
    srv = start(s3, tmp_path, "--workers", "2", "--registry-cache-gb", "1")
    try:
        assert versions_seen(srv) == {1}
        for w in (0, 1):  # a cache per worker, each holding the version it serves
            assert list((tmp_path / "cache" / f"worker-{w}" / "versions" / "m").iterdir()), f"worker {w}"
        publish_version(s3, 2)
        wait_until(lambda: versions_seen(srv) == {2}, TIMEOUT, "every worker to serve version 2")
        r = cli("rollback", "m", "--url", srv.grpc_url)
        assert r.returncode == 0, r.stderr
        assert versions_seen(srv, 12) == {1}
        publish_version(s3, 3)
        time.sleep(6 * POLL)
        assert versions_seen(srv, 12) == {1}  # pinned on every worker while the registry moves on
        r = cli("unpin", "m", "--url", srv.grpc_url)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: versions_seen(srv) == {3}, TIMEOUT, "every worker to serve version 3 after unpin")
    finally:
        srv.stop()


@pytest.mark.slow
def test_store_dies_serving_continues(s3, tmp_path):
    publish_version(s3, 1)
    srv = start(s3, tmp_path)
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        assert version_of(c) == 1
        assert metric(srv, "skewless_registry_reachable") == 1
        s3["server"].stop()
        wait_until(lambda: metric(srv, "skewless_registry_reachable") == 0, TIMEOUT, "the registry marked down")
        for _ in range(10):  # several polls' worth: serving, readiness and the single log line all hold
            assert version_of(c) == 1
            assert c.is_server_ready() and c.is_model_ready("m")
            time.sleep(POLL)
        assert metric(srv, "skewless_registry_failures_total") == 1
        log = srv.stderr_text()
        assert log.count(f"model registry {s3['url']} failed") == 1, log
        assert SECRET not in log and "AKIDTESTING" not in log
    finally:
        c.close()
        srv.stop()


@pytest.mark.slow
def test_ten_swaps_under_64_clients(s3, tmp_path):
    publish_version(s3, 1)
    srv = start(s3, tmp_path)
    load = SwapLoad(srv.grpc_url, "m", clients=64)
    try:
        wait_until(lambda: index_rows_ready(srv), TIMEOUT, "version 1")
        load.start()
        wait_until(lambda: load.latest_version() == 1, TIMEOUT, "first replies")
        for v in range(2, 12):
            publish_version(s3, v)
            wait_until(lambda v=v: load.latest_version() == v, TIMEOUT, f"version {v} answering")
    finally:
        result = load.stop()
        srv.stop()
    assert result.failed == 0, result.errors
    assert result.mixed == 0 and result.backwards == 0
    assert {r.version for r in result.replies} == set(range(1, 12))
    # Each version answered over one contiguous stretch of time after the previous one started answering.
    first = {}
    for r in result.replies:
        first.setdefault(r.version, r.received)
    assert [first[v] for v in range(1, 12)] == sorted(first.values())


def index_rows_ready(srv: ServerProcess) -> bool:
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        return c.is_model_ready("m")
    finally:
        c.close()
