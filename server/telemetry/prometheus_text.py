"""OpenTelemetry metrics data as Prometheus' text exposition format (version 0.0.4), names kept as Triton's.

OpenTelemetry's own Prometheus exporter renames counters (``nv_inference_request_success`` becomes
``nv_inference_request_success_total``, units are appended), which would break every Triton dashboard and
alert. Here Triton's ``nv_*`` names stay exactly as Triton exposes them; our own monotonic sums get the
``_total`` suffix Prometheus' conventions ask for; names already carry their unit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from opentelemetry.sdk.metrics.export import Gauge, Histogram, Metric, MetricsData, Sum

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TRITON_PREFIX = "nv_"


def render(data: MetricsData) -> bytes:
    lines: list[str] = []
    seen: set[str] = set()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name in seen:  # one family per name, even if two readers' scopes repeat it
                    continue
                seen.add(metric.name)
                lines.extend(_family(metric))
    return ("\n".join(lines) + "\n").encode()


def _family(metric: Metric) -> Iterator[str]:
    data = metric.data
    name = metric.name
    if isinstance(data, Histogram):
        kind = "histogram"
    elif isinstance(data, Sum) and data.is_monotonic:
        kind = "counter"
        if not name.startswith(TRITON_PREFIX) and not name.endswith("_total"):
            name += "_total"
    elif isinstance(data, (Sum, Gauge)):
        kind = "gauge"
    else:  # pragma: no cover - the SDK has no other point kinds today
        return
    yield f"# HELP {name} {_escape_help(metric.description or metric.name)}"
    yield f"# TYPE {name} {kind}"
    for point in data.data_points:
        labels = dict(point.attributes or {})
        if kind != "histogram":
            yield f"{name}{_labels(labels)} {_number(point.value)}"
            continue
        cumulative = 0
        for bound, count in zip([*point.explicit_bounds, math.inf], point.bucket_counts, strict=True):
            cumulative += count
            yield f"{name}_bucket{_labels({**labels, 'le': _number(bound)})} {cumulative}"
        yield f"{name}_sum{_labels(labels)} {_number(point.sum)}"
        yield f"{name}_count{_labels(labels)} {point.count}"


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_value(str(v))}"' for k, v in labels.items()) + "}"


def _escape_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _number(v: float | int) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))
