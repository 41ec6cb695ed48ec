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
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import RPC_TIMEOUT, expect_error, mlp_variant_model, write_triton_identity
from onnx import external_data_helper, helper, numpy_helper
from serverproc import ServerProcess
from tritonclient.utils import InferenceServerException

from skewless.server.errors import InvalidArgument
from skewless.server.models.onnx_external_data import MalformedModel, external_data_locations
from skewless.server.models.overrides import check_external_data

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


# -- external data: an uploaded model reads only the files uploaded with it ---------------------------------
def external_tensor(name: str, location: str, values=(1.0, 2.0, 3.0, 4.0)) -> onnx.TensorProto:
    """A FLOAT tensor whose data onnx says lives in ``location`` (the data itself is not written)."""
    tensor = numpy_helper.from_array(np.asarray(values, np.float32), name)
    external_data_helper.set_external_data(tensor, location=location)
    tensor.ClearField("raw_data")
    return tensor


def add_model(extra_nodes=(), initializer=(), sparse=(), **graph_parts) -> bytes:
    """Y = X + W, X and Y FP32 [batch, 4]; W given by ``initializer``, ``sparse`` or ``extra_nodes``."""
    graph = helper.make_graph(
        [*extra_nodes, helper.make_node("Add", ["X", "W"], ["Y"])], "add",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["batch", 4])],
        list(initializer), sparse_initializer=list(sparse), **graph_parts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def constant_model(location: str) -> bytes:
    return add_model([helper.make_node("Constant", [], ["W"], value=external_tensor("c", location))])


def sparse_model(location: str) -> bytes:
    values = external_tensor("W", location, (5.0, 6.0))
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "W_indices")
    return add_model(sparse=[helper.make_sparse_tensor(values, indices, [4])])


def if_model(location: str) -> bytes:
    def branch(tensor):
        return helper.make_graph([helper.make_node("Constant", [], ["w"], value=tensor)], "branch", [],
                                 [helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4])])

    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["W"], then_branch=branch(external_tensor("t", location)),
                            else_branch=branch(numpy_helper.from_array(np.zeros(4, np.float32), "e")))
    return add_model([node], initializer=[cond])


def function_model(location: str) -> bytes:
    """W comes from a model-local function whose Constant node holds the external tensor."""
    fn = helper.make_function("local", "make_w", [], ["w"],
                              [helper.make_node("Constant", [], ["w"], value=external_tensor("f", location))],
                              [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("make_w", [], ["W"], domain="local"), helper.make_node("Add", ["X", "W"], ["Y"])], "f",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["batch", 4])])
    return helper.make_model(graph, functions=[fn], ir_version=8,
                             opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
                             ).SerializeToString()


def model_with_external_weights(tmp_path: Path) -> tuple[bytes, bytes]:
    """A real model saved by onnx with its initializer in 'weights.bin': (model bytes, data file bytes)."""
    model = onnx.load_from_string(add_model(initializer=[numpy_helper.from_array(
        np.array([10.0, 20.0, 30.0, 40.0], np.float32), "W")]))
    onnx.save_model(model, tmp_path / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return (tmp_path / "model.onnx").read_bytes(), (tmp_path / "weights.bin").read_bytes()


def test_a_model_with_external_data_uploaded_beside_it_loads_and_infers(srv, tmpdir_of_server, tmp_path):
    model, weights = model_with_external_weights(tmp_path)
    assert external_data_locations(model) == ["weights.bin"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with httpclient.InferenceServerClient(srv.rest_url, network_timeout=RPC_TIMEOUT) as c:
        c.load_model("external", config=CONFIG, files={"file:1/model.onnx": model, "file:1/weights.bin": weights})
        inp = httpclient.InferInput("X", [2, 4], "FP32")
        inp.set_data_from_numpy(x)
        assert np.array_equal(c.infer("external", [inp]).as_numpy("Y"), x + [10, 20, 30, 40])
        c.unload_model("external")
    assert not overrides(tmpdir_of_server)


BUILDERS = {
    "initializer": lambda loc: add_model(initializer=[external_tensor("W", loc)]),
    "sparse initializer": sparse_model,
    "Constant attribute": constant_model,
    "If subgraph": if_model,
    "function": function_model,
}


@pytest.mark.parametrize("where", sorted(BUILDERS))
@pytest.mark.parametrize("location, problem", [
    ("../../../../etc/passwd", "climbs out with '..'"),
    ("/etc/passwd", "is absolute"),
    ("weights.bin", "is not one of the uploaded files"),
    (".", "is not one of the uploaded files"),  # the model folder itself
])
def test_external_data_outside_the_uploaded_files_is_refused(srv, tmpdir_of_server, where, location, problem):
    model = BUILDERS[where](location)
    assert location in external_data_locations(model)
    status, error = load_status(srv, "external_bad", {"config": CONFIG,
                                                      "file:1/model.onnx": base64.b64encode(model).decode()})
    assert status == 400, error
    assert error == (f"failed to load 'external_bad', model file '1/model.onnx' names external data location "
                     f"'{location}' that {problem}; external data must be uploaded with the model as 'file:' "
                     "parameters beside it")
    assert not overrides(tmpdir_of_server)
    with httpclient.InferenceServerClient(srv.rest_url, network_timeout=RPC_TIMEOUT) as c:
        assert not c.is_model_ready("external_bad") and c.is_model_ready("identity")


def test_external_data_in_another_uploaded_folder_is_refused_over_grpc(srv, tmpdir_of_server):
    """An uploaded file outside the model file's folder is still an uploaded file: '2/w.bin' from '1/' needs
    '..', which is refused; the same check holds over gRPC (INVALID_ARGUMENT)."""
    model = add_model(initializer=[external_tensor("W", "../2/w.bin")])
    with grpcclient.InferenceServerClient(srv.grpc_url) as g:
        expect_error(lambda: g.load_model("external_grpc", config=CONFIG, files={
            "file:1/model.onnx": model, "file:2/w.bin": np.ones(4, np.float32).tobytes()}),
            "INVALID_ARGUMENT", "names external data location '../2/w.bin' that climbs out with '..'")
        [row] = [r for r in g.get_model_repository_index(as_json=True)["models"] if r["name"] == "external_grpc"]
        assert row["state"] == "UNAVAILABLE" and "climbs out with '..'" in row["reason"]
    assert not overrides(tmpdir_of_server)


def test_a_truncated_model_is_a_clean_400(srv, tmpdir_of_server, tmp_path):
    model, _ = model_with_external_weights(tmp_path)
    status, error = load_status(srv, "truncated", {"config": CONFIG,
                                                   "file:1/model.onnx": base64.b64encode(model[:-7]).decode()})
    assert status == 400
    assert error.startswith("failed to load 'truncated', model file '1/model.onnx' is not a valid ONNX model: ")
    assert not overrides(tmpdir_of_server)


def test_the_walk_finds_every_location_in_file_order():
    model = onnx.load_from_string(if_model("a.bin"))
    model.graph.initializer.append(external_tensor("V", "b.bin"))
    model.graph.node.append(helper.make_node("Constant", [], ["k"], value=external_tensor("k", "c.bin")))
    # a graph's nodes (field 1) are written before its initializers (field 5)
    assert external_data_locations(model.SerializeToString()) == ["a.bin", "c.bin", "b.bin"]
    assert external_data_locations(mlp_variant_model(1)) == []
    # marked external with no location: reported as an empty location, which the check refuses
    tensor = numpy_helper.from_array(np.ones(4, np.float32), "W")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    assert external_data_locations(add_model(initializer=[tensor])) == [""]


@pytest.mark.parametrize("data", [b"\x3a\x05abc", b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
                                  b"\x0b", b"\x38\x01", b"\x3a\x02\x2a\x05"])
def test_the_walk_refuses_malformed_protobuf(data):
    # a graph longer than the model; a varint too long; a group; graph as a varint; an initializer longer than
    # its graph
    with pytest.raises(MalformedModel):
        external_data_locations(data)


def test_a_location_that_resolves_outside_through_a_symlink_is_refused(tmp_path):
    """Uploads cannot make symlinks, but the folder they land in is checked as resolved: a link that leaves it
    is refused, a link to an uploaded file beside it is read as that file."""
    model_dir = tmp_path / "root" / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(add_model(initializer=[external_tensor("W", "w.bin")]))
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.ones(4, np.float32).tobytes())
    (model_dir / "1" / "w.bin").symlink_to(outside)
    with pytest.raises(InvalidArgument, match="names external data location 'w.bin' that resolves outside the "
                                              "model directory"):
        check_external_data("m", model_dir, [model_dir / "1" / "model.onnx"])
    (model_dir / "1" / "w.bin").unlink()
    (model_dir / "1" / "real.bin").write_bytes(outside.read_bytes())
    (model_dir / "1" / "w.bin").symlink_to(model_dir / "1" / "real.bin")
    check_external_data("m", model_dir, [model_dir / "1" / "model.onnx"])
