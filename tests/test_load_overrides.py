"""Triton's load-time file overrides (``file:<version>/<name>`` load parameters with a ``config``), through the
real tritonclient over HTTP/REST and gRPC: a model loaded from the request's files alone, its private folder
removed when the next load or an unload stops it serving, and bad overrides refused with a 400 while the server
keeps serving."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import RPC_TIMEOUT, expect_error, mlp_variant_model, write_triton_identity
from serverproc import ServerProcess
from tritonclient.utils import InferenceServerException

CONFIG = json.dumps({"max_batch_size": 4})


@pytest.fixture(scope="module")
def tmpdir_of_server(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server_tmp")


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tmpdir_of_server) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("override_repo")
    write_triton_identity(root, "identity", "FP32", [-1], 8)
    proc = ServerProcess(root, "--model-control-mode", "explicit", "--load-model", "*",
                         env={"TMPDIR": str(tmpdir_of_server)}).start()
    yield proc
    proc.assert_clean_exit()
    assert not list(tmpdir_of_server.glob("skewless-override-*"))  # nothing left behind at shutdown


def overrides(tmpdir: Path) -> list[Path]:
    return sorted(tmpdir.glob("skewless-override-*"))


def mlp_probabilities(client, model: str, version: str = "") -> np.ndarray:
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    inp = httpclient.InferInput("input", [2, 32], "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], model_version=version).as_numpy("probabilities")


def test_load_a_new_model_from_files_then_replace_and_unload(srv, tmpdir_of_server):
    with httpclient.InferenceServerClient(srv.rest_url, network_timeout=RPC_TIMEOUT) as c:
        assert not c.is_model_ready("uploaded")
        c.load_model("uploaded", config=CONFIG, files={"file:1/model.onnx": mlp_variant_model(1)})
        assert c.is_model_ready("uploaded", "1")
        first = mlp_probabilities(c, "uploaded")
        assert first.shape == (2, 2) and np.allclose(first.sum(axis=1), 1)
        assert c.get_model_config("uploaded")["max_batch_size"] == 4
        [folder] = overrides(tmpdir_of_server)
        assert (folder / "uploaded" / "1" / "model.onnx").read_bytes() == mlp_variant_model(1)

        # a new load with other files replaces the serving set, and the old folder goes
        c.load_model("uploaded", config=CONFIG, files={"file:2/model.onnx": mlp_variant_model(2)})
        assert c.is_model_ready("uploaded", "2") and not c.is_model_ready("uploaded", "1")
        assert not np.allclose(mlp_probabilities(c, "uploaded"), first)
        assert overrides(tmpdir_of_server) != [folder] and len(overrides(tmpdir_of_server)) == 1
        rows = {(r["name"], r.get("version")): r["state"] for r in c.get_model_repository_index()}
        assert rows[("uploaded", "2")] == "READY"

        c.unload_model("uploaded")
        assert not c.is_model_ready("uploaded") and not overrides(tmpdir_of_server)


def test_grpc_files_are_bytes(srv, tmpdir_of_server):
    with grpcclient.InferenceServerClient(srv.grpc_url) as g:
        g.load_model("uploaded_grpc", config=CONFIG, files={"file:3/model.onnx": mlp_variant_model(3)})
        assert g.is_model_ready("uploaded_grpc", "3")
        g.unload_model("uploaded_grpc")
    assert not overrides(tmpdir_of_server)


def test_a_repository_model_overridden_then_loaded_plainly(srv, tmpdir_of_server):
    with httpclient.InferenceServerClient(srv.rest_url, network_timeout=RPC_TIMEOUT) as c:
        c.load_model("identity", config=CONFIG, files={"file:5/model.onnx": mlp_variant_model(5)})
        assert c.is_model_ready("identity", "5") and c.get_model_metadata("identity")["inputs"][0]["name"] == "input"
        c.load_model("identity")  # back to the repository's folder and config.pbtxt
        assert c.is_model_ready("identity", "1") and not c.is_model_ready("identity", "5")
        assert c.get_model_config("identity")["max_batch_size"] == 8
    assert not overrides(tmpdir_of_server)


def load_status(srv: ServerProcess, name: str, params: dict) -> tuple[int, str]:
    host, port = srv.rest_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=RPC_TIMEOUT)
    try:
        conn.request("POST", f"/v2/repository/models/{name}/load", body=json.dumps({"parameters": params}))
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body)["error"] if body else ""
    finally:
        conn.close()


ONNX_B64 = base64.b64encode(mlp_variant_model(7)).decode()


@pytest.mark.parametrize("name, params, message", [
    ("nope", {"file:1/model.onnx": ONNX_B64},
     "failed to load 'nope': 'file:' load parameters need a 'config' parameter"),
    ("nope", {"config": CONFIG, "file:../1/model.onnx": ONNX_B64},
     "failed to load 'nope': load parameter 'file:../1/model.onnx' must name a file inside the model directory"),
    ("nope", {"config": CONFIG, "file:/etc/model.onnx": ONNX_B64}, "must name a file inside the model directory"),
    ("nope", {"config": CONFIG, "file:" + "A" * 256: "YQ=="},
     "failed to load 'nope', failed to poll from model repository"),
    ("nope", {"config": CONFIG, "file:1/model.onnx": "not base64!"},
     "load parameter 'file:1/model.onnx' is not valid base64"),
    ("nope", {"config": CONFIG, "file:1/model.onnx": 12}, "must hold the file's content as bytes"),
    ("nope", {"config": CONFIG, "file:1/model.onnx": base64.b64encode(b"not onnx").decode()}, ""),
    ("nope", {"config": CONFIG, "file:1/other.onnx": ONNX_B64}, "no version of model 'nope' to load"),
])
def test_bad_overrides_are_400_and_leave_nothing(srv, tmpdir_of_server, name, params, message):
    status, error = load_status(srv, name, params)
    assert status == 400 and message in error, error
    assert not overrides(tmpdir_of_server)
    with httpclient.InferenceServerClient(srv.rest_url, network_timeout=RPC_TIMEOUT) as c:
        assert c.is_server_live() and c.is_model_ready("identity")


def test_failed_override_keeps_the_serving_set(srv, tmpdir_of_server):
    with httpclient.InferenceServerClient(srv.rest_url, network_timeout=RPC_TIMEOUT) as c:
        c.load_model("kept", config=CONFIG, files={"file:1/model.onnx": mlp_variant_model(8)})
        [folder] = overrides(tmpdir_of_server)
        with pytest.raises(InferenceServerException):
            c.load_model("kept", config=CONFIG, files={"file:1/model.onnx": b"garbage"})
        assert c.is_model_ready("kept", "1") and overrides(tmpdir_of_server) == [folder]
        assert mlp_probabilities(c, "kept").shape == (2, 2)
        c.unload_model("kept")
    assert not overrides(tmpdir_of_server)


def test_model_name_with_a_path_is_refused(srv):
    with grpcclient.InferenceServerClient(srv.grpc_url) as g:
        expect_error(lambda: g.load_model("../evil", config=CONFIG, files={"file:1/model.onnx": b"x"}),
                     "INVALID_ARGUMENT", "failed to load '../evil': a model name cannot hold a path")


def test_a_restarted_worker_catches_up_with_overrides(tmp_path):
    """With --workers 2, a worker restarted after a crash loads what its sibling serves as it serves it: the
    override files and the config override, not the repository's folder (which here has no such model)."""
    import os
    import signal

    from helpers import http_status, wait_until
    from test_workers import ask_worker, worker_dir, worker_pids

    from skewless.protos import grpc_service_pb2 as pb
    from skewless.server.workers.cluster import LOAD_REQUEST_KEY, READY_MODELS_KEY

    write_triton_identity(tmp_path, "identity", "FP32", [-1], 8)
    srv = ServerProcess(tmp_path, "--workers", "2", "--model-control-mode", "explicit", "--load-model", "*",
                        start_timeout=60).start()
    try:
        with grpcclient.InferenceServerClient(srv.grpc_url) as g:
            g.load_model("uploaded", config=CONFIG, files={"file:1/model.onnx": mlp_variant_model(9)})
            g.load_model("identity", config=json.dumps({"max_batch_size": 2}))
        parent = srv.proc.pid
        before = worker_pids(parent)
        directory = worker_dir(before[0])
        os.kill(before[1], signal.SIGKILL)
        wait_until(lambda: len(set(worker_pids(parent)) - set(before)) == 1, 30, "a new worker")
        wait_until(lambda: http_status(srv.http_url + "/v2/health/ready") == 200, 60, "readiness over both")
        assert all("uploaded" in json.loads(ask_worker(directory, i, READY_MODELS_KEY)) for i in range(2))
        for i in range(2):
            req = pb.RepositoryModelLoadRequest.FromString(ask_worker(directory, i, LOAD_REQUEST_KEY, b"uploaded"))
            assert req.parameters["file:1/model.onnx"].bytes_param == mlp_variant_model(9)
            assert json.loads(req.parameters["config"].string_param) == json.loads(CONFIG)
            req = pb.RepositoryModelLoadRequest.FromString(ask_worker(directory, i, LOAD_REQUEST_KEY, b"identity"))
            assert json.loads(req.parameters["config"].string_param) == {"max_batch_size": 2}
        with httpclient.InferenceServerClient(srv.rest_url, network_timeout=RPC_TIMEOUT) as c:
            for _ in range(8):  # new connections, spread over both workers
                assert mlp_probabilities(c, "uploaded").shape == (2, 2)
    finally:
        srv.assert_clean_exit()
