"""The h2 gRPC transport (server/frontend/grpc_h2) against grpc.aio's server: the same handlers, served by each,
must look the same to a real grpcio client (statuses, details, metadata, deadlines, cancellation, streams,
compression, flow control on messages larger than every window); then what only a raw HTTP/2 peer can do to
the h2 transport (bad prefaces, ping floods, protocol errors) must cost that peer its connection, never the
server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import grpc
import pytest

from skewless.server.frontend.grpc_h2.server import H2Server

SERVICE = "test.Echo"
BIG = 9 * 1024 * 1024  # over the h2 transport's 4 MiB stream window, its 1 MiB frames and grpcio's windows


class Servicer:
    def __init__(self) -> None:
        self.cancelled: list[str] = []  # names of the calls whose handler was cancelled

    async def unary(self, request: bytes, context) -> bytes:
        return request

    async def meta(self, request: bytes, context) -> bytes:
        md = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in context.invocation_metadata()
              if k not in ("user-agent",)}
        remaining = context.time_remaining()
        return json.dumps({"metadata": md, "deadline": remaining is not None and 0 < remaining <= 30,
                           "peer": context.peer().startswith(("ipv4:127.0.0.1:", "ipv6:[::1]:"))}).encode()

    async def abort(self, request: bytes, context) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing (é)",
                            trailing_metadata=(("why", "because"), ("blob-bin", b"\x00\xff\x10")))

    async def set_code(self, request: bytes, context) -> bytes:
        context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
        context.set_details("bad input")
        return b""

    async def raises(self, request: bytes, context) -> bytes:
        raise ValueError("boom")

    async def sleep(self, request: bytes, context) -> bytes:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.append(request.decode())
            raise
        return b"late"

    async def big(self, request: bytes, context) -> bytes:
        return b"x" * int(request)

    async def server_stream(self, request: bytes, context):
        await context.send_initial_metadata((("first", "1"),))
        count, size = (int(x) for x in request.split(b","))
        for i in range(count):
            yield bytes([i % 256]) * size

    async def writer_stream(self, request: bytes, context) -> None:
        for i in range(int(request)):
            await context.write(b"%d" % i)

    async def client_stream(self, requests, context) -> bytes:
        total = 0
        async for message in requests:
            total += len(message)
        return b"%d" % total

    async def bidi(self, requests, context):
        async for message in requests:
            yield message[::-1]


def handlers(s: Servicer) -> grpc.GenericRpcHandler:
    u = grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": u(s.unary), "Meta": u(s.meta), "Abort": u(s.abort), "SetCode": u(s.set_code),
        "Raises": u(s.raises), "Sleep": u(s.sleep), "Big": u(s.big),
        "ServerStream": grpc.unary_stream_rpc_method_handler(s.server_stream),
        "WriterStream": grpc.unary_stream_rpc_method_handler(s.writer_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(s.client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(s.bidi),
    })


OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
           ("grpc.http2.min_ping_interval_without_data_ms", 60_000), ("grpc.http2.max_ping_strikes", 2)]


class Served:
    """A server of either kind on a free port, run by an event loop in a thread of its own."""

    def __init__(self, kind: str, options=OPTIONS):
        self.servicer = Servicer()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def start() -> None:  # grpc.aio's server belongs to the loop it is made on
            self.server = H2Server(None, options) if kind == "h2" else grpc.aio.server(options=options)
            self.server.add_generic_rpc_handlers((handlers(self.servicer),))
            self.port = self.server.add_insecure_port("127.0.0.1:0")
            await self.server.start()
            started.set()

        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.thread.start()
        assert started.wait(10)

    def _run(self, start) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(params=["h2", "aio"], scope="module")
def served(request):
    s = Served(request.param)
    yield s
    s.stop()


@pytest.fixture
def channel(served):
    ch = grpc.insecure_channel(f"127.0.0.1:{served.port}", options=OPTIONS)
    yield ch
    ch.close()


def call(channel, method: str, request: bytes = b"", kind: str = "unary_unary", **kw):
    return getattr(channel, kind)(f"/{SERVICE}/{method}")(request, **kw)


def status(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def test_unary_and_metadata(channel):
    assert call(channel, "Unary", b"hello") == b"hello"
    out = json.loads(call(channel, "Meta", metadata=(("x-key", "value"), ("blob-bin", b"\x01\x02\xff")),
                          timeout=20))
    assert out["metadata"]["x-key"] == "value"
    assert out["metadata"]["blob-bin"] == "0102ff"
    assert out["deadline"] and out["peer"]
    assert not json.loads(call(channel, "Meta"))["deadline"]


def test_statuses_match_grpc_aio(channel):
    err = status(lambda: call(channel, "Abort"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and err.details() == "no such thing (é)"
    trailing = dict(err.trailing_metadata())
    assert trailing["why"] == "because" and trailing["blob-bin"] == b"\x00\xff\x10"
    err = status(lambda: call(channel, "SetCode"))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "bad input")
    err = status(lambda: call(channel, "Raises"))
    assert err.code() == grpc.StatusCode.UNKNOWN and "ValueError" in err.details() and "boom" in err.details()
    err = status(lambda: call(channel, "NoSuchMethod"))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


def test_deadline_and_cancellation_reach_the_handler(served, channel):
    err = status(lambda: call(channel, "Sleep", b"deadline", timeout=0.3))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    future = channel.unary_unary(f"/{SERVICE}/Sleep").future(b"cancel")
    time.sleep(0.3)
    future.cancel()
    deadline = time.monotonic() + 10
    while "cancel" not in served.servicer.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "cancel" in served.servicer.cancelled  # the client's cancellation reached the handler
    assert call(channel, "Unary", b"still serving") == b"still serving"


def test_messages_larger_than_every_window(channel):
    payload = bytes(range(256)) * (BIG // 256)
    assert call(channel, "Unary", payload) == payload
    assert len(call(channel, "Big", b"%d" % BIG)) == BIG
    replies = list(call(channel, "ServerStream", b"3,%d" % (2 * 1024 * 1024), kind="unary_stream"))
    assert [r[:1] for r in replies] == [b"\x00", b"\x01", b"\x02"] and {len(r) for r in replies} == {2 << 20}


def test_streams(channel):
    stream = call(channel, "ServerStream", b"4,3", kind="unary_stream")
    assert dict(stream.initial_metadata())["first"] == "1"
    assert list(stream) == [b"\x00" * 3, b"\x01" * 3, b"\x02" * 3, b"\x03" * 3]
    assert list(call(channel, "WriterStream", b"5", kind="unary_stream")) == [b"0", b"1", b"2", b"3", b"4"]
    sizes = [b"a" * n for n in (1, 10, 100_000, 0, 5)]
    assert channel.stream_unary(f"/{SERVICE}/ClientStream")(iter(sizes)) == b"%d" % sum(map(len, sizes))
    assert list(channel.stream_stream(f"/{SERVICE}/Bidi")(iter([b"abc", b"", b"xyz1"]))) == [b"cba", b"", b"1zyx"]


def test_compressed_requests(channel):
    for algorithm in (grpc.Compression.Gzip, grpc.Compression.Deflate):
        payload = b"compress me " * 10_000
        assert call(channel, "Unary", payload, compression=algorithm) == payload


def test_message_over_the_limit(served):
    ch = grpc.insecure_channel(f"127.0.0.1:{served.port}", options=OPTIONS)
    try:
        err = status(lambda: call(ch, "Unary", b"x" * (65 << 20)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert call(ch, "Unary", b"ok") == b"ok"
    finally:
        ch.close()


# -- a raw HTTP/2 peer against the h2 transport ---------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def read_frames(sock: socket.socket, until: float = 3.0) -> list[tuple[int, int, int, bytes]]:
    """Frames the server sends until it closes the connection or ``until`` seconds pass."""
    sock.settimeout(0.2)
    data = b""
    end = time.monotonic() + until
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    frames = []
    while len(data) >= 9:
        n = int.from_bytes(data[:3], "big")
        frames.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9:9 + n]))
        data = data[9 + n:]
    return frames


@pytest.fixture(scope="module")
def h2_only():
    s = Served("h2")
    yield s
    s.stop()


def _still_serves(served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as ch:
        assert call(ch, "Unary", b"fine") == b"fine"


@pytest.mark.parametrize("opening", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64,
                                     PREFACE + frame(1, 0x4, 2, b"\x82"),  # HEADERS on a server stream id
                                     PREFACE + frame(0, 0, 1, b"data"),  # DATA on an idle stream
                                     PREFACE + frame(4, 0, 0, b"\x00\x05\x00\x00\x00\x01"),  # frame size 1
                                     PREFACE + frame(1, 0x4, 1, b"\xff\xff\xff\xff")])  # bad HPACK
def test_a_broken_peer_loses_its_connection_only(h2_only, opening):
    with socket.create_connection(("127.0.0.1", h2_only.port)) as sock:
        sock.sendall(opening)
        frames = read_frames(sock)
    if opening.startswith(PREFACE):
        assert frames and frames[-1][0] == 7  # GOAWAY, then the server closed
        assert int.from_bytes(frames[-1][3][4:8], "big") != 0  # with an error code
    _still_serves(h2_only)


def test_pings_are_answered_and_a_ping_flood_is_stopped(h2_only):
    with socket.create_connection(("127.0.0.1", h2_only.port)) as sock:
        sock.sendall(PREFACE + frame(4, 0, 0) + frame(6, 0, 0, b"12345678"))
        first = read_frames(sock, 0.5)
        assert (6, 1, 0, b"12345678") in first  # PING ACK, same payload
        # far more often than the 60 s minimum interval, with no call open
        sock.sendall(b"".join(frame(6, 0, 0, b"%08d" % i) for i in range(5)))
        frames = read_frames(sock)
    goaway = [f for f in frames if f[0] == 7]
    assert goaway and int.from_bytes(goaway[0][3][4:8], "big") == 0xB  # ENHANCE_YOUR_CALM
    assert b"too_many_pings" in goaway[0][3][8:]
    _still_serves(h2_only)


def test_stop_sends_goaway_and_lets_running_calls_finish():
    s = Served("h2")
    ch = grpc.insecure_channel(f"127.0.0.1:{s.port}")
    try:
        assert call(ch, "Unary", b"x") == b"x"
        slow = ch.unary_unary(f"/{SERVICE}/Sleep").future(b"stopped")
        time.sleep(0.3)
        asyncio.run_coroutine_threadsafe(s.server.stop(0.5), s.loop).result(10)
        err = status(slow.result)
        assert err.code() == grpc.StatusCode.UNAVAILABLE  # past the grace: ended with a status, not hung
    finally:
        ch.close()
        s.loop.call_soon_threadsafe(s.loop.stop)
        s.thread.join(10)


def test_header_blocks_decode_with_hpack():
    """What the h2 transport encodes, read back by an independent HPACK decoder (the hpack package's)."""
    from hpack import Decoder

    from skewless.server.frontend.grpc_h2 import wire

    long_message = "é" * 200 + " 100% \n done"
    block = wire.RESPONSE_HEADERS + wire.trailers(13, long_message, (("k", "v"), ("b-bin", b"\x00\x01")))
    fields = Decoder().decode(block, raw=True)
    assert fields[:2] == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    out = dict(fields[2:])
    assert out[b"grpc-status"] == b"13" and out[b"k"] == b"v" and wire.decode_binary(out[b"b-bin"]) == b"\x00\x01"
    from urllib.parse import unquote_to_bytes
    assert unquote_to_bytes(out[b"grpc-message"]).decode() == long_message
    assert Decoder().decode(wire.STATUS_415, raw=True) == [(b":status", b"415"), (b"content-type", b"text/plain")]
    assert [wire.parse_timeout(v) for v in (b"100m", b"5S", b"2H", b"7u", b"x", b"123456789S")] == \
        [0.1, 5.0, 7200.0, 7e-06, None, None]


def test_a_server_stopped_before_it_started_releases_its_port():
    async def bind_and_stop() -> int:
        server = H2Server(None, OPTIONS)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.stop(1.0)  # what the app does when a start-up step after binding fails
        return port

    port = asyncio.run(bind_and_stop())
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again
