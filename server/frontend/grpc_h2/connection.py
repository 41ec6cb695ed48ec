"""One client connection: HTTP/2 framing, flow control and the calls running on it.

Everything runs on the event loop, in ``data_received`` and in the calls' tasks: no thread and no per-frame
coroutine. Frames are cut straight out of what the socket delivered; replies written while the loop is busy
are joined into one socket write per loop pass.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import Any

import grpc
from grpc.aio import AbortError
from hpack import Decoder
from hpack.exceptions import HPACKError

from . import wire
from .call import DONE, Call

log = logging.getLogger("skewless.server.frontend.grpc_h2")

STREAM_WINDOW = 4 << 20  # what each request stream may send before we acknowledge it
CONNECTION_WINDOW = 16 << 20
MAX_FRAME = 1 << 20  # the largest frame we accept
MAX_HEADER_LIST = 16 << 10  # decoded request metadata, as grpc's default hard limit
MAX_HEADER_BLOCK = 64 << 10  # encoded, across CONTINUATION frames

# pseudo and transport headers a handler never sees in invocation_metadata
_HIDDEN = frozenset((b"te", b"content-type", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"))


class ConnectionError_(Exception):
    """A connection error (RFC 9113 5.4.1): GOAWAY with this code, then close."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Connection(asyncio.Protocol):
    def __init__(self, server: Any):  # the H2Server (server.py)
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = False
        self.decoder = Decoder()
        self.calls: dict[int, Call] = {}
        self.last_stream = 0  # highest client stream id seen
        self.window = wire.DEFAULT_WINDOW  # what the client lets us send on the connection
        self.peer_initial_window = wire.DEFAULT_WINDOW
        self.peer_max_frame = wire.DEFAULT_MAX_FRAME
        self.recv_unacked = 0
        self.blocked: dict[int, Call] = {}  # calls waiting for window
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.continuation: tuple[int, int, bytearray] | None = None
        self.going_away = False
        self.closed = False
        self.peer = "unknown"
        self._auth: dict[str, list[bytes]] | None = None
        self.last_ping_in = 0.0
        self.ping_strikes = 0
        self.keepalive: asyncio.TimerHandle | None = None
        self.ping_sent_at: float | None = None
        self.age_timer: asyncio.TimerHandle | None = None
        self.idle: asyncio.Future | None = None  # set when the last call ends during a drain

    # -- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"ipv6:[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"ipv4:{peer[0]}:{peer[1]}"
        elif peer:
            self.peer = f"unix:{peer}"
        s = self.server
        settings = {wire.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams or 2**31 - 1,
                    wire.INITIAL_WINDOW_SIZE: STREAM_WINDOW, wire.MAX_FRAME_SIZE: MAX_FRAME,
                    wire.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST, wire.ENABLE_PUSH: 0}
        transport.write(wire.settings_frame(settings)
                        + wire.window_update(0, CONNECTION_WINDOW - wire.DEFAULT_WINDOW))
        s.connections.add(self)
        if s.keepalive_time is not None:
            self.keepalive = self.loop.call_later(s.keepalive_time, self._ping)
        if s.max_age is not None:
            self.age_timer = self.loop.call_later(s.max_age * random.uniform(0.9, 1.1), self._aged)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for timer in (self.keepalive, self.age_timer):
            if timer is not None:
                timer.cancel()
        for call in list(self.calls.values()):
            self._cancel(call)
        self.calls.clear()
        if self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self._frames(data)
        except ConnectionError_ as exc:
            self._fatal(exc.code, str(exc))
        except Exception:  # a bug here must not take the loop with it
            log.exception("gRPC connection from %s failed", self.peer)
            self._fatal(wire.INTERNAL_ERROR, "internal error")
        self.flush()

    def _frames(self, data: bytes) -> None:
        buf = self.buffer
        if buf:
            buf += data
            if self.preface and (len(buf) < 9 or len(buf) < 9 + ((buf[0] << 16) | (buf[1] << 8) | buf[2])):
                return  # a large frame still arriving: gather it without copying what came so far again
            data = bytes(buf)
            buf.clear()
        pos = 0
        if not self.preface:
            if len(data) < 24:
                if not wire.PREFACE.startswith(data):
                    raise ConnectionError_(wire.PROTOCOL_ERROR, "not an HTTP/2 client")
                self.buffer += data
                return
            if data[:24] != wire.PREFACE:
                raise ConnectionError_(wire.PROTOCOL_ERROR, "not an HTTP/2 client")
            self.preface = True
            pos = 24
        n = len(data)
        while n - pos >= 9 and not self.closed:
            length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
            if length > MAX_FRAME:
                raise ConnectionError_(wire.FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
            end = pos + 9 + length
            if end > n:
                break
            kind = data[pos + 3]
            flags = data[pos + 4]
            stream = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            payload = data[pos + 9:end]
            pos = end
            if self.continuation is not None and kind != wire.CONTINUATION:
                raise ConnectionError_(wire.PROTOCOL_ERROR, "expected CONTINUATION")
            if kind == wire.DATA:
                self._data(stream, flags, payload)
            elif kind == wire.HEADERS:
                self._headers(stream, flags, payload)
            elif kind == wire.CONTINUATION:
                self._continuation(stream, flags, payload)
            elif kind == wire.RST_STREAM:
                self._reset(stream, payload)
            elif kind == wire.SETTINGS:
                self._settings(stream, flags, payload)
            elif kind == wire.WINDOW_UPDATE:
                self._window_update(stream, payload)
            elif kind == wire.PING:
                self._ping_in(stream, flags, payload)
            elif kind == wire.GOAWAY:
                self.going_away = True
                if not self.calls:
                    self.close()
            elif kind == wire.PUSH_PROMISE:
                raise ConnectionError_(wire.PROTOCOL_ERROR, "clients cannot push")
            # PRIORITY and unknown frame types are ignored (RFC 9113 5.5)
        if pos < n:
            self.buffer += data[pos:]

    # -- frames -----------------------------------------------------------------------------------------
    def _data(self, stream: int, flags: int, payload: bytes) -> None:
        if stream == 0:
            raise ConnectionError_(wire.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.recv_unacked += size
        if self.recv_unacked >= CONNECTION_WINDOW // 4:
            self.emit(wire.window_update(0, self.recv_unacked))
            self.recv_unacked = 0
        if flags & wire.PADDED:
            if not payload or payload[0] >= len(payload):
                raise ConnectionError_(wire.PROTOCOL_ERROR, "bad padding")
            payload = payload[1:len(payload) - payload[0]]
        call = self.calls.get(stream)
        if call is None or call.remote_closed:
            if stream > self.last_stream:
                raise ConnectionError_(wire.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a call we already ended: its late bytes count for the connection window only
        end = flags & wire.END_STREAM
        if not end:
            call.recv_unacked += size
            if call.recv_unacked >= STREAM_WINDOW // 2:
                self.emit(wire.window_update(stream, call.recv_unacked))
                call.recv_unacked = 0
        # the common case first: one whole message, then the end of the stream
        if (end and not call.inbox and len(payload) >= 5 and not payload[0]
                and int.from_bytes(payload[1:5], "big") == len(payload) - 5
                and len(payload) - 5 <= self.server.max_receive):
            messages = [payload[5:]]
        else:
            messages = call.take(payload)
            if messages is None:
                return
        if end:
            call.remote_closed = True
            if call.inbox and not call.closed:
                self.fail(call, grpc.StatusCode.INTERNAL, "the stream ended inside a message")
                return
        self._deliver(call, messages, bool(end))

    def _deliver(self, call: Call, messages: list[bytes], end: bool) -> None:
        if call.closed:
            return
        handler = call.handler
        if handler.request_streaming:
            for m in messages:
                call.push(m)
            if end:
                call.push(DONE)
            return
        call.received += len(messages)
        if call.received > 1:
            self.fail(call, grpc.StatusCode.UNIMPLEMENTED, "more than one request message on a unary call")
            return
        if messages:
            call.requests = messages  # held until the end of the stream
        if end:
            if not call.received:
                self.fail(call, grpc.StatusCode.INTERNAL, "no request message on a unary call")
                return
            call.task = self.loop.create_task(self.server.run_unary_request(call, call.requests[0]))
            call.requests = None

    def _headers(self, stream: int, flags: int, payload: bytes) -> None:
        if stream == 0:
            raise ConnectionError_(wire.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & wire.PADDED:
            if not payload or payload[0] >= len(payload):
                raise ConnectionError_(wire.PROTOCOL_ERROR, "bad padding")
            payload = payload[1:len(payload) - payload[0]]
        if flags & wire.PRIORITY_FLAG:
            payload = payload[5:]
        if not flags & wire.END_HEADERS:
            self.continuation = (stream, flags, bytearray(payload))
            return
        self._header_block(stream, flags, payload)

    def _continuation(self, stream: int, flags: int, payload: bytes) -> None:
        if self.continuation is None or self.continuation[0] != stream:
            raise ConnectionError_(wire.PROTOCOL_ERROR, "unexpected CONTINUATION")
        _, first_flags, block = self.continuation
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise ConnectionError_(wire.ENHANCE_YOUR_CALM, "header block too large")
        if flags & wire.END_HEADERS:
            self.continuation = None
            self._header_block(stream, first_flags, bytes(block))

    def _header_block(self, stream: int, flags: int, block: bytes) -> None:
        try:
            fields = self.decoder.decode(block, raw=True)
        except HPACKError as exc:
            raise ConnectionError_(wire.COMPRESSION_ERROR, f"bad header block: {exc}") from None
        end = flags & wire.END_STREAM
        call = self.calls.get(stream)
        if call is not None:  # trailers from the client: only the end of its stream
            if not end:
                raise ConnectionError_(wire.PROTOCOL_ERROR, "second HEADERS without END_STREAM")
            if not call.remote_closed:
                call.remote_closed = True
                self._deliver(call, [], True)
            return
        if stream % 2 == 0:
            raise ConnectionError_(wire.PROTOCOL_ERROR, "HEADERS on a server stream")
        if stream <= self.last_stream:
            return  # a stream we have already ended
        self.last_stream = stream
        self.ping_strikes = 0
        if self.going_away or self.server.stopping:
            self.emit(wire.rst_stream(stream, wire.REFUSED_STREAM))
            return
        limit = self.server.max_concurrent_streams
        if limit and len(self.calls) >= limit:
            self.emit(wire.rst_stream(stream, wire.REFUSED_STREAM))
            return
        method = b""
        content_type = b""
        timeout = None
        encoding = None
        metadata = []
        size = 0
        for name, value in fields:
            size += len(name) + len(value) + 32
            if name[:1] == b":":
                if name == b":path":
                    method = value
                continue
            if name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = wire.parse_timeout(value)
            elif name == b"grpc-encoding":
                encoding = value
            if name in _HIDDEN:
                continue
            key = name.decode("latin-1")
            if key.endswith("-bin"):
                try:
                    metadata.append((key, wire.decode_binary(value)))
                except ValueError:
                    continue
            else:
                metadata.append((key, value.decode("latin-1")))
        if not content_type.startswith(b"application/grpc"):
            self.emit(wire.frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, stream, wire.STATUS_415))
            return
        path = method.decode("latin-1")
        handler = self.server.handler(path, metadata)
        call = Call(self, stream, path, tuple(metadata), None, handler, encoding, self.peer_initial_window)
        self.calls[stream] = call
        if timeout is not None:
            call.deadline = self.loop.time() + timeout
            call.timer = self.loop.call_at(call.deadline, self._expired, call)
        if size > MAX_HEADER_LIST:
            self.fail(call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"request metadata of {size} bytes is over the limit of {MAX_HEADER_LIST}")
            return
        if handler is None:
            self.fail(call, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if encoding is not None and encoding not in (b"identity", b"gzip", b"deflate"):
            self.fail(call, grpc.StatusCode.UNIMPLEMENTED,
                      f"Compression algorithm '{encoding.decode('latin-1')}' is not supported")
            return
        if handler.request_streaming:
            call.requests = deque()
            call.task = self.loop.create_task(self.server.run_streaming_request(call))
        if end:
            call.remote_closed = True
            self._deliver(call, [], True)

    def _reset(self, stream: int, payload: bytes) -> None:
        if stream == 0 or len(payload) != 4:
            raise ConnectionError_(wire.PROTOCOL_ERROR, "bad RST_STREAM")
        call = self.calls.pop(stream, None)
        if call is not None:
            self.blocked.pop(stream, None)
            self._cancel(call)
            self._ended()

    def _settings(self, stream: int, flags: int, payload: bytes) -> None:
        if stream != 0 or len(payload) % 6:
            raise ConnectionError_(wire.PROTOCOL_ERROR, "bad SETTINGS")
        if flags & wire.ACK:
            return
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i:i + 2], "big")
            value = int.from_bytes(payload[i + 2:i + 6], "big")
            if key == wire.INITIAL_WINDOW_SIZE:
                if value > wire.MAX_WINDOW:
                    raise ConnectionError_(wire.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for call in self.calls.values():
                    call.window += delta
            elif key == wire.MAX_FRAME_SIZE:
                if not wire.DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise ConnectionError_(wire.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
        self.emit(wire.frame(wire.SETTINGS, wire.ACK, 0))
        self._unblock()

    def _window_update(self, stream: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(wire.FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream == 0:
            if inc == 0:
                raise ConnectionError_(wire.PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self.window += inc
            if self.window > wire.MAX_WINDOW:
                raise ConnectionError_(wire.FLOW_CONTROL_ERROR, "connection window overflow")
            self._unblock()
            return
        call = self.calls.get(stream)
        if call is not None:
            call.window += inc
            if call.pending:
                self._drain(call)

    def _ping_in(self, stream: int, flags: int, payload: bytes) -> None:
        if stream != 0 or len(payload) != 8:
            raise ConnectionError_(wire.PROTOCOL_ERROR, "bad PING")
        if flags & wire.ACK:
            self.ping_sent_at = None
            return
        now = time.monotonic()
        s = self.server
        if not self.calls and now - self.last_ping_in < s.min_ping_interval:
            self.ping_strikes += 1
            if self.ping_strikes > s.max_ping_strikes:
                self._fatal(wire.ENHANCE_YOUR_CALM, "too_many_pings")
                return
        self.last_ping_in = now
        self.emit(wire.frame(wire.PING, wire.ACK, 0, payload))

    # -- keepalive and age ------------------------------------------------------------------------------
    def _ping(self) -> None:
        if self.closed:
            return
        s = self.server
        if self.ping_sent_at is not None:  # the last ping went unanswered for the whole timeout
            log.info("gRPC connection from %s: keepalive ping not answered; closing", self.peer)
            self.close()
            return
        self.ping_sent_at = time.monotonic()
        self.emit(wire.frame(wire.PING, 0, 0, b"\x00" * 8))
        self.flush()
        self.keepalive = self.loop.call_later(s.keepalive_timeout, self._ping_check)

    def _ping_check(self) -> None:
        if self.closed:
            return
        if self.ping_sent_at is not None:
            self._ping()  # closes
        else:
            self.keepalive = self.loop.call_later(self.server.keepalive_time, self._ping)

    def _aged(self) -> None:
        """max_connection_age: the client moves its new calls to a new connection; these get the grace."""
        if self.closed:
            return
        self.start_drain()
        self.loop.call_later(self.server.max_age_grace, self.close)

    # -- calls ending -----------------------------------------------------------------------------------
    def _expired(self, call: Call) -> None:
        call.timer = None
        if not call.closed:
            self.fail(call, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            if call.task is not None:
                call.task.cancel()

    def _cancel(self, call: Call) -> None:
        call.cancelled_ = True
        call.closed = True
        if call.task is not None and not call.task.done():
            call.task.cancel()
        call.ended()

    def _ended(self) -> None:
        if not self.calls and (self.going_away or self.server.stopping):
            if self.idle is not None and not self.idle.done():
                self.idle.set_result(None)
            if self.going_away and not self.server.stopping:
                self.close()

    # -- sending ----------------------------------------------------------------------------------------
    def emit(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if out and not self.closed:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        out.clear()

    def send_headers(self, call: Call) -> None:
        call.headers_sent = True
        block = wire.RESPONSE_HEADERS + (wire.metadata_block(call.initial) if call.initial else b"")
        self.emit(wire.frame(wire.HEADERS, wire.END_HEADERS, call.id, block))

    def send_message(self, call: Call, data: bytes) -> None:
        limit = self.server.max_send
        if len(data) > limit:
            self.fail(call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"Sent message larger than max ({len(data)} vs. {limit})")
            raise AbortError()
        if not call.headers_sent:
            self.send_headers(call)
        message = b"\x00" + len(data).to_bytes(4, "big") + data
        if call.pending or len(message) > self.window or len(message) > call.window:
            call.pending += message
            self._drain(call)
            return
        self.window -= len(message)
        call.window -= len(message)
        frame_max = self.peer_max_frame
        if len(message) <= frame_max:
            self.emit(wire.frame(wire.DATA, 0, call.id, message))
        else:
            view = memoryview(message)
            for i in range(0, len(message), frame_max):
                self.emit(wire.frame(wire.DATA, 0, call.id, bytes(view[i:i + frame_max])))

    def _drain(self, call: Call) -> None:
        """Send what flow control now allows of a call's pending DATA, then its trailers."""
        pending = call.pending
        frame_max = self.peer_max_frame
        while pending and self.window > 0 and call.window > 0:
            n = min(len(pending), self.window, call.window, frame_max)
            self.emit(wire.frame(wire.DATA, 0, call.id, bytes(pending[:n])))
            del pending[:n]
            self.window -= n
            call.window -= n
        if pending:
            self.blocked[call.id] = call
            return
        self.blocked.pop(call.id, None)
        if call.final is not None:
            final, call.final = call.final, None
            self._send_final(call, final)
        if call.flushed is not None and not call.flushed.done():
            call.flushed.set_result(None)

    def _unblock(self) -> None:
        for call in list(self.blocked.values()):
            if self.window <= 0:
                break
            self._drain(call)

    def finish(self, call: Call, code: grpc.StatusCode, message: str | None) -> None:
        """The call's status: trailers (or a trailers-only reply), after any DATA still held back."""
        if call.closed:
            return
        call.closed = True
        status = code.value[0]
        if call.headers_sent:
            block = wire.trailers(status, message, call.trailing)
        else:
            call.headers_sent = True
            block = (wire.RESPONSE_HEADERS + (wire.metadata_block(call.initial) if call.initial else b"")
                     + wire.trailers(status, message, call.trailing))
        if call.pending:
            call.final = block
            return
        self._send_final(call, block)

    def _send_final(self, call: Call, block: bytes) -> None:
        self.emit(wire.frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, call.id, block))
        if not call.remote_closed:  # the client may stop sending: RFC 9113 8.1
            self.emit(wire.rst_stream(call.id, wire.NO_ERROR))
        if self.calls.pop(call.id, None) is not None:
            call.ended()
            self._ended()

    def reply(self, call: Call, data: bytes) -> None:
        """A unary call's whole reply: headers, message and trailers in one write."""
        if call.closed:
            return
        limit = self.server.max_send
        if len(data) > limit:
            self.fail(call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"Sent message larger than max ({len(data)} vs. {limit})")
            return
        size = len(data) + 5
        if (call.trailing or call.initial or call.headers_sent or size > self.window or size > call.window
                or size > self.peer_max_frame):
            self.send_message(call, data)
            self.finish(call, grpc.StatusCode.OK, None)
            return
        self.window -= size
        call.window -= size
        call.closed = True
        call.headers_sent = True
        cid = call.id
        parts = [wire.frame(wire.HEADERS, wire.END_HEADERS, cid, wire.RESPONSE_HEADERS),
                 wire.frame(wire.DATA, 0, cid, b"\x00" + len(data).to_bytes(4, "big") + data),
                 wire.frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, cid, wire.TRAILERS_OK)]
        if not call.remote_closed:
            parts.append(wire.rst_stream(cid, wire.NO_ERROR))
        self.emit(b"".join(parts))
        del self.calls[cid]
        if call.timer is not None or call.callbacks is not None or call.flushed is not None:
            call.ended()
        if self.going_away or self.server.stopping:
            self._ended()

    def fail(self, call: Call, code: grpc.StatusCode, message: str) -> None:
        self.finish(call, code, message)

    # -- closing ----------------------------------------------------------------------------------------
    def start_drain(self) -> None:
        """GOAWAY: no new calls on this connection; the ones running finish."""
        if self.going_away or self.closed:
            return
        self.going_away = True
        self.emit(wire.goaway(self.last_stream, wire.NO_ERROR))
        self.flush()
        if not self.calls and not self.server.stopping:
            self.close()

    def _fatal(self, code: int, message: str) -> None:
        if self.closed:
            return
        log.debug("gRPC connection from %s: %s", self.peer, message)
        self.out.append(wire.goaway(self.last_stream, code, message.encode("latin-1", "replace")))
        self.flush()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True
            self.transport.close()

    def auth_context(self) -> dict[str, list[bytes]]:
        if self._auth is None:
            self._auth = _auth_context(self.transport)
        return self._auth


def _auth_context(transport: Any) -> dict[str, list[bytes]]:
    """What grpc's auth_context says of a connection: empty in the clear; over TLS the security type and,
    with a client certificate, its common name and subject alternative names."""
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is None:
        return {}
    out = {"transport_security_type": [b"ssl"], "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"]}
    cert = sslobj.getpeercert()
    if cert:
        names = [v.encode() for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
        if names:
            out["x509_common_name"] = names
        sans = [v.encode() for _, v in cert.get("subjectAltName", ())]
        if sans:
            out["x509_subject_alternative_name"] = sans
    return out
