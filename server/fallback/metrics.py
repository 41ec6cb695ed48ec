"""Fallback metrics: declared here, registered with the meter the server gives, read from each serving
version's fallback counts at each collection."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from ..telemetry.spec import MetricSpec, by_name

METRICS = (
    MetricSpec("skewless_fallback", "counter",
               "Requests answered by the model's configured fallback (config skewless.fallback) instead of the "
               "model, by reason: failure, timeout, shed", ("model", "version", "reason")),
)
SPEC = by_name(METRICS)


def register_metrics(meter: Any, versions: Callable[[], Iterator[tuple[dict[str, str], Any]]]) -> None:
    """``versions``: the serving versions now, as (labels, version) pairs."""

    def fallbacks(_options: CallbackOptions) -> Iterator[Observation]:
        for attrs, mv in versions():
            if mv.fallback is not None:
                for reason, n in list(mv.fallback.counts.items()):
                    yield Observation(n, {**attrs, "reason": reason})

    SPEC["skewless_fallback"].observe(meter, [fallbacks])


__all__ = ["METRICS", "register_metrics"]
