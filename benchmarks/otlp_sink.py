"""An OTLP/gRPC collector on 127.0.0.1 that accepts metrics and traces and counts what it is sent.

Benchmarks need a live collector so that the server's exporters do their whole job (encode, send, wait for
the reply) and tests need to read back what was exported; neither should depend on an external collector.
It runs in the caller's process on its own gRPC thread pool, so it never competes with the server's
process for the CPU time ``--server-pid`` measures (it does share the machine's cores).
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from types import TracebackType
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class OtlpSink:
    """Both OTLP collector services on one free port: ``endpoint`` is what OTEL_EXPORTER_OTLP_ENDPOINT takes.

    Counters cover the sink's whole life; the last ``keep`` requests of each kind are kept whole (enough for a
    test to read the latest export without a long benchmark growing without bound).
    """

    def __init__(self, host: str = "127.0.0.1", keep: int = 256) -> None:
        self._lock = threading.Lock()
        self.metric_requests: collections.deque[Any] = collections.deque(maxlen=keep)
        self.trace_requests: collections.deque[Any] = collections.deque(maxlen=keep)
        self.counts = {"metric_exports": 0, "metric_points": 0, "metric_bytes": 0,
                       "trace_exports": 0, "spans": 0, "trace_bytes": 0}
        sink = self

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                sink._metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                sink._traces(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self.server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        self.port = self.server.add_insecure_port(f"{host}:0")
        self.endpoint = f"http://{host}:{self.port}"
        self.server.start()

    def _metrics(self, request: Any) -> None:
        points = 0
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    points += len(getattr(m, kind).data_points) if kind else 0
        with self._lock:
            self.metric_requests.append(request)
            self.counts["metric_exports"] += 1
            self.counts["metric_points"] += points
            self.counts["metric_bytes"] += request.ByteSize()

    def _traces(self, request: Any) -> None:
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self._lock:
            self.trace_requests.append(request)
            self.counts["trace_exports"] += 1
            self.counts["spans"] += spans
            self.counts["trace_bytes"] += request.ByteSize()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def latest(self, name: str) -> Any:
        """The metric called ``name`` in the most recent export that carried it, or None."""
        with self._lock:
            requests = list(self.metric_requests)
        for request in reversed(requests):
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name == name:
                            return m
        return None

    def stop(self) -> None:
        self.server.stop(0)

    def __enter__(self) -> OtlpSink:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
