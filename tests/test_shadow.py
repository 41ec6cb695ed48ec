"""Shadow traffic through a real server and real tritonclient: the sampled share is exactly the hashed keys,
divergent samples are logged exactly when over the tolerance, and shedding under overload is counted while
the primary never fails."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
from helpers import add_constant_model, infer, rpc_error, wait_until, write_versions
from serverproc import ServerProcess

from skewless.benchmarks.shadow_models import failing_model, step_model
from skewless.protos import skewless_traffic_pb2 as tpb
from skewless.protos import skewless_traffic_pb2_grpc as tpb_grpc
from skewless.server.shadow.keys import sampled
from skewless.server.shadow.traffic import SHADOW_SALT

CONFIG = "max_batch_size: 8\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("shadow-repo")
    for name in ("p_share", "p_div", "p_load", "twin"):
        write_versions(repo / name, {1: add_constant_model(1.0)}, CONFIG)
    write_versions(repo / "diverge", {1: step_model(1.0, 0.7, 0.1)}, CONFIG)
    write_versions(repo / "fails", {1: failing_model(1.0, 10)}, CONFIG)
    write_versions(repo / "p_fail", {1: add_constant_model(1.0)}, CONFIG)
    # configured in the model's config: shadows p_cfg to twin at every request
    write_versions(repo / "p_cfg", {1: add_constant_model(1.0)}, CONFIG + (
        'parameters { key: "skewless.shadow_model" value { string_value: "twin:1" } }\n'
        'parameters { key: "skewless.shadow_rate" value { string_value: "1" } }\n'))
    # These tests count what is mirrored; on a shared, busy test host the host gate would shed it (the gate is
    # tested apart on injected readings: tests/test_guardrails.py).
    s = ServerProcess(repo, "--shadow-busy-host-idle", "0").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield tpb_grpc.TrafficAdminStub(channel)


def pair(status: tpb.TrafficStatus) -> tpb.PairStatus:
    assert len(status.pairs) == 1, status
    return status.pairs[0]


def settled(admin, model: str, expected: int) -> tpb.PairStatus:
    """The pair's counters once every sampled request has run or been shed."""
    def done() -> bool:
        s = admin.GetTraffic(tpb.ModelRef(model=model))
        return bool(s.pairs) and s.pairs[0].mirrored + s.pairs[0].shed >= expected
    wait_until(done, 15, f"{expected} mirrored requests of {model} settled")
    return pair(admin.GetTraffic(tpb.ModelRef(model=model)))


def test_sampled_share_is_the_hashed_keys(server, admin):
    """Set by the CLI; mirrored exactly the request ids whose hash falls under the rate, ~30% of them."""
    out = subprocess.run([sys.executable, "-m", "skewless.server.frontend.cli", "shadow", "p_share", "--to", "twin",
                          "--rate", "0.3", "--url", server.grpc_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "shadow -> twin at 30.0%" in out.stdout
    client = grpcclient.InferenceServerClient(server.grpc_url)
    ids = [f"caller-{i}" for i in range(400)]
    x = np.ones((1, 4), np.float32)
    for rid in ids:
        np.testing.assert_allclose(infer(client, "p_share", {"x": x}, request_id=rid).as_numpy("y"), x + 1)
    expected = sum(sampled(rid, 0.3, SHADOW_SALT) for rid in ids)
    assert abs(expected / len(ids) - 0.3) < 0.06
    p = settled(admin, "p_share", expected)
    assert p.mirrored + p.shed == expected  # no request outside the sample, none lost uncounted
    assert p.errors == 0 and p.divergent == 0
    assert p.agreement == 1.0


def test_config_shadow_and_bad_requests(server, admin):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for i in range(10):
        infer(client, "p_cfg", {"x": np.zeros((2, 4), np.float32)}, request_id=f"c{i}")
    p = settled(admin, "p_cfg", 10)
    assert p.challenger == "twin:1" and p.mirrored + p.shed == 10
    err = rpc_error(lambda: admin.SetShadow(tpb.SetShadowRequest(model="p_cfg", challenger="nope", rate=1)),
                    grpc.StatusCode.NOT_FOUND)
    assert "nope" in err.details()
    rpc_error(lambda: admin.SetShadow(tpb.SetShadowRequest(model="p_cfg", challenger="twin", rate=1.5)),
              grpc.StatusCode.INVALID_ARGUMENT)
    rpc_error(lambda: admin.SetShadow(tpb.SetShadowRequest(model="p_cfg", challenger="twin:x", rate=1)),
              grpc.StatusCode.INVALID_ARGUMENT)
    rpc_error(lambda: admin.PromoteCanary(tpb.ModelRef(model="p_cfg")), grpc.StatusCode.FAILED_PRECONDITION)
    rpc_error(lambda: admin.GetTraffic(tpb.ModelRef(model="missing")), grpc.StatusCode.NOT_FOUND)


def test_challenger_errors_never_reach_the_caller(server, admin):
    admin.SetShadow(tpb.SetShadowRequest(model="p_fail", challenger="fails", rate=1))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = np.full((1, 4), 12.0, np.float32)  # the challenger fails on these; the primary serves them
    for i in range(20):
        np.testing.assert_allclose(infer(client, "p_fail", {"x": x}, request_id=f"f{i}").as_numpy("y"), x + 1)
    p = settled(admin, "p_fail", 20)
    assert p.errors == p.mirrored and p.mirrored + p.shed == 20 and p.mirrored > 0


def test_divergent_logged_exactly_over_tolerance(server, admin, tmp_path):
    """The challenger adds 0.1 wherever an input exceeds 0.7: those requests, and only those, are logged."""
    admin.SetShadow(tpb.SetShadowRequest(model="p_div", challenger="diverge", rate=1, tolerance=0.01,
                                         log_dir=str(tmp_path)))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    rng = np.random.default_rng(1)
    divergent = set()
    for i in range(60):
        x = rng.uniform(0, 0.6, (1, 4)).astype(np.float32)
        if i % 3 == 0:
            x[0, i % 4] = 0.9
            divergent.add(f"d-{i}")
        infer(client, "p_div", {"x": x}, request_id=f"d-{i}")
    p = settled(admin, "p_div", 60)
    assert p.shed == 0 and p.mirrored == 60 and p.divergent == len(divergent)

    def logged() -> set[str]:
        files = list(tmp_path.rglob("*.parquet"))
        return set(pq.read_table(files, columns=["request_id"]).column(0).to_pylist()) if files else set()
    wait_until(lambda: len(logged()) >= len(divergent), 10, "divergent samples written")
    assert logged() == divergent
    table = pq.read_table(list(tmp_path.rglob("*.parquet"))[0])
    row = table.slice(0, 1).to_pylist()[0]
    assert row["primary_model"] == "p_div" and row["challenger_model"] == "diverge"
    np.testing.assert_allclose(row["max_abs_diff"], 0.1, rtol=1e-4)
    np.testing.assert_allclose(np.array(row["challenger.y"]) - np.array(row["primary.y"]),
                               0.1 * (np.array(row["input.x"]) > 0.7), atol=1e-5)
    png = tmp_path / "report.png"
    out = subprocess.run([sys.executable, "-m", "skewless.server.frontend.cli", "shadow-report", str(tmp_path),
                          "--png", str(png)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{len(divergent)} divergent samples" in out.stdout and png.stat().st_size > 1000


def test_shedding_counted_under_overload(server, admin):
    """Eight clients keep the primary busy: mirrored requests shed (counted), no primary request fails."""
    admin.SetShadow(tpb.SetShadowRequest(model="p_load", challenger="twin", rate=1))
    stop = time.monotonic() + 2.5
    sent = [0] * 8
    failures: list[Exception] = []

    def client_loop(k: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        x = np.ones((1, 4), np.float32)
        while time.monotonic() < stop:
            try:
                infer(client, "p_load", {"x": x}, request_id=f"l{k}-{sent[k]}")
            except Exception as exc:  # noqa: BLE001 - any failure is the test's failure
                failures.append(exc)
            sent[k] += 1

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    p = settled(admin, "p_load", sum(sent))
    assert p.mirrored + p.shed == sum(sent)
    assert p.shed > 0, p
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    line = next(ln for ln in text.splitlines()
                if ln.startswith("skewless_shadow_shed_requests") and 'primary="p_load:1"' in ln)
    assert float(line.rsplit(" ", 1)[1]) == p.shed
    assert "skewless_shadow_agreement{" in text and "skewless_shadow_challenger_latency_seconds{" in text


def test_hash_is_stable_and_comparison_vectorised():
    """The key hash is a fixed function (same arm after a restart or on another replica); the batched
    comparison gives each request its own figures."""
    from skewless.server.shadow.compare import compare_batch
    from skewless.server.shadow.keys import unit_hash

    assert unit_hash("caller-1", SHADOW_SALT) == unit_hash("caller-1", SHADOW_SALT)
    assert abs(sum(sampled(f"k{i}", 0.2, SHADOW_SALT) for i in range(5000)) / 5000 - 0.2) < 0.02
    a = [np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)]
    b = [np.array([[0.2, 0.8], [0.3, 0.7]], np.float32)]
    same = [np.array([[0.6, 0.4]], np.float32)]
    first, second = compare_batch(["p"], [a, same], [b, same], [2, 1])
    assert not first.agree and first.abs_diff["p"] == pytest.approx(0.5)
    assert second.agree and second.abs_diff["p"] == 0.0


def test_challenger_waits_while_the_event_loop_is_busy():
    """Past loop_busy_max of the loop thread's CPU over the last second the challenger waits even with nothing
    in flight (a closed loop at saturation touches zero in flight between rounds); once the loop idles, it may
    run again. The loop's CPU is spun by its own CPU clock and judged at given clock readings, so a shared
    machine's preemption (which stretches the wall time the spinning takes) changes nothing."""
    from skewless.server.shadow.mirror import BUDGET_WINDOW_S, ShadowWorker

    async def scenario() -> tuple[bool, float, bool, float]:
        worker = ShadowWorker(loop_busy_max=0.5)
        try:
            t0 = time.monotonic()
            assert not worker._busy(t0)  # starts the first window
            cpu = time.thread_time()
            while time.thread_time() - cpu < 0.6 * BUDGET_WINDOW_S:  # 60% of the window: a saturated loop
                sum(range(1000))
            busy = worker._busy(t0 + BUDGET_WINDOW_S)
            load_busy = worker.loop_busy
            idle = worker._busy(t0 + 2 * BUDGET_WINDOW_S)  # the next window: the loop did next to nothing
            return busy, load_busy, idle, worker.loop_busy
        finally:
            await worker.close()

    busy, load_busy, idle, load_idle = asyncio.run(scenario())
    assert busy and load_busy >= 0.6, load_busy
    assert not idle and load_idle < 0.3, load_idle
