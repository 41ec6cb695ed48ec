"""The KServe v2 REST shapes that KServe's own client (``kserve.InferenceRESTClient``) relies on, checked on the
wire: health bodies (``{"live": true}``, ``{"ready": true}``, which its ``is_server_live`` / ``is_server_ready``
parse, so an empty body failed them), and an inference request as its ``InferRequest.to_rest`` builds it
(a ``model_name`` member, binary inputs after the JSON with ``application/octet-stream``)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import RPC_TIMEOUT, write_triton_identity
from serverproc import ServerProcess


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("kserve_repo")
    write_triton_identity(root, "identity", "FP32", [-1], 8)
    write_triton_identity(root, "unloaded", "FP32", [-1], 8)
    proc = ServerProcess(root, "--model-control-mode", "explicit", "--load-model", "identity").start()
    yield proc
    proc.assert_clean_exit()


def call(srv: ServerProcess, method: str, path: str, body: bytes | None = None, headers: dict | None = None
         ) -> tuple[int, dict, bytes]:
    host, port = srv.rest_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=RPC_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path, status, doc", [
    ("/v2/health/live", 200, {"live": True}),
    ("/v2/health/ready", 200, {"ready": True}),
    ("/v2/models/identity/ready", 200, {"name": "identity", "ready": True}),
    ("/v2/models/identity/versions/1/ready", 200, {"name": "identity", "ready": True}),
    ("/v2/models/unloaded/ready", 400, {"name": "unloaded", "ready": False}),  # Triton's status, the spec's body
])
def test_health_bodies(srv, path, status, doc):
    got, headers, body = call(srv, "GET", path)
    assert got == status and headers["content-type"].startswith("application/json")
    assert json.loads(body) == doc
    got, _, body = call(srv, "HEAD", path)
    assert got == status and body == b""


def test_infer_request_as_kserve_builds_it(srv):
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    header = json.dumps({"id": "kserve-1", "model_name": "identity",
                         "inputs": [{"name": "INPUT0", "shape": [1, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    status, headers, body = call(srv, "POST", "/v2/models/identity/infer", header + x.tobytes(),
                                 {"Inference-Header-Content-Length": str(len(header)),
                                  "content-type": "application/octet-stream"})
    assert status == 200, body
    size = int(headers["inference-header-content-length"])
    doc = json.loads(body[:size])
    assert doc["model_name"] == "identity" and doc["id"] == "kserve-1"
    [out] = doc["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("OUTPUT0", "FP32", [1, 8])
    assert out["parameters"]["binary_data_size"] == x.nbytes and body[size:] == x.tobytes()
