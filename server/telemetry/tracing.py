"""Request traces: decided at arrival, sent after the request is answered, off the request's way.

The request path never imports OpenTelemetry. A front end asks ``RequestTracer.start`` for a per-request
``RequestTrace`` (``None`` when the request is not sampled: the common case, which then costs one comparison);
the data plane notes when the request was queued and which batch ran it (runner.BatchInfo: its start and
phase times, rows, requests), and once the reply is encoded hands the trace back with the reply's times. That
hand-back is one append to span_export's bounded queue; its thread later encodes the spans (perf_counter ns
moved to the epoch by one offset taken at start-up) and sends them through the SDK's OTLP exporter:

    infer {model}        SERVER; parent: the caller's W3C traceparent, if any
      queue              handed to the scheduler -> its batch starts computing
      features           the batch's feature transform (only for models with a feature spec)
      compute            the batch's model run; linked to ``batch {model}``, one span per batch that held
                         at least one sampled request (rows, requests)
      reply              encoding the reply

Sampling is parent-based, with the SDK's own samplers: a valid ``traceparent`` decides by its sampled flag;
without one the root sampler from ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` decides, by default
``parentbased_traceidratio`` at ratio 0 (no root is sampled, so tracing costs nothing unless a caller asks).
A slow or absent collector makes the queue drop spans (``OTEL_BSP_MAX_QUEUE_SIZE``), counted in
``dropped_spans``, never blocks a request.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
    _get_from_env_or_default,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .span_export import SpanExporter, SpanSender, otlp_sender

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


class RequestTrace:
    """One sampled request's trace context and the times the path adds as it goes (slots: one per sampled
    request only). ``parent_span_id`` is the caller's span (0: a root span of trace ``trace_id``)."""

    __slots__ = ("exporter", "trace_id", "parent_span_id", "trace_state", "transport", "enqueued_ns", "batch",
                 "policy")

    def __init__(self, exporter: SpanExporter, trace_id: int, parent_span_id: int, trace_state: str,
                 transport: str, policy: Any = None):
        self.exporter = exporter
        self.policy = policy  # trace_settings.TraceSettings: the model's level, rate and count, at finish
        self.trace_id = trace_id
        self.parent_span_id = parent_span_id
        self.trace_state = trace_state
        self.transport = transport
        self.enqueued_ns = 0  # handed to the scheduler (perf_counter ns)
        self.batch: Any = None  # runner.BatchInfo of the batch that computed it

    def finish(self, mv: Any, request_id: str, received_ns: int, reply_start_ns: int, end_ns: int,
               error: BaseException | None = None) -> None:
        """The request is answered (or failed): queue it for its spans. Never raises or blocks."""
        if self.policy is not None and not self.policy.admit(getattr(mv, "name", ""), self.parent_span_id == 0):
            return
        text = None if error is None else f"{type(error).__name__}: {error}"
        self.exporter.submit((self, mv, request_id, received_ns, reply_start_ns, end_ns, text))


class RequestTracer:
    """The per-request sampling decision and the span exporter; ``None`` from ``from_env`` when no traces
    exporter is configured, so the default costs nothing at all."""

    def __init__(self, sender: SpanSender, sampler: Sampler, environ: Mapping[str, str] | None = None):
        self.sampler = sampler
        root = sampler._root if isinstance(sampler, ParentBased) else sampler
        # Roots that can never be sampled skip the sampler: a request without a traceparent then costs
        # one header lookup (the default configuration).
        self.roots_never = root is ALWAYS_OFF or (isinstance(root, TraceIdRatioBased) and root.bound == 0)
        self.propagator = TraceContextTextMapPropagator()
        offset_ns = time.time_ns() - time.perf_counter_ns()  # perf_counter ns -> ns since the epoch
        self.exporter = SpanExporter(sender, offset_ns, environ=environ)
        self._rng = random.Random()
        # Set by trace_settings.TraceSettings (Triton's trace extension), when wired:
        self.policy: Any = None  # decides at finish, per model
        self.all_off = False  # trace_level OFF everywhere: no request is traced
        self.rate_driven = False  # a trace_rate was set: it, not the root sampler, picks root traces

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RequestTracer | None:
        env = os.environ if environ is None else environ
        if not traces_exporter_wanted(env):
            return None
        return cls(otlp_sender(env), sampler_from_env(env), env)

    @property
    def dropped_spans(self) -> int:
        """Spans dropped because the export queue was full (a slow or absent collector)."""
        return self.exporter.dropped

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
        if self.all_off:
            return None
        if parent is None:
            if self.rate_driven:  # the model's trace_rate decides at finish
                return RequestTrace(self.exporter, self._rng.getrandbits(128) or 1, 0, "", transport, self.policy)
            if self.roots_never:
                return None
            trace_id = self._rng.getrandbits(128) or 1
            parent_span_id, state = 0, ""
        else:
            sc = trace_api.get_current_span(parent).get_span_context()
            trace_id, parent_span_id = sc.trace_id, sc.span_id
            state = sc.trace_state.to_header() if sc.trace_state else ""
        if not self.sampler.should_sample(parent, trace_id, "infer").decision.is_sampled():
            return None
        return RequestTrace(self.exporter, trace_id, parent_span_id, state, transport, self.policy)

    def start(self, carrier: Mapping[str, str], transport: str) -> RequestTrace | None:
        return self.sample(self.parent(carrier), transport)

    def start_grpc(self, metadata: Any, transport: str = "grpc") -> RequestTrace | None:
        """From gRPC invocation metadata (key/value pairs; keys arrive lower-case)."""
        return self.start(grpc_carrier(metadata), transport)

    def parent_grpc(self, metadata: Any) -> Context | None:
        return self.parent(grpc_carrier(metadata))

    def start_http(self, headers: Mapping[str, str]) -> RequestTrace | None:
        return self.start(http_carrier(headers), "http")

    # -- stop ------------------------------------------------------------------------------------------------
    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Send what is queued for at most ``wait_s`` (a dead collector must not hold the stop up)."""
        self.exporter.shutdown(wait_s)


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
