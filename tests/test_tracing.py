"""Traces: a real server subprocess exports to a real OTLP/gRPC receiver running in this process.

The receiver implements OpenTelemetry's TraceService on 127.0.0.1 (a free port) and keeps every span it is
sent; requests come from tritonclient (gRPC unary and stream, HTTP) with or without a W3C ``traceparent``.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import infer
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from serverproc import ServerProcess

pytestmark = pytest.mark.grpc_transports  # every test on each gRPC transport (conftest.py)

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector that keeps what it receives."""

    def __init__(self) -> None:
        self.spans: list = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request, context):
        with self.lock:
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: bytes) -> list:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, trace_id: bytes, count: int, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.of_trace(trace_id)
            if len(spans) >= count:
                return spans
            time.sleep(0.05)
        return self.of_trace(trace_id)

    def by_span_id(self) -> dict[bytes, object]:
        with self.lock:
            return {s.span_id: s for s in self.spans}


def attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


def traceparent(sampled: bool = True) -> tuple[str, bytes, bytes]:
    trace_id, span_id = random.getrandbits(128) | 1, random.getrandbits(64) | 1
    header = f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"
    return header, trace_id.to_bytes(16, "big"), span_id.to_bytes(8, "big")


def otel_env(port: int, **extra: str) -> dict[str, str]:
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRICS_EXPORTER": "none", **extra}  # the receiver takes traces only


MLP_X = {"input": np.random.default_rng(0).random((2, 32), dtype=np.float32)}
CHURN_X = {
    "tenure_months": np.array([[12.0]]), "monthly_charges": np.array([[70.5]]),
    "support_calls": np.array([[2]], dtype=np.int64), "senior": np.array([[False]]),
    "contract": np.array([[b"month-to-month"]], dtype=object),
    "payment_method": np.array([[b"card"]], dtype=object), "region": np.array([[b"north"]], dtype=object),
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.stop(0)


@pytest.fixture(scope="module")
def repo(make_repo, model_source):
    from skewless.examples.generate import write_churn_model

    root = make_repo("mlp")
    write_churn_model(root)
    return root


@pytest.fixture(scope="module")
def traced(repo, receiver, grpc_transport) -> Iterator[ServerProcess]:
    """Tracing on, default sampler: only callers' sampled traceparents are traced."""
    proc = ServerProcess(repo, env=otel_env(receiver.port)).start()
    yield proc
    proc.assert_clean_exit()


def check_request_trace(receiver: Receiver, trace_id: bytes, parent_id: bytes | None, model: str,
                        request_id: str, features: bool = False) -> dict:
    children = {"queue", "compute", "reply", *(("features",) if features else ())}
    spans = receiver.wait_for(trace_id, 1 + len(children))
    server = [s for s in spans if s.name == f"infer {model}"]
    assert len(server) == 1, [s.name for s in spans]
    server = server[0]
    assert server.kind == SERVER_KIND
    if parent_id is not None:
        assert server.parent_span_id == parent_id
    else:
        assert server.parent_span_id == b""
    a = attrs(server)
    assert a["skewless.model.name"] == model and a["skewless.model.version"] == "1"
    assert a["skewless.request.id"] == request_id
    assert a["skewless.batch.size"] >= 1
    assert ("skewless.feature_spec_hash" in a) == features
    kids = {s.name: s for s in spans if s.parent_span_id == server.span_id}
    assert set(kids) == children, set(kids)
    for s in kids.values():
        assert server.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano
        assert s.end_time_unix_nano <= server.end_time_unix_nano
    assert kids["queue"].end_time_unix_nano <= kids["compute"].start_time_unix_nano
    assert kids["compute"].end_time_unix_nano <= kids["reply"].start_time_unix_nano
    if features:
        assert len(attrs(server)["skewless.feature_spec_hash"]) == 64
        assert kids["features"].end_time_unix_nano <= kids["compute"].start_time_unix_nano
    (link,) = kids["compute"].links
    deadline = time.monotonic() + 5
    while (batch := receiver.by_span_id().get(link.span_id)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert batch is not None and batch.name == f"batch {model}" and batch.trace_id == link.trace_id
    b = attrs(batch)
    assert b["skewless.batch.size"] == a["skewless.batch.size"] and b["skewless.batch.requests"] >= 1
    return kids


def test_grpc_traceparent_continues_the_callers_trace(traced, receiver):
    header, trace_id, parent_id = traceparent()
    with grpcclient.InferenceServerClient(traced.grpc_url) as client:
        infer(client, "mlp", MLP_X, request_id="req-1", headers={"traceparent": header})
    check_request_trace(receiver, trace_id, parent_id, "mlp", "req-1")


def test_http_traceparent_and_feature_model(traced, receiver):
    header, trace_id, parent_id = traceparent()
    client = httpclient.InferenceServerClient(traced.rest_url)
    inputs = []
    for name, arr in CHURN_X.items():
        dt = {np.float64: "FP64", np.int64: "INT64", np.bool_: "BOOL"}.get(arr.dtype.type, "BYTES")
        inp = httpclient.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    client.infer("churn", inputs, request_id="req-http", headers={"traceparent": header})
    client.close()
    kids = check_request_trace(receiver, trace_id, parent_id, "churn", "req-http", features=True)
    assert attrs(kids["features"])["skewless.feature_spec_hash"]


def test_stream_messages_are_children_of_the_streams_traceparent(traced, receiver):
    header, trace_id, parent_id = traceparent()
    results: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(traced.grpc_url) as client:
        client.start_stream(lambda result, error: results.put(error), headers={"traceparent": header})
        inp = grpcclient.InferInput("input", [2, 32], "FP32")
        inp.set_data_from_numpy(MLP_X["input"])
        for i in range(3):
            client.async_stream_infer("mlp", [inp], request_id=f"s{i}")
        for _ in range(3):
            assert results.get(timeout=10) is None
        client.stop_stream()
    spans = receiver.wait_for(trace_id, 3 * 4)
    servers = [s for s in spans if s.name == "infer mlp"]
    assert sorted(attrs(s)["skewless.request.id"] for s in servers) == ["s0", "s1", "s2"]
    assert all(s.parent_span_id == parent_id for s in servers)


def test_unsampled_or_absent_traceparent_makes_no_spans(traced, receiver):
    header, trace_id, _ = traceparent(sampled=False)
    with grpcclient.InferenceServerClient(traced.grpc_url) as client:
        infer(client, "mlp", MLP_X, headers={"traceparent": header})
        before = len(receiver.spans)
        infer(client, "mlp", MLP_X, request_id="no-parent")  # default sampler: roots are not sampled
        # a sampled request after them, so that waiting for its spans is waiting past theirs
        marker, marker_id, _ = traceparent()
        infer(client, "mlp", MLP_X, headers={"traceparent": marker})
    assert len(receiver.wait_for(marker_id, 4)) == 4  # infer, queue, compute, reply
    assert receiver.of_trace(trace_id) == []
    with receiver.lock:
        new = receiver.spans[before:]
    assert not any(attrs(s).get("skewless.request.id") == "no-parent" for s in new)


def test_root_sampler_from_env_traces_requests_without_traceparent(repo, receiver):
    proc = ServerProcess(repo, env=otel_env(receiver.port, OTEL_TRACES_SAMPLER="traceidratio",
                                            OTEL_TRACES_SAMPLER_ARG="1.0")).start()
    try:
        with grpcclient.InferenceServerClient(proc.grpc_url) as client:
            infer(client, "mlp", MLP_X, request_id="root-1")
        deadline = time.monotonic() + 5
        server = None
        while server is None and time.monotonic() < deadline:
            with receiver.lock:
                server = next((s for s in receiver.spans if attrs(s).get("skewless.request.id") == "root-1"
                               and s.kind == SERVER_KIND), None)
            time.sleep(0.05)
        assert server is not None
        check_request_trace(receiver, server.trace_id, None, "mlp", "root-1")
    finally:
        proc.assert_clean_exit()


def test_dead_collector_never_slows_or_fails_requests(repo):
    with socket_port() as port:  # bound and closed: nothing listens there
        pass
    proc = ServerProcess(repo, env=otel_env(port, OTEL_TRACES_SAMPLER="always_on", OTEL_BSP_MAX_QUEUE_SIZE="64",
                                            OTEL_BSP_MAX_EXPORT_BATCH_SIZE="32",
                                            OTEL_EXPORTER_OTLP_TIMEOUT="1")).start()
    try:
        with grpcclient.InferenceServerClient(proc.grpc_url) as client:
            t0 = time.monotonic()
            for i in range(100):
                infer(client, "mlp", MLP_X, request_id=f"d{i}")
            assert time.monotonic() - t0 < 10  # ~0.5 s here; a blocked request would take the export timeout
        # 100 requests x 6 spans overflow the 64-span queue: the drops are counted where metrics are read
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            counts = {line.split('"')[1]: float(line.split()[-1])
                      for line in urllib.request.urlopen(proc.http_url + "/metrics", timeout=5).read().decode()
                      .splitlines() if line.startswith("skewless_trace_spans_total{")}
            if counts.get("dropped", 0) > 0 and counts.get("export_failed", 0) > 0:
                break
            time.sleep(0.2)
        assert counts["dropped"] > 0 and counts["export_failed"] > 0, counts
    finally:
        t0 = time.monotonic()
        proc.assert_clean_exit()
        assert time.monotonic() - t0 < 10


def test_stop_with_the_collector_down_is_clean_and_prompt(repo):
    """Traces and metrics both export to a port nothing listens on; a traced request's spans are still queued
    (the export runs every 5 s) when SIGTERM comes. The stop's final exports are one attempt each: no wait for
    the exporters' retry backoff, no abandoned export, no second shutdown at exit; the server exits 0."""
    with socket_port() as port:  # bound and closed: nothing listens there
        pass
    proc = ServerProcess(repo, env=otel_env(port, OTEL_METRICS_EXPORTER="otlp", OTEL_BSP_SCHEDULE_DELAY="5000"))
    proc.start()
    try:
        header, _, _ = traceparent(sampled=True)
        with grpcclient.InferenceServerClient(proc.grpc_url) as client:
            infer(client, "mlp", MLP_X, request_id="before-stop", headers={"traceparent": header})
    finally:
        rc = proc.stop(timeout=20)  # SIGTERM; a server still running after this generous bound fails the test
    log = proc.stderr_text()
    assert rc == 0, log
    assert "stopped" in log, log
    for line in ("shutdown can only be called once", "did not finish within", "Can't shutdown multiple times",
                 "already shutdown"):
        assert line not in log, log


def socket_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))

    class _Port:
        def __enter__(self):
            return s.getsockname()[1]

        def __exit__(self, *exc):
            s.close()

    return _Port()


def test_sampler_defaults_and_env():
    from skewless.server.telemetry.tracing import RequestTracer, sampler_from_env

    class Null:
        def send(self, request, spans):
            return True

        def shutdown(self):
            pass

    assert RequestTracer.from_env({}) is None  # no exporter configured: no tracer at all
    for env, roots in (({}, False), ({"OTEL_TRACES_SAMPLER": "always_on"}, True),
                       ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"}, True),
                       ({"OTEL_TRACES_SAMPLER": "always_off"}, False)):
        tracer = RequestTracer(Null(), sampler_from_env(env))
        try:
            assert (tracer.start({}, "grpc") is not None) == roots, env
            header, trace_id, _ = traceparent(sampled=True)
            if env.get("OTEL_TRACES_SAMPLER") != "always_off":  # parent-based (or always on): honours it
                rt = tracer.start({"traceparent": header}, "grpc")
                assert rt is not None and rt.trace_id == int.from_bytes(trace_id, "big")
            header, _, _ = traceparent(sampled=False)
            sampled = tracer.start({"traceparent": header}, "grpc") is not None
            assert sampled == (env.get("OTEL_TRACES_SAMPLER") == "always_on")
        finally:
            tracer.shutdown(1)


class HttpReceiver:
    """An OTLP/HTTP trace collector (protobuf bodies on POST /v1/traces) that keeps what it receives."""

    def __init__(self) -> None:
        import http.server

        self.spans: list = []
        self.paths: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver.paths.append(self.path)
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        receiver.spans.extend(ss.spans)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_http_protobuf_exporter_and_error_status(repo):
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: spans reach an OTLP/HTTP collector; a failed request's server
    span carries an error status with the reason."""
    r = HttpReceiver()
    proc = ServerProcess(repo, env=otel_env(r.port, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")).start()
    try:
        header, trace_id, parent_id = traceparent()
        bad, bad_trace, _ = traceparent()
        with grpcclient.InferenceServerClient(proc.grpc_url) as client:
            infer(client, "mlp", MLP_X, request_id="h1", headers={"traceparent": header})
            inp = grpcclient.InferInput("input", [2, 32], "FP32")
            inp.set_data_from_numpy(MLP_X["input"])
            with pytest.raises(Exception, match="does-not-exist"):  # an output the model does not have
                client.infer("mlp", [inp], outputs=[grpcclient.InferRequestedOutput("does-not-exist")],
                             headers={"traceparent": bad})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not ({trace_id, bad_trace} <= {s.trace_id for s in r.spans}):
            time.sleep(0.05)
        mine = [s for s in r.spans if s.trace_id == trace_id]
        assert {s.name for s in mine} == {"infer mlp", "queue", "compute", "reply"}
        (server,) = [s for s in mine if s.name == "infer mlp"]
        assert server.parent_span_id == parent_id and attrs(server)["skewless.request.id"] == "h1"
        assert server.status.code == 0  # unset: the request succeeded
        failed = [s for s in r.spans if s.trace_id == bad_trace and s.name == "infer mlp"]
        assert len(failed) == 1 and failed[0].status.code == 2  # STATUS_CODE_ERROR
        assert "does-not-exist" in failed[0].status.message
        assert set(r.paths) == {"/v1/traces"}
    finally:
        proc.assert_clean_exit()
        r.server.shutdown()


def test_full_queue_counts_exactly_the_spans_it_drops():
    """Records beyond OTEL_BSP_MAX_QUEUE_SIZE are dropped at once (never waited for) and their spans counted."""
    from types import SimpleNamespace

    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from skewless.server.batching.runner import BatchInfo
    from skewless.server.telemetry.tracing import RequestTracer

    gate = threading.Event()
    sent: list[int] = []

    class Stalled:  # a collector that does not answer until the gate opens
        def send(self, request, spans):
            gate.wait(10)
            sent.append(spans)
            return True

        def shutdown(self):
            pass

    tracer = RequestTracer(Stalled(), ALWAYS_ON, {"OTEL_BSP_MAX_QUEUE_SIZE": "50",
                                                  "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "5",
                                                  "OTEL_BSP_SCHEDULE_DELAY": "10"})
    mv = SimpleNamespace(name="m", version=3, features=None)
    batch = BatchInfo(1_000, 10, 20, 30, 4, 2)
    for i in range(40):
        rt = tracer.start({}, "grpc")
        rt.batch, rt.enqueued_ns = batch, 500
        rt.finish(mv, f"r{i}", 100, 2_000, 3_000)  # server, queue, compute, reply: 4 spans each
    assert sent == []  # all 40 returned while the export is still stalled: no request waited for it
    time.sleep(0.1)
    # 10 records fit the queue (50 spans / 5 per request); one more is held by the stalled send
    assert tracer.dropped_spans % 4 == 0 and 4 * 28 <= tracer.dropped_spans <= 4 * 30, tracer.dropped_spans
    gate.set()
    tracer.shutdown(5)
    kept = 40 - tracer.dropped_spans // 4
    assert sum(sent) == 4 * kept + 1  # and the one batch span they share
    assert tracer.exported_spans == sum(sent) and tracer.failed_spans == 0
