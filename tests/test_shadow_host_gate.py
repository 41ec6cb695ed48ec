"""The shadow's host gate through a real server (issue 27): while the host counts as busy, at most 5% of the
sampled requests are mirrored. ``--shadow-busy-host-idle 1.0`` counts the host busy whenever its idle share
is under 100%, and a CPU burner process keeps it so in every reading window (on an otherwise idle host a
quarter second can be all idle ticks), so the counters show the gate's cap; with the gate off
(tests/test_shadow.py) every one of the same sequential requests is mirrored."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from helpers import add_constant_model, infer, wait_until, write_versions
from serverproc import ServerProcess

from skewless.protos import skewless_traffic_pb2 as tpb
from skewless.protos import skewless_traffic_pb2_grpc as tpb_grpc
from skewless.server.shadow.host_idle import BUSY_SHARE

SENT = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("gate-repo")
    for name in ("primary", "twin"):
        write_versions(repo / name, {1: add_constant_model(1.0)}, "max_batch_size: 8\n")
    s = ServerProcess(repo, "--shadow-busy-host-idle", "1.0").start()
    yield s
    s.stop()


@pytest.fixture
def busy_host():
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield
    burner.kill()
    burner.wait(10)


def test_a_busy_host_mirrors_at_most_five_percent(server, busy_host):
    import tritonclient.grpc as grpcclient

    with grpc.insecure_channel(server.grpc_url) as channel:
        admin = tpb_grpc.TrafficAdminStub(channel)
        admin.SetShadow(tpb.SetShadowRequest(model="primary", challenger="twin", rate=1))
        time.sleep(1.0)  # the host reading is a quarter-second window: let the first ones pass
        client = grpcclient.InferenceServerClient(server.grpc_url)
        x = np.ones((1, 4), np.float32)
        for i in range(SENT):
            np.testing.assert_allclose(infer(client, "primary", {"x": x}, request_id=f"g{i}").as_numpy("y"), x + 1)

        def counts() -> tpb.PairStatus:
            return admin.GetTraffic(tpb.ModelRef(model="primary")).pairs[0]

        wait_until(lambda: counts().mirrored + counts().shed >= SENT, 15, "every sampled request counted")
        p = counts()
    assert p.mirrored + p.shed == SENT  # every request was sampled (rate 1) and each is counted once
    assert p.mirrored <= BUSY_SHARE * SENT + 1, (p.mirrored, p.shed)
    assert p.errors == 0
