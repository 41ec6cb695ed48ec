"""Overload: a flood far past the server's --max-inflight limit (small and 256-row requests, unary and
streams) leaves it alive, with bounded memory, and every reply either correct for its own request or refused
with UNAVAILABLE, never another request's answer. Also the connection limits: max connection age, and HTTP
request heads that never finish.

Real server subprocess, real tritonclient (gRPC asyncio client, unary and streams), outputs checked against
onnxruntime run here on the same inputs.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import onnxruntime as ort
import psutil
import pytest
import tritonclient.grpc.aio as aioclient
from serverproc import ServerProcess
from tritonclient.utils import InferenceServerException

pytestmark = [pytest.mark.slow, pytest.mark.grpc_transports]  # the slow tier: floods of thousands of requests, connection-age and slow-header timeouts

FLOOD = 10_000  # concurrent unary requests, spread over CHANNELS connections
CHANNELS = 16
STREAMS, PER_STREAM = 8, 100
LIMIT = 64


def _inputs(x: np.ndarray) -> list:
    inp = aioclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


async def _flood(url: str, xs: np.ndarray) -> tuple[dict[int, np.ndarray], dict[str, int]]:
    answers: dict[int, np.ndarray] = {}
    refused: dict[str, int] = {}
    clients = [aioclient.InferenceServerClient(url) for _ in range(CHANNELS + 1)]
    try:
        client = clients[CHANNELS]  # the streams' own connection

        async def one(i: int) -> None:
            # every 50th request is large: its row and the next 255 rows' inputs (the answers of its first row)
            x = np.concatenate([xs[i:i + 1], xs[(i + 1) % FLOOD:(i + 1) % FLOOD + 255]]) if i % 50 == 0 else xs[i:i + 1]
            try:
                r = await clients[i % CHANNELS].infer("mlp", _inputs(x), request_id=str(i))
                assert r.get_response().id == str(i)
                out = r.as_numpy("probabilities")
                assert out.shape[0] == len(x)
                answers[i] = out[0]
            except InferenceServerException as exc:
                key = f"{exc.status()}: {(exc.message() or '')[:60]}"
                refused[key] = refused.get(key, 0) + 1

        async def stream(s: int) -> None:
            base = FLOOD + s * PER_STREAM

            async def requests():
                for k in range(PER_STREAM):
                    i = base + k
                    yield {"model_name": "mlp", "inputs": _inputs(xs[i:i + 1]), "request_id": str(i)}

            async for result, error in client.stream_infer(requests()):
                if error is not None:
                    key = f"stream: {str(error)[:60]}"
                    refused[key] = refused.get(key, 0) + 1
                else:
                    i = int(result.get_response().id)
                    answers[i] = result.as_numpy("probabilities")[0]

        errors = [e for e in await asyncio.gather(*(one(i) for i in range(FLOOD)), *(stream(s) for s in range(STREAMS)),
                                                  return_exceptions=True) if e is not None]
        assert not errors, (len(errors), errors[:1])
    finally:
        for c in clients:
            await c.close()
    return answers, refused


def test_flood_past_max_inflight(make_repo, model_source):
    repo = make_repo("mlp")
    with open(repo / "mlp" / "config.pbtxt", "a") as f:  # batches in worker threads: requests pile up in flight
        f.write('parameters { key: "skewless.inline_compute_us" value { string_value: "0" } }\n')
    proc = ServerProcess(repo, "--max-inflight", str(LIMIT)).start()
    try:
        total = FLOOD + STREAMS * PER_STREAM
        xs = np.random.default_rng(7).random((total, 32), dtype=np.float32)
        sess = ort.InferenceSession(str(model_source / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        expected = sess.run(["probabilities"], {"input": xs})[0]
        server = psutil.Process(proc.proc.pid)
        rss_before = server.memory_info().rss
        peak = [rss_before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], server.memory_info().rss)
                time.sleep(0.02)

        threading.Thread(target=sample, daemon=True).start()
        answers, refused = asyncio.run(_flood(proc.grpc_url, xs))
        done.set()
        crossed = [i for i, out in answers.items() if not np.allclose(out, expected[i], rtol=1e-5, atol=1e-6)]
        assert crossed == [], f"{len(crossed)} replies carry another request's output"
        assert len(answers) + sum(refused.values()) == total  # every request answered or refused, none lost
        assert refused, "the flood never reached the in-flight limit"
        # unary refusals carry UNAVAILABLE; a stream's carry the same message in error_message (stream stays open)
        assert all("server busy" in k and (k.startswith("stream:") or "UNAVAILABLE" in k) for k in refused), refused
        assert len(answers) > 0
        growth = peak[0] - rss_before
        assert growth < 200 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB under the flood"
        # alive and serving normally afterwards
        answers2, refused2 = asyncio.run(_flood_small(proc.grpc_url, xs[:8]))
        assert refused2 == {} and all(np.allclose(answers2[i], expected[i], rtol=1e-5, atol=1e-6) for i in range(8))
        print(f"flood: {total} sent, {len(answers)} answered, {sum(refused.values())} refused, 0 cross-wired, "
              f"RSS {rss_before / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} MiB")
    finally:
        proc.assert_clean_exit()


async def _flood_small(url: str, xs: np.ndarray):
    answers, refused = {}, {}
    async with aioclient.InferenceServerClient(url) as client:
        for i in range(len(xs)):
            r = await client.infer("mlp", _inputs(xs[i:i + 1]))
            answers[i] = r.as_numpy("probabilities")[0]
    return answers, refused


def test_slow_http_request_heads_are_cut_off(make_repo):
    """Slowloris: a REST connection that sends nothing, or a header line now and then, is closed once its
    request head is overdue; a keep-alive connection gets the same limit for its next request; the server
    keeps answering others meanwhile."""
    import http.client
    import socket

    proc = ServerProcess(make_repo("mlp"), "--http-header-timeout", "1.5").start()
    try:
        host, port = proc.rest_url.split(":")

        def closed_after(first: bytes, trickle: bytes) -> float | None:
            s = socket.create_connection((host, int(port)))
            s.sendall(first)
            s.settimeout(0.5)
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < 8:
                    try:
                        if s.recv(100) == b"":
                            return time.monotonic() - t0
                    except TimeoutError:
                        if trickle:
                            try:
                                s.sendall(trickle)
                            except OSError:
                                return time.monotonic() - t0
                return None
            finally:
                s.close()

        idle = closed_after(b"", b"")
        trickling = closed_after(b"GET /v2 HTTP/1.1\r\nHost: x\r\n", b"X-Slow: 1\r\n")
        assert idle is not None and 1.2 < idle < 4, idle
        assert trickling is not None and 1.2 < trickling < 4, trickling
        conn = http.client.HTTPConnection(host, int(port), timeout=10)  # a normal client is unaffected
        conn.request("GET", "/v2/health/ready")
        assert conn.getresponse().read() is not None
        conn.request("GET", "/v2/models/mlp")  # keep-alive: a second request well within the limit
        resp = conn.getresponse()
        assert resp.status == 200 and b'"mlp"' in resp.read()
        time.sleep(2.5)  # then idle past the limit: the server closes it
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine)):
            conn.request("GET", "/v2/health/live")
            conn.getresponse()
    finally:
        proc.assert_clean_exit()


def test_grpc_max_connection_age_loses_no_request(make_repo):
    """--grpc-max-connection-age: connections are closed (GOAWAY, in-flight calls get the grace) and clients
    reconnect, with no failed request across several ages."""
    proc = ServerProcess(make_repo("mlp"), "--grpc-max-connection-age", "0.5", "--grpc-max-connection-age-grace",
                         "5").start()
    try:
        x = np.random.default_rng(3).random((1, 32), dtype=np.float32)
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(proc.grpc_url) as client:
            t0, n = time.monotonic(), 0
            while time.monotonic() - t0 < 2.5:  # spans several connection ages
                inp = grpcclient.InferInput("input", [1, 32], "FP32")
                inp.set_data_from_numpy(x)
                client.infer("mlp", [inp])
                n += 1
        assert n > 20
    finally:
        proc.assert_clean_exit()
