"""``skewless serve --workers 2``: real worker processes on shared ports, one view for the client."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import RPC_TIMEOUT, http_status, infer, wait_until
from serverproc import ServerProcess
from tritonclient.grpc import service_pb2

from skewless.server.workers.cluster import ENV_DIR, READY_MODELS_KEY, STATISTICS_KEY, Cluster, WorkerPlace

pytestmark = pytest.mark.slow  # the slow tier: several worker processes per server, killed and restarted

# Own connection per client: gRPC otherwise shares one TCP connection among identical channels of a process.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
CLIENTS, PER_CLIENT = 16, 5
X = np.ones((1, 32), np.float32)


def worker_pids(parent: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]


def worker_dir(pid: int) -> Path:
    env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
    return Path(env[ENV_DIR])


def ask_worker(directory: Path, index: int, key: str, body: bytes = b"") -> bytes:
    """One worker's own answer, over the peer socket the workers use among themselves."""
    return asyncio.run(Cluster(WorkerPlace(directory, -1, 2)).call(index, key, body))


def own_count(directory: Path, index: int, model: str) -> int:
    req = service_pb2.ModelStatisticsRequest(name=model)
    reply = service_pb2.ModelStatisticsResponse.FromString(ask_worker(directory, index, STATISTICS_KEY,
                                                                       req.SerializeToString()))
    return sum(s.inference_stats.success.count for s in reply.model_stats)


def metric(url: str, name: str, model: str) -> float:
    page = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    m = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', page, re.M)
    assert m, f"{name} for {model} not in /metrics"
    return float(m.group(1))


def many_clients(url: str, model: str, feeds: dict, clients: int = CLIENTS, each: int = PER_CLIENT) -> None:
    def run(_):
        with grpcclient.InferenceServerClient(url, channel_args=OWN_CONNECTION) as c:
            for _ in range(each):
                infer(c, model, feeds)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))


@pytest.fixture(scope="module")
def workers(make_repo):
    srv = ServerProcess(make_repo("mlp", "add_sub"), "--workers", "2", "--model-control-mode", "explicit",
                        "--load-model", "mlp", "--allow-client-shm", start_timeout=60).start()
    yield srv
    srv.assert_clean_exit()


def test_requests_spread_and_counted_once(workers):
    directory = worker_dir(worker_pids(workers.proc.pid)[0])
    many_clients(workers.grpc_url, "mlp", {"input": X})
    sent = CLIENTS * PER_CLIENT
    per_worker = [own_count(directory, i, "mlp") for i in range(2)]
    assert sum(per_worker) == sent and min(per_worker) > 0, per_worker
    with grpcclient.InferenceServerClient(workers.grpc_url) as c:
        stats = c.get_inference_statistics("mlp").model_stats[0]
    assert stats.inference_stats.success.count == sent
    assert stats.inference_count == sent
    assert stats.inference_stats.success.ns > 0
    assert metric(workers.http_url, "nv_inference_request_success", "mlp") == sent
    assert metric(workers.http_url, "nv_inference_count", "mlp") == sent
    page = urllib.request.urlopen(workers.http_url + "/metrics", timeout=10).read().decode()
    assert 'worker="0"' in page and 'worker="1"' in page  # gauges stay per worker
    for _ in range(4):  # REST's statistics route too, whichever worker each new connection reaches
        doc = json.loads(urllib.request.urlopen(f"http://{workers.rest_url}/v2/models/mlp/stats", timeout=10).read())
        assert doc["model_stats"][0]["inference_stats"]["success"]["count"] == sent
    assert http_status(workers.http_url + "/v2/health/ready") == 200


def test_grpc_health_of_the_whole_server_turns_serving_on_every_worker(workers):
    """The overall health ("") was set before the siblings were up and stayed NOT_SERVING; it follows them."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def statuses() -> set[int]:
        seen = set()
        for _ in range(8):  # new channels: SO_REUSEPORT spreads them over the workers
            with grpc.insecure_channel(workers.grpc_url, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                seen.add(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                              timeout=RPC_TIMEOUT).status)
        return seen

    wait_until(lambda: statuses() == {health_pb2.HealthCheckResponse.SERVING}, 30, "SERVING on every worker")


def test_shared_memory_registration_reaches_every_worker(workers):
    """A region registered through one worker serves requests whichever worker they land on; unregistering
    through one removes it everywhere."""
    import uuid

    import tritonclient.utils.shared_memory as shm

    key = f"/skewless_workers_{uuid.uuid4().hex[:10]}"
    handle = shm.create_shared_memory_region("w_in", key, 128)
    try:
        a = np.arange(16, dtype=np.float32).reshape(1, 16)
        shm.set_shared_memory_region(handle, [a, a])
        with grpcclient.InferenceServerClient(workers.grpc_url) as c:
            c.load_model("add_sub")
            c.register_system_shared_memory("w_in", key, 128)

        def run(_):
            with grpcclient.InferenceServerClient(workers.grpc_url, channel_args=OWN_CONNECTION) as c:
                for _ in range(2):
                    x0, x1 = grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput(
                        "INPUT1", [1, 16], "FP32")
                    x0.set_shared_memory("w_in", 64)
                    x1.set_shared_memory("w_in", 64, offset=64)
                    out = c.infer("add_sub", [x0, x1], client_timeout=RPC_TIMEOUT).as_numpy("OUTPUT0")
                    np.testing.assert_array_equal(out, a + a)
                    assert "w_in" in c.get_system_shared_memory_status().regions

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(run, range(8)))
        with grpcclient.InferenceServerClient(workers.grpc_url) as c:
            c.unregister_system_shared_memory("w_in")

        def gone(_):
            with grpcclient.InferenceServerClient(workers.grpc_url, channel_args=OWN_CONNECTION) as c:
                return len(c.get_system_shared_memory_status().regions)

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(gone, range(8))) == [0] * 8
    finally:
        shm.destroy_shared_memory_region(handle)


def test_load_and_unload_reach_every_worker(workers):
    directory = worker_dir(worker_pids(workers.proc.pid)[0])
    ready = lambda i: json.loads(ask_worker(directory, i, READY_MODELS_KEY))  # noqa: E731
    with grpcclient.InferenceServerClient(workers.grpc_url) as c:
        c.load_model("add_sub")
    assert all("add_sub" in ready(i) for i in range(2))
    a = np.ones((1, 16), np.float32)
    many_clients(workers.grpc_url, "add_sub", {"INPUT0": a, "INPUT1": a}, clients=8, each=2)
    unload = urllib.request.Request(f"http://{workers.rest_url}/v2/repository/models/mlp/unload", b"{}",
                                    method="POST")
    assert urllib.request.urlopen(unload, timeout=30).status == 200  # REST control reaches every worker too
    assert all("mlp" not in ready(i) for i in range(2))
    with grpcclient.InferenceServerClient(workers.grpc_url) as c:
        c.load_model("mlp")
    assert all({"mlp", "add_sub"} <= set(ready(i)) for i in range(2))


def test_killed_worker_is_restarted_and_catches_up(workers):
    parent = workers.proc.pid
    before = worker_pids(parent)
    directory = worker_dir(before[0])
    with grpcclient.InferenceServerClient(workers.grpc_url) as c:
        c.unload_model("add_sub")  # the restarted worker must learn this from its sibling
    os.kill(before[1], signal.SIGKILL)
    wait_until(lambda: len(set(worker_pids(parent)) - set(before)) == 1, 30, "a new worker")
    wait_until(lambda: http_status(workers.http_url + "/v2/health/ready") == 200, 60, "readiness over both")
    assert all(json.loads(ask_worker(directory, i, READY_MODELS_KEY)) == ["mlp"] for i in range(2))
    many_clients(workers.grpc_url, "mlp", {"input": X}, clients=8, each=2)


def test_sigterm_drains_every_worker(make_repo):
    srv = ServerProcess(make_repo("slow"), "--workers", "2", start_timeout=60).start()
    n = 8
    barrier = threading.Barrier(n)
    done = []

    def one(i: int) -> None:
        with grpcclient.InferenceServerClient(srv.grpc_url, channel_args=OWN_CONNECTION) as c:
            x = np.full((1, 4), i, np.float32)
            barrier.wait(timeout=30)
            np.testing.assert_array_equal(infer(c, "slow", {"x": x}).as_numpy("y"), x * 2)
            done.append(time.monotonic())

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        time.sleep(0.3)  # sent and queued (one instance per worker, ~100 ms a request)
        srv.send_sigterm()
        sigterm_at = time.monotonic()
        for f in futures:
            f.result(timeout=RPC_TIMEOUT)
    assert len(done) == n and max(done) > sigterm_at  # some were still in flight at SIGTERM, and all finished
    assert srv.wait(30) == 0


def test_port_taken_fails_the_start(make_repo):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:  # a listener without SO_REUSEPORT: the workers cannot share its port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "skewless.server.frontend.cli", "serve", "--model-repository",
                               str(make_repo("mlp")), "--workers", "2", "--grpc-port", str(port), "--http-port", "0",
                               "--metrics-port", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"cannot bind 127.0.0.1:{port}" in proc.stderr


def test_log_settings_reach_every_worker(workers):
    """A LogSettings change over either transport applies on every worker (each asked over the peer socket)."""
    directory = worker_dir(worker_pids(workers.proc.pid)[0])

    def each_worker(name: str) -> list:
        replies = [service_pb2.LogSettingsResponse.FromString(
            ask_worker(directory, i, "inference.GRPCInferenceService/LogSettings")) for i in range(2)]
        return [getattr(r.settings[name], r.settings[name].WhichOneof("parameter_choice")) for r in replies]

    assert each_worker("log_info") == [True, True]
    req = urllib.request.Request(f"http://{workers.rest_url}/v2/logging", b'{"log_info": false}', method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["log_info"] is False
    assert each_worker("log_info") == [False, False]
    with grpcclient.InferenceServerClient(workers.grpc_url) as c:
        c.update_log_settings({"log_info": True, "log_format": "ISO8601"})
    assert each_worker("log_info") == [True, True] and each_worker("log_format") == ["ISO8601", "ISO8601"]
