"""Plain HTTP on the metrics port: Kubernetes liveness/readiness probes, the Prometheus /metrics page and the
side modules' status snapshots (/v2/status).

A few fixed GET routes need no web framework; asyncio streams keep it on the server's event loop.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable

from ..errors import SkewlessError
from ..security.guard import Guard
from ..security.http_guard import check_http

log = logging.getLogger(__name__)

Route = Callable[[], tuple[int, str, bytes] | Awaitable[tuple[int, str, bytes]]]
# A route under a prefix: called with the rest of the path (e.g. "/v2/status/" + "lineage")
PrefixRoute = Callable[[str], tuple[int, str, bytes] | Awaitable[tuple[int, str, bytes]]]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable"}
_REFUSED = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429}


class HttpEndpoint:
    def __init__(self, routes: dict[str, Route], guard: Guard | None = None,
                 ssl_context: ssl.SSLContext | None = None, prefixes: dict[str, PrefixRoute] | None = None):
        self.routes = routes
        self.prefixes = prefixes or {}
        self.guard = guard  # health routes stay open; /metrics names models, so it is checked
        self.ssl_context = ssl_context
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, ssl=self.ssl_context,
                                                  reuse_port=reuse_port or None)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            route = self.routes.get(path)
            if route is None:
                for prefix, handler in self.prefixes.items():
                    if path.startswith(prefix) and len(path) > len(prefix):
                        route = functools.partial(handler, path[len(prefix):])
                        break
            refused = self._refused(head, method, path, writer) if self.guard is not None else None
            if refused is not None:
                status, ctype, body = refused
            elif method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET is supported\n"
            elif route is None:
                status, ctype, body = 404, "text/plain", f"no route {path}\n".encode()
            else:
                result = route()
                status, ctype, body = await result if inspect.isawaitable(result) else result
            header = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
            writer.write(header + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError,
                ConnectionError):
            pass
        except Exception:
            log.exception("HTTP endpoint error")
        finally:
            writer.close()

    def _refused(self, head: bytes, method: str, path: str, writer: asyncio.StreamWriter
                 ) -> tuple[int, str, bytes] | None:
        authorization = None
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.decode("latin-1").partition(":")
            if key.strip().lower() == "authorization":
                authorization = value.strip()
        peer = writer.get_extra_info("peername")
        try:
            assert self.guard is not None
            check_http(self.guard, method, path, authorization, writer.transport, peer[0] if peer else None)
        except SkewlessError as exc:
            return _REFUSED.get(exc.kind, 403), "text/plain", f"{exc}\n".encode()
        return None
