"""Start a skewless server, the echo server or a throwaway redis-server as a subprocess on 127.0.0.1 and a free
port, and stop it.

Both print a ready line naming the port they bound (they are started on port 0), so no port is ever guessed;
a subprocess keeps the server's CPU time separate from the load generator's, which ``--server-pid`` needs.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import NoReturn

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MODELS = REPO_ROOT / "examples" / "models"


class ServerProcess:
    """A server subprocess; ``with`` stops it with SIGTERM (then SIGKILL after ``grace`` seconds).

    ``env`` is laid over this process's environment: a value of None removes that variable, so a caller can
    start a server without, say, any OTEL_* setting it happens to have inherited.
    """

    def __init__(self, argv: list[str], ready: re.Pattern[str], log_path: Path | None = None,
                 timeout: float = 60.0, grace: float = 15.0, env: Mapping[str, str | None] | None = None):
        self.argv, self.grace = argv, grace
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for k, v in (env or {}).items():
            if v is None:
                environ.pop(k, None)
            else:
                environ[k] = v
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO_ROOT, env=environ)
        self.pid = self.proc.pid
        lines: queue.Queue[str | None] = queue.Queue()
        # Keep reading stdout for the server's whole life, so a chatty server never blocks on a full pipe.
        threading.Thread(target=self._pump, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"{argv[2]} printed no ready line within {timeout:.0f}s: {seen[-5:]}") from None
            if line is None:
                self.stop()
                raise RuntimeError(f"{argv[2]} exited before it was ready (status {self.proc.poll()}): "
                                   f"{seen[-5:]}; see {log_path}")
            seen.append(line)
            m = ready.search(line)
            if m:
                self.port = int(m.group("port"))
                self.target = f"127.0.0.1:{self.port}"
                # Every KEY=HOST:PORT the ready line names (skewless: grpc=, http=, ...), for other endpoints.
                self.addresses = {k: f"{h}:{p}" for k, h, p in re.findall(r"(\w+)=([^\s=]+):(\d+)", line)}
                return

    def _pump(self, lines: queue.Queue[str | None]) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            lines.put(raw.decode(errors="replace").rstrip())
        lines.put(None)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_skewless(model_repository: Path | str | None = EXAMPLE_MODELS, log_path: Path | None = None,
                   extra: list[str] | None = None, env: Mapping[str, str | None] | None = None,
                   python: str | None = None) -> ServerProcess:
    """``skewless serve``; ``model_repository`` None when ``extra`` names another source (``--registry``);
    ``python``: another interpreter (another install of skewless, e.g. a checkout's venv) instead of this one."""
    repo = ["--model-repository", str(model_repository)] if model_repository is not None else []
    argv = [python or sys.executable, "-m", "skewless.server.frontend.cli", "serve", *repo,
            "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
            "--log-level", "warning",
            *(extra or [])]
    return ServerProcess(argv, re.compile(r"SKEWLESS_READY grpc=[^:]+:(?P<port>\d+)"), log_path, env=env)


def start_echo(log_path: Path | None = None, model: str = "mlp", extra: list[str] | None = None) -> ServerProcess:
    argv = [sys.executable, "-m", "skewless.benchmarks.echo_server", "--host", "127.0.0.1", "--port", "0",
            "--model", model, *(extra or [])]
    return ServerProcess(argv, re.compile(r"ECHO_READY (?P<port>\d+)"), log_path)


def exit_on_interrupt(main: Callable[[], int]) -> NoReturn:
    """Run a report's ``main`` and exit with its status; on Ctrl-C (its servers are stopped by then) stop the
    client processes and exit 130 without unwinding further: a blocking gRPC call interrupted mid-flight (a
    probe, say) can wait forever in its ``__del__`` once its channel is closed."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        import multiprocessing

        for child in multiprocessing.active_children():
            child.terminate()
            child.join(2)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


class RedisUnavailable(RuntimeError):
    """redis-server is not installed or did not answer."""


@contextmanager
def local_redis(timeout_s: float = 20.0) -> Iterator[str]:
    """Debian's ``redis-server`` on a free port of 127.0.0.1, in memory only (no snapshots, no append-only
    file); yields its ``redis://`` URL and stops it on exit. Readiness is a PING over a plain socket, so no
    client library is needed here."""
    if shutil.which("redis-server") is None:
        raise RedisUnavailable("redis-server is not installed (Debian: apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RedisUnavailable(f"redis-server on port {port} did not answer within {timeout_s:.0f} s")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
