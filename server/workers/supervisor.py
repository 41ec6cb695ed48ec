"""The parent of ``skewless serve --workers N``: it binds nothing itself but reserves the three ports (so that
port 0 means one port for all), starts N ``skewless serve`` workers on them (SO_REUSEPORT: the kernel spreads
connections over the workers), prints one SKEWLESS_READY line once all are ready, restarts a worker that dies,
and on SIGTERM/SIGINT asks every worker to drain within the grace period."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .cluster import ENV_COUNT, ENV_DIR, ENV_INDEX, ENV_RESTARTED, READY_FILE, ReadyFlags

log = logging.getLogger("skewless.workers")

READY_PREFIX = "SKEWLESS_READY"
RESTART_BACKOFF_S = 1.0
KILL_AFTER_GRACE_S = 10.0  # past the grace period, a worker that has not exited is killed


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound (not listening) SO_REUSEPORT socket holding ``port`` (0: a free one) for the workers."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


class Worker:
    def __init__(self, index: int, count: int, command: list[str], directory: Path):
        self.index = index
        self.count = count
        self.command = command
        self.directory = directory
        self.proc: subprocess.Popen | None = None
        self.ready = threading.Event()
        self.started_at = 0.0

    def start(self, restarted: bool = False) -> None:
        env = dict(os.environ, **{ENV_DIR: str(self.directory), ENV_INDEX: str(self.index),
                                  ENV_COUNT: str(self.count), ENV_RESTARTED: "1" if restarted else "0"})
        self.ready.clear()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.command, env=env, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._relay, args=(self.proc,), daemon=True).start()

    def _relay(self, proc: subprocess.Popen) -> None:
        """The worker's stdout, passed on, except its ready line (the parent prints one for all)."""
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY_PREFIX):
                self.ready.set()
            else:
                sys.stdout.write(line)
                sys.stdout.flush()

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()


def run_workers(argv: list[str], count: int, host: str, ports: tuple[int, int, int], grace_s: float) -> int:
    """``argv``: the command line of the parent (the workers get it back with the reserved ports)."""
    directory = Path(tempfile.mkdtemp(prefix="skewless-workers-"))
    flags = ReadyFlags.create(directory / READY_FILE, count)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    held: list[socket.socket] = []
    try:
        bound = []
        for port in ports:
            try:
                sock, real = reserve_port(host, port)
            except OSError as exc:
                log.error("cannot bind %s:%d for the workers: %s", host, port, exc)
                return 1
            held.append(sock)
            bound.append(real)
        grpc_port, http_port, metrics_port = bound
        command = [sys.executable, "-m", "skewless.server.frontend.cli", *argv, "--workers", "1",
                   "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
        workers = [Worker(i, count, command, directory) for i in range(count)]
        for w in workers:
            w.start()
        if not _wait_ready(workers, stop):
            log.error("not all %d workers started; stopping", count)
            _stop_all(workers, grace_s)
            return 1
        print(f"{READY_PREFIX} grpc={host}:{grpc_port} http={host}:{metrics_port} rest={host}:{http_port}",
              flush=True)
        _supervise(workers, flags, stop)
        codes = _stop_all(workers, grace_s)
        bad = {w.index: rc for w, rc in zip(workers, codes, strict=True) if rc != 0}
        if bad:
            log.error("workers exited with status %s", bad)
        return 1 if bad else 0
    finally:
        for sock in held:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_ready(workers: list[Worker], stop: threading.Event) -> bool:
    while not all(w.ready.is_set() for w in workers):
        if stop.is_set():
            return False
        for w in workers:
            rc = w.exited()
            if rc is not None:
                log.error("worker %d exited with status %s before it was ready", w.index, rc)
                return False
        time.sleep(0.05)
    return True


def _supervise(workers: list[Worker], flags: ReadyFlags, stop: threading.Event) -> None:
    """Until asked to stop: a worker that dies is marked not ready and started again (readiness over all
    workers is false until it is back)."""
    while not stop.wait(0.2):
        for w in workers:
            rc = w.exited()
            if rc is None:
                continue
            flags.set(w.index, False)
            if time.monotonic() - w.started_at < RESTART_BACKOFF_S:
                continue  # crash-looping: not faster than once a second
            log.warning("worker %d (pid %d) exited with status %s; restarting it", w.index, w.proc.pid, rc)
            w.start(restarted=True)


def _stop_all(workers: list[Worker], grace_s: float) -> list[int]:
    for w in workers:
        if w.exited() is None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s + KILL_AFTER_GRACE_S
    codes = []
    for w in workers:
        try:
            codes.append(w.proc.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop within the grace period; killing it", w.index)
            w.proc.kill()
            codes.append(w.proc.wait())
    return codes


def die_with_parent() -> None:
    """A worker ends (SIGTERM: it drains) when its parent dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


__all__ = ["die_with_parent", "reserve_port", "run_workers"]
