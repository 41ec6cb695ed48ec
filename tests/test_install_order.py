"""The install stays consistent whatever order a user installs the server and a client in.

A user who ran ``pip install .`` and then ``pip install tritonclient[grpc]`` (the README's "Talking to it")
once got a server that died at start: the first install resolved health/reflection stubs generated for
protobuf 7, the second downgraded protobuf to 6 under them. Each case here is a fresh virtual environment,
real pip installs from the package registry, then the installed ``skewless serve`` on the example models and
one inference through the installed tritonclient.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIENT = "tritonclient[grpc]>=2.73"

# Run inside the fresh venv: start the installed server, infer once through the installed client, stop it.
SMOKE = r"""
import signal, subprocess, sys
import numpy as np
import tritonclient.grpc as grpcclient
# Port 0 for all three (gRPC, HTTP/REST, metrics): a fixed port fails whenever anything else holds it.
proc = subprocess.Popen([sys.argv[1], "serve", "--model-repository", sys.argv[2], "--grpc-port", "0",
                         "--http-port", "0", "--metrics-port", "0"],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
lines = []
for line in proc.stdout:
    lines.append(line)
    if line.startswith("SKEWLESS_READY"):
        break
else:
    sys.exit("server exited before it was ready:\n" + "".join(lines))
grpc_addr = line.split()[1].split("=", 1)[1]
try:
    client = grpcclient.InferenceServerClient(grpc_addr)
    x = np.arange(64, dtype=np.float32).reshape(2, 32) / 64
    inp = grpcclient.InferInput("input", [2, 32], "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("mlp", [inp]).as_numpy("probabilities")
    assert out.shape == (2, 2) and np.allclose(out.sum(axis=1), 1, atol=1e-5), out
finally:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
print("SMOKE_OK", proc.returncode)
"""


def _copy_source(dst: Path) -> Path:
    """The project's sources without build outputs or environments, so the install builds from scratch."""
    ignore = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "*.so",
                                    ".pytest_cache", ".ruff_cache", ".hypothesis", "results")
    shutil.copytree(ROOT, dst, ignore=ignore)
    return dst


def _pip(env_dir: Path, *args: str) -> None:
    pip = env_dir / "bin" / "pip"
    cmd = [str(pip), "install", "-q", "--disable-pip-version-check", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("order", ["server-then-client", "client-then-server"])
def test_server_starts_whatever_the_install_order(tmp_path: Path, order: str) -> None:
    if os.environ.get("SKEWLESS_SKIP_INSTALL_TEST") == "1":
        pytest.skip("SKEWLESS_SKIP_INSTALL_TEST=1")
    src = _copy_source(tmp_path / "src")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    server = [f"{src}[cpu]"]
    steps = [server, [CLIENT]] if order == "server-then-client" else [[CLIENT], server]
    for step in steps:
        _pip(env_dir, *step)
    python = env_dir / "bin" / "python"
    done = subprocess.run([str(python), "-c", SMOKE, str(env_dir / "bin" / "skewless"),
                           str(ROOT / "examples" / "models")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    versions = subprocess.run([str(env_dir / "bin" / "pip"), "list", "--disable-pip-version-check"],
                              capture_output=True, text=True).stdout
    assert "SMOKE_OK 0" in done.stdout, (
        f"{order}: the installed server did not serve an inference\n--- stdout ---\n{done.stdout}\n"
        f"--- stderr ---\n{done.stderr}\n--- pip list ---\n{versions}")
