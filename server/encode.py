"""Reply encoding: a computed request's output arrays into the transport's reply.

The hot path's reply bytes come from the compiled plan (or the native encoder) straight from the arrays;
replies a side module answered (FlaggedArrays, e.g. a fallback) are rare and take the protobuf encoder, which
adds their flag. Also the statistics message of a version (ModelStatistics).
"""

from __future__ import annotations

import numpy as np

from skewless.native.v2_codec import build_infer_response
from skewless.protos import grpc_service_pb2 as pb

from .codec import encode_array
from .decode import apply_reshape
from .hooks import FlaggedArrays
from .models.stats import Duration, ModelStats
from .models.version import SPEC_HASH_PARAM, ModelVersion
from .shm.tensors import OutputTarget, write_outputs

STREAM_TAG = bytes([2 << 3 | 2])  # ModelStreamInferResponse.infer_response, length-delimited


def reply_bytes(mv: ModelVersion, request_id: str, tag: bytes | None, names: list[str],
                 arrays: list[np.ndarray]) -> bytes:
    if type(arrays) is FlaggedArrays:  # flagged in the reply's parameters: rare, so the general encoder
        resp = encode_response(request_id, mv, names, arrays)
        if tag is not None:
            return pb.ModelStreamInferResponse(infer_response=resp).SerializeToString()
        return resp.SerializeToString()
    extra = mv.reply_parameters
    if extra is not None:  # ModelInferResponse.parameters appended (fields may come in any order), then wrapped
        inner = _reply_bytes_plain(mv, request_id, None, names, arrays) + extra
        return inner if tag is None else b"".join((tag, _varint(len(inner)), inner))
    return _reply_bytes_plain(mv, request_id, tag, names, arrays)


def _reply_bytes_plain(mv: ModelVersion, request_id: str, tag: bytes | None, names: list[str],
                       arrays: list[np.ndarray]) -> bytes:
    data = mv.plan.reply(mv.name, mv.version_text, request_id, names, arrays, tag) if mv.plan is not None else None
    if data is None:
        data = build_infer_response(mv.name, mv.version_text, request_id, output_tensors(mv, names, arrays), tag)
    return data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def output_tensors(mv: ModelVersion, names: list[str], arrays: list[np.ndarray]) -> list[tuple]:
    """(name, datatype, shape, payload) per output, payload being any buffer the reply copies from."""
    out = []
    batching = mv.max_batch_size > 0
    for name, arr in zip(names, arrays, strict=True):
        spec = mv.outputs[name]
        if spec.reshape is not None:
            arr = apply_reshape(arr, spec.dims, batching, f"output '{name}'")
        dt = spec.datatype
        if dt.name == "BYTES":
            payload = encode_array(arr, dt)
        else:
            payload = arr if arr.dtype == dt.numpy and arr.flags.c_contiguous else np.ascontiguousarray(arr, dt.numpy)
        out.append((name, dt.name, arr.shape, payload))
    return out


def encode_response(req_id: str, mv: ModelVersion, names: list[str], arrays: list[np.ndarray],
                    targets: dict[str, OutputTarget] | None = None) -> pb.ModelInferResponse:
    """``targets``: outputs written into shared-memory regions instead, whose raw contents stay empty (an
    entry is kept per output, as Triton's, so clients index them alike)."""
    resp = pb.ModelInferResponse(model_name=mv.name, model_version=str(mv.version), id=req_id)
    if mv.features is not None:
        resp.parameters[SPEC_HASH_PARAM].string_param = mv.features.spec.sha256
    for name, datatype, shape, payload in write_outputs(targets, output_tensors(mv, names, arrays)):
        resp.outputs.add(name=name, datatype=datatype, shape=shape)
        if payload is None:
            resp.raw_output_contents.append(b"")
        else:
            resp.raw_output_contents.append(payload if isinstance(payload, bytes) else payload.tobytes())
    if type(arrays) is FlaggedArrays:
        resp.parameters["fallback"].string_param = arrays.reason
    return resp


def _duration(d: Duration, msg) -> None:
    msg.count, msg.ns = d.count, d.ns


def stats_message(mv: ModelVersion) -> pb.ModelStatistics:
    s: ModelStats = mv.stats
    m = pb.ModelStatistics(name=mv.name, version=str(mv.version), last_inference=s.last_inference_ms,
                           inference_count=s.inference_count, execution_count=s.execution_count)
    st = m.inference_stats
    for attr in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        _duration(getattr(s, attr), getattr(st, attr))
    for size in sorted(s.by_batch_size):
        b = s.by_batch_size[size]
        bm = m.batch_stats.add(batch_size=size)
        _duration(b.compute_input, bm.compute_input)
        _duration(b.compute_infer, bm.compute_infer)
        _duration(b.compute_output, bm.compute_output)
    return m

__all__ = ["SPEC_HASH_PARAM", "STREAM_TAG", "encode_response", "output_tensors", "reply_bytes", "stats_message"]
