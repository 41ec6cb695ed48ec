"""Start ``skewless serve`` as a real subprocess on 127.0.0.1 and stop it the way an orchestrator does.

The server is asked for port 0 (the kernel picks a free port) and reports the ports it bound on its
``SKEWLESS_READY grpc=HOST:PORT http=HOST:PORT rest=HOST:PORT`` line (``http`` is the metrics/health port,
``rest`` the HTTP/REST API), so two test runs never race for a port.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from skewless.server.frontend.transport_settings import DEFAULT_TRANSPORT

READY_PREFIX = "SKEWLESS_READY"
_READY_RE = re.compile(r"^SKEWLESS_READY grpc=(\S+):(\d+) http=(\S+):(\d+) rest=(\S+):(\d+)\s*$")


class ServerProcess:
    """One ``python -m skewless.server.frontend.cli serve`` subprocess.

    ``grpc_url`` and ``rest_url`` are what tritonclient.grpc / tritonclient.http take (``host:port``),
    ``http_url`` the base of the health probes.
    """

    # The gRPC transport (--grpc-transport) of servers made without naming one: conftest.py sets it for each
    # test of a module marked ``grpc_transports`` (that module's tests then run on each transport).
    grpc_transport = DEFAULT_TRANSPORT

    def __init__(self, repository: Path, *extra_args: str, start_timeout: float = 30.0,
                 env: dict[str, str] | None = None, transport: str | None = None):
        self.repository = Path(repository)
        self.transport = transport or ServerProcess.grpc_transport
        self.args = [
            sys.executable, "-m", "skewless.server.frontend.cli", "serve",
            "--model-repository", str(self.repository),
            "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
            *(("--grpc-transport", self.transport) if self.transport != DEFAULT_TRANSPORT else ()),
            *extra_args,
        ]
        self.start_timeout = start_timeout
        self.extra_env = env or {}  # added to this process's environment (e.g. OTEL_* variables)
        self.proc: subprocess.Popen | None = None
        self.grpc_url = ""
        self.http_url = ""
        self.rest_url = ""
        self._stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - lives as long as the server
        self._stdout_lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.sigterm_sent = False

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> ServerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self._stderr, env=env, text=True)
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                pytest.fail(f"server did not print {READY_PREFIX} within {self.start_timeout:.0f}s\n"
                            f"--- stderr ---\n{self.stderr_text()}")
            try:
                line = self._stdout_lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the server exited before it was ready
                rc = self.proc.wait(timeout=10)
                pytest.fail(f"server exited with status {rc} before it was ready\n"
                            f"--- stdout ---\n{''.join(self.stdout)}--- stderr ---\n{self.stderr_text()}")
            if line.startswith(READY_PREFIX):
                m = _READY_RE.match(line)
                assert m, f"malformed ready line: {line!r}"
                self.grpc_url = f"{m.group(1)}:{m.group(2)}"
                self.http_url = f"http://{m.group(3)}:{m.group(4)}"
                self.rest_url = f"{m.group(5)}:{m.group(6)}"
                return self

    def _pump_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)
            self._stdout_lines.put(line)
        self._stdout_lines.put(None)

    def send_sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.sigterm_sent = True

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (once, as an orchestrator does), then wait; a server that does not exit in time is killed
        and the test fails."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None and not self.sigterm_sent:
            self.send_sigterm()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"server did not exit within {timeout:.0f}s of SIGTERM\n"
                        f"--- stderr ---\n{self.stderr_text()}")

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stderr_text(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def assert_clean_exit(self, timeout: float = 20.0) -> None:
        rc = self.stop(timeout)
        assert rc == 0, f"server exited with status {rc}\n--- stderr ---\n{self.stderr_text()}"
        self._stderr.close()
