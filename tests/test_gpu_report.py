"""benchmarks/gpu_report.py runs (for a fraction of a second) and writes its JSON: CPU always, GPU where usable."""

from __future__ import annotations

import json

import pytest

from skewless.benchmarks import gpu_report

pytestmark = pytest.mark.slow  # the slow tier: a benchmark smoke run


def test_gpu_report_writes_cpu_figures_and_says_why_gpu_is_missing(tmp_path, capsys):
    assert gpu_report.main(["--seconds", "0.05", "--batches", "8,16", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_report.json").read_text())
    cpu = result["variants"]["cpu"]
    assert [p["batch"] for p in cpu["points"]] == [8, 16]
    assert all(p["rows_per_s"] > 0 and p["calls"] >= 3 for p in cpu["points"])
    assert cpu["providers"][0] == "CPUExecutionProvider"
    if result["gpu"]:
        assert {"gpu_run", "gpu_bound", "gpu_pinned"} <= set(result["variants"])
        assert all(v["max_abs_diff_vs_cpu"] < 1e-3 for v in result["variants"].values())
    else:
        assert result["gpu_unavailable_reason"] and set(result["variants"]) == {"cpu"}
    assert "rows/s" in capsys.readouterr().out
