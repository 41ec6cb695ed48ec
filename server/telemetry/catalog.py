"""The metrics reference, rendered from the declarations beside the code that reports each metric.

``metrics_markdown()`` is what docs/reference/metrics.md holds (its marker line names this function), so the
page cannot drift from what /metrics exports: a metric is declared once (telemetry/spec.py's MetricSpec) and
the same declaration creates its instrument.
"""

from __future__ import annotations

from ..alerts.metrics import METRICS as ALERTS
from ..fallback.metrics import METRICS as FALLBACK
from ..lineage.metrics import METRICS as LINEAGE
from ..registry.metrics import METRICS as REGISTRY
from ..shadow.metrics import METRICS as SHADOW
from .aggregates import METRICS as AGGREGATES
from .host import METRICS as HOST
from .metrics import METRICS as CORE
from .prometheus_text import TRITON_PREFIX
from .spec import MetricSpec

# (section title, when its metrics are present, declarations)
SECTIONS: tuple[tuple[str, str, tuple[MetricSpec, ...]], ...] = (
    ("Requests and models", "always (per model version: labels `model`, `version`)", CORE),
    ("Process and GPU", "always; GPU figures where NVML starts (the `gpu` extra)", HOST),
    ("Fallback", "models whose config sets `skewless.fallback`", FALLBACK),
    ("Shadow traffic and canary", "models with a shadow or a canary", SHADOW),
    ("Prediction log, labels and quality", "with `--prediction-log DIR`", LINEAGE),
    ("Registry", "when models are synced from a registry or a URL", REGISTRY),
    ("Alerts", "with `--alerts FILE`", ALERTS),
    ("Windowed aggregates", "models whose features.json lists aggregates (labels `model`, `plan`: the first 12 "
     "hex digits of the plan hash)", AGGREGATES),
)


def exported_name(spec: MetricSpec) -> str:
    """The name /metrics shows: our counters get Prometheus' ``_total`` suffix; Triton's ``nv_*`` names stay."""
    if spec.kind == "counter" and not spec.name.startswith(TRITON_PREFIX) and not spec.name.endswith("_total"):
        return spec.name + "_total"
    return spec.name


def metrics_markdown() -> str:
    """Every metric skewless exports: name, type, labels, unit and meaning, one table per area."""
    lines = ["Every metric on the metrics port's `/metrics` (Prometheus text) and in OTLP exports. Triton's "
             "`nv_*` names, labels and meanings are kept as Triton has them; histograms also give `_bucket`, "
             "`_sum` and `_count` series.", ""]
    for title, when, specs in SECTIONS:
        lines += [f"## {title}", "", f"Present: {when}.", "", "| Metric | Type | Labels | Unit | Meaning |",
                  "|---|---|---|---|---|"]
        for spec in specs:
            labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
            meaning = spec.description.replace("|", "\\|")
            lines.append(f"| `{exported_name(spec)}` | {spec.kind} | {labels} | {spec.unit or '-'} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def all_metrics() -> list[MetricSpec]:
    return [spec for _, _, specs in SECTIONS for spec in specs]


__all__ = ["all_metrics", "exported_name", "metrics_markdown"]
