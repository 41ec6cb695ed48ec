"""benchmarks/transport_report.py runs for a second a point and writes its figures (a smoke run: no speed is
judged)."""

from __future__ import annotations

import json

import pytest
from helpers import benchmark_servers

from skewless.benchmarks import transport_report

pytestmark = pytest.mark.slow


def test_quick_transport_run_measures_both_transports_and_the_echo(tmp_path, capsys):
    before = set(benchmark_servers())
    rc = transport_report.main(["--quick", "--clients", "1,2", "--duration", "0.5", "--warmup", "0.2",
                                "--out", str(tmp_path)])
    assert rc == 0
    assert not set(benchmark_servers()) - before, "a server was left running"
    result = json.loads((tmp_path / "transport.json").read_text())
    for clients in ("1", "2"):
        for server in transport_report.SERVERS:
            (figures,) = result["rounds"][clients][server]
            assert figures["errors"] == 0 and figures["req/s"] > 0, (clients, server, figures)
            assert result["medians"][clients][server]["server CPU µs/req"] > 0
        assert result["ratios"][clients]["h2 ÷ aio"]["req/s"] > 0
    # only the 1-client goal applies without a 64-client point
    assert [g["goal"] for g in result["goals"]] == ["1 client: h2 p50 <= aio p50"]
    assert isinstance(result["goals"][0]["met"], bool)
    assert (tmp_path / "transport.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "skewless h2" in out and "h2 ÷ echo" in out
