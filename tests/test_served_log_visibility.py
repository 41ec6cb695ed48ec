"""The served-feature log is readable while the server runs (issue 24): with the default rotation a logged row
reaches a closed Parquet file within seconds, ``FeatureLogger.flush`` closes the open file on demand, and a
directory holding only files still being written says so instead of just "no files"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
from helpers import RPC_TIMEOUT, wait_until
from serverproc import ServerProcess

from skewless.examples.generate import churn_dataset, write_churn_model
from skewless.native.fileio import count_rows, data_files
from skewless.native.spec import FeatureSpec
from skewless.server.features.served_log import FeatureLogger, LogSettings
from skewless.server.features.stage import FeatureStage

DATATYPES = {"tenure_months": "FP64", "monthly_charges": "FP64", "support_calls": "INT64", "senior": "BOOL",
             "contract": "BYTES", "payment_method": "BYTES", "region": "BYTES"}


def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    return {k: v for k, v in churn_dataset(n, seed=seed).items() if k in DATATYPES}


def _logged_rows(directory: Path) -> int:
    try:
        return count_rows(data_files(directory)) or 0
    except FileNotFoundError:
        return 0


def test_rows_logged_by_a_running_server_are_readable_within_seconds(tmp_path):
    repo, log_dir = tmp_path / "repo", tmp_path / "log"
    repo.mkdir()
    write_churn_model(tmp_path / "src")
    (tmp_path / "src" / "churn").rename(repo / "churn")
    cfg = repo / "churn" / "config.pbtxt"  # the default rotation: no rotate_* parameters
    cfg.write_text(cfg.read_text() + "".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
        for k, v in {"skewless.feature_log_rate": "1", "skewless.feature_log_dir": str(log_dir)}.items()))
    server = ServerProcess(repo).start()
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        sent = 0
        for i, n in enumerate((5, 12, 1)):
            rows = _rows(n, seed=i)
            inputs = []
            for name, datatype in DATATYPES.items():
                inp = grpcclient.InferInput(name, [n, 1], datatype)
                inp.set_data_from_numpy(rows[name].reshape(-1, 1))
                inputs.append(inp)
            client.infer("churn", inputs, request_id=f"v{i}", client_timeout=RPC_TIMEOUT)
            sent += n
        client.close()
        # Bounded wait, no timing asserted: the rows become readable while the server keeps running.
        wait_until(lambda: _logged_rows(log_dir) == sent, 60, f"{sent} logged rows in closed files")
        assert server.proc.poll() is None
        spec = repo / "churn" / "1" / "features.json"
        done = subprocess.run([sys.executable, "-m", "skewless.server.frontend.cli", "skew-check", "--log",
                               str(log_dir), "--spec", str(spec), "--no-progress"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"rows compared: {sent}" in done.stdout and "mismatching values: 0" in done.stdout
        assert server.proc.poll() is None
    finally:
        server.assert_clean_exit()


def test_flush_closes_the_open_file_and_logging_goes_on(tmp_path):
    write_churn_model(tmp_path / "model")
    spec = FeatureSpec.load(tmp_path / "model" / "churn" / "1" / "features.json")
    logger = FeatureLogger(LogSettings(tmp_path / "log", 1.0, rotate_seconds=3600.0), spec, "churn", 1)
    stage = FeatureStage(spec, "churn", 1, logger)
    rows = _rows(30, seed=5)
    stage.transform_batch([stage.admit({k: v[:10].reshape(-1, 1) for k, v in rows.items()}, "a")])
    assert logger.flush(30)
    files = sorted((tmp_path / "log" / "churn" / "1").glob("*.parquet"))
    assert len(files) == 1 and pq.read_table(files[0]).num_rows == 10
    stage.transform_batch([stage.admit({k: v[10:].reshape(-1, 1) for k, v in rows.items()}, "b")])
    stage.close()
    files = sorted((tmp_path / "log" / "churn" / "1").glob("*.parquet"))
    log = pa.concat_tables([pq.read_table(f) for f in files])
    assert len(files) == 2 and log.column("request_id").to_pylist() == ["a"] * 10 + ["b"] * 20
    assert logger.logged_rows == 30 and logger.dropped_rows == 0 and logger.errors == 0


def test_a_directory_with_only_open_files_says_what_is_open(tmp_path):
    (tmp_path / "churn" / "1").mkdir(parents=True)
    (tmp_path / "churn" / "1" / "features-20261207T000000Z-1-00001.parquet.tmp").write_bytes(b"PAR1" * 1000)
    with pytest.raises(FileNotFoundError, match=r"1 file\(s\) still being written "
                                                r"\(features-20261207T000000Z-1-00001\.parquet\.tmp, 0\.0 MB\)"):
        data_files(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.parquet/\.csv/\.arrow files under \S+empty$"):
        data_files(tmp_path / "empty")


def test_a_failed_write_drops_its_rows_and_the_writer_goes_on(tmp_path, caplog):
    write_churn_model(tmp_path / "model")
    spec = FeatureSpec.load(tmp_path / "model" / "churn" / "1" / "features.json")
    (tmp_path / "log").write_text("a file where the log directory should be")
    logger = FeatureLogger(LogSettings(tmp_path / "log", 1.0), spec, "churn", 1)
    stage = FeatureStage(spec, "churn", 1, logger)
    rows = _rows(8, seed=6)
    stage.transform_batch([stage.admit({k: v[:3].reshape(-1, 1) for k, v in rows.items()}, "a")])
    assert logger.flush(30)
    assert logger.errors == 1 and logger.dropped_rows == 3 and logger.logged_rows == 0
    assert any("feature log of model 'churn' version 1: writing failed on 1 records" in r.getMessage()
               for r in caplog.records)
    (tmp_path / "log").unlink()  # the directory can be made now: the same writer thread logs again
    stage.transform_batch([stage.admit({k: v[3:].reshape(-1, 1) for k, v in rows.items()}, "b")])
    stage.close()
    files = sorted((tmp_path / "log" / "churn" / "1").glob("*.parquet"))
    assert len(files) == 1 and pq.read_table(files[0]).column("request_id").to_pylist() == ["b"] * 5
    assert logger.logged_rows == 5 and logger.dropped_rows == 3 and logger.errors == 1
