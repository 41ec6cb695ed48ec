"""The soak script's short run (what CI affords): mixed load with swaps, 0 unexpected errors, outputs written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # the slow tier: a timed soak run with version swaps


def test_soak_short_run(tmp_path):
    out = tmp_path / "soak"
    r = subprocess.run([sys.executable, "-m", "skewless.benchmarks.soak_report", "--minutes", "0.2",
                        "--swap-every", "4", "--grpc", "2", "--streams", "1", "--http", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads((out / "soak.json").read_text())
    assert doc["unexpected_total"] == 0, doc["unexpected"]
    assert all(doc["requests"][k] > 0 for k in ("grpc", "stream", "http", "bad")), doc["requests"]
    assert len(doc["versions_answered"]) >= 2  # at least one swap happened under load
    assert doc["fds"]["end"] <= doc["fds"]["start"] + 8  # no descriptor leak across swaps
    assert len(doc["windows"]) == 4 and doc["windows"][0]["grpc"]["p99_ms"] is not None
    assert (out / "soak.png").stat().st_size > 10_000 and "unexpected errors: 0" in (out / "soak.txt").read_text()
