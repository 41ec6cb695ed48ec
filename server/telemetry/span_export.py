"""Finished requests → OTLP spans, built and sent on one background thread, never on the request's way.

The SDK's own span objects cost ~17 µs a span to create and end on the event loop, and its encoder another
~20 µs a span to turn them into protobuf (measured: 150 µs of CPU per traced request at five spans). Here a
finished request is one tuple appended to a bounded deque (``background.BackgroundWriter``, polling: no lock,
no wake-up per request); the export thread turns a batch of them straight into an ``ExportTraceServiceRequest`` (~35 µs a request) and hands it to
the SDK's OTLP exporter, which keeps its own configuration (``OTEL_EXPORTER_OTLP_*``: endpoint, headers, TLS,
compression, timeout) and retries. The queue and batch sizes follow ``OTEL_BSP_*``; a full queue drops the
request's spans and counts them, so a slow or dead collector never blocks or slows a request.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from typing import Any, Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, SpanFlags, Status
from opentelemetry.sdk.resources import Resource

from ..background import BackgroundWriter
from .otlp_stop import last_attempt

log = logging.getLogger(__name__)

SERVER = Span.SPAN_KIND_SERVER
INTERNAL = Span.SPAN_KIND_INTERNAL
HAS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
SAMPLED = 0x01  # W3C trace-flags: the only flag a sampled span carries
SPANS_PER_REQUEST = 5  # server, queue, compute, reply and a share of the batch span: sizes OTEL_BSP_* in requests


class SpanSender(Protocol):
    """Delivers one encoded export request; True when the collector took it."""

    def send(self, request: ExportTraceServiceRequest, spans: int) -> bool: ...

    def shutdown(self) -> None: ...

    def last_attempt(self) -> None:
        """At stop: what is sent next is tried once, without retry backoff."""


def otlp_sender(env: Mapping[str, str]) -> SpanSender:
    """The SDK's OTLP exporter for ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``: grpc (default) or http/protobuf.

    The protocol is checked now; the exporter (a gRPC channel or an HTTP session) is made at the first export,
    so a server whose sampler never samples (the default, ratio 0) holds no connection to the collector."""
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc").strip()
    if protocol == "grpc":
        return _LazySender(_grpc_sender)
    if protocol == "http/protobuf":
        return _LazySender(_http_sender)
    raise ValueError(f"OTLP protocol '{protocol}' is not supported for traces: use grpc or http/protobuf")


class _LazySender:
    """Makes its sender on first use (on the export thread)."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._sender: SpanSender | None = None
        self._final = False  # stopping: a sender made now tries once

    def send(self, request: ExportTraceServiceRequest, spans: int) -> bool:
        if self._sender is None:
            self._sender = self._make()
            if self._final:
                last_attempt(self._sender)
        return self._sender.send(request, spans)

    def shutdown(self) -> None:
        if self._sender is not None:
            self._sender.shutdown()

    def last_attempt(self) -> None:
        self._final = True
        if self._sender is not None:
            last_attempt(self._sender)


def _grpc_sender() -> SpanSender:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    class GrpcSender(OTLPSpanExporter):
        """The SDK's gRPC exporter (channel, retries, deadline) fed a request that is already encoded:
        ``_translate_data`` is the hook its exporters override to encode their own signal."""

        _spans = 0

        def _translate_data(self, data: Any) -> ExportTraceServiceRequest:
            return data

        def _count_data(self, data: Any) -> int:
            return self._spans

        def send(self, request: ExportTraceServiceRequest, spans: int) -> bool:
            self._spans = spans
            return self._export(request) is SpanExportResult.SUCCESS

    return GrpcSender()


def _http_sender() -> SpanSender:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    class HttpSender(OTLPSpanExporter):
        """The SDK's HTTP exporter (session, compression, retries) posting bytes encoded here."""

        def send(self, request: ExportTraceServiceRequest, spans: int) -> bool:
            return bool(self._client.export(request.SerializeToString()).success)

    sender = HttpSender()
    if not hasattr(sender, "_client"):  # the SDK moved its HTTP client: fail at start-up, not per export
        raise RuntimeError("this opentelemetry-exporter-otlp-proto-http has no HTTP client to send through; "
                           "use OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc")
    return sender


def _int_env(env: Mapping[str, str], key: str, default: int) -> int:
    try:
        value = int(env.get(key, "") or default)
    except ValueError:
        log.warning("%s=%r is not an integer: using %d", key, env.get(key), default)
        return default
    return value if value > 0 else default


def _span_count(record: tuple) -> int:
    """How many spans a record makes (its own; a batch span is shared, so not counted)."""
    rt, mv, _, _, reply_start_ns, _, _ = record
    n = 1 + (reply_start_ns != 0)
    if rt.batch is not None:
        n += 1 + (rt.enqueued_ns != 0) + (getattr(mv, "features", None) is not None)
    return n


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


class SpanExporter:
    """The bounded queue of finished requests and the thread that encodes and sends their spans.

    A record is ``(trace, mv, request_id, received_ns, reply_start_ns, end_ns, error_text)`` where ``trace`` is
    tracing.RequestTrace (trace id, parent, queue time, the runner.BatchInfo that computed it) and times are
    perf_counter ns; ``offset_ns`` moves them to the epoch.
    """

    def __init__(self, sender: SpanSender, offset_ns: int, resource: Resource | None = None,
                 environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        self.sender = sender
        self.offset_ns = offset_ns
        self.capacity = max(1, _int_env(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048) // SPANS_PER_REQUEST)
        self.batch = max(1, _int_env(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512) // SPANS_PER_REQUEST)
        self.delay_s = _int_env(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        resource = resource or Resource.create({"service.name": "skewless"})
        self._resource = PbResource(attributes=[_kv(k, v if isinstance(v, int) else str(v))
                                                for k, v in resource.attributes.items()])
        self._scope = InstrumentationScope(name="skewless")
        self._rng = random.Random()
        self.exported = 0
        self.failed = 0
        self.dropped = 0
        self.encode_failures = 0
        # Polling: a request costs one append; the thread looks every delay_s, or sooner once a batch waits.
        self._writer: BackgroundWriter[tuple] = BackgroundWriter(
            "span-export", self._export, capacity=self.capacity, batch=self.batch, poll=self.delay_s,
            label="trace export")
        self._writer.start()

    # -- any thread: one append, or a count --------------------------------------------------------------
    def submit(self, record: tuple) -> None:
        if not self._writer.offer(record):
            self.dropped += _span_count(record)

    # -- the export thread ----------------------------------------------------------------------------------
    def _export(self, take: list[tuple]) -> None:
        try:
            spans = self._encode(take)
        except Exception:  # a bug here must cost traces, never the thread
            self.encode_failures += 1
            log.warning("encoding %d requests' spans failed", len(take), exc_info=True)
            return
        request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource=self._resource, scope_spans=[ScopeSpans(scope=self._scope, spans=spans)])])
        try:
            ok = self.sender.send(request, len(spans))
        except Exception:
            log.warning("trace export failed", exc_info=True)
            ok = False
        if ok:
            self.exported += len(spans)
        else:
            self.failed += len(spans)

    def _span_id(self) -> bytes:
        return (self._rng.getrandbits(64) or 1).to_bytes(8, "big")

    def _encode(self, records: list[tuple]) -> list[Span]:
        out: list[Span] = []
        for record in records:
            self._request_spans(out, *record)
        return out

    def _request_spans(self, out: list[Span], rt: Any, mv: Any, request_id: str, received_ns: int,
                       reply_start_ns: int, end_ns: int, error: str | None) -> None:
        off = self.offset_ns
        trace_id = rt.trace_id.to_bytes(16, "big")
        server_id = self._span_id()
        name = mv.name
        version = str(mv.version)
        features = getattr(mv, "features", None)
        spec_hash = features.spec.sha256 if features is not None else None
        attrs = [_kv("skewless.model.name", name), _kv("skewless.model.version", version),
                 _kv("skewless.request.id", request_id), _kv("skewless.transport", rt.transport)]
        if spec_hash is not None:
            attrs.append(_kv("skewless.feature_spec_hash", spec_hash))
        batch = rt.batch
        if batch is not None:
            attrs.append(_kv("skewless.batch.size", batch.rows))
            attrs.append(_kv("skewless.batch.requests", batch.requests))
        server = Span(trace_id=trace_id, span_id=server_id, name=f"infer {name}", kind=SERVER,
                      start_time_unix_nano=received_ns + off, end_time_unix_nano=end_ns + off,
                      attributes=attrs, flags=HAS_REMOTE | SAMPLED)
        if rt.parent_span_id:
            server.parent_span_id = rt.parent_span_id.to_bytes(8, "big")
            server.flags |= IS_REMOTE
            if rt.trace_state:
                server.trace_state = rt.trace_state
        if error is not None:
            server.status.code = Status.STATUS_CODE_ERROR
            server.status.message = error
        out.append(server)
        if batch is not None:
            start = batch.start_ns
            if rt.enqueued_ns:
                out.append(self._child(trace_id, server_id, "queue", rt.enqueued_ns, start))
            computed = start + batch.input_ns
            if spec_hash is not None:
                out.append(self._child(trace_id, server_id, "features", start, computed,
                                       attributes=[_kv("skewless.feature_spec_hash", spec_hash)]))
            if batch.span is None:
                batch.span = self._batch_span(out, name, version, batch)
            batch_trace, batch_span = batch.span
            out.append(self._child(
                trace_id, server_id, "compute", computed, computed + batch.infer_ns,
                attributes=[_kv("skewless.batch.size", batch.rows)],
                links=[Span.Link(trace_id=batch_trace, span_id=batch_span, flags=HAS_REMOTE | SAMPLED)]))
        if reply_start_ns:
            out.append(self._child(trace_id, server_id, "reply", reply_start_ns, end_ns))

    def _child(self, trace_id: bytes, parent_id: bytes, name: str, start: int, end: int, **fields: Any) -> Span:
        off = self.offset_ns
        return Span(trace_id=trace_id, span_id=self._span_id(), parent_span_id=parent_id, name=name, kind=INTERNAL,
                    start_time_unix_nano=start + off, end_time_unix_nano=end + off, flags=HAS_REMOTE | SAMPLED,
                    **fields)

    def _batch_span(self, out: list[Span], name: str, version: str, batch: Any) -> tuple[bytes, bytes]:
        """The batch's own span, once per batch: the root of a trace of its own, since it serves requests of
        many traces (each request's compute span links to it)."""
        trace_id = (self._rng.getrandbits(128) or 1).to_bytes(16, "big")
        span_id = self._span_id()
        start = batch.start_ns + self.offset_ns
        out.append(Span(trace_id=trace_id, span_id=span_id, name=f"batch {name}", kind=INTERNAL,
                        start_time_unix_nano=start,
                        end_time_unix_nano=start + batch.input_ns + batch.infer_ns + batch.output_ns,
                        attributes=[_kv("skewless.model.name", name), _kv("skewless.model.version", version),
                                    _kv("skewless.batch.size", batch.rows),
                                    _kv("skewless.batch.requests", batch.requests)],
                        flags=HAS_REMOTE | SAMPLED))
        return trace_id, span_id

    # -- stop --------------------------------------------------------------------------------------------------
    def shutdown(self, wait_s: float) -> None:
        """Send what is queued within ``wait_s``, in one attempt (a collector that is down must not hold the stop
        up for the exporter's retry backoff), then abandon it."""
        last = getattr(self.sender, "last_attempt", None)
        if last is not None:
            last()
        if not self._writer.close(wait_s):
            log.warning("trace export did not finish within %.0fs at stop: queued spans abandoned", wait_s)
            return
        try:
            self.sender.shutdown()
        except Exception:
            log.warning("trace exporter shutdown failed", exc_info=True)


__all__ = ["SpanExporter", "SpanSender", "otlp_sender"]
