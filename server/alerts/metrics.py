"""Alert hook metrics: declared here, registered with the meter the server gives, read from the hub's
counts at each collection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation

from ..telemetry.spec import MetricSpec, by_name

if TYPE_CHECKING:
    from .hub import AlertHub

METRICS = (
    MetricSpec("skewless_alerts", "counter",
               "Alert hook calls by hook, alert kind and outcome (ok, ok_after_retry, failed, timeout; dropped: "
               "queue full)", ("hook", "kind", "outcome")),
)
SPEC = by_name(METRICS)


def register_metrics(meter: Any, hub: AlertHub) -> None:
    """skewless_alerts_total{hook,kind,outcome}: every alert hook call, and alerts dropped (queue full)."""

    def calls(_options: CallbackOptions) -> Iterator[Observation]:
        for (hook, kind, outcome), n in list(hub.counts.items()):
            yield Observation(n, {"hook": hook, "kind": kind, "outcome": outcome})
        if hub.dropped:
            yield Observation(hub.dropped, {"hook": "", "kind": "", "outcome": "dropped"})

    SPEC["skewless_alerts"].observe(meter, [calls])


__all__ = ["METRICS", "register_metrics"]
