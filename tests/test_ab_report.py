"""benchmarks/ab_report.py runs for a second and writes its figures (a smoke run: no speed is judged)."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import benchmark_servers

from skewless.benchmarks import ab_report

pytestmark = pytest.mark.slow


def test_quick_ab_run_writes_both_sides(tmp_path, capsys):
    before = set(benchmark_servers())
    rc = ab_report.main(["--before", sys.executable, "--rounds", "2", "--clients", "2", "--duration", "1",
                         "--warmup", "0.3", "--out", str(tmp_path)])
    assert rc == 0
    assert not set(benchmark_servers()) - before, "a server was left running"
    result = json.loads((tmp_path / "ab.json").read_text())
    for side in ("before", "after"):
        assert len(result["rounds"][side]) == 2
        assert all(r["errors"] == 0 and r["req/s"] > 0 for r in result["rounds"][side])
        assert result["medians"][side]["server CPU µs/req"] > 0
    assert result["after_over_before"]["req/s"] > 0
    assert (tmp_path / "ab.png").stat().st_size > 0
    assert "after ÷ before" in capsys.readouterr().out
