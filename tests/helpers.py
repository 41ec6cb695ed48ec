"""Shared helpers: request builders (tritonclient and raw protobuf), ONNX test models, polling."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import numpy as np
import onnx
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from skewless.benchmarks.swap_load import add_constant_model  # noqa: F401 - shared with the registry report

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MODELS = REPO_ROOT / "examples" / "models"
MAX_MESSAGE = 2**31 - 1
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
RPC_TIMEOUT = 30.0

# InferTensorContents field per datatype (FP16 and BF16 have none: raw bytes only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


# -- tritonclient --------------------------------------------------------------------------------------
def infer_input(name: str, arr: np.ndarray, datatype: str | None = None) -> grpcclient.InferInput:
    datatype = datatype or np_to_triton_dtype(arr.dtype)
    inp = grpcclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def infer(client, model: str, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None, **kw):
    inputs = [infer_input(k, v) for k, v in feeds.items()]
    outs = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, inputs, outputs=outs, client_timeout=RPC_TIMEOUT, **kw)


def expect_error(fn: Callable, code: str, contains: str = "") -> InferenceServerException:
    """Call ``fn`` and check that tritonclient raised the given status (e.g. "NOT_FOUND")."""
    try:
        fn()
    except InferenceServerException as exc:
        assert exc.status() == f"StatusCode.{code}", f"expected {code}, got {exc.status()}: {exc.message()}"
        assert contains in (exc.message() or ""), f"{contains!r} not in {exc.message()!r}"
        return exc
    raise AssertionError(f"expected {code} error, the call succeeded")


# -- raw protobuf through the stub ---------------------------------------------------------------------
def raw_stub(url: str) -> tuple[grpc.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(url, options=CHANNEL_OPTIONS)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def raw_request(model: str, tensors: Sequence[tuple[str, str, Sequence[int], bytes]],
                outputs: Sequence[str] = (), version: str = "", request_id: str = "") -> service_pb2.ModelInferRequest:
    """A request carrying every input in raw_input_contents: tensors are (name, datatype, shape, bytes)."""
    req = service_pb2.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, datatype, shape, data in tensors:
        req.inputs.add(name=name, datatype=datatype, shape=list(shape))
        req.raw_input_contents.append(data)
    for o in outputs:
        req.outputs.add(name=o)
    return req


def typed_request(model: str, tensors: Sequence[tuple[str, str, np.ndarray]],
                  outputs: Sequence[str] = ()) -> service_pb2.ModelInferRequest:
    """A request carrying every input in typed InferTensorContents: tensors are (name, datatype, array)."""
    req = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, arr in tensors:
        t = req.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        field = CONTENTS_FIELD.get(datatype)
        if field is None:
            assert arr.size == 0, f"{datatype} has no typed contents field"
            continue
        values = arr.reshape(-1).tolist()
        getattr(t.contents, field).extend(values)
    for o in outputs:
        req.outputs.add(name=o)
    return req


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


def output_arrays(resp: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    """Decode raw_output_contents (what the server always sends) into numpy arrays."""
    from tritonclient.grpc import InferResult

    result = InferResult(resp)
    return {o.name: result.as_numpy(o.name) for o in resp.outputs}


def rpc_error(fn: Callable, code: grpc.StatusCode) -> grpc.RpcError:
    try:
        fn()
    except grpc.RpcError as exc:
        assert exc.code() == code, f"expected {code}, got {exc.code()}: {exc.details()}"
        return exc
    raise AssertionError(f"expected {code}, the call succeeded")


# -- HTTP ----------------------------------------------------------------------------------------------
def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


# -- waiting -------------------------------------------------------------------------------------------
def child_servers(*markers: str) -> list[str]:
    """Command lines of this process's descendants that contain any of ``markers`` (servers a test started)."""
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if any(m in cmd for m in markers):
            out.append(cmd)
    return out


def benchmark_servers() -> list[str]:
    """Servers a benchmark report started (skewless and the echo server), to check none is left running."""
    return child_servers("skewless.server.frontend.cli", "skewless.benchmarks.echo_server")


def wait_until(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def index_rows(client, name: str | None = None) -> dict[tuple[str, str], tuple[str, str]]:
    """RepositoryIndex as {(name, version): (state, reason)}."""
    idx = client.get_model_repository_index(as_json=True)
    rows = {}
    for m in idx.get("models", []):
        if name is None or m["name"] == name:
            rows[(m["name"], m.get("version", ""))] = (m.get("state", ""), m.get("reason", ""))
    return rows


# -- ONNX test models ----------------------------------------------------------------------------------
def _model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def mlp_variant_model(seed: int) -> bytes:
    """A different model with the example mlp's interface: input FP32 [batch, 32] -> probabilities [batch, 2]."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((32, 2)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "mlp_variant",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return _model(graph)


def write_versions(model_dir: Path, versions: dict[int, bytes], config: str | None = None) -> None:
    for v, data in versions.items():
        (model_dir / str(v)).mkdir(parents=True, exist_ok=True)
        (model_dir / str(v) / "model.onnx").write_bytes(data)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)


def write_triton_identity(root: Path, name: str, datatype: str, dims: Sequence[int], max_batch_size: int,
                          inputs: int = 1) -> None:
    """A Triton-QA-style identity model: INPUTi -> OUTPUTi of ``datatype`` and ``dims`` (config.pbtxt
    written, batch dimension added when ``max_batch_size`` > 0)."""
    from skewless.server.codec import DATATYPES

    dt = DATATYPES[datatype]
    elem = TensorProto.STRING if datatype == "BYTES" else helper.np_dtype_to_tensor_dtype(dt.numpy)
    shape = [*(["batch"] if max_batch_size else []), *(f"d{i}" if d == -1 else d for i, d in enumerate(dims))]
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"INPUT{i}"], [f"OUTPUT{i}"]) for i in range(inputs)], name,
        [helper.make_tensor_value_info(f"INPUT{i}", elem, shape) for i in range(inputs)],
        [helper.make_tensor_value_info(f"OUTPUT{i}", elem, shape) for i in range(inputs)])
    tensors = "".join(
        f'{kind} {{ name: "{kind.upper()}{i}" data_type: {dt.config_name} dims: [ {", ".join(map(str, dims))} ] }}\n'
        for kind in ("input", "output") for i in range(inputs))
    write_versions(root / name, {1: _model(graph)}, f"max_batch_size: {max_batch_size}\n{tensors}")
