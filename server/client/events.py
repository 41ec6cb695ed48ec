"""Events that are never scored (a login, a chargeback) into a model's windowed-aggregate state.

The body is a KServe v2 infer request holding any subset of the model's raw inputs, sent to the server's
``skewless.v1.Events/Ingest`` (gRPC) or ``POST /v2/models/{m}[/versions/{v}]/events`` (HTTP, binary tensors so
that every value arrives exactly). The server answers how many rows it recorded, dropped as late, or skipped.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .httppost import post
from .wire import WireTensor


@dataclass(frozen=True)
class IngestReceipt:
    """Rows recorded in at least one aggregate group, dropped as older than every group's retention, and
    skipped (a key or the time missing)."""

    recorded: int
    late: int
    skipped: int

    def __add__(self, other: IngestReceipt) -> IngestReceipt:
        return IngestReceipt(self.recorded + other.recorded, self.late + other.late, self.skipped + other.skipped)


def _payload(t: WireTensor) -> bytes:
    return t.payload if t.payload is not None else t.array.tobytes()


def ingest_grpc(channel: Any, model: str, version: str, tensors: Sequence[WireTensor], request_id: str,
                timeout_s: float | None) -> IngestReceipt:
    import grpc
    from tritonclient.utils import InferenceServerException

    from skewless.protos import grpc_service_pb2 as inference
    from skewless.protos import skewless_events_pb2_grpc as pb_grpc

    req = inference.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for t in tensors:
        req.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        req.raw_input_contents.append(_payload(t))
    try:
        resp = pb_grpc.EventsStub(channel).Ingest(req, timeout=timeout_s)
    except grpc.RpcError as exc:
        raise InferenceServerException(msg=exc.details(), status=str(exc.code())) from None
    return IngestReceipt(resp.recorded, resp.late, resp.skipped)


def ingest_http(base_url: str, model: str, version: str, tensors: Sequence[WireTensor], request_id: str,
                timeout_s: float | None, ssl_context: Any = None) -> IngestReceipt:
    payloads = [_payload(t) for t in tensors]
    header: dict[str, Any] = {"inputs": [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "parameters": {"binary_data_size": len(p)}}
        for t, p in zip(tensors, payloads, strict=True)]}
    if request_id:
        header["id"] = request_id
    head = json.dumps(header).encode()
    path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
    if version:
        path += f"/versions/{urllib.parse.quote(version, safe='')}"
    doc = post(f"{base_url}{path}/events", b"".join([head, *payloads]),
               {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
               timeout_s, ssl_context)
    return IngestReceipt(int(doc["recorded"]), int(doc["late"]), int(doc["skipped"]))
