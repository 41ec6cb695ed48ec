"""Triton's trace and logging extensions against a real server: tritonclient gRPC/HTTP change the trace
settings and what reaches a real OTLP receiver changes with them; log settings change what the server logs."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import expect_error, infer, wait_until
from serverproc import ServerProcess
from test_tracing import MLP_X, SERVER_KIND, Receiver, attrs, otel_env, traceparent

ADD_SUB_X = {"INPUT0": MLP_X["input"][:, :16], "INPUT1": MLP_X["input"][:, :16]}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.stop(0)


@pytest.fixture(scope="module")
def traced(make_repo, receiver) -> Iterator[ServerProcess]:
    proc = ServerProcess(make_repo("mlp", "add_sub"), env=otel_env(receiver.port)).start()
    yield proc
    proc.assert_clean_exit()


def traced_ids(receiver: Receiver) -> set[str]:
    """Request ids of the requests whose server span reached the receiver."""
    with receiver.lock:
        return {attrs(s).get("skewless.request.id") for s in receiver.spans if s.kind == SERVER_KIND}


def flush(client, receiver: Receiver) -> None:
    """Waits until every span sent so far has arrived: a request traced for sure (its own traceparent),
    sent last, arrives after them."""
    header, trace_id, _ = traceparent()
    infer(client, "mlp", MLP_X, headers={"traceparent": header})
    assert len(receiver.wait_for(trace_id, 4)) == 4


def rest_json(srv: ServerProcess, method: str, path: str, doc: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{srv.rest_url}{path}", method=method,
                                 data=json.dumps(doc).encode() if doc is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_trace_settings_change_what_is_exported(traced, receiver):
    with grpcclient.InferenceServerClient(traced.grpc_url) as c:
        start = c.get_trace_settings(as_json=True)["settings"]
        assert start["trace_level"]["value"] == ["TIMESTAMPS"] and start["trace_rate"]["value"] == ["0"]
        assert start["trace_count"]["value"] == ["-1"] and start["trace_mode"]["value"] == ["opentelemetry"]
        assert "trace" in c.get_server_metadata().extensions

        # rate 0 (the default root sampler): requests without a traceparent are not traced
        infer(c, "mlp", MLP_X, request_id="rate0")
        # rate 2: every other request is
        c.update_trace_settings(settings={"trace_rate": "2"})
        for i in range(4):
            infer(c, "mlp", MLP_X, request_id=f"rate2-{i}")
        flush(c, receiver)
        ids = traced_ids(receiver)
        assert "rate0" not in ids
        assert {f"rate2-{i}" for i in range(4)} & ids == {"rate2-0", "rate2-2"}

        # a model's own level: mlp OFF (even with a sampled traceparent), add_sub still traced
        c.update_trace_settings(settings={"trace_rate": "1"})
        c.update_trace_settings("mlp", settings={"trace_level": ["OFF"]})
        assert c.get_trace_settings("mlp", as_json=True)["settings"]["trace_level"]["value"] == ["OFF"]
        header, off_id, _ = traceparent()
        infer(c, "mlp", MLP_X, headers={"traceparent": header}, request_id="mlp-off")
        infer(c, "add_sub", ADD_SUB_X, request_id="add-sub-on")
        c.update_trace_settings("mlp", settings={"trace_level": None})  # cleared: the server's level again
        assert c.get_trace_settings("mlp", as_json=True)["settings"]["trace_level"]["value"] == ["TIMESTAMPS"]
        flush(c, receiver)
        ids = traced_ids(receiver)
        assert "add-sub-on" in ids and "mlp-off" not in ids and receiver.of_trace(off_id) == []

        # count: one more trace, then none
        c.update_trace_settings(settings={"trace_count": "1"})
        infer(c, "mlp", MLP_X, request_id="count-1")
        infer(c, "mlp", MLP_X, request_id="count-2")
        assert c.get_trace_settings(as_json=True)["settings"]["trace_count"]["value"] == ["0"]
        c.update_trace_settings(settings={"trace_count": None, "trace_rate": None})
        flush(c, receiver)
        ids = traced_ids(receiver)
        assert "count-1" in ids and "count-2" not in ids

    # over HTTP: level OFF everywhere, then back
    with httpclient.InferenceServerClient(traced.rest_url) as h:
        assert h.update_trace_settings(settings={"trace_level": ["OFF"]})["trace_level"] == ["OFF"]
        header, off_id, _ = traceparent()
        with grpcclient.InferenceServerClient(traced.grpc_url) as c:
            infer(c, "mlp", MLP_X, headers={"traceparent": header})
            settings = h.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "log_frequency": "5"})
            assert settings["log_frequency"] == "5" and h.get_trace_settings()["trace_rate"] == "0"
            flush(c, receiver)
        assert receiver.of_trace(off_id) == []


def test_trace_setting_errors(traced):
    with grpcclient.InferenceServerClient(traced.grpc_url) as c:
        expect_error(lambda: c.update_trace_settings(settings={"trace_sampler": "1"}), "INVALID_ARGUMENT",
                     "unknown trace setting 'trace_sampler'")
        expect_error(lambda: c.update_trace_settings(settings={"trace_rate": "often"}), "INVALID_ARGUMENT",
                     "Unable to parse 'trace_rate', got: often")
        expect_error(lambda: c.update_trace_settings(settings={"trace_level": ["OFF", "TIMESTAMPS"]}),
                     "INVALID_ARGUMENT", "Expect only one trace level 'OFF' is specified")
        expect_error(lambda: c.update_trace_settings(settings={"trace_file": "/tmp/x"}), "UNIMPLEMENTED",
                     "trace file location can not be updated through network protocol")
        expect_error(lambda: c.get_trace_settings("nope"), "NOT_FOUND", "Request for unknown model : nope")
        # nothing changed by the refused updates
        assert c.get_trace_settings(as_json=True)["settings"]["trace_rate"]["value"] == ["0"]
    assert rest_json(traced, "POST", "/v2/trace/setting", {"trace_rate": 3})[0] == 400
    status, doc = rest_json(traced, "GET", "/v2/models/nope/trace/setting")
    assert status == 404 and "unknown model" in doc["error"]


def test_trace_settings_without_an_exporter(make_repo):
    proc = ServerProcess(make_repo("mlp")).start()
    try:
        with grpcclient.InferenceServerClient(proc.grpc_url) as c:
            assert c.get_trace_settings(as_json=True)["settings"]["trace_level"]["value"] == ["OFF"]
            assert "trace" not in c.get_server_metadata().extensions
            expect_error(lambda: c.update_trace_settings(settings={"trace_rate": "1"}), "FAILED_PRECONDITION",
                         "OTEL_TRACES_EXPORTER=otlp")
    finally:
        proc.assert_clean_exit()


def test_log_settings_change_what_is_logged(make_repo):
    proc = ServerProcess(make_repo("mlp", "add_sub", "identity_all"), "--model-control-mode", "explicit").start()
    try:
        with grpcclient.InferenceServerClient(proc.grpc_url) as c:
            start = c.get_log_settings(as_json=True)["settings"]
            assert start["log_info"]["bool_param"] and start["log_format"]["string_param"] == "default"
            assert "logging" in c.get_server_metadata().extensions
            c.update_log_settings({"log_info": False})
            c.load_model("mlp")  # logs "model 'mlp': serving versions [1]" at INFO
            c.update_log_settings({"log_info": True, "log_format": "ISO8601"})
            c.load_model("add_sub")
            expect_error(lambda: c.update_log_settings({"log_format": "fancy"}), "INVALID_ARGUMENT",
                         "invalid argument for --log_format, got: fancy")
            expect_error(lambda: c.update_log_settings({"log_file": "/tmp/x.log"}), "UNIMPLEMENTED",
                         "log file location can not be updated through network protocol")
            expect_error(lambda: c.update_log_settings({"log_colour": True}), "INVALID_ARGUMENT",
                         "unknown log setting 'log_colour'")
        status, doc = rest_json(proc, "POST", "/v2/logging", {"log_info": False, "log_verbose_level": 0})
        assert status == 200 and doc["log_info"] is False and doc["log_format"] == "ISO8601"
        with grpcclient.InferenceServerClient(proc.grpc_url) as c:
            c.load_model("identity_all")
        assert rest_json(proc, "GET", "/v2/logging")[1]["log_info"] is False
        wait_until(lambda: "'add_sub': serving versions" in proc.stderr_text(), 10, "the add_sub load log line")
        text = proc.stderr_text()
        assert "'mlp': serving versions" not in text and "'identity_all': serving versions" not in text
        line = next(ln for ln in text.splitlines() if "'add_sub': serving versions" in ln)
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO ", line), line
    finally:
        proc.assert_clean_exit()
