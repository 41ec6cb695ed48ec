"""Smoke test of the HTTP vs gRPC report: one very short run writes sane JSON, PNG and table.

It proves the script works end to end (the server started on free gRPC and REST ports and stopped, every
transport × concurrency point present, no errors, replies spot-checked against onnxruntime); it never
judges a speed, which on a shared CI machine would only be noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("psutil")
pytest.importorskip("matplotlib")
pytest.importorskip("onnx")

from helpers import child_servers  # noqa: E402

from skewless.benchmarks import http_report  # noqa: E402

pytestmark = pytest.mark.slow  # the slow tier: a benchmark smoke run


def _our_servers() -> list[str]:
    return child_servers("skewless.server.frontend.cli")


def test_quick_run_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(_our_servers())  # e.g. the suite's session-scoped shared server
    rc = http_report.main(["--quick", "--duration", "0.4", "--warmup", "0.1", "--rounds", "1",
                           "--out", str(tmp_path)])
    assert rc == 0
    assert not set(_our_servers()) - before, "a server was left running"
    assert (tmp_path / "http.png").stat().st_size > 0
    table = (tmp_path / "http.txt").read_text()
    assert table.strip() in capsys.readouterr().out
    for name in ("gRPC unary", "HTTP JSON", "HTTP binary", "HTTP ÷ gRPC"):
        assert name in table

    data = json.loads((tmp_path / "http.json").read_text())
    s = data["summary"]
    got = {(p["transport"], p["clients"]) for p in s["points"]}
    assert got == {(t, c) for t in ("grpc", "http_json", "http_binary") for c in (1, 64)}
    for p in s["points"]:
        assert p["rounds"] == 1 and p["errors"] == 0 and p["check_failed"] == 0, p
        assert p["checked"] > 0 and p["rps"] > 0, p
        assert 0 < p["p50_ms"] <= p["p99_ms"], p
        assert p["cpu_us_per_request"] is not None and p["cpu_us_per_request"] > 0, p
    assert {(r["transport"], r["clients"]) for r in s["ratios"]} == {
        (t, c) for t in ("http_json", "http_binary") for c in (1, 64)}
    by = {(p["transport"], p["clients"]): p for p in s["points"]}
    for r in s["ratios"]:
        assert len(r["rounds"]) == 1
        h, g = by[(r["transport"], r["clients"])], by[("grpc", r["clients"])]
        assert r["rps"] == pytest.approx(h["rps"] / g["rps"])
        assert r["cpu"] == pytest.approx(h["cpu_us_per_request"] / g["cpu_us_per_request"])
    for key, run in data["runs"].items():  # each point's own load-generator result, kept whole
        (pt,) = run["points"]
        assert pt["concurrency"] == int(key.split("_c")[1].split("_")[0])
        assert ("http" in run["target"]) == key.startswith("http")
