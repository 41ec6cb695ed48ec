"""What the load generator sends and how it judges replies, built once from a server's ModelMetadata.

Requests are serialised here, once, so the hot loop only hands bytes to gRPC: the figures then measure the
server and the transport, not protobuf building in the client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from skewless.protos import grpc_service_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"
MAX_MESSAGE_BYTES = 2**31 - 1
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Without this, channels with equal arguments in one process share one TCP connection.
    ("grpc.use_local_subchannel_pool", 1),
]

# v2 datatype -> numpy dtype; BYTES and BF16 are handled apart (no plain numpy equivalent).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64), "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16), "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]  # as the metadata says: -1 for variable dimensions

    def concrete(self, rows: int) -> tuple[int, ...]:
        """A leading -1 is the batch dimension (``rows``); any other variable dimension becomes 1."""
        return tuple(rows if (i == 0 and d < 0) else (1 if d < 0 else d) for i, d in enumerate(self.shape))


@dataclass
class ModelInfo:
    name: str
    version: str
    platform: str
    inputs: list[Tensor]
    outputs: list[Tensor]


@dataclass
class Workload:
    """Pre-serialised request variants plus what a correct reply to each looks like."""

    model: ModelInfo
    rows: int
    requests: list[bytes]  # ModelInferRequest bytes, one per variant, without an id
    feeds: list[dict[str, np.ndarray]]
    output_names: list[str]
    expected: list[dict[str, np.ndarray]] | None = None  # from onnxruntime, when asked to compare values
    request_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.request_bytes = len(self.requests[0])


def fetch_model(target: str, model: str, version: str = "", timeout: float = 10.0) -> ModelInfo:
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise RuntimeError(f"no gRPC server answered at {target} within {timeout:g}s") from None
        call = ch.unary_unary(SERVICE + "ModelMetadata", request_serializer=pb.ModelMetadataRequest.SerializeToString,
                              response_deserializer=pb.ModelMetadataResponse.FromString)
        md = call(pb.ModelMetadataRequest(name=model, version=version), timeout=timeout)
        config = ch.unary_unary(SERVICE + "ModelConfig", request_serializer=pb.ModelConfigRequest.SerializeToString,
                                response_deserializer=pb.ModelConfigResponse.FromString)
        # Optional inputs (a feature model's NAME__missing companions) are left out: the workload sends what
        # every request must carry, so its figures stay comparable with servers that have no such inputs. A
        # server without ModelConfig (the echo, the naive server) has none.
        try:
            cfg = config(pb.ModelConfigRequest(name=model, version=version), timeout=timeout).config
            optional = {t.name for t in cfg.input if t.optional}
        except grpc.RpcError:
            optional = set()

    def tensors(items) -> list[Tensor]:
        return [Tensor(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in items if t.name not in optional]

    return ModelInfo(md.name or model, version or (md.versions[-1] if md.versions else ""), md.platform,
                     tensors(md.inputs), tensors(md.outputs))


def random_array(t: Tensor, rows: int, rng: np.random.Generator) -> np.ndarray:
    shape = t.concrete(rows)
    if t.datatype == "BYTES":
        n = math.prod(shape)
        words = [f"w{rng.integers(0, 10_000)}".encode() for _ in range(n)]
        return np.array(words, dtype=object).reshape(shape)
    if t.datatype in ("FP16", "FP32", "FP64", "BF16"):
        return rng.standard_normal(shape).astype(np.float32 if t.datatype == "BF16" else NUMPY_DTYPES[t.datatype])
    if t.datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if t.datatype in NUMPY_DTYPES:
        return rng.integers(0, 100, shape).astype(NUMPY_DTYPES[t.datatype])
    raise ValueError(f"input '{t.name}' has datatype {t.datatype}, which the load generator cannot generate")


def to_raw(arr: np.ndarray, datatype: str) -> bytes:
    """Raw v2 tensor bytes: little-endian; BYTES elements carry a 4-byte length; BF16 keeps the top half."""
    if datatype == "BYTES":
        parts = []
        for item in arr.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(b).to_bytes(4, "little") + b)
        return b"".join(parts)
    if datatype == "BF16":
        return (np.ascontiguousarray(arr, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
    return np.ascontiguousarray(arr, dtype=NUMPY_DTYPES[datatype].newbyteorder("<")).tobytes()


def serialise(model: ModelInfo, feeds: dict[str, np.ndarray], outputs: list[str]) -> bytes:
    req = pb.ModelInferRequest(model_name=model.name, model_version=model.version)
    for t in model.inputs:
        arr = feeds[t.name]
        req.inputs.add(name=t.name, datatype=t.datatype, shape=list(arr.shape))
        req.raw_input_contents.append(to_raw(arr, t.datatype))
    for name in outputs:
        req.outputs.add(name=name)
    return req.SerializeToString()


def id_suffix(request_id: str) -> bytes:
    """Field 3 (``id``) as wire bytes: appended to a serialised request it sets the id (last field wins)."""
    raw = request_id.encode()
    n, varint = len(raw), bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        varint.append(byte | (0x80 if n else 0))
        if not n:
            break
    return b"\x1a" + bytes(varint) + raw


def load_input_files(specs: list[str], model: ModelInfo) -> dict[str, np.ndarray]:
    """``PATH.npz`` (arrays named after inputs), ``PATH.npy`` (the only input) or ``NAME=PATH.npy``."""
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        loaded = np.load(Path(path), allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            feeds.update({k: loaded[k] for k in loaded.files})
        else:
            if not name:
                if len(model.inputs) != 1:
                    raise ValueError(f"{path}: model has {len(model.inputs)} inputs; write NAME={path}")
                name = model.inputs[0].name
            feeds[name] = loaded
    missing = [t.name for t in model.inputs if t.name not in feeds]
    if missing:
        raise ValueError(f"input file(s) give no data for input(s) {missing}")
    return {t.name: feeds[t.name] for t in model.inputs}


def onnx_outputs(path: str, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feeds), strict=True))


def build_workload(model: ModelInfo, rows: int = 1, variants: int = 16, input_files: list[str] | None = None,
                   outputs: list[str] | None = None, onnx_path: str | None = None, seed: int = 0) -> Workload:
    """Distinct variants keep a server from answering one cached input; one is enough for file input."""
    rng = np.random.default_rng(seed)
    out_names = list(outputs) if outputs else [t.name for t in model.outputs]
    unknown = set(out_names) - {t.name for t in model.outputs}
    if unknown:
        raise ValueError(f"model '{model.name}' has no output(s) {sorted(unknown)}")
    if input_files:
        feed_list = [load_input_files(input_files, model)]
    else:
        feed_list = [{t.name: random_array(t, rows, rng) for t in model.inputs} for _ in range(max(1, variants))]
    first = next(iter(feed_list[0].values()), None)
    actual_rows = int(first.shape[0]) if first is not None and first.ndim else rows
    reqs = [serialise(model, f, list(outputs or [])) for f in feed_list]
    expected = [onnx_outputs(onnx_path, f, out_names) for f in feed_list] if onnx_path else None
    return Workload(model, actual_rows, reqs, feed_list, out_names, expected)


def check_reply(resp: pb.ModelInferResponse, wl: Workload, variant: int | None) -> str | None:
    """None when the reply is right: expected outputs, datatypes, shapes, byte sizes and (optionally) values."""
    specs = {t.name: t for t in wl.model.outputs}
    got = [o.name for o in resp.outputs]
    if sorted(got) != sorted(wl.output_names):
        return f"outputs {got}, expected {wl.output_names}"
    if len(resp.raw_output_contents) != len(resp.outputs):
        return f"{len(resp.raw_output_contents)} raw_output_contents for {len(resp.outputs)} outputs"
    for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True):
        spec = specs[o.name]
        if o.datatype != spec.datatype:
            return f"output '{o.name}' datatype {o.datatype}, expected {spec.datatype}"
        shape = tuple(o.shape)
        want = spec.concrete(wl.rows)
        if len(shape) != len(want) or any(w != s and d >= 0 for w, s, d in zip(want, shape, spec.shape, strict=True)):
            return f"output '{o.name}' shape {list(shape)}, expected {list(want)}"
        if o.datatype == "BYTES":
            continue
        size = 2 if o.datatype == "BF16" else NUMPY_DTYPES[o.datatype].itemsize
        if len(raw) != math.prod(shape) * size:
            return f"output '{o.name}' has {len(raw)} bytes, expected {math.prod(shape) * size}"
        if wl.expected is not None and variant is not None and o.datatype != "BF16":
            arr = np.frombuffer(raw, dtype=NUMPY_DTYPES[o.datatype].newbyteorder("<")).reshape(shape)
            ref = wl.expected[variant][o.name]
            if arr.dtype.kind == "f":
                ok = np.allclose(arr, ref, rtol=1e-4, atol=1e-5, equal_nan=True)
            else:
                ok = np.array_equal(arr, ref)
            if not ok:
                return f"output '{o.name}' values differ from onnxruntime (max abs diff " \
                       f"{float(np.max(np.abs(arr.astype(np.float64) - ref))):.3g})"
    return None
