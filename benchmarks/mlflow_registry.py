"""A real, throwaway MLflow tracking server (sqlite backend, proxied artifacts) and the user's way of putting a
model version into it, for the registry tests and benchmarks/registry_report.py.

Needs the full ``mlflow`` package (``pip install -e ".[test]"``): the server and the client a user registers
versions with. skewless itself talks to the server over plain REST (server/registry/mlflow_rest.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 (a free port), its store and artifacts in a temporary directory.

    ``--workers 1`` and no job execution: ~6 s to start and ~0.5 GB instead of ~11 s and ~3 GB."""

    def __init__(self, root: Path | None = None, port: int | None = None):
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="mlflow-server-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "server.log"

    def start(self) -> MlflowServer:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts")]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {START_TIMEOUT_S:.0f}s")

    def stop(self) -> None:
        """Stop the server and its worker processes (its own session); SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass

    def cleanup(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


def client(url: str):
    """An ``MlflowClient`` for ``url`` (without touching the process-wide tracking URI)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


def register_version(c: Any, name: str, version_dir: Path, alias: str | None = None) -> int:
    """Log ``version_dir``'s files as a run's ``model`` artifacts, register them as a new version of ``name``
    and, if given, point ``alias`` at it: what a training pipeline does. Returns the version number."""
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    exp = c.get_experiment_by_name("skewless") or None
    exp_id = exp.experiment_id if exp is not None else c.create_experiment("skewless")
    run = c.create_run(exp_id)
    c.log_artifacts(run.info.run_id, str(version_dir), "model")
    c.set_terminated(run.info.run_id)
    mv = c.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    version = int(mv.version)
    if alias:
        c.set_registered_model_alias(name, alias, version)
    return version


__all__ = ["MlflowServer", "client", "free_port", "register_version"]
