"""Smoke test of ``latency_report --delay-spinning``: five 1-client configurations in short alternating slices
(skewless with and without a 200 µs delay; skewless, skewless with its old defaults and the naive server
on the heavy MLP), every reply checked, every server stopped, the table, JSON and PNG written. It never
judges a speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("psutil")
pytest.importorskip("matplotlib")
pytest.importorskip("onnx")

from helpers import child_servers  # noqa: E402

from skewless.benchmarks import latency_report  # noqa: E402

pytestmark = pytest.mark.slow
MARKERS = ("skewless.server.frontend.cli", "skewless.benchmarks.naive_server")


def test_delay_spinning_run_writes_five_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = set(child_servers(*MARKERS))
    rc = latency_report.main(["--delay-spinning", "--duration", "0.5", "--warmup", "0.2", "--out", str(tmp_path)])
    assert rc == 0
    assert not set(child_servers(*MARKERS)) - before, "a server was left running"
    data = json.loads((tmp_path / "delay_spinning.json").read_text())
    assert [r["name"] for r in data["rows"]] == [
        "skewless mlp_small delay 200us", "skewless mlp_small dynamic_batching {}", "skewless heavy_mlp",
        "skewless heavy_mlp old defaults", "naive heavy_mlp"]
    rounds = data["config"]["rounds"]
    assert rounds >= 2
    for r in data["rows"]:
        assert r["rps"] > 0 and r["errors"] == 0 and r["clients"] == 1, r
        assert r["checked"] == rounds and r["check_failed"] == 0, r
        assert len(r["slice_p50_ms"]) == rounds, r
    assert len(data["notes"]) == 4
    assert (tmp_path / "delay_spinning.png").stat().st_size > 0
    table = (tmp_path / "delay_spinning.txt").read_text()
    assert table.strip() in capsys.readouterr().out
