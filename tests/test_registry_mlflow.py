"""Registry sync from a real MLflow tracking server (``mlflow server``, sqlite backend, proxied artifacts):
versions registered the way a training pipeline does, served at the ``champion`` alias, alias moves followed
within a poll, ``challenger`` reported, a corrupt artifact rejected while the old version serves, an MLflow
server killed (and restarted) mid-run. Plus the flags' and the REST client's errors, without a server."""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import add_constant_model, index_rows, infer, wait_until
from serverproc import ServerProcess

from skewless.benchmarks import mlflow_registry
from skewless.benchmarks.mlflow_registry import free_port
from skewless.protos import skewless_traffic_pb2 as tpb
from skewless.protos import skewless_traffic_pb2_grpc as tpb_grpc
from skewless.server.registry.manifest import build_manifest, dump_manifest
from skewless.server.registry.mlflow_artifacts import MANIFEST_NAME, FsspecArtifacts, ProxiedArtifacts
from skewless.server.registry.mlflow_rest import MlflowRest, tracking_uri
from skewless.server.registry.mlflow_source import Target, parse_model_spec, parse_model_specs
from skewless.server.registry.source import SourceError

SECRET = "mlflow-tOkEn-never-in-logs-42"
PASSWORD = "pAsSwOrD-never-in-logs-17"
POLL = 0.25
TIMEOUT = 30.0
CONFIG = "max_batch_size: 64\n"


# -- without a server ---------------------------------------------------------------------------------------
def test_registry_model_specs() -> None:
    assert parse_model_spec("churn") == ("churn", Target("churn", "champion"))
    assert parse_model_spec("churn@challenger") == ("churn", Target("churn", "challenger"))
    assert parse_model_spec("churn=prod.churn-model@blue_2") == ("churn", Target("prod.churn-model", "blue_2"))
    for bad, says in (("a/b", "not a model name"), ("=x", "not a model name"), ("m=@x", "registered model name"),
                      ("m@", "not an MLflow alias"), ("m=r@no way", "not an MLflow alias")):
        with pytest.raises(ValueError, match=says):
            parse_model_spec(bad)
    with pytest.raises(ValueError, match="given twice"):
        parse_model_specs(["m=a", "m=b"])


def test_tracking_uri_forms() -> None:
    assert tracking_uri("mlflow://h:5000") == "http://h:5000"
    assert tracking_uri("mlflow+https://h/base/") == "https://h/base"
    assert tracking_uri("mlflow", {"MLFLOW_TRACKING_URI": "https://h:8443"}) == "https://h:8443"
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI, which is not set"):
        tracking_uri("mlflow", {})
    with pytest.raises(ValueError, match="not an MLflow tracking server") as err:
        tracking_uri("mlflow", {"MLFLOW_TRACKING_URI": f"sqlite://u:{PASSWORD}@/x"})
    assert PASSWORD not in str(err.value)
    with pytest.raises(ValueError, match="port is not a number"):
        tracking_uri("mlflow://h:http")


def test_unreachable_server_error_is_redacted() -> None:
    rest = MlflowRest(f"http://user:{PASSWORD}@127.0.0.1:{free_port()}", timeout=2,
                      environ={"MLFLOW_TRACKING_TOKEN": SECRET})
    with pytest.raises(SourceError, match="unreachable") as err:
        rest.get("registered-models/get", name="m")
    assert PASSWORD not in str(err.value) and SECRET not in str(err.value) and "user" not in str(err.value)


def test_serve_flag_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "skewless.server.frontend.cli", "serve", *args],
                              capture_output=True, text=True, timeout=60)

    for args, says in ((["--registry", "s3://bucket"], "is not an MLflow tracking server"),
                       (["--registry", "mlflow://h:1", "--model-repository", str(tmp_path)], "alternatives"),
                       (["--registry-model", "m", "--model-repository", str(tmp_path)], "needs --registry"),
                       (["--registry", "mlflow://h:1", "--registry-model", "a/b"], "not a model name"),
                       ([], "one of --model-repository or --registry")):
        r = serve(*args)
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr)


def test_artifacts_in_a_store_read_with_fsspec(tmp_path: Path) -> None:
    (tmp_path / "v" / "sub").mkdir(parents=True)
    (tmp_path / "v" / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "v" / "sub" / "features.json").write_bytes(b"{}")
    d = FsspecArtifacts(f"file://{tmp_path / 'v'}")
    files = d.files()
    assert sorted(files) == ["model.onnx", "sub/features.json"] and files["model.onnx"].size == 4
    assert d.read("model.onnx") == b"onnx" and d.read("config.pbtxt") is None
    d.fetch("sub/features.json", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"{}"


def test_a_listing_cannot_lead_outside_the_version() -> None:
    class Listing:  # stands in for the proxy's answer only; the real proxy is exercised below
        def list_artifacts(self, path: str) -> list[dict]:
            return [{"path": "..", "is_dir": True}] if path == "0/run/model" else [{"path": "x", "file_size": 1}]

    with pytest.raises(SourceError, match="names '..'"):
        ProxiedArtifacts(Listing(), "0/run/model").files()


# -- against a real mlflow server ----------------------------------------------------------------------------
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="needs the mlflow package (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = mlflow_registry.MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.cleanup()


def version_dir(root: Path, v: int, config: bool = True, manifest: bool = False) -> Path:
    """A version whose output is its input plus ``v``: a reply shows which version computed it."""
    d = root / f"v{v}-{time.monotonic_ns()}"
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(add_constant_model(float(v)))
    if config:
        (d / "config.pbtxt").write_text(CONFIG)
    if manifest:
        (d / MANIFEST_NAME).write_bytes(dump_manifest(build_manifest(d, "unused", 0)))
    return d


def serve(url: str, tmp_path: Path, *args: str, env: dict | None = None) -> ServerProcess:
    srv = ServerProcess(Path("unused"), "--repository-poll-secs", str(POLL), "--registry-cache",
                        str(tmp_path / "cache"), "--registry", url, *args, env=env)
    i = srv.args.index("--model-repository")
    del srv.args[i:i + 2]
    return srv.start()


def version_of(c, model: str = "m") -> int:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    res = infer(c, model, {"x": x})
    v = int(res.get_response().model_version)
    np.testing.assert_array_equal(res.as_numpy("y"), x + np.float32(v))  # the version named is the one computing
    return v


def metric(srv: ServerProcess, name: str, labels: str = "") -> float | None:
    import urllib.request

    text = urllib.request.urlopen(f"{srv.http_url}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        head = line.split(" ")[0]
        if (head == name or head.startswith(name + "{")) and labels in head:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
@needs_mlflow
def test_alias_moves_challenger_corrupt_and_logged_model(mlflow_server, tmp_path, monkeypatch):
    import mlflow
    import onnx

    ml = mlflow_registry.client(mlflow_server.url)
    reg = f"reg-{time.monotonic_ns()}"
    assert mlflow_registry.register_version(ml, reg, version_dir(tmp_path, 1), "champion") == 1
    assert mlflow_registry.register_version(ml, reg, version_dir(tmp_path, 2, manifest=True)) == 2
    # Credentials as a user would pass them: basic auth in the URI and a token variable (an mlflow server
    # without auth ignores both); neither may ever show in a log line or an error.
    url = mlflow_server.url.replace("http://", f"mlflow://alice:{PASSWORD}@")
    srv = serve(url, tmp_path, "--registry-model", f"m={reg}", "--registry-model", "gone=no-such-model",
                "--registry-model", f"m-challenger={reg}@challenger", env={"MLFLOW_TRACKING_TOKEN": SECRET})
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        assert version_of(c) == 1
        state, reason = index_rows(c, "gone")[("gone", "")]
        assert state == "UNAVAILABLE" and "registered model 'no-such-model' does not exist" in reason
        assert metric(srv, "skewless_registry_alias_version", 'alias="champion"') == 1
        assert metric(srv, "skewless_registry_alias_version", 'alias="challenger"') is None

        # challenger: reported (the shadow target), not served.
        ml.set_registered_model_alias(reg, "challenger", 2)
        wait_until(lambda: metric(srv, "skewless_registry_alias_version", 'alias="challenger"') == 2, TIMEOUT,
                   "challenger=2 reported")
        assert version_of(c) == 1

        # The challenger alias as the shadow target: served as its own model that follows the alias, and
        # shadowing m; its outputs (input + 2) diverge from the champion's (input + 1) on every request.
        wait_until(lambda: c.is_model_ready("m-challenger"), TIMEOUT, "m-challenger (the alias) to serve")
        with grpc.insecure_channel(srv.grpc_url) as channel:
            traffic = tpb_grpc.TrafficAdminStub(channel)
            traffic.SetShadow(tpb.SetShadowRequest(model="m", challenger="m-challenger", rate=1.0), timeout=10)
            for _ in range(5):
                assert version_of(c) == 1
            wait_until(lambda: sum(p.mirrored for p in traffic.GetTraffic(tpb.ModelRef(model="m")).pairs) == 5,
                       TIMEOUT, "5 requests mirrored to the challenger alias")
            shadow_pair = traffic.GetTraffic(tpb.ModelRef(model="m")).pairs[0]
            assert shadow_pair.challenger == "m-challenger" and shadow_pair.errors == 0
            assert shadow_pair.divergent == 5
            traffic.SetShadow(tpb.SetShadowRequest(model="m", challenger="", rate=0.0), timeout=10)

        # Moving champion moves the served version within a poll or two (load and warm-up included).
        ml.set_registered_model_alias(reg, "champion", 2)
        t = time.monotonic()
        wait_until(lambda: version_of(c) == 2, TIMEOUT, "version 2 to serve", interval=0.01)
        moved = time.monotonic() - t
        assert moved < 40 * POLL, f"champion move took {moved:.2f}s to serve with a {POLL}s poll"

        # Version 3 carries a manifest, but its model.onnx was altered in the artifact store after it was
        # written (same size, other bytes): rejected as corrupt, reported once; version 2 keeps serving.
        v3 = version_dir(tmp_path, 3, manifest=True)
        assert mlflow_registry.register_version(ml, reg, v3) == 3
        stored = [p for p in (mlflow_server.root / "artifacts").rglob("model.onnx")
                  if p.read_bytes() == (v3 / "model.onnx").read_bytes()]
        assert len(stored) == 1
        stored[0].write_bytes(bytes(stored[0].stat().st_size))
        ml.set_registered_model_alias(reg, "champion", 3)
        wait_until(lambda: "rejected" in index_rows(c, "m").get(("m", "3"), ("", ""))[1], TIMEOUT,
                   "version 3 rejected")
        assert "does not match the manifest" in index_rows(c, "m")[("m", "3")][1]
        assert metric(srv, "skewless_model_events_total", 'event="rejected_corrupt"') == 1
        for _ in range(4):
            assert version_of(c) == 2
            time.sleep(POLL)
        assert c.is_model_ready("m")  # (the server is not ready: 'gone' never loaded, as Triton reports it)
        assert srv.stderr_text().count("does not match the manifest") == 1

        # An MLflow-native ONNX model (mlflow.onnx.log_model: an MLflow 3 logged model, MLmodel beside
        # model.onnx, no config.pbtxt): served with an auto-completed config.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        with mlflow.start_run():
            info = mlflow.onnx.log_model(onnx.load_from_string(add_constant_model(4.0)), name="model",
                                         registered_model_name=reg)
        assert int(info.registered_model_version) == 4
        ml.set_registered_model_alias(reg, "champion", 4)
        wait_until(lambda: version_of(c) == 4, TIMEOUT, "the logged model (version 4) to serve")

        # The alias removed: what serves keeps serving, and the index says why nothing newer is wanted.
        ml.delete_registered_model_alias(reg, "champion")
        time.sleep(4 * POLL)
        assert version_of(c) == 4
    finally:
        c.close()
        srv.stop()
    log = srv.stderr_text()
    assert SECRET not in log and PASSWORD not in log
    assert "aliases of model 'm' now challenger=2, champion=1" in log


@pytest.mark.slow
@needs_mlflow
def test_mlflow_killed_mid_run_then_back(tmp_path):
    server = mlflow_registry.MlflowServer(tmp_path / "mlflow").start()
    srv = c = None
    try:
        ml = mlflow_registry.client(server.url)
        mlflow_registry.register_version(ml, "m", version_dir(tmp_path, 1), "champion")
        mlflow_registry.register_version(ml, "other", version_dir(tmp_path, 7))  # no champion: not served
        # No --registry-model: every registered model with a champion alias, under its own name.
        srv = serve(server.url.replace("http://", "mlflow://"), tmp_path, "--registry-max-backoff", "1",
                    env={"MLFLOW_TRACKING_TOKEN": SECRET})
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        assert version_of(c) == 1
        assert sorted(m["name"] for m in c.get_model_repository_index(as_json=True)["models"]) == ["m"]
        assert metric(srv, "skewless_registry_reachable") == 1

        os.killpg(server.proc.pid, signal.SIGKILL)  # the tracking server and its worker, mid-run
        server.proc.wait(10)
        wait_until(lambda: metric(srv, "skewless_registry_reachable") == 0, TIMEOUT, "the registry marked down")
        for _ in range(8):  # several polls' worth: serving, readiness and the single log line all hold
            assert version_of(c) == 1
            assert c.is_server_ready() and c.is_model_ready("m")
            time.sleep(POLL)
        assert metric(srv, "skewless_registry_failures_total") == 1
        log = srv.stderr_text()
        assert log.count(f"model registry mlflow {server.url} failed") == 1, log

        # Back on the same store: the backoff finds it, and an alias moved meanwhile is followed.
        server.start()
        mlflow_registry.register_version(ml, "m", version_dir(tmp_path, 2), "champion")
        wait_until(lambda: version_of(c) == 2, TIMEOUT, "version 2 after the registry came back")
        assert metric(srv, "skewless_registry_reachable") == 1
        assert metric(srv, "skewless_registry_failures_total") == 1
    finally:
        if c is not None:
            c.close()
        if srv is not None:
            srv.stop()
        server.cleanup()
    log = srv.stderr_text()
    assert "reachable again" in log and SECRET not in log
