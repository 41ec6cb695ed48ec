"""Delayed labels to the server's ``skewless.v1.Feedback/SubmitLabels`` (gRPC) or
``POST /v2/models/{m}/labels`` (HTTP), joined there with the prediction log by request id."""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ClientError
from .httppost import post


@dataclass(frozen=True)
class LabelReceipt:
    """The server's count: joined with a logged prediction (first time), held until it is logged, dropped,
    the same value again (a retry: nothing changed), or a new value replacing the one joined before."""

    joined: int
    pending: int
    unknown: int
    duplicate: int = 0
    corrected: int = 0


def normalize(labels: Mapping[str, Any]) -> list[tuple[str, list[float]]]:
    """{request id: value or values (one per row of that request)} -> checked (id, values) pairs."""
    items = []
    for rid, value in labels.items():
        if not isinstance(rid, str) or not rid:
            raise ClientError(f"label keys must be request ids (non-empty strings), got {rid!r}")
        values = [value] if isinstance(value, int | float) else list(value)
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ClientError(f"labels of request '{rid}' must be numbers, got {value!r}") from None
        if not values or not all(math.isfinite(v) for v in values):
            raise ClientError(f"labels of request '{rid}' must be one or more finite numbers, got {value!r}")
        items.append((rid, values))
    if not items:
        raise ClientError("no labels given")
    return items


def submit_grpc(channel: Any, model: str, items: Sequence[tuple[str, list[float]]],
                timeout_s: float | None) -> LabelReceipt:
    import grpc
    from tritonclient.utils import InferenceServerException

    from skewless.protos import skewless_feedback_pb2 as pb
    from skewless.protos import skewless_feedback_pb2_grpc as pb_grpc

    req = pb.SubmitLabelsRequest(model=model, labels=[pb.Label(request_id=r, values=v) for r, v in items])
    try:
        resp = pb_grpc.FeedbackStub(channel).SubmitLabels(req, timeout=timeout_s)
    except grpc.RpcError as exc:
        raise InferenceServerException(msg=exc.details(), status=str(exc.code())) from None
    return LabelReceipt(resp.joined, resp.pending, resp.unknown, resp.duplicate, resp.corrected)


def submit_http(base_url: str, model: str, items: Sequence[tuple[str, list[float]]],
                timeout_s: float | None, ssl_context: Any = None) -> LabelReceipt:
    body = json.dumps({"labels": [{"id": r, "values": v} for r, v in items]}).encode()
    url = f"{base_url}/v2/models/{urllib.parse.quote(model, safe='')}/labels"
    doc = post(url, body, {"Content-Type": "application/json"}, timeout_s, ssl_context)
    return LabelReceipt(int(doc["joined"]), int(doc["pending"]), int(doc["unknown"]), int(doc.get("duplicate", 0)),
                        int(doc.get("corrected", 0)))
