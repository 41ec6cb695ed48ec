"""Smoke test of the shared-memory report: one very short run writes sane JSON, PNG and table (it proves
the script runs end to end; it never judges a speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("psutil")
pytest.importorskip("matplotlib")

from helpers import child_servers  # noqa: E402

from skewless.benchmarks import shm_report  # noqa: E402

pytestmark = pytest.mark.slow


def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    before = set(child_servers("skewless.server.frontend.cli"))
    assert shm_report.main(["--quick", "--duration", "0.3", "--warmup", "0", "--out", str(tmp_path)]) == 0
    assert not set(child_servers("skewless.server.frontend.cli")) - before, "a server was left running"
    assert (tmp_path / "shm.png").stat().st_size > 0
    table = (tmp_path / "shm.txt").read_text()
    for name in ("gRPC", "REST binary", "system shm", "1MiB", "16MiB"):
        assert name in table
    s = json.loads((tmp_path / "shm.json").read_text())["summary"]
    assert {(p["size"], p["transport"]) for p in s["points"]} == {
        (size, t) for size in ("1MiB", "16MiB") for t in ("grpc", "http_binary", "shm")}
    for p in s["points"]:
        assert p["requests"] >= 3 and 0 < p["p50_ms"] <= p["p99_ms"] and p["cpu_us_per_request"] > 0, p
    assert len(s["ratios"]) == 4 and all(r["p50_ms"] > 0 for r in s["ratios"])
