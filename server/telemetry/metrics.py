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

log = logging.getLogger(__name__)

SCOPE = InstrumentationScope("skewless")
HISTOGRAM_SCOPE = InstrumentationScope("skewless.histograms")
NS_PER_US = 1000
SHUTDOWN_WAIT_S = 3.0


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
        self.provider = MeterProvider(metric_readers=readers, resource=self.resource)
        self._register(self.provider.get_meter("skewless"))

    def add_tracer(self, tracer: Any) -> None:
        """Span export figures (telemetry/tracing.py's RequestTracer): exported, failed, dropped (queue full)."""

        def spans(_options: CallbackOptions) -> Iterator[Observation]:
            yield Observation(tracer.exported_spans, {"outcome": "exported"})
            yield Observation(tracer.failed_spans, {"outcome": "export_failed"})
            yield Observation(tracer.dropped_spans, {"outcome": "dropped"})

        self.provider.get_meter("skewless").create_observable_counter(
            "skewless_trace_spans", [spans],
            description="Trace spans by outcome: exported, export_failed (collector down or refusing), dropped "
                        "(export queue full: a slow or absent collector)")

    def add_registry(self, repo: Any) -> None:
        """Registry sync figures (registry/sync.py's RegistryRepository): store health, cache disk use, pins.
        Rejected versions, rollbacks and swaps are skewless_model_events."""
        meter = self.provider.get_meter("skewless")

        def reachable(_options: CallbackOptions) -> Iterator[Observation]:
            yield Observation(1 if repo.health.reachable else 0)

        def failures(_options: CallbackOptions) -> Iterator[Observation]:
            yield Observation(repo.health.failures)

        def cache_bytes(_options: CallbackOptions) -> Iterator[Observation]:
            yield Observation(repo.cache.disk_bytes())

        def pinned(_options: CallbackOptions) -> Iterator[Observation]:
            for name in list(repo.sync_state):
                yield Observation(1 if repo.pinned(name) else 0, {"model": name})

        def aliases(_options: CallbackOptions) -> Iterator[Observation]:
            for name, st in list(repo.sync_state.items()):
                for alias, version in sorted(st.aliases.items()):
                    yield Observation(version, {"model": name, "alias": alias})

        meter.create_observable_gauge("skewless_registry_alias_version", [aliases],
                                      description="The version each registry alias names (MLflow: champion, "
                                                  "challenger), as of the last poll")
        meter.create_observable_gauge("skewless_registry_reachable", [reachable],
                                      description="1 while the model registry answers, 0 during a failure episode")
        meter.create_observable_counter("skewless_registry_failures", [failures],
                                        description="Registry failure episodes (unreachable, slow or erroring), "
                                                    "counted once each however many polls they last")
        meter.create_observable_gauge("skewless_registry_cache_bytes", [cache_bytes], unit="By",
                                      description="Disk used by the registry's local version cache")
        meter.create_observable_gauge("skewless_model_pinned", [pinned],
                                      description="1 while a rollback pins the model (until skewless unpin)")

    def add_traffic(self, manager: Any) -> None:
        """Shadow and canary figures (shadow/traffic.py's TrafficManager), read from the counters it keeps."""
        from ..shadow.compare import quantiles

        meter = self.provider.get_meter("skewless")

        def pairs() -> Iterator[tuple[dict[str, str], Any]]:
            for traffic in list(manager.models.values()):
                shadow = traffic.shadow
                if shadow is not None:
                    for p in list(shadow.pairs.values()):
                        yield {"primary": p.primary, "challenger": p.challenger}, p

        def counter(attr: str):
            def callback(_options: CallbackOptions) -> Iterator[Observation]:
                for attrs, p in pairs():
                    yield Observation(getattr(p, attr), attrs)
            return [callback]

        for attr, desc in (("mirrored", "Requests the challenger ran (compared or failed)"),
                           ("shed", "Mirrored requests dropped before running: queue full, too old or server busy"),
                           ("errors", "Mirrored requests the challenger failed (never seen by the caller)"),
                           ("divergent", "Mirrored requests whose outputs differ by more than the tolerance")):
            meter.create_observable_counter(f"skewless_shadow_{attr}_requests", counter(attr), description=desc)

        def agreement(_options: CallbackOptions) -> Iterator[Observation]:
            for attrs, p in pairs():
                if p.compared:
                    yield Observation(p.agreement, attrs)

        meter.create_observable_gauge("skewless_shadow_agreement", [agreement],
                                      description="Share of compared requests on which challenger and primary "
                                                  "agree (argmax, 0.5 threshold, or equality)")

        def diff(kind: str):
            def callback(_options: CallbackOptions) -> Iterator[Observation]:
                for attrs, p in pairs():
                    for output, values in list(getattr(p, kind).items()):
                        for q, v in quantiles(values).items():
                            yield Observation(v, {**attrs, "output": output, "quantile": str(q)})
            return [callback]

        meter.create_observable_gauge("skewless_shadow_abs_difference", diff("abs_diff"),
                                      description="Quantiles of |primary - challenger| per request (its largest), "
                                                  "over the recent mirrored requests")
        meter.create_observable_gauge("skewless_shadow_rel_difference", diff("rel_diff"),
                                      description="Quantiles of the relative difference per request")

        def latency(_options: CallbackOptions) -> Iterator[Observation]:
            for attrs, p in pairs():
                for q, v in quantiles(p.latency_s).items():
                    yield Observation(v, {**attrs, "quantile": str(q)})

        meter.create_observable_gauge("skewless_shadow_challenger_latency_seconds", [latency], unit="s",
                                      description="Quantiles of the challenger's compute time per mirrored batch")

        def queue_depth(_options: CallbackOptions) -> Iterator[Observation]:
            yield Observation(len(manager.worker.queue))

        meter.create_observable_gauge("skewless_shadow_queue_depth", [queue_depth],
                                      description="Mirrored requests waiting for idle primaries")

        def canaries():
            for traffic in list(manager.models.values()):
                if traffic.canary is not None:
                    yield traffic.canary

        def arms(_options: CallbackOptions) -> Iterator[Observation]:
            for c in canaries():
                for arm_name, arm in c.arms.items():
                    version = c.candidate if arm_name == "candidate" else c.stable
                    attrs = {"model": c.model, "arm": arm_name, "version": str(version)}
                    yield Observation(arm.served - arm.failed, {**attrs, "outcome": "success"})
                    yield Observation(arm.failed, {**attrs, "outcome": "failure"})

        def weight(_options: CallbackOptions) -> Iterator[Observation]:
            for c in canaries():
                yield Observation(c.weight, {"model": c.model, "candidate": str(c.candidate), "state": c.state})

        def rollbacks(_options: CallbackOptions) -> Iterator[Observation]:
            for c in canaries():
                yield Observation(c.rollbacks, {"model": c.model, "candidate": str(c.candidate)})

        meter.create_observable_counter("skewless_canary_requests", [arms],
                                        description="Requests served per canary arm and outcome")
        meter.create_observable_gauge("skewless_canary_weight", [weight],
                                      description="The candidate's share of unversioned requests now (0 after a "
                                                  "rollback, 1 once promoted)")
        meter.create_observable_counter("skewless_canary_rollbacks", [rollbacks],
                                        description="Automatic or commanded rollbacks of a canary to 0%")

    def add_lineage(self, lineage: Any) -> None:
        """Prediction log, label join and rolling quality (lineage/service.py's Lineage)."""
        meter = self.provider.get_meter("skewless")
        plog, join, quality = lineage.log, lineage.join, lineage.quality

        def one(value) -> list:
            return [lambda _o: [Observation(value())]]

        meter.create_observable_counter("skewless_prediction_log_dropped", one(lambda: plog.dropped),
                                        description="Requests the prediction log dropped: its queue was full")
        meter.create_observable_counter("skewless_prediction_log_rows", one(lambda: plog.written_rows),
                                        description="Rows written to the prediction log")
        meter.create_observable_gauge("skewless_prediction_log_queue_depth", one(lambda: len(plog.queue)),
                                      description="Requests waiting for the prediction log's writer")
        meter.create_observable_counter("skewless_labels_joined", one(lambda: join.joined),
                                        description="Submitted labels joined with their prediction")
        meter.create_observable_gauge("skewless_labels_pending", one(lambda: join.pending_count),
                                      description="Labels waiting for a prediction not logged yet")
        meter.create_observable_counter("skewless_labels_expired", one(lambda: join.expired),
                                        description="Pending labels dropped after their TTL without a prediction")
        meter.create_observable_counter("skewless_labels_overflow", one(lambda: join.overflow),
                                        description="Labels neither joined nor kept: the pending buffer was full")

        def coverage(_options: CallbackOptions) -> Iterator[Observation]:
            for (model, version), n in list(join.logged_rows.items()):
                yield Observation(join.joined_rows.get((model, version), 0) / n if n else 0.0,
                                  {"model": model, "version": str(version)})

        meter.create_observable_gauge("skewless_label_coverage", [coverage],
                                      description="Share of logged prediction rows that have a label")

        def figures(_options: CallbackOptions) -> Iterator[Observation]:
            for model in list(quality.tasks):
                for (version, window), fig in quality.figures(model).items():
                    for metric, value in fig.items():
                        yield Observation(value, {"model": model, "version": str(version),
                                                  "window": f"{window:g}s", "metric": metric})

        meter.create_observable_gauge("skewless_model_quality", [figures],
                                      description="Rolling quality per model version and window (metric: accuracy, "
                                                  "auc, log_loss, ece, mae, rmse, n, delay_p50_s/p90/p99)")

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

    def add_alerts(self, hub) -> None:
        """skewless_alerts_total{hook,kind,outcome}: every alert hook call, and alerts dropped (queue full)."""
        def calls(_options: CallbackOptions) -> Iterator[Observation]:
            for (hook, kind, outcome), n in list(hub.counts.items()):
                yield Observation(n, {"hook": hook, "kind": kind, "outcome": outcome})
            if hub.dropped:
                yield Observation(hub.dropped, {"hook": "", "kind": "", "outcome": "dropped"})

        self.provider.get_meter("skewless").create_observable_counter(
            "skewless_alerts", [calls], description="Alert hook calls by hook, alert kind and outcome (ok, "
                                                    "ok_after_retry, failed, timeout; dropped: queue full)")

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

        meter.create_observable_gauge("skewless_feature_drift_psi", psi("feature", "feature"),
                                      description="PSI of a served feature against features.json's reference, "
                                                  "over the sliding window (0.1 warn, 0.25 alert by default)")
        meter.create_observable_gauge("skewless_prediction_drift_psi", psi("prediction", "output"),
                                      description="PSI of an output against its reference distribution")
        meter.create_observable_counter("skewless_drift_dropped_batches", [dropped],
                                        description="Sampled batches the drift monitor dropped (its queue full)")

    # -- histograms from the stats' bucket counts -----------------------------------------------------------
    def _histograms(self, now: int) -> Iterator[Metric]:
        per_version = list(_versions(self.repository))
        for name, desc, unit, pick, scale in (
            ("skewless_request_duration_seconds", "Latency of successful requests, received to reply", "s",
             lambda s: s.request_hist, 1e-9),
            ("skewless_queue_duration_seconds", "Time successful requests waited in the queue", "s",
             lambda s: s.queue_hist, 1e-9),
            ("skewless_compute_duration_seconds", "Time a batch took to compute (input, infer, output)", "s",
             lambda s: s.compute_hist, 1e-9),
            ("skewless_batch_size", "Rows per model execution", "{row}", lambda s: s.batch_hist, 1),
        ):
            points = [self._point(attrs, pick(mv.stats), scale, now) for attrs, mv in per_version]
            yield _histogram_metric(name, desc, unit, points)
        load = self.repository.load_seconds
        yield _histogram_metric("skewless_model_load_duration_seconds", "Time to load and warm up a model version",
                                "s", [self._point({}, load, 1, now)])

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
        triton: list[tuple[str, str, Callable[[ModelVersion], float]]] = [
            ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
             lambda mv: mv.stats.success.count),
            ("nv_inference_count", "Number of inferences performed (a batch of n counts n)",
             lambda mv: mv.stats.inference_count),
            ("nv_inference_exec_count", "Number of model executions performed",
             lambda mv: mv.stats.execution_count),
            ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
             lambda mv: mv.stats.success.ns // NS_PER_US),
            ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
             lambda mv: mv.stats.queue.ns // NS_PER_US),
            ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
             lambda mv: mv.stats.compute_input.ns // NS_PER_US),
            ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
             lambda mv: mv.stats.compute_infer.ns // NS_PER_US),
            ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
             lambda mv: mv.stats.compute_output.ns // NS_PER_US),
        ]
        for name, desc, value in triton:
            meter.create_observable_counter(name, per_version(value), description=desc)

        def failures(_options: CallbackOptions) -> Iterator[Observation]:
            for attrs, mv in _versions(repo):
                by_reason = dict.fromkeys(("REJECTED", "CANCELED", "BACKEND", "OTHER"), 0)
                for reason, n in mv.stats.failures.items():
                    by_reason[TRITON_REASONS.get(reason, "OTHER")] += n
                for reason, n in by_reason.items():
                    yield Observation(n, {**attrs, "reason": reason})

        meter.create_observable_counter("nv_inference_request_failure", [failures],
                                        description="Number of failed inference requests, all batch sizes")
        meter.create_observable_gauge("nv_inference_pending_request_count",
                                      per_version(lambda mv: mv.scheduler.queued()[0]),
                                      description="Instantaneous number of pending requests awaiting execution")

        # What Triton lacks.
        meter.create_observable_gauge("skewless_queue_depth_rows", per_version(lambda mv: mv.scheduler.queued()[1]),
                                      description="Rows waiting in the model's queue now")
        meter.create_observable_counter("skewless_instance_restarts", per_version(lambda mv: mv.runtime.restarts),
                                        description="Model instances restarted by the watchdog (a batch ran "
                                                    "past skewless.instance_timeout_s)")
        meter.create_observable_gauge("skewless_requests_in_flight", per_version(lambda mv: mv.in_flight),
                                      description="Requests received and not yet answered")
        for reason, desc in (("rejected", "refused at arrival: the queue was full"),
                             ("shed", "dropped from the queue by its queue policy's timeout, uncomputed"),
                             ("deadline_dropped", "whose client deadline passed in the queue, uncomputed"),
                             ("cancelled", "cancelled by the client before they were answered")):
            key = "deadline" if reason == "deadline_dropped" else reason
            meter.create_observable_counter(
                f"skewless_requests_{reason}", per_version(lambda mv, k=key: mv.stats.failures.get(k, 0)),
                description=f"Requests {desc}")

        def feature_log(attr: str):
            def callback(_options: CallbackOptions) -> Iterator[Observation]:
                for attrs, mv in _versions(repo):
                    logger = mv.features.logger if mv.features is not None else None
                    if logger is not None:
                        yield Observation(getattr(logger, attr), attrs)
            return [callback]

        meter.create_observable_counter("skewless_feature_log_written_rows", feature_log("logged_rows"),
                                        description="Rows the served-feature log wrote")
        meter.create_observable_counter("skewless_feature_log_dropped_rows", feature_log("dropped_rows"),
                                        description="Rows the served-feature log dropped (queue full)")

        def events(_options: CallbackOptions) -> Iterator[Observation]:
            for (model, event), n in list(repo.events.items()):
                yield Observation(n, {"model": model, "event": event})

        meter.create_observable_counter("skewless_model_events", [events],
                                        description="Model management events: load, load_failed, swap, unload; with a "
                                                    "registry also rollback and rejected_{incomplete,corrupt,"
                                                    "changed,validation}")

        def fallbacks(_options: CallbackOptions) -> Iterator[Observation]:
            for attrs, mv in _versions(repo):
                if mv.fallback is not None:
                    for reason, n in list(mv.fallback.counts.items()):
                        yield Observation(n, {**attrs, "reason": reason})

        meter.create_observable_counter("skewless_fallback", [fallbacks],
                                        description="Requests answered by the model's configured fallback "
                                                    "(config skewless.fallback) instead of the model, by reason: "
                                                    "failure, timeout, shed")
        self._register_drift(meter)
        self.host.register(meter)


def _histogram_metric(name: str, description: str, unit: str, points: list[HistogramDataPoint]) -> Metric:
    return Metric(name=name, description=description, unit=unit,
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
                environ: dict[str, str] | None = None) -> MetricReader | None:
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
    return PeriodicExportingMetricReader(_WithHistograms(OTLPMetricExporter(), add))


__all__ = ["ServerMetrics", "otlp_reader"]
