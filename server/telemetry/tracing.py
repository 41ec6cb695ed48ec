"""Request traces (OpenTelemetry SDK): decided at arrival, built after the request is answered.

The request path never imports OpenTelemetry. A front end asks ``RequestTracer.start`` for a per-request
``RequestTrace`` (``None`` when the request is not sampled: the common case, which then costs one comparison);
the data plane notes when the request was queued and which batch ran it (runner.BatchInfo: its start and
phase times, rows, requests), and once the reply is encoded hands the trace back with the reply's times.
The spans are then built, on the event loop after the reply has been handed to the transport, with explicit
start and end times (perf_counter ns moved to the epoch by one offset taken at start-up):

    infer {model}        SERVER; parent: the caller's W3C traceparent, if any
      queue              handed to the scheduler -> its batch starts computing
      features           the batch's feature transform (only for models with a feature spec)
      compute            the batch's model run; linked to ``batch {model}``, one span per batch that held
                         at least one sampled request (rows, requests)
      reply              encoding the reply

Sampling is parent-based, with the SDK's own samplers: a valid ``traceparent`` decides by its sampled flag;
without one the root sampler from ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` decides, by default
``parentbased_traceidratio`` at ratio 0 (no root is sampled, so tracing costs nothing unless a caller asks).
Spans go through a BatchSpanProcessor (bounded queue, ``OTEL_BSP_*``): a slow or absent collector makes it
drop spans, counted in ``dropped_spans`` (and logged by the SDK), never blocks a request; the exporter runs
on the processor's thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
    _get_from_env_or_default,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
SHUTDOWN_WAIT_S = 3.0  # at stop, spans still queued get this long to export; then they are abandoned


def traces_exporter_wanted(env: Mapping[str, str]) -> bool:
    """OTEL_TRACES_EXPORTER lists ``otlp`` (the SDK's default is otlp, but a server that exports to a
    collector nobody configured would only log connection errors: here tracing is opt-in)."""
    wanted = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    return "otlp" in wanted


def sampler_from_env(env: Mapping[str, str]) -> Sampler:
    """The SDK's sampler for OTEL_TRACES_SAMPLER(_ARG); unset: parent-based, roots at ratio 0."""
    if not env.get("OTEL_TRACES_SAMPLER", "").strip():
        return ParentBased(TraceIdRatioBased(0.0))
    saved = {k: os.environ.get(k) for k in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG")}
    try:  # the SDK reads os.environ; env may be another mapping (tests)
        for k in saved:
            if k in env:
                os.environ[k] = env[k]
            else:
                os.environ.pop(k, None)
        return _get_from_env_or_default()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _span_exporter(env: Mapping[str, str]) -> SpanExporter:
    """OTLP over gRPC or HTTP/protobuf, from the SDK's own variables (endpoint, headers, TLS, timeout)."""
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc").strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        raise ValueError(f"OTLP protocol '{protocol}' is not supported for traces: use grpc or http/protobuf")
    return OTLPSpanExporter()


class _CountingExporter(SpanExporter):
    """Counts what the exporter delivered and what it failed to (a collector down or refusing)."""

    def __init__(self, inner: SpanExporter):
        self.inner = inner
        self.exported = 0
        self.failed = 0

    def export(self, spans):
        try:
            result = self.inner.export(spans)
        except Exception:
            log.warning("trace export failed", exc_info=True)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _CountingBatchProcessor(BatchSpanProcessor):
    """The SDK's BatchSpanProcessor, counting the spans its full queue drops (the SDK only logs them, or
    counts them in its opt-in internal metrics)."""

    dropped = 0

    def on_end(self, span: ReadableSpan) -> None:
        queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
            self.dropped += 1
        super().on_end(span)


class _PresetIds(RandomIdGenerator):
    """Random ids, except the trace id of a root span, which was drawn at arrival (the sampler decided on
    it) and is set here just before the span starts (spans are built on one thread, the event loop's)."""

    def __init__(self) -> None:
        self.next_trace_id = 0

    def generate_trace_id(self) -> int:
        trace_id, self.next_trace_id = self.next_trace_id, 0
        return trace_id or super().generate_trace_id()


class RequestTrace:
    """One sampled request's trace context and the times the path adds as it goes (slots: one per sampled
    request only). ``parent`` is the caller's context (or None: a root span with ``trace_id``)."""

    __slots__ = ("tracer", "parent", "trace_id", "transport", "enqueued_ns", "batch")

    def __init__(self, tracer: RequestTracer, parent: Context | None, trace_id: int, transport: str):
        self.tracer = tracer
        self.parent = parent
        self.trace_id = trace_id
        self.transport = transport
        self.enqueued_ns = 0  # handed to the scheduler (perf_counter ns)
        self.batch: Any = None  # runner.BatchInfo of the batch that computed it

    def finish(self, mv: Any, request_id: str, received_ns: int, reply_start_ns: int, end_ns: int,
               error: BaseException | None = None) -> None:
        """The request is answered (or failed): build its spans once the loop has sent the reply. Never
        raises: a tracing failure must not fail the request."""
        try:
            asyncio.get_running_loop().call_soon(self.tracer.build, self, mv, request_id, received_ns,
                                                  reply_start_ns, end_ns, error)
        except Exception:  # no running loop (not expected): build now
            self.tracer.build(self, mv, request_id, received_ns, reply_start_ns, end_ns, error)


class RequestTracer:
    """The tracer provider and the per-request sampling decision; ``None`` from ``from_env`` when no traces
    exporter is configured, so the default costs nothing at all."""

    def __init__(self, exporter: SpanExporter, sampler: Sampler, resource: Resource | None = None,
                 meter_provider: Any = None):
        self.sampler = sampler
        root = sampler._root if isinstance(sampler, ParentBased) else sampler
        # Roots that can never be sampled skip the sampler: a request without a traceparent then costs
        # one header lookup (the default configuration).
        self.roots_never = root is ALWAYS_OFF or (isinstance(root, TraceIdRatioBased) and root.bound == 0)
        self.propagator = TraceContextTextMapPropagator()
        self.exporter = _CountingExporter(exporter)
        self.processor = _CountingBatchProcessor(self.exporter, meter_provider=meter_provider)
        self._ids = _PresetIds()
        # The decision was made at arrival (self.sampler); the provider records every span it is given.
        self.provider = TracerProvider(sampler=ALWAYS_ON, resource=resource or Resource.create(
            {"service.name": "skewless"}), id_generator=self._ids, shutdown_on_exit=False)
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("skewless")
        self._offset_ns = time.time_ns() - time.perf_counter_ns()  # perf_counter ns -> ns since the epoch
        self._rng = random.Random()
        self.build_failures = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, meter_provider: Any = None
                 ) -> RequestTracer | None:
        env = os.environ if environ is None else environ
        if not traces_exporter_wanted(env):
            return None
        return cls(_span_exporter(env), sampler_from_env(env), meter_provider=meter_provider)

    @property
    def dropped_spans(self) -> int:
        """Spans dropped because the export queue was full (a slow or absent collector)."""
        return self.processor.dropped

    @property
    def exported_spans(self) -> int:
        return self.exporter.exported

    @property
    def failed_spans(self) -> int:
        """Spans the exporter could not deliver (collector down, refusing, timing out)."""
        return self.exporter.failed

    # -- at arrival ------------------------------------------------------------------------------------------
    def parent(self, carrier: Mapping[str, str]) -> Context | None:
        """The caller's context from W3C ``traceparent``/``tracestate``; None without a valid one."""
        if TRACEPARENT not in carrier:
            return None
        ctx = self.propagator.extract(carrier)
        return ctx if trace_api.get_current_span(ctx).get_span_context().is_valid else None

    def sample(self, parent: Context | None, transport: str) -> RequestTrace | None:
        """The sampling decision for one request: a RequestTrace, or None (not sampled)."""
        if parent is None:
            if self.roots_never:
                return None
            trace_id = self._rng.getrandbits(128) or 1
        else:
            trace_id = trace_api.get_current_span(parent).get_span_context().trace_id
        if not self.sampler.should_sample(parent, trace_id, "infer").decision.is_sampled():
            return None
        return RequestTrace(self, parent, trace_id, transport)

    def start(self, carrier: Mapping[str, str], transport: str) -> RequestTrace | None:
        return self.sample(self.parent(carrier), transport)

    def start_grpc(self, metadata: Any, transport: str = "grpc") -> RequestTrace | None:
        """From gRPC invocation metadata (key/value pairs; keys arrive lower-case)."""
        return self.start(grpc_carrier(metadata), transport)

    def parent_grpc(self, metadata: Any) -> Context | None:
        return self.parent(grpc_carrier(metadata))

    def start_http(self, headers: Mapping[str, str]) -> RequestTrace | None:
        return self.start(http_carrier(headers), "http")

    # -- after the reply -------------------------------------------------------------------------------------
    def build(self, rt: RequestTrace, mv: Any, request_id: str, received_ns: int, reply_start_ns: int,
              end_ns: int, error: BaseException | None) -> None:
        try:
            self._build(rt, mv, request_id, received_ns, reply_start_ns, end_ns, error)
        except Exception:
            self.build_failures += 1
            log.warning("building a request's spans failed", exc_info=True)

    def _build(self, rt: RequestTrace, mv: Any, request_id: str, received_ns: int, reply_start_ns: int,
               end_ns: int, error: BaseException | None) -> None:
        off = self._offset_ns
        tracer = self.tracer
        name = mv.name
        attrs: dict[str, Any] = {"skewless.model.name": name, "skewless.model.version": str(mv.version),
                                 "skewless.request.id": request_id, "skewless.transport": rt.transport}
        features = getattr(mv, "features", None)
        if features is not None:
            attrs["skewless.feature_spec_hash"] = features.spec.sha256
        batch = rt.batch
        if batch is not None:
            attrs["skewless.batch.size"] = batch.rows
            attrs["skewless.batch.requests"] = batch.requests
        if rt.parent is None:
            self._ids.next_trace_id = rt.trace_id
        server = tracer.start_span(f"infer {name}", context=rt.parent, kind=SpanKind.SERVER, attributes=attrs,
                                   start_time=received_ns + off)
        if error is not None:
            server.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        ctx = trace_api.set_span_in_context(server)
        if batch is not None:
            start = batch.start_ns
            if rt.enqueued_ns:
                tracer.start_span("queue", context=ctx, start_time=rt.enqueued_ns + off).end(start + off)
            computed = start + batch.input_ns
            if features is not None:
                tracer.start_span("features", context=ctx, start_time=start + off,
                                  attributes={"skewless.feature_spec_hash": features.spec.sha256}
                                  ).end(computed + off)
            span = batch.span
            if span is None:
                span = batch.span = self._batch_span(name, mv, batch, rt)
            tracer.start_span("compute", context=ctx, start_time=computed + off,
                              links=[Link(span.get_span_context())],
                              attributes={"skewless.batch.size": batch.rows}).end(computed + batch.infer_ns + off)
        if reply_start_ns:
            tracer.start_span("reply", context=ctx, start_time=reply_start_ns + off).end(end_ns + off)
        server.end(end_ns + off)

    def _batch_span(self, name: str, mv: Any, batch: Any, rt: RequestTrace):
        """The batch's own span (a root of its own trace: it serves requests of many traces), made once."""
        off = self._offset_ns
        span = self.tracer.start_span(
            f"batch {name}", context=Context(), kind=SpanKind.INTERNAL, start_time=batch.start_ns + off,
            attributes={"skewless.model.name": name, "skewless.model.version": str(mv.version),
                        "skewless.batch.size": batch.rows, "skewless.batch.requests": batch.requests})
        span.end(batch.start_ns + batch.input_ns + batch.infer_ns + batch.output_ns + off)
        return span

    # -- stop ------------------------------------------------------------------------------------------------
    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Flush what is queued for at most ``wait_s`` (a dead collector must not hold the stop up), on a
        daemon thread that is abandoned after that."""
        t = threading.Thread(target=self._shutdown, name="trace-shutdown", daemon=True)
        t.start()
        t.join(wait_s)
        if t.is_alive():
            log.warning("trace export did not finish within %.0fs at stop: queued spans abandoned", wait_s)

    def _shutdown(self) -> None:
        try:
            self.provider.shutdown()
        except Exception:
            log.warning("trace shutdown failed", exc_info=True)


def grpc_carrier(metadata: Any) -> dict[str, str]:
    """The W3C trace headers among gRPC metadata pairs (an empty dict when there are none)."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if key in (TRACEPARENT, TRACESTATE):
            carrier[key] = value if isinstance(value, str) else value.decode("ascii", "replace")
    return carrier


def http_carrier(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace headers of an HTTP request (case-insensitive mapping, e.g. aiohttp's)."""
    carrier: dict[str, str] = {}
    value = headers.get(TRACEPARENT)
    if value is not None:
        carrier[TRACEPARENT] = value
        state = headers.get(TRACESTATE)
        if state is not None:
            carrier[TRACESTATE] = state
    return carrier


__all__ = ["RequestTrace", "RequestTracer", "grpc_carrier", "http_carrier", "sampler_from_env"]
