"""Smoke test of the compute report: one very short run (the batching report's part left out: its own test
covers it) writes sane JSON, PNG and table, with --workers 1 and 2 measured and no server left running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("psutil")
pytest.importorskip("matplotlib")
pytest.importorskip("onnx")

from helpers import benchmark_servers  # noqa: E402

from skewless.benchmarks import compute_report  # noqa: E402

pytestmark = pytest.mark.slow  # the slow tier: a benchmark smoke run (servers with --workers 1 and 2)


def test_quick_run_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(benchmark_servers())
    rc = compute_report.main(["--quick", "--duration", "0.4", "--warmup", "0.1", "--skip-batching",
                              "--handoff-trips", "200", "--out", str(tmp_path)])
    assert rc == 0
    assert not set(benchmark_servers()) - before, "a server was left running"
    assert (tmp_path / "compute.png").stat().st_size > 0
    table = (tmp_path / "compute.txt").read_text()
    assert "own ÷ echo" in table and table.strip() in capsys.readouterr().out
    data = json.loads((tmp_path / "compute.json").read_text())
    s = data["summary"]
    h = s["heavy"]
    assert h["echo"]["cpu_us_per_request"] > 0 and h["echo"]["rps"] > 0
    assert h["ort_cpu_us_per_request"] > 0 and h["inprocess_rows_per_s"] > 0
    assert h["server_own_us_per_request"] == pytest.approx(h["server_cpu_us_per_request"]
                                                           - h["ort_cpu_us_per_request"])
    assert h["overhead_vs_echo"] == pytest.approx(h["server_own_us_per_request"] / h["echo"]["cpu_us_per_request"])
    assert 0 < h["ceiling_rows_per_s"] <= h["inprocess_rows_per_s"]
    assert set(s["workers"]) == {"1", "2"}
    for w in ("1", "2"):
        heavy, mlp = s["workers"][w]["heavy"], s["workers"][w]["mlp"]
        assert heavy["errors"] == 0 and mlp["errors"] == 0
        assert heavy["rows_per_s"] == pytest.approx(heavy["rps"] * 64) and heavy["mean_batch_size"] >= 64
        assert mlp["concurrency"] == 64 and mlp["cpu_us_per_request"] > 0
    # statistics summed over both workers: every row the client got answered was counted once
    stats = data["runs"]["heavy_w2"]["points"][0]["server_stats"]
    assert stats and stats["mean_batch_size"] >= 64
    fe = s["frontend_design"]["handoff"]
    assert fe["round_trips"] == 200 and fe["cpu_us"] > 0 and fe["request_bytes"] == 64 * 256 * 4
    assert s["targets"][0]["value"] == h["overhead_vs_echo"]
    # the feature stage: both churn servers answered, the input stage per batch is measured on each, and the
    # feature model's holds the kernel (so it costs more than merging the two plain tensors)
    ft = s["features"]
    for key in ("features", "plain"):
        assert ft[key]["errors"] == 0 and ft[key]["rps"] > 0 and ft[key]["mean_batch_size"] == 64
        assert ft[key]["batch_input_us_mean"] is not None and ft[key]["batch_infer_us_mean"] > 0
    assert ft["features"]["batch_input_us_mean"] > ft["plain"]["batch_input_us_mean"]
    assert ft["kernel_in_process"]["us_per_batch"] > 0
    assert "feature stage" in table
