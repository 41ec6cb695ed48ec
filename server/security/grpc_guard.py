"""The guard on the gRPC server: an interceptor that checks each RPC before its handler runs.

gRPC's interceptor sees the method name but not the peer or its certificate, so for guarded methods it wraps
the handler and checks with the call's context (metadata, ``auth_context``, ``peer``) before the servicer
sees the request. Unguarded methods get their handler back untouched, and the server installs no interceptor
at all when nothing can be refused (no principals, no rate limit, bound to loopback only).
"""

from __future__ import annotations

import inspect
from typing import Any

import grpc

from ..audit.log import caller as audit_caller
from ..errors import SkewlessError
from .guard import ADMIN, HEALTH, Guard, bearer_of, grpc_group


def peer_host(peer: str) -> str | None:
    """The address in gRPC's peer string: ``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:/path``."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "unix":
        return "127.0.0.1"  # a local socket: only this host can reach it
    return None


def _credentials(context: grpc.aio.ServicerContext) -> tuple[str | None, str | None]:
    bearer = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            bearer = bearer_of(value if isinstance(value, str) else value.decode("latin-1"))
            break
    names = (context.auth_context() or {}).get("x509_common_name")
    cert = names[0].decode("utf-8", "replace") if names else None
    return bearer, cert


class GrpcGuard(grpc.aio.ServerInterceptor):
    def __init__(self, guard: Guard, status_of: Any):
        self.guard = guard
        self.status_of = status_of  # the servicer's domain error -> (code, message) table

    def guarded(self, group: str) -> bool:
        if group == HEALTH:
            return False
        return self.guard.authenticating or self.guard.rate is not None or group == ADMIN

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        group = grpc_group(handler_call_details.method)
        if not self.guarded(group):
            return handler
        return self._wrap(handler, group)

    async def _check(self, group: str, context: grpc.aio.ServicerContext) -> bool:
        try:
            bearer, cert = _credentials(context)
            host = peer_host(context.peer())
            principal = self.guard.check(group, bearer, cert, host)
            # who the audit log (audit/) records for changes made by this call
            audit_caller.set(principal.name if principal is not None else f"anonymous@{host}")
            return True
        except SkewlessError as exc:
            await context.abort(*self.status_of(exc))
        return False  # not reached: abort raises

    def _wrap(self, handler: grpc.RpcMethodHandler, group: str) -> grpc.RpcMethodHandler:
        """The same handler, checking first: whichever of the four kinds it is (its behaviour takes the request
        or the request iterator first), as an async generator if the servicer's is one."""
        check = self._check
        for kind, make in (("unary_unary", grpc.unary_unary_rpc_method_handler),
                           ("unary_stream", grpc.unary_stream_rpc_method_handler),
                           ("stream_unary", grpc.stream_unary_rpc_method_handler),
                           ("stream_stream", grpc.stream_stream_rpc_method_handler)):
            inner = getattr(handler, kind)
            if inner is None:
                continue
            if inspect.isasyncgenfunction(inner):
                async def behavior(request, context, inner=inner):
                    await check(group, context)
                    async for reply in inner(request, context):
                        yield reply
            else:
                async def behavior(request, context, inner=inner):
                    await check(group, context)
                    return await inner(request, context)
            return make(behavior, request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
        return handler


__all__ = ["GrpcGuard", "peer_host"]
