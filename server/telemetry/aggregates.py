"""Windowed-aggregate state metrics (issue 29): declared here, registered with the meter the server gives, read
from each live state's ``stats()`` and the server's own counters at each collection (never on the request
path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from ..features.aggregate_states import AggregateStates, ModelAggregates
from .spec import MetricSpec, by_name

LABELS = ("model", "plan")
METRICS = (
    MetricSpec("skewless_aggregate_keys", "gauge", "Keys the aggregate state holds (summed over its groups)", LABELS),
    MetricSpec("skewless_aggregate_buckets", "gauge", "Time buckets the aggregate state holds", LABELS),
    MetricSpec("skewless_aggregate_state_bytes", "gauge", "Memory the aggregate state holds", LABELS, "By"),
    MetricSpec("skewless_aggregate_events", "counter",
               "Events the aggregate state took, by outcome: recorded (scored rows and ingested events), late "
               "(older than the retention of their key or group when they arrived: dropped)", (*LABELS, "outcome")),
    MetricSpec("skewless_aggregate_keys_evicted", "counter",
               "Keys evicted from the aggregate state to stay within --aggregate-max-keys", LABELS),
    MetricSpec("skewless_aggregate_ingested_events", "counter",
               "Events recorded through the ingest RPC (Events/Ingest, POST .../events)", LABELS),
    MetricSpec("skewless_aggregate_ingest_lag_seconds", "gauge",
               "Now minus the newest event time ingested (event times taken as Unix time in the spec's time unit)",
               LABELS, "s"),
    MetricSpec("skewless_aggregate_state_saves", "counter",
               "Saves of the aggregate state to --aggregate-state-dir, by outcome: ok, failed", (*LABELS, "outcome")),
    MetricSpec("skewless_aggregate_store_round_trip_seconds", "histogram",
               "Round trips to the aggregate store (--aggregate-store Redis): one MULTI/EXEC per batch or ingest",
               LABELS, "s"),
    MetricSpec("skewless_aggregate_store_errors", "counter",
               "Batches and ingests refused because the aggregate store (Redis) failed or could not be reached",
               LABELS),
)
SPEC = by_name(METRICS)


def register_metrics(meter: Any, states: AggregateStates) -> None:
    """Register the aggregate instruments, read from ``states`` at each collection."""

    def each(value: Callable[[ModelAggregates, dict], Iterator[tuple[float, dict]]]):
        def callback(_options: CallbackOptions) -> Iterator[Observation]:
            for e in states.entries():
                attrs = {"model": e.model, "plan": e.plan_hash[:12]}
                stats = e.state.stats()
                for v, extra in value(e, stats):
                    if v is not None:
                        yield Observation(v, {**attrs, **extra})
        return [callback]

    def stat(key: str):
        return each(lambda e, s: [(s.get(key, 0), {})])

    SPEC["skewless_aggregate_keys"].observe(meter, stat("keys"))
    SPEC["skewless_aggregate_buckets"].observe(meter, stat("buckets"))
    SPEC["skewless_aggregate_state_bytes"].observe(meter, stat("bytes"))
    SPEC["skewless_aggregate_keys_evicted"].observe(meter, stat("keys_evicted"))
    SPEC["skewless_aggregate_events"].observe(meter, each(lambda e, s: [
        (s.get("events_recorded", 0), {"outcome": "recorded"}), (s.get("events_late", 0), {"outcome": "late"})]))
    SPEC["skewless_aggregate_ingested_events"].observe(meter, each(lambda e, s: [(e.ingested_rows, {})]))
    SPEC["skewless_aggregate_ingest_lag_seconds"].observe(meter, each(lambda e, s: [(e.ingest_lag_s(), {})]))
    SPEC["skewless_aggregate_state_saves"].observe(meter, each(lambda e, s: [
        (e.saves, {"outcome": "ok"}), (e.save_errors, {"outcome": "failed"})]))
    SPEC["skewless_aggregate_store_errors"].observe(meter, each(
        lambda e, s: [(s.get("store_errors"), {})]))  # None (skipped) for in-process state


def store_histograms(states: AggregateStates) -> Callable[[], Iterator[tuple[MetricSpec, list]]]:
    """The Redis round-trip histogram of each model's store, for ``ServerMetrics.histogram_sources``."""

    def source() -> Iterator[tuple[MetricSpec, list]]:
        series = [({"model": e.model, "plan": e.plan_hash[:12]}, e.state.round_trip, 1.0)
                  for e in states.entries() if hasattr(e.state, "round_trip")]
        if series:
            yield SPEC["skewless_aggregate_store_round_trip_seconds"], series
    return source


__all__ = ["METRICS", "register_metrics", "store_histograms"]
