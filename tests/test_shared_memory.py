"""Triton's system shared-memory extension against a real server, through the real tritonclient and its
``tritonclient.utils.shared_memory`` (what Triton's simple_{grpc,http}_shm[_string]_client.py examples do),
plus Triton's validation errors, unregistering while a request uses the region, batching with other
requests, the feature stage, and CUDA shared memory's answer without a GPU."""

from __future__ import annotations

import concurrent.futures
import shutil
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from helpers import EXAMPLE_MODELS, expect_error
from serverproc import ServerProcess
from shm_models import write_simple_models
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from skewless.examples.generate import make_slow_model

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.int32)


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory):
    repo = write_simple_models(tmp_path_factory.mktemp("shm_repo"))
    make_slow_model(repo / "slow" / "1" / "model.onnx", 300.0)  # one instance, so requests queue behind others
    (repo / "slow" / "config.pbtxt").write_text(
        'name: "slow"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 1\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\noutput [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'instance_group [ { count: 1 kind: KIND_CPU } ]\ndynamic_batching { }\n')
    shutil.copytree(EXAMPLE_MODELS / "churn", repo / "churn")
    proc = ServerProcess(repo, "--allow-client-shm").start()
    yield proc
    proc.assert_clean_exit()


@pytest.fixture
def regions():
    """Create POSIX shm regions with unique keys; destroyed (client side) at the end."""
    made = []

    def make(byte_size: int):
        key = f"/skewless_test_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key.strip("/"), key, byte_size)
        made.append(handle)
        return key, handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _grpc(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


def _http(server):
    return httpclient.InferenceServerClient(server.rest_url)


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_simple_shm_example(shm_server, regions, proto):
    """Inputs read from one region, outputs written into another, read back from it; status, unregister."""
    mod = grpcclient if proto == "grpc" else httpclient
    client = _grpc(shm_server) if proto == "grpc" else _http(shm_server)
    client.unregister_system_shared_memory()
    in_key, in_h = regions(128)
    out_key, out_h = regions(128)
    shm.set_shared_memory_region(in_h, [A, B])
    client.register_system_shared_memory("in", in_key, 128)
    client.register_system_shared_memory("out", out_key, 128)
    inputs = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("in", 64)
    inputs[1].set_shared_memory("in", 64, offset=64)
    outputs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("out", 64)
    outputs[1].set_shared_memory("out", 64, offset=64)
    result = client.infer("simple", inputs, outputs=outputs)
    out0 = result.get_output("OUTPUT0")
    shape = list(out0.shape) if proto == "grpc" else out0["shape"]
    assert shape == [1, 16]
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.int32, [1, 16]), A + B)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.int32, [1, 16], offset=64), A - B)
    if proto == "http":  # no contents in the reply for outputs written into shared memory
        assert "data" not in out0 and "parameters" not in out0
    status = client.get_system_shared_memory_status()
    names = sorted(status.regions) if proto == "grpc" else sorted(r["name"] for r in status)
    assert names == ["in", "out"]
    one = client.get_system_shared_memory_status("in")
    doc = one.regions["in"] if proto == "grpc" else one[0]
    key, size = (doc.key, doc.byte_size) if proto == "grpc" else (doc["key"], doc["byte_size"])
    assert (key, size) == (in_key, 128)
    client.unregister_system_shared_memory("in")
    client.unregister_system_shared_memory()
    status = client.get_system_shared_memory_status()
    assert len(status.regions if proto == "grpc" else status) == 0


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_simple_shm_string_example(shm_server, regions, proto):
    """BYTES through shared memory: 4-byte length prefixes in and out, as Triton's string example."""
    mod = grpcclient if proto == "grpc" else httpclient
    client = _grpc(shm_server) if proto == "grpc" else _http(shm_server)
    client.unregister_system_shared_memory()
    a = np.array([str(x) for x in A.reshape(-1)], dtype=object).reshape(1, 16)
    b = np.array([str(x) for x in B.reshape(-1)], dtype=object).reshape(1, 16)
    sa, sb = serialize_byte_tensor(a), serialize_byte_tensor(b)
    na, nb = serialized_byte_size(sa), serialized_byte_size(sb)
    in_key, in_h = regions(na + nb)
    out_key, out_h = regions(512)
    shm.set_shared_memory_region(in_h, [sa])
    shm.set_shared_memory_region(in_h, [sb], offset=na)
    client.register_system_shared_memory("s_in", in_key, na + nb)
    client.register_system_shared_memory("s_out", out_key, 512)
    inputs = [mod.InferInput("INPUT0", [1, 16], "BYTES"), mod.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_shared_memory("s_in", na)
    inputs[1].set_shared_memory("s_in", nb, offset=na)
    outputs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("s_out", 256)
    outputs[1].set_shared_memory("s_out", 256, offset=256)
    client.infer("simple_string", inputs, outputs=outputs)
    out0 = shm.get_contents_as_numpy(out_h, np.object_, [1, 16])
    out1 = shm.get_contents_as_numpy(out_h, np.object_, [1, 16], offset=256)
    assert [int(v) for v in out0.reshape(-1)] == list((A + B).reshape(-1))
    assert [int(v) for v in out1.reshape(-1)] == list((A - B).reshape(-1))
    client.unregister_system_shared_memory()


def test_mixed_sources_and_batching(shm_server, regions):
    """One input from a region, the other raw; one output into a region, the other in the reply; many
    such requests at once, batched with plain ones."""
    client = _grpc(shm_server)
    key, h = regions(64 * 16)
    rows = [np.full((1, 16), i, np.int32) for i in range(16)]
    shm.set_shared_memory_region(h, rows)
    client.register_system_shared_memory("mix", key, 64 * 16)
    out_key, out_h = regions(64 * 16)
    client.register_system_shared_memory("mix_out", out_key, 64 * 16)

    def one(i: int):
        x0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
        x0.set_shared_memory("mix", 64, offset=64 * i)
        x1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
        x1.set_data_from_numpy(B)
        o0 = grpcclient.InferRequestedOutput("OUTPUT0")
        o0.set_shared_memory("mix_out", 64, offset=64 * i)
        return client.infer("simple", [x0, x1], outputs=[o0, grpcclient.InferRequestedOutput("OUTPUT1")])

    def plain(i: int):
        x0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
        x0.set_data_from_numpy(rows[i])
        x1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
        x1.set_data_from_numpy(B)
        return client.infer("simple", [x0, x1])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        shared = list(pool.map(one, range(16)))
        plains = list(pool.map(plain, range(16)))
    for i, (res, ref) in enumerate(zip(shared, plains, strict=True)):
        np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), rows[i] - B)
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.int32, [1, 16], offset=64 * i),
                                      ref.as_numpy("OUTPUT0"))
    client.unregister_system_shared_memory()


def test_stream_and_rest_mixed(shm_server, regions):
    """A gRPC stream's requests and a REST request mixing a region input with JSON data and a region output
    with a JSON one."""
    import queue

    key, h = regions(128)
    shm.set_shared_memory_region(h, [A, B])
    out_key, out_h = regions(128)
    client = _grpc(shm_server)
    client.register_system_shared_memory("st_in", key, 128)
    client.register_system_shared_memory("st_out", out_key, 128)
    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    try:
        for i in range(2):
            x0, x1 = grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")
            x0.set_shared_memory("st_in", 64)
            x1.set_shared_memory("st_in", 64, offset=64)
            o = grpcclient.InferRequestedOutput("OUTPUT1")
            o.set_shared_memory("st_out", 64, offset=64 * i)
            client.async_stream_infer("simple", [x0, x1], outputs=[o], request_id=str(i))
        for _ in range(2):
            result, error = replies.get(timeout=60)
            assert error is None, error
    finally:
        client.stop_stream()
    for i in range(2):
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.int32, [1, 16], offset=64 * i), A - B)

    rest = _http(shm_server)
    x0, x1 = httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")
    x0.set_shared_memory("st_in", 64)
    x1.set_data_from_numpy(B, binary_data=False)
    o0, o1 = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False), httpclient.InferRequestedOutput("OUTPUT1")
    o1.set_shared_memory("st_out", 64)
    result = rest.infer("simple", [x0, x1], outputs=[o0, o1])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.int32, [1, 16]), A - B)
    client.unregister_system_shared_memory()


def test_feature_stage_inputs_from_shared_memory(shm_server, regions):
    """A model with a feature stage (churn) reads raw columns, BYTES ones included, from a region."""
    client = _grpc(shm_server)
    feeds = {
        "tenure_months": np.array([[12.0], [40.0]]), "monthly_charges": np.array([[70.5], [20.0]]),
        "support_calls": np.array([[3], [0]], dtype=np.int64), "senior": np.array([[True], [False]]),
        "contract": np.array([[b"month-to-month"], [b"two-year"]], dtype=object),
        "payment_method": np.array([[b"electronic-check"], [b"credit-card"]], dtype=object),
        "region": np.array([[b"north"], [b"south"]], dtype=object),
    }
    blobs = {k: (serialize_byte_tensor(v).item() if v.dtype == object else v.tobytes()) for k, v in feeds.items()}
    total = sum(len(b) for b in blobs.values())
    key, h = regions(total)
    client.register_system_shared_memory("churn_in", key, total)
    inputs, offset = [], 0
    with open(f"/dev/shm/{key.strip('/')}", "r+b") as f:
        for name, arr in feeds.items():
            f.seek(offset)
            f.write(blobs[name])
            inp = grpcclient.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == object else
                                        {"float64": "FP64", "int64": "INT64", "bool": "BOOL"}[arr.dtype.name])
            inp.set_shared_memory("churn_in", len(blobs[name]), offset=offset)
            inputs.append(inp)
            offset += len(blobs[name])
    shared = client.infer("churn", inputs).as_numpy("probabilities")
    plain_inputs = []
    for name, arr in feeds.items():
        inp = grpcclient.InferInput(name, list(arr.shape), inputs[len(plain_inputs)].datatype())
        inp.set_data_from_numpy(arr)
        plain_inputs.append(inp)
    np.testing.assert_array_equal(shared, client.infer("churn", plain_inputs).as_numpy("probabilities"))
    client.unregister_system_shared_memory("churn_in")


def _pending(server, model: str) -> float:
    """The server's nv_inference_pending_request_count for ``model`` (requests decoded and queued)."""
    import re

    import requests

    text = requests.get(f"{server.http_url}/metrics", timeout=10).text
    found = re.findall(rf'^nv_inference_pending_request_count{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M)
    return sum(float(v) for v in found)


def test_unregister_while_in_flight(shm_server, regions):
    """A request reading from and writing into regions unregistered (and destroyed by the client) while it
    is queued completes correctly: the server's mapping outlives the registration until the request is done."""
    from helpers import wait_until

    client = _grpc(shm_server)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    key, h = regions(x.nbytes)
    out_key, out_h = regions(x.nbytes)
    shm.set_shared_memory_region(h, [x])
    client.register_system_shared_memory("busy_in", key, x.nbytes)
    client.register_system_shared_memory("busy_out", out_key, x.nbytes)
    inp = grpcclient.InferInput("x", [1, 4], "FP32")
    inp.set_shared_memory("busy_in", x.nbytes)
    out = grpcclient.InferRequestedOutput("y")
    out.set_shared_memory("busy_out", x.nbytes)
    blocker = grpcclient.InferInput("x", [1, 4], "FP32")
    blocker.set_data_from_numpy(np.ones((1, 4), np.float32))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        blockers = [pool.submit(client.infer, "slow", [blocker]) for _ in range(6)]
        wait_until(lambda: _pending(shm_server, "slow") >= 4, 30, "the blockers queued")
        pending = pool.submit(client.infer, "slow", [inp], outputs=[out])
        wait_until(lambda: _pending(shm_server, "slow") >= 5 or pending.done(), 30, "the shm request queued")
        assert not pending.done(), "the request finished before the regions could be unregistered"
        client.unregister_system_shared_memory()  # while the request waits behind the blockers
        assert len(client.get_system_shared_memory_status().regions) == 0
        pending.result(timeout=60)
        for b in blockers:
            b.result(timeout=60)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_h, np.float32, [1, 4]), x * 2)
    # the name is free again at once
    client.register_system_shared_memory("busy_in", key, x.nbytes)
    client.unregister_system_shared_memory("busy_in")


def test_validation_errors_grpc(shm_server, regions):
    client = _grpc(shm_server)
    client.unregister_system_shared_memory()
    key, h = regions(128)
    expect_error(lambda: client.register_system_shared_memory("r", "/skewless_no_such_key", 64), "INTERNAL",
                 "Unable to open shared memory region: '/skewless_no_such_key'")
    expect_error(lambda: client.register_system_shared_memory("r", key, 256), "INVALID_ARGUMENT",
                 "failed to register shared memory region 'r': invalid args")
    expect_error(lambda: client.register_system_shared_memory("r", key, 64, offset=100), "INVALID_ARGUMENT",
                 "failed to register shared memory region 'r': invalid args")
    client.register_system_shared_memory("r", key, 128)
    expect_error(lambda: client.register_system_shared_memory("r", key, 128), "ALREADY_EXISTS",
                 "shared memory region 'r' already in manager")
    expect_error(lambda: client.get_system_shared_memory_status("nope"), "NOT_FOUND",
                 "Unable to find system shared memory region: 'nope'")

    def infer_with(region: str, size: int, offset: int = 0, out_size: int | None = None):
        x0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
        x0.set_shared_memory(region, size, offset=offset)
        x1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
        x1.set_data_from_numpy(B)
        outs = None
        if out_size is not None:
            outs = [grpcclient.InferRequestedOutput("OUTPUT0")]
            outs[0].set_shared_memory("r", out_size)
        return lambda: client.infer("simple", [x0, x1], outputs=outs)

    expect_error(infer_with("nope", 64), "NOT_FOUND", "Unable to find shared memory region: 'nope'")
    expect_error(infer_with("r", 64, offset=128), "INVALID_ARGUMENT",
                 "Invalid offset for shared memory region: 'r'")
    expect_error(infer_with("r", 64, offset=100), "INVALID_ARGUMENT",
                 "Invalid offset + byte size for shared memory region: 'r'")
    expect_error(infer_with("r", 60), "INVALID_ARGUMENT", "input byte size mismatch for input 'INPUT0'")
    expect_error(infer_with("r", 64, out_size=32), "INVALID_ARGUMENT",
                 "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) should be at "
                 "least 64 bytes to hold the results")
    client.unregister_system_shared_memory()


def test_protobuf_requests_mix_regions_with_typed_contents(shm_server, regions):
    """Raw protobuf: a region input next to a typed-contents one; typed contents on a region input, and
    parameters of the wrong type, get Triton's errors."""
    import grpc
    from helpers import output_arrays, raw_stub, rpc_error, typed_request

    client = _grpc(shm_server)
    key, h = regions(64)
    shm.set_shared_memory_region(h, [A])
    client.register_system_shared_memory("pb_in", key, 64)
    channel, stub = raw_stub(shm_server.grpc_url)
    try:
        req = typed_request("simple", [("INPUT0", "INT32", np.zeros((1, 16), np.int32)), ("INPUT1", "INT32", B)])
        del req.inputs[0].contents.int_contents[:]
        req.inputs[0].parameters["shared_memory_region"].string_param = "pb_in"
        req.inputs[0].parameters["shared_memory_byte_size"].int64_param = 64
        np.testing.assert_array_equal(output_arrays(stub.ModelInfer(req, timeout=60))["OUTPUT0"], A + B)

        bad = typed_request("simple", [("INPUT0", "INT32", A), ("INPUT1", "INT32", B)])
        bad.inputs[0].parameters["shared_memory_region"].string_param = "pb_in"
        bad.inputs[0].parameters["shared_memory_byte_size"].int64_param = 64
        err = rpc_error(lambda: stub.ModelInfer(bad, timeout=60), grpc.StatusCode.INVALID_ARGUMENT)
        assert "unexpected 'content' provided when using shared memory for input tensor 'INPUT0'" in err.details()

        bad = typed_request("simple", [("INPUT0", "INT32", A), ("INPUT1", "INT32", B)])
        bad.inputs[0].parameters["shared_memory_byte_size"].int64_param = 64
        err = rpc_error(lambda: stub.ModelInfer(bad, timeout=60), grpc.StatusCode.INVALID_ARGUMENT)
        assert "'shared_memory_byte_size' can not be specified without 'shared_memory_region'" in err.details()

        bad = typed_request("simple", [("INPUT0", "INT32", A), ("INPUT1", "INT32", B)])
        bad.inputs[0].parameters["shared_memory_region"].int64_param = 1
        err = rpc_error(lambda: stub.ModelInfer(bad, timeout=60), grpc.StatusCode.INVALID_ARGUMENT)
        assert "invalid value type for 'shared_memory_region' parameter for tensor 'INPUT0'" in err.details()
    finally:
        channel.close()
        client.unregister_system_shared_memory()


def test_raw_data_for_an_input_in_shared_memory_is_refused(shm_server, regions):
    """Raw contents for every input while one also names a region: which bytes were meant is unknowable, so
    the request is refused, whether the compiled decoder or the general path sees it (the compiled one used
    to take the raw bytes and ignore the region); a request whose raw contents skip the region's input runs."""
    import grpc
    from helpers import output_arrays, raw_stub, rpc_error

    from skewless.protos import grpc_service_pb2 as pb

    client = _grpc(shm_server)
    key, h = regions(64)
    shm.set_shared_memory_region(h, [A])
    client.register_system_shared_memory("both_in", key, 64)
    channel, stub = raw_stub(shm_server.grpc_url)

    def request(raw_for_region_input: bool) -> pb.ModelInferRequest:
        req = pb.ModelInferRequest(model_name="simple")
        for name in ("INPUT0", "INPUT1"):
            req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        req.inputs[0].parameters["shared_memory_region"].string_param = "both_in"
        req.inputs[0].parameters["shared_memory_byte_size"].int64_param = 64
        if raw_for_region_input:
            req.raw_input_contents.append(np.zeros((1, 16), np.int32).tobytes())
        req.raw_input_contents.append(B.tobytes())
        return req

    try:
        err = rpc_error(lambda: stub.ModelInfer(request(True), timeout=60), grpc.StatusCode.INVALID_ARGUMENT)
        assert "raw_input_contents has 2 entries but 1 of the request's 2 inputs are not in shared memory" in \
            err.details()
        np.testing.assert_array_equal(output_arrays(stub.ModelInfer(request(False), timeout=60))["OUTPUT0"], A + B)
    finally:
        channel.close()
        client.unregister_system_shared_memory()


def test_validation_errors_http(shm_server, regions):
    import requests

    client = _http(shm_server)
    base = f"http://{shm_server.rest_url}/v2"
    key, h = regions(128)
    r = requests.post(f"{base}/systemsharedmemory/region/h/register", json={"byte_size": 64}, timeout=30)
    assert (r.status_code, r.json()["error"]) == (400, "Shared memory register request has no 'key' field")
    r = requests.post(f"{base}/systemsharedmemory/region/h/register", json={"key": key}, timeout=30)
    assert (r.status_code, r.json()["error"]) == (400, "Shared memory register request has no 'byte_size' field")
    assert requests.post(f"{base}/systemsharedmemory/status", timeout=30).status_code == 405
    client.register_system_shared_memory("h", key, 128)
    with pytest.raises(InferenceServerException, match="already in manager"):
        client.register_system_shared_memory("h", key, 128)
    r = requests.post(f"{base}/models/simple/infer", timeout=30, json={"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": A.reshape(-1).tolist(),
         "parameters": {"shared_memory_region": "h", "shared_memory_byte_size": 64}},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": B.reshape(-1).tolist()}]})
    assert r.status_code == 400 and "Input must set only one of the following fields" in r.json()["error"]
    r = requests.get(f"{base}/systemsharedmemory/region/zz/status", timeout=30)
    assert (r.status_code, r.json()["error"]) == (404, "Unable to find system shared memory region: 'zz'")
    client.unregister_system_shared_memory()


def test_server_metadata_and_cuda_without_gpu(shm_server):
    from skewless.server.shm import cuda

    client = _grpc(shm_server)
    extensions = client.get_server_metadata().extensions
    assert "system_shared_memory" in extensions
    if cuda.available():
        pytest.skip("a GPU is present: see test_cuda_shared_memory")
    assert "cuda_shared_memory" not in extensions
    expect_error(lambda: client.register_cuda_shared_memory("c", b"AAAA", 0, 64), "INVALID_ARGUMENT",
                 "CUDA is not available")
    assert len(client.get_cuda_shared_memory_status().regions) == 0
    http = _http(shm_server)
    with pytest.raises(InferenceServerException, match="CUDA is not available"):
        http.register_cuda_shared_memory("c", b"AAAA", 0, 64)


@pytest.mark.gpu
def test_cuda_shared_memory(shm_server):
    """Triton's simple_grpc_cudashm_client flow: inputs and outputs in device memory."""
    from skewless.server.shm import cuda

    if not cuda.available():
        pytest.skip("no usable GPU")
    import tritonclient.utils.cuda_shared_memory as cudashm

    client = _grpc(shm_server)
    assert "cuda_shared_memory" in client.get_server_metadata().extensions
    ih = cudashm.create_shared_memory_region("cin", 128, 0)
    oh = cudashm.create_shared_memory_region("cout", 128, 0)
    try:
        cudashm.set_shared_memory_region(ih, [A, B])
        client.register_cuda_shared_memory("cin", cudashm.get_raw_handle(ih), 0, 128)
        client.register_cuda_shared_memory("cout", cudashm.get_raw_handle(oh), 0, 128)
        inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_shared_memory("cin", 64)
        inputs[1].set_shared_memory("cin", 64, offset=64)
        outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
        outputs[0].set_shared_memory("cout", 64)
        outputs[1].set_shared_memory("cout", 64, offset=64)
        client.infer("simple", inputs, outputs=outputs)
        np.testing.assert_array_equal(cudashm.get_contents_as_numpy(oh, np.int32, [1, 16]), A + B)
        np.testing.assert_array_equal(cudashm.get_contents_as_numpy(oh, np.int32, [1, 16], offset=64), A - B)
        assert sorted(client.get_cuda_shared_memory_status().regions) == ["cin", "cout"]
        client.unregister_cuda_shared_memory()
    finally:
        cudashm.destroy_shared_memory_region(ih)
        cudashm.destroy_shared_memory_region(oh)
