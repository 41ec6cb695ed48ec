"""Fixtures: the test model repository, one shared server for read-only tests, and per-test servers.

Every server here is the real thing: ``python -m skewless.server.frontend.cli serve`` in a subprocess on 127.0.0.1,
reached with the real ``tritonclient.grpc`` client (or its raw protobuf stub for malformed requests).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from helpers import EXAMPLE_MODELS, add_constant_model, raw_stub, write_versions
from hypothesis import settings
from serverproc import ServerProcess

from skewless.examples.generate import build_test_models
from skewless.server.frontend.transport_settings import DEFAULT_TRANSPORT, TRANSPORTS

# Property tests: no per-example deadline, since CI machines are slow and shared.
settings.register_profile("skewless", deadline=None)
settings.load_profile("skewless")

EXAMPLE_NAMES = ("mlp", "gbt", "text")
TEST_MODEL_NAMES = ("identity_all", "identity_bf16", "add_sub", "slow", "broken")
VERSION_POLICIES = {
    "vp_all": "version_policy: { all {} }\n",
    "vp_latest2": "version_policy: { latest { num_versions: 2 } }\n",
    "vp_specific": "version_policy: { specific { versions: [1, 3] } }\n",
}


def version_offset(version: int) -> float:
    """What version ``v`` of the vp_* models adds to its input."""
    return 100.0 * version


GRPC_TRANSPORTS = TRANSPORTS  # ("aio", "h2")


def pytest_addoption(parser) -> None:
    parser.addoption("--grpc-transports", default=",".join(GRPC_TRANSPORTS),
                     help="the gRPC transports (skewless serve --grpc-transport) that the tests of modules marked "
                          "grpc_transports run on, comma-separated (default: all)")


def pytest_configure(config) -> None:
    chosen = [t for t in config.getoption("--grpc-transports").split(",") if t]
    unknown = set(chosen) - set(GRPC_TRANSPORTS)
    if unknown or not chosen:
        raise pytest.UsageError(f"--grpc-transports: choose among {', '.join(GRPC_TRANSPORTS)}")
    config.grpc_transports = chosen


def pytest_generate_tests(metafunc) -> None:
    """Tests of a module marked ``grpc_transports`` run once per gRPC transport: their servers (the shared one,
    start_server's and ServerProcess's made in the test) serve gRPC on it."""
    if metafunc.definition.get_closest_marker("grpc_transports") is not None:
        metafunc.parametrize("grpc_transport", metafunc.config.grpc_transports, indirect=True, scope="session")


@pytest.fixture(scope="session")
def grpc_transport(request) -> Iterator[str]:
    """The gRPC transport of this test's servers: the server's default unless its module is marked
    ``grpc_transports``.
    Servers made while it is set up use it; a module-scoped fixture that starts a server must name this
    fixture, so that it is made again for each transport."""
    transport = getattr(request, "param", DEFAULT_TRANSPORT)
    ServerProcess.grpc_transport = transport
    yield transport
    ServerProcess.grpc_transport = DEFAULT_TRANSPORT


@pytest.fixture(autouse=True)
def _servers_use_transport(grpc_transport) -> None:
    """Every test takes part in the parametrization (its servers, even those it makes itself, follow it)."""


@pytest.fixture(scope="session")
def model_source(tmp_path_factory) -> Path:
    """Every model a test may copy into its repository: the examples plus build_test_models' output."""
    src = tmp_path_factory.mktemp("model_source")
    for name in EXAMPLE_NAMES:
        shutil.copytree(EXAMPLE_MODELS / name, src / name)
    build_test_models(src)
    for name, policy in VERSION_POLICIES.items():
        write_versions(src / name, {v: add_constant_model(version_offset(v)) for v in (1, 2, 3)}, policy)
    return src


@pytest.fixture(scope="session")
def make_repo(model_source, tmp_path_factory) -> Callable[..., Path]:
    """make_repo("mlp", "add_sub") -> a fresh repository directory holding copies of those models."""

    def make(*names: str) -> Path:
        root = tmp_path_factory.mktemp("repo")
        for name in names:
            shutil.copytree(model_source / name, root / name)
        return root

    return make


SHARED_MODELS = (*EXAMPLE_NAMES, "identity_all", "identity_bf16", "add_sub", "slow", *VERSION_POLICIES)


@pytest.fixture(scope="session")
def shared_repo(make_repo) -> Path:
    # 'broken' is left out: a model that fails to load makes the server not ready (Triton's strict
    # readiness). Load failures are tested on explicit-mode servers instead.
    return make_repo(*SHARED_MODELS)


@pytest.fixture(scope="session")
def server(shared_repo, grpc_transport) -> Iterator[ServerProcess]:
    """One server (model control mode none) for every test that does not change its state (one per gRPC
    transport, for the modules marked grpc_transports)."""
    proc = ServerProcess(shared_repo, transport=grpc_transport).start()
    yield proc
    proc.assert_clean_exit()


@pytest.fixture(scope="session")
def client(server) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def stub(server):
    channel, s = raw_stub(server.grpc_url)
    yield s
    channel.close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """start_server(repo, *cli_args): a server of the test's own, SIGTERMed at the end (must exit 0)."""
    started: list[ServerProcess] = []

    def start(repo: Path, *args: str) -> ServerProcess:
        proc = ServerProcess(repo, *args)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.assert_clean_exit()
