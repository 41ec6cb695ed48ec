"""Prediction log, label join and rolling quality metrics: declared here, registered with the meter the
server gives, read from the lineage service's own counters at each collection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation

from ..telemetry.spec import MetricSpec, by_name

if TYPE_CHECKING:
    from .service import Lineage

METRICS = (
    MetricSpec("skewless_prediction_log_dropped", "counter", "Requests the prediction log dropped: its queue was full"),
    MetricSpec("skewless_prediction_log_rows", "counter", "Rows written to the prediction log"),
    MetricSpec("skewless_prediction_log_queue_depth", "gauge", "Requests waiting for the prediction log's writer"),
    MetricSpec("skewless_labels_joined", "counter", "Submitted labels joined with their prediction for the first time"),
    MetricSpec("skewless_labels", "counter",
               "Submitted labels by outcome: joined (first time), duplicate (same value again: no change), corrected "
               "(a new value replaced the old), pending (prediction not logged yet), refused (did not fit the "
               "request's rows or the model's task)", ("outcome",)),
    MetricSpec("skewless_labels_pending", "gauge", "Labels waiting for a prediction not logged yet"),
    MetricSpec("skewless_labels_expired", "counter", "Pending labels dropped after their TTL without a prediction"),
    MetricSpec("skewless_labels_overflow", "counter",
               "Labels neither joined nor kept: the pending buffer was full"),
    MetricSpec("skewless_label_coverage", "gauge", "Share of logged prediction rows that have a label (at most 1)",
               ("model", "version")),
    MetricSpec("skewless_model_quality", "gauge",
               "Rolling quality per model version and window (metric: accuracy, auc, log_loss, ece, mae, rmse, n, "
               "delay_p50_s/p90/p99)", ("model", "version", "window", "metric")),
)
SPEC = by_name(METRICS)


def register_metrics(meter: Any, lineage: Lineage) -> None:
    """Register the lineage instruments, read from ``lineage`` at each collection."""
    plog, join, quality = lineage.log, lineage.join, lineage.quality

    def one(value) -> list:
        return [lambda _o: [Observation(value())]]

    SPEC["skewless_prediction_log_dropped"].observe(meter, one(lambda: plog.dropped))
    SPEC["skewless_prediction_log_rows"].observe(meter, one(lambda: plog.written_rows))
    SPEC["skewless_prediction_log_queue_depth"].observe(meter, one(lambda: len(plog.queue)))
    SPEC["skewless_labels_joined"].observe(meter, one(lambda: join.joined))
    SPEC["skewless_labels_pending"].observe(meter, one(lambda: join.pending_count))
    SPEC["skewless_labels_expired"].observe(meter, one(lambda: join.expired))
    SPEC["skewless_labels_overflow"].observe(meter, one(lambda: join.overflow))

    def outcomes(_options: CallbackOptions) -> Iterator[Observation]:
        for outcome, n in list(join.outcomes.items()):
            yield Observation(n, {"outcome": outcome})

    SPEC["skewless_labels"].observe(meter, [outcomes])

    def coverage(_options: CallbackOptions) -> Iterator[Observation]:
        for (model, version), share in join.coverage().items():
            yield Observation(share, {"model": model, "version": str(version)})

    SPEC["skewless_label_coverage"].observe(meter, [coverage])

    def figures(_options: CallbackOptions) -> Iterator[Observation]:
        for model in list(quality.tasks):
            for (version, window), fig in quality.figures(model).items():
                for metric, value in fig.items():
                    yield Observation(value, {"model": model, "version": str(version),
                                              "window": f"{window:g}s", "metric": metric})

    SPEC["skewless_model_quality"].observe(meter, [figures])


__all__ = ["METRICS", "register_metrics"]
