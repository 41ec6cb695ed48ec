"""examples/fraud_aggregates/run.py (issue 29) as a user runs it: windowed aggregates fitted on a backfill,
history recorded through the ingest RPC, the held-out stream replayed through scoring bucket by bucket with
concurrent requests, in process and in Redis shared by two workers; every served feature tensor must equal
the backfill's bytes."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "fraud_aggregates" / "run.py"

pytestmark = pytest.mark.slow


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {module} (the example's extras)")


def test_served_aggregates_equal_the_backfill_in_process_and_in_redis(tmp_path: Path) -> None:
    for module in ("pandas", "sklearn", "skl2onnx", "tritonclient", "redis"):
        _needs(module)
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (Debian: apt-get install redis-server)")
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--events", "20000", "--held-out", "600", "--no-progress",
                           "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"
    summary = json.loads(out.read_text())
    assert summary["mismatching_rows"] == 0
    for run in ("in_process", "redis_two_workers"):
        assert summary[run]["features"] == {"rows": 600, "equal": 600, "mismatch": 0}
        assert summary[run]["recorded"] == 20000
        assert summary[run]["scores"]["within_1e-6"]


def test_a_bad_argument_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--events", "5"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--events >= 100" in proc.stderr
