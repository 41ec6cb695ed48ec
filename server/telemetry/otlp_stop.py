"""At stop, an OTLP exporter's next export is its last attempt: no retry backoff against a dead collector.

The SDK's exporters retry a failed export with exponential backoff (1 s, 2 s, 4 s, ... within
OTEL_EXPORTER_OTLP_TIMEOUT), and wait out each backoff on an event that their ``shutdown()`` sets. At stop the
final flush should still reach a live collector, but a collector that refuses the connection must not hold the
server's stop up for the backoff: setting that event first makes the flush a single attempt, which fails at
once when nothing listens. The event's name differs between the gRPC and HTTP exporters and SDK releases; an
exporter without one keeps its retries (the stop then waits at most its own bound).
"""

from __future__ import annotations

import threading
from typing import Any

# The events the SDK's exporters wait their backoff on: gRPC (exporter), HTTP (exporter._client).
_BACKOFF_EVENTS = ("_shutdown_in_progress", "_shutdown_event")


def last_attempt(exporter: Any) -> bool:
    """Make the exporter's next export a single attempt. True when an event to set was found."""
    found = False
    for owner in (exporter, getattr(exporter, "_client", None)):
        for name in _BACKOFF_EVENTS:
            event = getattr(owner, name, None)
            if isinstance(event, threading.Event):
                event.set()
                found = True
    return found


__all__ = ["last_attempt"]
