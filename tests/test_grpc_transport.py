"""The gRPC transports (serve --grpc-transport aio|sync): which one serves, what only a transport can get wrong
(health watches, the hand-off from handler threads to the event loop), and the flags. Everything else runs on
both transports in the modules marked ``grpc_transports`` (test_rpcs.py, test_security.py, ...)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import RPC_TIMEOUT
from serverproc import ServerProcess
from tritonclient.utils import InferenceServerException

from skewless.server.frontend.cli import build_parser
from skewless.server.frontend.grpc_sync import LoopInbox
from skewless.server.frontend.options import ServerOptions

pytestmark = pytest.mark.grpc_transports

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_the_chosen_transport_serves(start_server, make_repo, grpc_transport):
    proc = start_server(make_repo("mlp"))
    client = grpcclient.InferenceServerClient(proc.grpc_url)
    assert client.is_model_ready("mlp")
    client.close()
    deadline = time.monotonic() + 10
    while f"{grpc_transport} transport" not in proc.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"(inference.GRPCInferenceService, {grpc_transport} transport)" in proc.stderr_text()


def test_health_watch_follows_a_model_through_unload_and_load(start_server, make_repo):
    """Watch is a response stream the server writes to when readiness changes: an unload and a load of the
    model reach an open watch, in order, and a cancelled watch leaves the server able to stop."""
    proc = start_server(make_repo("mlp"), "--model-control-mode", "explicit", "--load-model", "mlp")
    channel = grpc.insecure_channel(proc.grpc_url)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="mlp"),
                                                      timeout=RPC_TIMEOUT)
    assert next(watch).status == SERVING
    client = grpcclient.InferenceServerClient(proc.grpc_url)
    client.unload_model("mlp")
    assert next(watch).status == NOT_SERVING
    client.load_model("mlp")
    assert next(watch).status == SERVING
    watch.cancel()
    with pytest.raises(grpc.RpcError) as info:
        next(watch)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    # the server still answers (the watch's handler thread is free again) and stops cleanly at teardown
    assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="mlp"),
                                                     timeout=RPC_TIMEOUT).status == SERVING
    client.close()
    channel.close()


def test_sigterm_with_an_open_stream_ends_it_after_the_grace_period_and_exits_0(start_server, make_repo):
    """A stream the client keeps open (idle, after one answered message) does not hold the server up: at the
    end of the grace period it is closed and the process exits 0 (start_server checks the exit status)."""
    proc = start_server(make_repo("mlp"), "--grace-period", "1")
    client = grpcclient.InferenceServerClient(proc.grpc_url)
    replies: queue.Queue = queue.Queue()
    client.start_stream(lambda result, error: replies.put((result, error)))
    x = grpcclient.InferInput("input", [1, 32], "FP32")
    x.set_data_from_numpy(np.zeros((1, 32), np.float32))
    client.async_stream_infer("mlp", [x], request_id="first")
    result, error = replies.get(timeout=RPC_TIMEOUT)
    assert error is None and result.get_response().id == "first"
    proc.send_sigterm()
    assert proc.wait(timeout=20) == 0
    client.close()


def test_direct_replies_are_on_with_the_installed_grpcio():
    """The sync transport's direct replies use grpcio's private ``_server._status`` and its context's call
    state: a grpcio that moved them would fall back to blocking handler threads; this says so here first."""
    from grpc import _server

    from skewless.server.frontend import grpc_sync

    assert grpc_sync.DIRECT_REPLIES
    assert {"_rpc_event", "_state"} <= set(_server._Context.__init__.__code__.co_names)


def test_blocking_replies_still_serve(make_repo, grpc_transport):
    """The fallback where direct replies are unavailable (handler threads wait for their reply): a real server
    with it forced, answering, refusing and cancelling as the direct path does."""
    if grpc_transport != "sync":
        pytest.skip("the sync transport's fallback")
    code = ("import sys; from skewless.server.frontend import grpc_sync; grpc_sync.DIRECT_REPLIES = False; "
            "from skewless.server.frontend.cli import main; sys.exit(main())")
    proc = ServerProcess(make_repo("mlp", "slow"), "--grpc-transport", "sync")
    proc.args[1:3] = ["-c", code]  # the same command line, run through a forcing shim instead of -m
    proc.start()
    try:
        client = grpcclient.InferenceServerClient(proc.grpc_url)
        x = grpcclient.InferInput("input", [1, 32], "FP32")
        x.set_data_from_numpy(np.zeros((1, 32), np.float32))
        assert client.infer("mlp", [x], request_id="r1").get_response().id == "r1"
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.infer("nope", [x])
        # a queued request whose client gives up (deadline) is answered DEADLINE_EXCEEDED and frees its thread
        y = grpcclient.InferInput("x", [1, 4], "FP32")
        y.set_data_from_numpy(np.ones((1, 4), np.float32))
        busy = [client.async_infer("slow", [y], callback=lambda result, error: None) for _ in range(3)]
        with pytest.raises(InferenceServerException, match="Deadline"):
            client.infer("slow", [y], client_timeout=0.05)
        assert client.infer("mlp", [x], request_id="r2").get_response().id == "r2"
        del busy
        client.close()
    finally:
        proc.assert_clean_exit()


def test_unknown_health_service_is_not_found(server):
    channel = grpc.insecure_channel(server.grpc_url)
    with pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="nope"), timeout=RPC_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()


# -- the hand-off (frontend/grpc_sync.py), without a server -----------------------------------------------------
class _CountingInbox(LoopInbox):
    drains = 0

    def _drain(self) -> None:
        self.drains += 1
        super()._drain()


def test_inbox_runs_every_call_on_the_loop_in_order_and_wakes_it_once_per_burst():
    async def main():
        loop = asyncio.get_running_loop()
        inbox = _CountingInbox(loop)
        seen: list[tuple[int, int]] = []
        loop_thread = threading.get_ident()
        threads_seen: set[int] = set()

        def record(sender: int, i: int) -> None:
            threads_seen.add(threading.get_ident())
            seen.append((sender, i))

        # Hold the loop while four threads send 200 calls each: they all land in one burst.
        release = threading.Event()
        loop.call_soon(release.wait, 10)

        def send(sender: int) -> None:
            for i in range(200):
                inbox.call(record, sender, i)

        senders = [threading.Thread(target=send, args=(s,)) for s in range(4)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        release.set()
        while len(seen) < 800:
            await asyncio.sleep(0.01)
        return seen, threads_seen, loop_thread, inbox.drains

    seen, threads_seen, loop_thread, drains = asyncio.run(main())
    assert threads_seen == {loop_thread}
    for sender in range(4):
        assert [i for s, i in seen if s == sender] == list(range(200))  # each sender's calls in its order
    assert drains == 1  # 800 calls, one loop wake-up


def test_inbox_survives_a_failing_call():
    async def main():
        inbox = LoopInbox(asyncio.get_running_loop())
        done = []

        def fail() -> None:
            raise RuntimeError("boom")

        await asyncio.get_running_loop().run_in_executor(None, lambda: (inbox.call(fail), inbox.call(done.append, 1)))
        while not done:
            await asyncio.sleep(0.01)
        return done

    assert asyncio.run(main()) == [1]


# -- flags --------------------------------------------------------------------------------------------------------
def _options(*argv: str) -> ServerOptions:
    parser = build_parser()
    args = parser.parse_args(["serve", "--model-repository", "m", *argv])

    def error(message: str):
        raise ValueError(message)

    return ServerOptions.from_args(args, error)


def test_sync_threads_bound_the_calls_served_at_once_and_later_ones_wait(start_server, make_repo, grpc_transport):
    """--grpc-sync-threads 2: two open streams hold both handler threads; a unary call waits for one of them
    and is served once a stream ends."""
    if grpc_transport != "sync":
        pytest.skip("a flag of the sync transport")
    proc = start_server(make_repo("mlp"), "--grpc-sync-threads", "2")
    x = grpcclient.InferInput("input", [1, 32], "FP32")
    x.set_data_from_numpy(np.zeros((1, 32), np.float32))
    streams = []
    for i in range(2):
        c = grpcclient.InferenceServerClient(proc.grpc_url)
        replies: queue.Queue = queue.Queue()
        c.start_stream(lambda result, error, replies=replies: replies.put((result, error)))
        c.async_stream_infer("mlp", [x], request_id=f"s{i}")
        assert replies.get(timeout=RPC_TIMEOUT)[1] is None
        streams.append(c)
    late = grpcclient.InferenceServerClient(proc.grpc_url)
    answered = threading.Event()
    waiter = threading.Thread(target=lambda: (late.infer("mlp", [x], client_timeout=RPC_TIMEOUT), answered.set()))
    waiter.start()
    assert not answered.wait(1.0), "served with both handler threads held by streams"
    streams[0].stop_stream()
    assert answered.wait(RPC_TIMEOUT)
    waiter.join()
    for c in (*streams, late):
        c.close()


def test_transport_flags():
    assert _options().grpc_transport.transport == "aio"
    opts = _options("--grpc-transport", "sync", "--grpc-sync-threads", "32")
    assert (opts.grpc_transport.transport, opts.grpc_transport.sync_threads) == ("sync", 32)
    with pytest.raises(ValueError, match="--grpc-sync-threads must be at least 1"):
        _options("--grpc-sync-threads", "0")
