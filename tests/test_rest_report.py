"""benchmarks/rest_report.py and its uvicorn echo: a smoke run (a second a point) that writes its figures and
leaves no server behind; no speed is judged. The echo itself answers a KServe v2 JSON reply of the model's
shape and stops on SIGTERM."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httptools")

from helpers import child_servers  # noqa: E402

from skewless.benchmarks import rest_report  # noqa: E402

pytestmark = pytest.mark.slow
MARKERS = ("skewless.server.frontend.cli", "skewless.benchmarks.rest_echo_server")


def test_rest_echo_answers_a_fixed_reply_of_the_models_shape():
    proc = subprocess.Popen([sys.executable, "-m", "skewless.benchmarks.rest_echo_server", "--port", "0",
                             "--model", "m", "--reply-rows", "3", "--reply-width", "2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(re.fullmatch(r"REST_ECHO_READY (\d+)\n", proc.stdout.readline()).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for body in (b"{}", b"x" * 200_000):  # a body over several reads is consumed as well
            conn.request("POST", "/v2/models/m/infer", body=body, headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            assert reply.status == 200
            (out,) = json.loads(reply.read())["outputs"]
            assert out["shape"] == [3, 2] and len(out["data"]) == 6 and out["datatype"] == "FP32"
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_quick_rest_run_measures_skewless_and_the_echo(tmp_path, capsys):
    before = set(child_servers(*MARKERS))
    rc = rest_report.main(["--quick", "--clients", "1,2", "--duration", "0.5", "--warmup", "0.2",
                           "--out", str(tmp_path)])
    assert rc == 0
    assert not set(child_servers(*MARKERS)) - before, "a server was left running"
    result = json.loads((tmp_path / "rest.json").read_text())
    for clients in ("1", "2"):
        for server in rest_report.SERVERS:
            (figures,) = result["rounds"][clients][server]
            assert figures["errors"] == 0 and figures["check_failed"] == 0 and figures["req/s"] > 0, figures
            assert result["medians"][clients][server]["server CPU µs/req"] > 0
        assert result["ratios"][clients]["skewless ÷ echo"]["req/s"] > 0
    assert result["goals"] == []  # the goals are at 64 clients
    assert (tmp_path / "rest.png").stat().st_size > 0
    assert "uvicorn echo" in capsys.readouterr().out
