"""Smoke test of the batching report: one very short run of every section writes sane JSON, PNG and table.

It proves the script works end to end (servers started and stopped, every figure present, no errors, replies
spot-checked); it never judges a speed, which on a shared CI machine would only be noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("psutil")
pytest.importorskip("matplotlib")
pytest.importorskip("onnx")

from helpers import benchmark_servers  # noqa: E402

from skewless.benchmarks import batching_report  # noqa: E402

pytestmark = pytest.mark.slow  # the slow tier: a benchmark smoke run (servers started and stopped for every section)


def test_quick_run_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(benchmark_servers())  # e.g. the suite's session-scoped shared server
    rc = batching_report.main(["--quick", "--duration", "0.3", "--warmup", "0.1", "--rounds", "2",
                             "--out", str(tmp_path)])
    assert rc == 0
    assert not set(benchmark_servers()) - before, "a server was left running"
    assert (tmp_path / "batching.png").stat().st_size > 0
    table = (tmp_path / "batching.txt").read_text()
    assert "targets" in table and table.strip() in capsys.readouterr().out
    data = json.loads((tmp_path / "batching.json").read_text())
    s = data["summary"]

    def measured(r: dict, overload_ok: bool = False) -> None:
        assert not r.get("missing"), r
        assert r["rps"] > 0 and (overload_ok or r["errors"] == 0), r
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["cpu_us_per_request"] is not None and r["cpu_us_per_request"] > 0

    for key in ("on", "off", "echo"):
        measured(s["unary64"][key])
        assert s["unary64"][key]["concurrency"] == 64 and not s["unary64"][key]["stream"]
    for key in ("skewless", "echo"):
        for what in ("stream64", "streams64"):  # one stream, and 64 streams with one request each
            measured(s[what][key])
            assert s[what][key]["stream"] and s[what][key]["concurrency"] == 64
    assert data["runs"][f"on_streams_r{s['rounds']['streams']['chosen']}"]["config"]["streams"] == 64
    for key in ("on", "off"):
        measured(s["single_client"][key])
        assert s["single_client"][key]["concurrency"] == 1
    for key in ("on", "off"):
        assert s["unary64"][key]["mean_batch_size"] >= 1  # skewless reports ModelStatistics
    assert s["unary64"]["echo"]["mean_batch_size"] is None  # the echo server does not

    assert s["max_rate_rps"] > 0
    assert [o["percent"] for o in s["open_loop"]] == [50, 80, 95]
    for o in s["open_loop"]:
        assert o["offered_rate"] == pytest.approx(s["max_rate_rps"] * o["percent"] / 100)
        for key in ("without", "adaptive"):
            measured(o[key], overload_ok=True)  # an open loop past what the server sustains (checked below)
            assert o[key]["mode"] == "open" and o[key]["offered_rate"] == pytest.approx(o["offered_rate"])

    h = s["heavy"]
    measured(h["skewless"])
    assert h["skewless"]["rows_per_s"] == pytest.approx(h["skewless"]["rps"] * 64)
    assert h["skewless"]["mean_batch_size"] >= 64 and h["skewless"]["batch_sizes"]
    assert all(int(size) % 64 == 0 for size in h["skewless"]["batch_sizes"])  # whole 64-row requests
    assert h["inprocess"]["rows_per_s"] > 0 and h["inprocess"]["sizes"]
    assert set(h["inprocess"]["sizes"]) <= set(h["skewless"]["batch_sizes"])
    assert h["fraction"] == pytest.approx(h["skewless"]["rows_per_s"] / h["inprocess"]["rows_per_s"])

    for key in ("unary", "stream", "streams"):  # alternating rounds, the median one shown
        r = s["rounds"][key]
        assert len(r["rounds"]) == 2 and r["chosen"] in (0, 1)
        # 0.3 s points: on a loaded machine a point can end with nothing answered (its ratios then None or 0),
        # but not every round
        assert any(x["cpu_ratio"] and x["rps_ratio"] for x in r["rounds"]), r["rounds"]
        assert all(x["cpu_ratio"] is None or x["cpu_ratio"] > 0 for x in r["rounds"]), r["rounds"]
    assert data["runs"]["on"]["points"][1:] == data["runs"][f"on_r{s['rounds']['unary']['chosen']}"]["points"]
    r = s["rounds"]["single"]  # 1 client, batching on and off alternating, the median p50 ratio shown
    assert len(r["rounds"]) == 2 and r["chosen"] in (0, 1)
    assert any(x["p50_ratio"] for x in r["rounds"]), r["rounds"]  # as above: not every 0.3 s round measures
    assert all(x[k] is None or x[k] > 0 for x in r["rounds"] for k in ("p50_ratio", "p99_ratio")), r["rounds"]
    chosen = r["chosen"]
    ranked = sorted(r["rounds"], key=lambda x: math.inf if x["p50_ratio"] is None else x["p50_ratio"])
    assert chosen == ranked[(len(ranked) - 1) // 2]["round"]  # the median round is the one shown
    # The summary shows that round's own points (the same measurements, not figures compared with each other).
    for key in ("on", "off"):
        shown = data["runs"][f"{key}_single_r{chosen}"]["points"][0]
        assert data["runs"][key]["points"][0] == shown
        assert s["single_client"][key]["p50_ms"] == shown["latency_ms"]["p50"]

    assert len(s["targets"]) == 12
    for t in s["targets"]:
        assert t["value"] is not None and t["met"] in (True, False), t

    configs = data["configs"]
    assert "dynamic_batching" in configs["on"] and "dynamic_batching" not in configs["off"]
    assert "skewless.latency_slo_ms" in configs["adaptive"] and "dynamic_batching" in configs["adaptive"]
    assert "skewless.latency_slo_ms" not in configs["plain"] and "dynamic_batching" in configs["plain"]
    assert "preferred_batch_size" in configs["heavy"] and "max_batch_size: 512" in configs["heavy"]
    for key in ("on", "on_stream", "on_streams", "off", "plain", "adaptive", "echo", "echo_stream", "echo_streams",
                "heavy"):
        for p in data["runs"][key]["points"]:
            assert not batching_report.failed(p) and p["checks"]["checked"] > 0
