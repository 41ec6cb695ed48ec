"""One RPC on the HTTP/2 transport: its stream's state and the servicer context its handler sees.

The servicers were written for grpc.aio, so the context offers grpc.aio's ``ServicerContext`` API (abort,
metadata, deadlines, peer and TLS identity, read/write for streams, done callbacks); one object per call is
both the stream and the context, so a unary RPC allocates little.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from typing import Any

import grpc
from grpc.aio import EOF, AbortError

_DONE = object()  # the end of the request messages


class Call:
    __slots__ = ("conn", "id", "method", "metadata", "deadline", "handler", "encoding", "remote_closed",
                 "closed", "task", "headers_sent", "window", "pending", "final", "flushed", "status", "message",
                 "trailing", "initial", "callbacks", "timer", "inbox", "requests", "waiter", "cancelled_",
                 "recv_unacked", "received", "__weakref__")

    def __init__(self, conn: Any, stream_id: int, method: str, metadata: tuple, deadline: float | None,
                 handler: Any, encoding: bytes | None, window: int):
        self.conn = conn
        self.id = stream_id
        self.method = method
        self.metadata = metadata
        self.deadline = deadline  # loop.time() at which the call expires
        self.handler = handler
        self.encoding = encoding  # the request messages' grpc-encoding
        self.remote_closed = False  # the client half-closed (END_STREAM)
        self.closed = False  # trailers sent or stream reset: nothing more goes out
        self.task: asyncio.Task | None = None
        self.headers_sent = False
        self.window = window  # what the client lets us send on this stream
        self.pending = bytearray()  # DATA waiting for flow-control window
        self.final: bytes | None = None  # trailers held back until pending is out
        self.flushed: asyncio.Future | None = None
        self.status: grpc.StatusCode | None = None
        self.message: str | None = None
        self.trailing: tuple = ()
        self.initial: tuple = ()
        self.callbacks: list | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.inbox = bytearray()  # request bytes not yet cut into messages
        self.requests: deque | None = None  # streaming requests: messages not yet read
        self.waiter: asyncio.Future | None = None
        self.cancelled_ = False
        self.recv_unacked = 0
        self.received = 0  # request messages so far

    # -- request messages -------------------------------------------------------------------------------
    def take(self, data: bytes) -> list[bytes] | None:
        """Cuts the stream's request bytes into messages (5-byte gRPC prefix each); None: a message over the
        limit, the call has been failed."""
        inbox = self.inbox
        inbox += data
        out = []
        limit = self.conn.server.max_receive
        while len(inbox) >= 5:
            n = int.from_bytes(inbox[1:5], "big")
            if n > limit:
                self.conn.fail(self, grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"Received message larger than max ({n} vs. {limit})")
                return None
            if len(inbox) < 5 + n:
                break
            message = bytes(inbox[5:5 + n])
            if inbox[0]:
                message = self.inflate(message)
                if message is None:
                    return None
            del inbox[:5 + n]
            out.append(message)
        return out

    def inflate(self, message: bytes) -> bytes | None:
        enc = self.encoding
        try:
            if enc == b"gzip":
                d = zlib.decompressobj(31)
            elif enc == b"deflate":
                d = zlib.decompressobj(15)
            else:
                self.conn.fail(self, grpc.StatusCode.INTERNAL,
                               f"Compressed message without a supported grpc-encoding ({(enc or b'identity').decode()})")
                return None
            limit = self.conn.server.max_receive
            out = d.decompress(message, limit + 1)
            if len(out) > limit:
                self.conn.fail(self, grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"Received message larger than max ({len(out)} vs. {limit})")
                return None
            return out
        except zlib.error as exc:
            self.conn.fail(self, grpc.StatusCode.INTERNAL, f"Failed to decompress the message: {exc}")
            return None

    def push(self, item: Any) -> None:
        """A request message (or _DONE) for a streaming handler."""
        self.requests.append(item)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def __aiter__(self) -> Call:
        return self

    async def __anext__(self) -> Any:
        message = await self.read()
        if message is EOF:
            raise StopAsyncIteration
        return message

    async def read(self) -> Any:
        requests = self.requests
        while not requests:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None
        item = requests[0]
        if item is _DONE:
            return EOF
        requests.popleft()
        deserialize = self.handler.request_deserializer
        if deserialize is None:
            return item
        try:
            return deserialize(item)
        except Exception:
            await self.abort(grpc.StatusCode.INTERNAL, "Exception deserializing request!")

    # -- replies ----------------------------------------------------------------------------------------
    async def write(self, message: Any) -> None:
        if self.closed:
            return
        serialize = self.handler.response_serializer
        data = serialize(message) if serialize is not None else message
        self.conn.send_message(self, data)
        if self.pending and not self.closed:  # flow control: wait until the client takes it
            self.flushed = asyncio.get_running_loop().create_future()
            await self.flushed

    async def send_initial_metadata(self, metadata) -> None:
        if self.headers_sent:
            raise grpc.aio.UsageError("initial metadata was already sent")
        self.initial = tuple(metadata)
        self.conn.send_headers(self)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        if self.status is None or self.status == grpc.StatusCode.OK:
            if code == grpc.StatusCode.OK:
                code = grpc.StatusCode.UNKNOWN  # as grpc.aio: aborting with OK is a server bug
            self.status, self.message = code, details
            if trailing_metadata:
                self.trailing = tuple(trailing_metadata)
        raise AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        self.status = code

    def set_details(self, details: str) -> None:
        self.message = details

    def code(self) -> grpc.StatusCode | None:
        return self.status

    def details(self) -> str | None:
        return self.message

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple:
        return self.trailing

    def set_compression(self, compression) -> None:
        """Replies go out uncompressed; the client accepts that whatever it asked."""

    def disable_next_message_compression(self) -> None:
        pass

    # -- what the call knows ----------------------------------------------------------------------------
    def invocation_metadata(self) -> tuple:
        return self.metadata

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.conn.loop.time())

    def peer(self) -> str:
        return self.conn.peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.conn.auth_context()

    def peer_identities(self) -> list[bytes] | None:
        return self.conn.auth_context().get("x509_common_name")

    def peer_identity_key(self) -> str | None:
        return "x509_common_name" if self.conn.auth_context().get("x509_common_name") else None

    def cancelled(self) -> bool:
        return self.cancelled_

    def done(self) -> bool:
        return self.closed

    def add_done_callback(self, callback) -> None:
        if self.closed:
            callback(self)
            return
        if self.callbacks is None:
            self.callbacks = []
        self.callbacks.append(callback)

    def ended(self) -> None:
        """Runs the done callbacks once the call has closed."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        callbacks, self.callbacks = self.callbacks, None
        for cb in callbacks or ():
            try:
                cb(self)
            except Exception:
                self.conn.server.log.exception("done callback of %s failed", self.method)
        if self.flushed is not None and not self.flushed.done():
            self.flushed.set_result(None)


DONE = _DONE
