"""benchmarks/registry_report.py runs end to end and writes its JSON, table and PNG (figures not judged)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("matplotlib")

from helpers import child_servers  # noqa: E402

from skewless.benchmarks import registry_report  # noqa: E402


@pytest.mark.slow
def test_quick_run_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    markers = ("skewless.server.frontend.cli", "mlflow server")
    before = set(child_servers(*markers))
    with_mlflow = importlib.util.find_spec("mlflow") is not None
    rc = registry_report.main(["--quick", "--steady", "0.3", "--warmup", "0.1", "--clients", "4", "--swaps", "1",
                               "--versions", "3", "--poll-secs", "0.2", "--payload-mb", "0.1", "--cache-mb", "1",
                               "--mlflow-versions", "2" if with_mlflow else "0", "--out", str(tmp_path)])
    assert rc == 0
    assert not set(child_servers(*markers)) - before, "a server was left running"
    assert (tmp_path / "registry.png").stat().st_size > 0
    assert (tmp_path / "registry.txt").read_text().strip() in capsys.readouterr().out
    data = json.loads((tmp_path / "registry.json").read_text())
    assert data["requests"]["failed"] == 0 and data["requests"]["mixed_versions"] == 0
    assert [s["version"] for s in data["swaps"]] == [2] and [s["version"] for s in data["idle_publishes"]] == [3]
    assert data["publish_to_serving_s"]["max"] >= data["publish_to_serving_s"]["median"] > 0
    assert 0 < data["cache"]["bytes_after_versions"] <= data["cache"]["unbounded_would_be_bytes"]
    if with_mlflow:
        m = data["mlflow"]
        assert [p["version"] for p in m["publishes"]] == [2, 3] and [a["version"] for a in m["alias_moves"]] == [2, 1]
        assert m["publish_to_serving_s"]["max"] >= m["publish_to_serving_s"]["median"] > 0
        assert "MLflow publish-to-serving: median" in (tmp_path / "registry.txt").read_text()
