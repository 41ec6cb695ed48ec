"""examples/fraud/run.py, the new user's journey (issue 24), run as a user runs it: a subprocess that makes
data with nulls in every column type, fits, trains, exports, serves and scores over gRPC and HTTP, and
must find every served row bit-equal to offline."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "examples" / "fraud" / "run.py"
RAW_COLUMNS = ["amount", "merchant_category", "country", "hour", "user_id", "device_risk", "velocity_1h",
               "account_age_days", "card_present"]
FLOAT_COLUMNS = {"amount", "device_risk", "velocity_1h"}

pytestmark = pytest.mark.slow


def _run(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--workdir", str(tmp_path / "work"), "--json", str(out),
                           "--no-progress", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc, json.loads(out.read_text()) if out.exists() else None


def _check_all_equal(proc: subprocess.CompletedProcess, summary: dict | None) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert summary is not None
    assert set(summary["transports"]) == {"grpc", "http"}
    for protocol, counts in summary["transports"].items():
        assert counts == {"equal": summary["holdout_rows"], "mismatch": 0}, protocol
        assert f"{protocol:<5} equal" in proc.stdout
    assert summary["holdout_auc"] > 0.6  # the model learnt the label, so its scores are worth comparing


def test_every_column_type_with_nulls_scores_bit_equal_over_grpc_and_http(tmp_path):
    proc, summary = _run(tmp_path, "--rows", "3000")
    _check_all_equal(proc, summary)
    assert summary["holdout_rows"] == 600
    assert all(summary["nulls"][c] > 0 for c in RAW_COLUMNS), summary["nulls"]
    assert summary["holdout_rows_with_nulls"] > 0
    folder = tmp_path / "work" / "models" / "fraud"
    assert (folder / "config.pbtxt").is_file()
    # the spec, the model, held-out rows with their expected outputs, and the prediction-drift reference
    assert {p.name for p in (folder / "1").iterdir()} == {"model.onnx", "features.json", "validation.json",
                                                          "drift_reference.json"}


def test_float_gaps_only_score_bit_equal_on_any_server(tmp_path):
    """Nulls in float columns only travel as NaN, which every server since the export takes: the rest of
    the journey (data, fit, transform, train, export, serve, client, comparison) is checked here for sure."""
    proc, summary = _run(tmp_path, "--rows", "1500", "--float-nulls-only")
    _check_all_equal(proc, summary)
    assert {c for c in RAW_COLUMNS if summary["nulls"][c]} == FLOAT_COLUMNS
    assert summary["holdout_rows_with_nulls"] > 0


def test_interrupt_stops_the_server(tmp_path):
    """Ctrl-C (SIGINT) while serving (--keep-serving): the script exits 130 and its server is gone."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--rows", "200", "--float-nulls-only",
                             "--no-progress", "--workdir", str(tmp_path / "work"),
                             "--keep-serving"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    server_pid = None
    lines = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("serving 'fraud'"):
                server_pid = int(line.rsplit("pid ", 1)[1].rstrip(")\n"))
            if line.startswith("keeping the server up"):
                break
        assert server_pid is not None, "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "server stopped" in rest
    deadline = time.monotonic() + 10
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _script_module():
    spec = importlib.util.spec_from_file_location("fraud_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_counts_any_changed_byte_as_a_mismatch():
    compare = _script_module().compare
    probs = np.array([[0.25, 0.75], [np.nan, 1.0], [0.0, 1.0]], dtype=np.float32)
    labels = np.array([1, 0, 1], dtype=np.int64)
    want = {"probabilities": probs, "label": labels}
    assert compare({"probabilities": probs.copy(), "label": labels.copy()}, want).all()  # NaN bytes equal
    flipped = probs.copy()
    flipped.view(np.uint32)[0, 1] ^= 1  # one ulp
    signed = probs.copy()
    signed[2, 0] = -0.0
    assert compare({"probabilities": flipped, "label": labels}, want).tolist() == [False, True, True]
    assert compare({"probabilities": signed, "label": labels}, want).tolist() == [True, True, False]
    assert not compare({"probabilities": probs.astype(np.float64), "label": labels}, want).any()
    assert not compare({"label": labels}, want).any()
