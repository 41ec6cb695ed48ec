"""Smoke test of the telemetry cost report: one very short run writes sane JSON, PNG and table.

It proves the script works end to end (four servers started on free ports and stopped, every variant ×
concurrency point present, no errors, replies spot-checked against onnxruntime, /metrics scraped and OTLP
metrics received from the ``on`` server, none from ``off``); it never judges a speed, which on a shared CI
machine would only be noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("psutil")
pytest.importorskip("matplotlib")
pytest.importorskip("onnx")

from helpers import child_servers  # noqa: E402

from skewless.benchmarks import telemetry_report  # noqa: E402

pytestmark = pytest.mark.slow  # the slow tier: a benchmark smoke run (four servers, an OTLP collector)

VARIANTS = ("off", "on", "traces_1.0", "on_dead_collector")


def test_quick_run_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(child_servers("skewless.server.frontend.cli"))  # e.g. the suite's shared server
    rc = telemetry_report.main(["--quick", "--duration", "0.4", "--warmup", "0.1", "--rounds", "1",
                                "--out", str(tmp_path)])
    assert rc == 0
    assert not set(child_servers("skewless.server.frontend.cli")) - before, "a server was left running"
    assert (tmp_path / "telemetry.png").stat().st_size > 0
    table = (tmp_path / "telemetry.txt").read_text()
    assert table.strip() in capsys.readouterr().out
    assert "telemetry on ÷ off CPU/request = " in table and "(target ≤ 1.05×)" in table

    data = json.loads((tmp_path / "telemetry.json").read_text())
    s = data["summary"]
    assert {(p["variant"], p["clients"]) for p in s["points"]} == {(v, c) for v in VARIANTS for c in (1, 64)}
    for p in s["points"]:
        assert p["rounds"] == 1 and p["errors"] == 0 and p["check_failed"] == 0, p
        assert p["checked"] > 0 and p["rps"] > 0, p
        assert p["cpu_us_per_request"] is not None and p["cpu_us_per_request"] > 0, p
        if p["variant"] == "off":
            assert p["scrapes"] == 0 and p["metric_exports"] == 0, p
    assert {(r["variant"], r["clients"]) for r in s["ratios"]} == {(v, c) for v in VARIANTS[1:] for c in (1, 64)}
    by = {(p["variant"], p["clients"]): p for p in s["points"]}
    on64 = next(r for r in s["ratios"] if r["variant"] == "on" and r["clients"] == 64)
    assert on64["cpu"] == pytest.approx(by[("on", 64)]["cpu_us_per_request"] / by[("off", 64)]["cpu_us_per_request"])
    assert s["on_cpu_ratio"] == on64["cpu"]
    # The in-process collector heard from the 'on' server (exports every second, so over the whole run).
    assert s["sinks"]["on"]["metric_exports"] > 0 and s["sinks"]["on"]["metric_points"] > 0
    env = data["config"]["variants"]
    assert env["off"] == {"argv_extra": ["--no-metrics"], "env": {}}
    assert env["on"]["env"]["OTEL_TRACES_SAMPLER_ARG"] == "0"
    assert env["traces_1.0"]["env"]["OTEL_TRACES_SAMPLER"] == "always_on"
    assert set(s["shutdown_s"]) == set(VARIANTS)
