"""A gRPC server on the event loop's own sockets: grpc.aio's server API, without grpc.aio's per-call cost.

grpc.aio hands every call across its C-core completion queue and back through Cython and several coroutines;
the echo server (benchmarks/echo_server.py) measured that at ~250 us of CPU per request on one core, more
than our whole data plane. This server reads HTTP/2 frames in ``asyncio.Protocol.data_received`` and runs
each call as one task on the loop, with the same handlers: the servicers, the interceptor, health and
reflection are registered unchanged (``add_generic_rpc_handlers``, ``add_insecure_port``, ``start``,
``stop(grace)``), and each handler's context offers grpc.aio's ServicerContext API (call.py).

Channel options read: ``grpc.max_receive_message_length``, ``grpc.max_send_message_length``,
``grpc.so_reuseport``, ``grpc.keepalive_time_ms``, ``grpc.keepalive_timeout_ms``,
``grpc.http2.min_ping_interval_without_data_ms``, ``grpc.http2.max_ping_strikes``,
``grpc.max_concurrent_streams``, ``grpc.max_connection_age_ms``, ``grpc.max_connection_age_grace_ms``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import grpc
from grpc.aio import AbortError

from .call import Call
from .connection import Connection

log = logging.getLogger("skewless.server.frontend.grpc_h2")

DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024


class _CallDetails(NamedTuple):
    """grpc.HandlerCallDetails: what a generic handler and an interceptor are asked with."""
    method: str
    invocation_metadata: tuple


class H2Server(grpc.aio.Server):
    """grpc.aio's abstract Server, implemented: code that checks for an aio server (reflection) takes it as one."""

    def __init__(self, interceptors: Sequence[grpc.aio.ServerInterceptor] | None = None,
                 options: Iterable[tuple[str, Any]] = ()):
        opts = dict(options or ())
        ms = lambda key, default: opts[key] / 1000.0 if key in opts else default  # noqa: E731
        self.max_receive = _limit(opts.get("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE))
        self.max_send = _limit(opts.get("grpc.max_send_message_length", -1))
        self.reuse_port = bool(opts.get("grpc.so_reuseport", 0))
        keepalive = ms("grpc.keepalive_time_ms", None)
        self.keepalive_time = keepalive if keepalive and keepalive < 2**31 / 1000 else None
        self.keepalive_timeout = ms("grpc.keepalive_timeout_ms", 20.0)
        self.min_ping_interval = ms("grpc.http2.min_ping_interval_without_data_ms", 300.0)
        self.max_ping_strikes = int(opts.get("grpc.http2.max_ping_strikes", 2))
        self.max_concurrent_streams = int(opts.get("grpc.max_concurrent_streams", 0))
        self.max_age = ms("grpc.max_connection_age_ms", None)
        self.max_age_grace = ms("grpc.max_connection_age_grace_ms", 30.0)
        self.interceptors = list(interceptors or ())
        self.log = log
        self._generic: list[grpc.GenericRpcHandler] = []
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}
        self._sockets: list[tuple[socket.socket, ssl.SSLContext | None]] = []
        self._servers: list[asyncio.base_events.Server] = []
        self.connections: set[Connection] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self._stopped: asyncio.Event | None = None

    # -- grpc.aio.Server's API ----------------------------------------------------------------------------
    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)
        self._handlers.clear()

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}"] = handler

    def add_insecure_port(self, address: str) -> int:
        return self._bind(address, None)

    def add_secure_port(self, address: str, context: ssl.SSLContext) -> int:
        """``context``: the TLS settings as an ``ssl.SSLContext`` (ALPN ``h2`` is set here)."""
        context.set_alpn_protocols(["h2"])
        return self._bind(address, context)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        for sock, tls in self._sockets:
            srv = await self.loop.create_server(lambda: Connection(self), sock=sock, ssl=tls, backlog=1024)
            self._servers.append(srv)

    async def stop(self, grace: float | None) -> None:
        """No new calls (GOAWAY to every client, listeners closed); running calls get ``grace`` seconds,
        then are cancelled (the client sees UNAVAILABLE)."""
        if self._stopped is None:  # never started: only the bound sockets to release
            for sock, _ in self._sockets:
                sock.close()
            self._sockets.clear()
            return
        if self.stopping:
            await self._stopped.wait()
            return
        self.stopping = True
        for srv in self._servers:
            srv.close()
        conns = list(self.connections)
        for conn in conns:
            conn.start_drain()
        waits = []
        for conn in conns:
            if conn.calls and not conn.closed:
                conn.idle = self.loop.create_future()
                waits.append(conn.idle)
        if waits and grace:
            await asyncio.wait(waits, timeout=grace)
        for conn in list(self.connections):
            for call in list(conn.calls.values()):
                conn.finish(call, grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
                if call.task is not None and not call.task.done():
                    call.task.cancel()
            conn.close()
        self._stopped.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- handlers -------------------------------------------------------------------------------------------
    def handler(self, method: str, metadata: list) -> grpc.RpcMethodHandler | None:
        """The method's handler; generic handlers are asked once per method name (ours ignore metadata)."""
        try:
            return self._handlers[method]
        except KeyError:
            pass
        found = None
        details = _CallDetails(method, tuple(metadata))
        for generic in self._generic:
            found = generic.service(details)
            if found is not None:
                break
        self._handlers[method] = found
        return found

    async def _handler(self, call: Call) -> grpc.RpcMethodHandler | None:
        """The call's handler as the interceptors return it; None (the call failed): one refused it."""
        handler = call.handler
        if not self.interceptors:
            return handler
        details = _CallDetails(call.method, call.metadata)
        for interceptor in reversed(self.interceptors):
            async def continuation(_details, inner=handler):
                return inner
            handler = await interceptor.intercept_service(continuation, details)
            if handler is None:
                call.conn.fail(call, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
                return None
        call.handler = handler
        return handler

    async def run_unary_request(self, call: Call, request: bytes) -> None:
        try:
            handler = await self._handler(call)
            if handler is None:
                return
            deserialize = handler.request_deserializer
            if deserialize is not None:
                try:
                    request = deserialize(request)
                except Exception:
                    call.conn.fail(call, grpc.StatusCode.INTERNAL, "Exception deserializing request!")
                    return
            if handler.response_streaming:
                await self._respond(call, handler.unary_stream(request, call))
            else:
                self._reply(call, handler, await handler.unary_unary(request, call))
        except BaseException as exc:
            self._failed(call, exc)

    async def run_streaming_request(self, call: Call) -> None:
        try:
            handler = await self._handler(call)
            if handler is None:
                return
            if handler.response_streaming:
                await self._respond(call, handler.stream_stream(call, call))
            else:
                self._reply(call, handler, await handler.stream_unary(call, call))
        except BaseException as exc:
            self._failed(call, exc)

    @staticmethod
    def _reply(call: Call, handler: grpc.RpcMethodHandler, reply: Any) -> None:
        """A single reply, unless the handler set a failing status or already ended the call."""
        conn = call.conn
        if call.closed:
            return
        if call.status is not None and call.status != grpc.StatusCode.OK:
            conn.finish(call, call.status, call.message)
        elif reply is None:
            conn.finish(call, grpc.StatusCode.INTERNAL, "the handler returned no reply")
        else:
            serialize = handler.response_serializer
            conn.reply(call, serialize(reply) if serialize is not None else reply)

    async def _respond(self, call: Call, result: Any) -> None:
        """A streaming reply: an async generator's items, or a coroutine that writes with context.write."""
        if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
            async for reply in result:
                if call.closed:
                    break
                await call.write(reply)
        else:
            await result
        if not call.closed:
            status = call.status or grpc.StatusCode.OK
            call.conn.finish(call, status, call.message if status != grpc.StatusCode.OK else None)

    def _failed(self, call: Call, exc: BaseException) -> None:
        conn = call.conn
        if isinstance(exc, AbortError):
            conn.finish(call, call.status or grpc.StatusCode.UNKNOWN, call.message)
        elif isinstance(exc, asyncio.CancelledError):
            if not call.closed:  # cancelled from outside the call (the loop shutting down)
                conn.finish(call, grpc.StatusCode.CANCELLED, "Cancelled")
            raise exc
        elif isinstance(exc, Exception):
            if not call.closed:
                log.error("Exception calling application: %s", exc, exc_info=exc)
                conn.finish(call, grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
        else:
            raise exc
        conn.flush()

    # -- sockets --------------------------------------------------------------------------------------------
    def _bind(self, address: str, tls: ssl.SSLContext | None) -> int:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or None
        if host in ("", "0.0.0.0", "::"):
            host = host or None
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (socket.gaierror, ValueError):
            return 0
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(addr)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return 0
        self._sockets.append((sock, tls))
        return sock.getsockname()[1]


def _limit(value: int) -> int:
    return 2**31 - 1 if value is None or value < 0 else int(value)
