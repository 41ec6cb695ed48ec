"""One POST to the server's own REST routes (labels, events), errors raised as tritonclient raises them."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any


def post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float | None, ssl_context: Any = None) -> dict:
    """POST ``body`` and return the JSON reply; an HTTP error becomes InferenceServerException(msg, status)
    with the server's ``error`` text, as tritonclient's own calls report it."""
    from tritonclient.utils import InferenceServerException

    req = urllib.request.Request(url, body, dict(headers), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=ssl_context) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError):
            text = json.loads(text).get("error", text)
        raise InferenceServerException(msg=text, status=str(exc.code)) from None
