"""Server metrics: Triton's per-model names, skewless_* extras, process and GPU figures (OpenTelemetry SDK).

Everything is read when collected (a Prometheus scrape, an OTLP export), from what the request path already
counts (models/stats.py, the repository's event counts): observable instruments for counters and gauges, and
histogram points built from the stats' bucket counts and added to each collection (the SDK has no observable
histogram, and recording each request through an instrument costs ~7 us). So a request pays the same
whether or not anyone scrapes, and a slow or absent collector cannot touch it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.export import (
    Histogram as HistogramData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from ..models.repository import ModelRepository
from ..models.stats import TRITON_REASONS, Histogram
from ..models.version import ModelVersion
from .drift import DriftMonitor
from .host import HostMetrics
from .otlp_stop import last_attempt
from .spec import MetricSpec, by_name

log = logging.getLogger(__name__)

SCOPE = InstrumentationScope("skewless")
HISTOGRAM_SCOPE = InstrumentationScope("skewless.histograms")
NS_PER_US = 1000
SHUTDOWN_WAIT_S = 3.0

VERSION = ("model", "version")
# The path's metrics (per model version, from models/stats.py and the repository) and telemetry's own; side
# modules declare theirs beside the code that counts them (shadow/, lineage/, registry/, alerts/, fallback/).
METRICS = (
    MetricSpec("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes",
               VERSION),
    MetricSpec("nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes",
               (*VERSION, "reason")),
    MetricSpec("nv_inference_count", "counter", "Number of inferences performed (a batch of n counts n), of requests that succeeded", VERSION),
    MetricSpec("nv_inference_exec_count", "counter", "Number of model executions performed", VERSION),
    MetricSpec("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds",
               VERSION),
    MetricSpec("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds",
               VERSION),
    MetricSpec("nv_inference_compute_input_duration_us", "counter",
               "Cumulative compute input duration in microseconds", VERSION),
    MetricSpec("nv_inference_compute_infer_duration_us", "counter",
               "Cumulative compute inference duration in microseconds", VERSION),
    MetricSpec("nv_inference_compute_output_duration_us", "counter",
               "Cumulative inference compute output duration in microseconds", VERSION),
    MetricSpec("nv_inference_pending_request_count", "gauge",
               "Instantaneous number of pending requests awaiting execution", VERSION),
    MetricSpec("skewless_queue_depth_rows", "gauge", "Rows waiting in the model's queue now", VERSION),
    MetricSpec("skewless_instance_restarts", "counter",
               "Model instances restarted by the watchdog (a batch ran past skewless.instance_timeout_s)", VERSION),
    MetricSpec("skewless_requests_in_flight", "gauge", "Requests received and not yet answered", VERSION),
    MetricSpec("skewless_requests_rejected", "counter", "Requests refused at arrival: the queue was full", VERSION),
    MetricSpec("skewless_requests_shed", "counter",
               "Requests dropped from the queue by its queue policy's timeout, uncomputed", VERSION),
    MetricSpec("skewless_requests_deadline_dropped", "counter",
               "Requests whose client deadline passed before they were answered (queued ones: dropped uncomputed)", VERSION),
    MetricSpec("skewless_requests_cancelled", "counter", "Requests cancelled by the client before they were answered",
               VERSION),
    MetricSpec("skewless_feature_log_written_rows", "counter", "Rows the served-feature log wrote", VERSION),
    MetricSpec("skewless_feature_log_dropped_rows", "counter", "Rows the served-feature log dropped (queue full)",
               VERSION),
    MetricSpec("skewless_model_events", "counter",
               "Model management events: load, load_failed, swap, unload; with a registry also rollback and "
               "rejected_{incomplete,corrupt,changed,validation}", ("model", "event")),
    MetricSpec("skewless_request_duration_seconds", "histogram", "Latency of successful requests, received to reply",
               VERSION, "s"),
    MetricSpec("skewless_queue_duration_seconds", "histogram", "Time successful requests waited in the queue",
               VERSION, "s"),
    MetricSpec("skewless_compute_duration_seconds", "histogram",
               "Time a batch took to compute (input, infer, output)", VERSION, "s"),
    MetricSpec("skewless_batch_size", "histogram", "Rows per model execution", VERSION, "{row}"),
    MetricSpec("skewless_model_load_duration_seconds", "histogram", "Time to load and warm up a model version",
               unit="s"),
    MetricSpec("skewless_feature_drift_psi", "gauge",
               "PSI of a served feature against features.json's reference, over the sliding window (0.1 warn, "
               "0.25 alert by default)", (*VERSION, "feature")),
    MetricSpec("skewless_prediction_drift_psi", "gauge", "PSI of an output against its reference distribution",
               (*VERSION, "output")),
    MetricSpec("skewless_drift_reference_rows", "gauge",
               "Rows the prediction-drift reference holds, by source: file (shipped with the version, e.g. "
               "drift_reference.json) or learnt (the first sampled outputs served; the log states the window)",
               (*VERSION, "source")),
    MetricSpec("skewless_drift_dropped_batches", "counter",
               "Sampled batches the drift monitor dropped (its queue full)", VERSION),
    MetricSpec("skewless_trace_spans", "counter",
               "Trace spans by outcome: exported, export_failed (collector down or refusing), dropped (export "
               "queue full: a slow or absent collector)", ("outcome",)),
)
SPEC = by_name(METRICS)


def _versions(repository: ModelRepository) -> Iterator[tuple[dict[str, str], ModelVersion]]:
    for name, model in list(repository.models.items()):
        for v, mv in list(model.serving.items()):
            yield {"model": name, "version": str(v)}, mv


class ServerMetrics:
    """The server's meter provider and its readers: one pulled by /metrics, an OTLP one when configured."""

    def __init__(self, repository: ModelRepository, extra_readers: Iterable[MetricReader] = ()):
        self.repository = repository
        self.host = HostMetrics()
        self.started_ns = time.time_ns()
        self._pull = _PullReader()
        readers: list[MetricReader] = [self._pull, *extra_readers]
        otlp = otlp_reader(self.with_histograms)
        if otlp is not None:
            readers.append(otlp)
        self.resource = Resource.create({"service.name": "skewless"})
        self._otlp = otlp
        # shutdown_on_exit off: the stop shuts the provider down (shutdown() below); an exit-time second call
        # would only log "shutdown can only be called once".
        self.provider = MeterProvider(metric_readers=readers, resource=self.resource, shutdown_on_exit=False)
        # Side modules (shadow, lineage, registry, alerts, fallback) register their own instruments on this
        # meter at app wiring, each reading its own counters; this module reports the path's and its own.
        self.meter = self.provider.get_meter("skewless")
        # Side modules' histograms: each source gives (spec, [(labels, Histogram, scale), ...]) at collection.
        self.histogram_sources: list[Callable[[], Iterable[tuple[MetricSpec, list[tuple[dict, Any, float]]]]]] = []
        self._register(self.meter)

    def versions(self) -> Iterator[tuple[dict[str, str], ModelVersion]]:
        """The serving versions now, with their (model, version) labels."""
        return _versions(self.repository)

    def add_tracer(self, tracer: Any) -> None:
        """Span export figures (telemetry/tracing.py's RequestTracer): exported, failed, dropped (queue full)."""

        def spans(_options: CallbackOptions) -> Iterator[Observation]:
            yield Observation(tracer.exported_spans, {"outcome": "exported"})
            yield Observation(tracer.failed_spans, {"outcome": "export_failed"})
            yield Observation(tracer.dropped_spans, {"outcome": "dropped"})

        SPEC["skewless_trace_spans"].observe(self.meter, [spans])

    # -- collection ----------------------------------------------------------------------------------------
    def collect(self) -> MetricsData:
        """Everything, now: the SDK's instruments plus the histograms (what /metrics renders)."""
        return self.with_histograms(self._pull.pull())

    def with_histograms(self, data: MetricsData | None) -> MetricsData:
        now = time.time_ns()
        extra = ScopeMetrics(HISTOGRAM_SCOPE, list(self._histograms(now)), schema_url="")
        if data is None or not data.resource_metrics:
            return MetricsData([ResourceMetrics(self.resource, [extra], schema_url="")])
        first, *rest = data.resource_metrics
        first = ResourceMetrics(first.resource, [*first.scope_metrics, extra], first.schema_url)
        return MetricsData([first, *rest])

    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Flush and stop the exporters for at most ``wait_s``: the OTLP exporter's final export retries with
        backoff against a dead collector (~10 s measured), which must not hold up the server's stop."""
        if self._otlp is not None:  # the final export is one attempt: no retry backoff against a dead collector
            last_attempt(self._otlp.exporter.inner)

        def stop() -> None:
            try:
                self.provider.shutdown()
            except Exception:  # an exporter that cannot flush at exit must not fail the stop
                log.warning("metrics shutdown failed", exc_info=True)

        t = threading.Thread(target=stop, name="metrics-shutdown", daemon=True)
        t.start()
        t.join(wait_s)
        if t.is_alive():
            log.warning("metrics export did not finish within %.0fs at stop: the last export is abandoned", wait_s)

    # -- drift: monitors on the batch observer hook, PSI as gauges ------------------------------------------
    def attach_drift(self, mv: ModelVersion) -> None:
        """The repository's version hook: give a loading version its drift monitor (bad config fails the load)."""
        mv.batch_observer = DriftMonitor.for_version(mv)

    def _register_drift(self, meter) -> None:
        def monitors() -> Iterator[tuple[dict[str, str], DriftMonitor]]:
            for attrs, mv in _versions(self.repository):
                if isinstance(mv.batch_observer, DriftMonitor):
                    yield attrs, mv.batch_observer

        def psi(kind: str, label: str):
            def callback(_options: CallbackOptions) -> Iterator[Observation]:
                for attrs, monitor in monitors():
                    values = monitor.feature_psi() if kind == "feature" else monitor.prediction_psi()
                    for name, value in values.items():
                        yield Observation(value, {**attrs, label: name})
            return [callback]

        def dropped(_options: CallbackOptions) -> Iterator[Observation]:
            for attrs, monitor in monitors():
                yield Observation(monitor.dropped_batches, attrs)

        SPEC["skewless_feature_drift_psi"].observe(meter, psi("feature", "feature"))
        SPEC["skewless_prediction_drift_psi"].observe(meter, psi("prediction", "output"))
        SPEC["skewless_drift_dropped_batches"].observe(meter, [dropped])

        def reference_rows(_options: CallbackOptions) -> Iterator[Observation]:
            for attrs, monitor in monitors():
                if monitor.reference_source is not None:
                    source, rows = monitor.reference_source
                    yield Observation(rows, {**attrs, "source": source})

        SPEC["skewless_drift_reference_rows"].observe(meter, [reference_rows])

    # -- histograms from the stats' bucket counts -----------------------------------------------------------
    def _histograms(self, now: int) -> Iterator[Metric]:
        per_version = list(_versions(self.repository))
        for name, pick, scale in (
            ("skewless_request_duration_seconds", lambda s: s.request_hist, 1e-9),
            ("skewless_queue_duration_seconds", lambda s: s.queue_hist, 1e-9),
            ("skewless_compute_duration_seconds", lambda s: s.compute_hist, 1e-9),
            ("skewless_batch_size", lambda s: s.batch_hist, 1),
        ):
            points = [self._point(attrs, pick(mv.stats), scale, now) for attrs, mv in per_version]
            yield _histogram_metric(SPEC[name], points)
        load = self.repository.load_seconds
        yield _histogram_metric(SPEC["skewless_model_load_duration_seconds"], [self._point({}, load, 1, now)])
        for source in self.histogram_sources:
            for spec, series in source():
                yield _histogram_metric(spec, [self._point(attrs, h, scale, now) for attrs, h, scale in series])

    def _point(self, attrs: dict[str, str], h: Histogram, scale: float, now: int) -> HistogramDataPoint:
        counts = list(h.counts)
        return HistogramDataPoint(
            attributes=attrs, start_time_unix_nano=self.started_ns, time_unix_nano=now, count=sum(counts),
            sum=h.sum * scale, bucket_counts=counts, explicit_bounds=[b * scale for b in h.bounds],
            min=float("nan"), max=float("nan"))

    # -- observable counters and gauges ---------------------------------------------------------------------
    def _register(self, meter) -> None:
        repo = self.repository

        def per_version(value: Callable[[ModelVersion], float]):
            def callback(_options: CallbackOptions) -> Iterator[Observation]:
                for attrs, mv in _versions(repo):
                    yield Observation(value(mv), attrs)
            return [callback]

        # Triton's names, labels and meanings (durations are cumulative microseconds), so existing
        # dashboards and alerts work unchanged; the values are ModelStatistics' own.
        triton: list[tuple[str, Callable[[ModelVersion], float]]] = [
            ("nv_inference_request_success", lambda mv: mv.stats.success.count),
            ("nv_inference_count", lambda mv: mv.stats.inference_count),
            ("nv_inference_exec_count", lambda mv: mv.stats.execution_count),
            ("nv_inference_request_duration_us", lambda mv: mv.stats.success.ns // NS_PER_US),
            ("nv_inference_queue_duration_us", lambda mv: mv.stats.queue.ns // NS_PER_US),
            ("nv_inference_compute_input_duration_us", lambda mv: mv.stats.compute_input.ns // NS_PER_US),
            ("nv_inference_compute_infer_duration_us", lambda mv: mv.stats.compute_infer.ns // NS_PER_US),
            ("nv_inference_compute_output_duration_us", lambda mv: mv.stats.compute_output.ns // NS_PER_US),
        ]
        for name, value in triton:
            SPEC[name].observe(meter, per_version(value))

        def failures(_options: CallbackOptions) -> Iterator[Observation]:
            for attrs, mv in _versions(repo):
                by_reason = dict.fromkeys(("REJECTED", "CANCELED", "BACKEND", "OTHER"), 0)
                for reason, n in mv.stats.failures.items():
                    by_reason[TRITON_REASONS.get(reason, "OTHER")] += n
                for reason, n in by_reason.items():
                    yield Observation(n, {**attrs, "reason": reason})

        SPEC["nv_inference_request_failure"].observe(meter, [failures])
        SPEC["nv_inference_pending_request_count"].observe(meter, per_version(lambda mv: mv.scheduler.queued()[0]))

        # What Triton lacks.
        SPEC["skewless_queue_depth_rows"].observe(meter, per_version(lambda mv: mv.scheduler.queued()[1]))
        SPEC["skewless_instance_restarts"].observe(meter, per_version(lambda mv: mv.runtime.restarts))
        SPEC["skewless_requests_in_flight"].observe(meter, per_version(lambda mv: mv.in_flight))
        for reason in ("rejected", "shed", "deadline_dropped", "cancelled"):
            key = "deadline" if reason == "deadline_dropped" else reason
            SPEC[f"skewless_requests_{reason}"].observe(
                meter, per_version(lambda mv, k=key: mv.stats.failures.get(k, 0)))

        def feature_log(attr: str):
            def callback(_options: CallbackOptions) -> Iterator[Observation]:
                for attrs, mv in _versions(repo):
                    logger = mv.features.logger if mv.features is not None else None
                    if logger is not None:
                        yield Observation(getattr(logger, attr), attrs)
            return [callback]

        SPEC["skewless_feature_log_written_rows"].observe(meter, feature_log("logged_rows"))
        SPEC["skewless_feature_log_dropped_rows"].observe(meter, feature_log("dropped_rows"))

        def events(_options: CallbackOptions) -> Iterator[Observation]:
            for (model, event), n in list(repo.events.items()):
                yield Observation(n, {"model": model, "event": event})

        SPEC["skewless_model_events"].observe(meter, [events])
        self._register_drift(meter)
        self.host.register(meter)


def _histogram_metric(spec: MetricSpec, points: list[HistogramDataPoint]) -> Metric:
    return Metric(name=spec.name, description=spec.description, unit=spec.unit,
                  data=HistogramData(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE))


class _PullReader(MetricReader):
    """Collects on demand (a scrape) and hands back what the SDK collected."""

    def __init__(self) -> None:
        super().__init__(preferred_temporality={})  # the defaults: cumulative everywhere
        self._latest: MetricsData | None = None

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self._latest = metrics_data

    def pull(self) -> MetricsData | None:
        self._latest = None
        self.collect()
        return self._latest

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


class _WithHistograms(MetricExporter):
    """An OTLP exporter whose exports also carry the histograms built from the stats."""

    def __init__(self, inner: MetricExporter, add: Callable[[MetricsData], MetricsData]):
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self.inner = inner
        self.add = add

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return self.inner.export(self.add(metrics_data), timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def otlp_reader(add: Callable[[MetricsData], MetricsData],
                environ: dict[str, str] | None = None) -> _OtlpReader | None:
    """OTLP export when the standard variables ask for it: OTEL_METRICS_EXPORTER lists ``otlp``, or an OTLP
    endpoint is set and OTEL_METRICS_EXPORTER does not say otherwise. The protocol (``grpc`` or
    ``http/protobuf``), endpoint, headers and interval (OTEL_METRIC_EXPORT_INTERVAL) are the SDK's own
    variables; the export runs on the SDK's thread, never the event loop."""
    env = os.environ if environ is None else environ
    wanted = [e.strip() for e in env.get("OTEL_METRICS_EXPORTER", "").split(",") if e.strip()]
    endpoint = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if "otlp" not in wanted and not (endpoint and not wanted):
        return None
    protocol = (env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc").strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    else:
        raise ValueError(f"OTLP protocol '{protocol}' is not supported: use grpc or http/protobuf")
    return _OtlpReader(_WithHistograms(OTLPMetricExporter(), add))


class _OtlpReader(PeriodicExportingMetricReader):
    """The SDK's periodic reader, holding on to its exporter (the stop makes its final export one attempt)."""

    def __init__(self, exporter: _WithHistograms):
        super().__init__(exporter)
        self.exporter = exporter


__all__ = ["ServerMetrics", "otlp_reader"]
